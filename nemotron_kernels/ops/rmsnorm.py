"""Public op `rmsnorm`: out = round(x * rsqrt(mean(x^2) + eps)) * weight (reference/rmsnorm.py), the norm before
every mixer of NemotronH and its final norm.

Triton kernels (one forward, one backward; triton/rmsnorm.py) on CUDA tensors; the reference on CPU, for float64,
or without Triton — unless TRITON_INTERPRET=1, where CPU fp16/bf16/fp32 tensors run the kernels in Triton's
interpreter. Plain torch took ~6 kernels forward and ~10 backward per norm (no torch.compile runs here to fuse
them): hundreds of launches per decode and training step. Layers: custom ops `nemotron_kernels::rmsnorm_fwd` /
`_bwd` (torch.compile / CUDA-graph visible) -> `RMSNormFn` (autograd) -> `rmsnorm()` (dispatch); with a residual,
`nemotron_kernels::rmsnorm_add_fwd` -> `AddRMSNormFn`: h = x + residual formed in the forward kernel (the residual
add of every block, fused into the next norm), the same backward plus the gradient that reaches h itself."""
import torch

from ..reference.rmsnorm import check_rmsnorm_args, rmsnorm_ref
from ..triton import mamba_common
from ._kernel_op import kernel_op


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., D] -> [n_rows, D] with a unit last stride (a view when the layout allows)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


@kernel_op("nemotron_kernels::rmsnorm_fwd", mutates_args=())
def rmsnorm_fwd(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D], weight [D] -> (out [..., D] in x's dtype, rstd [n_rows] fp32) (Triton)."""
    kernels = mamba_common.kernel_module("rmsnorm")
    x2 = _rows(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rstd = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
    kernels.rmsnorm_fwd_launch(x2, weight.contiguous(), out.view(-1, x.shape[-1]), rstd, eps)
    return out, rstd


@rmsnorm_fwd.register_fake
def _(x, weight, eps):
    n_rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return torch.empty_like(x), x.new_empty(n_rows, dtype=torch.float32)


@kernel_op("nemotron_kernels::rmsnorm_add_fwd", mutates_args=())
def rmsnorm_add_fwd(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, residual [..., D] (same dtype), weight [D] -> (out, h = x + residual, both like x; rstd [n_rows] fp32)."""
    kernels = mamba_common.kernel_module("rmsnorm")
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h = torch.empty_like(out)
    rstd = torch.empty(out.numel() // x.shape[-1], dtype=torch.float32, device=x.device)
    kernels.rmsnorm_fwd_launch(_rows(x), weight.contiguous(), out.view(-1, x.shape[-1]), rstd, eps,
                               _rows(residual), h.view(-1, x.shape[-1]))
    return out, h, rstd


@rmsnorm_add_fwd.register_fake
def _(x, residual, weight, eps):
    n_rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return torch.empty_like(x), torch.empty_like(x), x.new_empty(n_rows, dtype=torch.float32)


@kernel_op("nemotron_kernels::rmsnorm_bwd", mutates_args=())
def rmsnorm_bwd(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dout, x [..., D], weight [D], rstd [n_rows] -> (dx like x, dweight like weight) (Triton)."""
    kernels = mamba_common.kernel_module("rmsnorm")
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dw_partial = kernels.rmsnorm_bwd_launch(_rows(dout), _rows(x), weight.contiguous(), rstd,
                                            dx.view(-1, x.shape[-1]), mamba_common.sm_count(x.device))
    return dx, dw_partial.sum(0).to(weight.dtype)


@rmsnorm_bwd.register_fake
def _(dout, x, weight, rstd):
    return torch.empty_like(x), torch.empty_like(weight)


class RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        out, rstd = rmsnorm_fwd(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = rmsnorm_bwd(dout.contiguous(), x, weight, rstd)
        return dx, dw, None


class AddRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps: float):
        out, h, rstd = rmsnorm_add_fwd(x, residual, weight, eps)
        ctx.save_for_backward(h, weight, rstd)
        ctx.set_materialize_grads(False)                      # norm_f's h is unused: no zero gradient made for it
        return out, h

    @staticmethod
    def backward(ctx, dout, dh):
        h, weight, rstd = ctx.saved_tensors
        if dout is None:
            return dh, dh, None, None
        dx, dw = rmsnorm_bwd(dout.contiguous(), h, weight, rstd)
        dh = dx if dh is None else dx + dh                    # h feeds the norm and the next residual add
        return dh, dh, dw, None


def rmsnorm(x, weight, eps: float = 1e-5, residual=None):
    """RMSNorm over the last dim, normalised in fp32, rounded to x's dtype, then scaled by weight (cast to x's
    dtype, as in the HF-native model). With `residual`, the residual add first: h = x + residual is normed, and
    (out, h) returned (one kernel).

    Args:
        x [..., D]: any float dtype.   weight [D].   eps: added to the mean square.
        residual [..., D] | None: added to x before the norm (the kernel takes it in x's dtype and shape; another
            dtype runs the reference, where h takes torch's promoted dtype).
    Returns:
        [..., D] in x's (h's) dtype; with residual, (out, h). Differentiable in x, residual and weight.
    """
    if not mamba_common.use_triton(x, weight) or (residual is not None and (
            not isinstance(residual, torch.Tensor) or residual.dtype != x.dtype or residual.shape != x.shape
            or residual.device != x.device)):
        return rmsnorm_ref(x, weight, eps, residual)
    check_rmsnorm_args(x, weight)
    if x.shape[-1] > 65536 or x.numel() == 0:
        return rmsnorm_ref(x, weight, eps, residual)
    if residual is not None:
        return AddRMSNormFn.apply(x, residual, weight, float(eps))
    return RMSNormFn.apply(x, weight, float(eps))


def backend_report(device_type: str) -> str:
    return mamba_common.backend_report(device_type, "rmsnorm fwd+bwd")
