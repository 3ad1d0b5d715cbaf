"""Shared pieces of the Mamba-2 Triton kernels (gated_rmsnorm, causal_conv1d, ssd_state_update, ssd_scan) and of
rmsnorm: dispatch decisions, backend reports and the ahead-of-time sm_90a compile used by CI; the mode / module plumbing
is triton/common.py's."""
import torch

from . import common
# the ops' and kernel modules' entry points
from .common import aot_compile, dep_tokens, interpreting, kernel_module, triton_status  # noqa: F401


def use_triton(*tensors: torch.Tensor, dot_kernel: bool = False) -> bool:
    """Whether the public op runs its Triton kernel for these (non-None) tensors.

    CUDA tensors in fp16/bf16/fp32 -> Triton. CPU tensors -> Triton only under TRITON_INTERPRET=1, in fp16/fp32
    (and bf16 for kernels without tl.dot: the interpreter mis-computes bf16 tl.dot). float64 -> reference."""
    ts = [t for t in tensors if isinstance(t, torch.Tensor)]
    if not ts or not triton_status()[0]:
        return False
    first = ts[0]
    if any(t.is_floating_point() and t.dtype == torch.float64 for t in ts):
        return False
    if first.device.type == "cuda":
        return first.dtype in (torch.float16, torch.bfloat16, torch.float32)
    if first.device.type == "cpu" and interpreting():
        allowed = (torch.float16, torch.float32) if dot_kernel else (torch.float16, torch.bfloat16, torch.float32)
        return first.dtype in allowed
    return False


def backend_report(device_type: str, op: str, dot_kernel: bool = False) -> str:
    """The `backend_report` line of a Mamba-2 op: which implementation runs for tensors on `device_type`, and why."""
    ok, why = triton_status()
    if device_type == "cuda":
        if ok:
            return f"triton: {op} kernels ({why}); float64 -> reference"
        return f"reference: {why}"
    if device_type == "cpu" and ok and interpreting():
        dtypes = "fp16/fp32" if dot_kernel else "fp16/bf16/fp32"
        return f"triton: Triton's CPU interpreter (TRITON_INTERPRET=1) for {dtypes} CPU tensors; others -> reference"
    return f"reference: no Triton kernels on {device_type} (set TRITON_INTERPRET=1 to interpret them)"


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (132 on the H200); 16 for CPU tensors (interpreter)."""
    return common.sm_count(device, cpu=16)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot `input_precision`: exact "ieee" for fp32 inputs (no TF32 rounding), "tf32" otherwise (unused for
    16-bit inputs, whose products are exact on tensor cores)."""
    return "ieee" if dtype == torch.float32 else "tf32"


TL_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
                  torch.int32: "i32", torch.int64: "i64"}
