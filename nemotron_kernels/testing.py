"""The error rule of DESIGN.md, shared by the op tests (tests/ops/mamba_checks.py re-exports it) and selfcheck.

err(kernel) <= k * err(torch in the kernel's dtype) + floor, errors measured as the max absolute difference to
the float64 reference on the same inputs, k = 2 forward and 3 backward, and the floor one unit in the last place
of the kernel dtype at the reference's largest magnitude (a bf16 kernel keeping bf16 intermediates - the SSD
scan's tensor-core operands - may be off by an output ulp where a reference computed in fp32 rounds only once)."""
import torch

F64 = torch.float64


def error_bound(ref64: torch.Tensor, ref_low: torch.Tensor, k: float, eps_dtype: torch.dtype) -> float:
    """k * max|ref_low - ref64| + eps(eps_dtype) * max|ref64|."""
    if ref64.numel() == 0:
        return 0.0
    base = (ref_low.to(F64) - ref64.to(F64)).abs().max().item()
    return k * base + torch.finfo(eps_dtype).eps * ref64.abs().max().item()


def max_error(kernel: torch.Tensor, ref64: torch.Tensor) -> float:
    return (kernel.to(F64) - ref64.to(F64)).abs().max().item() if kernel.numel() else 0.0


def assert_error_rule(name: str, kernel: torch.Tensor, ref64: torch.Tensor, ref_low: torch.Tensor, k: float,
                      eps_dtype: torch.dtype | None = None):
    """kernel and ref_low: outputs in the low precision; ref64: the float64 reference. The floor is one ulp of
    `eps_dtype` (default: kernel's dtype) at max |ref64|."""
    assert kernel.shape == ref64.shape, f"{name}: shape {tuple(kernel.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(kernel).all(), f"{name}: non-finite values"
    eps_dtype = eps_dtype or kernel.dtype
    err, bound = max_error(kernel, ref64), error_bound(ref64, ref_low, k, eps_dtype)
    base = max_error(ref_low, ref64)
    scale = ref64.abs().max().item() if kernel.numel() else 0.0
    assert err <= bound, (f"{name}: kernel err {err:.3e} > {k} x torch-{kernel.dtype} err {base:.3e} "
                          f"+ floor {torch.finfo(eps_dtype).eps * scale:.3e} (max |ref| {scale:.3e})")


def assert_state_rule(name: str, kernel: torch.Tensor, ref64: torch.Tensor, ref_low: torch.Tensor,
                      input_dtype: torch.dtype, k: float):
    """For fp32 states computed from `input_dtype` inputs. The reference keeps them in fp32 from the upcast inputs,
    while a tensor-core kernel multiplies operands in the input dtype: its baseline is the larger of the
    same-dtype reference's error and the error of the fp64 state expressed in the input dtype."""
    assert kernel.dtype == torch.float32, f"{name}: states are float32, got {kernel.dtype}"
    rounded = ref64.to(input_dtype)
    ref_like = ref_low if max_error(ref_low, ref64) >= max_error(rounded, ref64) else rounded
    assert_error_rule(name, kernel, ref64, ref_like, k, eps_dtype=input_dtype)
