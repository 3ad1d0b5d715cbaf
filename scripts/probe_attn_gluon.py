"""Can a hand-scheduled Gluon kernel beat cuDNN on the causal GQA attention forward (FlashAttention-3 style)?
Nemotron's shape: q [B, S, 32, 128], k / v [B, S, 2, 128], bf16, causal, scale 1/sqrt(128); query head h reads
kv head h // 16. Our Triton kernel runs ~536 TFLOP/s on the H200, cuDNN ~563; the target is >= 650.
FP8 mode (issue #5): q / k / v e4m3 with per-tensor fp32 descales, bf16 out; ours ~682 TFLOP/s, target >= 950.

Design (Hopper, sm_90a; triton.experimental.gluon as in Triton 3.6):
  one CTA per (128-row query block, batch * query head), the last (longest) query blocks launched first;
  gl.warp_specialize with three partitions, 12 warps in all (9 used, padded to 3 warpgroups):
    - consumer warpgroup 0 (the default partition, 4 warps, 240 registers): query rows 0..63 of the block,
    - consumer warpgroup 1 (a 4-warp worker, 240 registers): query rows 64..127,
    - producer (a 1-warp worker, 24 registers): TMA loads of Q once, then K and V tiles (128 keys x 128) into a
      2-stage shared-memory ring guarded by ready / empty mbarriers (empty counts one arrival per warpgroup).
  Each consumer: S = Q K^T by warpgroup_mma (Q and K from shared memory), online softmax in base 2, P as bf16 in
  registers (the wgmma A operand), O += P V by warpgroup_mma. Key blocks run from the diagonal (the only masked
  one) down to 0. Within a warpgroup S_i = Q K_i^T is issued before O += P_{i-1} V_{i-1}, so softmax(S_i) overlaps
  that wgmma; across the two warpgroups an mbarrier "turn" (PINGPONG) makes them issue their wgmmas alternately,
  so one's softmax overlaps the other's MMAs. Epilogue: O / l through shared memory (the group's Q half, no longer
  read) and a TMA store.
  FP8 (constexpr FP8 of the same kernel): both wgmmas e4m3 x e4m3 -> fp32 (m64n128k32), which need K-major shared
  operands. K [BLOCK_N, D] used as K^T through a permute is K-major, as in bf16. V is the B operand with K = keys,
  so it comes transposed: the host makes V^T [B, HKV, D, S] (FA3's pre-transposed variant; _vt_fp8), the
  producer loads [D, BLOCK_N] tiles and the consumer uses them through a permute. The scores take
  q_descale * k_descale into qk_scale (descales read on the device); P is quantised to e4m3 with scale 1 (P <= 1
  after the running max, as FA3 and ours); O = (P V) * v_descale / l; O goes out through its own bf16 buffer.
  The accumulator -> A-operand move of the 8-bit P would cross lanes; instead the keys of each 32 are reordered
  in P (a register relabelling) and in V^T alike (_softmax, _vt_fp8). V^T (with that key order) is built on the
  host and not timed: in the library the quantisation kernel would write it directly.

    PYTHONPATH=. python3 scripts/probe_attn_gluon.py                      # H200: check against SDPA, then time
    PYTHONPATH=. .venv-aot/bin/python scripts/probe_attn_gluon.py --aot   # CPU machine: compile for sm_90a only
GPU mode checks both variants (pingpong on / off) against torch SDPA (kv repeated to 32 heads) at B1 S128, B2 S384
and the benchmark shape (default B4 S8K; --batch, --seqlen), printing the relative max error; above 2e-2 it prints
WRONG and exits 1 untimed. Then it prints ms and TFLOP/s (causal FLOPs 2 B HQ S^2 D) of both variants,
nemotron_kernels' gqa_attention and cuDNN SDPA, each row as it is measured. Then FP8: q / k / v quantised per
tensor on the GPU (amax / 448), both variants checked at the same shapes against SDPA (fp32) on the dequantised
inputs (WRONG above 5e-2, exit 1), then timed with gqa_attention on the same e4m3 inputs and descales. --aot
compiles the four variants (bf16 / fp8, pingpong on / off) and prints registers (ptxas, setmaxnreg per partition,
the highest SASS register), shared memory, and the PTX counts of setmaxnreg, wgmma.mma_async and
cp.async.bulk.tensor, and the SASS's wgmma (HGMMA / QGMMA) and SHFL counts."""
import argparse
import math
import re

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from scripts.gluon_probe import check, compile_sm90a, rel_err, report
from scripts.probe_attn_ws import sdpa      # the same reference as the WS probe

HQ, HKV, D = 32, 2, 128
BLOCK_M, BLOCK_N, STAGES = 128, 128, 2      # query rows per CTA (two warpgroups of 64), keys per tile, K/V ring
WG_M = BLOCK_M // 2                         # query rows per consumer warpgroup
NUM_WARPS = 4                               # the default partition: consumer warpgroup 0
MAXNREG = 168                               # 12 warps x 32 threads x 168 <= 64K registers at launch
WORKER_REGS = (240, 24)                     # setmaxnreg targets: consumer warpgroup 1, producer
PINGPONG = True                             # FA3's inter-warpgroup schedule (mbarrier turns); False: free-running


@gluon.jit
def _producer(q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, o_smem, bars, q_row, q_col, kv_row, kv_col,
              vt_row, n_blocks, qk_scale, o_scale, WG: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              PINGPONG: gl.constexpr, FP8: gl.constexpr):
    """One warp: Q once, then for i = 0 .. n_blocks-1 the key block j = n_blocks-1-i (the masked diagonal block
    first, as the consumers want it) as K_i and V_i into stage i % STAGES. K and V have their own barriers so the
    consumers can start S = Q K^T while V is still in flight. FP8: V_i is the tile [D, BLOCK_N] of V^T (rows
    vt_row .. vt_row+D-1, the keys of block j as columns)."""
    q_bar, k_ready, k_empty, v_ready, v_empty, turn = bars
    # Q [128, D] as two [64, D] halves, one per consumer warpgroup
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, q_col], q_bar, q_smem.index(0))
    tma.async_copy_global_to_shared(q_desc, [q_row + q_desc.block_type.shape[0], q_col], q_bar, q_smem.index(1))
    for i in range(n_blocks):
        stage = i % STAGES
        # a fresh mbarrier is in phase 0 and counts its (virtual) previous phase 1 as complete: waiting on parity 1
        # passes at once, so the first STAGES tiles need no release
        phase = (i // STAGES) & 1
        key_row = kv_row + (n_blocks - 1 - i) * BLOCK_N
        mbarrier.wait(k_empty.index(stage), phase ^ 1)
        mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [key_row, kv_col], k_ready.index(stage), k_bufs.index(stage))
        mbarrier.wait(v_empty.index(stage), phase ^ 1)
        mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
        if FP8:     # V^T [B*HKV*D, S]: this (batch, kv head)'s D rows, the block's keys as columns
            tma.async_copy_global_to_shared(v_desc, [vt_row, key_row - kv_row], v_ready.index(stage),
                                            v_bufs.index(stage))
        else:
            tma.async_copy_global_to_shared(v_desc, [key_row, kv_col], v_ready.index(stage), v_bufs.index(stage))


@gluon.jit
def _wait_turn(turn, t, WG: gl.constexpr, PINGPONG: gl.constexpr):
    """Ping-pong (FA3): WG 0 issues its t-th batch of wgmmas after WG 1 issued its (t-1)-th, WG 1 its t-th after
    WG 0's t-th, so each group's softmax runs while the other's wgmmas occupy the tensor cores. turn[w] completes a
    phase when the other group passes the turn to w; WG 0 starts (parity 1 on a fresh barrier passes at once)."""
    if PINGPONG:
        mbarrier.wait(turn.index(WG), (t & 1) ^ (1 - WG))


@gluon.jit
def _pass_turn(turn, WG: gl.constexpr, PINGPONG: gl.constexpr):
    if PINGPONG:
        mbarrier.arrive(turn.index(1 - WG), count=1)


@gluon.jit
def _softmax(s, m_i, l_i, qk_scale, key0, row0, MASK: gl.constexpr, mma: gl.constexpr, FP8: gl.constexpr):
    """Online softmax of one score tile s [64, BLOCK_N] fp32 in base 2 (x = s * qk_scale, qk_scale = softmax scale
    * log2 e, times q_descale * k_descale for FP8). m_i, l_i [64]: running max (scaled) and sum. Returns P as the
    A operand of the P V wgmma (bf16; FP8: e4m3 with scale 1, as P <= 1), alpha [64] (the factor for the older
    terms of O), m_new, l_new. l sums the fp32 P, not the rounded P of the wgmma (as FA3)."""
    WG_M: gl.constexpr = s.shape[0]
    BLOCK_N: gl.constexpr = s.shape[1]
    if MASK:
        # diagonal block: key index > query index -> -inf (each row keeps at least its own key: no all--inf row)
        rows = row0 + gl.arange(0, WG_M, layout=gl.SliceLayout(1, mma))
        cols = key0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
        s = gl.where(gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1), s, -float("inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)                        # [64]
    alpha = gl.exp2(m_i - m_new)                                                  # [64]; 0 when m_i = -inf
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))                          # [64, BLOCK_N]
    l_new = l_i * alpha + gl.sum(p, axis=1)
    # the wgmma accumulator layout -> A-operand layout of the same warps is a register shuffle, no shared memory;
    # the A fragment packs 32 bits of K per register: k_width 2 for bf16, 4 for 8-bit
    if FP8:
        # 8-bit A wants keys 4c..4c+3 (+16) of each 32 in lane c % 4, the accumulator holds 2c, 2c+1 (+8, +16, +24):
        # rather than move bytes across lanes, reorder the keys (FA3 does the same): P'[:, 32g+16h+4c+2e+p] =
        # P[:, 32g+16h+8e+2c+p], a relabelling of registers (assert_trivial), and V^T's keys come in the same
        # order (_vt_fp8), so P' V' = P V
        p8 = gl.reshape(p.to(gl.float8e4nv), [WG_M, BLOCK_N // 32, 2, 2, 4, 2])    # [row, g, h, e, c, p]
        p8 = gl.reshape(gl.permute(p8, (0, 1, 2, 4, 3, 5)), [WG_M, BLOCK_N])      # [row, (g, h, c, e, p)]
        p_op = gl.convert_layout(p8, gl.DotOperandLayout(operand_index=0, parent=mma, k_width=4),
                                 assert_trivial=True)
    else:
        p_op = gl.convert_layout(p.to(gl.bfloat16), gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2))
    return p_op, alpha, m_new, l_new


@gluon.jit
def _v_operand(v_bufs, stage, FP8: gl.constexpr):
    """The B operand [BLOCK_N, D] of O += P V from ring slot `stage`: bf16 V [BLOCK_N, D] as stored (N-major, which
    16-bit wgmma allows); FP8 V^T [D, BLOCK_N] viewed transposed, K-major as 8-bit wgmma requires."""
    if FP8:
        return v_bufs.index(stage).permute((1, 0))
    else:
        return v_bufs.index(stage)


@gluon.jit
def _consumer(q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, o_smem, bars, q_row, q_col, kv_row, kv_col,
              vt_row, n_blocks, qk_scale, o_scale, WG: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              PINGPONG: gl.constexpr, FP8: gl.constexpr):
    """A consumer warpgroup (4 warps): query rows WG*64 .. WG*64+63 of the CTA's block (same signature as
    _producer). Iteration i consumes ring slot i (key block n_blocks-1-i: the diagonal first) and, FA3's
    intra-warpgroup overlap, issues S_i = Q K_i^T before O += P_{i-1} V_{i-1}, so softmax(S_i) runs while the
    P V wgmma is in flight; O is rescaled by alpha_i once that wgmma is done. FP8: both wgmmas are e4m3 x e4m3
    with fp32 accumulators (k = 32 per instruction); O is multiplied by o_scale (v_descale) in the epilogue."""
    q_bar, k_ready, k_empty, v_ready, v_empty, turn = bars
    WG_M: gl.constexpr = q_desc.block_type.shape[0]
    HEAD_D: gl.constexpr = q_desc.block_type.shape[1]
    # wgmma accumulator layout: 4 warps stacked along M (16 rows each), one m64n128k16 instruction per k-step
    INSTR_K: gl.constexpr = 32 if FP8 else 16                                    # 32 bytes of K per instruction
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, 128, INSTR_K])
    row_layout: gl.constexpr = gl.SliceLayout(1, mma)
    q = q_smem.index(WG)                                                          # [64, D] this group's rows
    row0 = (n_blocks - 1) * BLOCK_N + WG * WG_M                                   # its first row in the sequence
    s_zero = gl.full([WG_M, BLOCK_N], 0.0, gl.float32, layout=mma)
    acc = gl.full([WG_M, HEAD_D], 0.0, gl.float32, layout=mma)                    # O [64, D], fp32
    m_i = gl.full([WG_M], -float("inf"), gl.float32, layout=row_layout)
    l_i = gl.full([WG_M], 0.0, gl.float32, layout=row_layout)
    mbarrier.wait(q_bar, 0)

    # i = 0: the diagonal block (masked); O is still zero, so no P V yet
    _wait_turn(turn, 0, WG, PINGPONG)
    mbarrier.wait(k_ready.index(0), 0)
    s = warpgroup_mma(q, k_bufs.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    _pass_turn(turn, WG, PINGPONG)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s, ))                         # S_0 [64, BLOCK_N]
    mbarrier.arrive(k_empty.index(0), count=1)                                    # K_0 read: may be refilled
    p_op, alpha, m_i, l_i = _softmax(s, m_i, l_i, qk_scale, (n_blocks - 1) * BLOCK_N, row0, True, mma,
                                        FP8)

    for i in range(1, n_blocks):                                                  # key blocks below the diagonal
        stage = i % STAGES
        phase = (i // STAGES) & 1
        prev = (i - 1) % STAGES
        prev_phase = ((i - 1) // STAGES) & 1
        _wait_turn(turn, i, WG, PINGPONG)
        mbarrier.wait(k_ready.index(stage), phase)
        s = warpgroup_mma(q, k_bufs.index(stage).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(prev), prev_phase)
        acc = warpgroup_mma(p_op, _v_operand(v_bufs, prev, FP8), acc, is_async=True)    # O += P_{i-1} V_{i-1}
        _pass_turn(turn, WG, PINGPONG)
        s = warpgroup_mma_wait(num_outstanding=1, deps=(s, ))                     # S_i done (issued first)
        mbarrier.arrive(k_empty.index(stage), count=1)
        p_op, alpha, m_i, l_i = _softmax(s, m_i, l_i, qk_scale, (n_blocks - 1 - i) * BLOCK_N, row0, False,
                                            mma, FP8)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))                 # P_{i-1} V_{i-1} done
        mbarrier.arrive(v_empty.index(prev), count=1)
        acc = acc * gl.expand_dims(alpha, 1)                                      # O to the new running max

    # the last P V
    last = (n_blocks - 1) % STAGES
    last_phase = ((n_blocks - 1) // STAGES) & 1
    _wait_turn(turn, n_blocks, WG, PINGPONG)
    mbarrier.wait(v_ready.index(last), last_phase)
    acc = warpgroup_mma(p_op, _v_operand(v_bufs, last, FP8), acc, is_async=True)
    _pass_turn(turn, WG, PINGPONG)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    mbarrier.arrive(v_empty.index(last), count=1)

    # epilogue: O = acc / l (FP8: * v_descale), written through this group's Q buffer (its last reader, the S
    # wgmma, has completed); FP8: through its own bf16 buffer (o_smem), Q being 8-bit
    if FP8:
        o = (acc * gl.expand_dims(o_scale / l_i, 1)).to(gl.bfloat16)              # [64, D]
    else:
        o = (acc / gl.expand_dims(l_i, 1)).to(gl.bfloat16)                        # [64, D]
    o_buf = o_smem.index(WG)
    o_buf.store(o)
    fence_async_shared()                                                          # generic writes -> TMA reads
    tma.async_copy_shared_to_global(o_desc, [q_row + WG * WG_M, q_col], o_buf)
    tma.store_wait(pendings=0)


@gluon.jit
def _attn_fwd_kernel(q_desc, k_desc, v_desc, o_desc, descale_ptr, seqlen, qk_scale, HQ: gl.constexpr,
                     HKV: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                     PINGPONG: gl.constexpr, FP8: gl.constexpr, WORKER_REG_0: gl.constexpr,
                     WORKER_REG_1: gl.constexpr):
    """q_desc / o_desc: [B*S, HQ*D] in [64, D] boxes; k_desc / v_desc: [B*S, HKV*D] in [BLOCK_N, D] boxes.
    FP8: q / k e4m3 (o bf16), v_desc over V^T [B*HKV*D, S] in [D, BLOCK_N] boxes, descale_ptr -> fp32
    (q_descale, k_descale, v_descale); unused in bf16 mode."""
    gl.static_assert(BLOCK_M == BLOCK_N, "the causal bounds assume square blocks")
    gl.static_assert(2 * q_desc.block_type.shape[0] == BLOCK_M, "two consumer warpgroups of BLOCK_M / 2 rows")
    HEAD_D: gl.constexpr = q_desc.block_type.shape[1]
    n_m = seqlen // BLOCK_M
    pid_m = n_m - 1 - gl.program_id(0)                                            # longest blocks first
    bh = gl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    q_row = b * seqlen + pid_m * BLOCK_M                                          # row in the [B*S, .] views
    q_col = h * HEAD_D
    kv_row = b * seqlen
    kv_col = (h // (HQ // HKV)) * HEAD_D                                          # GQA: kv head h // 16
    vt_row = (b * HKV + h // (HQ // HKV)) * HEAD_D                                # FP8: its rows of V^T
    n_blocks = pid_m + 1                                                          # key blocks 0 .. pid_m
    if FP8:
        gl.static_assert(q_desc.dtype == gl.float8e4nv and o_desc.dtype == gl.bfloat16, "FP8: e4m3 in, bf16 out")
        qk_scale = qk_scale * gl.load(descale_ptr) * gl.load(descale_ptr + 1)    # S = Q K^T q_descale k_descale
        o_scale = gl.load(descale_ptr + 2)                                        # O = (P V) v_descale
    else:
        o_scale = 1.0

    # shared memory: Q [2, 64, D] (reused for O), K and V rings [STAGES, BLOCK_N, D]: 32 + 64 + 64 KB;
    # FP8: Q 16 KB, K ring 32 KB, V^T ring [STAGES, D, BLOCK_N] 32 KB, and O [2, 64, D] bf16 32 KB of its own
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    if FP8:
        o_smem = gl.allocate_shared_memory(o_desc.dtype, [2] + o_desc.block_type.shape, o_desc.layout)
    else:
        o_smem = q_smem
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)      # the producer's expect-tx arrival
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)      # one arrival per consumer warpgroup (thread 0 of each)
        mbarrier.init(v_empty.index(i), count=2)
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)
    fence_async_shared()                              # barrier inits visible to the async proxy (TMA)
    bars = (q_bar, k_ready, k_empty, v_ready, v_empty, turn)

    WG0: gl.constexpr = 0
    WG1: gl.constexpr = 1
    gl.warp_specialize([
        # default partition (num_warps = 4): consumer of rows 0..63
        (_consumer, (q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, o_smem, bars, q_row, q_col, kv_row,
                     kv_col, vt_row, n_blocks, qk_scale, o_scale, WG0, BLOCK_N, STAGES, PINGPONG, FP8)),
        # worker, 4 warps: consumer of rows 64..127
        (_consumer, (q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, o_smem, bars, q_row, q_col, kv_row,
                     kv_col, vt_row, n_blocks, qk_scale, o_scale, WG1, BLOCK_N, STAGES, PINGPONG, FP8)),
        # worker, 1 warp: TMA loads
        (_producer, (q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, o_smem, bars, q_row, q_col, kv_row,
                     kv_col, vt_row, n_blocks, qk_scale, o_scale, WG0, BLOCK_N, STAGES, PINGPONG, FP8)),
    ], [4, 1], [WORKER_REG_0, WORKER_REG_1])


def _descs(q, k, v, o):
    """2-D TMA descriptors over the contiguous [B, S, H, D] tensors viewed as [B*S, H*D]."""
    bsz, seqlen = q.shape[:2]
    q_layout = gl.NVMMASharedLayout.get_default_for([WG_M, D], gl.bfloat16)
    kv_layout = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D], gl.bfloat16)
    q_desc = TensorDescriptor.from_tensor(q.view(bsz * seqlen, HQ * D), [WG_M, D], q_layout)
    o_desc = TensorDescriptor.from_tensor(o.view(bsz * seqlen, HQ * D), [WG_M, D], q_layout)
    k_desc = TensorDescriptor.from_tensor(k.view(bsz * seqlen, HKV * D), [BLOCK_N, D], kv_layout)
    v_desc = TensorDescriptor.from_tensor(v.view(bsz * seqlen, HKV * D), [BLOCK_N, D], kv_layout)
    return q_desc, k_desc, v_desc, o_desc


def _descs_fp8(q8, k8, vt8, o):
    """FP8: q8 / k8 [B, S, H, D] e4m3 viewed as [B*S, H*D], vt8 = V^T [B, HKV, D, S] e4m3 viewed as [B*HKV*D, S]
    in [D, BLOCK_N] boxes, o [B, S, HQ, D] bf16. All boxes have 128-byte rows (128 B swizzle)."""
    bsz, seqlen = q8.shape[:2]
    q_layout = gl.NVMMASharedLayout.get_default_for([WG_M, D], gl.float8e4nv)
    k_layout = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D], gl.float8e4nv)
    vt_layout = gl.NVMMASharedLayout.get_default_for([D, BLOCK_N], gl.float8e4nv)
    o_layout = gl.NVMMASharedLayout.get_default_for([WG_M, D], gl.bfloat16)
    q_desc = TensorDescriptor.from_tensor(q8.view(bsz * seqlen, HQ * D), [WG_M, D], q_layout)
    k_desc = TensorDescriptor.from_tensor(k8.view(bsz * seqlen, HKV * D), [BLOCK_N, D], k_layout)
    v_desc = TensorDescriptor.from_tensor(vt8.view(bsz * HKV * D, seqlen), [D, BLOCK_N], vt_layout)
    o_desc = TensorDescriptor.from_tensor(o.view(bsz * seqlen, HQ * D), [WG_M, D], o_layout)
    return q_desc, k_desc, v_desc, o_desc


def probe_attn_gluon(q, k, v, pingpong: bool = PINGPONG):
    """q [B, S, 32, 128], k / v [B, S, 2, 128], contiguous bf16 CUDA, S a multiple of 128 -> o [B, S, 32, 128]
    (causal GQA, scale 1/sqrt(128))."""
    bsz, seqlen = q.shape[:2]
    assert q.dtype == k.dtype == v.dtype == torch.bfloat16 and q.is_contiguous() and k.is_contiguous() \
        and v.is_contiguous(), "probe: contiguous bf16"
    assert q.shape[2:] == (HQ, D) and k.shape[2:] == (HKV, D) and v.shape == k.shape, "probe: Nemotron's heads"
    assert seqlen % BLOCK_M == 0, "probe: S a multiple of 128"
    o = torch.empty_like(q)
    q_desc, k_desc, v_desc, o_desc = _descs(q, k, v, o)
    qk_scale = 1.0 / math.sqrt(D) * math.log2(math.e)
    _attn_fwd_kernel[(seqlen // BLOCK_M, bsz * HQ)](
        q_desc, k_desc, v_desc, o_desc, None, seqlen, qk_scale, HQ=HQ, HKV=HKV, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        STAGES=STAGES, PINGPONG=pingpong, FP8=False, WORKER_REG_0=WORKER_REGS[0], WORKER_REG_1=WORKER_REGS[1],
        num_warps=NUM_WARPS, maxnreg=MAXNREG)
    return o


def _vt_fp8(v8):
    """v8 [B, S, HKV, D] e4m3 -> V^T [B, HKV, D, S] contiguous, the keys of each group of 32 in the order of the
    kernel's P' (_softmax): column 32g+16h+4c+2e+p holds key 32g+16h+8e+2c+p. Host-side and untimed: in the
    library the quantisation kernel would write this layout directly."""
    seqlen = v8.shape[1]
    keys = torch.arange(seqlen, device=v8.device).view(seqlen // 32, 2, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1)
    vt = v8.view(torch.uint8)[:, keys].permute(0, 2, 3, 1).contiguous()           # (bytes: index ops on fp8)
    return vt.view(torch.float8_e4m3fn)


def _quantize(x):
    """Per-tensor e4m3 quantisation on the GPU: (x / descale in e4m3, descale = amax / 448 as a [1] fp32 tensor)."""
    descale = (x.abs().amax().float().clamp_min(1e-12) / 448.0).reshape(1)
    return (x.float() / descale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), descale


def probe_attn_gluon_fp8(q8, k8, vt8, descales, pingpong: bool = PINGPONG):
    """FP8: q8 [B, S, 32, 128], k8 [B, S, 2, 128] and vt8 = _vt_fp8(v8) [B, 2, 128, S], contiguous e4m3, descales
    [3] fp32 CUDA (q_descale, k_descale, v_descale, per tensor) -> o [B, S, 32, 128] bf16 (causal GQA, scale
    1/sqrt(128), of the dequantised inputs). V^T is the caller's: in the library the quantisation would write it."""
    bsz, seqlen = q8.shape[:2]
    fp8 = torch.float8_e4m3fn
    assert q8.dtype == k8.dtype == vt8.dtype == fp8 and q8.is_contiguous() and k8.is_contiguous() \
        and vt8.is_contiguous(), "probe: contiguous e4m3"
    assert q8.shape[2:] == (HQ, D) and k8.shape[2:] == (HKV, D) and vt8.shape == (bsz, HKV, D, seqlen), \
        "probe: Nemotron's heads, V^T [B, HKV, D, S]"
    assert descales.dtype == torch.float32 and descales.numel() == 3, "probe: descales [3] fp32"
    assert seqlen % BLOCK_M == 0, "probe: S a multiple of 128"
    o = torch.empty(q8.shape, dtype=torch.bfloat16, device=q8.device)
    q_desc, k_desc, v_desc, o_desc = _descs_fp8(q8, k8, vt8, o)
    qk_scale = 1.0 / math.sqrt(D) * math.log2(math.e)                             # * q_descale k_descale inside
    _attn_fwd_kernel[(seqlen // BLOCK_M, bsz * HQ)](
        q_desc, k_desc, v_desc, o_desc, descales, seqlen, qk_scale, HQ=HQ, HKV=HKV, BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N, STAGES=STAGES, PINGPONG=pingpong, FP8=True, WORKER_REG_0=WORKER_REGS[0],
        WORKER_REG_1=WORKER_REGS[1], num_warps=NUM_WARPS, maxnreg=MAXNREG)
    return o


# ---------------------------------------------------------------------------------------------------------- AOT


def _desc_ty(dtype, shape):
    """The Triton type string of a TMA descriptor with the default NVMMA shared layout."""
    name = {gl.bfloat16: "bf16", gl.float8e4nv: "fp8e4nv"}[dtype]
    return f"tensordesc<{name}[{shape[0]}, {shape[1]}],{gl.NVMMASharedLayout.get_default_for(shape, dtype)!r}>"


def aot(pingpong: bool = PINGPONG, fp8: bool = False):
    """Compile for sm_90a without a GPU; print registers, shared memory and PTX instruction counts."""
    constexprs = {"HQ": HQ, "HKV": HKV, "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "STAGES": STAGES, "PINGPONG": pingpong,
                  "FP8": fp8, "WORKER_REG_0": WORKER_REGS[0], "WORKER_REG_1": WORKER_REGS[1]}
    o_ty = _desc_ty(gl.bfloat16, [WG_M, D])
    if fp8:
        types = {"q_desc": _desc_ty(gl.float8e4nv, [WG_M, D]), "k_desc": _desc_ty(gl.float8e4nv, [BLOCK_N, D]),
                 "v_desc": _desc_ty(gl.float8e4nv, [D, BLOCK_N]), "descale_ptr": "*fp32"}
    else:
        kv_ty = _desc_ty(gl.bfloat16, [BLOCK_N, D])
        types = {"q_desc": o_ty, "k_desc": kv_ty, "v_desc": kv_ty}
        constexprs["descale_ptr"] = None
    types.update({"o_desc": o_ty, "seqlen": "i32", "qk_scale": "fp32"})
    ck = compile_sm90a(_attn_fwd_kernel, types, constexprs, aligned=("seqlen", "descale_ptr") if fp8 else ("seqlen", ),
                       num_warps=NUM_WARPS, maxnreg=MAXNREG)
    print(f"compiled _attn_fwd_kernel ({'fp8 e4m3' if fp8 else 'bf16'}, pingpong={pingpong}) for sm_90a: 4 consumer "
          "+ 4 consumer + 1 producer warps", flush=True)
    # setmaxnreg targets: the default partition (consumer WG 0) decreases from its prologue's 256 to what the
    # workers leave it; consumer WG 1 increases, the producer decreases
    m = re.search(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+256;.*?setmaxnreg\.dec\.sync\.aligned\.u32\s+(\d+);",
                  ck.asm["ptx"], re.S)
    print(f"  registers per partition (setmaxnreg): consumer WG0 (default) {m.group(1) if m else '?'}, "
          f"consumer WG1 {WORKER_REGS[0]}, producer {WORKER_REGS[1]}")
    report(ck, f"attn{'_fp8' if fp8 else ''}_pingpong{int(pingpong)}")


# ---------------------------------------------------------------------------------------------------------- GPU


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aot", action="store_true", help="compile for sm_90a without a GPU and report")
    parser.add_argument("--seqlen", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    if args.aot:
        for fp8 in (False, True):
            for pingpong in (True, False):
                aot(pingpong, fp8)
        return
    bsz, seqlen = args.batch, args.seqlen
    gen = torch.Generator(device="cpu").manual_seed(0)

    def inputs(b, s):
        return (torch.randn(b, s, h, D, generator=gen).to("cuda", torch.bfloat16) for h in (HQ, HKV, HKV))

    variants = (True, False)                                                      # pingpong on / off
    # correctness first: one key block (the diagonal only), a few blocks, then the benchmark shape
    for b, s in ((1, 128), (2, 384), (bsz, seqlen)):
        q, k, v = inputs(b, s)
        ref = sdpa(q, k, v)
        for pingpong in variants:
            out = probe_attn_gluon(q, k, v, pingpong)
            torch.cuda.synchronize()
            check(f"gluon FA3 probe pingpong={pingpong} B{b} S{s}", {"o": rel_err(out, ref)}, 2e-2, "SDPA")
    flops = 2.0 * bsz * HQ * seqlen * seqlen * D                                  # causal: half of 4 B H S^2 D
    print(f"\nB{bsz} S{seqlen // 1024}K causal, {HQ}/{HKV} heads, D={D}, bf16 ({torch.cuda.get_device_name()}, "
          f"triton {triton.__version__})", flush=True)

    def row(name, fn):
        ms = triton.testing.do_bench(fn, warmup=10, rep=100)
        print(f"  {name:44s} {ms:7.3f} ms  {flops / ms / 1e9:6.1f} TFLOP/s", flush=True)

    for pingpong in variants:
        row(f"gluon FA3 probe (2 consumer WGs, pingpong={pingpong})", lambda: probe_attn_gluon(q, k, v, pingpong))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from nemotron_kernels.ops.gqa_attention import gqa_attention
    row("ours: gqa_attention", lambda: gqa_attention(q, k, v))
    ke, ve = k.repeat_interleave(HQ // HKV, 2).transpose(1, 2), v.repeat_interleave(HQ // HKV, 2).transpose(1, 2)
    qt = q.transpose(1, 2)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        row("torch SDPA cuDNN (kv expanded)",
            lambda: torch.nn.functional.scaled_dot_product_attention(qt, ke, ve, is_causal=True))

    # FP8 e4m3: per-tensor quantisation on the GPU, checked against SDPA (fp32) on the dequantised inputs
    print(flush=True)
    bench = (q, k, v)                                                             # the benchmark shape's inputs
    for b, s in ((1, 128), (2, 384), (bsz, seqlen)):
        q, k, v = inputs(b, s) if (b, s) != (bsz, seqlen) else bench
        (q8, qd), (k8, kd), (v8, vd) = (_quantize(t) for t in (q, k, v))
        vt8, descales = _vt_fp8(v8), torch.cat([qd, kd, vd])
        ref = sdpa(q8.float() * qd, k8.float() * kd, v8.float() * vd)
        for pingpong in variants:
            out = probe_attn_gluon_fp8(q8, k8, vt8, descales, pingpong)
            torch.cuda.synchronize()
            check(f"gluon FA3 probe fp8 pingpong={pingpong} B{b} S{s}", {"o": rel_err(out, ref)}, 5e-2,
                  "SDPA on the dequantised inputs")
        del ref
    print(f"\nB{bsz} S{seqlen // 1024}K causal, fp8 e4m3 q/k/v (per-tensor descales), bf16 out; the probe's V^T "
          "transpose untimed", flush=True)
    for pingpong in variants:
        row(f"gluon FA3 probe fp8 (pingpong={pingpong})",
            lambda: probe_attn_gluon_fp8(q8, k8, vt8, descales, pingpong))
    row("ours: gqa_attention fp8",
        lambda: gqa_attention(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd))


if __name__ == "__main__":
    main()
