"""moe_router at Nemotron 3 Nano's shape (E=128, Hd=2688, k=6, scale 2.5; bf16 x, fp32 gate weight).

ours:      (a) the fused kernel alone, from fp32 logits;  (b) the whole router: fp32 GEMM (torch) + fused kernel;
           on CUDA also (a') the fused kernel and the expert-sorted permutation in two launches (moe_router_permute)
           against (a'') the fused kernel then moe_permute (whose ranking launches write the same permutation,
           plus its row copy: rows of 8 bytes here, so the copy is small).
baselines: (c) the reference on the GPU incl. its fp32 GEMM;  (d) the reference from logits (no GEMM);
           (e) HF-style torch ops incl. the GEMM (fp32 torch.sigmoid + torch.topk: what a plain model runs;
               faster than the reference, which sorts stably and evaluates the sigmoid in fp64)."""
import torch

from nemotron_kernels.ops.moe_permute import moe_permute_op
from nemotron_kernels.ops.moe_router import moe_router, moe_router_fused, moe_router_logits, moe_router_permute
from nemotron_kernels.reference.moe_router import moe_router_from_logits_ref, moe_router_ref

from .harness import Bench, Variant

HIDDEN, EXPERTS, TOP_K, SCALE = 2688, 128, 6, 2.5
TOKENS = (1, 8, 64, 1024, 16384, 65536)         # issue #4's T list


def _hf_style_router(x, weight, bias):
    logits = torch.nn.functional.linear(x.float(), weight.float())             # [T, E]
    scores = logits.sigmoid()
    topk_idx = (scores + bias).topk(TOP_K, dim=-1).indices                     # [T, k]
    topk_weight = scores.gather(1, topk_idx)
    topk_weight = topk_weight / (topk_weight.sum(-1, keepdim=True) + 1e-20) * SCALE
    counts = torch.zeros(EXPERTS, dtype=torch.int32, device=x.device)
    counts.index_add_(0, topk_idx.flatten(), torch.ones(topk_idx.numel(), dtype=torch.int32, device=x.device))
    return topk_idx, topk_weight, counts


def _input_maker(ntokens: int, device: torch.device):
    def make(_: int) -> dict:
        x = torch.randn(ntokens, HIDDEN, device=device).to(torch.bfloat16)     # [T, Hd]
        weight = torch.randn(EXPERTS, HIDDEN, device=device) / HIDDEN ** 0.5   # [E, Hd] fp32
        bias = 0.05 * torch.randn(EXPERTS, device=device)                      # [E] fp32
        tiny_rows = torch.zeros(ntokens, 4, device=device, dtype=torch.bfloat16)  # [T, 4]: moe_permute's ranking
        return dict(x=x, weight=weight, bias=bias, logits=moe_router_logits(x, weight), tiny_rows=tiny_rows)
    return make


def run(bench: Bench) -> None:
    for ntokens in bench.pick(TOKENS, quick=(1, 64, 16384)):
        pool = bench.input_pool(_input_maker(ntokens, bench.device))
        first = pool[0]
        # The logits GEMMs round differently (GEMV, bf16 x 3 split, SGEMM), so at T=16384 a near-tie can flip one
        # pick: check the logits to fp32 rounding, then the selection bit for bit from the same logits.
        ours_logits = moe_router_logits(first["x"], first["weight"])
        ref_logits = first["x"].double() @ first["weight"].double().t()
        torch.testing.assert_close(ours_logits.double(), ref_logits, rtol=1e-5, atol=1e-5)
        ours = moe_router_fused(ours_logits, first["bias"], TOP_K, SCALE, 1, 1)
        ref = moe_router_from_logits_ref(ours_logits, first["bias"], TOP_K, SCALE)
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[2], ref[2]), "ours != reference: not timing it"
        permuted = []
        if bench.device.type == "cuda":
            routed = moe_router_permute(ours_logits, first["bias"], TOP_K, SCALE, 1, 1)
            _, roa, offsets = moe_permute_op(first["tiny_rows"], ours[0], EXPERTS, 1)
            assert all(torch.equal(a, b) for a, b in zip(routed[:3], ours)) and torch.equal(routed[3], roa) \
                and torch.equal(routed[4], offsets), "moe_router_permute != moe_router_fused + moe_permute"
            permuted = [
                Variant("ours: fused + permutation from logits (2 launches)",
                        lambda s: moe_router_permute(s["logits"], s["bias"], TOP_K, SCALE, 1, 1)),
                Variant("ours: fused, then moe_permute (tiny rows)",
                        lambda s: moe_permute_op(s["tiny_rows"], moe_router_fused(s["logits"], s["bias"], TOP_K,
                                                                                  SCALE, 1, 1)[0], EXPERTS, 1)),
            ]

        out_bytes = ntokens * TOP_K * 8 + EXPERTS * 4                             # idx + weight + counts
        fused_bytes = ntokens * EXPERTS * 4 + EXPERTS * 4 + out_bytes             # logits + bias in
        router_bytes = ntokens * HIDDEN * 2 + EXPERTS * HIDDEN * 4 + EXPERTS * 4 + out_bytes
        gemm_flops = 2.0 * ntokens * EXPERTS * HIDDEN
        bench.measure(f"T={ntokens}", pool, [
            Variant("ours: fused from logits",
                    lambda s: moe_router_fused(s["logits"], s["bias"], TOP_K, SCALE, 1, 1), bytes=fused_bytes),
            Variant("ours: router (GEMM + fused)",
                    lambda s: moe_router(s["x"], s["weight"], s["bias"], TOP_K, SCALE),
                    flops=gemm_flops, bytes=router_bytes),
            Variant("torch: reference router", lambda s: moe_router_ref(s["x"], s["weight"], s["bias"], TOP_K, SCALE),
                    flops=gemm_flops, bytes=router_bytes, baseline=True),
            Variant("torch: reference from logits",
                    lambda s: moe_router_from_logits_ref(s["logits"], s["bias"], TOP_K, SCALE),
                    bytes=fused_bytes, baseline=True),
            Variant("torch: HF-style router", lambda s: _hf_style_router(s["x"], s["weight"], s["bias"]),
                    flops=gemm_flops, bytes=router_bytes, baseline=True),
            *permuted,
        ], T=ntokens, E=EXPERTS, Hd=HIDDEN, k=TOP_K)
