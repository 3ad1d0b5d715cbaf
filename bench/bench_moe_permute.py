"""moe_permute / moe_unpermute at Nemotron 3 Nano's shape: E=128, top-6, H=2688, bf16, T from decode to prefill.

In the prefill profile (bench/NOTES.md, session 16) the permute's gather and the unpermute took 2.9 and 6.6 ms per
8K-token step (127 and 288 µs per MoE layer), far above what their bytes need; this times them alone.
ours:      moe_permute (routing + row gather kernels); moe_unpermute (the weighted gather back, fp32 sums in slot
           order); the same with the shared expert's output added (`+ add`: the MoE layer's call); the forward +
           backward of the unpermute (its backward kernel: d_rows and d_weight)
baselines: torch ops: a stable argsort of the experts and an index gather; index_add of the weighted rows in fp32
           (+ add); torch autograd of that for the backward."""
import torch

from nemotron_kernels.ops.moe_permute import moe_permute, moe_unpermute, moe_unpermute_op
from nemotron_kernels.reference.moe_permute import moe_unpermute_ref

from .harness import Bench, Variant

HIDDEN, EXPERTS, TOP_K = 2688, 128, 6
TOKENS = (1, 64, 1024, 8192, 16384, 65536)
TRAIN_TOKENS = (16384,)


def torch_permute(x, topk_idx):
    """Rows sorted by expert, stably (the same layout as moe_permute without padding)."""
    order = torch.argsort(topk_idx.reshape(-1).long(), stable=True)                  # [T*k] assignment of each row
    return x[order // topk_idx.shape[1]]                                              # [T*k, H]


def torch_unpermute(rows, row_of_assignment, topk_weight, add=None):
    """out[t] = sum_j w[t, j] rows[roa[t, j]] in fp32 (+ add), in x's dtype (differentiable)."""
    ntokens, top_k = row_of_assignment.shape
    token = torch.arange(ntokens, device=rows.device).repeat_interleave(top_k)        # [T*k]
    picked = rows[row_of_assignment.reshape(-1).long()].float() * topk_weight.reshape(-1, 1)
    out = torch.zeros(ntokens, rows.shape[1], dtype=torch.float32, device=rows.device).index_add(0, token, picked)
    out = out.to(rows.dtype)
    return out if add is None else out + add


def _input_maker(ntokens, device, requires_grad=False):
    def make(i: int) -> dict:
        gen = torch.Generator().manual_seed(9000 * ntokens + i)
        topk_idx = torch.rand(ntokens, EXPERTS, generator=gen).topk(TOP_K, dim=1).indices.int()   # [T, k]
        weight = torch.rand(ntokens, TOP_K, generator=gen)                                        # [T, k]
        x = torch.randn(ntokens, HIDDEN, generator=gen).to(torch.bfloat16)
        s = dict(x=x.to(device), topk_idx=topk_idx.to(device), weight=weight.to(device))
        rows, roa, _ = moe_permute(s["x"], s["topk_idx"], EXPERTS)                              # [T*k, H], [T, k]
        s["rows"] = torch.randn(rows.shape, generator=gen).to(torch.bfloat16).to(device)        # the down GEMM's y
        s["roa"], s["add"] = roa, torch.randn(ntokens, HIDDEN, generator=gen).to(torch.bfloat16).to(device)
        if requires_grad:
            s["rows"].requires_grad_()
            s["weight"].requires_grad_()
            s["dout"] = torch.randn(ntokens, HIDDEN, generator=gen).to(torch.bfloat16).to(device)
        return s
    return make


def _train_step(fn):
    def step(s):
        out = fn(s["rows"], s["roa"], s["weight"])
        return torch.autograd.grad(out, [s["rows"], s["weight"]], s["dout"])
    return step


def _check(s, on_gpu: bool) -> None:
    """Ours against the torch ops on one input set before any timing: rows bit for bit, the sums within bf16."""
    rows, roa, _ = moe_permute(s["x"], s["topk_idx"], EXPERTS)
    assert torch.equal(rows, torch_permute(s["x"], s["topk_idx"])), "moe_permute != torch: not timing it"
    want = moe_unpermute_ref(s["rows"].double(), roa, s["weight"].double())
    for got in [moe_unpermute(s["rows"], roa, s["weight"])] + (
            [moe_unpermute_op(s["rows"], roa, s["weight"], s["add"]) - s["add"]] if on_gpu else []):
        err = ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
        assert err < 2 ** -6, f"moe_unpermute off by {err:.2e} of the largest output: not timing it"


def run(bench: Bench) -> None:
    on_gpu = bench.device.type == "cuda"
    for ntokens in bench.pick(TOKENS, quick=(64, 8192)):
        if not on_gpu and ntokens > 64:
            continue
        pool = bench.input_pool(_input_maker(ntokens, bench.device), min_sets=2)
        _check(pool[0], on_gpu)
        m_bytes = ntokens * TOP_K * HIDDEN * 2                                       # the rows, bf16
        t_bytes = ntokens * HIDDEN * 2                                               # one [T, H] bf16 tensor
        bench.measure(f"permute T={ntokens}", pool, [
            Variant("ours: moe_permute", lambda s: moe_permute(s["x"], s["topk_idx"], EXPERTS),
                    bytes=t_bytes + m_bytes),
            Variant("torch: argsort + gather", lambda s: torch_permute(s["x"], s["topk_idx"]),
                    bytes=t_bytes + m_bytes, baseline=True),
        ], T=ntokens, E=EXPERTS, k=TOP_K)
        variants = [
            Variant("ours: moe_unpermute", lambda s: moe_unpermute(s["rows"], s["roa"], s["weight"]),
                    bytes=m_bytes + t_bytes),
            Variant("torch: index_add", lambda s: torch_unpermute(s["rows"], s["roa"], s["weight"]),
                    bytes=m_bytes + t_bytes, baseline=True),
        ]
        if on_gpu:
            variants += [
                Variant("ours: moe_unpermute + add", lambda s: moe_unpermute_op(s["rows"], s["roa"], s["weight"],
                                                                                s["add"]), bytes=m_bytes + 2 * t_bytes),
                Variant("torch: index_add + add", lambda s: torch_unpermute(s["rows"], s["roa"], s["weight"], s["add"]),
                        bytes=m_bytes + 2 * t_bytes, baseline=True)]
        bench.measure(f"unpermute T={ntokens}", pool, variants, T=ntokens, E=EXPERTS, k=TOP_K)

    for ntokens in bench.pick(TRAIN_TOKENS, quick=TRAIN_TOKENS):
        if not on_gpu:
            continue
        pool = bench.input_pool(_input_maker(ntokens, bench.device, requires_grad=True), min_sets=2)
        m_bytes, t_bytes = ntokens * TOP_K * HIDDEN * 2, ntokens * HIDDEN * 2
        bench.measure(f"unpermute fwd+bwd T={ntokens}", pool, [
            Variant("ours: moe_unpermute fwd+bwd", _train_step(moe_unpermute), bytes=3 * m_bytes + 2 * t_bytes),
            Variant("torch: index_add fwd+bwd", _train_step(torch_unpermute), bytes=3 * m_bytes + 2 * t_bytes,
                    baseline=True),
        ], T=ntokens, E=EXPERTS, k=TOP_K)
