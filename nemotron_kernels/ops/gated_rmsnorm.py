"""Public op `gated_rmsnorm`: out = rmsnorm_per_group(y * silu(z)) * weight (Mamba-2 norm, norm_before_gate=False).

Triton kernels (one forward, one backward) on CUDA tensors; the reference on CPU, for float64, or without
Triton — unless TRITON_INTERPRET=1, where CPU fp16/bf16/fp32 tensors run the kernels in Triton's interpreter.
Layers: custom ops `nemotron_kernels::gated_rmsnorm_fwd` / `_bwd` (torch.compile / CUDA-graph visible)
-> `GatedRMSNormFn` (autograd) -> `gated_rmsnorm()` (dispatch)."""
import torch

from ..reference._checks import check_divisible, check_float, check_positive_int, check_same_device, check_shape
from ..reference.gated_rmsnorm import gated_rmsnorm_ref
from ..triton import mamba_common
from ._kernel_op import kernel_op


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., D] -> [n_rows, D] with a unit channel stride (a view when the layout allows)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


@kernel_op("nemotron_kernels::gated_rmsnorm_fwd", mutates_args=())
def gated_rmsnorm_fwd(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int,
                      eps: float) -> torch.Tensor:
    """y, z [..., D], weight [D] -> out [..., D] in y's dtype (Triton)."""
    kernels = mamba_common.kernel_module("gated_rmsnorm_fwd")
    out = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    kernels.gated_rmsnorm_fwd_launch(_rows(y), _rows(z), weight.contiguous(), out.view(-1, y.shape[-1]),
                                     group_size, eps)
    return out


@gated_rmsnorm_fwd.register_fake
def _(y, z, weight, group_size, eps):
    return torch.empty(y.shape, dtype=y.dtype, device=y.device)


@kernel_op("nemotron_kernels::gated_rmsnorm_bwd", mutates_args=())
def gated_rmsnorm_bwd(dout: torch.Tensor, y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dout, y, z [..., D], weight [D] -> (dy like y, dz like z, dweight like weight) (Triton)."""
    kernels = mamba_common.kernel_module("gated_rmsnorm_bwd")
    dim = y.shape[-1]
    dy = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    dz = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    dw_partial = kernels.gated_rmsnorm_bwd_launch(_rows(dout), _rows(y), _rows(z), weight.contiguous(),
                                                  dy.view(-1, dim), dz.view(-1, dim), group_size, eps,
                                                  mamba_common.sm_count(y.device))
    return dy, dz, dw_partial.sum(0).to(weight.dtype)


@gated_rmsnorm_bwd.register_fake
def _(dout, y, z, weight, group_size, eps):
    return (torch.empty(y.shape, dtype=y.dtype, device=y.device), torch.empty(z.shape, dtype=z.dtype, device=z.device),
            torch.empty(weight.shape, dtype=weight.dtype, device=weight.device))


class GatedRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, z, weight, group_size: int, eps: float):
        ctx.save_for_backward(y, z, weight)
        ctx.group_size, ctx.eps = group_size, eps
        return gated_rmsnorm_fwd(y, z, weight, group_size, eps)

    @staticmethod
    def backward(ctx, dout):
        y, z, weight = ctx.saved_tensors
        dy, dz, dw = gated_rmsnorm_bwd(dout, y, z, weight, ctx.group_size, ctx.eps)
        return dy, dz, dw, None, None


def gated_rmsnorm(y, z, weight, group_size: int, eps: float = 1e-5):
    """Gate, RMS-normalise per group of `group_size` channels, scale (fp32 inside).

    Args:
        y [..., D]: SSD output.   z [..., D]: gate.   weight [D].
        group_size: channels per norm group, D % group_size == 0 (NemotronH: 512).   eps: added to the mean square.
    Returns:
        [..., D] in y's dtype. Differentiable in y, z and weight.
    """
    if not mamba_common.use_triton(y, z, weight):
        return gated_rmsnorm_ref(y, z, weight, group_size, eps)
    check_float("y", y)
    if y.dim() < 1:
        raise ValueError(f"y must have at least 1 dimension [..., D], got shape {tuple(y.shape)}")
    check_float("z", z)
    check_shape("z", z, y.shape, "[..., D] (like y)")
    check_float("weight", weight, "[D]", 1)
    check_shape("weight", weight, (y.shape[-1],), "[D]")
    check_positive_int("group_size", group_size)
    check_divisible("D (last dim of y)", y.shape[-1], "group_size", group_size)
    check_same_device(y=y, z=z, weight=weight)
    if group_size > 65536:
        return gated_rmsnorm_ref(y, z, weight, group_size, eps)
    return GatedRMSNormFn.apply(y, z, weight, group_size, float(eps))


def backend_report(device_type: str) -> str:
    return mamba_common.backend_report(device_type, "gated_rmsnorm fwd+bwd")
