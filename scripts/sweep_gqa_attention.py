"""Sweep the attention kernels' tiles on the H200 (#5): the forward's (BLOCK_M, BLOCK_N, num_warps, num_stages,
K/V by TMA) against its autotuned choice, bf16 ("fwd") and FP8 e4m3 ("fwd8": q / k / v quantised beforehand with one
descale per (batch, kv head), as `python -m bench gqa_attention` does), and the backward's dk/dv and dq (BLOCK_M,
BLOCK_N, num_warps, num_stages), each varied with the other at its default (DKDV_CONFIGS / DQ_CONFIGS in
nemotron_kernels/triton/gqa_attention_bwd.py).
    PYTHONPATH=. python scripts/sweep_gqa_attention.py [S=8192] [B=4] [fwd|fwd8|bwd]     (none named: all)
Shape: Nemotron 3 Nano's attention (32 query heads, 2 KV heads, D = 128), causal, bf16. Every candidate is first
compiled in parallel worker processes (a small call of the same specialisation fills Triton's cache), then run at
full size, checked against the default tiles' outputs (max |diff| <= 1e-2 max |ref|) and timed (median of 5
event-timed calls, bench.harness.cuda_times); then the fastest dk/dv and dq tiles together. TFLOP/s count the
backward as 2.5 forwards (5 matmuls), as `python -m bench gqa_attention` does.
"""
import multiprocessing as mp
import sys

import torch

from bench.harness import cuda_times

HQ, HKV, D = 32, 2, 128
# Candidates kept from the sm_90a AOT report (Triton 3.8, bench/NOTES.md session 13).
# Forward: the autotuned set is (128, 128, 8, 2) and (128, 64, 8, 3), by TMA or pointers. 64-row tiles on 4 warps fit
# two programs per SM (64x64 s3: 148 registers, 112 KB), so one program's softmax can overlap the other's matmuls.
# 128x128 on 16 warps spills.
FWD = [(128, 128, 8, 2, True), (128, 64, 8, 3, True), (128, 64, 8, 4, True), (128, 128, 8, 3, True),
       (128, 32, 8, 4, True), (64, 64, 4, 2, True), (64, 64, 4, 3, True), (64, 128, 4, 2, True)]
# FP8 forward (v^T through TMA halves a stage's shared memory): the autotuned set is FWD_CONFIGS + FP8_EXTRA_CONFIGS;
# 5 stages and 128x64 s4 compiled without spills in session 13's sm_90a AOT report (240 / 166 registers).
FWD8 = [(128, 128, 8, 2, True), (128, 128, 8, 3, True), (128, 128, 8, 4, True), (128, 128, 8, 5, True),
        (128, 64, 8, 3, True), (128, 64, 8, 4, True)]
# Backward: dk/dv tiles that spill 100+ B per thread (64x128 w8, 64x64 w4, 32x64 w4 s2) are left out.
DKDV = [(32, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 4), (16, 128, 8, 2), (16, 128, 8, 3), (64, 64, 8, 2),
        (32, 64, 8, 2), (32, 64, 8, 3), (32, 64, 4, 3), (32, 64, 4, 4), (16, 64, 4, 3), (16, 64, 4, 4)]
DQ = [(128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 2), (128, 32, 8, 3), (64, 64, 4, 2), (64, 64, 4, 3),
      (64, 32, 4, 2)]


def inputs(b: int, s: int, seed: int = 0):
    """(do, q, k, v, o, lse): the backward's arguments, o and lse from the forward."""
    from nemotron_kernels.triton.gqa_attention_fwd import gqa_attention_fwd
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, s, HQ, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, s, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(b, s, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    do = torch.randn(b, s, HQ, D, device="cuda", dtype=torch.bfloat16, generator=g)
    o, lse = gqa_attention_fwd(q, k, v, True, D ** -0.5)
    return do, q, k, v, o, lse


def inputs8(args):
    """(q8, k8, v8, q_descale, k_descale, v_descale): the bench's FP8 quantisation of the forward's q, k, v."""
    from bench.bench_gqa_attention import _quantize_fp8
    _, q, k, v, _, _ = args
    (q8, qd), (k8, kd), (v8, vd) = (_quantize_fp8(t) for t in (q, k, v))
    return q8, k8, v8, qd, kd, vd


def call(args, tiles: dict) -> tuple:
    """The forward's (o,) at tiles["fwd"] (bf16) or tiles["fwd8"] (args: inputs8), or the backward's (dq, dk, dv)
    at tiles["dkdv"] / tiles["dq"]; a kernel not named runs at its default (the forward: the autotuner's choice)."""
    from nemotron_kernels.triton.gqa_attention_bwd import gqa_attention_bwd
    from nemotron_kernels.triton.gqa_attention_fwd import gqa_attention_fwd
    if "fwd8" in tiles:
        q8, k8, v8, qd, kd, vd = args
        return gqa_attention_fwd(q8, k8, v8, True, D ** -0.5, config=tiles["fwd8"], q_descale=qd, k_descale=kd,
                                 v_descale=vd)[:1]
    do, q, k, v, o, lse = args
    if "fwd" in tiles:
        return gqa_attention_fwd(q, k, v, True, D ** -0.5, config=tiles["fwd"])[:1]
    return gqa_attention_bwd(do, q, k, v, o, lse, True, D ** -0.5, dkdv_config=tiles.get("dkdv"),
                             dq_config=tiles.get("dq"))


def compile_one(job) -> str:
    """Worker: one small call with the candidate's tiles (same specialisation as the full size) -> '' or the error."""
    kind, cfg = job
    try:
        args = inputs(1, 256)
        call(inputs8(args) if kind == "fwd8" else args, {kind: cfg})
        torch.cuda.synchronize()
        return ""
    except Exception as e:  # noqa: BLE001 -- reported per candidate
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def timed(args, tiles: dict) -> float:
    """ms per call: median of 5 event-timed eager calls after a warm-up (the backward's calls take 10-90 ms)."""
    return cuda_times(lambda _: call(args, tiles), [None], reps=5, graph_replays=0, graph=False)["ms_eager"]


def sweep(part: str, args, errors: dict, fwd_flops: float) -> None:
    """Times part's ("fwd", "fwd8" or "bwd") candidates against its default tiles."""
    fwd = part != "bwd"
    flops = fwd_flops * (1 if fwd else 2.5)
    names = ("o",) if fwd else ("dq", "dk", "dv")
    default = {part: None} if fwd else {}
    ref = call(args, default)
    base = timed(args, default)
    print(f"{part} default ({'autotuned' if fwd else 'DKDV_CONFIGS / DQ_CONFIGS'}): {base:8.3f} ms  "
          f"{flops / base / 1e9:6.1f} TFLOP/s", flush=True)
    if fwd:       # session 14: the bench's autotuned forward ran 7% behind the sweep's fastest forced tile
        from nemotron_kernels.triton import gqa_attention_fwd as fwd_module
        tuned = fwd_module._fwd_tuned_fp8 if part == "fwd8" else fwd_module._fwd_tuned_any
        print(f"  the autotuner's pick: {tuned.best_config}", flush=True)

    def run(label: str, tiles: dict) -> float:
        out = call(args, tiles)
        bad = [name for name, x, r in zip(names, out, ref)
               if (x.float() - r.float()).abs().max() > 1e-2 * r.float().abs().max()]
        ms = timed(args, tiles)
        print(f"{label}  {ms:8.3f} ms  {flops / ms / 1e9:6.1f} TFLOP/s  {base / ms:5.2f}x"
              + (f"  MISMATCH in {', '.join(bad)}" if bad else ""), flush=True)
        return float("inf") if bad else ms

    best = {}
    for (kind, cfg), err in errors.items():
        if (kind if kind.startswith("fwd") else "bwd") != part:
            continue
        label = f"{kind:4s} {'x'.join(map(str, cfg[:2])):>7s} w{cfg[2]} s{cfg[3]}" + \
                (f" {'tma' if cfg[4] else 'ptr'}" if fwd else "")
        if err:
            print(f"{label}  skipped: {err}", flush=True)
            continue
        ms = run(label, {kind: cfg})
        if ms < best.get(kind, (base, None))[0]:
            best[kind] = (ms, cfg)
    if part == "bwd" and len(best) == 2:
        run(f"both: dkdv {best['dkdv'][1]}, dq {best['dq'][1]}", {kind: cfg for kind, (_, cfg) in best.items()})


def main():
    numbers = [int(a) for a in sys.argv[1:] if a.isdigit()]
    s, b = (numbers + [8192, 4][len(numbers):])[:2]
    parts = [p for p in ("fwd", "fwd8", "bwd") if p in sys.argv[1:]] or ["fwd", "fwd8", "bwd"]
    jobs = ([("fwd", c) for c in FWD] if "fwd" in parts else []) + \
           ([("fwd8", c) for c in FWD8] if "fwd8" in parts else []) + \
           ([("dkdv", c) for c in DKDV] + [("dq", c) for c in DQ] if "bwd" in parts else [])
    with mp.get_context("spawn").Pool(8) as pool:
        errors = dict(zip(jobs, pool.map(compile_one, jobs)))
    print(f"{torch.cuda.get_device_name()}, B{b} S{s}, {HQ}/{HKV} heads, D{D}, causal, bf16 (fwd8: e4m3); "
          f"{sum(not e for e in errors.values())} of {len(jobs)} candidates compiled", flush=True)
    args = inputs(b, s)
    for part in parts:
        sweep(part, inputs8(args) if part == "fwd8" else args, errors, 4 * b * s * s * HQ * D / 2)


if __name__ == "__main__":
    main()
