"""ssd_scan (Triton forward: chunk_state -> state_passing -> chunk_scan) against the float64 reference, under the
DESIGN error rule; the backward is autograd of the reference. CPU: Triton's interpreter at small shapes (fp16/fp32);
`cuda`: NemotronH shapes (H=64, P=64, G=8, N=128, chunk 128, bf16) and a 600K-token run past 2^31 elements."""
import pytest
import torch
from mamba_checks import BWD, F64, FWD, aot_lines, assert_error_rule, assert_state_rule, interpret  # noqa: F401

from nemotron_kernels.ops.ssd_scan import ssd_scan
from nemotron_kernels.reference.ssd_scan import ssd_scan_ref

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def make_inputs(seed, bsz, seqlen, nheads, headdim, ngroups, dstate, dtype, cu=None, init=False, extras=True,
                device="cpu"):
    """Random SSD inputs in `dtype` (A, D, dt_bias in fp32 like the model's parameters)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    nstates = bsz if cu is None else len(cu) - 1
    t = dict(x=randn(bsz, seqlen, nheads, headdim),
             dt=randn(bsz, seqlen, nheads) if extras else 0.05 + 0.4 * torch.rand(bsz, seqlen, nheads, generator=g,
                                                                               dtype=F64),
             B=randn(bsz, seqlen, ngroups, dstate), C=randn(bsz, seqlen, ngroups, dstate))
    t = {k: v.to(device=device, dtype=dtype) for k, v in t.items()}
    t["A"] = (-torch.exp(0.5 * randn(nheads))).to(device=device, dtype=torch.float32)
    t["D"] = randn(nheads).to(device=device, dtype=torch.float32) if extras else None
    t["dt_bias"] = (0.5 * randn(nheads)).to(device=device, dtype=torch.float32) if extras else None
    t["dt_softplus"] = extras
    t["initial_states"] = randn(nstates, nheads, headdim, dstate).to(device=device, dtype=torch.float32) \
        if init else None
    t["cu_seqlens"] = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=device)
    return t


def to64(inputs):
    return {k: v.to(F64) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()}


def check_forward(inputs, chunk_size):
    y, final = ssd_scan(**inputs, chunk_size=chunk_size, return_final_states=True)
    y64, final64 = ssd_scan_ref(**to64(inputs), chunk_size=chunk_size, return_final_states=True)
    y_low, final_low = ssd_scan_ref(**inputs, chunk_size=chunk_size, return_final_states=True)
    assert y.dtype == inputs["x"].dtype
    assert_error_rule("y", y, y64, y_low, FWD)
    assert_state_rule("final_states", final, final64, final_low, inputs["x"].dtype, FWD)


CASES = {   # id: (bsz, seqlen, nheads, headdim, ngroups, dstate, chunk, dtype, cu_seqlens, init, extras)
    "batched-multi-segment": (2, 37, 4, 16, 2, 16, 16, torch.float32, None, False, True),
    "init-fp16-G=H": (2, 37, 4, 16, 4, 16, 16, torch.float16, None, True, True),
    "packed-uneven-init": (1, 50, 4, 16, 1, 16, 16, torch.float32, [0, 3, 3, 20, 50], True, True),
    "packed-fp16": (1, 40, 2, 16, 1, 16, 16, torch.float16, [0, 17, 40], False, True),
    "L<chunk-one-segment": (1, 7, 2, 16, 2, 16, 16, torch.float32, None, True, True),
    "chunk32-split-rows-odd-P-N": (1, 70, 2, 12, 1, 20, 32, torch.float32, None, True, True),
    "no-extras": (1, 20, 2, 16, 1, 16, 16, torch.float32, None, False, False),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.usefixtures("interpret")
def test_interpreter_matches_reference(case):
    bsz, seqlen, nheads, headdim, ngroups, dstate, chunk, dtype, cu, init, extras = CASES[case]
    inputs = make_inputs(len(case), bsz, seqlen, nheads, headdim, ngroups, dstate, dtype, cu, init, extras)
    check_forward(inputs, chunk)


@pytest.mark.usefixtures("interpret")
def test_interpreter_y_only_and_strided():
    """return_final_states=False returns y alone; x, B, C as strided views of one conv output row (as in the model)."""
    g = torch.Generator().manual_seed(3)
    bsz, seqlen, nheads, headdim, ngroups, dstate = 1, 24, 2, 16, 1, 16
    xbc = torch.randn(bsz, seqlen, nheads * headdim + 2 * ngroups * dstate, generator=g)
    x = xbc[..., :nheads * headdim].view(bsz, seqlen, nheads, headdim)
    B = xbc[..., nheads * headdim:nheads * headdim + ngroups * dstate].view(bsz, seqlen, ngroups, dstate)
    C = xbc[..., nheads * headdim + ngroups * dstate:].view(bsz, seqlen, ngroups, dstate)
    dt = torch.randn(bsz, seqlen, nheads + 3, generator=g)[..., :nheads]
    A = -torch.rand(nheads, generator=g) - 0.5
    y = ssd_scan(x, dt, A, B, C, dt_softplus=True, chunk_size=16)
    assert isinstance(y, torch.Tensor)
    y_ref = ssd_scan_ref(x.contiguous(), dt.contiguous(), A, B.contiguous(), C.contiguous(), dt_softplus=True,
                         chunk_size=16)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("interpret")
def test_interpreter_backward_is_reference_autograd():
    inputs = make_inputs(5, 1, 20, 2, 16, 1, 16, torch.float32, init=True)
    names = ["x", "dt", "A", "B", "C", "D", "dt_bias", "initial_states"]
    leaves = {k: inputs[k].clone().requires_grad_() for k in names}
    leaves64 = {k: inputs[k].to(F64).requires_grad_() for k in names}
    leaves32 = {k: inputs[k].clone().requires_grad_() for k in names}
    outs = []
    for fn, lv in ((ssd_scan, leaves), (ssd_scan_ref, leaves64), (ssd_scan_ref, leaves32)):
        y, final = fn(**lv, dt_softplus=True, chunk_size=16, return_final_states=True)
        (y * torch.linspace(-1, 1, y.numel()).view(y.shape).to(y.dtype)).sum().add(final.sum()).backward()
        outs.append(lv)
    for k in names:
        assert_error_rule(f"d{k}", outs[0][k].grad, outs[1][k].grad, outs[2][k].grad, BWD)


@pytest.mark.usefixtures("interpret")
def test_interpreter_empty_sequence_batch():
    inputs = make_inputs(2, 2, 0, 2, 16, 1, 16, torch.float32, init=True)
    y, final = ssd_scan(**inputs, chunk_size=16, return_final_states=True)
    assert y.shape == (2, 0, 2, 16)
    torch.testing.assert_close(final, inputs["initial_states"])


def test_dispatch_to_reference(monkeypatch):
    """bf16 in the interpreter, chunk sizes the kernels do not take, and CPU without the interpreter -> reference."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    inputs = make_inputs(1, 1, 10, 2, 16, 1, 16, torch.bfloat16)
    assert torch.equal(ssd_scan(**inputs, chunk_size=16), ssd_scan_ref(**inputs, chunk_size=16))
    inputs = make_inputs(1, 1, 10, 2, 16, 1, 16, torch.float32)
    assert torch.equal(ssd_scan(**inputs, chunk_size=12), ssd_scan_ref(**inputs, chunk_size=12))
    monkeypatch.delenv("TRITON_INTERPRET")
    assert torch.equal(ssd_scan(**inputs, chunk_size=16), ssd_scan_ref(**inputs, chunk_size=16))


@pytest.mark.usefixtures("interpret")
def test_bad_input_named():
    inputs = make_inputs(1, 2, 10, 2, 16, 1, 16, torch.float32, init=True)
    with pytest.raises(ValueError, match="initial_states"):
        ssd_scan(**{**inputs, "initial_states": inputs["initial_states"][:1]}, chunk_size=16)
    with pytest.raises(ValueError, match="batch dimension must be 1"):
        ssd_scan(**{**inputs, "initial_states": None, "cu_seqlens": torch.tensor([0, 10], dtype=torch.int32)},
                 chunk_size=16)
    with pytest.raises(ValueError, match="dt"):
        ssd_scan(**{**inputs, "dt": inputs["dt"][:, :5]}, chunk_size=16)


@pytest.mark.usefixtures("interpret")
def test_custom_op_registration():
    inputs = make_inputs(4, 1, 20, 2, 16, 1, 16, torch.float32, cu=[0, 7, 20], init=True)
    args = (inputs["x"], inputs["dt"], inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["dt_bias"], True, 16,
            inputs["initial_states"], inputs["cu_seqlens"], True)
    torch.library.opcheck(torch.ops.nemotron_kernels.ssd_scan_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_aot_compile_sm90():
    assert len(aot_lines("ssd_scan_chunk_state")) == 2
    assert len(aot_lines("ssd_scan_state_passing")) == 2
    scan = aot_lines("ssd_scan_chunk_scan")
    assert len(scan) == 4 and all(line.endswith("| wgmma") for line in scan), scan


NEMOTRON = dict(nheads=64, headdim=64, ngroups=8, dstate=128)


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["B2-L1000", "B1-L4096", "packed-init", "B4-L127"])
def test_cuda_nemotron_shapes(case):
    if case == "B2-L1000":
        inputs = make_inputs(1, 2, 1000, dtype=torch.bfloat16, device="cuda", **NEMOTRON)
    elif case == "B1-L4096":
        inputs = make_inputs(2, 1, 4096, dtype=torch.bfloat16, device="cuda", init=True, **NEMOTRON)
    elif case == "packed-init":
        inputs = make_inputs(3, 1, 3000, dtype=torch.bfloat16, device="cuda", cu=[0, 1, 130, 131, 2000, 3000],
                             init=True, **NEMOTRON)
    else:
        inputs = make_inputs(4, 4, 127, dtype=torch.bfloat16, device="cuda", init=True, **NEMOTRON)
    check_forward(inputs, 128)


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_600k_tokens_past_2_31_elements():
    """600K tokens at NemotronH shapes: x holds 2.46e9 elements and the chunk-state buffer 2.4e9, so every offset
    past 2^31 is exercised. The tail of y and the final state must continue the scan of the prefix exactly."""
    seqlen, tail = 600_000, 1000
    inputs = make_inputs(6, 1, seqlen, dtype=torch.bfloat16, device="cuda", **NEMOTRON)
    y, final = ssd_scan(**inputs, chunk_size=128, return_final_states=True)
    head = {k: (v[:, :seqlen - tail] if k in ("x", "dt", "B", "C") else v) for k, v in inputs.items()}
    _, state_mid = ssd_scan(**head, chunk_size=128, return_final_states=True)
    rest = {k: (v[:, seqlen - tail:] if k in ("x", "dt", "B", "C") else v) for k, v in inputs.items()}
    rest["initial_states"] = state_mid
    y64, final64 = ssd_scan_ref(**to64(rest), chunk_size=128, return_final_states=True)
    y_low, final_low = ssd_scan_ref(**rest, chunk_size=128, return_final_states=True)
    assert_error_rule("y tail", y[:, seqlen - tail:], y64, y_low, FWD)
    assert_state_rule("final_states", final, final64, final_low, torch.bfloat16, FWD)
