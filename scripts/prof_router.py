"""Kernel times inside the whole router at decode sizes (H200), where `bench moe_router` gives only the total.
    PYTHONPATH=. python3 scripts/prof_router.py      # from the repository root, after building the extension
Per T: the GPU time of each kernel the router launches (torch.profiler over 50 eager calls, inputs warm in L2) and
the time per call of a CUDA graph of routers back to back (bench.harness.cuda_times: 16 per graph, median of 20
replays; session 17's figures came from one replay of 100 per graph). Session 16 found the logits GEMV's serial
loads and the counts' memset with it (bench/NOTES.md)."""
from collections import defaultdict

import torch

from bench.harness import cuda_times
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
        graph_us = cuda_times(lambda _: fn(), [None], reps=5, graph_replays=20)["ms_graph"] * 1e3
        print(f"T={tokens}: graph {graph_us:.2f} us/call; kernels: "
              + "; ".join(f"{name} {us:.2f} us" for name, us in times.items()), flush=True)


if __name__ == "__main__":
    main()
