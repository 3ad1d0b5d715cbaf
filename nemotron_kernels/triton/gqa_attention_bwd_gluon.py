"""GQA flash-attention backward for Hopper in Gluon (FlashAttention-3 style): dq, dk, dv for fp16 / bf16 on sm_90.

H200, B4 S8K 32/2 heads D=128 causal bf16 (scripts/probe_attn_bwd_gluon.py, the measurement record): dk/dv 7.25 ms
(606 TFLOP/s) against 14.57 for our Triton dk/dv, dq 4.83 ms (683) against 5.54; the whole backward (our Triton
preprocess + the two kernels here) 12.66 ms = 434 TFLOP/s against 19.72 (279) for our Triton backward, 18.04 for
SDPA FLASH and 10.93 for cuDNN. Deterministic like the Triton backward: no atomics.

Math (the Triton backward's; lse2 = lse log2 e and delta = rowsum(o do) from its preprocess kernel, qk_scale =
softmax_scale log2 e), per visible (key, query) pair:
    P^T = exp2(K Q^T qk_scale - lse2),  dP^T = V dO^T,  dS^T = P^T (dP^T - delta);
    dV = sum P^T dO,  dK = scale sum dS^T Q  (over the queries and the group's query heads),  dQ = scale sum dS K.

Two kernels, each gl.warp_specialize with two consumer warpgroups (the default partition and a 4-warp worker, 240
registers by setmaxnreg) and a 1-warp TMA producer (24 registers) filling a ready / empty mbarrier ring (empty
counts one arrival per warpgroup); no ping-pong: a group's exp2 overlaps its own dP wgmma (it waits for S only)
and the two groups fill each other's gaps.
  dk/dv: one CTA per (batch * kv head, 128-key block), batch * kv head the fastest grid axis, key block 0 (the most
    queries) first. Consumer warpgroup w owns keys 64w .. 64w+63: K_w, V_w [64, D] in shared memory (loaded once)
    and dK_w, dV_w [64, D] fp32 accumulators. The producer streams Q and dO [64, D] with their lse2 / delta rows
    [1, 64] for every query tile that sees the block (causal: from the block on; else all) and every query head of
    the kv group (heads inner, tiles from the end down, so CTAs that start together share L2 and the two masked
    diagonal tiles come last) into a 3-stage ring. Per tile 4 wgmmas: S^T, dP^T, dV += P^T dO, dK += dS^T Q (P^T
    and dS^T as register A operands). Epilogue through the group's own K / V buffers and TMA stores.
  dq: one CTA per (batch * query head, 128-query block), batch * query head the fastest axis, longest blocks first;
    consumer warpgroup w owns query rows 64w .. 64w+63 (Q_w, dO_w loaded once, lse2 / delta in registers). The
    producer streams K and V [128, D] from the last visible key block (causal: the diagonal, the only masked one)
    down to block 0 into a 2-stage ring. Per tile 3 wgmmas: S, dP, dQ += dS K. Epilogue through the Q buffer.

Shapes: q, do [B, S, Hq, D], k / v [B, S, Hkv, D] (Sq == Sk, S % 128 == 0, D = 128, Hq % Hkv == 0), read through 2-D
TMA descriptors over [B*S, H*D] (rows views, as the Gluon forward's); o [B, S, Hq, D] and do contiguous, lse
[B, Hq, S] fp32 (natural log) -> dq, dk, dv fresh contiguous, shaped like q, k, v. `gluon_bwd_ineligible_reason`
says which inputs run here.

Gluon kernels are never interpreted, so this module is imported plainly, never through common.kernel_module, and
only when common.gluon_platform allows (gqa_attention_bwd's dispatch).
"""
import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .common import aot_compile_gluon, cdiv, kernel_module
from .gqa_attention_common import LOG2E
from .gqa_attention_fwd_gluon import (_descriptor, _grid_rows, _kv_rings, _produce_kv, _rows_view, _store_rows,
                                      inputs_ineligible_reason)

HEAD_DIM = 128                  # the wgmma instr_shape N (dK, dV, dQ columns)
BLOCK_N = 128                   # dk/dv: keys per CTA (two consumer warpgroups of 64)
BLOCK_M = 64                    # dk/dv: query rows per streamed tile (S^T, dP^T [64, 64] fp32: 32 registers each)
STAGES = 3                      # dk/dv: the Q / dO ring (33 KB a stage)
DQ_BLOCK_M = 128                # dq: query rows per CTA (two consumer warpgroups of 64)
DQ_BLOCK_N = 128                # dq: keys per K / V tile
DQ_STAGES = 2                   # dq: the K / V ring (64 KB a stage)
NUM_WARPS = 4                   # the default partition: consumer warpgroup 0
MAXNREG = 168                   # 12 warps x 32 threads x 168 <= 64K registers at launch
WORKER_REGS = (240, 24)         # setmaxnreg targets: consumer warpgroup 1, producer
MAX_GRID_Y = 65535              # both grids: S // 128 blocks on the second axis


# ------------------------------------------------------------------------------------------------------------ dk/dv


@gluon.jit
def _dkdv_producer(q_desc, do_desc, l_desc, dl_desc, k_desc, v_desc, dk_desc, dv_desc, smem, bars, b, hkv, key0,
                   q_start, n_tiles, seqlen, qk_scale, sm_scale, seq0, seq_len, stat0, lse2_ptr, delta_ptr, dk_ptr,
                   dv_ptr, HQ: gl.constexpr, HKV: gl.constexpr, WG: gl.constexpr, STAGES: gl.constexpr,
                   CAUSAL: gl.constexpr, RAGGED: gl.constexpr):
    """One warp: K and V of the block once (two [64, D] halves each), then for it = 0 .. n_tiles*GROUP-1 the query
    tile t = n_tiles-1 - it // GROUP (rows q_start + 64 t ..) of head hkv*GROUP + it % GROUP: Q + lse2 on
    q_ready, dO + delta on do_ready, ring slot it % STAGES. RAGGED: lse2 / delta by register loads (a [1, 64] TMA
    box would start at an unaligned column), written before the expect-tx arrival that publishes them; n_tiles = 0
    (a block past its sequence's end) loads nothing."""
    if not RAGGED or n_tiles > 0:
        _dkdv_produce(q_desc, do_desc, l_desc, dl_desc, k_desc, v_desc, smem, bars, b, hkv, key0, q_start, n_tiles,
                      seq0, seq_len, seqlen, stat0, lse2_ptr, delta_ptr, HQ, HKV, STAGES, RAGGED)


@gluon.jit
def _load_stat(ptr, q0, seq_len):
    """One warp: ptr[q0 + i] (lse2 or delta of a query tile's rows, i < 64) as [1, 64] registers; 0 for rows from
    seq_len on (past the sequence: their P is masked to 0 by the consumers)."""
    layout: gl.constexpr = gl.BlockedLayout([1, 2], [1, 32], [1, 1], [1, 0])
    pos = q0 + gl.expand_dims(gl.arange(0, 64, layout=gl.SliceLayout(0, layout)), 0)        # [1, 64]
    return gl.load(ptr + pos, mask=pos < seq_len, other=0.0)


@gluon.jit
def _store_stat(row, buf):
    """One warp: row [1, 64] (_load_stat) into buf [1, 64] in shared memory. The caller's arrival (one lane's
    release) then publishes the whole row: the warp barrier orders the other lanes' stores before it."""
    buf.store(row)
    gl.thread_barrier()


@gluon.jit
def _dkdv_produce(q_desc, do_desc, l_desc, dl_desc, k_desc, v_desc, smem, bars, b, hkv, key0, q_start, n_tiles,
                  seq0, seq_len, seqlen, stat0, lse2_ptr, delta_ptr, HQ: gl.constexpr, HKV: gl.constexpr,
                  STAGES: gl.constexpr, RAGGED: gl.constexpr):
    k_smem, v_smem, q_bufs, do_bufs, l_bufs, dl_bufs = smem
    kv_bar, q_ready, q_empty, do_ready, do_empty = bars
    WG_N: gl.constexpr = k_desc.block_type.shape[0]
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    HEAD_D: gl.constexpr = q_desc.block_type.shape[1]
    GROUP: gl.constexpr = HQ // HKV
    kv_row = seq0 + key0
    mbarrier.expect(kv_bar, 4 * k_desc.block_type.nbytes)
    for w in gl.static_range(2):
        tma.async_copy_global_to_shared(k_desc, [kv_row + w * WG_N, hkv * HEAD_D], kv_bar, k_smem.index(w))
        tma.async_copy_global_to_shared(v_desc, [kv_row + w * WG_N, hkv * HEAD_D], kv_bar, v_smem.index(w))
    for it in range(n_tiles * GROUP):
        stage = it % STAGES
        # a fresh mbarrier is in phase 0 and counts its (virtual) previous phase 1 as complete: waiting on parity 1
        # passes at once, so the first STAGES tiles need no release
        phase = (it // STAGES) & 1
        q0 = q_start + (n_tiles - 1 - it // GROUP) * BLOCK_M                      # first query row of the tile
        h = hkv * GROUP + it % GROUP
        if RAGGED:
            # both rows' loads in flight while the slot drains
            stat_h = stat0 + h.to(gl.int64) * seqlen                              # lse2 / delta of head h, row 0
            lse2 = _load_stat(lse2_ptr + stat_h, q0, seq_len)
            delta = _load_stat(delta_ptr + stat_h, q0, seq_len)
        mbarrier.wait(q_empty.index(stage), phase ^ 1)
        if RAGGED:
            _store_stat(lse2, l_bufs.index(stage))
            mbarrier.expect(q_ready.index(stage), q_desc.block_type.nbytes)      # (a release: publishes lse2)
        else:
            mbarrier.expect(q_ready.index(stage), q_desc.block_type.nbytes + l_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [seq0 + q0, h * HEAD_D], q_ready.index(stage), q_bufs.index(stage))
        if not RAGGED:
            tma.async_copy_global_to_shared(l_desc, [b * HQ + h, q0], q_ready.index(stage), l_bufs.index(stage))
        mbarrier.wait(do_empty.index(stage), phase ^ 1)
        if RAGGED:
            _store_stat(delta, dl_bufs.index(stage))
            mbarrier.expect(do_ready.index(stage), do_desc.block_type.nbytes)
        else:
            mbarrier.expect(do_ready.index(stage), do_desc.block_type.nbytes + dl_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(do_desc, [seq0 + q0, h * HEAD_D], do_ready.index(stage),
                                        do_bufs.index(stage))
        if not RAGGED:
            tma.async_copy_global_to_shared(dl_desc, [b * HQ + h, q0], do_ready.index(stage), dl_bufs.index(stage))


@gluon.jit
def _dkdv_tile(dk, dv, k_op, v_op, smem, bars, it, qk_scale, key_lo, q_lo, STAGES: gl.constexpr,
               MASK: gl.constexpr, mma_s: gl.constexpr, mma_kv: gl.constexpr, q_end=0, BOUND: gl.constexpr = False):
    """One query tile (ring slot it % STAGES) into dK, dV [64, D] of keys key_lo .. key_lo+63; MASK: the tile's
    queries start at q_lo and pairs with query < key are dropped (the diagonal tiles); BOUND: so are queries from
    q_end on (past a ragged sequence's end: P = 0 there, so dS = 0 and neither dV nor dK gets their rows)."""
    k_smem, v_smem, q_bufs, do_bufs, l_bufs, dl_bufs = smem
    kv_bar, q_ready, q_empty, do_ready, do_empty = bars
    WG_N: gl.constexpr = k_op.shape[0]
    BLOCK_M: gl.constexpr = q_bufs.shape[1]
    DTYPE: gl.constexpr = q_bufs.dtype
    stage = it % STAGES
    phase = (it // STAGES) & 1
    q = q_bufs.index(stage)                                                       # [64, D]
    do = do_bufs.index(stage)                                                     # [64, D]
    zero = gl.full([WG_N, BLOCK_M], 0.0, gl.float32, layout=mma_s)
    mbarrier.wait(q_ready.index(stage), phase)
    s_t = warpgroup_mma(k_op, q.permute((1, 0)), zero, use_acc=False, is_async=True)     # S^T [keys, queries]
    mbarrier.wait(do_ready.index(stage), phase)
    dp_t = warpgroup_mma(v_op, do.permute((1, 0)), zero, use_acc=False, is_async=True)   # dP^T [keys, queries]
    s_t = warpgroup_mma_wait(num_outstanding=1, deps=(s_t, ))                    # S^T done, dP^T in flight
    lse2 = l_bufs.index(stage).load(mma_s)                                        # [1, 64]: one per query column
    p_t = gl.exp2(s_t * qk_scale - lse2)                                          # P^T [64, 64] fp32
    if MASK:
        keys = key_lo + gl.arange(0, WG_N, layout=gl.SliceLayout(1, mma_s))
        queries = q_lo + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, mma_s))
        p_t = gl.where(gl.expand_dims(queries, 0) >= gl.expand_dims(keys, 1), p_t, 0.0)
    if BOUND:
        queries = q_lo + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, mma_s))
        p_t = gl.where(gl.expand_dims(queries < q_end, 0), p_t, 0.0)
    # accumulator layout -> A-operand layout of the same warps: a register shuffle, no shared memory (k_width 2:
    # two 16-bit values per 32-bit register)
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_kv, k_width=2)
    p_op = gl.convert_layout(p_t.to(DTYPE), op_a)
    dv = warpgroup_mma(p_op, do, dv, is_async=True)                               # dV += P^T dO
    dp_t = warpgroup_mma_wait(num_outstanding=1, deps=(dp_t, ))                  # dP^T done, dV in flight
    delta = dl_bufs.index(stage).load(mma_s)                                      # [1, 64]
    ds_op = gl.convert_layout((p_t * (dp_t - delta)).to(DTYPE), op_a)            # dS^T [64, 64]
    dk = warpgroup_mma(ds_op, q, dk, is_async=True)                               # dK += dS^T Q
    dk, dv, p_op, ds_op = warpgroup_mma_wait(num_outstanding=0, deps=(dk, dv, p_op, ds_op))
    mbarrier.arrive(q_empty.index(stage), count=1)                                # Q, lse2, dO, delta all read
    mbarrier.arrive(do_empty.index(stage), count=1)
    return dk, dv


@gluon.jit
def _dkdv_consumer(q_desc, do_desc, l_desc, dl_desc, k_desc, v_desc, dk_desc, dv_desc, smem, bars, b, hkv, key0,
                   q_start, n_tiles, seqlen, qk_scale, sm_scale, seq0, seq_len, stat0, lse2_ptr, delta_ptr, dk_ptr,
                   dv_ptr, HQ: gl.constexpr, HKV: gl.constexpr, WG: gl.constexpr, STAGES: gl.constexpr,
                   CAUSAL: gl.constexpr, RAGGED: gl.constexpr):
    """A consumer warpgroup (4 warps): keys key0 + 64 WG .. +63 (same signature as _dkdv_producer). Causal: the
    unmasked query tiles first (it < (n_tiles-2)*GROUP), then the two diagonal tiles of each head (t = 1, then
    t = 0); full: every tile unmasked. RAGGED: n_tiles = 0 does nothing; fewer than two diagonal tiles when the
    sequence ends within 64 rows of key0; queries from seq_len on masked in the last tile (streamed first) and the
    diagonal ones; dK / dV rows from seq_len on (the next sequence's keys) computed but never stored."""
    if not RAGGED or n_tiles > 0:
        _dkdv_consume(k_desc, dk_desc, dv_desc, smem, bars, hkv, key0, q_start, n_tiles, qk_scale, sm_scale, seq0,
                      seq_len, dk_ptr, dv_ptr, HQ, HKV, WG, STAGES, CAUSAL, RAGGED)


@gluon.jit
def _dkdv_consume(k_desc, dk_desc, dv_desc, smem, bars, hkv, key0, q_start, n_tiles, qk_scale, sm_scale, seq0,
                  seq_len, dk_ptr, dv_ptr, HQ: gl.constexpr, HKV: gl.constexpr, WG: gl.constexpr,
                  STAGES: gl.constexpr, CAUSAL: gl.constexpr, RAGGED: gl.constexpr):
    k_smem, v_smem, q_bufs, do_bufs, l_bufs, dl_bufs = smem
    kv_bar, q_ready, q_empty, do_ready, do_empty = bars
    WG_N: gl.constexpr = k_desc.block_type.shape[0]
    BLOCK_M: gl.constexpr = q_bufs.shape[1]
    HEAD_D: gl.constexpr = q_bufs.shape[2]
    GROUP: gl.constexpr = HQ // HKV
    # wgmma accumulator layouts: 4 warps stacked along M (16 rows each); N = 64 queries for S^T / dP^T, D for dK / dV
    mma_s: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                    instr_shape=[16, BLOCK_M, 16])
    mma_kv: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                     instr_shape=[16, HEAD_D, 16])
    k_op = k_smem.index(WG)                                                       # [64, D] this group's keys
    v_op = v_smem.index(WG)
    key_lo = key0 + WG * WG_N
    dk = gl.full([WG_N, HEAD_D], 0.0, gl.float32, layout=mma_kv)
    dv = gl.full([WG_N, HEAD_D], 0.0, gl.float32, layout=mma_kv)
    mbarrier.wait(kv_bar, 0)                                                      # K, V loaded
    if CAUSAL:
        if RAGGED:
            n_diag = gl.minimum(n_tiles, 2)                                       # diagonal tiles in the sequence
        else:
            n_diag = 2
        n_full = (n_tiles - n_diag) * GROUP                                       # tiles above the diagonal
    else:
        n_full = n_tiles * GROUP
    if RAGGED:
        # the last tile, when not a diagonal one, may run past the sequence's end (0 or GROUP iterations)
        n_bound = gl.minimum(n_full, GROUP)
        q_last = q_start + (n_tiles - 1) * BLOCK_M
        for it in range(n_bound):
            dk, dv = _dkdv_tile(dk, dv, k_op, v_op, smem, bars, it, qk_scale, key_lo, q_last, STAGES, False, mma_s,
                                mma_kv, seq_len, True)
        for it in range(n_bound, n_full):
            dk, dv = _dkdv_tile(dk, dv, k_op, v_op, smem, bars, it, qk_scale, key_lo, 0, STAGES, False, mma_s,
                                mma_kv)
    else:
        for it in range(n_full):
            dk, dv = _dkdv_tile(dk, dv, k_op, v_op, smem, bars, it, qk_scale, key_lo, 0, STAGES, False, mma_s,
                                mma_kv)
    if CAUSAL:
        for j in range(n_diag * GROUP):                                           # diagonal tiles t = 1, 0
            q_lo = key0 + (n_diag - 1 - j // GROUP) * BLOCK_M
            dk, dv = _dkdv_tile(dk, dv, k_op, v_op, smem, bars, n_full + j, qk_scale, key_lo, q_lo, STAGES, True,
                                mma_s, mma_kv, seq_len, RAGGED)
    # epilogue through this group's K / V buffers (their last readers, its wgmmas, have completed)
    k_op.store((dk * sm_scale).to(dk_desc.dtype))
    v_op.store(dv.to(dv_desc.dtype))
    if RAGGED and key_lo + WG_N > seq_len:                                       # the sequence ends in these keys
        _store_rows(k_op, dk_ptr, seq0 + key_lo, hkv * HEAD_D, seq_len - key_lo, HKV * HEAD_D)
        _store_rows(v_op, dv_ptr, seq0 + key_lo, hkv * HEAD_D, seq_len - key_lo, HKV * HEAD_D)
    else:
        fence_async_shared()                                                      # generic writes -> TMA reads
        tma.async_copy_shared_to_global(dk_desc, [seq0 + key_lo, hkv * HEAD_D], k_op)
        tma.async_copy_shared_to_global(dv_desc, [seq0 + key_lo, hkv * HEAD_D], v_op)
        tma.store_wait(pendings=0)


@gluon.jit
def _gqa_attn_bwd_dkdv_gluon_kernel(q_desc, do_desc, l_desc, dl_desc, k_desc, v_desc, dk_desc, dv_desc, seqlen,
                                    qk_scale, sm_scale, lse2_ptr, delta_ptr, dk_ptr, dv_ptr, cu_seqlens,
                                    HQ: gl.constexpr, HKV: gl.constexpr, CAUSAL: gl.constexpr,
                                    STAGES: gl.constexpr, WORKER_REG_0: gl.constexpr, WORKER_REG_1: gl.constexpr,
                                    RAGGED: gl.constexpr, VARLEN: gl.constexpr):
    """q_desc / do_desc: [B*S, HQ*D] in [64, D] boxes; l_desc / dl_desc: lse2 / delta [B*HQ, S] fp32 in [1, 64]
    boxes; k_desc / v_desc / dk_desc / dv_desc: [B*S, HKV*D] in [64, D] boxes. Grid (B * HKV, S // 128).
    RAGGED (any S; grid (B * HKV, cdiv(S, 128))): l_desc, dl_desc None, lse2_ptr / delta_ptr [B, HQ, S] and
    dk_ptr / dv_ptr (dk, dv [B*S, HKV*D] contiguous) instead, for the partial blocks. VARLEN (RAGGED too): B = 1,
    cu_seqlens [num_seqs + 1] splits the S = T rows; lse2 / delta [1, HQ, T]; grid (num_seqs * HKV,
    cdiv(max_seqlen, 128)), blocks past their sequence's end do nothing."""
    WG_N: gl.constexpr = k_desc.block_type.shape[0]
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    gl.static_assert(WG_N == BLOCK_M, "the diagonal is two query tiles per 2 x 64 keys")
    gl.static_assert(RAGGED or not VARLEN, "varlen is ragged")
    bh = gl.program_id(0)                                                         # batch * kv head, fastest
    key_blk = gl.program_id(1)                                                    # block 0 (most queries) first
    b = bh // HKV
    hkv = bh % HKV
    key0 = key_blk * 2 * WG_N
    if VARLEN:                                        # sequence b: packed rows cu[b] .. cu[b+1]-1
        seq0 = gl.load(cu_seqlens + b).to(gl.int32)
        seq_len = gl.load(cu_seqlens + b + 1).to(gl.int32) - seq0
        stat0 = seq0.to(gl.int64)                                                 # lse2[0, h, seq0 + pos]
    else:
        seq0 = b * seqlen
        seq_len = seqlen
        stat0 = (b * HQ).to(gl.int64) * seqlen                                    # lse2[b, h, pos]
    if CAUSAL:
        q_start = key0                                                            # the queries that see key0
    else:
        q_start = 0
    if RAGGED:
        n_tiles = gl.where(key0 < seq_len, gl.cdiv(seq_len - q_start, BLOCK_M), 0)   # 0: past the sequence's end
    else:
        n_tiles = (seqlen - q_start) // BLOCK_M                                   # query tiles streamed per head

    # shared memory: K, V [2, 64, D] (reused for dK, dV) 64 KB; Q, dO rings [STAGES, 64, D] + lse2 / delta rows
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [2] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [2] + v_desc.block_type.shape, v_desc.layout)
    q_bufs = gl.allocate_shared_memory(q_desc.dtype, [STAGES] + q_desc.block_type.shape, q_desc.layout)
    do_bufs = gl.allocate_shared_memory(do_desc.dtype, [STAGES] + do_desc.block_type.shape, do_desc.layout)
    if RAGGED:                                        # written by the producer's registers, not TMA
        stat_layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        l_bufs = gl.allocate_shared_memory(gl.float32, [STAGES, 1, BLOCK_M], stat_layout)
        dl_bufs = gl.allocate_shared_memory(gl.float32, [STAGES, 1, BLOCK_M], stat_layout)
    else:
        l_bufs = gl.allocate_shared_memory(l_desc.dtype, [STAGES] + l_desc.block_type.shape, l_desc.layout)
        dl_bufs = gl.allocate_shared_memory(dl_desc.dtype, [STAGES] + dl_desc.block_type.shape, dl_desc.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    do_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    do_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(q_ready.index(i), count=1)      # the producer's expect-tx arrival
        mbarrier.init(do_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=2)      # one arrival per consumer warpgroup
        mbarrier.init(do_empty.index(i), count=2)
    fence_async_shared()                              # barrier inits visible to the async proxy (TMA)
    smem = (k_smem, v_smem, q_bufs, do_bufs, l_bufs, dl_bufs)
    bars = (kv_bar, q_ready, q_empty, do_ready, do_empty)

    WG0: gl.constexpr = 0
    WG1: gl.constexpr = 1
    # descriptors as separate arguments: packed in a tuple, the compiler records the TMA metadata of only some
    # of them and the launcher rejects the kernel
    gl.warp_specialize([
        # default partition (num_warps = 4): consumer of keys 0..63
        (_dkdv_consumer, (q_desc, do_desc, l_desc, dl_desc, k_desc, v_desc, dk_desc, dv_desc, smem, bars, b, hkv,
                          key0, q_start, n_tiles, seqlen, qk_scale, sm_scale, seq0, seq_len, stat0, lse2_ptr,
                          delta_ptr, dk_ptr, dv_ptr, HQ, HKV, WG0, STAGES, CAUSAL, RAGGED)),
        # worker, 4 warps: consumer of keys 64..127
        (_dkdv_consumer, (q_desc, do_desc, l_desc, dl_desc, k_desc, v_desc, dk_desc, dv_desc, smem, bars, b, hkv,
                          key0, q_start, n_tiles, seqlen, qk_scale, sm_scale, seq0, seq_len, stat0, lse2_ptr,
                          delta_ptr, dk_ptr, dv_ptr, HQ, HKV, WG1, STAGES, CAUSAL, RAGGED)),
        # worker, 1 warp: TMA loads
        (_dkdv_producer, (q_desc, do_desc, l_desc, dl_desc, k_desc, v_desc, dk_desc, dv_desc, smem, bars, b, hkv,
                          key0, q_start, n_tiles, seqlen, qk_scale, sm_scale, seq0, seq_len, stat0, lse2_ptr,
                          delta_ptr, dk_ptr, dv_ptr, HQ, HKV, WG0, STAGES, CAUSAL, RAGGED)),
    ], [4, 1], [WORKER_REG_0, WORKER_REG_1])


# ------------------------------------------------------------------------------------------------------------ dq


@gluon.jit
def _dq_producer(q_desc, do_desc, k_desc, v_desc, dq_desc, smem, bars, lse2_ptr, delta_ptr, b, h, q0, n_blocks,
                 seqlen, qk_scale, sm_scale, seq0, seq_len, dq_ptr, HQ: gl.constexpr, HKV: gl.constexpr,
                 WG: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr, RAGGED: gl.constexpr,
                 VARLEN: gl.constexpr):
    """One warp: Q and dO [2 x 64, D] once, then for i = 0 .. n_blocks-1 the key block j = n_blocks-1-i (causal:
    the masked diagonal first) as K_i and V_i into ring slot i % STAGES, each on its own barrier. RAGGED:
    n_blocks = 0 (a block past its sequence's end) loads nothing."""
    if not RAGGED or n_blocks > 0:
        _dq_produce(q_desc, do_desc, k_desc, v_desc, smem, bars, h, q0, n_blocks, seq0, HQ, HKV, STAGES)


@gluon.jit
def _dq_produce(q_desc, do_desc, k_desc, v_desc, smem, bars, h, q0, n_blocks, seq0, HQ: gl.constexpr,
                HKV: gl.constexpr, STAGES: gl.constexpr):
    q_smem, do_smem, k_bufs, v_bufs = smem
    q_bar, k_ready, k_empty, v_ready, v_empty = bars
    WG_M: gl.constexpr = q_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    HEAD_D: gl.constexpr = q_desc.block_type.shape[1]
    GROUP: gl.constexpr = HQ // HKV
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes + 2 * do_desc.block_type.nbytes)
    for w in gl.static_range(2):
        tma.async_copy_global_to_shared(q_desc, [seq0 + q0 + w * WG_M, h * HEAD_D], q_bar, q_smem.index(w))
        tma.async_copy_global_to_shared(do_desc, [seq0 + q0 + w * WG_M, h * HEAD_D], q_bar, do_smem.index(w))
    kv_col = (h // GROUP) * HEAD_D                                                # GQA: kv head h // group
    _produce_kv(k_desc, v_desc, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, seq0, kv_col, n_blocks, BLOCK_N,
                STAGES)


@gluon.jit
def _dq_tile(dq, q_op, do_op, k_bufs, v_bufs, bars, i, lse2, delta, qk_scale, row0, key0, STAGES: gl.constexpr,
             MASK: gl.constexpr, mma: gl.constexpr, key_end=0, BOUND: gl.constexpr = False):
    """Key tile i (ring slot i % STAGES) into dQ [64, D] of query rows row0 .. row0+63; MASK: the tile's keys start
    at key0 and pairs with key > query are dropped (the diagonal tile); BOUND: so are keys from key_end on (past a
    ragged sequence's end: the next one's)."""
    q_bar, k_ready, k_empty, v_ready, v_empty = bars
    WG_M: gl.constexpr = q_op.shape[0]
    BLOCK_N: gl.constexpr = k_bufs.shape[1]
    stage = i % STAGES
    phase = (i // STAGES) & 1
    k = k_bufs.index(stage)                                                       # [BLOCK_N, D]
    zero = gl.full([WG_M, BLOCK_N], 0.0, gl.float32, layout=mma)
    mbarrier.wait(k_ready.index(stage), phase)
    s = warpgroup_mma(q_op, k.permute((1, 0)), zero, use_acc=False, is_async=True)      # S [queries, keys]
    mbarrier.wait(v_ready.index(stage), phase)
    dp = warpgroup_mma(do_op, v_bufs.index(stage).permute((1, 0)), zero, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(num_outstanding=1, deps=(s, ))                        # S done, dP in flight
    p = gl.exp2(s * qk_scale - gl.expand_dims(lse2, 1))                           # P [64, BLOCK_N] fp32
    if MASK:
        rows = row0 + gl.arange(0, WG_M, layout=gl.SliceLayout(1, mma))
        cols = key0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
        p = gl.where(gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1), p, 0.0)
    if BOUND:
        cols = key0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
        p = gl.where(gl.expand_dims(cols < key_end, 0), p, 0.0)
    dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp, ))
    mbarrier.arrive(v_empty.index(stage), count=1)                                # V read (dP only)
    ds_op = gl.convert_layout((p * (dp - gl.expand_dims(delta, 1))).to(k.dtype),
                              gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2))
    dq = warpgroup_mma(ds_op, k, dq, is_async=True)                               # dQ += dS K
    dq, ds_op = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ds_op))
    mbarrier.arrive(k_empty.index(stage), count=1)
    return dq


@gluon.jit
def _dq_consumer(q_desc, do_desc, k_desc, v_desc, dq_desc, smem, bars, lse2_ptr, delta_ptr, b, h, q0, n_blocks,
                 seqlen, qk_scale, sm_scale, seq0, seq_len, dq_ptr, HQ: gl.constexpr, HKV: gl.constexpr,
                 WG: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr, RAGGED: gl.constexpr,
                 VARLEN: gl.constexpr):
    """A consumer warpgroup (4 warps): query rows q0 + 64 WG .. +63 (same signature as _dq_producer). RAGGED:
    n_blocks = 0 does nothing; rows from seq_len on get lse2 = +inf (P = 0: dS = 0) and are never stored; causal,
    the diagonal mask bounds the keys of the other rows (<= row < seq_len); full, the last key block is bounded."""
    if not RAGGED or n_blocks > 0:
        _dq_consume(q_desc, k_desc, dq_desc, smem, bars, lse2_ptr, delta_ptr, b, h, q0, n_blocks, seqlen, qk_scale,
                    sm_scale, seq0, seq_len, dq_ptr, HQ, WG, STAGES, CAUSAL, RAGGED, VARLEN)


@gluon.jit
def _dq_consume(q_desc, k_desc, dq_desc, smem, bars, lse2_ptr, delta_ptr, b, h, q0, n_blocks, seqlen, qk_scale,
                sm_scale, seq0, seq_len, dq_ptr, HQ: gl.constexpr, WG: gl.constexpr, STAGES: gl.constexpr,
                CAUSAL: gl.constexpr, RAGGED: gl.constexpr, VARLEN: gl.constexpr):
    q_smem, do_smem, k_bufs, v_bufs = smem
    q_bar, k_ready, k_empty, v_ready, v_empty = bars
    WG_M: gl.constexpr = q_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    HEAD_D: gl.constexpr = q_desc.block_type.shape[1]
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, HEAD_D, 16])
    row0 = q0 + WG * WG_M                                                         # first query row in the sequence
    if VARLEN:                                                                    # lse2 [1, HQ, T]
        offs = h.to(gl.int64) * seqlen + seq0 + row0 + gl.arange(0, WG_M, layout=gl.SliceLayout(1, mma))
    else:
        offs = (b * HQ + h).to(gl.int64) * seqlen + row0 + gl.arange(0, WG_M, layout=gl.SliceLayout(1, mma))
    if RAGGED:
        ok = row0 + gl.arange(0, WG_M, layout=gl.SliceLayout(1, mma)) < seq_len
        lse2 = gl.load(lse2_ptr + offs, mask=ok, other=float("inf"))              # rows past the end: P = 0
        delta = gl.load(delta_ptr + offs, mask=ok, other=0.0)
    else:
        lse2 = gl.load(lse2_ptr + offs)                                           # [64], 2 registers a thread
        delta = gl.load(delta_ptr + offs)
    dq = gl.full([WG_M, HEAD_D], 0.0, gl.float32, layout=mma)
    q_op = q_smem.index(WG)
    do_op = do_smem.index(WG)
    mbarrier.wait(q_bar, 0)                                                       # Q, dO loaded
    dq = _dq_tile(dq, q_op, do_op, k_bufs, v_bufs, bars, 0, lse2, delta, qk_scale, row0, (n_blocks - 1) * BLOCK_N,
                  STAGES, CAUSAL, mma, seq_len, RAGGED and not CAUSAL)            # causal: the diagonal
    for i in range(1, n_blocks):                                                  # unmasked key blocks
        dq = _dq_tile(dq, q_op, do_op, k_bufs, v_bufs, bars, i, lse2, delta, qk_scale, row0, 0, STAGES, False, mma)
    # epilogue through this group's Q buffer (its last reader, the S wgmma, has completed)
    q_op.store((dq * sm_scale).to(dq_desc.dtype))
    if RAGGED and row0 + WG_M > seq_len:                                         # the sequence ends in these rows
        _store_rows(q_op, dq_ptr, seq0 + row0, h * HEAD_D, seq_len - row0, HQ * HEAD_D)
    else:
        fence_async_shared()
        tma.async_copy_shared_to_global(dq_desc, [seq0 + row0, h * HEAD_D], q_op)
        tma.store_wait(pendings=0)


@gluon.jit
def _gqa_attn_bwd_dq_gluon_kernel(q_desc, do_desc, k_desc, v_desc, dq_desc, lse2_ptr, delta_ptr, seqlen, qk_scale,
                                  sm_scale, dq_ptr, cu_seqlens, HQ: gl.constexpr, HKV: gl.constexpr,
                                  CAUSAL: gl.constexpr, STAGES: gl.constexpr, WORKER_REG_0: gl.constexpr,
                                  WORKER_REG_1: gl.constexpr, RAGGED: gl.constexpr, VARLEN: gl.constexpr):
    """q_desc / do_desc / dq_desc: [B*S, HQ*D] in [64, D] boxes; k_desc / v_desc: [B*S, HKV*D] in [BLOCK_N, D]
    boxes; lse2_ptr / delta_ptr: [B, HQ, S] fp32 contiguous. Grid (B * HQ, S // 128). RAGGED (any S; grid
    (B * HQ, cdiv(S, 128))): dq_ptr (dq [B*S, HQ*D] contiguous) for the partial blocks. VARLEN (RAGGED too):
    B = 1, cu_seqlens [num_seqs + 1] splits the S = T rows; lse2 / delta [1, HQ, T]; grid (num_seqs * HQ,
    cdiv(max_seqlen, 128)), blocks past their sequence's end do nothing."""
    WG_M: gl.constexpr = q_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    gl.static_assert(2 * WG_M == BLOCK_N, "the causal bounds assume square blocks")
    gl.static_assert(RAGGED or not VARLEN, "varlen is ragged")
    bh = gl.program_id(0)                                                         # batch * query head, fastest
    pid_m = gl.num_programs(1) - 1 - gl.program_id(1)                             # longest blocks first
    b = bh // HQ
    h = bh % HQ
    q0 = pid_m * BLOCK_N
    if VARLEN:                                        # sequence b: packed rows cu[b] .. cu[b+1]-1
        seq0 = gl.load(cu_seqlens + b).to(gl.int32)
        seq_len = gl.load(cu_seqlens + b + 1).to(gl.int32) - seq0
    else:
        seq0 = b * seqlen
        seq_len = seqlen
    if CAUSAL:
        n_blocks = pid_m + 1                                                      # key blocks 0 .. pid_m
    elif RAGGED:
        n_blocks = gl.cdiv(seq_len, BLOCK_N)
    else:
        n_blocks = seqlen // BLOCK_N
    if RAGGED:
        n_blocks = gl.where(q0 < seq_len, n_blocks, 0)                           # 0: past the sequence's end

    # shared memory: Q, dO [2, 64, D] (Q reused for dQ) 64 KB; K, V rings [STAGES, BLOCK_N, D] 128 KB at 2 stages
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    do_smem = gl.allocate_shared_memory(do_desc.dtype, [2] + do_desc.block_type.shape, do_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)                     # before the rings': the init order shows in the SASS
    k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty = _kv_rings(k_desc, v_desc, STAGES)
    fence_async_shared()                              # barrier inits visible to the async proxy (TMA)
    smem = (q_smem, do_smem, k_bufs, v_bufs)
    bars = (q_bar, k_ready, k_empty, v_ready, v_empty)

    WG0: gl.constexpr = 0
    WG1: gl.constexpr = 1
    gl.warp_specialize([
        # default partition: query rows 0..63
        (_dq_consumer, (q_desc, do_desc, k_desc, v_desc, dq_desc, smem, bars, lse2_ptr, delta_ptr, b, h, q0,
                        n_blocks, seqlen, qk_scale, sm_scale, seq0, seq_len, dq_ptr, HQ, HKV, WG0, STAGES, CAUSAL,
                        RAGGED, VARLEN)),
        # worker, 4 warps: rows 64..127
        (_dq_consumer, (q_desc, do_desc, k_desc, v_desc, dq_desc, smem, bars, lse2_ptr, delta_ptr, b, h, q0,
                        n_blocks, seqlen, qk_scale, sm_scale, seq0, seq_len, dq_ptr, HQ, HKV, WG1, STAGES, CAUSAL,
                        RAGGED, VARLEN)),
        # worker, 1 warp: TMA loads
        (_dq_producer, (q_desc, do_desc, k_desc, v_desc, dq_desc, smem, bars, lse2_ptr, delta_ptr, b, h, q0,
                        n_blocks, seqlen, qk_scale, sm_scale, seq0, seq_len, dq_ptr, HQ, HKV, WG0, STAGES, CAUSAL,
                        RAGGED, VARLEN)),
    ], [4, 1], [WORKER_REG_0, WORKER_REG_1])


# ------------------------------------------------------------------------------------------------------------ host


def gluon_bwd_ineligible_reason(q, k, v, causal, cu_seqlens, max_seqlen=None) -> str | None:
    """Why the Gluon backward cannot run these inputs (None: it can): the forward module's inputs_ineligible_reason
    (varlen: B = 1, max_seqlen given), Hq a multiple of Hkv, and the grids' limit. q [B, Sq, Hq, D], k / v
    [B, Sk, Hkv, D] as gqa_attention_bwd accepts them (do and o: q's shape and dtype, contiguous). causal is
    either."""
    why = inputs_ineligible_reason(q, k, v, cu_seqlens, max_seqlen)
    if why is not None:
        return why
    if q.shape[2] % k.shape[2]:
        return f"Hq {q.shape[2]} not a multiple of Hkv {k.shape[2]}"
    blocks = cdiv(_grid_rows(q, cu_seqlens, max_seqlen)[0], BLOCK_N)
    if blocks > MAX_GRID_Y:
        return f"cdiv(S, {BLOCK_N}) = {blocks} > {MAX_GRID_Y} (the grids' second dimension)"
    return None


def _stat_descriptor(t: torch.Tensor) -> TensorDescriptor:
    """lse2 / delta [B, Hq, S] fp32 contiguous as [B*Hq, S] in [1, 64] boxes (a single row: unswizzled)."""
    block = [1, BLOCK_M]
    return TensorDescriptor.from_tensor(t.view(-1, t.shape[-1]), block,
                                        gl.NVMMASharedLayout.get_default_for(block, gl.float32))


def preprocess(o, do, lse):
    """o, do [B, S, Hq, D] contiguous, lse [B, Hq, S] fp32 contiguous -> (delta = rowsum(o do), lse2 = lse log2 e),
    both [B, Hq, S] fp32: gqa_attention_bwd's Triton preprocess kernel (its compiled-mode module)."""
    bwd = kernel_module("gqa_attention_bwd")
    bsz, seqlen, hq, d = o.shape
    delta, lse2 = torch.empty_like(lse), torch.empty_like(lse)
    rows = bsz * seqlen * hq
    bwd._attn_bwd_preprocess_kernel[(cdiv(rows, bwd.PREPROCESS_BLOCK), )](
        o, do, lse, delta, lse2, rows, seqlen, hq, HEAD_DIM=d, BLOCK=bwd.PREPROCESS_BLOCK)
    return delta, lse2


def gluon_dkdv(q, k, v, do, lse2, delta, causal: bool, softmax_scale: float, cu_seqlens=None, max_seqlen=None):
    """The dk/dv kernel alone: q, do [B, S, Hq, D], k, v [B, S, Hkv, D] (copied unless rows views), lse2, delta
    [B, Hq, S] fp32 contiguous (preprocess); cu_seqlens, max_seqlen: packed sequences (B = 1) -> (dk like k, dv
    like v), fresh contiguous (rows of no sequence unwritten)."""
    bsz, seqlen, hq, _ = q.shape
    hkv = k.shape[2]
    q, k, v, do = (_rows_view(t) for t in (q, k, v, do))
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    rows, seqs = _grid_rows(q, cu_seqlens, max_seqlen)
    if rows == 0:
        return dk, dv
    ragged = cu_seqlens is not None or seqlen % BLOCK_N != 0
    kv_rows = BLOCK_N // 2
    stats = (None, None, lse2, delta, dk, dv) if ragged else (_stat_descriptor(lse2), _stat_descriptor(delta),
                                                              None, None, None, None)
    _gqa_attn_bwd_dkdv_gluon_kernel[(seqs * hkv, cdiv(rows, BLOCK_N))](
        _descriptor(q, BLOCK_M), _descriptor(do, BLOCK_M), *stats[:2], _descriptor(k, kv_rows),
        _descriptor(v, kv_rows), _descriptor(dk, kv_rows), _descriptor(dv, kv_rows), seqlen,
        float(softmax_scale) * LOG2E, float(softmax_scale), *stats[2:], cu_seqlens, HQ=hq, HKV=hkv,
        CAUSAL=bool(causal), STAGES=STAGES, WORKER_REG_0=WORKER_REGS[0], WORKER_REG_1=WORKER_REGS[1], RAGGED=ragged,
        VARLEN=cu_seqlens is not None, num_warps=NUM_WARPS, maxnreg=MAXNREG)
    return dk, dv


def gluon_dq(q, k, v, do, lse2, delta, causal: bool, softmax_scale: float, cu_seqlens=None, max_seqlen=None):
    """The dq kernel alone (inputs as gluon_dkdv) -> dq like q, fresh contiguous."""
    bsz, seqlen, hq, _ = q.shape
    hkv = k.shape[2]
    q, k, v, do = (_rows_view(t) for t in (q, k, v, do))
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    rows, seqs = _grid_rows(q, cu_seqlens, max_seqlen)
    if rows == 0:
        return dq
    ragged = cu_seqlens is not None or seqlen % DQ_BLOCK_M != 0
    q_rows = DQ_BLOCK_M // 2
    _gqa_attn_bwd_dq_gluon_kernel[(seqs * hq, cdiv(rows, DQ_BLOCK_M))](
        _descriptor(q, q_rows), _descriptor(do, q_rows), _descriptor(k, DQ_BLOCK_N), _descriptor(v, DQ_BLOCK_N),
        _descriptor(dq, q_rows), lse2, delta, seqlen, float(softmax_scale) * LOG2E, float(softmax_scale),
        dq if ragged else None, cu_seqlens, HQ=hq, HKV=hkv, CAUSAL=bool(causal), STAGES=DQ_STAGES,
        WORKER_REG_0=WORKER_REGS[0], WORKER_REG_1=WORKER_REGS[1], RAGGED=ragged, VARLEN=cu_seqlens is not None,
        num_warps=NUM_WARPS, maxnreg=MAXNREG)
    return dq


def gqa_attention_bwd_gluon(do, q, k, v, o, lse, causal: bool, softmax_scale: float, cu_seqlens=None,
                            max_seqlen=None):
    """do, o [B, S, Hq, D] contiguous, q [B, S, Hq, D], k / v [B, S, Hkv, D] (gluon_bwd_ineligible_reason None),
    lse [B, Hq, S] fp32 contiguous (natural log, from the forward); cu_seqlens, max_seqlen: packed sequences
    (B = 1) -> (dq, dk, dv) fresh contiguous, shaped like q, k, v: the Triton preprocess, then the dk/dv and dq
    kernels."""
    assert do.shape == o.shape == q.shape and do.dtype == o.dtype == q.dtype, "do, o: q's shape and dtype"
    assert do.is_contiguous() and o.is_contiguous(), "do, o: contiguous (the preprocess reads [B*S*Hq, D] rows)"
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == torch.float32 and lse.is_contiguous(), \
        "lse: contiguous fp32 [B, Hq, S]"
    delta, lse2 = preprocess(o, do, lse)                                          # varlen: [1, Hq, T] as lse
    q, k, v = (_rows_view(t) for t in (q, k, v))                                  # one copy at most, shared
    dk, dv = gluon_dkdv(q, k, v, do, lse2, delta, causal, softmax_scale, cu_seqlens, max_seqlen)
    dq = gluon_dq(q, k, v, do, lse2, delta, causal, softmax_scale, cu_seqlens, max_seqlen)
    return dq, dk, dv


# ------------------------------------------------------------------------------------------------------------ AOT


def aot_compile_all():
    """Compile for sm_90a every variant the dispatch launches at Nemotron's heads (32 / 2): dk/dv and dq, bf16 and
    fp16, causal and full; S % 128 == 0 batched, then ragged (varlen with int32 cu_seqlens, and batched with any
    S). Yields (name, CompiledKernel)."""
    def desc(dtype, name, shape):
        return f"tensordesc<{name}[{shape[0]}, {shape[1]}],{gl.NVMMASharedLayout.get_default_for(shape, dtype)!r}>"

    stat = desc(gl.float32, "fp32", [1, BLOCK_M])
    for dtype, name in ((gl.bfloat16, "bf16"), (gl.float16, "fp16")):
        tile, kv = desc(dtype, name, [BLOCK_M, HEAD_DIM]), desc(dtype, name, [BLOCK_N // 2, HEAD_DIM])
        dq_q, dq_kv = desc(dtype, name, [DQ_BLOCK_M // 2, HEAD_DIM]), desc(dtype, name, [DQ_BLOCK_N, HEAD_DIM])
        ptr = f"*{name}"
        dkdv_types = {"q_desc": tile, "do_desc": tile, "l_desc": stat, "dl_desc": stat, "k_desc": kv, "v_desc": kv,
                      "dk_desc": kv, "dv_desc": kv, "seqlen": "i32", "qk_scale": "fp32", "sm_scale": "fp32",
                      "lse2_ptr": "*fp32", "delta_ptr": "*fp32", "dk_ptr": ptr, "dv_ptr": ptr, "cu_seqlens": "*i32"}
        dq_types = {"q_desc": dq_q, "do_desc": dq_q, "k_desc": dq_kv, "v_desc": dq_kv, "dq_desc": dq_q,
                    "lse2_ptr": "*fp32", "delta_ptr": "*fp32", "seqlen": "i32", "qk_scale": "fp32", "sm_scale": "fp32",
                    "dq_ptr": ptr, "cu_seqlens": "*i32"}
        for ragged, varlen in ((False, False), (True, True), (True, False)):
            mode = " varlen" if varlen else " ragged" if ragged else ""
            absent = {} if varlen else {"cu_seqlens": None}
            seq = () if ragged else ("seqlen", )                                  # ragged: any S (varlen: T)
            for causal in (True, False):
                consts = dict(HQ=32, HKV=2, CAUSAL=causal, WORKER_REG_0=WORKER_REGS[0], WORKER_REG_1=WORKER_REGS[1],
                              RAGGED=ragged, VARLEN=varlen, **absent)
                if ragged:
                    dkdv = dict(consts, STAGES=STAGES, l_desc=None, dl_desc=None)
                    aligned = ("lse2_ptr", "delta_ptr", "dk_ptr", "dv_ptr") + ("cu_seqlens", ) * varlen
                else:
                    dkdv = dict(consts, STAGES=STAGES, lse2_ptr=None, delta_ptr=None, dk_ptr=None, dv_ptr=None)
                    aligned = ("seqlen", )
                ck = aot_compile_gluon(_gqa_attn_bwd_dkdv_gluon_kernel, dkdv_types, dkdv, aligned=aligned,
                                       num_warps=NUM_WARPS, maxnreg=MAXNREG)
                yield f"gqa_attn_bwd_dkdv_gluon {name} D{HEAD_DIM} G16 causal={causal}{mode}", ck
                dq = dict(consts, STAGES=DQ_STAGES, **({} if ragged else {"dq_ptr": None}))
                aligned = seq + ("lse2_ptr", "delta_ptr") + (("dq_ptr", ) if ragged else ()) + ("cu_seqlens", ) * varlen
                ck = aot_compile_gluon(_gqa_attn_bwd_dq_gluon_kernel, dq_types, dq, aligned=aligned,
                                       num_warps=NUM_WARPS, maxnreg=MAXNREG)
                yield f"gqa_attn_bwd_dq_gluon {name} D{HEAD_DIM} G16 causal={causal}{mode}", ck
