"""Sweep the grouped GEMV's K split (csrc/moe/moe_gemv_kernel.cu, gemv_split) on the decode shapes (H200).
    PYTHONPATH=. python scripts/sweep_gemv_split.py     # from the repository root, after building the extension
Serving's decode at batch 1 spent 0.56 ms on the shared expert at 1.6 TB/s (bench/NOTES.md, session 9): one group
gives the GEMV 84-116 CTAs on 132 SMs. Per shape this times each forced split (1, 2, 4, 8) and the automatic
choice (gemv_split_for), BF16, FP8 and weights-only FP8 (w8), as CUDA-graph replays over enough weight copies to
pass the 60 MB L2; it prints µs per call and the weights' streaming rate (the H200's copy rate is about 4.2 TB/s).
The MoE decode GEMV (moe_decode_gemv, routed + shared in one launch) comes first, at T = 1 and 2, then one token's
down projection and weighted sum (moe_decode_down) at 1, 2, 4, 8 output channels per CTA (auto: the default, 4)."""
import torch

from bench.harness import cuda_times
from nemotron_kernels import _ext
from nemotron_kernels.ops.grouped_gemm import quantize_fp8_rowwise

E, TOP_K = 128, 6
# name, groups, rows per touched group (list), N, K, relu2
SHAPES = (
    ("shared up T=1", 1, [1], 3712, 2688, True),
    ("shared down T=1", 1, [1], 2688, 3712, False),
    ("routed up T=1", E, [1] * TOP_K, 1856, 2688, True),
    ("routed down T=1", E, [1] * TOP_K, 2688, 1856, False),
    ("routed up T=8", E, None, 1856, 2688, True),
    ("routed down T=8", E, None, 2688, 1856, False),
    ("mamba in_proj M=1", 1, [1], 10304, 2688, False),
    ("mamba out_proj M=1", 1, [1], 2688, 4096, False),
)


def offsets_for(groups, rows, gen):
    """Expert offsets [groups + 1] with `rows` on random distinct groups (rows None: a top-6 routing of 8 tokens)."""
    counts = torch.zeros(groups, dtype=torch.int64)
    if rows is None:
        for _ in range(8):
            counts[torch.randperm(groups, generator=gen)[:TOP_K]] += 1
    else:
        counts[torch.randperm(groups, generator=gen)[:len(rows)]] = torch.tensor(rows)
    return torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]).int().cuda(), int(counts.sum())


def split_line(name, kind, call, copies, weight_bytes):
    """Prints one row: call(i, split) (weight copy i) at each forced split (or channels per CTA: any knob of 1, 2,
    4, 8) and the auto one (0), checked against split 1 (every output of the call), in µs and the weights'
    streaming rate."""
    want = [t.float() for t in _outputs(call(0, 1)) if t.numel()]
    line = []
    for split in (1, 2, 4, 8, 0):
        for got, ref in zip([t for t in _outputs(call(0, split)) if t.numel()], want):
            assert torch.allclose(got.float(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item()), (name, split)
        us = cuda_times(lambda i: call(i, split), list(range(copies)), reps=5, graph_replays=5)["ms"] * 1e3
        line.append(f"{'auto' if split == 0 else split}: {us:6.1f} us {weight_bytes / us / 1e6:4.2f} TB/s")
    print(f"{name:20s} {kind:4s} | " + " | ".join(line), flush=True)


def _outputs(out):
    return out if isinstance(out, (tuple, list)) else (out,)


# The MoE decode GEMV (moe_decode_gemv: routed experts straight from topk_idx + the shared expert in one grid):
# name, tokens, up (a = x, relu2) or down (a = h, the shared K = 2 I)
DECODE_SHAPES = (("decode up T=1", 1, "up"), ("decode down T=1", 1, "down"),
                 ("decode up T=2", 2, "up"), ("decode down T=2", 2, "down"))
HIDDEN, INTER, SHARED = 2688, 1856, 3712


def _decode_weights(kind, copies, shapes):
    """`copies` sets of weights of `shapes` ([E, N, K] or [N, K]), bf16 with None scales, or w8: e4m3 with
    per-channel scales."""
    sets = []
    for _ in range(copies):
        one = []
        for shape in shapes:
            w = torch.randn(*shape, device="cuda", dtype=torch.bfloat16) / shape[-1] ** 0.5
            if kind == "w8":
                q, scale = quantize_fp8_rowwise(w.view(-1, shape[-1]))
                one += [q.view(shape), scale.view(shape[:-1])]
            else:
                one += [w, None]
        sets.append(one)
    return sets


def sweep_decode(gen):
    """moe_decode_gemv at each forced split and the automatic one, BF16 and weights-only FP8 (w8), over enough
    weight copies to pass the L2; the rate counts the touched experts' and the shared expert's weights."""
    for name, tokens, proj in DECODE_SHAPES:
        n, k, sn, sk = (INTER, HIDDEN, SHARED, HIDDEN) if proj == "up" else (HIDDEN, INTER, HIDDEN, SHARED)
        idx = torch.stack([torch.randperm(E, generator=gen)[:TOP_K] for _ in range(tokens)]).int().cuda()
        rows = tokens if proj == "up" else tokens * TOP_K
        a = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        sa = torch.randn(tokens, sk, device="cuda", dtype=torch.bfloat16)
        touched = int(torch.unique(idx).numel())
        for kind in ("bf16", "w8"):
            elem = 2 if kind == "bf16" else 1
            copies = min(max(2, -(-200_000_000 // ((touched * n * k + sn * sk) * elem))), 8)
            w = _decode_weights(kind, copies, [(E, n, k), (sn, sk)])
            call = lambda i, split: _ext._C.moe_decode_gemv(a, idx, w[i][0], w[i][1], sa, w[i][2], w[i][3],  # noqa
                                                            proj == "up", split)
            split_line(name, kind, call, copies, (touched * n * k + sn * sk) * elem)
            del w


def sweep_decode_down(gen):
    """moe_decode_down (one token, Nemotron-H's shape) at 1, 2, 4, 8 channels per CTA and the default: the grid
    is H / channels CTAs; the rate counts the 6 touched experts' and the shared expert's down weights."""
    idx = torch.randperm(E, generator=gen)[:TOP_K].int().cuda()[None]                        # [1, k]
    weight = torch.rand(1, TOP_K, device="cuda")                                            # [1, k] fp32
    h = torch.randn(TOP_K, INTER, device="cuda", dtype=torch.bfloat16)                      # [k, I]
    hs = torch.randn(1, SHARED, device="cuda", dtype=torch.bfloat16)                        # [1, Is]
    for kind in ("bf16", "w8"):
        elem = 2 if kind == "bf16" else 1
        touched = (TOP_K * HIDDEN * INTER + HIDDEN * SHARED) * elem
        copies = min(max(2, -(-200_000_000 // touched)), 8)
        w = _decode_weights(kind, copies, [(E, HIDDEN, INTER), (HIDDEN, SHARED)])
        call = lambda i, ch: _ext._C.moe_decode_down(h, idx, weight, w[i][0], w[i][1], hs, w[i][2], w[i][3], ch)  # noqa
        split_line("decode down+sum T=1", kind, call, copies, touched)
        del w


def main():
    gen = torch.Generator().manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name()}, {sms} SMs")
    sweep_decode(gen)
    sweep_decode_down(gen)
    for name, groups, rows, n, k, relu2 in SHAPES:
        offsets, m = offsets_for(groups, rows, gen)
        touched = int((offsets[1:] > offsets[:-1]).sum())
        for kind in ("bf16", "fp8", "w8"):                 # w8: bf16 x, e4m3 weights (grouped_gemm_w8)
            elem = 2 if kind == "bf16" else 1
            copies = min(max(2, -(-200_000_000 // (touched * n * k * elem))), 8)  # touched bytes > 3x the L2
            w = [torch.randn(groups, n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5 for _ in range(copies)]
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            if kind != "bf16":
                wq = [quantize_fp8_rowwise(t.view(-1, k)) for t in w]
                w = [(q.view(groups, n, k), s.view(groups, n)) for q, s in wq]
            if kind == "fp8":
                xq, xs = quantize_fp8_rowwise(x)
                call = lambda i, split: _ext._C.grouped_gemm_fp8_nt(xq, xs, w[i][0], w[i][1], offsets, relu2, 2,  # noqa
                                                                     split)
            elif kind == "w8":
                call = lambda i, split: _ext._C.grouped_gemm_w8_nt(x, w[i][0], w[i][1], offsets, relu2, split)  # noqa
            else:
                call = lambda i, split: _ext._C.grouped_gemm_nt(x, w[i], offsets, relu2, 2, split)  # noqa
            split_line(name, kind, call, copies, touched * n * k * elem)
            del w


if __name__ == "__main__":
    main()
