"""Time each large-tile grouped GEMM kind alone at Nemotron 3 Nano's expert shapes (E=128, top-6, H=2688, I=1856,
uniform random routing): the forward up (relu² fused) and down, their FP8 twins on pre-quantised rows, and the
backward's dX (plain and with the relu² derivative fused) and dW GEMMs. `bench grouped_gemm` times the forward
pair and `bench moe_experts` the whole layer; this splits them, so a tile change can be judged per kind.
    python scripts/bench_gemm_kinds.py [T ...]      # from the repository root, after building; default T=16384"""
import sys

import torch

from bench.bench_grouped_gemm import EXPERTS, HIDDEN, INTER, TOP_K, make_weights, routed_counts
from bench.harness import cuda_times
from nemotron_kernels import _ext
from nemotron_kernels.ops.grouped_gemm import quantize_fp8_rowwise


def kinds(rows, up, down, offsets, fp8):
    """name -> call of that kind on one input set. Every GEMM here is 2 * M * H * I FLOPs."""
    x, h, dy = rows["x"], rows["h"], rows["dy"]
    C = _ext._C
    return {
        "up nt+relu2    [M,H]x[E,I,H]^T": lambda: C.grouped_gemm_nt(x, up, offsets, True),
        "down nt        [M,I]x[E,H,I]^T": lambda: C.grouped_gemm_nt(h, down, offsets, False),
        "dh nn+drelu2   [M,H]x[E,H,I]  ": lambda: C.grouped_gemm_nn(dy, down, offsets, h),
        "dx nn          [M,I]x[E,I,H]  ": lambda: C.grouped_gemm_nn(h, up, offsets, None),
        "dW_down tn     [M,H]^Tx[M,I]  ": lambda: C.grouped_gemm_tn(dy, h, offsets),
        "dW_up tn       [M,I]^Tx[M,H]  ": lambda: C.grouped_gemm_tn(h, x, offsets),
        "fp8 up nt+relu2               ": lambda: C.grouped_gemm_fp8_nt(*fp8["x"], *fp8["up"], offsets, True),
        "fp8 down nt                   ": lambda: C.grouped_gemm_fp8_nt(*fp8["h"], *fp8["down"], offsets, False),
        # The same FLOPs as one dense cuBLAS GEMM (expert 0's weights for every row): a ceiling without groups.
        "dense up  torch.mm (cuBLAS)   ": lambda: torch.mm(x, up[0].T),
        "dense down torch.mm (cuBLAS)  ": lambda: torch.mm(h, down[0].T),
    }


def main():
    tokens = [int(t) for t in sys.argv[1:]] or [16384]
    print(torch.cuda.get_device_name())
    up, down = make_weights("cuda")
    fp8_w = {}
    for name, w in (("up", up), ("down", down)):          # [E, N, K] -> e4m3 [E, N, K], scale [E, N]
        w_q, w_scale = quantize_fp8_rowwise(w.view(-1, w.shape[2]))
        fp8_w[name] = (w_q.view(w.shape), w_scale.view(w.shape[:2]))
    for ntokens in tokens:
        counts = routed_counts(ntokens, EXPERTS, torch.Generator().manual_seed(ntokens))
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(device="cuda", dtype=torch.int32)
        m = ntokens * TOP_K
        flops = 2.0 * m * HIDDEN * INTER
        # Two input sets, so consecutive calls do not find their rows in L2.
        pool = []
        for _ in range(2):
            rows = dict(x=torch.randn(m, HIDDEN, device="cuda", dtype=torch.bfloat16),
                        h=torch.relu(torch.randn(m, INTER, device="cuda", dtype=torch.bfloat16)).square(),
                        dy=torch.randn(m, HIDDEN, device="cuda", dtype=torch.bfloat16))
            fp8 = dict(x=quantize_fp8_rowwise(rows["x"]), h=quantize_fp8_rowwise(rows["h"]), **fp8_w)
            pool.append(kinds(rows, up, down, offsets, fp8))
        print(f"T={ntokens} (M={m}, rows per expert {counts.min().item()}..{counts.max().item()})")
        for name in pool[0]:
            ms = cuda_times(lambda fns: fns[name](), pool, reps=10, graph_replays=10)["ms"]
            print(f"  {name} {ms * 1e3:8.1f} us  {flops / ms / 1e9:6.1f} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
