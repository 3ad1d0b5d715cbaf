"""Time each large-tile grouped GEMM kind alone at Nemotron 3 Nano's expert shapes (E=128, top-6, H=2688, I=1856,
uniform random routing): the forward up (relu² fused) and down, their FP8 twins on pre-quantised rows, and the
backward's GEMMs: dh (plain nn, then the relu² gradient pass, as the MoE backward runs it), dx and dW.
`bench grouped_gemm` times the forward pair and `bench moe_experts` the whole layer; this splits them, so a tile
change can be judged per kind.
--layouts times the forward kinds at T=16384 on three row layouts of the same FLOPs: the routed one (each expert's
last 128-row tile part empty, a group switch on nearly every tile), 768 rows per expert (switches, no padding) and
one group of all rows (neither), beside dense cuBLAS BF16 and FP8 (torch._scaled_mm, row-wise scales): where the
grouped kernels lose their time.
    python scripts/bench_gemm_kinds.py [T ...]      # from the repository root, after building; default T=16384
    python scripts/bench_gemm_kinds.py --layouts"""
import sys

import torch

from bench.bench_grouped_gemm import EXPERTS, HIDDEN, INTER, TOP_K, make_weights, routed_counts
from bench.harness import cuda_times
from nemotron_kernels import _ext
from nemotron_kernels.ops.grouped_gemm import quantize_fp8_rowwise, relu2_grad
from nemotron_kernels.ops.moe_experts import quantize_experts_fp8


def kinds(rows, up, down, offsets, fp8):
    """name -> call of that kind on one input set. Every GEMM here is 2 * M * H * I FLOPs."""
    x, h, dy = rows["x"], rows["h"], rows["dy"]
    C = _ext._C
    return {
        "up nt+relu2    [M,H]x[E,I,H]^T": lambda: C.grouped_gemm_nt(x, up, offsets, True),
        "down nt        [M,I]x[E,H,I]^T": lambda: C.grouped_gemm_nt(h, down, offsets, False),
        "dh nn          [M,H]x[E,H,I]  ": lambda: C.grouped_gemm_nn(dy, down, offsets),
        "dh nn+relu2_grad (Triton pass)": lambda: relu2_grad(C.grouped_gemm_nn(dy, down, offsets), h),
        "dx nn          [M,I]x[E,I,H]  ": lambda: C.grouped_gemm_nn(h, up, offsets),
        "dW_down tn     [M,H]^Tx[M,I]  ": lambda: C.grouped_gemm_tn(dy, h, offsets),
        "dW_up tn       [M,I]^Tx[M,H]  ": lambda: C.grouped_gemm_tn(h, x, offsets),
        "fp8 up nt+relu2               ": lambda: C.grouped_gemm_fp8_nt(*fp8["x"], *fp8["up"], offsets, True),
        "fp8 down nt                   ": lambda: C.grouped_gemm_fp8_nt(*fp8["h"], *fp8["down"], offsets, False),
        # The same FLOPs as one dense cuBLAS GEMM (expert 0's weights for every row): a ceiling without groups.
        "dense up       torch.mm        ": lambda: torch.mm(x, up[0].T),
        "dense down     torch.mm        ": lambda: torch.mm(h, down[0].T),
        "dense fp8 up   torch._scaled_mm": lambda: dense_fp8(fp8["x"], fp8["up"]),
        "dense fp8 down torch._scaled_mm": lambda: dense_fp8(fp8["h"], fp8["down"]),
    }


def dense_fp8(a, b):
    """(a_q [M, K], a_scale [M]) @ expert 0 of (b_q [E, N, K], b_scale [E, N]) by cuBLASLt, row-wise scales."""
    (a_q, a_scale), (b_q, b_scale) = a, b
    return torch._scaled_mm(a_q, b_q[0].T, a_scale[:, None], b_scale[0][None, :], out_dtype=torch.bfloat16)


def offsets_of(counts):
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(device="cuda", dtype=torch.int32)


def time_kinds(label, m, rows_pool, up, down, offsets, fp8_w, names=None):
    """Times the kinds (all, or those whose name starts with one of `names`) on two input sets of m rows."""
    flops = 2.0 * m * HIDDEN * INTER
    pool = []
    for rows in rows_pool:
        fp8 = dict(x=quantize_fp8_rowwise(rows["x"]), h=quantize_fp8_rowwise(rows["h"]), **fp8_w)
        pool.append(kinds(rows, up, down, offsets, fp8))
    print(label)
    for name in pool[0]:
        if names and not name.startswith(names):
            continue
        ms = cuda_times(lambda fns: fns[name](), pool, reps=10, graph_replays=10)["ms"]
        print(f"  {name} {ms * 1e3:8.1f} us  {flops / ms / 1e9:6.1f} TFLOP/s", flush=True)


def main():
    layouts = "--layouts" in sys.argv[1:]
    tokens = [int(t) for t in sys.argv[1:] if t != "--layouts"] or [16384]
    print(torch.cuda.get_device_name())
    up, down = make_weights("cuda")
    q = quantize_experts_fp8(up, down)                     # e4m3 [E, N, K], scale [E, N]
    fp8_w = {name: (q[f"{name}_q"], q[f"{name}_scale"]) for name in ("up", "down")}
    for ntokens in tokens[:1] if layouts else tokens:
        m = ntokens * TOP_K
        # Two input sets, so consecutive calls do not find their rows in L2.
        rows_pool = [dict(x=torch.randn(m, HIDDEN, device="cuda", dtype=torch.bfloat16),
                          h=torch.relu(torch.randn(m, INTER, device="cuda", dtype=torch.bfloat16)).square(),
                          dy=torch.randn(m, HIDDEN, device="cuda", dtype=torch.bfloat16)) for _ in range(2)]
        counts = routed_counts(ntokens, EXPERTS, torch.Generator().manual_seed(ntokens))
        label = f"T={ntokens} (M={m}, rows per expert {counts.min().item()}..{counts.max().item()})"
        if not layouts:
            time_kinds(label, m, rows_pool, up, down, offsets_of(counts), fp8_w)
            continue
        forward = ("up", "down", "fp8 up", "fp8 down", "dense")
        time_kinds(label + ", routed", m, rows_pool, up, down, offsets_of(counts), fp8_w, forward)
        if m % EXPERTS == 0:
            even = torch.full((EXPERTS,), m // EXPERTS, dtype=torch.int64)
            time_kinds(f"{m // EXPERTS} rows per expert", m, rows_pool, up, down, offsets_of(even), fp8_w,
                       forward[:4])
        one = {k: (w[0][:1], w[1][:1]) for k, w in fp8_w.items()}
        time_kinds("one group of all rows", m, rows_pool, up[:1], down[:1], offsets_of(torch.tensor([m])), one,
                   forward[:4])


if __name__ == "__main__":
    main()
