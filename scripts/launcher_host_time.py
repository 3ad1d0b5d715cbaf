"""Host time of the Triton ops' launchers per call: what the host does before the GPU can run an op (checks, plans,
tile tables, allocations, argument packing, and on a GPU Triton's own launch path).
    python scripts/launcher_host_time.py              # CPU machine, no GPU: Nemotron 3 Nano prefill shapes (8K)
    python scripts/launcher_host_time.py --cuda       # H200: real launches at small shapes (the host dominates)
    ... --profile                                     # also the top functions by own time (cProfile) per op
Why: a prefill step launches ~2,000 kernels; where the host takes longer per op than the GPU, the GPU waits. The
H200's prefill profile showed ssd_scan spending ~1 ms of host time per layer (triton.cdiv in a plan loop, bench/
NOTES.md, session 11), and after that fix still ~280 us of SSDScanFn self time before its first kernel in FP8
prefill (session 12): Triton's JITFunction.run (binding and specialising ~40 arguments) is the suspect, which only
a GPU run shows.
CPU mode: the ops run under TRITON_INTERPRET=1 with the interpreter's kernel execution stubbed out; fp16 stands in
for bf16 (the interpreter runs tl.dot kernels in fp16/fp32 only); CPU allocations stand in for the CUDA caching
allocator, and the torch ops an op runs besides its kernels (ssd_scan's packed chunk table and final-state select)
execute here where a GPU would only launch them, so treat the figures as relative.
CUDA mode: bf16 at L = 256, so each op's kernels take less GPU time than its host path: wall time per call over
many calls is then the host's; each line also prints the GPU's busy time per call (kernel, copy and fill durations
from the profiler) and says which side set the pace."""
import cProfile
import os
import pstats
import sys
import time

CUDA = "--cuda" in sys.argv
PROFILE = "--profile" in sys.argv
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

import nemotron_kernels as nk  # noqa: E402

if not CUDA:
    import triton.runtime.interpreter as interpreter  # noqa: E402
    interpreter.InterpretedFunction.run = lambda self, *args, **kwargs: None     # launch nothing
L = 256 if CUDA else 8192
H, P, G, N, D_INNER, CONV, HID = 64, 64, 8, 128, 4096, 6144, 2688
DT = torch.bfloat16 if CUDA else torch.float16
DEVICE = "cuda" if CUDA else "cpu"


def host_us(fn, reps: int = 200 if CUDA else 20) -> float:
    """Wall us per call over back-to-back calls, after a first call (imports, plans, caches). When the host is the
    slower side this is its time per call; the GPU then idles between the op's kernels."""
    fn()
    if CUDA:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if CUDA:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e6


def gpu_busy_us(fn, reps: int = 50) -> tuple[float, float]:
    """(GPU us per call, device activities per call): the op's kernels, copies and fills summed from the profiler's
    device records. Events around the calls would also span the GPU's idle time between kernels, which at these
    small shapes is the host's time: the first version of this script (session 12) misread host time as GPU time."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    device = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if not device:
        raise RuntimeError("the profiler recorded no device activity (CUPTI unavailable?)")
    return sum(e.time_range.elapsed_us() for e in device) / reps, len(device) / reps


def top_functions(fn, reps: int = 20, n: int = 12) -> str:
    """cProfile's top functions by own time, in us per op call (cProfile inflates Python-level calls several times
    over: rank with it, time with host_us)."""
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(reps):
        fn()
    pr.disable()
    rows = sorted(((tt / reps * 1e6, ct / reps * 1e6, nc / reps, f"{where[0].split('site-packages/')[-1]}:{where[1]}"
                    f"({where[2]})") for where, (_, nc, tt, ct, _) in pstats.Stats(pr).stats.items()), reverse=True)
    lines = ["      own us   cum us  calls  function"]
    lines += [f"    {tt:8.1f} {ct:8.1f} {nc:6.1f}  {name[-100:]}" for tt, ct, nc, name in rows[:n]]
    return "\n".join(lines)


def main():
    ops = nk.ops_for("kernels")
    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=DT):
        return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)

    x, dt, B, C = randn(1, L, H, P), randn(1, L, H), randn(1, L, G, N), randn(1, L, G, N)
    A = -torch.rand(H, generator=g).to(DEVICE)
    D, dt_bias = randn(H, dtype=torch.float32), randn(H, dtype=torch.float32)
    cu = torch.tensor([0, L], dtype=torch.int32, device=DEVICE)
    xc, w, b = randn(1, L, CONV), randn(CONV, 4), randn(CONV)
    y, z, gw = randn(L, D_INNER), randn(L, D_INNER), randn(D_INNER)
    h, rw = randn(L, HID), randn(HID)
    q, k = randn(1, L, 32, 128), randn(1, L, 2, 128)
    cases = {
        "ssd_scan (packed, final states)": lambda: ops.ssd_scan(x, dt, A, B, C, D, dt_bias, True, 128, None, cu, True),
        "ssd_scan": lambda: ops.ssd_scan(x, dt, A, B, C, D, dt_bias, True, 128),
        "causal_conv1d (packed, final state)": lambda: ops.causal_conv1d(xc, w, b, "silu", cu_seqlens=cu,
                                                                         return_final_state=True),
        "gated_rmsnorm": lambda: ops.gated_rmsnorm(y, z, gw, 512, 1e-5),
        "rmsnorm with residual": lambda: ops.rmsnorm(h, rw, 1e-5, h),
        "gqa_attention (packed)": lambda: ops.gqa_attention(q, k, k, causal=True, cu_seqlens=cu, max_seqlen=L),
    }
    print(f"{'CUDA, L=' + str(L) + ', bf16' if CUDA else 'CPU (interpreter stubbed), L=' + str(L)}")
    with torch.no_grad():
        for name, fn in cases.items():
            wall = host_us(fn)
            line = f"{name:40s} {wall:8.1f} us"
            if CUDA:
                gpu, launches = gpu_busy_us(fn)
                bound = "host-bound" if wall > 1.1 * gpu else "GPU-bound"
                line += f"   GPU busy {gpu:7.1f} us in {launches:.0f} kernels/copies   ({bound})"
            print(line, flush=True)
            if PROFILE:
                print(top_functions(fn), flush=True)


if __name__ == "__main__":
    main()
