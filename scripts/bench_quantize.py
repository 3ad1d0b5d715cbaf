"""Time the FP8 row quantisation (quantize_fp8_rowwise, csrc/moe/moe_quant_kernel.cu) at the FP8 prefill's shapes,
on Gaussian rows and on relu² rows (about half exact zeros, like the experts' h). The 8K prefill profile of
session 12 gave the warp kernel 8.9 ms over its calls, where the Gaussian-row table of session 6 predicts ≈ 3.6 ms.
    python scripts/bench_quantize.py          # from the repository root, after building the extension"""
import torch

from bench.harness import cuda_times
from nemotron_kernels.ops.grouped_gemm import quantize_fp8_rowwise

# name, rows, cols: an 8K prefill's MoE h (T·k rows), its x / Mamba in_proj input, shared h, out_proj input
SHAPES = (("moe h", 49152, 1856), ("moe x / in_proj", 8192, 2688), ("shared h", 8192, 3712),
          ("out_proj x", 8192, 4096))


def main():
    print(torch.cuda.get_device_name())
    for name, rows, cols in SHAPES:
        copies = max(2, -(-200_000_000 // (rows * cols * 2)))  # > 3x the 60 MB L2
        for data in ("randn", "relu2"):
            pool = [torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
            if data == "relu2":
                pool = [torch.relu(t).square() for t in pool]
            us = cuda_times(lambda t: quantize_fp8_rowwise(t), pool, reps=5, graph_replays=5)["ms"] * 1e3
            zeros = (pool[0] == 0).float().mean().item()
            print(f"{name:16s} {rows:6d} x {cols:5d} {data:6s} (zeros {zeros:4.0%}) | {us:7.1f} us "
                  f"{rows * cols * 3 / us / 1e6:5.2f} TB/s", flush=True)


if __name__ == "__main__":
    main()
