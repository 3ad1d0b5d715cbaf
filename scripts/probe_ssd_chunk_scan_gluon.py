"""Can a warp-specialised Gluon kernel beat our Triton stage 3 of the SSD scan (chunk_scan) on the H200?
Our Triton `_ssd_chunk_scan_kernel` (nemotron_kernels/triton/ssd_scan_chunk_scan.py) takes ~632 us at B1 L32K
(Nemotron's shape: H=64 heads, P=64, G=8 groups of 8 heads, N=128, chunk Q=128, bf16 x / B / C / y, with D and a
carry across several segments); the target is well under 500 us.

Math (the Triton kernel's, exactly; cs = cumulative dt A from the chunk start, stage 0's fp32 hi + lo parts):
    y_t = sum_{s<=t} (C_t . B_s) exp(min((hi_t - hi_s) + (lo_t - lo_s), 0)) dt_s x_s      intra-chunk
        + exp(hi_t) C_t . (S_in + carry_decay * carry)                                    state entering the chunk
        + D x_t
Scope: batched input only (no cu_seqlens), L a multiple of Q = 128, Nemotron's shape, D present.

Design (Hopper, sm_90a; triton.experimental.gluon as in Triton 3.6), two variants (NUM_WG):
  NUM_WG=2 (default): one CTA per (chunk, group), 9 warps (padded to 12): gl.warp_specialize with
    - consumer warpgroup 0 (the default partition, 4 warps): rows 0..63 of the chunk (diagonal block only),
    - consumer warpgroup 1 (a 4-warp worker): rows 64..127 (diagonal + off-diagonal block: rows 0..63 as s),
    - producer (a 1-warp worker, 24 registers): TMA loads of C and B [128, N] once (for C B^T), then per head of
      the group (8) x [128 rows, P] (both row halves: WG 1 needs rows 0..63 as x_o), S_in [P, N] and the carry
      [P, N] into a 2-stage ring (ready / empty mbarriers; empty counts one arrival per warpgroup). S_in and the
      carry are read once per (chunk, head) where the Triton kernel reads them once per row block.
  NUM_WG=1: one CTA per (chunk, group, 64-row block), one consumer warpgroup + the 1-warp producer (which loads
    only the block's rows, and rows 0..63 for x_o / B_o past the first block).
  A consumer computes C B^T once (wgmma, C_m and B from shared memory, [t, s] orientation so the masked,
  decayed M = (C B^T o exp(segsum)) dt_s goes straight to the A operand of the next wgmma from registers), then per
  head: issue the state wgmmas C_m S_in^T and C_m carry^T (async), compute M_d (and M_o) in registers meanwhile,
  issue M_d x_m (+ M_o x_o), read x_m for D x, wait, combine in fp32, y through shared memory and a TMA store.
  Differences from the Triton kernel: the carry term is its own wgmma (C_m carry^T scaled by carry_decay in
  fp32) where Triton rounds S_in + carry_decay carry to bf16 before one dot: within bf16 rounding.

    PYTHONPATH=. python3 scripts/probe_ssd_chunk_scan_gluon.py                                # H200
    PYTHONPATH=. .venv-aot/bin/python scripts/probe_ssd_chunk_scan_gluon.py --aot             # CPU: sm_90a compile
GPU mode builds bench/bench_ssd_scan.py's inputs (dt softplus, dt_bias, D) at B1 L1024 then B1 L32K, gets the
chunk states through the op module (_plan, _chunk_states), runs our chunk_scan_launch for the reference y, then
both Gluon variants: relative max error above 1e-2 prints WRONG and exits 1 untimed. Then it times everything
with triton.testing.do_bench (warmup 10, rep 100) in us. --aot compiles both variants (with and without carry)
and prints registers, shared memory, setmaxnreg and the PTX counts of wgmma and cp.async.bulk.tensor."""
import argparse

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from bench.bench_ssd_scan import _input_maker
from scripts.gluon_probe import check, compile_sm90a, rel_err, report, time_us

H, P, G, N, Q = 64, 64, 8, 128, 128
HPG = H // G                    # heads per group: a CTA walks them
BLOCK_M = 64                    # rows per consumer warpgroup (a wgmma's M)
STAGES = 2                      # the per-head ring (x, S_in, carry)
MAXNREG = 168                   # NUM_WG=2: 12 warps x 32 threads x 168 <= 64K registers at launch
WORKER_REGS = {2: (240, 24), 1: (24, )}     # setmaxnreg targets of the workers: consumer WG 1, producer


@gluon.jit
def _cta_coords(seqlen, chunks_per_row, NUM_WG: gl.constexpr, G: gl.constexpr, Q: gl.constexpr):
    """-> (chunk gc, row b, first token of the chunk in the [B*L, .] views, group g, row block (NUM_WG=1; else 0)).
    A chunk's CTAs are adjacent (groups, then row blocks innermost): its rows of x stay in L2."""
    pid = gl.program_id(0)
    n_blk: gl.constexpr = 3 - NUM_WG                      # row blocks per CTA id: 2 CTAs per group with one WG
    gc = pid // (G * n_blk)
    g = pid // n_blk % G
    blk = pid % n_blk
    b = gc // chunks_per_row
    row0 = b * seqlen + (gc - b * chunks_per_row) * Q
    return gc, b, row0, g, blk


@gluon.jit
def _produce(x_desc, b_desc, c_desc, s_desc, carry_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs,
             bc_bar, ready, empty, gc, row0, g, seg, BLK: gl.constexpr, NUM_WG: gl.constexpr, H: gl.constexpr,
             HPG: gl.constexpr, STAGES: gl.constexpr, HAS_CARRY: gl.constexpr):
    """One warp. BLK: the row block served (NUM_WG=1), or -1: both (NUM_WG=2). Loads C / B rows once (bc_bar),
    then per head i of group g into stage i % STAGES: the x row halves the consumer(s) need, S_in, the carry."""
    BM: gl.constexpr = x_desc.block_type.shape[0]         # 64 rows per box
    P: gl.constexpr = x_desc.block_type.shape[1]
    N: gl.constexpr = c_desc.block_type.shape[1]
    HALF_BYTES: gl.constexpr = c_desc.block_type.nbytes  # [64, N] bf16
    # halves of the chunk the consumer(s) read: C rows of their blocks; B and x rows of those blocks and of
    # block 0 (the off-diagonal s of block 1)
    LO: gl.constexpr = 0 if BLK < 0 else BLK              # first C half
    N_C: gl.constexpr = 2 if BLK < 0 else 1
    N_B: gl.constexpr = 2 if BLK != 0 else 1               # B / x halves: 0 .. BLK (or both)
    mbarrier.expect(bc_bar, (N_C + N_B) * HALF_BYTES)
    for k in gl.static_range(N_C):
        tma.async_copy_global_to_shared(c_desc, [row0 + (LO + k) * BM, g * N], bc_bar, c_smem.index(LO + k))
    for k in gl.static_range(N_B):
        tma.async_copy_global_to_shared(b_desc, [row0 + k * BM, g * N], bc_bar, b_smem.index(k))
    X_BYTES: gl.constexpr = N_B * x_desc.block_type.nbytes
    S_BYTES: gl.constexpr = s_desc.block_type.nbytes
    C_BYTES: gl.constexpr = carry_desc.block_type.nbytes if HAS_CARRY else 0
    for i in range(HPG):
        h = g * HPG + i
        stage = i % STAGES
        # a fresh mbarrier passes a wait on parity 1 at once: the first STAGES heads need no release
        mbarrier.wait(empty.index(stage), ((i // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(stage), X_BYTES + S_BYTES + C_BYTES)
        for k in gl.static_range(N_B):                                           # x [64 rows, P] halves
            tma.async_copy_global_to_shared(x_desc, [row0 + k * BM, h * P], ready.index(stage),
                                            x_bufs.index(stage * 2 + k))
        tma.async_copy_global_to_shared(s_desc, [(gc * H + h) * P, 0], ready.index(stage), s_bufs.index(stage))
        if HAS_CARRY:
            tma.async_copy_global_to_shared(carry_desc, [(seg * H + h) * P, 0], ready.index(stage),
                                            carry_bufs.index(stage))


@gluon.jit
def _producer(x_desc, b_desc, c_desc, s_desc, carry_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, bc_bar,
              ready, empty, gc, row0, g, seg_len, blk, NUM_WG: gl.constexpr, H: gl.constexpr, HPG: gl.constexpr,
              STAGES: gl.constexpr, HAS_CARRY: gl.constexpr):
    """The producer partition: the row block is a run-time value with one warpgroup, so each branch instantiates
    _produce at its constant block (the byte counts of mbarrier.expect are compile-time)."""
    seg = gc // seg_len                                                           # the carry's segment
    if NUM_WG == 2:
        _produce(x_desc, b_desc, c_desc, s_desc, carry_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, bc_bar,
                 ready, empty, gc, row0, g, seg, -1, NUM_WG, H, HPG, STAGES, HAS_CARRY)
    else:
        if blk == 0:
            _produce(x_desc, b_desc, c_desc, s_desc, carry_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs,
                     bc_bar, ready, empty, gc, row0, g, seg, 0, NUM_WG, H, HPG, STAGES, HAS_CARRY)
        else:
            _produce(x_desc, b_desc, c_desc, s_desc, carry_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs,
                     bc_bar, ready, empty, gc, row0, g, seg, 1, NUM_WG, H, HPG, STAGES, HAS_CARRY)


@gluon.jit
def _dtcs_at(row, plane, offs):
    """Stage 0's (dt, cs hi, cs lo) of one head at chunk rows `offs` (layout of offs), fp32: dtcs [3, B, H, L]."""
    return gl.load(row + offs), gl.load(row + plane + offs), gl.load(row + 2 * plane + offs)


@gluon.jit
def _consume(y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, y_smem, bc_bar, ready, empty,
             dtcs_ptr, D_ptr, carry_decay_ptr, gc, b, row0, g, seqlen, plane, BLK: gl.constexpr, H: gl.constexpr,
             HPG: gl.constexpr, STAGES: gl.constexpr, HAS_CARRY: gl.constexpr):
    """A consumer warpgroup (4 warps): rows BLK*64 .. BLK*64+63 of the chunk (t), for the group's HPG heads."""
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
        row = dtcs_ptr + ((b * H + h).to(gl.int64) * seqlen + (row0 - b * seqlen))   # head h at the chunk start
        _, hi_t, lo_t = _dtcs_at(row, plane64, offs_t)                            # [64] over t (2 per thread)
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
        # x_t for D x [t, p], read once a_cr is folded in (fewer live registers)
        xv = x_m.load(mma).to(gl.float32)
        mbarrier.arrive(empty.index(stage), count=1)                              # the stage may be refilled
        acc = a_in + a_st * gl.expand_dims(gl.exp(hi_t), 1) + d_h * xv           # y [t, p] fp32

        tma.store_wait(pendings=0)                                                # the last head's y has left
        y_smem.store(acc.to(gl.bfloat16))
        fence_async_shared()                                                      # generic writes -> TMA reads
        tma.async_copy_shared_to_global(y_desc, [row0 + BLK * BM, h * P], y_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _consumer(y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, y_smem, bc_bar, ready, empty,
              dtcs_ptr, D_ptr, carry_decay_ptr, gc, b, row0, g, seqlen, plane, blk, WG: gl.constexpr,
              NUM_WG: gl.constexpr, H: gl.constexpr, HPG: gl.constexpr, STAGES: gl.constexpr,
              HAS_CARRY: gl.constexpr):
    """A consumer partition: warpgroup WG's rows (NUM_WG=2) or the CTA's run-time row block (NUM_WG=1), each
    instantiated at a constant block so the off-diagonal work is compiled only where it exists."""
    if NUM_WG == 2:
        _consume(y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, y_smem.index(WG), bc_bar, ready, empty,
                 dtcs_ptr, D_ptr, carry_decay_ptr, gc, b, row0, g, seqlen, plane, WG, H, HPG, STAGES, HAS_CARRY)
    else:
        if blk == 0:
            _consume(y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, y_smem.index(0), bc_bar, ready, empty,
                     dtcs_ptr, D_ptr, carry_decay_ptr, gc, b, row0, g, seqlen, plane, 0, H, HPG, STAGES, HAS_CARRY)
        else:
            _consume(y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, y_smem.index(0), bc_bar, ready, empty,
                     dtcs_ptr, D_ptr, carry_decay_ptr, gc, b, row0, g, seqlen, plane, 1, H, HPG, STAGES, HAS_CARRY)


@gluon.jit
def _chunk_scan_gluon_kernel(x_desc, b_desc, c_desc, s_desc, carry_desc, y_desc, dtcs_ptr, D_ptr, carry_decay_ptr,
                             seqlen, chunks_per_row, seg_len, plane, H: gl.constexpr, G: gl.constexpr,
                             Q: gl.constexpr, STAGES: gl.constexpr, NUM_WG: gl.constexpr, HAS_CARRY: gl.constexpr,
                             WORKER_REG_0: gl.constexpr, WORKER_REG_1: gl.constexpr):
    """x_desc / y_desc: [B*L, H*P] in [64, P] boxes; b_desc / c_desc: [B*L, G*N] in [64, N] boxes; s_desc:
    s_in [n_chunks*H*P, N], carry_desc: carry_lp [n_seg*H*P, N] (s_desc again without carry), [P, N] boxes;
    dtcs [3, B, H, L] fp32 (plane = B*H*L), D [H] fp32, carry_decay [n_chunks, H] fp32."""
    gl.static_assert(Q == 2 * x_desc.block_type.shape[0], "two 64-row blocks per chunk")
    HPG: gl.constexpr = H // G
    gc, b, row0, g, blk = _cta_coords(seqlen, chunks_per_row, NUM_WG, G, Q)

    # shared memory (NUM_WG=2, carry): C, B [2, 64, N] 32 KB each; ring: x [STAGES*2, 64, P] 32 KB, S_in and the
    # carry [STAGES, P, N] 32 KB each; y [NUM_WG, 64, P] 16 KB: 176 KB
    c_smem = gl.allocate_shared_memory(c_desc.dtype, [2] + c_desc.block_type.shape, c_desc.layout)
    b_smem = gl.allocate_shared_memory(b_desc.dtype, [2] + b_desc.block_type.shape, b_desc.layout)
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES * 2] + x_desc.block_type.shape, x_desc.layout)
    s_bufs = gl.allocate_shared_memory(s_desc.dtype, [STAGES] + s_desc.block_type.shape, s_desc.layout)
    if HAS_CARRY:
        carry_bufs = gl.allocate_shared_memory(carry_desc.dtype, [STAGES] + carry_desc.block_type.shape,
                                               carry_desc.layout)
    else:
        carry_bufs = s_bufs                                                       # never read
    y_smem = gl.allocate_shared_memory(y_desc.dtype, [NUM_WG] + y_desc.block_type.shape, y_desc.layout)
    bc_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(bc_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)        # the producer's expect-tx arrival
        mbarrier.init(empty.index(i), count=NUM_WG)   # one arrival per consumer warpgroup
    fence_async_shared()                              # barrier inits visible to the async proxy (TMA)

    WG0: gl.constexpr = 0
    WG1: gl.constexpr = 1
    # (argument tuples written out: a tuple sum here would turn the constexprs into plain ints)
    if NUM_WG == 2:
        gl.warp_specialize([
            # default partition (num_warps = 4): consumer of rows 0..63
            (_consumer, (y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, y_smem, bc_bar, ready, empty, dtcs_ptr,
                         D_ptr, carry_decay_ptr, gc, b, row0, g, seqlen, plane, blk, WG0, NUM_WG, H, HPG, STAGES,
                         HAS_CARRY)),
            # worker, 4 warps: consumer of rows 64..127
            (_consumer, (y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, y_smem, bc_bar, ready, empty, dtcs_ptr,
                         D_ptr, carry_decay_ptr, gc, b, row0, g, seqlen, plane, blk, WG1, NUM_WG, H, HPG, STAGES,
                         HAS_CARRY)),
            # worker, 1 warp: TMA loads
            (_producer, (x_desc, b_desc, c_desc, s_desc, carry_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs,
                         bc_bar, ready, empty, gc, row0, g, seg_len, blk, NUM_WG, H, HPG, STAGES, HAS_CARRY)),
        ], [4, 1], [WORKER_REG_0, WORKER_REG_1])
    else:
        gl.warp_specialize([
            # default partition (num_warps = 4): consumer of row block blk
            (_consumer, (y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, y_smem, bc_bar, ready, empty, dtcs_ptr,
                         D_ptr, carry_decay_ptr, gc, b, row0, g, seqlen, plane, blk, WG0, NUM_WG, H, HPG, STAGES,
                         HAS_CARRY)),
            # worker, 1 warp: TMA loads
            (_producer, (x_desc, b_desc, c_desc, s_desc, carry_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs,
                         bc_bar, ready, empty, gc, row0, g, seg_len, blk, NUM_WG, H, HPG, STAGES, HAS_CARRY)),
        ], [1], [WORKER_REG_0])


# ------------------------------------------------------------------------------------------------------- launch


def _layouts():
    """NVMMA shared layouts (128-byte swizzle) of the [64, P] x / y boxes and the [64, N] B / C / state boxes."""
    return (gl.NVMMASharedLayout.get_default_for([BLOCK_M, P], gl.bfloat16),
            gl.NVMMASharedLayout.get_default_for([BLOCK_M, N], gl.bfloat16))


def gluon_chunk_scan(x, dtcs, B, C, D, s_in, carry_decay, carry, y, geometry: dict, num_wg: int = 2):
    """y [B, L, H, P] bf16 (written) from x [B, L, H, P], B / C [B, L, G, N] bf16 contiguous, dtcs [3, B, H, L],
    D [H] fp32, s_in [n_chunks, H, P, N] bf16, carry_decay [n_chunks, H] fp32, carry [n_seg, H, P, N] bf16 | None."""
    bsz, seqlen = x.shape[:2]
    assert x.shape[2:] == (H, P) and B.shape[2:] == (G, N) and seqlen % Q == 0 and geometry["Q"] == Q, \
        "probe: Nemotron's shape, L a multiple of 128"
    assert all(t.is_contiguous() for t in (x, B, C, dtcs, s_in, carry_decay, y)) and D is not None
    xl, nl = _layouts()
    x_desc = TensorDescriptor.from_tensor(x.view(bsz * seqlen, H * P), [BLOCK_M, P], xl)
    y_desc = TensorDescriptor.from_tensor(y.view(bsz * seqlen, H * P), [BLOCK_M, P], xl)
    b_desc = TensorDescriptor.from_tensor(B.view(bsz * seqlen, G * N), [BLOCK_M, N], nl)
    c_desc = TensorDescriptor.from_tensor(C.view(bsz * seqlen, G * N), [BLOCK_M, N], nl)
    s_desc = TensorDescriptor.from_tensor(s_in.view(-1, N), [P, N], nl)
    carry_desc = TensorDescriptor.from_tensor(carry.view(-1, N), [P, N], nl) if carry is not None else s_desc
    regs = WORKER_REGS[num_wg] + (0, )
    grid = (geometry["n_chunks"] * G * (3 - num_wg), )
    _chunk_scan_gluon_kernel[grid](
        x_desc, b_desc, c_desc, s_desc, carry_desc, y_desc, dtcs, D, carry_decay, seqlen, geometry["chunks_per_row"],
        geometry["seg_len"], dtcs[0].numel(), H=H, G=G, Q=Q, STAGES=STAGES, NUM_WG=num_wg,
        HAS_CARRY=carry is not None, WORKER_REG_0=regs[0], WORKER_REG_1=regs[1], num_warps=4,
        maxnreg=MAXNREG if num_wg == 2 else None)
    return y


# ---------------------------------------------------------------------------------------------------------- AOT


def aot(num_wg: int, has_carry: bool):
    """Compile for sm_90a without a GPU; print registers, shared memory and PTX instruction counts."""
    xl, nl = _layouts()
    x_ty = f"tensordesc<bf16[{BLOCK_M}, {P}],{xl!r}>"
    n_ty = f"tensordesc<bf16[{BLOCK_M}, {N}],{nl!r}>"
    regs = WORKER_REGS[num_wg] + (0, )
    constexprs = {"H": H, "G": G, "Q": Q, "STAGES": STAGES, "NUM_WG": num_wg, "HAS_CARRY": has_carry,
                  "WORKER_REG_0": regs[0], "WORKER_REG_1": regs[1]}
    types = {"x_desc": x_ty, "y_desc": x_ty, "b_desc": n_ty, "c_desc": n_ty, "s_desc": n_ty, "carry_desc": n_ty,
             "dtcs_ptr": "*fp32", "D_ptr": "*fp32", "carry_decay_ptr": "*fp32", "seqlen": "i32",
             "chunks_per_row": "i32", "seg_len": "i32", "plane": "i32"}
    # what the JIT launcher specialises at B1 L32K (pointers 16-byte aligned, seqlen / plane / chunks_per_row
    # multiples of 16)
    aligned = ("dtcs_ptr", "D_ptr", "carry_decay_ptr", "seqlen", "chunks_per_row", "plane")
    options = {"num_warps": 4} if num_wg == 1 else {"num_warps": 4, "maxnreg": MAXNREG}
    ck = compile_sm90a(_chunk_scan_gluon_kernel, types, constexprs, aligned=aligned, **options)
    print(f"compiled _chunk_scan_gluon_kernel NUM_WG={num_wg} carry={has_carry} for sm_90a", flush=True)
    report(ck, f"ssd_scan_wg{num_wg}_carry{int(has_carry)}")


# ---------------------------------------------------------------------------------------------------------- GPU


def _stage3_inputs(s: dict):
    """What ssd_scan_fwd hands stage 3: the plan and stages 0-2's outputs (dt_softplus, no initial states)."""
    from nemotron_kernels.ops import ssd_scan as ssd_op
    x, B = s["x"], s["B"]
    plan = ssd_op._plan(x, B, Q, None, x.shape[0])
    s_in, carry_decay, carry_lp, dtcs = ssd_op._chunk_states(x, s["dt"], s["A"].float().contiguous(), B,
                                                             s["dt_bias"].float().contiguous(), None, True, plan)
    return plan, s_in, carry_decay, carry_lp, dtcs



def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aot", action="store_true", help="compile for sm_90a without a GPU and report")
    args = parser.parse_args()
    if args.aot:
        for num_wg in (2, 1):
            for has_carry in (True, False):
                aot(num_wg, has_carry)
        return
    from nemotron_kernels.triton import mamba_common
    scan_k = mamba_common.kernel_module("ssd_scan_chunk_scan")
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}", flush=True)
    for bsz, seqlen in ((1, 1024), (1, 32768)):
        s = _input_maker(bsz, seqlen, torch.device("cuda"))(0)      # the bench's inputs
        x, B, C, D = s["x"], s["B"].contiguous(), s["C"].contiguous(), s["D"].float().contiguous()
        plan, s_in, carry_decay, carry_lp, dtcs = _stage3_inputs(s)
        geometry = plan["geometry"]
        y_ref = torch.empty_like(x)

        def ours():
            scan_k.chunk_scan_launch(x, dtcs, B, C, D, None, s_in, carry_decay, carry_lp, y_ref, geometry,
                                     plan["cfg"]["chunk_scan"], plan["precision"])

        ours()
        torch.cuda.synchronize()
        name = f"B{bsz} L{seqlen // 1024}K" if seqlen % 1024 == 0 else f"B{bsz} L{seqlen}"
        print(f"{name}: {geometry['n_chunks']} chunks, {geometry['n_seg']} segments "
              f"(carry {'yes' if carry_lp is not None else 'no'})", flush=True)
        outs = {}
        for num_wg in (2, 1):
            y = torch.empty_like(x)
            gluon_chunk_scan(x, dtcs, B, C, D, s_in, carry_decay, carry_lp, y, geometry, num_wg)
            torch.cuda.synchronize()
            check(f"gluon NUM_WG={num_wg}", {"y": rel_err(y, y_ref)}, 1e-2, "chunk_scan_launch")
            outs[num_wg] = y

        time_us("ours: triton chunk_scan_launch", ours)
        for num_wg in (2, 1):
            time_us(f"gluon probe NUM_WG={num_wg} ({num_wg} consumer WG{'s' if num_wg > 1 else ''} + TMA warp)",
                    lambda num_wg=num_wg: gluon_chunk_scan(x, dtcs, B, C, D, s_in, carry_decay, carry_lp,
                                                           outs[num_wg], geometry, num_wg))


if __name__ == "__main__":
    main()
