"""ssd_state_update (Triton decode step, in place on state slots) against the float64 reference, under the DESIGN
error rule. CPU: Triton's interpreter at small shapes; `cuda`: NemotronH shapes (H=64, P=64, G=8, N=128)."""
import pytest
import torch
from mamba_checks import F64, FWD, aot_lines, assert_error_rule  # noqa: F401

from nemotron_kernels.ops.ssd_state_update import ssd_state_update
from nemotron_kernels.reference.ssd_state_update import ssd_state_update_ref

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def make_inputs(seed, bsz, nheads, headdim, ngroups, dstate, nslots, dtype, state_dtype, device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    args = dict(x=randn(bsz, nheads, headdim), dt=randn(bsz, nheads), B=randn(bsz, ngroups, dstate),
                C=randn(bsz, ngroups, dstate))
    args = {k: v.to(device=device, dtype=dtype) for k, v in args.items()}
    args["A"] = -torch.exp(0.5 * randn(nheads)).to(device=device, dtype=torch.float32)
    extras = dict(D=randn(nheads).to(device=device, dtype=torch.float32),
                  dt_bias=(0.5 * randn(nheads)).to(device=device, dtype=torch.float32))
    state = randn(nslots, nheads, headdim, dstate).to(device=device, dtype=state_dtype)
    return state, args, extras


def check_step(state, args, extras, dt_softplus, slot_idx):
    """y and the updated state (2x rule; the state against the same-dtype reference's rounding); other slots
    untouched."""
    s_kernel, s64, s_low = state.clone(), state.to(F64), state.clone()
    y = ssd_state_update(s_kernel, **args, **extras, dt_softplus=dt_softplus, slot_idx=slot_idx)
    y64 = ssd_state_update_ref(s64, **{k: v.to(F64) for k, v in {**args, **extras}.items()},
                               dt_softplus=dt_softplus, slot_idx=slot_idx)
    y_low = ssd_state_update_ref(s_low, **args, **extras, dt_softplus=dt_softplus, slot_idx=slot_idx)
    assert y.dtype == args["x"].dtype and s_kernel.dtype == state.dtype
    assert_error_rule("y", y, y64, y_low, FWD)
    assert_error_rule("state", s_kernel, s64, s_low, FWD)
    rows = torch.arange(args["x"].shape[0]) if slot_idx is None else slot_idx.long().cpu()
    others = torch.ones(state.shape[0], dtype=torch.bool)
    others[rows] = False
    assert torch.equal(s_kernel[others.to(state.device)], state[others.to(state.device)]), "other slots changed"


@pytest.mark.parametrize("dtype,state_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float32),
                                               (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("ngroups", [1, 4])
@pytest.mark.usefixtures("interpret")
def test_interpreter_matches_reference(dtype, state_dtype, ngroups):
    state, args, extras = make_inputs(ngroups, 3, 4, 6, ngroups, 20, 5, dtype, state_dtype)
    check_step(state, args, extras, True, torch.tensor([4, 0, 2], dtype=torch.int32))


@pytest.mark.usefixtures("interpret")
def test_interpreter_no_extras_no_slots():
    state, args, _ = make_inputs(3, 2, 2, 16, 2, 16, 2, torch.float32, torch.float32)
    args["dt"] = args["dt"].abs() + 0.05
    check_step(state, args, {}, False, None)


@pytest.mark.usefixtures("interpret")
def test_interpreter_steps_match_scan():
    """Three decode steps from a prefill's final state == the SSD scan over all tokens (chunked reference)."""
    from nemotron_kernels.reference.ssd_scan import ssd_scan_ref
    g = torch.Generator().manual_seed(7)
    bsz, seqlen, nheads, headdim, ngroups, dstate = 2, 9, 4, 4, 2, 16
    x, dt = torch.randn(bsz, seqlen, nheads, headdim, generator=g), torch.randn(bsz, seqlen, nheads, generator=g)
    B, C = (torch.randn(bsz, seqlen, ngroups, dstate, generator=g) for _ in range(2))
    A, D, dt_bias = -torch.rand(nheads, generator=g) - 0.1, torch.randn(nheads, generator=g), torch.randn(nheads)
    kw = dict(A=A, D=D, dt_bias=dt_bias, dt_softplus=True)
    y_full = ssd_scan_ref(x, dt, B=B, C=C, chunk_size=4, **kw)
    _, state = ssd_scan_ref(x[:, :6], dt[:, :6], B=B[:, :6], C=C[:, :6], chunk_size=4, return_final_states=True, **kw)
    state = state.contiguous()
    for t in range(6, 9):
        y_t = ssd_state_update(state, x[:, t], dt[:, t], B=B[:, t], C=C[:, t], **kw)
        torch.testing.assert_close(y_t, y_full[:, t], rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("interpret")
def test_interpreter_reads_only_what_it_writes(assert_reads_only_written):
    """P = 6 (4-row blocks: the second half past P) and N = 20 (a 32-column block), with slots, D, dt_bias and
    softplus and without any: with torch.empty poisoned as NaN, y and the updated state equal a plain run's, so
    the kernel writes all of y."""
    state, args, extras = make_inputs(9, 3, 4, 6, 2, 20, 5, torch.float16, torch.float32)
    options = {"slots, D, dt_bias": dict(extras, dt_softplus=True, slot_idx=torch.tensor([4, 0, 2])), "plain": {}}

    def run():
        out = {}
        for name, kw in options.items():
            s = state.clone()
            out[f"y ({name})"] = ssd_state_update(s, **args, **kw)
            out[f"state ({name})"] = s
        return out

    assert_reads_only_written(run)


def test_dispatch(monkeypatch):
    """No interpreter (CPU) or autograd wanted -> the reference."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    state, args, extras = make_inputs(1, 2, 2, 4, 1, 8, 2, torch.float32, torch.float32)
    s1, s2 = state.clone(), state.clone()
    assert torch.equal(ssd_state_update(s1, **args, **extras), ssd_state_update_ref(s2, **args, **extras))
    assert torch.equal(s1, s2)


@pytest.mark.usefixtures("interpret")
def test_bad_input_named():
    state, args, _ = make_inputs(1, 2, 4, 4, 2, 8, 3, torch.float32, torch.float32)
    with pytest.raises(ValueError, match="slot_idx"):
        ssd_state_update(state, **args, slot_idx=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="slot_idx must not repeat"):
        ssd_state_update(state, **args, slot_idx=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="B"):
        ssd_state_update(state, **{**args, "B": args["B"][:, :, :4]})
    with pytest.raises(ValueError, match="G"):
        ssd_state_update(state, **{**args, "B": args["B"][:, :1].expand(2, 3, 8),
                                   "C": args["C"][:, :1].expand(2, 3, 8)})


@pytest.mark.usefixtures("interpret")
def test_custom_op_registration():
    state, args, extras = make_inputs(2, 2, 4, 4, 2, 16, 3, torch.float32, torch.float32)
    torch.library.opcheck(torch.ops.nemotron_kernels.ssd_state_update.default,
                          (state, args["x"], args["dt"], args["A"], args["B"], args["C"], extras["D"],
                           extras["dt_bias"], True, torch.tensor([2, 0])),
                          test_utils=("test_schema", "test_faketensor"))


def test_aot_compile_sm90():
    assert len(aot_lines("ssd_state_update")) == 4


@pytest.mark.cuda
@pytest.mark.parametrize("bsz", [1, 256])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_cuda_nemotron_shapes(bsz, state_dtype):
    nslots = bsz + 17
    state, args, extras = make_inputs(bsz, bsz, 64, 64, 8, 128, nslots, torch.bfloat16, state_dtype, device="cuda")
    slot_idx = torch.randperm(nslots, generator=torch.Generator().manual_seed(0))[:bsz].int().cuda()
    check_step(state, args, extras, True, slot_idx)


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_slot_offsets_past_2_31():
    """A slot pool of 4200 NemotronH states (2.2e9 fp32 elements): the last slot is read and written with int64
    offsets (a random state there, so a wrong read shows in y too), every other slot stays zero. Error rule: y and
    the state against the reference in the kernel's dtypes (y is bf16 with |y| in the tens, where a bf16 ulp is
    0.06-0.25: no absolute tolerance)."""
    nslots = 4200
    state = torch.zeros(nslots, 64, 64, 128, device="cuda", dtype=torch.float32)
    state0, args, extras = make_inputs(5, 1, 64, 64, 8, 128, 1, torch.bfloat16, torch.float32, device="cuda")
    state[-1] = state0[0]
    slot = torch.tensor([nslots - 1], device="cuda", dtype=torch.int32)
    y = ssd_state_update(state, **args, **extras, dt_softplus=True, slot_idx=slot)
    s64, s_low = state0.to(F64), state0.clone()
    y64 = ssd_state_update_ref(s64, **{k: v.double() for k, v in {**args, **extras}.items()}, dt_softplus=True)
    y_low = ssd_state_update_ref(s_low, **args, **extras, dt_softplus=True)
    assert_error_rule("y", y, y64, y_low, FWD)
    assert_error_rule("state", state[-1:], s64, s_low, FWD)
    assert state[:-1].abs().max().item() == 0
