"""Public ops `causal_conv1d` (prefill, fwd+bwd) and `causal_conv1d_update` (one decode token, in place).

Triton kernels on CUDA tensors; the reference on CPU, for float64, or without Triton — unless TRITON_INTERPRET=1,
where CPU fp16/bf16/fp32 tensors run the kernels in Triton's interpreter. Layers: custom ops
`nemotron_kernels::causal_conv1d_fwd` / `_final_state` / `_bwd` / `_update` (torch.compile / CUDA-graph visible)
-> `CausalConv1dFn` (autograd) -> `causal_conv1d()` / `causal_conv1d_update()` (dispatch).

The kernel path never synchronises with the GPU: cu_seqlens and slot_idx are checked for shape and dtype, not
for their values (the references check values)."""
from typing import Optional

import torch

from ..reference._checks import check_float, check_int, check_optional_float, check_same_device, check_shape
from ..reference.causal_conv1d import causal_conv1d_ref, causal_conv1d_update_ref
from ..triton import mamba_common
from ._kernel_op import kernel_op
from .._tensor_cache import derived


def _silu(activation) -> bool:
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    return activation == "silu"


def _maybe_contig(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def _x_layout(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(2) == 1 else x.contiguous()


def _init_layout(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return t if t is None or t.stride(2) == 1 else t.contiguous()


# ---------------------------------------------------------------------------------------------------------- prefill
@kernel_op("nemotron_kernels::causal_conv1d_fwd", mutates_args=())
def causal_conv1d_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      seq_idx: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
                      initial_state: Optional[torch.Tensor], silu: bool) -> torch.Tensor:
    """x [B, L, C] -> y [B, L, C] in x's dtype (Triton)."""
    kernels = mamba_common.kernel_module("causal_conv1d_fwd")
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    kernels.causal_conv1d_fwd_launch(_x_layout(x), weight.contiguous(), _maybe_contig(bias), seq_idx, cu_seqlens,
                                     _init_layout(initial_state), y, silu, mamba_common.sm_count(x.device))
    return y


@causal_conv1d_fwd.register_fake
def _(x, weight, bias, seq_idx, cu_seqlens, initial_state, silu):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _n_states(x, cu_seqlens) -> int:
    return x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


@kernel_op("nemotron_kernels::causal_conv1d_final_state", mutates_args=())
def causal_conv1d_final_state(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: Optional[torch.Tensor],
                              initial_state: Optional[torch.Tensor]) -> torch.Tensor:
    """Last K-1 inputs of each row / packed sequence -> [B or S, C, K-1] in x's dtype (Triton)."""
    kernels = mamba_common.kernel_module("causal_conv1d_fwd")
    final = torch.empty(_n_states(x, cu_seqlens), x.shape[2], weight.shape[1] - 1, dtype=x.dtype, device=x.device)
    kernels.causal_conv1d_final_state_launch(_x_layout(x), weight.contiguous(), cu_seqlens,
                                             _init_layout(initial_state), final)
    return final


@causal_conv1d_final_state.register_fake
def _(x, weight, cu_seqlens, initial_state):
    return torch.empty(_n_states(x, cu_seqlens), x.shape[2], weight.shape[1] - 1, dtype=x.dtype, device=x.device)


@kernel_op("nemotron_kernels::causal_conv1d_bwd", mutates_args=())
def causal_conv1d_bwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      seq_idx: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
                      initial_state: Optional[torch.Tensor], dy: torch.Tensor, silu: bool
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dx like x, dweight like weight, dbias like bias (empty [0] without bias), dinitial_state like
    initial_state (empty [0] without)) (Triton)."""
    kernels = mamba_common.kernel_module("causal_conv1d_bwd")
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dweight = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    dbias = torch.empty(bias.shape, dtype=bias.dtype, device=bias.device) if bias is not None else x.new_empty(0)
    dinit = (torch.empty(initial_state.shape, dtype=initial_state.dtype, device=initial_state.device)
             if initial_state is not None else None)
    dy = dy if dy.stride(2) == 1 else dy.contiguous()
    kernels.causal_conv1d_bwd_launch(
        _x_layout(x), weight.contiguous(), _maybe_contig(bias), seq_idx, cu_seqlens, _init_layout(initial_state), dy,
        dx, dweight, dbias, dinit, silu, mamba_common.sm_count(x.device))
    return dx, dweight, dbias, dinit if dinit is not None else x.new_empty(0)


@causal_conv1d_bwd.register_fake
def _(x, weight, bias, seq_idx, cu_seqlens, initial_state, dy, silu):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(weight),
            torch.empty_like(bias) if bias is not None else x.new_empty(0),
            torch.empty_like(initial_state) if initial_state is not None else x.new_empty(0))


class CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, seq_idx, cu_seqlens, initial_state, silu: bool, return_final_state: bool):
        ctx.save_for_backward(x, weight, bias, seq_idx, cu_seqlens, initial_state)
        ctx.silu = silu
        y = causal_conv1d_fwd(x, weight, bias, seq_idx, cu_seqlens, initial_state, silu)
        if not return_final_state:
            return y
        final = causal_conv1d_final_state(x, weight, cu_seqlens, initial_state)
        ctx.mark_non_differentiable(final)
        return y, final

    @staticmethod
    def backward(ctx, dy, *unused_dfinal):
        x, weight, bias, seq_idx, cu_seqlens, initial_state = ctx.saved_tensors
        dx, dweight, dbias, dinit = causal_conv1d_bwd(x, weight, bias, seq_idx, cu_seqlens, initial_state, dy,
                                                      ctx.silu)
        return (dx, dweight, dbias if bias is not None else None, None, None,
                dinit if initial_state is not None else None, None, None)


def _seq_idx(cu_seqlens: torch.Tensor, seqlen: int) -> torch.Tensor:
    """Token -> index of its packed sequence, [L] int32 (device-side, no synchronisation)."""
    tokens = torch.arange(seqlen, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), tokens, right=True).to(torch.int32)


def causal_conv1d(x, weight, bias=None, activation: str | None = "silu", cu_seqlens=None, initial_state=None,
                  return_final_state: bool = False):
    """Depthwise causal conv1d over the sequence axis, then the optional SiLU.

    Args:
        x [B, L, C] (unit channel stride preferred; any row stride).   weight [C, K].   bias [C] | None.
        activation: "silu" or None.
        cu_seqlens [S+1] int32/int64 | None: packed sequences along L (B must be 1); no sequence sees another.
        initial_state [B, C, K-1] (with cu_seqlens [S, C, K-1]) | None: the K-1 inputs before each sequence,
            oldest first (zeros if None).
        return_final_state: also return each sequence's last K-1 inputs (for the decode hand-off).
    Returns:
        y [B, L, C] in x's dtype, or (y, final_state [B or S, C, K-1] in x's dtype). Differentiable in x, weight,
        bias and initial_state (final_state is not differentiable).
    """
    if not mamba_common.use_triton(x, weight, bias, initial_state):
        return causal_conv1d_ref(x, weight, bias, activation, cu_seqlens, initial_state, return_final_state)
    check_float("x", x, "[B, L, C]", 3)
    bsz, seqlen, channels = x.shape
    check_float("weight", weight, "[C, K]", 2)
    if weight.shape[0] != channels or weight.shape[1] < 1:
        raise ValueError(f"weight must have shape [C, K] with C = {channels} and K >= 1, got {tuple(weight.shape)}")
    check_optional_float("bias", bias, (channels,), "[C]")
    silu = _silu(activation)
    seq_idx = None
    if cu_seqlens is not None:
        check_int("cu_seqlens", cu_seqlens, "[S+1]", 1)
        if cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must hold at least 2 offsets [S+1], got {cu_seqlens.numel()}")
        if bsz != 1:
            raise ValueError(f"with cu_seqlens, the batch dimension must be 1 (sequences are packed along it), "
                             f"got {bsz}")
        cu_seqlens = cu_seqlens.contiguous()
    nstates = bsz if cu_seqlens is None else cu_seqlens.numel() - 1
    width = weight.shape[1]
    check_optional_float("initial_state", initial_state, (nstates, channels, width - 1),
                         "[B, C, K-1]" if cu_seqlens is None else "[S, C, K-1] (one per sequence of cu_seqlens)")
    check_same_device(x=x, weight=weight, bias=bias, cu_seqlens=cu_seqlens, initial_state=initial_state)
    if cu_seqlens is not None:
        seq_idx = derived(cu_seqlens, "seq_idx", (seqlen,), lambda: _seq_idx(cu_seqlens, seqlen))
    return CausalConv1dFn.apply(x, weight, bias, seq_idx, cu_seqlens, initial_state, silu, return_final_state)


# ----------------------------------------------------------------------------------------------------------- decode
@kernel_op("nemotron_kernels::causal_conv1d_update", mutates_args=("conv_state",))
def causal_conv1d_update_op(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                            bias: Optional[torch.Tensor], slot_idx: Optional[torch.Tensor],
                            silu: bool) -> torch.Tensor:
    """x [B, C] -> y [B, C]; conv_state rows advanced in place (Triton)."""
    kernels = mamba_common.kernel_module("causal_conv1d_update")
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    kernels.causal_conv1d_update_launch(x if x.stride(1) == 1 else x.contiguous(), conv_state, weight.contiguous(),
                                        _maybe_contig(bias), _maybe_contig(slot_idx), y, silu)
    return y


@causal_conv1d_update_op.register_fake
def _(x, conv_state, weight, bias, slot_idx, silu):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation: str | None = "silu", slot_idx=None):
    """One decode token of the causal conv. Updates conv_state IN PLACE.

    Args:
        x [B, C].   weight [C, K] (K >= 2).   bias [C] | None.   activation: "silu" or None.
        conv_state [S_slots, C, K-1]: last K-1 inputs of every slot, oldest first; rows slot_idx (or 0..B-1) are
            read, then shifted left by one with x appended, in conv_state's dtype.
        slot_idx [B] int32/int64 | None: distinct slot of each batch row (values are not checked on the GPU).
    Returns:
        y [B, C] in x's dtype.
    """
    if not mamba_common.use_triton(x, conv_state, weight, bias) or not isinstance(weight, torch.Tensor) \
            or weight.dim() != 2 or weight.shape[1] < 2:
        return causal_conv1d_update_ref(x, conv_state, weight, bias, activation, slot_idx)
    check_float("x", x, "[B, C]", 2)
    bsz, channels = x.shape
    check_float("conv_state", conv_state, "[S_slots, C, K-1]", 3)
    check_float("weight", weight, "[C, K]", 2)
    if weight.shape[0] != channels:
        raise ValueError(f"weight must have shape [C, K] with C = {channels} and K >= 1, got {tuple(weight.shape)}")
    width = weight.shape[1]
    check_shape("conv_state", conv_state, (conv_state.shape[0], channels, width - 1), "[S_slots, C, K-1]")
    check_optional_float("bias", bias, (channels,), "[C]")
    silu = _silu(activation)
    if slot_idx is None:
        if bsz > conv_state.shape[0]:
            raise ValueError(f"without slot_idx, conv_state needs at least B = {bsz} slots, has {conv_state.shape[0]}")
    else:
        check_int("slot_idx", slot_idx, "[B]", 1)
        check_shape("slot_idx", slot_idx, (bsz,), "[B]")
        if slot_idx.device.type == "cpu":   # cheap here; on the GPU this would synchronise
            bad = (slot_idx < 0) | (slot_idx >= conv_state.shape[0])
            if bool(bad.any()):
                raise ValueError(f"slot_idx values must lie in [0, S_slots={conv_state.shape[0]}), got "
                                 f"{slot_idx[bad][:8].tolist()}")
    check_same_device(x=x, conv_state=conv_state, weight=weight, bias=bias, slot_idx=slot_idx)
    return causal_conv1d_update_op(x, conv_state, weight, bias, slot_idx, silu)


def backend_report(device_type: str) -> str:
    return mamba_common.backend_report(device_type, "causal_conv1d fwd+bwd and causal_conv1d_update")
