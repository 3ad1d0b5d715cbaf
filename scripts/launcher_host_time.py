"""Host time of the Triton ops' launchers at Nemotron 3 Nano prefill shapes (8K tokens), on a CPU, no GPU needed:
the ops run under TRITON_INTERPRET=1 with the interpreter's kernel execution stubbed out, so what is timed is
everything the host does per call (checks, plans, tile tables, allocations, argument packing).
    python scripts/launcher_host_time.py
Why: a prefill step launches ~2,000 kernels; where the host takes longer per op than the GPU, the GPU waits. The
H200's prefill profile showed ssd_scan spending ~1 ms of host time per layer (triton.cdiv in a plan loop, bench/
NOTES.md, session 11). fp16 stands in for bf16 (the interpreter runs tl.dot kernels in fp16/fp32 only); CPU
allocations stand in for the CUDA caching allocator, and the torch ops an op runs besides its kernels (ssd_scan's
packed chunk table and final-state select: ~1 ms of the packed case) execute here where a GPU would only launch
them, so treat the figures as relative."""
import os
import time

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton.runtime.interpreter as interpreter  # noqa: E402

import nemotron_kernels as nk  # noqa: E402

interpreter.InterpretedFunction.run = lambda self, *args, **kwargs: None     # launch nothing
L, H, P, G, N, D_INNER, CONV, HID = 8192, 64, 64, 8, 128, 4096, 6144, 2688
DT = torch.float16


def host_us(fn, reps: int = 20) -> float:
    fn()                                                          # first call: imports, plans, caches
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e6


def main():
    ops = nk.ops_for("kernels")
    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=DT):
        return torch.randn(*shape, generator=g).to(dtype)

    x, dt, B, C = randn(1, L, H, P), randn(1, L, H), randn(1, L, G, N), randn(1, L, G, N)
    A, D, dt_bias = -torch.rand(H, generator=g), randn(H, dtype=torch.float32), randn(H, dtype=torch.float32)
    cu = torch.tensor([0, L], dtype=torch.int32)
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
    with torch.no_grad():
        for name, fn in cases.items():
            print(f"{name:40s} {host_us(fn):8.1f} us")


if __name__ == "__main__":
    main()
