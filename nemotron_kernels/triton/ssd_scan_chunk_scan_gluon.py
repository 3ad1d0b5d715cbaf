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
    S_in [P, N], the carry [P, N] and stage 0's 3 dtcs rows [Q] into a 2-stage ring (ready / empty mbarriers; empty
    counts one arrival per warpgroup). S_in and the carry are read once per (chunk, head), where the Triton kernel
    reads them per row block.
A consumer computes C B^T once (wgmma, [t, s]: the masked, decayed M = (C B^T o exp(segsum)) dt_s goes straight to
the A operand of the next wgmma from registers), then per head: the state wgmmas C S_in^T and C carry^T (async),
M in registers meanwhile, M x, D x from the ring's x, y through shared memory and a TMA store.
Imported only where gluon_eligible holds (never interpreted: Gluon has no interpreter), so not via kernel_module.

H200 (scripts/probe_ssd_chunk_scan_gluon.py, bench/NOTES.md sessions 26-27; y bitwise the same throughout): B1 L32K
(256 chunks, carries) 337 us against Triton's 634, packed (16 sequences, 260 chunks) 348 against 620. Session 26's
build read the dtcs rows by global loads after each head's ready wait, a DRAM latency on every head's path to its
stage release: 420 us, packed 445. Tried with the ring's dtcs and dropped, neither gaining: a third stage (340 us,
packed 355) and y staged in B's slots once C B^T has read them (336, 350). What is left (estimates): ~0.96 GB
through DRAM (x, S_in, y 268 MB each, B / C 134, dtcs 25) takes 230 us at the 4.19 TB/s copy ceiling, so 337 us is
68% of it; as deeper buffering did not help, the rest is likely each CTA's serial start (C / B and the first stage
in one latency, then C B^T: ~2 us of its ~21) and end (the last y store's drain) over 16 waves. Not tried: a
persistent grid (prefetching the next tile's C / B needs 64 KB more), 2 CTAs an SM (> 113 KB each)."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

Q, P, N = 128, 64, 128          # chunk, head dim, state size: the scope
BLOCK_M = 64                    # rows per consumer warpgroup (a wgmma's M): two per chunk
STAGES = 2                      # the per-head ring (x, S_in, carry, dtcs): a third stage gained nothing (H200)
MAXNREG = 168                   # 12 warps x 32 threads x 168 <= 64K registers at launch
CONSUMER_REGS, PRODUCER_REGS = 240, 24      # setmaxnreg targets of the workers: consumer WG 1, producer
# NVMMA shared layouts (128-byte swizzle) of the [64, P] x / y boxes and the [64, N] B / C / state boxes: built once
# here, as each costs ~6 us of host time (the probe built them per call)
XY_LAYOUT = gl.NVMMASharedLayout.get_default_for([BLOCK_M, P], gl.bfloat16)
BCS_LAYOUT = gl.NVMMASharedLayout.get_default_for([BLOCK_M, N], gl.bfloat16)
# stage 0's (dt, cs hi, cs lo) rows of a (chunk, head): [1, Q] fp32 boxes, unswizzled (read as plain vectors)
DT_LAYOUT = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)


@gluon.jit
def _producer(x_desc, b_desc, c_desc, s_desc, carry_desc, dt_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs,
              dt_bufs, bc_bar, ready, empty, gc, row0, g, seg_len, dt_row, dt_col, dt_plane_rows, H: gl.constexpr,
              HPG: gl.constexpr, STAGES: gl.constexpr, HAS_CARRY: gl.constexpr):
    """One warp: C / B rows of the chunk (group g) once (bc_bar), then per head i of the group into stage
    i % STAGES: both 64-row halves of x (warpgroup 1 also reads rows 0..63), S_in, the carry and the head's 3 dtcs
    rows (plane k: row k dt_plane_rows + dt_row + h, columns dt_col .. dt_col + Q - 1)."""
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
    DT_BYTES: gl.constexpr = 3 * dt_desc.block_type.nbytes
    for i in range(HPG):
        h = g * HPG + i
        stage = i % STAGES
        # a fresh mbarrier passes a wait on parity 1 at once: the first STAGES heads need no release
        mbarrier.wait(empty.index(stage), ((i // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(stage), X_BYTES + S_BYTES + C_BYTES + DT_BYTES)
        for k in gl.static_range(2):                                             # x [64 rows, P] halves
            tma.async_copy_global_to_shared(x_desc, [row0 + k * BM, h * P], ready.index(stage),
                                            x_bufs.index(stage * 2 + k))
        tma.async_copy_global_to_shared(s_desc, [(gc * H + h) * P, 0], ready.index(stage), s_bufs.index(stage))
        if HAS_CARRY:
            tma.async_copy_global_to_shared(carry_desc, [(seg * H + h) * P, 0], ready.index(stage),
                                            carry_bufs.index(stage))
        for k in gl.static_range(3):                                             # dt, cs hi, cs lo
            tma.async_copy_global_to_shared(dt_desc, [k * dt_plane_rows + dt_row + h, dt_col], ready.index(stage),
                                            dt_bufs.index(stage * 3 + k))


@gluon.jit
def _dtcs_smem(dt_bufs, stage, start: gl.constexpr, layout: gl.constexpr):
    """(dt, cs hi, cs lo) at chunk rows start .. start + 63 from ring stage `stage` (dt_bufs [STAGES*3, 1, Q] fp32),
    in `layout` (a slice of the wgmma layout)."""
    BM: gl.constexpr = 64
    Q: gl.constexpr = dt_bufs.shape[2]
    LIN: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0])   # plain fp32 [Q]
    return (dt_bufs.index(stage * 3)._reinterpret(gl.float32, [Q], LIN).slice(start, BM).load(layout),
            dt_bufs.index(stage * 3 + 1)._reinterpret(gl.float32, [Q], LIN).slice(start, BM).load(layout),
            dt_bufs.index(stage * 3 + 2)._reinterpret(gl.float32, [Q], LIN).slice(start, BM).load(layout))


@gluon.jit
def _store_y(y_desc, y_m, acc, row, col):
    """acc [64, P] fp32 -> y's box at (row, col) through shared memory and a TMA store."""
    tma.store_wait(pendings=0)                                                    # the last head's y has left
    y_m.store(acc.to(gl.bfloat16))
    fence_async_shared()                                                          # generic writes -> TMA reads
    tma.async_copy_shared_to_global(y_desc, [row, col], y_m)


@gluon.jit
def _consumer(y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, dt_bufs, y_smem, bc_bar, ready, empty, D_ptr,
              carry_decay_ptr, gc, row0, g, y_slot, length, BLK: gl.constexpr, H: gl.constexpr, HPG: gl.constexpr,
              STAGES: gl.constexpr, HAS_D: gl.constexpr, HAS_CARRY: gl.constexpr, PACKED: gl.constexpr):
    """A consumer warpgroup (4 warps): rows BLK*64 .. BLK*64+63 of the chunk (t), for the group's HPG heads.
    Packed: y_slot y's row row0 (y [T, H*P] contiguous), length the slot's rows."""
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
    causal = gl.expand_dims(c, 0) <= gl.expand_dims(r, 1)                         # [t, s]: s <= t
    zero = gl.full([BM, BM], 0.0, gl.float32, layout=mma)
    c_m = c_smem.index(BLK)                                                       # [64, N] bf16
    y_m = y_smem.index(BLK)                                                       # [64, P] bf16

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
        if HAS_D:
            d_h = gl.load(D_ptr + h)
        if HAS_CARRY:
            carry_decay = gl.load(carry_decay_ptr + gc * H + h)

        # dtcs come with the stage (H200: 420 -> 337 us at B1 L32K against global loads after this wait)
        mbarrier.wait(ready.index(stage), (i // STAGES) & 1)
        _, hi_t, lo_t = _dtcs_smem(dt_bufs, stage, BLK * BM, rows_l)              # [64] over t
        # state terms first (they need only the ring): the exp work below overlaps them
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
            dt_o, hi_o, lo_o = _dtcs_smem(dt_bufs, stage, 0, cols_l)              # [64] over s in rows 0..63
            seg_o = gl.minimum((hi_t2 - gl.expand_dims(hi_o, 0)) + (lo_t2 - gl.expand_dims(lo_o, 0)), 0.0)
            m_o = cb_o * gl.exp(seg_o) * gl.expand_dims(dt_o, 0)                  # [t, s in 0..63] fp32
            m_o = gl.convert_layout(m_o.to(gl.bfloat16), op_a)                    # registers: the A operand
            a_in = warpgroup_mma(m_o, x_bufs.index(stage * 2), zero, use_acc=False, is_async=True)   # [t, p]
        dt_s, hi_s, lo_s = _dtcs_smem(dt_bufs, stage, BLK * BM, cols_l)           # [64] over s
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
                # addresses from y_slot and length (captures): LLVM hoists what only kernel arguments and the
                # thread index give above the partitions' dispatch, where ptxas spilled it (8-16 B)
                y_rows = gl.minimum(offs_t, length - 1)
                y_offs = gl.expand_dims(y_rows * (H * P) + h * P, 1) + gl.expand_dims(c, 0)   # [t, p] in y's rows
                t_ok = gl.expand_dims(offs_t, 1) + gl.expand_dims(c * 0, 0) < length
                gl.store(y_slot + y_offs, acc.to(gl.bfloat16), mask=t_ok)
            else:
                _store_y(y_desc, y_m, acc, row0 + BLK * BM, h * P)
        else:
            _store_y(y_desc, y_m, acc, row0 + BLK * BM, h * P)
    tma.store_wait(pendings=0)


@gluon.jit
def _chunk_scan_kernel(x_desc, b_desc, c_desc, s_desc, carry_desc, y_desc, dt_desc, D_ptr, carry_decay_ptr, seqlen,
                       chunks_per_row, seg_len, dt_plane_rows, y_ptr, table_ptr, n_table, H: gl.constexpr,
                       G: gl.constexpr, STAGES: gl.constexpr, HAS_D: gl.constexpr, HAS_CARRY: gl.constexpr,
                       PACKED: gl.constexpr, CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr):
    """x_desc / y_desc: [B*L, H*P] in [64, P] boxes; b_desc / c_desc: [B*L, G*N] in [64, N] boxes; s_desc:
    s_in [n_chunks*H*P, N], carry_desc: carry [n_seg*H*P, N] (s_desc again without carry), [P, N] boxes; dt_desc:
    dtcs [3, B, H, L] fp32 as [3*B*H, L] rows (dt_plane_rows = B*H a plane) in [1, Q] boxes; D [H] fp32,
    carry_decay [n_chunks, H] fp32. Grid (n_chunks * G, ): a chunk's CTAs are adjacent, so its rows of x stay in
    L2. Packed: the views' rows are [T, .], table [5, n_table] int32 (sequence, start, length, first, last), y_ptr
    y [T, H*P] contiguous, dtcs [3, 1, H, n_table Q]; batched, y_ptr, table_ptr and n_table are unused, packed
    seqlen and chunks_per_row."""
    HPG: gl.constexpr = H // G
    Q: gl.constexpr = 2 * x_desc.block_type.shape[0]                              # two 64-row blocks per chunk
    P: gl.constexpr = x_desc.block_type.shape[1]
    pid = gl.program_id(0)
    gc = pid // G
    g = pid % G
    if PACKED:
        row0 = gl.load(table_ptr + n_table + gc)                                  # the slot's first row
        length = gl.load(table_ptr + 2 * n_table + gc)
        if length == 0:                                                           # a padding slot: no rows
            return
        dt_row = 0                                                                # head 0's dtcs row: slot gc's
        dt_col = gc * Q                                                           # columns
        y_slot = y_ptr + row0.to(gl.int64) * (H * P)                             # y's row row0
    else:
        b = gc // chunks_per_row
        dt_col = (gc - b * chunks_per_row) * Q                                    # the chunk's start in its row
        row0 = b * seqlen + dt_col                                                # in the [B*L, .] views
        length = Q
        dt_row = b * H
        y_slot = y_ptr                                                            # unused

    # shared memory (carry): C, B [2, 64, N] 32 KB each; ring: x [STAGES*2, 64, P] 32 KB, S_in and the carry
    # [STAGES, P, N] 32 KB each, dtcs [STAGES*3, 1, Q] fp32 3 KB; y [2, 64, P] 16 KB: 179 KB
    c_smem = gl.allocate_shared_memory(c_desc.dtype, [2] + c_desc.block_type.shape, c_desc.layout)
    b_smem = gl.allocate_shared_memory(b_desc.dtype, [2] + b_desc.block_type.shape, b_desc.layout)
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES * 2] + x_desc.block_type.shape, x_desc.layout)
    s_bufs = gl.allocate_shared_memory(s_desc.dtype, [STAGES] + s_desc.block_type.shape, s_desc.layout)
    if HAS_CARRY:
        carry_bufs = gl.allocate_shared_memory(carry_desc.dtype, [STAGES] + carry_desc.block_type.shape,
                                               carry_desc.layout)
    else:
        carry_bufs = s_bufs                                                       # never read
    dt_bufs = gl.allocate_shared_memory(gl.float32, [STAGES * 3] + dt_desc.block_type.shape, dt_desc.layout)
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
        (_consumer, (y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, dt_bufs, y_smem, bc_bar, ready, empty, D_ptr,
                     carry_decay_ptr, gc, row0, g, y_slot, length, BLK0, H, HPG, STAGES, HAS_D, HAS_CARRY, PACKED)),
        # worker, 4 warps: consumer of rows 64..127
        (_consumer, (y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, dt_bufs, y_smem, bc_bar, ready, empty, D_ptr,
                     carry_decay_ptr, gc, row0, g, y_slot, length, BLK1, H, HPG, STAGES, HAS_D, HAS_CARRY, PACKED)),
        # worker, 1 warp: TMA loads
        (_producer, (x_desc, b_desc, c_desc, s_desc, carry_desc, dt_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs,
                     dt_bufs, bc_bar, ready, empty, gc, row0, g, seg_len, dt_row, dt_col, dt_plane_rows, H, HPG,
                     STAGES, HAS_CARRY)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


def chunk_scan_launch(x, dtcs, B, C, D, table, s_in, carry_decay, carry, y, geometry: dict, cfg: dict,
                      dot_precision: str):
    """Stage 3 over all chunks into y [B, L, H, P]: the Triton chunk_scan_launch's signature (the op swaps the
    module), in gluon_eligible's scope: x / y [B, L, H, P] and B / C [B, L, G, N] bf16 that read as [B*L, H*P] /
    [B*L, G*N] TMA views, s_in / carry bf16 contiguous, dtcs chunk_cumsum_launch's; cfg and dot_precision unused.
    Host: seven descriptor builds (~2 us each on a CI CPU; the probe also rebuilt the layouts, ~6 us each), then
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
    # dtcs [3, B, H, len] as [3*B*H, len] rows: chunk_cumsum_launch's fresh tensor (a 16-byte aligned base) with
    # len = L (a multiple of Q here) or n_table Q, so the row stride is a multiple of 16 bytes, as TMA needs
    row_len = geometry["dtcs_len"]
    assert dtcs.is_contiguous() and dtcs.shape[-1] == row_len and row_len % Q == 0, \
        "ssd_scan gluon chunk_scan: dtcs [3, B, H, len] contiguous, len a multiple of the chunk"
    dt_desc = TensorDescriptor(dtcs, [dtcs.numel() // row_len, row_len], [row_len, 1], [1, Q], DT_LAYOUT)
    return _chunk_scan_kernel[(geometry["n_chunks"] * ngroups, )](
        x_desc, b_desc, c_desc, s_desc, carry_desc, y_desc, dt_desc, D if D is not None else carry_decay,
        carry_decay, row_len, geometry["chunks_per_row"], geometry["seg_len"], dtcs.shape[1] * nheads, y,
        table if packed else carry_decay, geometry["n_table"], H=nheads, G=ngroups, STAGES=STAGES,
        HAS_D=D is not None, HAS_CARRY=carry is not None, PACKED=packed, CONSUMER_REGS=CONSUMER_REGS,
        PRODUCER_REGS=PRODUCER_REGS, num_warps=4, maxnreg=MAXNREG)


def aot_compile_all():
    """(name, CompiledKernel) for sm_90a at Nemotron-H's shape (H=64, G=8) of every variant the op dispatches:
    batched and packed, with and without D, with and without a carry: needs Triton 3.6 (the Gluon API the kernel
    is written for), no GPU."""
    from .common import aot_compile_gluon
    xy = f"tensordesc<bf16[{BLOCK_M}, {P}],{XY_LAYOUT!r}>"
    bcs = f"tensordesc<bf16[{BLOCK_M}, {N}],{BCS_LAYOUT!r}>"
    types = {"x_desc": xy, "y_desc": xy, "b_desc": bcs, "c_desc": bcs, "s_desc": bcs, "carry_desc": bcs,
             "dt_desc": f"tensordesc<fp32[1, {Q}],{DT_LAYOUT!r}>", "D_ptr": "*fp32", "carry_decay_ptr": "*fp32",
             "seqlen": "i32", "chunks_per_row": "i32", "seg_len": "i32", "dt_plane_rows": "i32", "y_ptr": "*bf16",
             "table_ptr": "*i32", "n_table": "i32"}
    # what the JIT launcher specialises at B1 L32K (pointers 16-byte aligned, seqlen / chunks_per_row / B*H
    # multiples of 16) and at the bench's 16 packed sequences (260 table slots, seqlen = 260 Q)
    aligned = ("D_ptr", "carry_decay_ptr", "seqlen", "chunks_per_row", "dt_plane_rows")
    packed_aligned = ("D_ptr", "carry_decay_ptr", "seqlen", "dt_plane_rows", "y_ptr", "table_ptr")
    for packed in (False, True):
        for has_d in (True, False):
            for has_carry in (True, False):
                constexprs = {"H": 64, "G": 8, "STAGES": STAGES, "HAS_D": has_d, "HAS_CARRY": has_carry,
                              "PACKED": packed, "CONSUMER_REGS": CONSUMER_REGS, "PRODUCER_REGS": PRODUCER_REGS}
                yield (f"ssd_chunk_scan_gluon D={has_d} carry={has_carry}" + (" packed" if packed else ""),
                       aot_compile_gluon(_chunk_scan_kernel, types, constexprs,
                                         aligned=packed_aligned if packed else aligned, num_warps=4, maxnreg=MAXNREG))
