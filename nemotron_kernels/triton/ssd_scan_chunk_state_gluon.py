"""SSD scan stage 1 on Hopper (Gluon, sm_90a): chunk_state_launch's outputs from a warp-specialised kernel.

The math and outputs are the Triton kernel's (ssd_scan_chunk_state.py), bitwise on the H200: per (segment, head),
walking the segment's chunks with the running state S [P, N] fp32 (cs: stage 0's cumulative dt A, hi + lo parts),
    S_in[chunk] = S (bf16), carry_decay[chunk] = carry            the state entering the chunk (segment start: 0)
    S <- exp(total) S + (x o to_end)^T B,   to_end_t = exp((end_hi - hi_t) + (end_lo - lo_t)) dt_t
    carry <- exp(total) carry
restarting at each sequence's first chunk from its initial state (or 0); at a sequence's last chunk final /
final_decay (completed by stage 2), at the segment end seg_state / seg_decay. Scope (ops/ssd_scan.py
gluon_eligible; else the Triton kernel runs): batched with L a multiple of Q = 128, or packed (cu_seqlens, B = 1,
any lengths); P = 64, N = 128, bf16 x / B / S_in; initial states or not ([P, N] rows contiguous); any H, G.
Packed (PACKED): the segment walks table slots (ssd_scan_common: sequence, start, length, first, last; dtcs at slot
position gc Q, written whole by stage 0: dt 0 past the slot's length). Each slot's table entry is read three steps
ahead of its use (its length places the chunk-end load of cs, at row length - 1 as Triton's _chunk_cs_end, which is
issued two steps ahead with the dtcs), its first / last / sequence one step ahead, its start by the producer one
load ahead. A slot's [Q, .] boxes also hold the next sequence's rows (or TMA's zeros past T): xw is masked to 0 there
(Triton's masked loads give x = 0), so they add exact zeros through B's finite rows. Padding slots (length 0, at the
table's end) decay by exp(0) = 1 and add zeros, so S and carry pass through; their S_in is not stored (Triton's
mask), their carry_decay is.

Design: one CTA per (segment, head), P whole; gl.warp_specialize into
  - a 1-warp producer (24 registers): TMA loads of the segment's chunks, x [Q, P] (head h's columns of x viewed
    [B*L, H*P]) and B [Q, N] (group g's columns of B viewed [B*L, G*N]), into a STAGES-deep ring;
  - the consumer warpgroup: S in the wgmma accumulator (fp32 [64, 128]); per chunk S_in out through shared memory
    and a TMA store, then the async wgmma S = (x o to_end)^T B + S exp(total), during which it builds the next
    chunk's A operand in registers and loads the dtcs two chunks ahead.
Shared memory: 2 stages of x (16 KB) + B (32 KB) and one S_in tile (16 KB): two CTAs per SM, as the op's segments
assume (chunk_state_config: programs_per_sm = 2), under maxnreg 128.
H200, B1 L32K (scripts/probe_ssd_chunk_state_gluon.py, bench/NOTES.md session 26): 169 us against Triton's 328.
Imported only where gluon_eligible holds (never interpreted: Gluon has no interpreter), so not via kernel_module."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .ssd_scan_gluon_common import (BC_LAYOUT, S_LAYOUT, X_LAYOUT, N, P, Q, _dtcs_row, _ring_barriers, _smem_box,
                                    _smem_ring, _wait_free)

STAGES = 2                      # the x / B ring: 2 x 48 KB (3 stages would leave one CTA per SM)
MAXNREG = 128                   # 8 warps (5 used) x 32 threads x 128 x 2 CTAs = 64K registers of an SM
PRODUCER_REGS = 24              # setmaxnreg target of the TMA warp


@gluon.jit
def _producer(x_desc, b_desc, x_bufs, b_bufs, ready, empty, gc0, n, h, g, table_ptr, n_table, STAGES: gl.constexpr,
              PACKED: gl.constexpr):
    """One warp: chunk k = 0 .. n-1 of the segment (global chunk gc0 + k, rows (gc0 + k) Q of the [B*L, .] views:
    batched, L a multiple of Q; packed, rows from the slot's start, its table entry loaded a step ahead) into stage
    k % STAGES: x [Q, P] of head h, B [Q, N] of group g."""
    Q: gl.constexpr = x_desc.block_type.shape[0]
    P: gl.constexpr = x_desc.block_type.shape[1]
    N: gl.constexpr = b_desc.block_type.shape[1]
    if PACKED:
        row_next = gl.load(table_ptr + n_table + gc0)                             # slot gc0's first row
    for k in range(n):
        if PACKED:
            row = row_next
            row_next = gl.load(table_ptr + n_table + gc0 + gl.minimum(k + 1, n - 1))
        stage = _wait_free(empty, k, STAGES)                                      # chunk k - STAGES released
        mbarrier.expect(ready.index(stage), x_desc.block_type.nbytes + b_desc.block_type.nbytes)
        if not PACKED:
            row = (gc0 + k) * Q
        tma.async_copy_global_to_shared(x_desc, [row, h * P], ready.index(stage), x_bufs.index(stage))
        tma.async_copy_global_to_shared(b_desc, [row, g * N], ready.index(stage), b_bufs.index(stage))


@gluon.jit
def _chunk_dtcs(dtcs_ptr, plane, gc, h, seqlen, chunks_per_row, H: gl.constexpr, Q: gl.constexpr,
                vec: gl.constexpr):
    """Stage 0's (dt, cs hi, cs lo) [Q] of head h over chunk gc (one token a thread) and cs at its last token
    (end hi, end lo): dtcs [3, B, H, L] fp32, plane = B H L. Issued two chunks ahead of use (plain loads)."""
    b = gc // chunks_per_row
    c = gc - b * chunks_per_row
    row = _dtcs_row(dtcs_ptr, b, c, h, seqlen, H, Q)                             # head h's row at the chunk start
    plane64 = plane.to(gl.int64)                                                  # 3 planes may pass 2^31
    offs = gl.arange(0, Q, layout=vec)
    return (gl.load(row + offs), gl.load(row + plane64 + offs), gl.load(row + 2 * plane64 + offs),
            gl.load(row + plane64 + (Q - 1)), gl.load(row + 2 * plane64 + (Q - 1)))


@gluon.jit
def _slot_dtcs(dtcs_ptr, plane, gc, h, seqlen, length, Q: gl.constexpr, vec: gl.constexpr):
    """Packed: _chunk_dtcs of table slot gc, dtcs [3, 1, H, n_table Q] (seqlen = n_table Q), the slot at gc Q, its Q
    positions all written (stage 0); cs at the slot's end from row length - 1, 0 for a padding slot (Triton's
    _chunk_cs_end: stage 0's cs past the end is flat only up to its scan's fp64 association)."""
    row = dtcs_ptr + (h.to(gl.int64) * seqlen + gc * Q)                           # head h's row at slot gc
    plane64 = plane.to(gl.int64)
    offs = gl.arange(0, Q, layout=vec)
    end = gl.maximum(length - 1, 0)
    has = length > 0
    return (gl.load(row + offs), gl.load(row + plane64 + offs), gl.load(row + 2 * plane64 + offs),
            gl.load(row + plane64 + end, mask=has, other=0.0), gl.load(row + 2 * plane64 + end, mask=has, other=0.0))


@gluon.jit
def _slot_length(table_ptr, n_table, gc):
    """Packed: the rows of table slot gc (table [5, n_table] int32: sequence, start, length, first, last)."""
    return gl.load(table_ptr + 2 * n_table + gc)


@gluon.jit
def _slot_flags(table_ptr, n_table, gc):
    """Packed: table slot gc's (sequence, starts it, ends it)."""
    return (gl.load(table_ptr + gc), gl.load(table_ptr + 3 * n_table + gc) != 0,
            gl.load(table_ptr + 4 * n_table + gc) != 0)


@gluon.jit
def _chunk_operand(x_bufs, ready, k, dtcs, length, STAGES: gl.constexpr, mma: gl.constexpr, op_a: gl.constexpr,
                   PACKED: gl.constexpr):
    """Chunk k of the segment, from its dtcs (_chunk_dtcs, _slot_dtcs) and its ring stage: -> (xw^T [P, Q] bf16,
    the wgmma A operand, and exp(total), the decay across the chunk). Waits for the stage; reads only x (the wgmma
    reads B). Packed: length the slot's rows; xw is 0 past them (Triton's masked x), whatever x holds there."""
    dt, hi, lo, end_hi, end_lo = dtcs
    # sum_{s>t} dA_s from the fp64 sums' hi + lo parts: a plain fp32 difference of two long sums cancels badly
    to_end = gl.exp((end_hi - hi) + (end_lo - lo)) * dt                           # [Q], one exp a thread
    to_end = gl.convert_layout(to_end, gl.SliceLayout(0, mma))                    # [Q] along the columns of x^T
    stage = k % STAGES
    mbarrier.wait(ready.index(stage), (k // STAGES) & 1)
    xt = x_bufs.index(stage).permute((1, 0)).load(mma).to(gl.float32)             # x^T [P, Q]
    xw = xt * gl.expand_dims(to_end, 0)
    if PACKED:                     # the next sequence's rows: a select, so 0 * inf there cannot leak a NaN
        t = gl.arange(0, xt.shape[1], layout=gl.SliceLayout(0, mma))
        xw = gl.where(gl.expand_dims(t, 0) < length, xw, 0.0)
    xw = xw.to(gl.bfloat16)                                                       # rounded as the Triton kernel
    # the accumulator layout -> A-operand layout of the same warps is a register shuffle, no shared memory
    return gl.convert_layout(xw, op_a), gl.exp(end_hi + end_lo)


@gluon.jit
def _consumer(s_desc, x_bufs, b_bufs, s_smem, ready, empty, dtcs_ptr, carry_decay_ptr, seg_state_ptr, seg_decay_ptr,
              final_ptr, final_decay_ptr, seg, gc0, n, h, seqlen, chunks_per_row, plane, init_ptr, stride_init_s,
              stride_init_h, table_ptr, n_table, H: gl.constexpr, STAGES: gl.constexpr, HAS_FINAL: gl.constexpr,
              HAS_INIT: gl.constexpr, PACKED: gl.constexpr):
    """The consumer warpgroup (4 warps): the sequential walk of the segment's n chunks for head h. Packed, each
    slot's length is carried from three steps ahead (len_k: chunk k, len_k1, len_k2: the next two, clamped to the
    segment's last chunk as the dtcs and operands are), its (sequence, first, last) from one step ahead."""
    P: gl.constexpr = s_desc.block_type.shape[0]                                  # 64: the wgmma's M
    Q: gl.constexpr = x_bufs.shape[1]                                             # 128: its K
    N: gl.constexpr = s_desc.block_type.shape[1]                                  # 128: its N
    # wgmma accumulator layout: 4 warps stacked along M (16 rows each), one m64n128k16 instruction per k-step
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, N, 16])
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    vec: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])                     # [Q]: one token a thread
    offs_p = gl.arange(0, P, layout=gl.SliceLayout(1, mma))
    offs_n = gl.arange(0, N, layout=gl.SliceLayout(0, mma))
    pn_offs = gl.expand_dims(offs_p, 1) * N + gl.expand_dims(offs_n, 0)           # into a contiguous [P, N] state

    S = gl.full([P, N], 0.0, gl.float32, layout=mma)                              # [P, N] running state
    carry = gl.to_tensor(1.0)                                                     # decay since the segment start
    last = n - 1
    if PACKED:
        len_k = _slot_length(table_ptr, n_table, gc0)
        len_k1 = _slot_length(table_ptr, n_table, gc0 + gl.minimum(1, last))
        len_k2 = _slot_length(table_ptr, n_table, gc0 + gl.minimum(2, last))
        flags = _slot_flags(table_ptr, n_table, gc0)
        xw, decay = _chunk_operand(x_bufs, ready, 0, _slot_dtcs(dtcs_ptr, plane, gc0, h, seqlen, len_k, Q, vec), len_k,
                                   STAGES, mma, op_a, PACKED)
        dtcs_next = _slot_dtcs(dtcs_ptr, plane, gc0 + gl.minimum(1, last), h, seqlen, len_k1, Q, vec)
    else:
        xw, decay = _chunk_operand(x_bufs, ready, 0, _chunk_dtcs(dtcs_ptr, plane, gc0, h, seqlen, chunks_per_row, H,
                                                                 Q, vec), Q, STAGES, mma, op_a, PACKED)
        dtcs_next = _chunk_dtcs(dtcs_ptr, plane, gc0 + gl.minimum(1, last), h, seqlen, chunks_per_row, H, Q, vec)
    for k in range(n):
        gc = gc0 + k
        if PACKED:
            seq, first, ends = flags
        else:
            first = (gc % chunks_per_row) == 0                                    # a sequence starts: restart
        if HAS_INIT:
            if first:                 # from its initial state, in its dtype -> fp32 (Triton: where(first, init, S))
                if not PACKED:
                    seq = gc // chunks_per_row
                S = gl.load(init_ptr + (seq.to(gl.int64) * stride_init_s + h * stride_init_h) + pn_offs).to(gl.float32)
        else:
            S = gl.where(first, 0.0, S)
        carry = gl.where(first, 0.0, carry)
        tma.store_wait(pendings=0)                                                # the last chunk's S_in has left
        if PACKED:
            if len_k > 0:                                                         # (a padding slot's: not stored)
                s_smem.store(S.to(gl.bfloat16))
                fence_async_shared()                                              # generic writes -> TMA reads
                tma.async_copy_shared_to_global(s_desc, [(gc * H + h) * P, 0], s_smem)   # S_in [P, N] of (gc, h)
        else:
            s_smem.store(S.to(gl.bfloat16))
            fence_async_shared()                                                  # generic writes -> TMA reads
            tma.async_copy_shared_to_global(s_desc, [(gc * H + h) * P, 0], s_smem)   # S_in [P, N] of (gc, h)
        gl.store(carry_decay_ptr + (gc.to(gl.int64) * H + h), carry)
        stage = k % STAGES
        acc = warpgroup_mma(xw, b_bufs.index(stage), S * decay, is_async=True)   # [P, N] += xw^T [P, Q] B [Q, N]
        carry = carry * decay
        # meanwhile: chunk k+2's dtcs loads (their latency spans a whole step), then chunk k+1's operand (past the
        # end: chunk n-1's again, its stage not yet freed and its ready phase still complete, so the wait passes;
        # one wasted build per segment and no branch)
        if PACKED:   # and chunk k+3's length (it places chunk k+3's cs end load, a step from now), k+1's flags
            len_after = _slot_length(table_ptr, n_table, gc0 + gl.minimum(k + 3, last))
            flags_next = _slot_flags(table_ptr, n_table, gc0 + gl.minimum(k + 1, last))
            dtcs_after = _slot_dtcs(dtcs_ptr, plane, gc0 + gl.minimum(k + 2, last), h, seqlen, len_k2, Q, vec)
            xw_next, decay = _chunk_operand(x_bufs, ready, gl.minimum(k + 1, last), dtcs_next, len_k1, STAGES, mma,
                                            op_a, PACKED)
        else:
            dtcs_after = _chunk_dtcs(dtcs_ptr, plane, gc0 + gl.minimum(k + 2, last), h, seqlen, chunks_per_row, H, Q,
                                     vec)
            xw_next, decay = _chunk_operand(x_bufs, ready, gl.minimum(k + 1, last), dtcs_next, Q, STAGES, mma, op_a,
                                            PACKED)
        dtcs_next = dtcs_after
        # the register A operand is a dep too: kept alive until the wgmma reading it is done
        S, xw = warpgroup_mma_wait(num_outstanding=0, deps=(acc, xw))
        mbarrier.arrive(empty.index(stage), count=1)                              # x and B of chunk k are read
        if HAS_FINAL:
            if PACKED:
                if ends:                      # a sequence's last slot: its final state (stage 2 adds the carry
                    seq_head = seq.to(gl.int64) * H + h                           # into its segment)
                    gl.store(final_ptr + seq_head * (P * N) + pn_offs, S)         # [P, N] fp32
                    gl.store(final_decay_ptr + seq_head, carry)
            else:
                if (gc % chunks_per_row) == chunks_per_row - 1:   # a row's last chunk: its final state (stage 2
                    row_head = (gc // chunks_per_row).to(gl.int64) * H + h           # adds the carry into its
                    gl.store(final_ptr + row_head * (P * N) + pn_offs, S)         # segment) [P, N] fp32
                    gl.store(final_decay_ptr + row_head, carry)
        xw = xw_next
        if PACKED:
            flags = flags_next
            len_k = len_k1
            len_k1 = len_k2
            len_k2 = len_after
    seg_head = seg.to(gl.int64) * H + h
    gl.store(seg_state_ptr + seg_head * (P * N) + pn_offs, S)                     # [P, N] fp32
    gl.store(seg_decay_ptr + seg_head, carry)
    tma.store_wait(pendings=0)


@gluon.jit
def _chunk_state_kernel(x_desc, b_desc, s_desc, dtcs_ptr, carry_decay_ptr, seg_state_ptr, seg_decay_ptr, final_ptr,
                        final_decay_ptr, seqlen, n_chunks, chunks_per_row, seg_len, plane, init_ptr, stride_init_s,
                        stride_init_h, table_ptr, n_table, H: gl.constexpr, G: gl.constexpr, STAGES: gl.constexpr,
                        HAS_FINAL: gl.constexpr, HAS_INIT: gl.constexpr, PACKED: gl.constexpr,
                        PRODUCER_REGS: gl.constexpr):
    """x_desc: x [B*L, H*P] in [Q, P] boxes; b_desc: B [B*L, G*N] in [Q, N] boxes; s_desc: s_in [n_chunks*H*P, N]
    bf16 in [P, N] boxes; dtcs [3, B, H, L] fp32 (plane = B*H*L); carry_decay [n_chunks, H], seg_state
    [n_seg, H, P, N], seg_decay [n_seg, H], final [B, H, P, N], final_decay [B, H] fp32; init [B, H, P, N] (any
    float dtype, [P, N] contiguous; strides s, h). Grid (n_seg, H). Packed: the views' rows are [T, .], n_chunks =
    n_table slots, table [5, n_table] int32 (sequence, start, length, first, last), dtcs [3, 1, H, n_table Q] (seqlen
    = n_table Q), final / final_decay / init over the sequences; batched, table_ptr and n_table are unused."""
    gl.static_assert(STAGES >= 2, "the consumer waits for chunk k+1 before it frees chunk k's stage")
    seg = gl.program_id(0)
    h = gl.program_id(1)
    g = h // (H // G)
    gc0 = seg * seg_len
    n = gl.minimum(seg_len, n_chunks - gc0)                                       # chunks of this segment

    # shared memory: ring x [STAGES, Q, P] 16 KB a stage, B [STAGES, Q, N] 32 KB a stage; S_in [P, N] 16 KB
    x_bufs = _smem_ring(x_desc, STAGES)
    b_bufs = _smem_ring(b_desc, STAGES)
    s_smem = _smem_box(s_desc)
    ready, empty = _ring_barriers(STAGES)             # empty: the consumer warpgroup's release
    fence_async_shared()                              # barrier inits visible to the async proxy (TMA)

    gl.warp_specialize([
        # default partition (num_warps = 4): the state walk
        (_consumer, (s_desc, x_bufs, b_bufs, s_smem, ready, empty, dtcs_ptr, carry_decay_ptr, seg_state_ptr,
                     seg_decay_ptr, final_ptr, final_decay_ptr, seg, gc0, n, h, seqlen, chunks_per_row, plane,
                     init_ptr, stride_init_s, stride_init_h, table_ptr, n_table, H, STAGES, HAS_FINAL, HAS_INIT,
                     PACKED)),
        # worker, 1 warp: TMA loads
        (_producer, (x_desc, b_desc, x_bufs, b_bufs, ready, empty, gc0, n, h, g, table_ptr, n_table, STAGES,
                     PACKED)),
    ], [1], [PRODUCER_REGS])


def chunk_state_launch(x, dtcs, B, initial_states, table, s_in, carry_decay, seg_state, seg_decay, final,
                       final_decay, geometry: dict, cfg: dict, dot_precision: str):
    """Stage 1 over all chunks: the Triton chunk_state_launch's signature and outputs (the op swaps the module), in
    gluon_eligible's scope: x [B, L, H, P] and B [B, L, G, N] bf16 that read as [B*L, H*P] / [B*L, G*N] TMA views
    (packed, table given: B = 1), initial_states None or [B or S, H, P, N] with contiguous [P, N] rows; cfg and
    dot_precision unused (the segments come from `geometry`).
    Host: three descriptor builds (~2 us each on a CI CPU; the probe also rebuilt the layouts, ~6 us each), then
    Gluon's JIT launch: Triton's argument binding plus, in the launcher, one cuTensorMapEncodeTiled per descriptor
    (not measurable without a GPU: scripts/launcher_host_time.py --cuda). -> the launched CompiledKernel."""
    assert geometry["Q"] == Q, "ssd_scan gluon chunk_state: out of scope"
    bsz, seqlen, nheads, _ = x.shape
    packed = table is not None
    assert not packed or bsz == 1, "ssd_scan gluon chunk_state: packed x [1, T, H, P]"
    has_init = initial_states is not None
    assert not has_init or initial_states.stride()[2:] == (N, 1), "ssd_scan gluon chunk_state: initial_states [P, N]"
    ngroups = B.shape[2]
    x_desc = TensorDescriptor(x, [bsz * seqlen, nheads * P], [x.stride(1), 1], [Q, P], X_LAYOUT)
    b_desc = TensorDescriptor(B, [bsz * seqlen, ngroups * N], [B.stride(1), 1], [Q, N], BC_LAYOUT)
    # s_in [n_chunks, H, P, N] contiguous as [n_chunks*H*P, N] (< 2^31 rows: the buffer would pass 500 GB first)
    s_desc = TensorDescriptor(s_in, [s_in.shape[0] * nheads * P, N], [N, 1], [P, N], S_LAYOUT)
    return _chunk_state_kernel[(geometry["n_seg"], nheads)](
        x_desc, b_desc, s_desc, dtcs, carry_decay, seg_state, seg_decay,
        final if final is not None else seg_state, final_decay if final_decay is not None else seg_decay,
        geometry["dtcs_len"], geometry["n_chunks"], geometry["chunks_per_row"], geometry["seg_len"], dtcs.stride(0),
        initial_states if has_init else seg_state, initial_states.stride(0) if has_init else 0,
        initial_states.stride(1) if has_init else 0, table if packed else carry_decay, geometry["n_table"],
        H=nheads, G=ngroups, STAGES=STAGES, HAS_FINAL=final is not None, HAS_INIT=has_init, PACKED=packed,
        PRODUCER_REGS=PRODUCER_REGS, num_warps=4, maxnreg=MAXNREG)


def aot_compile_all():
    """(name, CompiledKernel) for sm_90a at Nemotron-H's shape (H=64, G=8): batched with and without final states,
    and with initial and final states; packed (the bench's 16 sequences) without either (training), with final states
    (the bench's forward) and with both (prefill from states): needs Triton 3.6 (the Gluon API the kernel is written
    for), no GPU."""
    from .common import aot_compile_gluon
    types = {"x_desc": f"tensordesc<bf16[{Q}, {P}],{X_LAYOUT!r}>", "b_desc": f"tensordesc<bf16[{Q}, {N}],{BC_LAYOUT!r}>",
             "s_desc": f"tensordesc<bf16[{P}, {N}],{S_LAYOUT!r}>", "dtcs_ptr": "*fp32", "carry_decay_ptr": "*fp32",
             "seg_state_ptr": "*fp32", "seg_decay_ptr": "*fp32", "final_ptr": "*fp32", "final_decay_ptr": "*fp32",
             "seqlen": "i32", "n_chunks": "i32", "chunks_per_row": "i32", "seg_len": "i32", "plane": "i32",
             "init_ptr": "*fp32", "stride_init_s": "i32", "stride_init_h": "i32", "table_ptr": "*i32",
             "n_table": "i32"}
    # what the JIT launcher specialises at B1 L32K (pointers 16-byte aligned; seqlen, n_chunks, chunks_per_row and
    # plane multiples of 16; seg_len too, but not in general; a contiguous init's strides)
    aligned = ("dtcs_ptr", "carry_decay_ptr", "seg_state_ptr", "seg_decay_ptr", "final_ptr", "final_decay_ptr",
               "seqlen", "n_chunks", "chunks_per_row", "plane", "init_ptr", "stride_init_s", "stride_init_h")
    # packed, the bench's 16 sequences: 260 table slots (n_chunks, n_table not multiples of 16), seqlen = 260 Q,
    # plane = 64 x 260 Q
    packed_aligned = ("dtcs_ptr", "carry_decay_ptr", "seg_state_ptr", "seg_decay_ptr", "final_ptr", "final_decay_ptr",
                      "seqlen", "plane", "init_ptr", "stride_init_s", "stride_init_h", "table_ptr")
    for has_final, has_init, packed in ((False, False, False), (True, False, False), (True, True, False),
                                        (False, False, True), (True, False, True), (True, True, True)):
        constexprs = {"H": 64, "G": 8, "STAGES": STAGES, "HAS_FINAL": has_final, "HAS_INIT": has_init,
                      "PACKED": packed, "PRODUCER_REGS": PRODUCER_REGS}
        name = f"ssd_chunk_state_gluon final={has_final}" + (f" init={has_init}" if has_init or packed else "")
        yield (name + (" packed" if packed else ""),
               aot_compile_gluon(_chunk_state_kernel, types, constexprs, aligned=packed_aligned if packed else aligned,
                                 num_warps=4, maxnreg=MAXNREG))
