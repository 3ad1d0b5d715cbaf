"""ssd_state_update_ref: T decode steps == ssd_recurrence_ref over T tokens; slot handling; bf16 state storage."""
import pytest
import torch

from nemotron_kernels.reference.ssd_scan import ssd_recurrence_ref
from nemotron_kernels.reference.ssd_state_update import ssd_state_update_ref

F64 = torch.float64
H, P, N = 4, 3, 5


def make_inputs(seed, bsz, steps, ngroups):
    """Sequence-shaped inputs [B, T, ...] for the recurrence; step t of the update reads [:, t]."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    return dict(x=randn(bsz, steps, H, P), dt=randn(bsz, steps, H), A=-torch.exp(0.5 * randn(H)),
                B=randn(bsz, steps, ngroups, N), C=randn(bsz, steps, ngroups, N), D=randn(H),
                dt_bias=0.5 * randn(H)), randn


@pytest.mark.parametrize("ngroups", [1, 2, H])
@pytest.mark.parametrize("use_extras", [False, True])
def test_steps_match_recurrence(ngroups, use_extras):
    bsz, steps, nslots = 3, 5, 6
    seq, randn = make_inputs(ngroups + 10 * use_extras, bsz, steps, ngroups)
    slot_idx = torch.tensor([4, 0, 2], dtype=torch.int32)
    state = randn(nslots, H, P, N)
    init = state[slot_idx.long()].clone()
    untouched = state.clone()
    extras = dict(D=seq["D"], dt_bias=seq["dt_bias"], dt_softplus=True) if use_extras else {}
    if not use_extras:
        seq["dt"] = seq["dt"].abs() + 0.05   # without softplus keep dt positive (decaying state)
    y_rec, final_rec = ssd_recurrence_ref(seq["x"], seq["dt"], seq["A"], seq["B"], seq["C"], **extras,
                                          initial_states=init, return_final_states=True)
    for t in range(steps):
        y_t = ssd_state_update_ref(state, seq["x"][:, t], seq["dt"][:, t], seq["A"], seq["B"][:, t],
                                   seq["C"][:, t], **extras, slot_idx=slot_idx)
        torch.testing.assert_close(y_t, y_rec[:, t], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state[slot_idx.long()], final_rec, rtol=1e-12, atol=1e-12)
    others = [s for s in range(nslots) if s not in slot_idx.tolist()]
    torch.testing.assert_close(state[others], untouched[others], rtol=0, atol=0)


def test_without_slot_idx_uses_first_rows():
    seq, randn = make_inputs(1, 2, 1, 2)
    state = randn(3, H, P, N)
    before = state.clone()
    y = ssd_state_update_ref(state, seq["x"][:, 0], seq["dt"][:, 0], seq["A"], seq["B"][:, 0], seq["C"][:, 0],
                             dt_softplus=True)
    y_rec, final = ssd_recurrence_ref(seq["x"], seq["dt"], seq["A"], seq["B"], seq["C"], dt_softplus=True,
                                      initial_states=before[:2], return_final_states=True)
    torch.testing.assert_close(y, y_rec[:, 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state[:2], final, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state[2], before[2], rtol=0, atol=0)


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32])
def test_bf16_state_storage(x_dtype):
    """The update is computed in fp32 from the stored bf16 state and stored back rounded to bf16."""
    seq, randn = make_inputs(2, 2, 1, 2)
    seq = {k: v.to(x_dtype) for k, v in seq.items()}
    state = randn(2, H, P, N).to(torch.bfloat16)
    init = state.clone()
    y = ssd_state_update_ref(state, seq["x"][:, 0], seq["dt"][:, 0], seq["A"], seq["B"][:, 0], seq["C"][:, 0],
                             seq["D"], seq["dt_bias"], dt_softplus=True, slot_idx=torch.tensor([1, 0]))
    assert y.dtype == x_dtype and state.dtype == torch.bfloat16
    y_rec, final = ssd_recurrence_ref(*(seq[k].to(torch.float32) for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")),
                                      dt_softplus=True, initial_states=init[[1, 0]].float(),
                                      return_final_states=True)
    torch.testing.assert_close(state[[1, 0]], final.to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(y, y_rec[:, 0].to(x_dtype), rtol=0, atol=0)


def test_bad_inputs():
    seq, randn = make_inputs(3, 2, 1, 2)
    state = randn(3, H, P, N)
    args = [seq["x"][:, 0], seq["dt"][:, 0], seq["A"], seq["B"][:, 0], seq["C"][:, 0]]
    with pytest.raises(ValueError, match="state must be 4-D"):
        ssd_state_update_ref(state[0], *args)
    with pytest.raises(ValueError, match="state must have shape"):
        ssd_state_update_ref(state[:, :2], *args)
    with pytest.raises(ValueError, match="dt must have shape"):
        ssd_state_update_ref(state, args[0], args[1][:, :3], *args[2:])
    with pytest.raises(TypeError, match="A must have a floating-point dtype"):
        ssd_state_update_ref(state, args[0], args[1], args[2].to(torch.int32), *args[3:])
    with pytest.raises(ValueError, match=r"slot_idx values must lie in \[0, S_slots=3\)"):
        ssd_state_update_ref(state, *args, slot_idx=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"slot_idx must have shape"):
        ssd_state_update_ref(state, *args, slot_idx=torch.tensor([0]))
    with pytest.raises(ValueError, match="without slot_idx, state needs at least B = 2 slots"):
        ssd_state_update_ref(state[:1], *args)
    with pytest.raises(ValueError, match="dt_bias must have shape"):
        ssd_state_update_ref(state, *args, dt_bias=seq["dt_bias"][:2])
