"""Kernel times inside the whole router at decode sizes (H200), where `bench moe_router` gives only the total.
    PYTHONPATH=. python3 scripts/prof_router.py      # from the repository root, after building the extension
Per T: the GPU time of each kernel the router launches (torch.profiler over 50 eager calls, inputs warm in L2) and
the time per call of a CUDA graph of 100 routers back to back. Session 16 found the logits GEMV's serial loads and
the counts' memset with it (bench/NOTES.md)."""
from collections import defaultdict

import torch

from nemotron_kernels.ops.moe_router import moe_router

HIDDEN, EXPERTS, TOP_K, SCALE = 2688, 128, 6, 2.5


def kernel_times(fn, calls: int = 50) -> dict:
    """Mean GPU µs per launch of each kernel (name cut to 60 characters) over `calls` eager calls of fn."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    total, count = defaultdict(float), defaultdict(int)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            total[e.name[:60]] += e.device_time_total
            count[e.name[:60]] += 1
    return {name: total[name] / count[name] for name in total}


def graph_us(fn, calls: int = 100) -> float:
    """µs per call of a CUDA graph holding `calls` back-to-back calls of fn (warmed up on a side stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / calls


def main():
    print(f"{torch.cuda.get_device_name()}: router at E={EXPERTS}, k={TOP_K}, H={HIDDEN}")
    for tokens in (1, 8, 16, 17, 64):
        x = torch.randn(tokens, HIDDEN, device="cuda").to(torch.bfloat16)               # [T, H]
        weight = torch.randn(EXPERTS, HIDDEN, device="cuda") / HIDDEN ** 0.5             # [E, H] fp32
        bias = 0.05 * torch.randn(EXPERTS, device="cuda")                                # [E]

        def fn():
            return moe_router(x, weight, bias, TOP_K, SCALE)
        for _ in range(20):
            fn()
        times = kernel_times(fn)
        print(f"T={tokens}: graph {graph_us(fn):.2f} us/call; kernels: "
              + "; ".join(f"{name} {us:.2f} us" for name, us in times.items()), flush=True)


if __name__ == "__main__":
    main()
