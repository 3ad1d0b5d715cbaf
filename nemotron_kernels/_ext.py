"""Loads the compiled extension `nemotron_kernels._C` once and says loudly what is missing and why.

Never touches the GPU at import time: `cuda_status()` asks torch only when an op is called or reported.
"""
import functools
import warnings

import torch

try:
    from . import _C
    LOAD_ERROR = None
except ImportError as e:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = f"{type(e).__name__}: {e}"
    warnings.warn(f"nemotron_kernels._C could not be loaded ({LOAD_ERROR}); ops fall back to the PyTorch "
                  "references. Build it with `pip install --no-build-isolation -e .` (see README).", stacklevel=2)

# torch's release as (major, minor): "2.10.0a0+git..." counts as 2.10. aten::mm.dtype (bf16/fp16 operands -> fp32
# output, no cast pass) exists on CUDA from 2.8.
TORCH_RELEASE = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
MM_OUT_DTYPE = TORCH_RELEASE >= (2, 8)

try:
    from ._build_info import BUILD_NOTE
except ImportError:
    BUILD_NOTE = "no build info (package not built with setup.py)"


def cpu_status() -> tuple[bool, str]:
    """(available, why) for the compiled C++ CPU kernels."""
    if _C is None:
        return False, f"extension not loaded ({LOAD_ERROR})"
    return True, "C++ CPU kernel"


def cuda_status(min_sm: int = 90) -> tuple[bool, str]:
    """(available, why) for the compiled CUDA kernels on the current device."""
    if _C is None:
        return False, f"extension not loaded ({LOAD_ERROR})"
    if not _C.with_cuda:
        return False, f"extension {BUILD_NOTE}"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible"
    major, minor = torch.cuda.get_device_capability()
    if major * 10 + minor < min_sm:
        return False, f"device is sm_{major}{minor}; kernels are built for sm_{min_sm}+"
    return True, f"CUDA kernel ({BUILD_NOTE})"


@functools.cache
def cuda_ok() -> tuple[bool, str]:
    """cuda_status() for sm_90 kernels, asked once (the hot paths of the MoE ops call it on every call)."""
    return cuda_status(min_sm=90)


def cuda_only_report(device_type: str, what: str) -> str:
    """The backend_report line of an op whose only kernels are CUDA ones (elsewhere its reference runs)."""
    if device_type != "cuda":
        return "reference: plain PyTorch (the CUDA kernels take CUDA tensors)"
    ok, why = cuda_ok()
    return what if ok else f"reference: {why}"
