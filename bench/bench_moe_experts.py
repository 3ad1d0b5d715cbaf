"""moe_experts (routed experts + shared expert, from the router's output) at Nemotron 3 Nano's shape: E=128, top-6,
H=2688, I=1856, shared width 3712, bf16; forward for every T, forward+backward for T in {1024, 16384}.

ours:      permute kernel -> CUTLASS grouped GEMMs (relu^2 fused) -> weighted gather (+ shared expert, same kernels);
           also with the router's permutation given (moe_router(with_permutation=True)): the rows are only copied;
           the FP8 variant (moe_experts_fp8: e4m3 weights per channel, tokens and h quantised per row, forward only)
baselines: the same layer in torch ops: argsort permutation, torch._grouped_mm up -> relu^2 -> _grouped_mm down,
           index_add combine, shared expert by torch matmuls (its backward by torch autograd);
           the reference (a Python loop over the experts, fp32 compute)."""
import torch

from nemotron_kernels.ops.moe_experts import moe_experts, moe_experts_fp8, quantize_experts_fp8
from nemotron_kernels.reference.moe_experts import moe_experts_ref
from nemotron_kernels.reference.moe_permute import expert_permutation_ref

from .bench_grouped_gemm import make_weights
from .harness import Bench, Variant

HIDDEN, INTER, SHARED, EXPERTS, TOP_K = 2688, 1856, 3712, 128, 6
TOKENS = (1, 2, 8, 64, 1024, 16384, 65536)
TRAIN_TOKENS = (1024, 16384)


def torch_layer(x, topk_idx, topk_weight, up, down, shared_up, shared_down):
    """The MoE layer in plain torch ops (differentiable)."""
    ntokens, top_k = topk_idx.shape
    flat = topk_idx.view(-1).long()
    order = torch.argsort(flat, stable=True)                                          # [T*k]
    token = order // top_k
    ends = torch.cumsum(torch.bincount(flat, minlength=up.shape[0]), 0).to(torch.int32)
    h = torch.relu(torch._grouped_mm(x[token], up.transpose(1, 2), offs=ends)).square()
    y = torch._grouped_mm(h, down.transpose(1, 2), offs=ends)                         # [T*k, H]
    routed = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    routed = routed.index_add(0, token, y.float() * topk_weight.reshape(-1)[order, None].float())
    return routed.to(x.dtype) + torch.relu(x @ shared_up.T).square() @ shared_down.T


def _input_maker(ntokens, weights, device, requires_grad=False):
    def make(i: int) -> dict:
        gen = torch.Generator().manual_seed(7000 * ntokens + i)
        topk_idx = torch.rand(ntokens, weights["up"].shape[0], generator=gen).topk(TOP_K, dim=1).indices
        topk_weight = torch.rand(ntokens, TOP_K, generator=gen)
        topk_weight = topk_weight / topk_weight.sum(1, keepdim=True) * 2.5
        x = torch.randn(ntokens, HIDDEN, generator=gen).to(device=device, dtype=torch.bfloat16)
        s = dict(x=x.requires_grad_(requires_grad), topk_idx=topk_idx.to(device=device, dtype=torch.int32),
                 topk_weight=topk_weight.to(device).requires_grad_(requires_grad), **weights)
        if ntokens > 64:   # what moe_router(with_permutation=True) hands the layer past the logits GEMV's tokens
            s["permutation"] = expert_permutation_ref(s["topk_idx"], weights["up"].shape[0])
        if requires_grad:
            s["dout"] = torch.randn(ntokens, HIDDEN, generator=gen).to(device=device, dtype=torch.bfloat16)
        return s
    return make


ARGS = ("x", "topk_idx", "topk_weight", "up", "down", "shared_up", "shared_down")
GRAD_ARGS = ("x", "topk_weight", "up", "down", "shared_up", "shared_down")


def _call(fn):
    return lambda s: fn(*(s[n] for n in ARGS))


def _with_permutation(s):
    return moe_experts(*(s[n] for n in ARGS), permutation=s["permutation"])


def _train_step(call):
    def step(s):
        out = call(s)
        return torch.autograd.grad(out, [s[n] for n in GRAD_ARGS], s["dout"])
    return step


def run(bench: Bench) -> None:
    on_gpu = bench.device.type == "cuda"
    up, down = make_weights(bench.device, EXPERTS if on_gpu else 8)
    shared_up = (torch.randn(SHARED, HIDDEN, device=bench.device) * HIDDEN ** -0.5).to(torch.bfloat16)
    shared_down = (torch.randn(HIDDEN, SHARED, device=bench.device) * SHARED ** -0.5).to(torch.bfloat16)
    weights = dict(up=up, down=down, shared_up=shared_up, shared_down=shared_down)
    fp8_weights = quantize_experts_fp8(up, down, shared_up, shared_down)

    def fp8_layer(s):
        return moe_experts_fp8(s["x"], s["topk_idx"], s["topk_weight"], **fp8_weights)
    for ntokens in bench.pick(TOKENS, quick=(1, 2, 64, 16384)):
        if not on_gpu and ntokens > 8:
            continue
        pool = bench.input_pool(_input_maker(ntokens, weights, bench.device), min_sets=4)
        s = pool[0]
        if on_gpu:
            got, want = _call(moe_experts)(s).float(), _call(torch_layer)(s).float()
            rel = ((got - want).norm() / want.norm().clamp_min(1e-30)).item()
            assert rel < 2e-2, f"ours != torch layer (relative error {rel:.3e}): not timing it"
        m_rows = ntokens * TOP_K
        touched = int(torch.unique(s["topk_idx"]).numel())
        flops = 2.0 * m_rows * HIDDEN * INTER * 2 + 2.0 * ntokens * HIDDEN * SHARED * 2
        weight_bytes = (touched * 2 * INTER + 2 * SHARED) * HIDDEN * 2
        variants = [Variant("ours: moe_experts", _call(moe_experts), flops=flops, bytes=weight_bytes),
                    Variant("ours fp8: moe_experts_fp8", fp8_layer, flops=flops, flop_ceiling="fp8",
                            bytes=weight_bytes // 2)]
        if ntokens > 64:        # the router's permutation given: the rows are copied, not ranked again
            variants.insert(1, Variant("ours: moe_experts, the router's permutation", _with_permutation,
                                       flops=flops, bytes=weight_bytes))
        if on_gpu:
            variants.append(Variant("torch: argsort + _grouped_mm layer", _call(torch_layer), flops=flops,
                                    bytes=weight_bytes, baseline=True))
        if ntokens <= 1024:
            variants.append(Variant("reference (expert loop, fp32)", _call(moe_experts_ref), flops=flops,
                                    bytes=weight_bytes, baseline=not on_gpu))
        bench.measure(f"fwd T={ntokens}", pool, variants, T=ntokens, E=up.shape[0], k=TOP_K,
                      experts_touched=touched)

    for ntokens in bench.pick(TRAIN_TOKENS, quick=(16384,)):
        if not on_gpu and ntokens > 8:
            continue
        grad_weights = {k: v.detach().clone().requires_grad_() for k, v in weights.items()}
        pool = bench.input_pool(_input_maker(ntokens, grad_weights, bench.device, requires_grad=True), min_sets=2)
        flops = 3 * (2.0 * ntokens * TOP_K * HIDDEN * INTER * 2 + 2.0 * ntokens * HIDDEN * SHARED * 2)
        variants = [Variant("ours: moe_experts fwd+bwd", _train_step(_call(moe_experts)), flops=flops),
                    Variant("ours: the same, the router's permutation", _train_step(_with_permutation), flops=flops)]
        if on_gpu:
            variants.append(Variant("torch: _grouped_mm layer fwd+bwd", _train_step(_call(torch_layer)), flops=flops,
                                    baseline=True))
        bench.measure(f"fwd+bwd T={ntokens}", pool, variants, T=ntokens, E=up.shape[0], k=TOP_K)
