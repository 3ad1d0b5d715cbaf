"""ssd_scan (Triton forward: chunk_state -> state_passing -> chunk_scan; Triton backward: recomputed states ->
bwd_chunk_state -> state_passing -> bwd da / dx / dC / dB) against the float64 reference and its autograd, under
the DESIGN error rule. CPU: Triton's interpreter at small shapes (fp16/fp32); `cuda`: NemotronH shapes (H=64,
P=64, G=8, N=128, chunk 128, bf16), backward determinism, and 600K-token runs past 2^31 elements."""
import importlib
import os
import subprocess
import sys

import pytest
import torch
from mamba_checks import BWD, F64, FWD, ROOT, aot_lines, assert_error_rule, assert_state_rule  # noqa: F401

from nemotron_kernels.ops.ssd_scan import ssd_scan
from nemotron_kernels.reference.ssd_scan import ssd_recurrence_ref, ssd_scan_ref
from nemotron_kernels.testing import max_error

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
    "packed-empty-no-init": (1, 30, 2, 16, 1, 16, 16, torch.float32, [0, 0, 13, 13, 30], False, True),
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


GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_states")
PARAM_GRADS = ("A", "D", "dt_bias", "initial_states")    # fp32 tensors whose gradients sum low-precision terms
HEAD_SUMS = ("A", "D", "dt_bias")                         # one number per head: a sum over every token


def _recurrence(chunk_size=None, **inputs):
    return ssd_recurrence_ref(**inputs)


def grads(fn, inputs, chunk_size, dy, dfinal):
    """Gradients of sum(y * dy) + sum(final * dfinal) (dfinal None: y alone, return_final_states=False) w.r.t. every
    floating input present, as {name: grad}."""
    leaves = {k: (v.detach().clone().requires_grad_() if k in GRAD_NAMES and v is not None else v)
              for k, v in inputs.items()}
    if dfinal is None:
        y = fn(**leaves, chunk_size=chunk_size)
        outs, out_grads = [y], [dy.to(y.dtype)]
    else:
        y, final = fn(**leaves, chunk_size=chunk_size, return_final_states=True)
        outs, out_grads = [y, final], [dy.to(y.dtype), dfinal.to(final.dtype)]
    wanted = [k for k in GRAD_NAMES if leaves.get(k) is not None]
    got = torch.autograd.grad(outs, [leaves[k] for k in wanted], out_grads)
    return dict(zip(wanted, got))


def check_backward(inputs, chunk_size, seed=0, with_final=True, dy_zero=False):
    """Every gradient of the kernels against autograd of the float64 reference (rule: BWD); the same-dtype baseline is
    the reference's autograd on the same inputs (it computes in fp32). Gradients of the fp32 parameters (A, D, dt_bias,
    initial_states) sum terms the kernels multiply in the input dtype: assert_state_rule. For fp32 inputs the per-head
    sums dA, dD, ddt_bias carry a few ulps of summation-order noise that differs between torch algorithms (the fp32
    chunked reference, the same at twice the chunk and the fp32 recurrence each win on some seeds, by up to ~20x):
    their yardstick is the largest error of the three."""
    g = torch.Generator().manual_seed(100 + seed)
    x = inputs["x"]
    nstates = x.shape[0] if inputs["cu_seqlens"] is None else inputs["cu_seqlens"].numel() - 1
    dy = torch.randn(x.shape, generator=g, dtype=F64).to(x.device, x.dtype)
    if dy_zero:
        dy.zero_()
    dfinal = torch.randn(nstates, x.shape[2], x.shape[3], inputs["B"].shape[3], generator=g,
                         dtype=F64).to(x.device, torch.float32) if with_final else None
    got = grads(ssd_scan, inputs, chunk_size, dy, dfinal)
    ref64 = grads(ssd_scan_ref, to64(inputs), chunk_size, dy.to(F64), None if dfinal is None else dfinal.to(F64))
    ref_low = grads(ssd_scan_ref, inputs, chunk_size, dy, dfinal)
    if x.dtype == torch.float32:
        for fn, chunk in ((_recurrence, chunk_size), (ssd_scan_ref, 2 * chunk_size)):
            ref_alt = grads(fn, inputs, chunk, dy, dfinal)
            for k in HEAD_SUMS:
                if k in ref_low and max_error(ref_alt[k], ref64[k]) > max_error(ref_low[k], ref64[k]):
                    ref_low[k] = ref_alt[k]
    assert set(got) == set(ref64)
    for k in got:
        assert got[k].dtype == inputs[k].dtype, f"d{k}: dtype {got[k].dtype} != {inputs[k].dtype}"
        if k in PARAM_GRADS:
            assert_state_rule(f"d{k}", got[k], ref64[k], ref_low[k], x.dtype, BWD)
        else:
            assert_error_rule(f"d{k}", got[k], ref64[k], ref_low[k], BWD)


BWD_CASES = {   # id: (bsz, seqlen, nheads, headdim, ngroups, dstate, chunk, dtype, cu_seqlens, init, extras)
    "batched-multi-segment-L%chunk": (2, 37, 4, 16, 2, 16, 16, torch.float32, None, False, True),
    "init-fp16-G=H": (2, 37, 4, 16, 4, 16, 16, torch.float16, None, True, True),
    "packed-uneven-empty-init": (1, 50, 4, 16, 1, 16, 16, torch.float32, [0, 3, 3, 20, 50], True, True),
    "packed-fp16-G=1": (1, 40, 2, 16, 1, 16, 16, torch.float16, [0, 17, 40], False, True),
    "L<chunk-B1": (1, 7, 2, 16, 2, 16, 16, torch.float32, None, True, True),
    "chunk32-split-rows-odd-P-N": (1, 70, 2, 12, 1, 20, 32, torch.float32, None, True, True),
    "no-D-no-dt_bias-no-softplus": (1, 20, 2, 16, 1, 16, 16, torch.float32, None, False, False),
}


@pytest.mark.parametrize("case", list(BWD_CASES))
@pytest.mark.usefixtures("interpret")
def test_interpreter_backward_matches_reference(case):
    bsz, seqlen, nheads, headdim, ngroups, dstate, chunk, dtype, cu, init, extras = BWD_CASES[case]
    inputs = make_inputs(len(case) + 7, bsz, seqlen, nheads, headdim, ngroups, dstate, dtype, cu, init, extras)
    check_backward(inputs, chunk, seed=len(case))


@pytest.mark.parametrize("mode", ["y-only", "final-only"])
@pytest.mark.usefixtures("interpret")
def test_interpreter_backward_from_y_or_final_alone(mode):
    """return_final_states=False (no final-state gradient), and a loss on the final states alone (dy = 0)."""
    inputs = make_inputs(11, 1, 45, 2, 16, 1, 16, torch.float32, cu=[0, 20, 45], init=True)
    check_backward(inputs, 16, seed=3, with_final=mode == "final-only", dy_zero=mode == "final-only")


@pytest.mark.usefixtures("interpret")
def test_interpreter_backward_runs_the_kernels(monkeypatch):
    """The autograd Function calls the Triton backward op (not the reference's autograd) for fp32/fp16 CPU tensors
    in the interpreter, and the gradients of two calls are bitwise equal."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    calls = []
    real_bwd = ssd_ops.ssd_scan_bwd

    def spy(*args):
        calls.append(1)
        return real_bwd(*args)

    monkeypatch.setattr(ssd_ops, "ssd_scan_bwd", spy)
    inputs = make_inputs(12, 1, 40, 2, 16, 1, 16, torch.float32, init=True)
    dy = torch.randn(inputs["x"].shape)
    dfinal = torch.randn(1, 2, 16, 16)
    first = grads(ssd_scan, inputs, 16, dy, dfinal)
    second = grads(ssd_scan, inputs, 16, dy, dfinal)
    assert len(calls) == 2
    for k in first:
        assert torch.equal(first[k], second[k]), f"d{k} differs between two runs"


def count_chunk_state_passes(monkeypatch) -> list:
    """A list that gains an entry at each stage 0-2 pass of ssd_scan (its _chunk_states calls) from here on."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    calls = []
    real = ssd_ops._chunk_states
    monkeypatch.setattr(ssd_ops, "_chunk_states", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize("cu", [None, [0, 20, 21, 70]])
def test_interpreter_backward_reuses_the_forward_chunk_states(monkeypatch, cu):
    """The autograd backward takes the forward's chunk states (stages 0-2 run once per training step, not twice),
    and its gradients are bitwise those of the backward op recomputing them; a saved state of the wrong shape is
    refused by name."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    inputs = make_inputs(16, 1 if cu else 2, 70, 4, 32, 2, 16, torch.float32, cu=cu, init=True)
    nstates = len(cu) - 1 if cu else 2
    dy, dfinal = torch.randn(inputs["x"].shape), torch.randn(nstates, 4, 32, 16)
    calls = count_chunk_state_passes(monkeypatch)
    got = grads(ssd_scan, inputs, 16, dy, dfinal)
    assert len(calls) == 1, "the backward recomputed the chunk states"
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")]
    recomputed = ssd_ops.ssd_scan_bwd(*args, True, 16, inputs["initial_states"], inputs["cu_seqlens"], dy, dfinal)
    assert len(calls) == 2
    for k, want in zip(("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_states"), recomputed):
        assert torch.equal(got[k], want), f"d{k}: the saved chunk states give other gradients than recomputed ones"
    saved = list(ssd_ops.ssd_scan_fwd(*args, True, 16, inputs["initial_states"], inputs["cu_seqlens"], True)[2:])
    with pytest.raises(ValueError, match="dtcs"):
        ssd_ops.ssd_scan_bwd(*args, True, 16, inputs["initial_states"], inputs["cu_seqlens"], dy, dfinal,
                             *saved[:3], saved[3][:, :, :, 1:])


@pytest.mark.usefixtures("interpret")
def test_interpreter_bf16_single_segment_backward_takes_the_saved_states(monkeypatch):
    """bf16 keeps its chunk states in bf16, and one segment has no carry: the forward's empty carry must be the
    state dtype the backward checks for (it was fp32, and the training step raised). Values are not compared: the
    interpreter's bf16 dots are not the GPU's (the GPU tests cover bf16 values)."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    inputs = make_inputs(17, 1, 10, 2, 16, 1, 16, torch.bfloat16)
    calls = count_chunk_state_passes(monkeypatch)
    leaves = {k: inputs[k].detach().requires_grad_() for k in ("x", "dt", "B", "C")}
    inp = {**inputs, **leaves}
    # the autograd Function itself: on the CPU the public op sends bf16 to the reference
    y = ssd_ops.SSDScanFn.apply(*(inp[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")), None, None, True, 16,
                                False)
    y.float().sum().backward()
    assert len(calls) == 1, "the backward recomputed the chunk states"
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in leaves.values())


@pytest.mark.usefixtures("interpret")
def test_interpreter_other_tiles_match_default(monkeypatch):
    """Other tiles of every kernel (two P blocks, whole-chunk row blocks, one head per program) through the op's
    kernel_configs give the default tiles' outputs and gradients up to fp32 rounding (scripts/sweep_ssd.py's path)."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    inputs = make_inputs(13, 1, 70, 4, 32, 2, 16, torch.float32, init=True)
    dy, dfinal = torch.randn(inputs["x"].shape), torch.randn(1, 4, 32, 16)
    default = grads(ssd_scan, inputs, 32, dy, dfinal)
    y_default, final_default = ssd_scan(**inputs, chunk_size=32, return_final_states=True)
    over = {"chunk_state": dict(BLOCK_P=16), "bwd_chunk_state": dict(BLOCK_P=16),
            "chunk_scan": dict(BLOCK_M=32, BLOCK_P=16, HEADS_PER_PROG=1), "dx": dict(HEADS_PER_PROG=1),
            "da": dict(BLOCK_M=32, HEADS_PER_PROG=1), "dc": dict(BLOCK_M=32), "db": dict(BLOCK_M=32)}
    real = ssd_ops.kernel_configs
    monkeypatch.setattr(ssd_ops, "kernel_configs",
                        lambda *args: {k: dict(v, **over[k]) for k, v in real(*args).items()})
    tiled = grads(ssd_scan, inputs, 32, dy, dfinal)
    y, final = ssd_scan(**inputs, chunk_size=32, return_final_states=True)
    for name, a, b in [("y", y, y_default), ("final", final, final_default)] + \
            [(f"d{k}", tiled[k], default[k]) for k in default]:
        assert (a - b).abs().max() <= 1e-5 * b.abs().max(), f"{name}: other tiles differ from the default's"


@pytest.mark.usefixtures("interpret")
def test_interpreter_packed_reads_only_what_it_writes(assert_reads_only_written):
    """Packed sequences with chunks shorter than a row block (their second row block has no rows and returns) and
    spare table slots (which return): with scratch memory poisoned as NaN, y, the final states and every gradient
    equal a plain run's, so no kernel reads an element that no kernel wrote."""
    lens = [32, 5, 35, 1, 64]        # chunk 32, row blocks of 16: chunks of 5, 3 and 1 tokens; 9 slots for 7 chunks
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    inputs = make_inputs(15, 1, cu[-1], 4, 32, 2, 16, torch.float32, cu=cu, init=True)
    dy, dfinal = torch.randn(inputs["x"].shape), torch.randn(len(lens), 4, 32, 16)

    def run():
        y, final = ssd_scan(**inputs, chunk_size=32, return_final_states=True)
        return {"y": y, "final": final, **grads(ssd_scan, inputs, 32, dy, dfinal)}

    assert_reads_only_written(run)


@pytest.mark.usefixtures("interpret")
def test_interpreter_backward_empty_sequence_batch():
    inputs = make_inputs(2, 2, 0, 2, 16, 1, 16, torch.float32, init=True)
    dfinal = torch.randn(2, 2, 16, 16)
    got = grads(ssd_scan, inputs, 16, torch.zeros(inputs["x"].shape), dfinal)
    torch.testing.assert_close(got["initial_states"], dfinal)
    assert got["x"].shape == inputs["x"].shape and float(got["A"].abs().sum()) == 0.0


@pytest.mark.usefixtures("interpret")
def test_backward_custom_op_registration():
    inputs = make_inputs(4, 1, 20, 2, 16, 1, 16, torch.float32, cu=[0, 7, 20], init=True)
    dy = torch.randn(inputs["x"].shape)
    dfinal = torch.randn(2, 2, 16, 16)
    args = (inputs["x"], inputs["dt"], inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["dt_bias"], True, 16,
            inputs["initial_states"], inputs["cu_seqlens"], dy, dfinal)
    torch.library.opcheck(torch.ops.nemotron_kernels.ssd_scan_bwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))


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
    # bf16 keeps its chunk states in bf16, also the empty carry of a single segment (test_faketensor: metadata)
    half = make_inputs(4, 1, 10, 2, 16, 1, 16, torch.bfloat16)
    args = (half["x"], half["dt"], half["A"], half["B"], half["C"], None, None, True, 16, None, None, True)
    torch.library.opcheck(torch.ops.nemotron_kernels.ssd_scan_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    empty = make_inputs(4, 2, 0, 2, 16, 1, 16, torch.float32)        # no tokens: no chunk states to keep
    args = (empty["x"], empty["dt"], empty["A"], empty["B"], empty["C"], None, None, True, 16, None, None, True)
    torch.library.opcheck(torch.ops.nemotron_kernels.ssd_scan_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize("cu", [None, [0, 5, 5, 40, 47]])      # batched rows; packed, with an empty sequence
def test_interpreter_chunk_cumsum_is_the_float64_sums(cu):
    """Stage 0 alone: dt (+ bias, softplus; fp32 math) and, per chunk, the running sum of its dt A from the chunk's
    first token, whose fp32 hi part is that float64 sum rounded (to an ulp) and hi + lo holds it to ~1e-13 of the
    chunk's largest sum; tokens of other chunks never leak in."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    from nemotron_kernels.triton import mamba_common
    bsz, seqlen = (2, 37) if cu is None else (1, cu[-1])
    inputs = make_inputs(21, bsz, seqlen, 3, 16, 1, 16, torch.float32, cu=cu)
    dt, A, bias = inputs["dt"], inputs["A"], inputs["dt_bias"]
    chunk = 16
    nstates = bsz if cu is None else len(cu) - 1
    plan = ssd_ops._plan(inputs["x"], inputs["B"], chunk, inputs["cu_seqlens"], nstates)
    dtcs = mamba_common.kernel_module("ssd_scan_chunk_cumsum").chunk_cumsum_launch(
        dt, A, bias, plan["table"], plan["geometry"], True)                    # [3, B, H, L or n_table Q]
    dt64 = torch.nn.functional.softplus(dt.double() + bias.double())                  # [B, L, H]
    if cu is None:        # (row, token span, dtcs span) of each chunk
        spans = [(b, start, min(start + chunk, seqlen), start) for b in range(bsz) for start in range(0, seqlen, chunk)]
    else:                 # packed: slot gc's chunk at dtcs[..., gc * chunk:]
        seq_of, start_of, length_of = plan["table"][:3].tolist()
        spans = [(0, start, start + n, gc * chunk) for gc, (start, n) in enumerate(zip(start_of, length_of)) if n]
        assert sum(n for n in length_of) == seqlen and len(seq_of) == dtcs.shape[-1] // chunk
    for b, start, end, pos in spans:
        got_dt, hi, lo = dtcs[:, b, :, pos:pos + end - start]                      # [H, len] each
        torch.testing.assert_close(got_dt.double(), dt64[b, start:end].T, rtol=4e-6, atol=4e-7)
        want = torch.cumsum((got_dt * A[:, None]).double(), 1)                      # its own dt A, summed
        scale = want.abs().max().item()
        assert (hi.double() - want).abs().max() <= 2 ** -24 * scale, "hi is not the sum rounded to fp32"
        assert (hi.double() + lo.double() - want).abs().max() <= 1e-13 * scale, "hi + lo lost the float64 sum"


def test_aot_compile_sm90():
    assert len(aot_lines("ssd_scan_chunk_state")) == 2
    assert len(aot_lines("ssd_scan_state_passing")) == 5   # state passing, final states (3 variants + backward)
    assert len(aot_lines("ssd_scan_chunk_cumsum")) == 3     # batched, packed; the chunk table
    scan = aot_lines("ssd_scan_chunk_scan")   # 3 autotune tiles, packed and single-segment variants
    assert len(scan) == 5 and all(line.endswith("| wgmma") for line in scan), scan
    assert len(aot_lines("ssd_scan_bwd_chunk_state")) == 2
    bwd = aot_lines("ssd_scan_bwd_chunk_scan")   # dx (3 variants), da (2: 64-row tiles), dC, dB (2)
    assert len(bwd) == 8 and all(line.endswith("| wgmma") for line in bwd), bwd


NEMOTRON = dict(nheads=64, headdim=64, ngroups=8, dstate=128)


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["B2-L1000", "B1-L4096", "packed-init", "B4-L127"])
def test_cuda_nemotron_shapes(case):
    if case == "B2-L1000":
        inputs = make_inputs(1, 2, 1000, dtype=torch.bfloat16, device="cuda", **NEMOTRON)
    elif case == "B1-L4096":
        inputs = make_inputs(2, 1, 4096, dtype=torch.bfloat16, device="cuda", init=True, **NEMOTRON)
    elif case == "packed-init":   # with an empty sequence: its final state is its initial one
        inputs = make_inputs(3, 1, 3000, dtype=torch.bfloat16, device="cuda", cu=[0, 1, 130, 131, 131, 2000, 3000],
                             init=True, **NEMOTRON)
    else:
        inputs = make_inputs(4, 4, 127, dtype=torch.bfloat16, device="cuda", init=True, **NEMOTRON)
    check_forward(inputs, 128)


# (L, tail): L and L - tail not multiples of 128 take the Triton kernels everywhere; multiples of 128 take the
# Gluon ones on Hopper with Triton 3.6 (gluon_eligible)
LONG_CASES = {"triton": (600_000, 1000), "gluon": (600_064, 1024)}


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("case", list(LONG_CASES))
def test_cuda_600k_tokens_past_2_31_elements(case):
    """600K tokens at NemotronH shapes: x holds 2.46e9 elements and the chunk-state buffer 2.4e9, so every offset
    past 2^31 is exercised. The tail of y and the final state must continue the scan of the prefix exactly."""
    seqlen, tail = LONG_CASES[case]
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


BWD_CUDA_CASES = {   # id: (seed, bsz, seqlen, cu_seqlens, init)
    "B2-L2048": (21, 2, 2048, None, False),
    "B1-L8192-init": (22, 1, 8192, None, True),
    "B4-L1000-init": (23, 4, 1000, None, True),
    "packed-6-uneven-init": (24, 1, 6000, [0, 1, 130, 131, 2000, 2001, 6000], True),
}


@pytest.mark.cuda
@pytest.mark.parametrize("case", list(BWD_CUDA_CASES))
def test_cuda_backward_nemotron_shapes(case):
    """Every gradient (incl. final-state gradients) at NemotronH shapes in bf16 against float64 autograd."""
    seed, bsz, seqlen, cu, init = BWD_CUDA_CASES[case]
    inputs = make_inputs(seed, bsz, seqlen, dtype=torch.bfloat16, device="cuda", cu=cu, init=init, **NEMOTRON)
    check_backward(inputs, 128, seed=seed)


@pytest.mark.cuda
@pytest.mark.parametrize("packed", [False, True])
def test_cuda_backward_deterministic(packed):
    """Two backward passes on the same inputs give bitwise identical gradients (no atomics in the backward)."""
    cu = [0, 700, 701, 5000, 8192] if packed else None
    inputs = make_inputs(31, 1 if packed else 2, 8192, dtype=torch.bfloat16, device="cuda", cu=cu, init=True,
                         **NEMOTRON)
    g = torch.Generator(device="cuda").manual_seed(5)
    dy = torch.randn(inputs["x"].shape, generator=g, device="cuda").bfloat16()
    nstates = inputs["initial_states"].shape[0]
    dfinal = torch.randn(nstates, 64, 64, 128, generator=g, device="cuda")
    first = grads(ssd_scan, inputs, 128, dy, dfinal)
    second = grads(ssd_scan, inputs, 128, dy, dfinal)
    for k in first:
        assert torch.equal(first[k], second[k]), f"d{k} differs between two runs"


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("case", list(LONG_CASES))
def test_cuda_backward_600k_tokens_past_2_31_elements(case):
    """Backward at 600K tokens (x and the chunk-state buffers hold > 2^31 elements) with a loss on the last `tail`
    tokens of y and on the final state: the tail gradients equal float64 autograd of a scan over the tail started
    from the state the prefix leaves, and every gradient is finite."""
    seqlen, tail = LONG_CASES[case]
    inputs = make_inputs(7, 1, seqlen, dtype=torch.bfloat16, device="cuda", **NEMOTRON)
    g = torch.Generator(device="cuda").manual_seed(8)
    dy = torch.zeros(inputs["x"].shape, device="cuda", dtype=torch.bfloat16)
    dy[:, seqlen - tail:] = torch.randn(1, tail, 64, 64, generator=g, device="cuda").bfloat16()
    dfinal = torch.randn(1, 64, 64, 128, generator=g, device="cuda")
    got = grads(ssd_scan, inputs, 128, dy, dfinal)
    for k, v in got.items():
        assert torch.isfinite(v).all(), f"d{k}: non-finite values"
    head = {k: (v[:, :seqlen - tail] if k in ("x", "dt", "B", "C") else v) for k, v in inputs.items()}
    with torch.no_grad():
        _, state_mid = ssd_scan(**head, chunk_size=128, return_final_states=True)
    rest = {k: (v[:, seqlen - tail:] if k in ("x", "dt", "B", "C") else v) for k, v in inputs.items()}
    rest["initial_states"] = state_mid
    tail_dy = dy[:, seqlen - tail:]
    ref64 = grads(ssd_scan_ref, to64(rest), 128, tail_dy.to(F64), dfinal.to(F64))
    ref_low = grads(ssd_scan_ref, rest, 128, tail_dy, dfinal)
    for k in ("x", "dt", "B", "C"):
        assert_error_rule(f"d{k} tail", got[k][:, seqlen - tail:], ref64[k], ref_low[k], BWD)


@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize("lens", [[37], [0, 5, 0], [32, 5, 35, 1, 64], [0, 0, 96], [64, 0], [17, 0, 40] * 50],
                         ids=["one", "empty-ends", "partial", "leading-empty", "trailing-empty", "150-seqs"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_interpreter_chunk_table_kernel_is_the_reference(lens, index_dtype):
    """The GPU's one-launch chunk table equals ssd_chunk_table_ref's: exact chunk multiples, partial and empty
    sequences at either end, spare slots, and more sequences (150) than one step of the kernel's sequence loop
    (128) over several programs of slots."""
    from nemotron_kernels.reference.ssd_scan import ssd_chunk_table_ref
    from nemotron_kernels.triton import mamba_common
    cu = torch.tensor([0] + lens).cumsum(0).to(index_dtype)
    chunk = 32
    n_table = (int(cu[-1]) + len(lens) * (chunk - 1)) // chunk
    launch = mamba_common.kernel_module("ssd_scan_chunk_cumsum").chunk_table_launch
    for name, got, want in zip(("table", "last_chunk", "first_chunk"), launch(cu, chunk, n_table),
                               ssd_chunk_table_ref(cu, chunk, n_table)):
        assert torch.equal(got, want), f"{name}: {got.tolist()} != {want.tolist()}"


def test_packed_chunk_table_is_reused_for_the_same_cu_seqlens():
    """The model passes one cu_seqlens to every Mamba layer of a step: the chunk table (~35 small kernels) is made
    once per tensor, equal to a fresh one, and made again when the tensor changes in place or the chunk differs."""
    from nemotron_kernels.ops import ssd_scan as ops_ssd
    from nemotron_kernels._tensor_cache import derived
    cu = torch.tensor([0, 5, 5, 130, 300], dtype=torch.int32)

    def table(chunk, n_table):
        return derived(cu, "chunk_table", (chunk, n_table), lambda: ops_ssd._chunk_table(cu, chunk, n_table))
    first = table(64, 12)
    assert all(a is b for a, b in zip(first, table(64, 12)))                                   # reused
    assert all(torch.equal(a, b) for a, b in zip(first, ops_ssd._chunk_table(cu, 64, 12)))      # as fresh
    assert not any(a is b for a, b in zip(first, table(32, 16)))                               # other key
    cu[3] = 140                                                                                 # in place
    again = table(64, 12)
    assert all(torch.equal(a, b) for a, b in zip(again, ops_ssd._chunk_table(cu, 64, 12)))
    assert not torch.equal(again[0], first[0])


@pytest.mark.usefixtures("interpret")
def test_interpreter_packed_scan_keeps_its_chunk_table_on_cu_seqlens():
    """The kernels' packed path keeps the table on the cu_seqlens it was given; a second call with that tensor (the
    next layer) gives the same outputs as a call with a fresh copy of it."""
    from nemotron_kernels.ops import ssd_scan as ops_ssd
    g = torch.Generator().manual_seed(3)
    x, dt = torch.randn(1, 150, 2, 16, generator=g), torch.rand(1, 150, 2, generator=g)
    B, C, A = torch.randn(1, 150, 1, 16, generator=g), torch.randn(1, 150, 1, 16, generator=g), -torch.rand(2)
    cu = torch.tensor([0, 40, 40, 150], dtype=torch.int32)
    y1, f1 = ssd_scan(x, dt, A, B, C, chunk_size=32, cu_seqlens=cu, return_final_states=True)
    kept = cu._nk_chunk_table
    assert torch.equal(kept[1][0], ops_ssd._chunk_table(cu, 32, kept[0][-1])[0])
    y2, f2 = ssd_scan(x, dt, A, B, C, chunk_size=32, cu_seqlens=cu, return_final_states=True)
    assert cu._nk_chunk_table is kept
    y3, f3 = ssd_scan(x, dt, A, B, C, chunk_size=32, cu_seqlens=cu.clone(), return_final_states=True)
    assert torch.equal(y1, y2) and torch.equal(y2, y3) and torch.equal(f1, f2) and torch.equal(f2, f3)


# Hopper Gluon stages 1 and 3 (triton/ssd_scan_chunk_*_gluon.py), where ops/ssd_scan.py gluon_eligible holds

def test_gluon_platform_rules(monkeypatch):
    """triton/common.py gluon_platform (every Gluon kernel's gate), with the GPU's capability and Triton's version
    monkeypatched: Hopper (9.0) and Triton 3.6 only, compiled CUDA only, and NK_GLUON=0 turns it off; each rule
    refuses on its own."""
    from nemotron_kernels.triton import common
    monkeypatch.delenv("NK_GLUON", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(common, "_capability", lambda index: (9, 0))
    monkeypatch.setattr(common, "_triton_version", lambda: "3.6.0")
    cuda = torch.device("cuda", 0)
    assert common.gluon_platform(cuda) == (True, "Hopper, triton 3.6.0")
    monkeypatch.setenv("NK_GLUON", "1")
    assert common.gluon_platform(cuda)[0]
    refusals = {"NK_GLUON=0": lambda m: m.setenv("NK_GLUON", "0"),
                "interpreter": lambda m: m.setenv("TRITON_INTERPRET", "1"),
                "capability 8.0": lambda m: m.setattr(common, "_capability", lambda index: (8, 0)),
                "capability 10.0": lambda m: m.setattr(common, "_capability", lambda index: (10, 0)),
                "triton 3.8.0": lambda m: m.setattr(common, "_triton_version", lambda: "3.8.0"),
                "triton 3.5.1": lambda m: m.setattr(common, "_triton_version", lambda: "3.5.1")}
    for name, refuse in refusals.items():
        with monkeypatch.context() as m:
            refuse(m)
            ok, why = common.gluon_platform(cuda)
            assert not ok and why, f"{name}: not refused"
    assert common.gluon_platform(cuda)[0]
    assert common.gluon_platform(torch.device("cpu")) == (False, "cpu tensors")


def test_gluon_scope_rules(monkeypatch):
    """gluon_eligible's scope on CPU tensors (the platform monkeypatched to pass): bf16, chunk 128, batched L a
    positive multiple of 128 or packed with any tokens, P 64, N 128, any H / G, views a 2-D TMA descriptor takes (the
    model's conv-output views do), chunk_state's initial states with contiguous [P, N] rows; each rule refuses on
    its own. Unpatched, CPU tensors never go."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    bf16 = torch.bfloat16
    bsz, seqlen, nheads, headdim, ngroups, dstate = 2, 256, 8, 64, 2, 128
    hp, gn = nheads * headdim, ngroups * dstate

    def xbc(width=hp + 2 * gn, rows=seqlen, n=bsz):
        """x, B, C as the model makes them: views of one conv output [B, L, H*P + 2*G*N]."""
        buf = torch.empty(n, rows, width, dtype=bf16)[:, :seqlen]
        return (buf[..., :hp].view(n, seqlen, nheads, headdim), buf[..., hp:hp + gn].view(n, seqlen, ngroups, dstate),
                buf[..., hp + gn:hp + 2 * gn].view(n, seqlen, ngroups, dstate))

    def eligible(stage, x, B, C, chunk=128, packed=False, init=None):
        return ssd_ops.gluon_eligible(stage, x, B, C, chunk, packed, init)

    x, B, C = xbc()
    assert not eligible("chunk_state", x, B, C)[0], "CPU tensors must not take the Gluon kernels"
    monkeypatch.setattr(ssd_ops, "gluon_platform", lambda device: (True, "test"))
    contiguous = [t.contiguous() for t in (x, B, C)]
    for stage in ("chunk_state", "chunk_scan"):
        assert eligible(stage, x, B, C) == (True, "test"), stage
        assert eligible(stage, *contiguous)[0], stage
        assert eligible(stage, *xbc(rows=2 * seqlen, n=1))[0], f"{stage}: B = 1, any batch stride"
        assert eligible(stage, *(t[:, :, :1] for t in (x, B, C)))[0], f"{stage}: one head, one group"
    misaligned = torch.empty(x.numel() + 1, dtype=bf16)[1:].view(x.shape)
    view = "strides"
    one_row = xbc(rows=2 * seqlen, n=1)
    init = torch.zeros(bsz, nheads, headdim, dstate)
    for stage in ("chunk_state", "chunk_scan"):
        assert eligible(stage, *one_row, 128, True)[0], f"{stage}: packed"
        assert eligible(stage, *(t[:, :200] for t in one_row), 128, True)[0], f"{stage}: packed, any number of tokens"
        assert eligible(stage, *one_row, 128, True, init[:1])[0], f"{stage}: packed, initial states"
    assert eligible("chunk_state", x, B, C, 128, False, init)[0], "chunk_state: initial states"
    assert eligible("chunk_state", x, B, C, 128, False, init.bfloat16())[0], "chunk_state: initial states any dtype"
    init_rows_apart = torch.zeros(bsz, nheads, headdim, 2 * dstate)[..., :dstate]
    refusals = {   # name: (a word of the reason, stage, x, B, C, chunk, packed, initial_states)
        "packed chunk 64": ("chunk 128", "chunk_scan", *one_row, 64, True, None),
        "packed no tokens": ("tokens", "chunk_scan", *(t[:, :0] for t in one_row), 128, True, None),
        "chunk 64": ("chunk 128", "chunk_scan", x, B, C, 64, False, None),
        "L % 128": ("multiple", "chunk_state", x[:, :200], B[:, :200], C[:, :200], 128, False, None),
        "no tokens": ("positive", "chunk_state", x[:, :0], B[:, :0], C[:, :0], 128, False, None),
        "P 32": ("P = 64", "chunk_scan", x[..., :32], B, C, 128, False, None),
        "N 64": ("N = 128", "chunk_state", x, B[..., :64], C[..., :64], 128, False, None),
        "fp16 x": ("bf16", "chunk_state", x.half(), B, C, 128, False, None),
        "fp32 C": ("bf16", "chunk_scan", x, B, C.float(), 128, False, None),
        "initial states' rows apart": ("initial", "chunk_state", x, B, C, 128, False, init_rows_apart),
        "packed initial states' rows apart": ("initial", "chunk_state", *one_row, 128, True, init_rows_apart[:1]),
        "misaligned base": (view, "chunk_state", misaligned, B, C, 128, False, None),
        "heads not packed": (view, "chunk_scan", torch.empty(bsz, seqlen, nheads, 2 * headdim, dtype=bf16)[..., :64],
                             B, C, 128, False, None),
        "row stride not 16-byte": (view, "chunk_scan", *xbc(width=hp + 2 * gn + 4), 128, False, None),
        "batch rows uneven": (view, "chunk_state", *xbc(rows=2 * seqlen)[:2], C, 128, False, None),
    }
    for name, (word, stage, *args) in refusals.items():
        ok, why = eligible(stage, *args)
        assert not ok and word in why, f"{name}: {(ok, why)}"
    # what the other stage does not read does not matter
    assert eligible("chunk_scan", x, B, C, 128, False, init_rows_apart)[0]
    assert eligible("chunk_state", x, B, C.float())[0]


def test_gluon_aot_compile_sm90a():
    """The shipped Gluon kernels (stages 1 and 3, the backward's dx and dB / dC) compile for sm_90a with Triton 3.6
    (the Gluon API they are written for), in a fresh process as the other AOT builds (compiled mode; chunk_scan: the
    16 variants the op dispatches, one CTA a tile and persistent); chunk_state fits two CTAs an SM, as the op's
    segments assume (chunk_state_config's programs_per_sm), the others one."""
    import triton
    if not triton.__version__.startswith("3.6."):
        pytest.skip(f"the Gluon kernels are built for triton 3.6 only (this is {triton.__version__})")
    code = ("import importlib\n"
            "for mod in ('ssd_scan_chunk_state_gluon', 'ssd_scan_chunk_scan_gluon', 'ssd_scan_bwd_dx_gluon',\n"
            "            'ssd_scan_bwd_dbc_gluon'):\n"
            "    m = importlib.import_module('nemotron_kernels.triton.' + mod)\n"
            "    for name, ck in m.aot_compile_all():\n"
            "        wgmma = 'wgmma' if 'wgmma' in ck.asm['ptx'] else 'no-wgmma'\n"
            "        print('AOT', mod, ck.metadata.shared, wgmma, name, flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-6000:]
    lines = [line.split() for line in run.stdout.splitlines() if line.startswith("AOT ")]
    state = [words for words in lines if words[1] == "ssd_scan_chunk_state_gluon"]
    scan = [words for words in lines if words[1] == "ssd_scan_chunk_scan_gluon"]
    dx = [words for words in lines if words[1] == "ssd_scan_bwd_dx_gluon"]
    dbc = [words for words in lines if words[1] == "ssd_scan_bwd_dbc_gluon"]        # with and without the carries
    assert len(state) == 6 and len(scan) == 16 and len(dx) == 3 and len(dbc) == 2, run.stdout
    assert all(words[3] == "wgmma" for words in lines), run.stdout
    # an H200 SM holds 228 KB of shared memory, 1 KB of it reserved per CTA
    assert all(2 * (int(words[2]) + 1024) <= 228 * 1024 for words in state), state
    assert all(int(words[2]) + 1024 <= 228 * 1024 for words in scan + dx + dbc), scan + dx + dbc


def _gluon_or_skip():
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    ok, why = ssd_ops.gluon_platform(torch.device("cuda"))
    if not ok:
        pytest.skip(f"the Gluon SSD stages do not run here: {why}")


GLUON_LAUNCHERS = {   # stage: (module in nemotron_kernels.triton, launcher)
    "chunk_state": ("ssd_scan_chunk_state_gluon", "chunk_state_launch"),
    "chunk_scan": ("ssd_scan_chunk_scan_gluon", "chunk_scan_launch"),
    "dx": ("ssd_scan_bwd_dx_gluon", "bwd_dx_launch"),
    "dbc": ("ssd_scan_bwd_dbc_gluon", "bwd_dc_db_launch"),
}


def spy_gluon(monkeypatch, stages=("chunk_state", "chunk_scan")) -> list:
    """A list that gains the stage's name at each call of its Gluon launcher (GLUON_LAUNCHERS) from here on."""
    calls = []
    for stage in stages:
        mod_name, launcher = GLUON_LAUNCHERS[stage]
        mod = importlib.import_module(f"nemotron_kernels.triton.{mod_name}")
        real = getattr(mod, launcher)
        monkeypatch.setattr(mod, launcher, lambda *a, real=real, stage=stage: calls.append(stage) or real(*a))
    return calls


def bwd_args(inputs: dict, seed: int) -> list:
    """ssd_scan_bwd's arguments (dt softplus, chunk 128, no saved chunk states) on CUDA `inputs`, with a random dy
    and final-state gradient."""
    x = inputs["x"]
    nstates = x.shape[0] if inputs["cu_seqlens"] is None else inputs["cu_seqlens"].numel() - 1
    g = torch.Generator(device="cuda").manual_seed(seed)
    dy = torch.randn(x.shape, generator=g, device="cuda").bfloat16()
    dfinal = torch.randn(nstates, x.shape[2], x.shape[3], inputs["B"].shape[3], generator=g, device="cuda")
    return [inputs[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")] + [True, 128, inputs["initial_states"],
                                                                               inputs["cu_seqlens"], dy, dfinal]


def assert_bwd_matches_triton(gluon: tuple, triton_out: tuple, what: str) -> None:
    """ssd_scan_bwd's outputs with Gluon kernels against its NK_GLUON=0 run on the same inputs: dA, dD, ddt_bias
    within 1e-5 relative (fp64 sums of fp32 terms summed in another order); ddt within one ulp of dt's dtype per
    element, in at most 0.1% of them (an fp32 sum rounded once: the two kernels add in their own order, and on the
    H200 1 of 139,264 elements of B1-L2176 rounded the other way, session 30); the rest bitwise."""
    names = ("dx", "ddt", "dA", "dB", "dC", "dD", "ddt_bias", "dinit")
    for name, a, b in zip(names, gluon, triton_out):
        if name in ("dA", "dD", "ddt_bias"):
            err = (a - b).abs().max().item() / b.abs().max().item()
            assert err <= 1e-5, f"{name}: Gluon and Triton differ by {err:.2e} (relative max)"
        elif name == "ddt":
            diff = (a.float() - b.float()).abs()
            over = int((diff > torch.finfo(b.dtype).eps * torch.maximum(a.float().abs(), b.float().abs())).sum())
            assert over == 0, f"ddt: {over} elements differ by more than one ulp between the {what} and Triton runs"
            assert int((diff > 0).sum()) <= a.numel() // 1000, f"ddt: more than 0.1% of elements differ ({what})"
        else:
            diff = (a.float() - b.float()).abs()
            assert torch.equal(a, b), (f"{name}: the {what} run differs from the Triton one in {int((diff > 0).sum())}"
                                       f" of {a.numel()} elements, by up to {diff.max().item():.3e} (max |triton| "
                                       f"{b.abs().max().item():.3e})")


def check_gluon_forward(monkeypatch, inputs: dict, packed: bool) -> list:
    """Both Gluon forward stages eligible for `inputs`, then check_forward (y and the final states against float64)
    with exactly their two launchers called. -> the spy's list (assert_fwd_matches_triton's `calls`)."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    x, B, C = inputs["x"], inputs["B"], inputs["C"]
    for stage in ("chunk_state", "chunk_scan"):
        ok, why = ssd_ops.gluon_eligible(stage, x, B, C, 128, packed, inputs["initial_states"])
        assert ok, f"{stage} not eligible: {why}"
    calls = spy_gluon(monkeypatch)
    check_forward(inputs, 128)
    assert calls == ["chunk_state", "chunk_scan"], f"Gluon launchers called: {calls}"
    return calls


def assert_fwd_matches_triton(monkeypatch, inputs: dict, args: list, calls: list, carry: bool,
                              s_in_rows=None) -> None:
    """ssd_scan_fwd(*args) with the Gluon stages (calls: spy_gluon's list) against its NK_GLUON=0 run: the chunk
    states and final states bitwise (S_in only at s_in_rows when given: padding slots' is never written), y within
    the error rule's bound of Triton's y; carry: the case must exercise the carries between segments."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    from nemotron_kernels.testing import error_bound
    gluon = ssd_ops.ssd_scan_fwd(*args)
    monkeypatch.setenv("NK_GLUON", "0")
    triton_out = ssd_ops.ssd_scan_fwd(*args)
    assert calls == ["chunk_state", "chunk_scan"] * 2, f"NK_GLUON=0 still ran a Gluon kernel: {calls}"
    if carry:
        assert gluon[4].numel() > 0, "one segment: the carry path is not exercised"
    for name, a, b in zip(("final_states", "s_in", "carry_decay", "carry_lp", "dtcs"), gluon[1:], triton_out[1:]):
        if name == "s_in" and s_in_rows is not None:
            a, b = a[s_in_rows], b[s_in_rows]
        assert torch.equal(a, b), f"{name}: the Gluon chunk_state differs from the Triton one"
    y64 = ssd_scan_ref(**to64(inputs), chunk_size=128)
    y_low = ssd_scan_ref(**inputs, chunk_size=128)
    diff, bound = max_error(gluon[0], triton_out[0]), error_bound(y64, y_low, FWD, torch.bfloat16)
    assert diff <= bound, f"y: Gluon and Triton differ by {diff:.3e} > the error rule's bound {bound:.3e}"


GLUON_CASES = {   # id: (seed, bsz, seqlen, head shapes, extras: D, dt_bias, softplus); "-init": initial states
    "B2-L1024": (41, 2, 1024, NEMOTRON, True),
    "B2-L1024-init": (46, 2, 1024, NEMOTRON, True),
    "B3-L1024-rows-inside-segments": (42, 3, 1024, NEMOTRON, True),    # segments of 6 chunks, rows of 8 (H200)
    "B1-L4096-carry": (43, 1, 4096, NEMOTRON, True),
    "B1-L2048-H12-G3-no-D": (44, 1, 2048, dict(nheads=12, headdim=64, ngroups=3, dstate=128), False),
}


@pytest.mark.cuda
@pytest.mark.parametrize("case", list(GLUON_CASES))
def test_cuda_gluon_forward(monkeypatch, case):
    """The Gluon stages run (both launchers called, gluon_eligible true): y and the final states against the
    float64 reference; the chunk states and final states bitwise those of the Triton stages (NK_GLUON=0: the
    same math, as the probe measured), y within the error rule's bound of Triton's y."""
    _gluon_or_skip()
    seed, bsz, seqlen, heads, extras = GLUON_CASES[case]
    inputs = make_inputs(seed, bsz, seqlen, dtype=torch.bfloat16, device="cuda", extras=extras,
                         init=case.endswith("-init"), **heads)
    calls = check_gluon_forward(monkeypatch, inputs, packed=False)
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")] + [inputs["dt_softplus"], 128,
                                                                               inputs["initial_states"], None, True]
    assert_fwd_matches_triton(monkeypatch, inputs, args, calls, case.endswith("carry"))


@pytest.mark.cuda
def test_cuda_gluon_forward_backward(monkeypatch):
    """fwd + bwd through ssd_scan at B1 L2048 with the Gluon stages (final states too): every gradient against
    float64 autograd; the backward takes the Gluon chunk_state's saved states."""
    _gluon_or_skip()
    inputs = make_inputs(45, 1, 2048, dtype=torch.bfloat16, device="cuda", **NEMOTRON)
    calls = spy_gluon(monkeypatch)
    check_backward(inputs, 128, seed=45)
    assert calls == ["chunk_state", "chunk_scan"], f"Gluon launchers called: {calls}"


# Hopper Gluon dx kernel of the backward (triton/ssd_scan_bwd_dx_gluon.py), where gluon_eligible("dx") holds

def test_gluon_dx_scope_rules(monkeypatch):
    """gluon_eligible("dx")'s scope on CPU tensors (the platform monkeypatched to pass): chunk_scan's rules (packed
    too) with dy too (bf16, a 2-D TMA view), plus D, dt_bias and dt_softplus; initial states allowed; each rule
    refuses on its own. Unpatched, CPU tensors never go."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    bf16 = torch.bfloat16
    bsz, seqlen, nheads, headdim, ngroups, dstate = 2, 256, 8, 64, 2, 128
    hp, gn = nheads * headdim, ngroups * dstate
    buf = torch.empty(bsz, seqlen, hp + 2 * gn, dtype=bf16)          # x, B, C: views of one conv output row
    x = buf[..., :hp].view(bsz, seqlen, nheads, headdim)
    B = buf[..., hp:hp + gn].view(bsz, seqlen, ngroups, dstate)
    C = buf[..., hp + gn:].view(bsz, seqlen, ngroups, dstate)
    dy = torch.empty(bsz, seqlen, nheads, headdim, dtype=bf16)
    D, bias = torch.zeros(nheads), torch.zeros(nheads)
    init = torch.zeros(bsz, nheads, headdim, dstate)

    def eligible(x=x, B=B, C=C, dy=dy, D=D, bias=bias, softplus=True, chunk=128, packed=False, init=None):
        return ssd_ops.gluon_eligible("dx", x, B, C, chunk, packed, init, dy, D, bias, softplus)

    assert not eligible()[0], "CPU tensors must not take the Gluon kernels"
    monkeypatch.setattr(ssd_ops, "gluon_platform", lambda device: (True, "test"))
    assert eligible() == (True, "test")
    assert eligible(init=init)[0], "initial states change only the values of the states dx reads"
    assert eligible(*(t.contiguous() for t in (x, B, C)))[0]
    assert eligible(*(t[:1] for t in (x, B, C, dy)))[0], "B = 1"
    assert eligible(*(t[:1] for t in (x, B, C, dy)), packed=True)[0], "packed"
    assert eligible(*(t[:1, :200] for t in (x, B, C, dy)), packed=True)[0], "packed: any number of tokens"
    view = "strides"
    refusals = {   # name: (a word of the reason, eligible's arguments)
        "no D": ("D, dt_bias", dict(D=None)),
        "no dt_bias": ("D, dt_bias", dict(bias=None)),
        "no softplus": ("softplus", dict(softplus=False)),
        "packed chunk 64": ("chunk 128", dict(packed=True, chunk=64)),
        "chunk 64": ("chunk 128", dict(chunk=64)),
        "L % 128": ("multiple", dict(x=x[:, :200], B=B[:, :200], C=C[:, :200], dy=dy[:, :200])),
        "P 32": ("P = 64", dict(x=x[..., :32], dy=dy[..., :32])),
        "N 64": ("N = 128", dict(B=B[..., :64], C=C[..., :64])),
        "fp32 dy": ("bf16", dict(dy=dy.float())),
        "fp16 x": ("bf16", dict(x=x.half())),
        "dy heads not packed": (view, dict(dy=torch.empty(bsz, seqlen, nheads, 2 * headdim, dtype=bf16)[..., :64])),
        "dy misaligned": (view, dict(dy=torch.empty(dy.numel() + 1, dtype=bf16)[1:].view(dy.shape))),
        "C rows uneven": (view, dict(C=torch.empty(bsz, 2 * seqlen, ngroups, dstate, dtype=bf16)[:, :seqlen])),
    }
    for name, (word, kwargs) in refusals.items():
        ok, why = eligible(**kwargs)
        assert not ok and word in why, f"{name}: {(ok, why)}"


GLUON_DX_CASES = {   # id: (seed, bsz, seqlen, head shapes, initial states, dt a strided view)
    "B1-L2048": (61, 1, 2048, NEMOTRON, False, False),
    "B2-L1024-init-dt-view": (62, 2, 1024, NEMOTRON, True, True),
    "B1-L128-one-segment": (63, 1, 128, NEMOTRON, False, False),        # one chunk: no carries
    "B1-L1024-H12-G3": (64, 1, 1024, dict(nheads=12, headdim=64, ngroups=3, dstate=128), False, False),
}


@pytest.mark.cuda
@pytest.mark.parametrize("case", list(GLUON_DX_CASES))
def test_cuda_gluon_backward_dx(monkeypatch, case):
    """The Gluon dx kernel runs (its launcher called, gluon_eligible("dx") true; not under NK_GLUON=0): every
    gradient (final-state gradients too) against float64 autograd; then ssd_scan_bwd against its NK_GLUON=0 run on
    the same inputs: dx and ddt bitwise equal (as the probe measured on the H200), dB, dC, dinit bitwise (the same
    Triton kernels), dA, dD, ddt_bias within 1e-5 relative (fp64 sums of fp32 terms summed in another order)."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    _gluon_or_skip()
    seed, bsz, seqlen, heads, init, dt_view = GLUON_DX_CASES[case]
    inputs = make_inputs(seed, bsz, seqlen, dtype=torch.bfloat16, device="cuda", init=init, **heads)
    x, B, C = inputs["x"], inputs["B"], inputs["C"]
    if dt_view:   # as the model's dt, a slice of in_proj's output
        wide = torch.randn(bsz, seqlen, heads["nheads"] + 8, device="cuda").bfloat16()
        wide[..., :heads["nheads"]] = inputs["dt"]
        inputs["dt"] = wide[..., :heads["nheads"]]
    ok, why = ssd_ops.gluon_eligible("dx", x, B, C, 128, False, inputs["initial_states"], torch.empty_like(x),
                                     inputs["D"], inputs["dt_bias"], inputs["dt_softplus"])
    assert ok, f"dx not eligible: {why}"
    n_seg = ssd_ops._plan(x, B, 128, None, bsz)["geometry"]["n_seg"]
    assert (n_seg == 1) == case.endswith("one-segment"), f"{n_seg} segments: not the carry case meant"
    calls = spy_gluon(monkeypatch, ("dx",))
    check_backward(inputs, 128, seed=seed)
    assert calls == ["dx"], f"Gluon dx launcher called: {calls}"

    args = bwd_args(inputs, seed)
    gluon = ssd_ops.ssd_scan_bwd(*args)
    assert calls == ["dx", "dx"], f"Gluon dx launcher called: {calls}"
    monkeypatch.setenv("NK_GLUON", "0")
    triton_out = ssd_ops.ssd_scan_bwd(*args)
    assert len(calls) == 2, f"NK_GLUON=0 still ran the Gluon dx kernel: {calls}"
    assert_bwd_matches_triton(gluon, triton_out, "Gluon dx")


# Hopper Gluon dB / dC kernel of the backward (triton/ssd_scan_bwd_dbc_gluon.py), where gluon_eligible("dbc") holds

def test_gluon_dbc_scope_rules(monkeypatch):
    """gluon_eligible("dbc")'s scope on CPU tensors (the platform monkeypatched to pass, 132 SMs as the H200's):
    batched only, chunk 128, L a multiple of 128, P 64, N 128, any H, G, bf16 x, dy and the op's B, C (dB, dC take
    their dtype), 2-D TMA views, initial states allowed; then the size rule: at least GLUON_DBC_MIN_WAVES waves of
    CTAs, one per chunk of every row and group (at G 8: B1 L2176, 136 CTAs, goes; L2048, 128, not); each rule
    refuses on its own. Unpatched, CPU tensors never go."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    from nemotron_kernels.triton.common import cdiv
    bf16 = torch.bfloat16
    sms, nheads, headdim, ngroups, dstate = 132, 16, 64, 8, 128
    min_chunks = cdiv(ssd_ops.GLUON_DBC_MIN_WAVES * sms, ngroups)       # B1: the shortest L that goes, in chunks
    seqlen, hp, gn = 128 * min_chunks, nheads * headdim, ngroups * dstate
    buf = torch.empty(1, seqlen, hp + 2 * gn, dtype=bf16)             # x, B, C: views of one conv output row
    x = buf[..., :hp].view(1, seqlen, nheads, headdim)
    B = buf[..., hp:hp + gn].view(1, seqlen, ngroups, dstate)
    C = buf[..., hp + gn:].view(1, seqlen, ngroups, dstate)
    dy = torch.empty(1, seqlen, nheads, headdim, dtype=bf16)
    init = torch.zeros(1, nheads, headdim, dstate)

    def eligible(x=x, B=B, C=C, dy=dy, chunk=128, packed=False, init=None):
        return ssd_ops.gluon_eligible("dbc", x, B, C, chunk, packed, init, dy)

    def rows(n):
        return dict(x=x[:, :n], B=B[:, :n], C=C[:, :n], dy=dy[:, :n])

    assert not eligible()[0], "CPU tensors must not take the Gluon kernels"
    monkeypatch.setattr(ssd_ops, "gluon_platform", lambda device: (True, "test"))
    monkeypatch.setattr(ssd_ops.mamba_common, "sm_count", lambda device: sms)
    assert eligible() == (True, "test")
    assert eligible(init=init)[0], "initial states change only the values of the states dB / dC read"
    assert eligible(*(t.contiguous() for t in (x, B, C)))[0]
    assert eligible(x=x[:, :, :8], dy=dy[:, :, :8])[0], "one head a group"
    half = 128 * cdiv(min_chunks, 2)
    assert eligible(*(torch.empty(2, half, *t.shape[2:], dtype=bf16) for t in (x, B, C, dy)))[0], \
        "B2: the CTAs of every row count"
    view = "strides"
    refusals = {   # name: (a word of the reason, eligible's arguments)
        "packed": ("batched", dict(packed=True)),
        "chunk 64": ("chunk 128", dict(chunk=64)),
        "L % 128": ("multiple", rows(seqlen - 64)),
        "P 32": ("P = 64", dict(x=x[..., :32], dy=dy[..., :32])),
        "N 64": ("N = 128", dict(B=B[..., :64], C=C[..., :64])),
        "fp16 x": ("bf16", dict(x=x.half())),
        "fp32 B: dB fp32": ("bf16", dict(B=B.float())),
        "fp32 dy": ("bf16", dict(dy=dy.float())),
        "dy heads not packed": (view, dict(dy=torch.empty(1, seqlen, nheads, 2 * headdim, dtype=bf16)[..., :64])),
        "C misaligned": (view, dict(C=torch.empty(C.numel() + 1, dtype=bf16)[1:].view(C.shape))),
        "a chunk short of the waves": ("size rule", rows(seqlen - 128)),
        "one group": ("size rule", dict(B=B[:, :, :1], C=C[:, :, :1])),
    }
    for name, (word, kwargs) in refusals.items():
        ok, why = eligible(**kwargs)
        assert not ok and word in why, f"{name}: {(ok, why)}"


GLUON_DBC_CASES = {   # id: (seed, bsz, seqlen, head shapes, initial states); CTAs (n_chunks G) >= 1 wave of 132
    "B1-L2176-one-wave": (91, 1, 2176, NEMOTRON, False),             # 17 chunks x 8 groups: 136 CTAs, the edge
    "B2-L4096-init": (92, 2, 4096, NEMOTRON, True),                  # 512 CTAs
    "B1-L12288-H12-G3": (93, 1, 12288, dict(nheads=12, headdim=64, ngroups=3, dstate=128), False),   # 288
    # enough heads that stage 1 takes one segment: no carries; 512 CTAs
    "B1-L1024-H512-G64-one-segment": (94, 1, 1024, dict(nheads=512, headdim=64, ngroups=64, dstate=128), False),
}


@pytest.mark.cuda
@pytest.mark.parametrize("case", list(GLUON_DBC_CASES))
def test_cuda_gluon_backward_dbc(monkeypatch, case):
    """The Gluon dB / dC kernel runs (its launcher called, gluon_eligible("dbc") true; not under NK_GLUON=0), with
    the carries across segments or without: every gradient (final-state gradients too) against float64 autograd;
    then ssd_scan_bwd against its NK_GLUON=0 run on the same inputs: dB and dC bitwise equal (as the probe measured
    on the H200), and the Gluon dx's outputs as its own test asks."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    _gluon_or_skip()
    seed, bsz, seqlen, heads, init = GLUON_DBC_CASES[case]
    inputs = make_inputs(seed, bsz, seqlen, dtype=torch.bfloat16, device="cuda", init=init, **heads)
    x, B, C = inputs["x"], inputs["B"], inputs["C"]
    ok, why = ssd_ops.gluon_eligible("dbc", x, B, C, 128, False, inputs["initial_states"], torch.empty_like(x))
    assert ok, f"dbc not eligible: {why}"
    n_seg = ssd_ops._plan(x, B, 128, None, bsz)["geometry"]["n_seg"]
    assert (n_seg == 1) == case.endswith("one-segment"), f"{n_seg} segments: not the carry case meant"
    calls = spy_gluon(monkeypatch, ("dx", "dbc"))
    check_backward(inputs, 128, seed=seed)
    assert calls == ["dx", "dbc"], f"Gluon backward launchers called: {calls}"

    args = bwd_args(inputs, seed)
    gluon = ssd_ops.ssd_scan_bwd(*args)
    assert calls == ["dx", "dbc"] * 2, f"Gluon backward launchers called: {calls}"
    monkeypatch.setenv("NK_GLUON", "0")
    triton_out = ssd_ops.ssd_scan_bwd(*args)
    assert len(calls) == 4, f"NK_GLUON=0 still ran a Gluon backward kernel: {calls}"
    assert_bwd_matches_triton(gluon, triton_out, "Gluon dx + dB / dC")


@pytest.mark.cuda
def test_cuda_gluon_dbc_size_rule_takes_triton(monkeypatch):
    """Below GLUON_DBC_MIN_WAVES waves of CTAs the backward runs Triton's two dB / dC launches: at Nemotron's shape
    the longest such B1 L (L2048 on the H200's 132 SMs: 128 CTAs) is refused by the size rule, the Gluon dB / dC
    launcher is not called (the Gluon dx is), and every gradient matches float64 autograd."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    _gluon_or_skip()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    seqlen = 128 * ((ssd_ops.GLUON_DBC_MIN_WAVES * sms - 1) // NEMOTRON["ngroups"])
    inputs = make_inputs(95, 1, seqlen, dtype=torch.bfloat16, device="cuda", **NEMOTRON)
    x, B, C = inputs["x"], inputs["B"], inputs["C"]
    ok, why = ssd_ops.gluon_eligible("dbc", x, B, C, 128, False, None, torch.empty_like(x))
    assert not ok and "size rule" in why, f"L{seqlen}: {(ok, why)}"
    calls = spy_gluon(monkeypatch, ("dx", "dbc"))
    check_backward(inputs, 128, seed=95)
    assert calls == ["dx"], f"Gluon backward launchers called: {calls}"


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["B1-L8192", "16-sequences-carry"])
def test_cuda_gluon_chunk_scan_persistent(monkeypatch, case):
    """From PERSISTENT_MIN_WAVES waves of (chunk, group) tiles the op's chunk_scan runs the persistent grid (batched,
    and packed with padding slots to skip): y against the float64 reference through the op, then the launcher's
    size-rule y bitwise that of one CTA a tile on the same stage inputs."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    from nemotron_kernels.triton import ssd_scan_chunk_scan_gluon as gluon_scan
    _gluon_or_skip()
    seed, cu = (74, None) if case == "B1-L8192" else GLUON_PACKED_CASES[case]
    inputs = make_inputs(seed, 1, 8192 if cu is None else cu[-1], dtype=torch.bfloat16, device="cuda", cu=cu,
                         **NEMOTRON)
    check_forward(inputs, 128)
    x, B, C, cu_t = inputs["x"], inputs["B"], inputs["C"], inputs["cu_seqlens"]
    plan = ssd_ops._plan(x, B, 128, cu_t, 1 if cu is None else len(cu) - 1)
    s_in, carry_decay, carry_lp, dtcs = ssd_ops._chunk_states(x, inputs["dt"], inputs["A"].float().contiguous(), B,
                                                              inputs["dt_bias"].float().contiguous(), None, True,
                                                              plan)
    tiles = plan["geometry"]["n_table"] * B.shape[2]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert tiles >= gluon_scan.PERSISTENT_MIN_WAVES * sms, f"{tiles} tiles: the size rule keeps a CTA a tile"
    ys = []
    for persistent in (None, False):
        y = torch.full_like(x, float("nan"))                         # every row must be written
        gluon_scan.chunk_scan_launch(x, dtcs, B, C, inputs["D"].float().contiguous(), plan["table"], s_in,
                                     carry_decay, carry_lp, y, plan["geometry"], None, None, persistent)
        ys.append(y)
    assert not ys[1].isnan().any(), "one CTA a tile left rows unwritten"
    assert torch.equal(ys[0].view(torch.int16), ys[1].view(torch.int16)), "persistent y differs from a CTA a tile"


# packed sequences (cu_seqlens) through the Gluon chunk_state, chunk_scan and dx: each sequence starts a chunk slot of
# the table, so a slot's 128-row boxes also hold the next sequence's rows (or run past T), which the kernels mask and
# never store

GLUON_PACKED_CASES = {   # id: (seed, cu_seqlens: T = the last)
    # a sequence shorter than a chunk, one of exactly 128 tokens, an empty one, one token, 1024 (8 chunks), 297, 1500;
    # T = 3000 not a multiple of 64: the last slot's boxes run past T (TMA zero-fills)
    "uneven": (71, [0, 50, 178, 178, 179, 1203, 1500, 3000]),
    "one-sequence": (72, [0, 2000]),
    "16-sequences-carry": (73, [0] + [i * 513 + (37 * i) % 128 for i in range(1, 16)] + [8300]),
}


@pytest.mark.cuda
@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("case", list(GLUON_PACKED_CASES))
def test_cuda_gluon_packed_forward(monkeypatch, case, init):
    """Packed input takes the Gluon chunk_state and chunk_scan (with or without initial states): y and the final
    states against the float64 reference; the chunk states (S_in of the slots with rows: padding slots' is never
    written) and final states bitwise those of the NK_GLUON=0 run, y within the error rule's bound of its y (rows of
    every sequence: a partial slot's store must not reach the next sequence)."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    _gluon_or_skip()
    seed, cu = GLUON_PACKED_CASES[case]
    inputs = make_inputs(seed, 1, cu[-1], dtype=torch.bfloat16, device="cuda", cu=cu, init=init, **NEMOTRON)
    calls = check_gluon_forward(monkeypatch, inputs, packed=True)
    x, B = inputs["x"], inputs["B"]
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")] + [True, 128, inputs["initial_states"],
                                                                               inputs["cu_seqlens"], True]
    table = ssd_ops._plan(x, B, 128, inputs["cu_seqlens"], len(cu) - 1)["table"]
    has_rows = table[2] > 0                                     # the slots with rows (padding slots: length 0)
    assert not has_rows.all() or case == "one-sequence", "no padding slot: their pass-through is not exercised"
    assert_fwd_matches_triton(monkeypatch, inputs, args, calls, case.endswith("carry"), has_rows)


@pytest.mark.cuda
@pytest.mark.parametrize("case", list(GLUON_PACKED_CASES))
def test_cuda_gluon_packed_backward(monkeypatch, case):
    """fwd + bwd of packed input with the Gluon chunk_state, chunk_scan and dx (initial states, final-state
    gradients; the backward without saved states recomputes them with the Gluon chunk_state; dB / dC: Triton, the
    Gluon one is batched only): every gradient against float64 autograd; then ssd_scan_bwd against its NK_GLUON=0
    run: dx and ddt bitwise equal (the batched path's rule; rows past a slot's end are masked to Triton's zeros),
    dB, dC, dinit bitwise, dA, dD, ddt_bias within 1e-5 relative (fp64 sums of fp32 terms summed in another
    order)."""
    import nemotron_kernels.ops.ssd_scan as ssd_ops
    _gluon_or_skip()
    seed, cu = GLUON_PACKED_CASES[case]
    inputs = make_inputs(seed, 1, cu[-1], dtype=torch.bfloat16, device="cuda", cu=cu, init=True, **NEMOTRON)
    calls = spy_gluon(monkeypatch, ("chunk_state", "chunk_scan", "dx", "dbc"))
    check_backward(inputs, 128, seed=seed)
    assert calls == ["chunk_state", "chunk_scan", "dx"], f"Gluon launchers called: {calls}"

    args = bwd_args(inputs, seed)
    gluon = ssd_ops.ssd_scan_bwd(*args)
    monkeypatch.setenv("NK_GLUON", "0")
    triton_out = ssd_ops.ssd_scan_bwd(*args)
    assert calls == ["chunk_state", "chunk_scan", "dx", "chunk_state", "dx"], f"Gluon launchers called: {calls}"
    assert_bwd_matches_triton(gluon, triton_out, "Gluon dx")
