"""gated_rmsnorm_ref against the formula written out group by group in float64."""
import pytest
import torch

from nemotron_kernels.reference.gated_rmsnorm import gated_rmsnorm_ref

F64 = torch.float64
DIM = 64


def direct(y, z, weight, group_size, eps):
    """norm(y * silu(z)) per group of channels, times weight, one group slice at a time."""
    gated = y * z * torch.sigmoid(z)
    out = torch.empty_like(gated)
    for start in range(0, y.shape[-1], group_size):
        part = gated[..., start:start + group_size]
        out[..., start:start + group_size] = part / torch.sqrt(part.pow(2).mean(-1, keepdim=True) + eps)
    return out * weight


@pytest.mark.parametrize("group_size", [DIM, DIM // 8])
@pytest.mark.parametrize("lead", [(5,), (2, 3), ()])
def test_matches_formula(group_size, lead):
    g = torch.Generator().manual_seed(group_size + len(lead))
    y, z = (2.0 * torch.randn(*lead, DIM, generator=g, dtype=F64) for _ in range(2))
    weight = torch.randn(DIM, generator=g, dtype=F64)
    out = gated_rmsnorm_ref(y, z, weight, group_size)
    torch.testing.assert_close(out, direct(y, z, weight, group_size, 1e-5), rtol=1e-13, atol=1e-13)


def test_bf16():
    g = torch.Generator().manual_seed(1)
    y, z = (torch.randn(4, DIM, generator=g).to(torch.bfloat16) for _ in range(2))
    weight = torch.randn(DIM, generator=g).to(torch.bfloat16)
    out = gated_rmsnorm_ref(y, z, weight, DIM // 8, eps=1e-3)
    assert out.dtype == torch.bfloat16
    expected = direct(y.to(F64), z.to(F64), weight.to(F64), DIM // 8, 1e-3)
    torch.testing.assert_close(out.to(F64), expected, rtol=1e-2, atol=1e-2)


def test_bad_inputs():
    y = torch.randn(3, DIM, dtype=F64)
    weight = torch.randn(DIM, dtype=F64)
    with pytest.raises(ValueError, match=r"D \(last dim of y\) \(64\) must be a multiple of group_size \(24\)"):
        gated_rmsnorm_ref(y, y, weight, 24)
    with pytest.raises(ValueError, match="z must have shape"):
        gated_rmsnorm_ref(y, y[:, :32], weight, 8)
    with pytest.raises(ValueError, match="weight must have shape"):
        gated_rmsnorm_ref(y, y, weight[:8], 8)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        gated_rmsnorm_ref(y, y, weight, 0)
    with pytest.raises(TypeError, match="group_size must be an int"):
        gated_rmsnorm_ref(y, y, weight, 8.0)
