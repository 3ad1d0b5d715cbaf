"""Reference RMSNorm (the pre-mixer norms and norm_f of NemotronH)."""
import torch

from ._checks import check_float, check_same_device, check_shape, compute_dtype


def rmsnorm_ref(x, weight, eps: float = 1e-5, residual=None):
    """out = (x * rsqrt(mean(x^2, -1) + eps)).to(x.dtype) * weight, normalised in float32 (float64 for float64 x).
    With `residual`, the residual add before the norm: h = x + residual, returns (rmsnorm(h), h).

    Args:
        x [..., D]: any float dtype.   weight [D].   eps: added to the mean square.
        residual [..., D] | None: added to x first (h takes torch's promoted dtype of the two).
    Returns:
        [..., D] in x's dtype (weight is cast to x's dtype, as in the HF-native model); with residual, (out, h).
    """
    if residual is not None:
        check_float("residual", residual)
        check_shape("residual", residual, tuple(x.shape), "like x")
        check_same_device(x=x, residual=residual)
        h = x + residual
        return rmsnorm_ref(h, weight, eps), h
    check_rmsnorm_args(x, weight)
    x_c = x.to(compute_dtype(x.dtype))                                         # [..., D]
    normed = x_c * torch.rsqrt(x_c.pow(2).mean(dim=-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight.to(x.dtype)


def check_rmsnorm_args(x, weight) -> None:
    """Types, shapes and devices of rmsnorm's arguments (shared with the kernel op)."""
    check_float("x", x)
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension [..., D], got shape {tuple(x.shape)}")
    check_float("weight", weight, "[D]", 1)
    check_shape("weight", weight, (x.shape[-1],), "[D]")
    check_same_device(x=x, weight=weight)
