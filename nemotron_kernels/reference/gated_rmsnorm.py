"""Reference gated, group-wise RMSNorm of the Mamba-2 mixer output (norm_before_gate=False):
out = rmsnorm_per_group(y * silu(z)) * weight, each group of `group_size` consecutive channels normalised alone."""
import torch
import torch.nn.functional as F

from ._checks import check_divisible, check_float, check_positive_int, check_same_device, check_shape, compute_dtype


def gated_rmsnorm_ref(y, z, weight, group_size: int, eps: float = 1e-5):
    """Gate, then RMS-normalise per group, then scale; all in float32 (float64 for float64 y).

    Args:
        y [..., D]: SSD output, any float dtype.   z [..., D]: the gate (same shape).   weight [D].
        group_size: channels per norm group; D % group_size == 0 (NemotronH: 4096 / 8 groups = 512).
        eps: added to each group's mean square.
    Returns:
        [..., D] in y's dtype.
    """
    check_float("y", y)
    if y.dim() < 1:
        raise ValueError(f"y must have at least 1 dimension [..., D], got shape {tuple(y.shape)}")
    check_float("z", z)
    check_shape("z", z, y.shape, "[..., D] (like y)")
    dim = y.shape[-1]
    check_float("weight", weight, "[D]", 1)
    check_shape("weight", weight, (dim,), "[D]")
    check_positive_int("group_size", group_size)
    check_divisible("D (last dim of y)", dim, "group_size", group_size)
    check_same_device(y=y, z=z, weight=weight)

    cdtype = compute_dtype(y.dtype)
    gated = y.to(cdtype) * F.silu(z.to(cdtype))                               # [..., D]
    groups = gated.reshape(*y.shape[:-1], dim // group_size, group_size)      # [..., D/g, g]
    normed = groups * torch.rsqrt(groups.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (normed.reshape(y.shape) * weight.to(cdtype)).to(y.dtype)
