"""Parity with transformers' NemotronHForCausalLM (CPU, float32): its checkpoints load into our model and ours into
it with equal logits, and greedy generation gives identical tokens."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from model.checkpoint import load_model, save_checkpoint  # noqa: E402
from model.generate import generate  # noqa: E402

# logits of a float32 forward through ~8 layers: both sides accumulate float32 rounding differently
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A tiny random transformers model with every block type (M, *, E, -), grouped Mamba heads (n_groups=2),
    GQA, 6 experts in 2 routing groups with top-2, and a small SSD chunk; saved with save_pretrained."""
    config = transformers.NemotronHConfig(
        vocab_size=256, hidden_size=64, hybrid_override_pattern="M*E-ME*M", num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, mamba_num_heads=8, mamba_head_dim=8, ssm_state_size=16, n_groups=2,
        chunk_size=8, n_routed_experts=6, num_experts_per_tok=2, n_group=2, topk_group=1, moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=48, intermediate_size=40, routed_scaling_factor=2.5, eos_token_id=None,
        # transformers' torch fallback clamps dt = softplus(dt + dt_bias) from below at time_step_min (its CUDA
        # path and the spec use time_step_limit = (0, inf), i.e. no clamp). A tiny time_step_min keeps that clamp
        # inactive so both implementations compute the spec's math; time_step_floor keeps the init dt >= 1e-3.
        time_step_min=1e-7, time_step_floor=1e-3)
    torch.manual_seed(0)
    model = transformers.NemotronHForCausalLM(config).eval()
    # scales that make every part of the model matter (the default init leaves routers near-tied, norms at 1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(2 * torch.rand(p.shape, generator=g))
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn(p.shape, generator=g) - 3)
            elif name.endswith(("norm.weight", "norm_f.weight", ".D")):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g))
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 256, (2, 21), generator=torch.Generator().manual_seed(2))  # 21: not a chunk multiple


@torch.no_grad()
def test_transformers_checkpoint_loads_with_equal_logits(hf_checkpoint, ids):
    hf, path = hf_checkpoint
    ours = load_model(path, dtype=torch.float32, backend="reference")
    assert ours.config.pattern == "M*E-ME*M" and ours.config.n_group == 2
    expected = hf(ids).logits
    torch.testing.assert_close(ours(ids), expected, **TOL)
    # packed documents: each equals its own transformers forward
    cu = torch.tensor([0, 21, 42], dtype=torch.int32)
    torch.testing.assert_close(ours(ids.reshape(1, -1), cu)[0], expected.reshape(42, -1), **TOL)


@torch.no_grad()
def test_our_checkpoint_loads_in_transformers(hf_checkpoint, ids, tmp_path):
    hf, path = hf_checkpoint
    ours = load_model(path, dtype=torch.float32, backend="reference")
    save_checkpoint(ours, tmp_path)
    reloaded = transformers.NemotronHForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.hybrid_override_pattern == "M*E-ME*M"
    for (n, a), (_, b) in zip(sorted(hf.state_dict().items()), sorted(reloaded.state_dict().items())):
        assert torch.equal(a, b), n
    torch.testing.assert_close(reloaded(ids).logits, ours(ids), **TOL)


@torch.no_grad()
def test_greedy_generation_matches_transformers(hf_checkpoint, ids):
    hf, path = hf_checkpoint
    ours = load_model(path, dtype=torch.float32, backend="reference")
    prompts = [ids[0].tolist(), ids[1, :13].tolist()]            # different lengths, one batch on our side
    got = generate(ours, prompts, 32)
    for prompt, new in zip(prompts, got):
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)[0, len(prompt):]
        assert len(new) == 32 and new == expected.tolist()
