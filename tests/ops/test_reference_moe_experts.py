"""moe_experts_ref against an explicit loop over tokens and their chosen experts, in float64."""
import pytest
import torch

from nemotron_kernels.reference.moe_experts import moe_experts_ref

F64 = torch.float64
T, HD, INTER, E, K, IS = 13, 16, 12, 6, 3, 20


def make(seed, dtype=F64, unused_expert=None):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=F64)).to(dtype)

    experts = [e for e in range(E) if e != unused_expert]
    choice = torch.stack([torch.randperm(len(experts), generator=g)[:K] for _ in range(T)])
    topk_idx = torch.tensor(experts)[choice].to(torch.int32)
    return dict(x=randn(T, HD), topk_idx=topk_idx, topk_weight=torch.rand(T, K, generator=g, dtype=F64).to(dtype),
                up=randn(E, INTER, HD, scale=HD ** -0.5), down=randn(E, HD, INTER, scale=INTER ** -0.5)), \
        dict(shared_up=randn(IS, HD, scale=HD ** -0.5), shared_down=randn(HD, IS, scale=IS ** -0.5))


def explicit(x, topk_idx, topk_weight, up, down, shared_up=None, shared_down=None):
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(topk_idx.shape[1]):
            e = int(topk_idx[t, j])
            out[t] += topk_weight[t, j] * (down[e] @ torch.relu(up[e] @ x[t]) ** 2)
        if shared_up is not None:
            out[t] += shared_down @ torch.relu(shared_up @ x[t]) ** 2
    return out


@pytest.mark.parametrize("shared", [False, True])
def test_matches_token_loop(shared):
    routed, shared_w = make(int(shared))
    kwargs = shared_w if shared else {}
    out = moe_experts_ref(**routed, **kwargs)
    torch.testing.assert_close(out, explicit(**routed, **kwargs), rtol=1e-12, atol=1e-12)


def test_expert_without_tokens_is_ignored():
    routed, shared_w = make(2, unused_expert=3)
    out = moe_experts_ref(**routed, **shared_w)
    torch.testing.assert_close(out, explicit(**routed, **shared_w), rtol=1e-12, atol=1e-12)
    routed["up"][3].normal_()   # the idle expert's weights must not matter
    routed["down"][3].normal_()
    assert torch.equal(moe_experts_ref(**routed, **shared_w), out)


def test_int64_indices_and_bf16():
    routed, shared_w = make(3, dtype=torch.bfloat16)
    routed["topk_idx"] = routed["topk_idx"].long()
    out = moe_experts_ref(**routed, **shared_w)
    assert out.dtype == torch.bfloat16
    as64 = {k: (v.to(F64) if v.is_floating_point() else v) for k, v in {**routed, **shared_w}.items()}
    torch.testing.assert_close(out.to(F64), explicit(**as64), rtol=2e-2, atol=2e-2)


def test_bad_inputs():
    routed, shared_w = make(4)
    with pytest.raises(ValueError, match=r"topk_idx values must lie in \[0, E=6\)"):
        moe_experts_ref(**{**routed, "topk_idx": routed["topk_idx"] + E})
    with pytest.raises(TypeError, match="topk_idx must have dtype"):
        moe_experts_ref(**{**routed, "topk_idx": routed["topk_idx"].float()})
    with pytest.raises(ValueError, match="topk_weight must have shape"):
        moe_experts_ref(**{**routed, "topk_weight": routed["topk_weight"][:, :2]})
    with pytest.raises(ValueError, match="down must have shape"):
        moe_experts_ref(**{**routed, "down": routed["down"][:, :, :5]})
    with pytest.raises(ValueError, match="x must be 2-D"):
        moe_experts_ref(**{**routed, "x": routed["x"][None]})
    with pytest.raises(ValueError, match="shared_up and shared_down must be given together"):
        moe_experts_ref(**routed, shared_up=shared_w["shared_up"])
    with pytest.raises(ValueError, match="shared_down must have shape"):
        moe_experts_ref(**routed, shared_up=shared_w["shared_up"], shared_down=shared_w["shared_down"][:, :4])
