"""SSD scan stage 3 on Hopper (Gluon, sm_90a): chunk_scan_launch's y from a warp-specialised kernel.

Math (the Triton kernel's, ssd_scan_chunk_scan.py; cs = stage 0's cumulative dt A from the chunk start, hi + lo):
    y_t = sum_{s<=t} (C_t . B_s) exp(min((hi_t - hi_s) + (lo_t - lo_s), 0)) dt_s x_s      intra-chunk
        + exp(hi_t) C_t . (S_in + carry_decay * carry)                                    state entering the chunk
        + D x_t
One difference: the carry term is its own wgmma (C carry^T, scaled by carry_decay in fp32) where Triton rounds
S_in + carry_decay carry to bf16 before one dot: y agrees within bf16 rounding (2.3e-3 relative at B1 L32K).
Scope (ops/ssd_scan.py gluon_eligible; else the Triton kernel runs): batched with L a multiple of Q = 128, or
packed (cu_seqlens, B = 1, any lengths); P = 64, N = 128, bf16 x / B / C / y / S_in; any H, G; D present or not.
Packed (PACKED): CTA gc is slot gc of the chunk table (ssd_scan_common: its sequence's rows start .. start +
length - 1, dtcs at slot position gc Q). Its 128-row boxes also hold the next sequence's rows (or rows past T,
which TMA zero-fills): they need no mask, as for a row t < length every s >= length lies past t (causal mask)
and has dt_s = 0 (stage 0 writes the slot's tail dt 0, cs flat); rows t >= length are computed but never stored:
a partial slot stores y by masked register stores (a TMA box would overwrite the next sequence's y). Padding
slots (length 0) exit at once, as Triton's programs do.

Design: one CTA per (chunk, group), 9 warps (padded to 12), gl.warp_specialize into
  - consumer warpgroup 0 (the default partition): rows 0..63 of the chunk (the diagonal block only),
  - consumer warpgroup 1 (a 4-warp worker, 240 registers): rows 64..127 (diagonal + off-diagonal block),
  - a producer (1 warp, 24 registers): TMA loads of C and B [128, N] once, then per head of the group x [128, P],
    S_in [P, N] and the carry [P, N] into a 2-stage ring (ready / empty mbarriers; empty counts one arrival per
    warpgroup). S_in and the carry are read once per (chunk, head), where the Triton kernel reads them per row block.
A consumer computes C B^T once (wgmma, [t, s]: the masked, decayed M = (C B^T o exp(segsum)) dt_s goes straight to
the A operand of the next wgmma from registers), then per head: the state wgmmas C S_in^T and C carry^T (async),
M in registers meanwhile, M x, D x from the ring's x, y through shared memory and a TMA store.
H200, B1 L32K (scripts/probe_ssd_chunk_scan_gluon.py, bench/NOTES.md session 26): 422 us against Triton's 634.
Imported only where gluon_eligible holds (never interpreted: Gluon has no interpreter), so not via kernel_module."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

Q, P, N = 128, 64, 128          # chunk, head dim, state size: the scope
BLOCK_M = 64                    # rows per consumer warpgroup (a wgmma's M): two per chunk
STAGES = 2                      # the per-head ring (x, S_in, carry)
MAXNREG = 168                   # 12 warps x 32 threads x 168 <= 64K registers at launch
CONSUMER_REGS, PRODUCER_REGS = 240, 24      # setmaxnreg targets of the workers: consumer WG 1, producer
# NVMMA shared layouts (128-byte swizzle) of the [64, P] x / y boxes and the [64, N] B / C / state boxes: built once
# here, as each costs ~6 us of host time (the probe built them per call)
XY_LAYOUT = gl.NVMMASharedLayout.get_default_for([BLOCK_M, P], gl.bfloat16)
BCS_LAYOUT = gl.NVMMASharedLayout.get_default_for([BLOCK_M, N], gl.bfloat16)


@gluon.jit
def _producer(x_desc, b_desc, c_desc, s_desc, carry_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, bc_bar, ready,
              empty, gc, row0, g, seg_len, H: gl.constexpr, HPG: gl.constexpr, STAGES: gl.constexpr,
              HAS_CARRY: gl.constexpr):
    """One warp: C / B rows of the chunk (group g) once (bc_bar), then per head i of the group into stage
    i % STAGES: both 64-row halves of x (warpgroup 1 also reads rows 0..63), S_in and the carry."""
    BM: gl.constexpr = x_desc.block_type.shape[0]         # 64 rows per box
    P: gl.constexpr = x_desc.block_type.shape[1]
    N: gl.constexpr = c_desc.block_type.shape[1]
    seg = gc // seg_len                                    # the carry's segment
    mbarrier.expect(bc_bar, 4 * c_desc.block_type.nbytes)  # two [64, N] halves each of C and B
    for k in gl.static_range(2):
        tma.async_copy_global_to_shared(c_desc, [row0 + k * BM, g * N], bc_bar, c_smem.index(k))
    for k in gl.static_range(2):
        tma.async_copy_global_to_shared(b_desc, [row0 + k * BM, g * N], bc_bar, b_smem.index(k))
    X_BYTES: gl.constexpr = 2 * x_desc.block_type.nbytes
    S_BYTES: gl.constexpr = s_desc.block_type.nbytes
    C_BYTES: gl.constexpr = carry_desc.block_type.nbytes if HAS_CARRY else 0
    for i in range(HPG):
        h = g * HPG + i
        stage = i % STAGES
        # a fresh mbarrier passes a wait on parity 1 at once: the first STAGES heads need no release
        mbarrier.wait(empty.index(stage), ((i // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(stage), X_BYTES + S_BYTES + C_BYTES)
        for k in gl.static_range(2):                                             # x [64 rows, P] halves
            tma.async_copy_global_to_shared(x_desc, [row0 + k * BM, h * P], ready.index(stage),
                                            x_bufs.index(stage * 2 + k))
        tma.async_copy_global_to_shared(s_desc, [(gc * H + h) * P, 0], ready.index(stage), s_bufs.index(stage))
        if HAS_CARRY:
            tma.async_copy_global_to_shared(carry_desc, [(seg * H + h) * P, 0], ready.index(stage),
                                            carry_bufs.index(stage))


@gluon.jit
def _dtcs_at(row, plane, offs):
    """Stage 0's (dt, cs hi, cs lo) of one head at chunk rows `offs` (layout of offs), fp32: dtcs [3, B, H, L]."""
    return gl.load(row + offs), gl.load(row + plane + offs), gl.load(row + 2 * plane + offs)


@gluon.jit
def _store_y(y_desc, y_m, acc, row, col):
    """acc [64, P] fp32 -> y's box at (row, col) through shared memory and a TMA store."""
    tma.store_wait(pendings=0)                                                    # the last head's y has left
    y_m.store(acc.to(gl.bfloat16))
    fence_async_shared()                                                          # generic writes -> TMA reads
    tma.async_copy_shared_to_global(y_desc, [row, col], y_m)


@gluon.jit
def _consumer(y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, y_smem, bc_bar, ready, empty, dtcs_ptr, D_ptr,
              carry_decay_ptr, gc, b, row0, g, seqlen, plane, y_ptr, length, BLK: gl.constexpr, H: gl.constexpr,
              HPG: gl.constexpr, STAGES: gl.constexpr, HAS_D: gl.constexpr, HAS_CARRY: gl.constexpr,
              PACKED: gl.constexpr):
    """A consumer warpgroup (4 warps): rows BLK*64 .. BLK*64+63 of the chunk (t), for the group's HPG heads.
    Packed: seqlen is the dtcs row length (n_table Q), y_ptr y [T, H*P] contiguous, length the slot's rows."""
    BM: gl.constexpr = y_desc.block_type.shape[0]                                 # 64
    P: gl.constexpr = y_desc.block_type.shape[1]                                  # 64
    gl.static_assert(BM == P, "one accumulator layout for [t, s] and [t, p] tiles")
    # wgmma accumulator layout: 4 warps stacked along M (16 rows each), m64n64k16 instructions
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    rows_l: gl.constexpr = gl.SliceLayout(1, mma)                                 # vectors over t
    cols_l: gl.constexpr = gl.SliceLayout(0, mma)                                 # vectors over s
    r = gl.arange(0, BM, layout=rows_l)
    c = gl.arange(0, BM, layout=cols_l)
    offs_t = BLK * BM + r                                                         # chunk rows t
    offs_s = BLK * BM + c                                                         # the same rows, as s
    causal = gl.expand_dims(c, 0) <= gl.expand_dims(r, 1)                         # [t, s]: s <= t
    zero = gl.full([BM, BM], 0.0, gl.float32, layout=mma)
    c_m = c_smem.index(BLK)                                                       # [64, N] bf16
    y_m = y_smem.index(BLK)                                                       # [64, P] bf16
    plane64 = plane.to(gl.int64)                                                  # 3 planes may pass 2^31

    # C B^T once for all heads: the diagonal block [t, s] and (block 1) the off-diagonal one [t, s in 0..63]
    mbarrier.wait(bc_bar, 0)
    cb_d = warpgroup_mma(c_m, b_smem.index(BLK).permute((1, 0)), zero, use_acc=False, is_async=True)
    if BLK > 0:
        cb_o = warpgroup_mma(c_m, b_smem.index(0).permute((1, 0)), zero, use_acc=False, is_async=True)
        cb_d, cb_o = warpgroup_mma_wait(num_outstanding=0, deps=(cb_d, cb_o))     # [64, 64] fp32 each
    else:
        cb_d = warpgroup_mma_wait(num_outstanding=0, deps=(cb_d, ))               # [64, 64] fp32

    for i in range(HPG):
        h = g * HPG + i
        stage = i % STAGES
        if PACKED:                                                                # head h at slot gc
            row = dtcs_ptr + (h.to(gl.int64) * seqlen + gc * 2 * BM)
        else:
            row = dtcs_ptr + ((b * H + h).to(gl.int64) * seqlen + (row0 - b * seqlen))   # head h at the chunk start
        _, hi_t, lo_t = _dtcs_at(row, plane64, offs_t)                            # [64] over t (2 per thread)
        if HAS_D:
            d_h = gl.load(D_ptr + h)
        if HAS_CARRY:
            carry_decay = gl.load(carry_decay_ptr + gc * H + h)

        mbarrier.wait(ready.index(stage), (i // STAGES) & 1)
        # state terms first (they need only the ring): the dtcs loads and exp work below overlap them
        a_st = warpgroup_mma(c_m, s_bufs.index(stage).permute((1, 0)), zero, use_acc=False,
                             is_async=True)                                       # C_m S_in^T [t, p]
        if HAS_CARRY:
            a_cr = warpgroup_mma(c_m, carry_bufs.index(stage).permute((1, 0)), zero, use_acc=False,
                                 is_async=True)                                   # C_m carry^T [t, p]
        # vectors over s are 16 registers a thread in the wgmma layout: loaded here, just before use, and the
        # off-diagonal block finished before the diagonal one's, so few are live at once (WG 1 has 240 registers)
        hi_t2 = gl.expand_dims(hi_t, 1)
        lo_t2 = gl.expand_dims(lo_t, 1)
        x_m = x_bufs.index(stage * 2 + BLK)                                       # [64 (s), P] bf16
        if BLK > 0:
            dt_o, hi_o, lo_o = _dtcs_at(row, plane64, c)                          # [64] over s in rows 0..63
            seg_o = gl.minimum((hi_t2 - gl.expand_dims(hi_o, 0)) + (lo_t2 - gl.expand_dims(lo_o, 0)), 0.0)
            m_o = cb_o * gl.exp(seg_o) * gl.expand_dims(dt_o, 0)                  # [t, s in 0..63] fp32
            m_o = gl.convert_layout(m_o.to(gl.bfloat16), op_a)                    # registers: the A operand
            a_in = warpgroup_mma(m_o, x_bufs.index(stage * 2), zero, use_acc=False, is_async=True)   # [t, p]
        dt_s, hi_s, lo_s = _dtcs_at(row, plane64, offs_s)                         # [64] over s
        seg_d = gl.minimum((hi_t2 - gl.expand_dims(hi_s, 0)) + (lo_t2 - gl.expand_dims(lo_s, 0)), 0.0)
        m_d = cb_d * gl.where(causal, gl.exp(seg_d), 0.0) * gl.expand_dims(dt_s, 0)   # [t, s] fp32
        m_d = gl.convert_layout(m_d.to(gl.bfloat16), op_a)
        if BLK > 0:
            a_in = warpgroup_mma(m_d, x_m, a_in, is_async=True)                   # [t, p]
        else:
            a_in = warpgroup_mma(m_d, x_m, zero, use_acc=False, is_async=True)    # [t, p]
        # the register A operands (m_d) are deps too: kept alive until the wgmmas reading them are done, as
        # Triton's own pipeliner does
        if HAS_CARRY:
            a_st, a_cr, a_in, m_d = warpgroup_mma_wait(num_outstanding=0, deps=(a_st, a_cr, a_in, m_d))
            a_st = a_st + carry_decay * a_cr
        else:
            a_st, a_in, m_d = warpgroup_mma_wait(num_outstanding=0, deps=(a_st, a_in, m_d))
        if HAS_D:
            xv = x_m.load(mma).to(gl.float32)             # x_t for D x [t, p], read once a_cr is folded in
        mbarrier.arrive(empty.index(stage), count=1)                              # the stage may be refilled
        acc = a_in + a_st * gl.expand_dims(gl.exp(hi_t), 1)                       # y [t, p] fp32
        if HAS_D:
            acc = acc + d_h * xv

        if PACKED:
            if length < 2 * BM:               # the rows past the slot's sequence end are not y's: not stored
                y_offs = (gl.expand_dims((row0 + offs_t).to(gl.int64) * (H * P) + h * P, 1)
                          + gl.expand_dims(c, 0))                                 # [t, p] into y [T, H*P]
                t_ok = gl.expand_dims(offs_t, 1) + gl.expand_dims(c * 0, 0) < length
                gl.store(y_ptr + y_offs, acc.to(gl.bfloat16), mask=t_ok)
            else:
                _store_y(y_desc, y_m, acc, row0 + BLK * BM, h * P)
        else:
            _store_y(y_desc, y_m, acc, row0 + BLK * BM, h * P)
    tma.store_wait(pendings=0)


@gluon.jit
def _chunk_scan_kernel(x_desc, b_desc, c_desc, s_desc, carry_desc, y_desc, dtcs_ptr, D_ptr, carry_decay_ptr, seqlen,
                       chunks_per_row, seg_len, plane, y_ptr, table_ptr, n_table, H: gl.constexpr, G: gl.constexpr,
                       STAGES: gl.constexpr, HAS_D: gl.constexpr, HAS_CARRY: gl.constexpr, PACKED: gl.constexpr,
                       CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr):
    """x_desc / y_desc: [B*L, H*P] in [64, P] boxes; b_desc / c_desc: [B*L, G*N] in [64, N] boxes; s_desc:
    s_in [n_chunks*H*P, N], carry_desc: carry [n_seg*H*P, N] (s_desc again without carry), [P, N] boxes;
    dtcs [3, B, H, L] fp32 (plane = B*H*L), D [H] fp32, carry_decay [n_chunks, H] fp32. Grid (n_chunks * G, ):
    a chunk's CTAs are adjacent, so its rows of x stay in L2. Packed: the views' rows are [T, .], table [5, n_table]
    int32 (sequence, start, length, first, last), y_ptr y [T, H*P], dtcs [3, 1, H, n_table Q] (seqlen = n_table Q);
    batched, y_ptr, table_ptr and n_table are unused."""
    HPG: gl.constexpr = H // G
    Q: gl.constexpr = 2 * x_desc.block_type.shape[0]                              # two 64-row blocks per chunk
    pid = gl.program_id(0)
    gc = pid // G
    g = pid % G
    if PACKED:
        row0 = gl.load(table_ptr + n_table + gc)                                  # the slot's first row
        length = gl.load(table_ptr + 2 * n_table + gc)
        if length == 0:                                                           # a padding slot: no rows
            return
        b = 0
    else:
        b = gc // chunks_per_row
        row0 = b * seqlen + (gc - b * chunks_per_row) * Q                         # in the [B*L, .] views
        length = Q

    # shared memory (carry): C, B [2, 64, N] 32 KB each; ring: x [STAGES*2, 64, P] 32 KB, S_in and the carry
    # [STAGES, P, N] 32 KB each; y [2, 64, P] 16 KB: 176 KB
    c_smem = gl.allocate_shared_memory(c_desc.dtype, [2] + c_desc.block_type.shape, c_desc.layout)
    b_smem = gl.allocate_shared_memory(b_desc.dtype, [2] + b_desc.block_type.shape, b_desc.layout)
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES * 2] + x_desc.block_type.shape, x_desc.layout)
    s_bufs = gl.allocate_shared_memory(s_desc.dtype, [STAGES] + s_desc.block_type.shape, s_desc.layout)
    if HAS_CARRY:
        carry_bufs = gl.allocate_shared_memory(carry_desc.dtype, [STAGES] + carry_desc.block_type.shape,
                                               carry_desc.layout)
    else:
        carry_bufs = s_bufs                                                       # never read
    y_smem = gl.allocate_shared_memory(y_desc.dtype, [2] + y_desc.block_type.shape, y_desc.layout)
    bc_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(bc_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)        # the producer's expect-tx arrival
        mbarrier.init(empty.index(i), count=2)        # one arrival per consumer warpgroup
    fence_async_shared()                              # barrier inits visible to the async proxy (TMA)

    BLK0: gl.constexpr = 0
    BLK1: gl.constexpr = 1
    # (argument tuples written out: a tuple sum here would turn the constexprs into plain ints)
    gl.warp_specialize([
        # default partition (num_warps = 4): consumer of rows 0..63
        (_consumer, (y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, y_smem, bc_bar, ready, empty, dtcs_ptr, D_ptr,
                     carry_decay_ptr, gc, b, row0, g, seqlen, plane, y_ptr, length, BLK0, H, HPG, STAGES,
                     HAS_D, HAS_CARRY, PACKED)),
        # worker, 4 warps: consumer of rows 64..127
        (_consumer, (y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, y_smem, bc_bar, ready, empty, dtcs_ptr, D_ptr,
                     carry_decay_ptr, gc, b, row0, g, seqlen, plane, y_ptr, length, BLK1, H, HPG, STAGES,
                     HAS_D, HAS_CARRY, PACKED)),
        # worker, 1 warp: TMA loads
        (_producer, (x_desc, b_desc, c_desc, s_desc, carry_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, bc_bar,
                     ready, empty, gc, row0, g, seg_len, H, HPG, STAGES, HAS_CARRY)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


def chunk_scan_launch(x, dtcs, B, C, D, table, s_in, carry_decay, carry, y, geometry: dict, cfg: dict,
                      dot_precision: str):
    """Stage 3 over all chunks into y [B, L, H, P]: the Triton chunk_scan_launch's signature (the op swaps the
    module), in gluon_eligible's scope: table None, x / y [B, L, H, P] and B / C [B, L, G, N] bf16 that read as
    [B*L, H*P] / [B*L, G*N] TMA views, s_in / carry bf16 contiguous; cfg and dot_precision unused.
    Host: six descriptor builds (~2 us each on a CI CPU; the probe also rebuilt the layouts, ~6 us each), then
    Gluon's JIT launch: Triton's argument binding plus, in the launcher, one cuTensorMapEncodeTiled per descriptor
    (not measurable without a GPU: scripts/launcher_host_time.py --cuda). -> the launched CompiledKernel."""
    assert geometry["Q"] == Q, "ssd_scan gluon chunk_scan: out of scope"
    bsz, seqlen, nheads, _ = x.shape
    packed = table is not None
    assert not packed or (bsz == 1 and y.is_contiguous()), "ssd_scan gluon chunk_scan: packed y [1, T, H, P]"
    ngroups = B.shape[2]
    rows = bsz * seqlen
    x_desc = TensorDescriptor(x, [rows, nheads * P], [x.stride(1), 1], [BLOCK_M, P], XY_LAYOUT)
    y_desc = TensorDescriptor(y, [rows, nheads * P], [y.stride(1), 1], [BLOCK_M, P], XY_LAYOUT)
    b_desc = TensorDescriptor(B, [rows, ngroups * N], [B.stride(1), 1], [BLOCK_M, N], BCS_LAYOUT)
    c_desc = TensorDescriptor(C, [rows, ngroups * N], [C.stride(1), 1], [BLOCK_M, N], BCS_LAYOUT)
    # the states [n, H, P, N] contiguous as [n*H*P, N]
    s_desc = TensorDescriptor(s_in, [s_in.shape[0] * nheads * P, N], [N, 1], [P, N], BCS_LAYOUT)
    carry_desc = s_desc if carry is None else \
        TensorDescriptor(carry, [carry.shape[0] * nheads * P, N], [N, 1], [P, N], BCS_LAYOUT)
    return _chunk_scan_kernel[(geometry["n_chunks"] * ngroups, )](
        x_desc, b_desc, c_desc, s_desc, carry_desc, y_desc, dtcs, D if D is not None else dtcs, carry_decay,
        geometry["dtcs_len"], geometry["chunks_per_row"], geometry["seg_len"], dtcs.stride(0), y,
        table if packed else carry_decay, geometry["n_table"], H=nheads, G=ngroups, STAGES=STAGES,
        HAS_D=D is not None, HAS_CARRY=carry is not None, PACKED=packed, CONSUMER_REGS=CONSUMER_REGS,
        PRODUCER_REGS=PRODUCER_REGS, num_warps=4, maxnreg=MAXNREG)


def aot_compile_all():
    """(name, CompiledKernel) for sm_90a at Nemotron-H's shape (H=64, G=8): batched with D, with and without a
    carry, and without D; packed with D and a carry: needs Triton 3.6 (the Gluon API the kernel is written for), no
    GPU."""
    from .common import aot_compile_gluon
    xy = f"tensordesc<bf16[{BLOCK_M}, {P}],{XY_LAYOUT!r}>"
    bcs = f"tensordesc<bf16[{BLOCK_M}, {N}],{BCS_LAYOUT!r}>"
    types = {"x_desc": xy, "y_desc": xy, "b_desc": bcs, "c_desc": bcs, "s_desc": bcs, "carry_desc": bcs,
             "dtcs_ptr": "*fp32", "D_ptr": "*fp32", "carry_decay_ptr": "*fp32", "seqlen": "i32",
             "chunks_per_row": "i32", "seg_len": "i32", "plane": "i32", "y_ptr": "*bf16", "table_ptr": "*i32",
             "n_table": "i32"}
    # what the JIT launcher specialises at B1 L32K (pointers 16-byte aligned, seqlen / plane / chunks_per_row
    # multiples of 16)
    # (packed, as the bench's 16 sequences: 260 table slots, seqlen = 260 Q; plane not a multiple of 16 there)
    aligned = ("dtcs_ptr", "D_ptr", "carry_decay_ptr", "seqlen", "chunks_per_row", "plane")
    packed_aligned = ("dtcs_ptr", "D_ptr", "carry_decay_ptr", "seqlen", "y_ptr", "table_ptr")
    for has_d, has_carry, packed in ((True, True, False), (True, False, False), (False, True, False),
                                     (True, True, True)):
        constexprs = {"H": 64, "G": 8, "STAGES": STAGES, "HAS_D": has_d, "HAS_CARRY": has_carry, "PACKED": packed,
                      "CONSUMER_REGS": CONSUMER_REGS, "PRODUCER_REGS": PRODUCER_REGS}
        yield (f"ssd_chunk_scan_gluon D={has_d} carry={has_carry}" + (" packed" if packed else ""),
               aot_compile_gluon(_chunk_scan_kernel, types, constexprs, aligned=packed_aligned if packed else aligned,
                                 num_warps=4, maxnreg=MAXNREG))
