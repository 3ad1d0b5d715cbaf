"""rmsnorm_ref against the formula written out in float64."""
import pytest
import torch

from nemotron_kernels.reference.rmsnorm import rmsnorm_ref

F64 = torch.float64


@pytest.mark.parametrize("shape", [(7, 64), (2, 3, 48), (1, 8)])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_matches_formula(shape, eps):
    g = torch.Generator().manual_seed(sum(shape))
    x = 3.0 * torch.randn(*shape, generator=g, dtype=F64)
    weight = torch.randn(shape[-1], generator=g, dtype=F64)
    expected = x / torch.sqrt((x * x).sum(-1, keepdim=True) / shape[-1] + eps) * weight
    torch.testing.assert_close(rmsnorm_ref(x, weight, eps), expected, rtol=1e-13, atol=1e-13)


def test_bf16_casts_before_weight():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 32, generator=g).to(torch.bfloat16)
    weight = torch.randn(32, generator=g).to(torch.bfloat16)
    out = rmsnorm_ref(x, weight)
    assert out.dtype == torch.bfloat16
    xf = x.float()
    expected = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16) * weight
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert rmsnorm_ref(x, weight.float()).dtype == torch.bfloat16   # output keeps x's dtype


def test_bad_inputs():
    x = torch.randn(4, 16, dtype=F64)
    with pytest.raises(ValueError, match="weight must have shape"):
        rmsnorm_ref(x, torch.randn(8, dtype=F64))
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        rmsnorm_ref(x.to(torch.int32), torch.randn(16))
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        rmsnorm_ref(x, [1.0] * 16)
