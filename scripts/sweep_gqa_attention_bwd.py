"""Sweep the attention backward's tiles on the H200 (#5): the dk/dv kernel's and the dq kernel's
(BLOCK_M, BLOCK_N, num_warps, num_stages), each varied with the other at its default (DKDV_CONFIGS / DQ_CONFIGS in
nemotron_kernels/triton/gqa_attention_bwd.py, never timed against alternatives before).
    PYTHONPATH=. python scripts/sweep_gqa_attention_bwd.py [S=8192] [B=4]
Shape: Nemotron 3 Nano's attention (32 query heads, 2 KV heads, D = 128), causal, bf16. Every candidate is first
compiled in parallel worker processes (a small call of the same specialisation fills Triton's cache), then run at
full size, checked against the default tiles' dq / dk / dv (max |diff| <= 1e-2 max |ref|) and timed (median of 5
event-timed calls); then the fastest of each kind together. TFLOP/s count the backward as 2.5 forwards (5 matmuls), as `python -m bench gqa_attention` does.
"""
import multiprocessing as mp
import statistics
import sys

import torch

HQ, HKV, D = 32, 2, 128
# Candidates kept from the sm_90a AOT report (Triton 3.8, bench/NOTES.md session 13): dk/dv tiles that spill
# 100+ B per thread (64x128 w8, 64x64 w4, 32x64 w4 s2) are left out.
DKDV = [(32, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 4), (16, 128, 8, 2), (16, 128, 8, 3), (64, 64, 8, 2),
        (32, 64, 8, 2), (32, 64, 8, 3), (32, 64, 4, 3), (32, 64, 4, 4), (16, 64, 4, 3), (16, 64, 4, 4)]
DQ = [(128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 2), (128, 32, 8, 3), (64, 64, 4, 2), (64, 64, 4, 3),
      (64, 32, 4, 2)]


def inputs(b: int, s: int, seed: int = 0):
    from nemotron_kernels.triton.gqa_attention_fwd import gqa_attention_fwd
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, s, HQ, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, s, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(b, s, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    do = torch.randn(b, s, HQ, D, device="cuda", dtype=torch.bfloat16, generator=g)
    o, lse = gqa_attention_fwd(q, k, v, True, D ** -0.5)
    return do, q, k, v, o, lse


def backward(args, dkdv=None, dq=None):
    from nemotron_kernels.triton.gqa_attention_bwd import gqa_attention_bwd
    return gqa_attention_bwd(*args, True, D ** -0.5, dkdv_config=dkdv, dq_config=dq)


def compile_one(job) -> str:
    """Worker: one small call with the candidate's tiles (same specialisation as the full size) -> '' or the error."""
    kind, cfg = job
    try:
        backward(inputs(1, 256), **{kind: cfg})
        torch.cuda.synchronize()
        return ""
    except Exception as e:  # noqa: BLE001 -- reported per candidate
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def timed(fn, reps: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    s = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
    b = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    jobs = [("dkdv", c) for c in DKDV] + [("dq", c) for c in DQ]
    with mp.get_context("spawn").Pool(8) as pool:
        errors = dict(zip(jobs, pool.map(compile_one, jobs)))
    print(f"{torch.cuda.get_device_name()}, B{b} S{s}, {HQ}/{HKV} heads, D{D}, causal, bf16; "
          f"{sum(not e for e in errors.values())} of {len(jobs)} candidates compiled", flush=True)
    args = inputs(b, s)
    flops = 2.5 * 4 * b * s * s * HQ * D / 2
    ref = backward(args)
    base = timed(lambda: backward(args))
    print(f"default tiles: {base:8.3f} ms  {flops / base / 1e9:6.1f} TFLOP/s", flush=True)
    best = {"dkdv": (base, None), "dq": (base, None)}

    def run(label: str, tiles: dict) -> float:
        out = backward(args, **tiles)
        bad = [name for name, x, r in zip(("dq", "dk", "dv"), out, ref)
               if (x.float() - r.float()).abs().max() > 1e-2 * r.float().abs().max()]
        ms = timed(lambda: backward(args, **tiles))
        print(f"{label}  {ms:8.3f} ms  {flops / ms / 1e9:6.1f} TFLOP/s  {base / ms:5.2f}x"
              + (f"  MISMATCH in {', '.join(bad)}" if bad else ""), flush=True)
        return float("inf") if bad else ms

    for (kind, cfg), err in errors.items():
        label = f"{kind:4s} {'x'.join(map(str, cfg[:2])):>7s} w{cfg[2]} s{cfg[3]}"
        if err:
            print(f"{label}  skipped: {err}", flush=True)
            continue
        ms = run(label, {kind: cfg})
        if ms < best[kind][0]:
            best[kind] = (ms, cfg)
    pair = {kind: cfg for kind, (_, cfg) in best.items() if cfg is not None}
    if len(pair) == 2:
        run(f"both: dkdv {pair['dkdv']}, dq {pair['dq']}", pair)


if __name__ == "__main__":
    main()
