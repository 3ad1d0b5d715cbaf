"""nemotron-kernels: GPU kernels for the Nemotron 3 Nano hybrid (Mamba-2 / GQA / MoE) architecture.

Public ops (one name through kernel -> binding -> ops/<op>.py -> reference/<op>.py -> tests -> bench):
see `OPS`. `backends()` reports which implementation each op uses on this machine and why;
`ops_for(backend)` gives the model one namespace of ops, either the kernels or the references.
"""
from types import SimpleNamespace

from . import reference
from .ops import (causal_conv1d, gated_rmsnorm, gqa_attention, gqa_decode, grouped_gemm, moe_experts, moe_permute,
                  moe_router, rmsnorm, ssd_scan, ssd_state_update)

_MODULES = {
    "ssd_scan": ssd_scan,
    "causal_conv1d": causal_conv1d,
    "causal_conv1d_update": causal_conv1d,
    "gated_rmsnorm": gated_rmsnorm,
    "rmsnorm": rmsnorm,
    "ssd_state_update": ssd_state_update,
    "moe_router": moe_router,
    "moe_permute": moe_permute,
    "moe_unpermute": moe_permute,
    "grouped_gemm": grouped_gemm,
    "moe_experts": moe_experts,
    "gqa_attention": gqa_attention,
    "gqa_decode": gqa_decode,
    "quantize_fp8": gqa_attention,
}
OPS = tuple(_MODULES)
globals().update({name: getattr(mod, name) for name, mod in _MODULES.items()})

BACKENDS = ("auto", "reference", "kernels")


def backends(device: str | None = None) -> dict[str, str]:
    """{op: "<implementation>: <why>"} for tensors on `device` (default: cuda if visible, else cpu)."""
    import torch
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind = torch.device(device).type
    return {name: getattr(mod, f"{name}_backend_report", mod.backend_report)(kind) for name, mod in _MODULES.items()}


def ops_for(backend: str = "auto") -> SimpleNamespace:
    """The ops the model calls. "reference": the plain-PyTorch references (any dtype, any device);
    "auto"/"kernels": the public ops, which use a kernel where one exists for the inputs' device and the
    reference otherwise (backends() says which)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return SimpleNamespace(**{name: getattr(reference, f"{name}_ref") for name in OPS})
    return SimpleNamespace(**{name: getattr(_MODULES[name], name) for name in OPS})
