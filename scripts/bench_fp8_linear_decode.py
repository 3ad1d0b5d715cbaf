"""The selective-FP8 model's dense FP8 projections at decode sizes (H200): are they faster than BF16?
    python scripts/bench_fp8_linear_decode.py     # from the repository root, after building the extension
Serving's FP8 decode at batch 1 is slower than BF16 (4.08 vs 3.61 ms, bench/NOTES.md session 8) though it streams
fewer bytes. Per Mamba projection (in_proj 2688 -> 10304, out_proj 4096 -> 2688) and M rows this times:
  bf16 F.linear;  FP8Linear.forward (quantize_fp8_rowwise + torch._scaled_mm);  the quantisation alone;
  our grouped FP8 GEMM with one group (the MoE's GEMV for <= 16 rows, swapped tiles above) on the same e4m3 data.
CUDA-graph replays (bench.harness.cuda_times) over 4 weight copies (past L2); µs per call and the weight bytes'
rate."""
import torch
import torch.nn.functional as F

from bench.harness import cuda_times
from model.serve.fp8 import FP8Linear
from nemotron_kernels.ops.grouped_gemm import grouped_gemm_fp8, quantize_fp8_rowwise

SHAPES = (("in_proj", 10304, 2688), ("out_proj", 2688, 4096))


def graph_us(fn, n_sets):
    """µs per call of fn(i), i cycling over the n_sets weight copies (CUDA-graph replays)."""
    return cuda_times(fn, list(range(n_sets)), reps=3, graph_replays=5)["ms"] * 1e3


def main():
    dev = torch.device("cuda")
    for name, n, k in SHAPES:
        lin = [torch.nn.Linear(k, n, bias=False, device=dev, dtype=torch.bfloat16) for _ in range(4)]
        fp8 = [FP8Linear.from_linear(layer) for layer in lin]
        w_q = [f.weight[None] for f in fp8]                                       # [1, N, K] e4m3
        w_s = [f._scale_b.reshape(1, n) for f in fp8]                             # [1, N] fp32
        for m in (1, 8, 64, 256):
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            xq, xs = quantize_fp8_rowwise(x)
            offsets = torch.tensor([0, m], dtype=torch.int32, device=dev)
            want = fp8[0](x).float()
            got = grouped_gemm_fp8(xq, xs, w_q[0], w_s[0], offsets).float()
            err = ((got - want).abs().max() / want.abs().max()).item()
            rows = {
                "bf16 F.linear": graph_us(lambda i: F.linear(x, lin[i].weight), 4),
                "FP8Linear (quant + _scaled_mm)": graph_us(lambda i: fp8[i](x), 4),
                "  quantize_fp8_rowwise alone": graph_us(lambda i: quantize_fp8_rowwise(x), 4),
                "grouped FP8 GEMM, 1 group (ours)": graph_us(lambda i: grouped_gemm_fp8(xq, xs, w_q[i], w_s[i],
                                                                                         offsets), 4),
            }
            print(f"{name} M={m} (ours vs FP8Linear: max rel diff {err:.1e})")
            for what, us in rows.items():
                bytes_w = n * k * (2 if what.startswith("bf16") else 1)
                rate = "" if "alone" in what else f"  {bytes_w / us / 1e6:5.2f} TB/s of weights"
                print(f"   {us:8.1f} us  {what}{rate}", flush=True)


if __name__ == "__main__":
    main()
