"""Reference one-token Mamba-2 SSM state update for a batch of state slots (decode):
    dt = softplus(dt + dt_bias) (or dt + dt_bias);  S = exp(dt A) S + dt outer(x, B[g]);  y = S C[g] + D x
with head h reading group g = h // (H // G). The state is read and written in place, in its own dtype."""
import torch
import torch.nn.functional as F

from ._checks import (check_divisible, check_float, check_index, check_int, check_optional_float,
                      check_same_device, check_shape, compute_dtype)


def ssd_state_update_ref(state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus: bool = False, slot_idx=None):
    """One SSD step per batch row (reference). Updates `state` IN PLACE.

    Args:
        state [S_slots, H, P, N]: fp32 / bf16 / fp64 (any float); rows slot_idx (or 0..B-1) are advanced.
        x [B, H, P], dt [B, H], A [H] (negative), B [B, G, N], C [B, G, N]; H % G == 0.
        D [H] | None.   dt_bias [H] | None.   dt_softplus: apply softplus to dt + dt_bias.
        slot_idx [B] int32/int64 | None: distinct state slot of each batch row.
    Returns:
        y [B, H, P] in x's dtype. The update is computed in float32 (float64 when state or x is float64)
        and stored rounded to state's dtype.
    """
    bsz, nheads, ngroups, nslots = check_ssd_state_update_args(state, x, dt, A, B, C, D, dt_bias, slot_idx)
    slots = list(range(bsz)) if slot_idx is None else check_index("slot_idx", slot_idx, bsz, nslots, "S_slots")

    cdtype = compute_dtype(x.dtype, state.dtype)
    heads_per_group = nheads // ngroups
    dt_c = dt.to(cdtype)                                                      # [B, H]
    if dt_bias is not None:
        dt_c = dt_c + dt_bias.to(cdtype)
    if dt_softplus:
        dt_c = F.softplus(dt_c)  # identity above 20, as the kernels do
    x_c = x.to(cdtype)                                                        # [B, H, P]
    B_h = B.to(cdtype).repeat_interleave(heads_per_group, dim=1)             # [B, H, N]
    C_h = C.to(cdtype).repeat_interleave(heads_per_group, dim=1)             # [B, H, N]
    rows = torch.tensor(slots, dtype=torch.long, device=state.device)

    decay = torch.exp(dt_c * A.to(cdtype))                                    # [B, H]
    s = state[rows].to(cdtype)                                                # [B, H, P, N]
    s = decay[:, :, None, None] * s + (dt_c[:, :, None] * x_c)[..., None] * B_h[:, :, None, :]
    state[rows] = s.to(state.dtype)
    # y reads the state before it is rounded to state's dtype, as a fused kernel does
    y = torch.einsum("bhpn,bhn->bhp", s, C_h)                                 # [B, H, P]
    if D is not None:
        y = y + D.to(cdtype)[:, None] * x_c
    return y.to(x.dtype)


def check_ssd_state_update_args(state, x, dt, A, B, C, D, dt_bias, slot_idx) -> tuple[int, int, int, int]:
    """Shapes, dtypes and devices of ssd_state_update's arguments; slot_idx's values are not read (no host
    sync). Returns (B, H, G, S_slots)."""
    check_float("state", state, "[S_slots, H, P, N]", 4)
    check_float("x", x, "[B, H, P]", 3)
    bsz, nheads, headdim = x.shape
    nslots, dstate = state.shape[0], state.shape[3]
    check_shape("state", state, (nslots, nheads, headdim, dstate), "[S_slots, H, P, N]")
    check_float("dt", dt, "[B, H]", 2)
    check_shape("dt", dt, (bsz, nheads), "[B, H]")
    check_float("A", A, "[H]", 1)
    check_shape("A", A, (nheads,), "[H]")
    check_float("B", B, "[B, G, N]", 3)
    ngroups = B.shape[1]
    check_shape("B", B, (bsz, ngroups, dstate), "[B, G, N]")
    check_float("C", C, "[B, G, N]", 3)
    check_shape("C", C, (bsz, ngroups, dstate), "[B, G, N]")
    check_divisible("H (heads of x)", nheads, "G (groups of B)", ngroups)
    check_optional_float("D", D, (nheads,), "[H]")
    check_optional_float("dt_bias", dt_bias, (nheads,), "[H]")
    if slot_idx is None:
        if bsz > nslots:
            raise ValueError(f"without slot_idx, state needs at least B = {bsz} slots, has {nslots}")
    else:
        check_int("slot_idx", slot_idx, "[B]", 1)
        check_shape("slot_idx", slot_idx, (bsz,), "[B]")
    check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, slot_idx=slot_idx)
    return bsz, nheads, ngroups, nslots
