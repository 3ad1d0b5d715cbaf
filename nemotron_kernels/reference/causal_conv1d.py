"""Reference depthwise causal conv1d (+ optional SiLU) for the Mamba-2 xBC path, and its one-token decode update.

Channel c, kernel width K: y_t[c] = bias[c] + sum_{k<K} weight[c, k] * u_{t-K+1+k}[c], where u is the input
preceded by the K-1 inputs before the sequence (the initial state, zeros by default). weight[:, K-1] multiplies
the current token, as in torch's conv1d(padding=K-1) truncated to the first L outputs.
The conv state of a sequence is its last K-1 inputs, oldest first: [.., C, K-1].
"""
import torch
import torch.nn.functional as F

from ._checks import (check_cu_seqlens, check_float, check_index, check_optional_float, check_same_device,
                      check_shape, compute_dtype)


def _check_activation(activation) -> None:
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")


def _check_weight(weight, bias, channels: int) -> int:
    """weight [C, K], bias [C] | None; returns K."""
    check_float("weight", weight, "[C, K]", 2)
    if weight.shape[0] != channels or weight.shape[1] < 1:
        raise ValueError(f"weight must have shape [C, K] with C = {channels} and K >= 1, got {tuple(weight.shape)}")
    check_optional_float("bias", bias, (channels,), "[C]")
    return weight.shape[1]


def _conv(x, weight, state0):
    """x [b, C, l], weight [C, K], state0 [b, C, K-1], all in the compute dtype
    -> (y [b, C, l] before bias and activation, final [b, C, K-1])."""
    seqlen, width = x.shape[-1], weight.shape[1]
    u = torch.cat([state0, x], dim=-1)                     # [b, C, K-1+l]: the K-1 earlier inputs, then x
    y = sum(weight[:, k, None] * u[..., k:k + seqlen] for k in range(width))
    final = u[..., u.shape[-1] - (width - 1):]             # last K-1 inputs, reaching into state0 when l < K-1
    return y, final


def causal_conv1d_ref(x, weight, bias=None, activation: str | None = "silu", cu_seqlens=None, initial_state=None,
                      return_final_state: bool = False):
    """Depthwise causal conv1d over the sequence axis, then the optional activation (reference).

    Args:
        x [B, L, C]: any float dtype.   weight [C, K].   bias [C] | None.   activation: "silu" or None.
        cu_seqlens [S+1] int32/int64 | None: packed sequences along L (B must be 1); no sequence sees another.
        initial_state [B, C, K-1] (with cu_seqlens [S, C, K-1]) | None: the K-1 inputs before each sequence,
            oldest first (zeros if None).
        return_final_state: also return each sequence's last K-1 inputs (reaching into initial_state, or
            zero-padded on the left, when the sequence is shorter than K-1).
    Returns:
        y [B, L, C] in x's dtype, or (y, final_state [B, C, K-1] (with cu_seqlens [S, C, K-1]) in x's dtype).
    """
    check_float("x", x, "[B, L, C]", 3)
    bsz, seqlen, channels = x.shape
    width = _check_weight(weight, bias, channels)
    _check_activation(activation)
    offsets = None if cu_seqlens is None else check_cu_seqlens(cu_seqlens, seqlen, bsz)
    nstates = bsz if offsets is None else len(offsets) - 1
    check_optional_float("initial_state", initial_state, (nstates, channels, width - 1),
                         "[B, C, K-1]" if offsets is None else "[S, C, K-1] (one per sequence of cu_seqlens)")
    check_same_device(x=x, weight=weight, bias=bias, cu_seqlens=cu_seqlens, initial_state=initial_state)

    cdtype = compute_dtype(x.dtype)
    x_cl = x.to(cdtype).transpose(1, 2)                    # [B, C, L]
    w = weight.to(cdtype)
    if initial_state is None:
        state0 = x_cl.new_zeros(nstates, channels, width - 1)
    else:
        state0 = initial_state.to(cdtype)                  # [B or S, C, K-1]
    if offsets is None:
        y, final = _conv(x_cl, w, state0)
    else:
        # each packed sequence convolves on its own, so nothing leaks across a boundary
        parts = [_conv(x_cl[:, :, start:end], w, state0[s:s + 1])
                 for s, (start, end) in enumerate(zip(offsets[:-1], offsets[1:]))]
        y = torch.cat([p[0] for p in parts], dim=-1)       # [1, C, L]
        final = torch.cat([p[1] for p in parts], dim=0)    # [S, C, K-1]
    if bias is not None:
        y = y + bias.to(cdtype)[:, None]
    if activation == "silu":
        y = F.silu(y)
    y = y.transpose(1, 2).to(x.dtype)                      # [B, L, C]
    return (y, final.to(x.dtype)) if return_final_state else y


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation: str | None = "silu", slot_idx=None):
    """One decode token of the causal conv (reference). Updates conv_state IN PLACE.

    Args:
        x [B, C]: the new input of each sequence.   weight [C, K].   bias [C] | None.   activation: "silu" or None.
        conv_state [S_slots, C, K-1]: last K-1 inputs of every slot, oldest first; rows slot_idx (or 0..B-1
            when slot_idx is None) are read, then shifted left by one with x appended, in conv_state's dtype.
        slot_idx [B] int32/int64 | None: distinct slot of each batch row.
    Returns:
        y [B, C] in x's dtype.
    """
    check_float("x", x, "[B, C]", 2)
    bsz, channels = x.shape
    check_float("conv_state", conv_state, "[S_slots, C, K-1]", 3)
    width = _check_weight(weight, bias, channels)
    check_shape("conv_state", conv_state, (conv_state.shape[0], channels, width - 1), "[S_slots, C, K-1]")
    _check_activation(activation)
    nslots = conv_state.shape[0]
    if slot_idx is None:
        if bsz > nslots:
            raise ValueError(f"without slot_idx, conv_state needs at least B = {bsz} slots, has {nslots}")
        slots = list(range(bsz))
    else:
        slots = check_index("slot_idx", slot_idx, bsz, nslots, "S_slots")
    check_same_device(x=x, conv_state=conv_state, weight=weight, bias=bias, slot_idx=slot_idx)

    cdtype = compute_dtype(x.dtype, conv_state.dtype)
    rows = torch.tensor(slots, dtype=torch.long, device=conv_state.device)
    window = torch.cat([conv_state[rows].to(cdtype), x.to(cdtype)[:, :, None]], dim=-1)  # [B, C, K], newest last
    y = (window * weight.to(cdtype)).sum(dim=-1)           # [B, C]
    if bias is not None:
        y = y + bias.to(cdtype)
    if activation == "silu":
        y = F.silu(y)
    conv_state[rows] = window[..., 1:].to(conv_state.dtype)  # roll: drop the oldest input, keep the newest K-1
    return y.to(x.dtype)
