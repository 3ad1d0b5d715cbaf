"""Can a hand-scheduled Gluon kernel beat cuDNN on the causal GQA attention forward (FlashAttention-3 style)?
Nemotron's shape: q [B, S, 32, 128], k / v [B, S, 2, 128], bf16, causal, scale 1/sqrt(128); query head h reads
kv head h // 16. Our Triton kernel runs ~536 TFLOP/s on the H200, cuDNN ~563; the target is >= 650.

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

    PYTHONPATH=. python3 scripts/probe_attn_gluon.py                      # H200: check against SDPA, then time
    PYTHONPATH=. .venv-aot/bin/python scripts/probe_attn_gluon.py --aot   # CPU machine: compile for sm_90a only
GPU mode checks both variants (pingpong on / off) against torch SDPA (kv repeated to 32 heads) at B1 S128, B2 S384
and the benchmark shape (default B4 S8K; --batch, --seqlen), printing the relative max error; above 2e-2 it prints
WRONG and exits 1 untimed. Then it prints ms and TFLOP/s (causal FLOPs 2 B HQ S^2 D) of both variants,
nemotron_kernels' gqa_attention and cuDNN SDPA, each row as it is measured. --aot compiles both variants and
prints registers (ptxas, setmaxnreg per partition, the highest SASS register), shared memory, and the PTX counts of
setmaxnreg, wgmma.mma_async and cp.async.bulk.tensor."""
import argparse
import math
import re
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from scripts.gluon_probe import compile_sm90a, rel_err, report
from scripts.probe_attn_ws import sdpa      # the same reference as the WS probe

HQ, HKV, D = 32, 2, 128
BLOCK_M, BLOCK_N, STAGES = 128, 128, 2      # query rows per CTA (two warpgroups of 64), keys per tile, K/V ring
WG_M = BLOCK_M // 2                         # query rows per consumer warpgroup
NUM_WARPS = 4                               # the default partition: consumer warpgroup 0
MAXNREG = 168                               # 12 warps x 32 threads x 168 <= 64K registers at launch
WORKER_REGS = (240, 24)                     # setmaxnreg targets: consumer warpgroup 1, producer
PINGPONG = True                             # FA3's inter-warpgroup schedule (mbarrier turns); False: free-running


@gluon.jit
def _producer(q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, bars, q_row, q_col, kv_row, kv_col,
              n_blocks, qk_scale, WG: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              PINGPONG: gl.constexpr):
    """One warp: Q once, then for i = 0 .. n_blocks-1 the key block j = n_blocks-1-i (the masked diagonal block
    first, as the consumers want it) as K_i and V_i into stage i % STAGES. K and V have their own barriers so the
    consumers can start S = Q K^T while V is still in flight."""
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
def _softmax(s, m_i, l_i, qk_scale, key0, row0, MASK: gl.constexpr, mma: gl.constexpr):
    """Online softmax of one score tile s [64, BLOCK_N] fp32 in base 2 (x = s * qk_scale, qk_scale = softmax scale
    * log2 e). m_i, l_i [64]: running max (scaled) and sum. Returns P as the bf16 A operand of the P V wgmma,
    alpha [64] (the factor for the older terms of O), m_new, l_new."""
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
    # the wgmma accumulator layout -> A-operand layout of the same warps is a register shuffle, no shared memory
    p_op = gl.convert_layout(p.to(gl.bfloat16), gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2))
    return p_op, alpha, m_new, l_new


@gluon.jit
def _consumer(q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, bars, q_row, q_col, kv_row, kv_col,
              n_blocks, qk_scale, WG: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              PINGPONG: gl.constexpr):
    """A consumer warpgroup (4 warps): query rows WG*64 .. WG*64+63 of the CTA's block (same signature as
    _producer). Iteration i consumes ring slot i (key block n_blocks-1-i: the diagonal first) and, FA3's
    intra-warpgroup overlap, issues S_i = Q K_i^T before O += P_{i-1} V_{i-1}, so softmax(S_i) runs while the
    P V wgmma is in flight; O is rescaled by alpha_i once that wgmma is done."""
    q_bar, k_ready, k_empty, v_ready, v_empty, turn = bars
    WG_M: gl.constexpr = q_desc.block_type.shape[0]
    HEAD_D: gl.constexpr = q_desc.block_type.shape[1]
    # wgmma accumulator layout: 4 warps stacked along M (16 rows each), one m64n128k16 instruction per k-step
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 128, 16])
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
    p_op, alpha, m_i, l_i = _softmax(s, m_i, l_i, qk_scale, (n_blocks - 1) * BLOCK_N, row0, True, mma)

    for i in range(1, n_blocks):                                                  # key blocks below the diagonal
        stage = i % STAGES
        phase = (i // STAGES) & 1
        prev = (i - 1) % STAGES
        prev_phase = ((i - 1) // STAGES) & 1
        _wait_turn(turn, i, WG, PINGPONG)
        mbarrier.wait(k_ready.index(stage), phase)
        s = warpgroup_mma(q, k_bufs.index(stage).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(prev), prev_phase)
        acc = warpgroup_mma(p_op, v_bufs.index(prev), acc, is_async=True)         # O += P_{i-1} V_{i-1}
        _pass_turn(turn, WG, PINGPONG)
        s = warpgroup_mma_wait(num_outstanding=1, deps=(s, ))                     # S_i done (issued first)
        mbarrier.arrive(k_empty.index(stage), count=1)
        p_op, alpha, m_i, l_i = _softmax(s, m_i, l_i, qk_scale, (n_blocks - 1 - i) * BLOCK_N, row0, False, mma)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))                 # P_{i-1} V_{i-1} done
        mbarrier.arrive(v_empty.index(prev), count=1)
        acc = acc * gl.expand_dims(alpha, 1)                                      # O to the new running max

    # the last P V
    last = (n_blocks - 1) % STAGES
    last_phase = ((n_blocks - 1) // STAGES) & 1
    _wait_turn(turn, n_blocks, WG, PINGPONG)
    mbarrier.wait(v_ready.index(last), last_phase)
    acc = warpgroup_mma(p_op, v_bufs.index(last), acc, is_async=True)
    _pass_turn(turn, WG, PINGPONG)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    mbarrier.arrive(v_empty.index(last), count=1)

    # epilogue: O = acc / l, written through this group's Q buffer (its last reader, the S wgmma, has completed)
    o = (acc / gl.expand_dims(l_i, 1)).to(gl.bfloat16)                            # [64, D]
    q.store(o)
    fence_async_shared()                                                          # generic writes -> TMA reads
    tma.async_copy_shared_to_global(o_desc, [q_row + WG * WG_M, q_col], q)
    tma.store_wait(pendings=0)


@gluon.jit
def _attn_fwd_kernel(q_desc, k_desc, v_desc, o_desc, seqlen, qk_scale, HQ: gl.constexpr, HKV: gl.constexpr,
                     BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, PINGPONG: gl.constexpr,
                     WORKER_REG_0: gl.constexpr, WORKER_REG_1: gl.constexpr):
    """q_desc / o_desc: [B*S, HQ*D] in [64, D] boxes; k_desc / v_desc: [B*S, HKV*D] in [BLOCK_N, D] boxes."""
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
    n_blocks = pid_m + 1                                                          # key blocks 0 .. pid_m

    # shared memory: Q [2, 64, D] (reused for O), K and V rings [STAGES, BLOCK_N, D]: 32 + 64 + 64 KB
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
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
        (_consumer, (q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, bars, q_row, q_col, kv_row, kv_col,
                     n_blocks, qk_scale, WG0, BLOCK_N, STAGES, PINGPONG)),
        # worker, 4 warps: consumer of rows 64..127
        (_consumer, (q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, bars, q_row, q_col, kv_row, kv_col,
                     n_blocks, qk_scale, WG1, BLOCK_N, STAGES, PINGPONG)),
        # worker, 1 warp: TMA loads
        (_producer, (q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, bars, q_row, q_col, kv_row, kv_col,
                     n_blocks, qk_scale, WG0, BLOCK_N, STAGES, PINGPONG)),
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
        q_desc, k_desc, v_desc, o_desc, seqlen, qk_scale, HQ=HQ, HKV=HKV, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        STAGES=STAGES, PINGPONG=pingpong, WORKER_REG_0=WORKER_REGS[0], WORKER_REG_1=WORKER_REGS[1], num_warps=NUM_WARPS,
        maxnreg=MAXNREG)
    return o


# ---------------------------------------------------------------------------------------------------------- AOT


def aot(pingpong: bool = PINGPONG):
    """Compile for sm_90a without a GPU; print registers, shared memory and PTX instruction counts."""
    q_layout = gl.NVMMASharedLayout.get_default_for([WG_M, D], gl.bfloat16)
    kv_layout = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D], gl.bfloat16)
    q_ty = f"tensordesc<bf16[{WG_M}, {D}],{q_layout!r}>"
    kv_ty = f"tensordesc<bf16[{BLOCK_N}, {D}],{kv_layout!r}>"
    constexprs = {"HQ": HQ, "HKV": HKV, "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "STAGES": STAGES, "PINGPONG": pingpong,
                  "WORKER_REG_0": WORKER_REGS[0], "WORKER_REG_1": WORKER_REGS[1]}
    types = {"q_desc": q_ty, "k_desc": kv_ty, "v_desc": kv_ty, "o_desc": q_ty, "seqlen": "i32", "qk_scale": "fp32"}
    ck = compile_sm90a(_attn_fwd_kernel, types, constexprs, aligned=("seqlen", ), num_warps=NUM_WARPS,
                       maxnreg=MAXNREG)
    print(f"compiled _attn_fwd_kernel (pingpong={pingpong}) for sm_90a: 4 consumer + 4 consumer + 1 producer warps",
          flush=True)
    # setmaxnreg targets: the default partition (consumer WG 0) decreases from its prologue's 256 to what the
    # workers leave it; consumer WG 1 increases, the producer decreases
    m = re.search(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+256;.*?setmaxnreg\.dec\.sync\.aligned\.u32\s+(\d+);",
                  ck.asm["ptx"], re.S)
    print(f"  registers per partition (setmaxnreg): consumer WG0 (default) {m.group(1) if m else '?'}, "
          f"consumer WG1 {WORKER_REGS[0]}, producer {WORKER_REGS[1]}")
    report(ck, f"attn_pingpong{int(pingpong)}")


# ---------------------------------------------------------------------------------------------------------- GPU


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aot", action="store_true", help="compile for sm_90a without a GPU and report")
    parser.add_argument("--seqlen", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    if args.aot:
        for pingpong in (True, False):
            aot(pingpong)
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
            err = rel_err(out, ref)
            if not err <= 2e-2:                                                   # wrong (or NaN): not timed
                print(f"gluon FA3 probe pingpong={pingpong} B{b} S{s}: WRONG, differs from SDPA by {err:.2e} "
                      "(relative max)", flush=True)
                sys.exit(1)
            print(f"gluon FA3 probe pingpong={pingpong} B{b} S{s}: matches SDPA ({err:.1e} relative max)",
                  flush=True)
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


if __name__ == "__main__":
    main()
