"""The model on the GPU with its kernels, at Nemotron 3 Nano's widths (a few layers of them), under the error rule of
DESIGN.md (nemotron_kernels.testing): the float64 reference model on the same weights is the truth, and the same
model run in bf16 on the reference ops sets the error a bf16 computation may have.
- the Mamba-2 layer (in_proj -> conv -> SSD scan -> gated norm -> out_proj) with kernels equals the reference layer,
  forward and backward, batched and packed (the Gluon SSD paths at these shapes);
- the MoE layer (router -> permute -> grouped GEMMs -> weighted combine, + shared expert) likewise, 128 experts;
- prefill then decode through the HybridCache equals full recomputation (conv and SSM states handed from the scan
  kernels to the decode kernels, KV pages from prefill to paged decode)."""
import copy

import pytest
import torch

from model.cache import HybridCache
from model.config import NemotronHConfig
from model.nemotron_h import ForwardMeta, build_model
from nemotron_kernels import ops_for
from nemotron_kernels.testing import assert_error_rule

pytestmark = pytest.mark.cuda
REF = ops_for("reference")


def nano(pattern: str) -> NemotronHConfig:
    """Nemotron 3 Nano's widths (H 2688, Mamba 64 heads x 64, N 128, 8 groups, chunk 128; attention 32 / 2 heads of
    128), on a short layer pattern and 16 experts (top-6) so the float64 copy stays small."""
    return NemotronHConfig.from_preset("nemotron3-nano-30b-a3b", pattern=pattern, n_routed_experts=16)


def _meta(ops, lengths: list[int] | None) -> ForwardMeta:
    meta = ForwardMeta(ops=ops)
    if lengths is not None:
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        meta.cu_seqlens = torch.tensor(offsets, device="cuda", dtype=torch.int32)
        meta.offsets, meta.max_seqlen = offsets, max(lengths)
    return meta


def _output_and_grads(mod, ops, x, dy, meta, params: dict):
    """mod(x) under `ops` and the gradients of <y, dy> w.r.t. x and params {name: getter(mod)} (None: unused)."""
    x = x.detach().requires_grad_()
    y = mod(x, meta(ops))
    wrt = (x, *(get(mod) for get in params.values()))
    grads = torch.autograd.grad(y, wrt, dy.to(y.dtype), allow_unused=True)
    return y.detach(), dict(zip(("x", *params), grads))


@pytest.mark.parametrize("layout", ["batched", "packed"])
def test_cuda_mamba_layer_kernels_equal_the_reference_layer(layout):
    model = build_model(nano("M"), device="cuda", dtype=torch.bfloat16, backend="auto", seed=0)
    layer = model.layers[0].mixer
    layer64 = copy.deepcopy(layer).double()
    lengths = None if layout == "batched" else [700, 1, 300, 1047]          # uneven, one token, L < chunk
    shape = (2, 1024) if layout == "batched" else (1, 2048)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(*shape, layer.in_proj.in_features, device="cuda", generator=g).to(torch.bfloat16)
    dy = torch.randn(*shape, layer.out_proj.out_features, device="cuda", generator=g).to(torch.bfloat16)

    params = dict(in_proj=lambda m: m.in_proj.weight, conv=lambda m: m.conv1d.weight, A_log=lambda m: m.A_log,
                  D=lambda m: m.D, dt_bias=lambda m: m.dt_bias, norm=lambda m: m.norm.weight)

    def run(mod, ops, inp):
        return _output_and_grads(mod, ops, inp, dy, lambda o: _meta(o, lengths), params)

    y, grads = run(layer, model.ops, x)
    y_low, grads_low = run(layer, REF, x)
    y64, grads64 = run(layer64, REF, x.double())
    assert_error_rule(f"{layout} y", y, y64, y_low, k=2)
    for name in grads:
        assert_error_rule(f"{layout} d{name}", grads[name], grads64[name], grads_low[name], k=3)


def test_cuda_moe_layer_kernels_equal_the_reference_layer():
    """Nano's MoE layer (128 experts, top-6, sigmoid router with the correction bias, ×2.5, shared expert) on the
    kernels against the float64 reference layer: y at k = 2, the gradients of x, the experts, the shared expert and
    the router weight at k = 3. 384 tokens: the router's logits are exact fp32 below 2048 tokens, so no expert
    choice differs from the float64 reference's (a near-tie flip would show as a gross error)."""
    cfg = NemotronHConfig.from_preset("nemotron3-nano-30b-a3b", pattern="E")
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16, backend="auto", seed=0)
    layer = model.layers[0].mixer
    with torch.no_grad():                                 # a bias that changes choices, as load balancing makes
        layer.gate.e_score_correction_bias.normal_(0.0, 0.02)
    layer64 = copy.deepcopy(layer).double()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 192, cfg.hidden_size, device="cuda", generator=g).to(torch.bfloat16)
    dy = torch.randn(2, 192, cfg.hidden_size, device="cuda", generator=g).to(torch.bfloat16)
    params = dict(up=lambda m: m.experts.up_proj, down=lambda m: m.experts.down_proj,
                  shared_up=lambda m: m.shared_experts.up_proj.weight,
                  shared_down=lambda m: m.shared_experts.down_proj.weight, gate=lambda m: m.gate.weight)
    names = ("x", *params)

    def run(mod, ops, inp):
        return _output_and_grads(mod, ops, inp, dy, lambda o: ForwardMeta(ops=o), params)

    y, grads = run(layer, model.ops, x)
    y_low, grads_low = run(layer, REF, x)
    y64, grads64 = run(layer64, REF, x.double())
    assert_error_rule("moe y", y, y64, y_low, k=2)
    for name in names:
        if grads64[name] is None:
            assert grads[name] is None, f"d{name}: the kernels give a gradient the reference does not"
            continue
        assert grads[name] is not None, f"d{name}: no gradient through the kernels"
        # the fp32 router weight's gradient comes through d topk_weight = <dout, y>, y the bf16 rows the kernels
        # keep (the reference sums fp32 rows): its floor is a bf16 ulp, measured 0.18 against 0.75 (session 30)
        eps = torch.bfloat16 if name == "gate" else None
        assert_error_rule(f"moe d{name}", grads[name], grads64[name], grads_low[name], k=3, eps_dtype=eps)


@torch.no_grad()
def test_cuda_prefill_then_decode_matches_full_recompute():
    """Three prompts prefilled packed (uneven: past a chunk, under one, past several), then four decode steps fed the
    float64 model's greedy tokens: every step's logits (kernels, from the cache) are held to full recomputation by
    the float64 reference model, with the error of the bf16 reference model's full recomputation as the scale."""
    model = build_model(nano("M*EM"), device="cuda", dtype=torch.bfloat16, backend="auto", seed=0).eval()
    model64 = copy.deepcopy(model).double()
    model64.ops = REF
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, model.config.vocab_size, (n,), generator=g).cuda() for n in (300, 77, 513)]
    cu = torch.tensor([0, 300, 377, 890], device="cuda", dtype=torch.int32)
    cache = HybridCache.for_model(model, len(seqs), 1024, block_size=64)
    logits = model.prefill(torch.cat(seqs), cache, cu_seqlens=cu)                 # [S, V] fp32
    for step in range(5):
        full64 = torch.stack([model64(s[None])[0, -1] for s in seqs])            # [S, V]
        kernels, model.ops = model.ops, REF
        try:
            full_low = torch.stack([model(s[None])[0, -1] for s in seqs])
        finally:
            model.ops = kernels
        assert_error_rule(f"step {step} logits", logits, full64, full_low, k=2, eps_dtype=torch.bfloat16)
        if step == 4:
            break
        token = full64.argmax(-1)                                                 # [S]
        seqs = [torch.cat([s, t[None]]) for s, t in zip(seqs, token)]
        logits = model.decode_step(token, cache)
    assert cache.host_seq_lens == [304, 81, 517]
