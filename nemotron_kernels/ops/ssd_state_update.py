"""Public op `ssd_state_update`: one Mamba-2 decode step on a slot pool of SSM states, in place.

Triton kernel on CUDA tensors; the reference on CPU, for float64, when autograd needs a graph, or without
Triton — unless TRITON_INTERPRET=1, where CPU fp16/bf16/fp32 tensors run the kernel in Triton's interpreter.
Layers: custom op `nemotron_kernels::ssd_state_update` (mutates `state`; torch.compile / CUDA-graph visible)
-> `ssd_state_update()` (checks + dispatch). The kernel path never synchronises: slot_idx values are checked
only for CPU tensors."""
from typing import Optional

import torch

from ..reference.ssd_state_update import check_ssd_state_update_args, ssd_state_update_ref
from ..triton import mamba_common
from ._kernel_op import kernel_op


@kernel_op("nemotron_kernels::ssd_state_update", mutates_args=("state",))
def ssd_state_update_op(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                        C: torch.Tensor, D: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor], dt_softplus: bool,
                        slot_idx: Optional[torch.Tensor]) -> torch.Tensor:
    """state [S_slots, H, P, N] advanced in place; -> y [B, H, P] in x's dtype (Triton)."""
    kernels = mamba_common.kernel_module("ssd_state_update")

    def unit_last(t):
        return t if t.stride(-1) == 1 else t.contiguous()

    def contig(t):
        return None if t is None else t.contiguous()

    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    kernels.ssd_state_update_launch(state, unit_last(x), unit_last(dt), A.contiguous(), unit_last(B), unit_last(C),
                                    contig(D), contig(dt_bias), dt_softplus, contig(slot_idx), y,
                                    mamba_common.sm_count(x.device))
    return y


@ssd_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, dt_bias, dt_softplus, slot_idx):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def ssd_state_update(state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus: bool = False, slot_idx=None):
    """One SSD step per batch row. Updates `state` IN PLACE.

    Args:
        state [S_slots, H, P, N]: fp32 or bf16 (fp16 too); rows slot_idx (or 0..B-1) are advanced. Unit stride on N.
        x [B, H, P], dt [B, H], A [H] (negative), B [B, G, N], C [B, G, N]; H % G == 0.
        D [H] | None.   dt_bias [H] | None.   dt_softplus: apply softplus to dt + dt_bias.
        slot_idx [B] int32/int64 | None: distinct state slot of each batch row (values checked on CPU only).
    Returns:
        y [B, H, P] in x's dtype; computed in fp32 from the updated state before it is rounded to state's dtype.
    """
    tensors = (state, x, dt, A, B, C, D, dt_bias)
    needs_grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)
    if needs_grad or not mamba_common.use_triton(*tensors):
        return ssd_state_update_ref(state, x, dt, A, B, C, D, dt_bias, dt_softplus, slot_idx)
    bsz, _, _, nslots = check_ssd_state_update_args(state, x, dt, A, B, C, D, dt_bias, slot_idx)
    if state.stride(3) != 1:
        raise ValueError(f"state must have a unit stride on N (it is updated in place), got strides {state.stride()}")
    if slot_idx is not None and slot_idx.device.type == "cpu":   # cheap here; on the GPU this would synchronise
        bad = (slot_idx < 0) | (slot_idx >= nslots)
        if bool(bad.any()):
            raise ValueError(f"slot_idx values must lie in [0, S_slots={nslots}), got {slot_idx[bad][:8].tolist()}")
        if slot_idx.unique().numel() != bsz:
            raise ValueError(f"slot_idx must not repeat a slot (two rows would update one state), "
                             f"got {slot_idx.tolist()}")
    if state.shape[3] > 1024:
        return ssd_state_update_ref(state, x, dt, A, B, C, D, dt_bias, dt_softplus, slot_idx)
    return ssd_state_update_op(state, x, dt, A, B, C, D, dt_bias, bool(dt_softplus), slot_idx)


def backend_report(device_type: str) -> str:
    return mamba_common.backend_report(device_type, "ssd_state_update (decode step, in place on slots)")
