"""causal_conv1d (Triton fwd + bwd) and causal_conv1d_update (Triton decode) against the float64 reference, under
the DESIGN error rule. CPU: Triton's interpreter at small shapes; `cuda`: NemotronH shapes (C = 6144, K = 4, bf16)."""
import pytest
import torch
from mamba_checks import BWD, F64, FWD, aot_lines, assert_error_rule  # noqa: F401

from nemotron_kernels.ops.causal_conv1d import causal_conv1d, causal_conv1d_update
from nemotron_kernels.reference.causal_conv1d import (
    causal_conv1d_ref,
    causal_conv1d_update_ref,
)

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def make_inputs(seed, bsz, seqlen, channels, width, dtype, cu=None, init=False, bias=True, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    nstates = bsz if cu is None else len(cu) - 1
    t = dict(x=torch.randn(bsz, seqlen, channels, generator=g, dtype=F64),
             weight=torch.randn(channels, width, generator=g, dtype=F64) / width ** 0.5,
             bias=torch.randn(channels, generator=g, dtype=F64) if bias else None,
             initial_state=torch.randn(nstates, channels, width - 1, generator=g, dtype=F64) if init else None)
    t = {k: v.to(device=device, dtype=dtype) if v is not None else None for k, v in t.items()}
    t["cu_seqlens"] = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=device)
    return t


def check_fwd_bwd(inputs, activation="silu"):
    """Forward + final state (2x rule) and gradients of x, weight, bias, initial_state (3x rule)."""
    names = [k for k in ("x", "weight", "bias", "initial_state") if inputs[k] is not None]
    runs = {}
    for which, cast in (("kernel", None), ("ref64", F64), ("ref_low", None)):
        leaves = {k: (inputs[k].to(cast) if cast else inputs[k]).detach().clone().requires_grad_() for k in names}
        fn = causal_conv1d if which == "kernel" else causal_conv1d_ref
        y, final = fn(activation=activation, cu_seqlens=inputs["cu_seqlens"], return_final_state=True,
                      **{k: leaves.get(k) for k in ("x", "weight", "bias", "initial_state")})
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=F64).to(y.device)
        y.backward(dy.to(y.dtype))
        runs[which] = (y.detach(), final, {k: v.grad for k, v in leaves.items()})
    (y, final, grads), (y64, final64, grads64), (y_low, final_low, grads_low) = runs.values()
    assert y.dtype == inputs["x"].dtype and final.dtype == inputs["x"].dtype
    assert_error_rule("y", y, y64, y_low, FWD)
    assert_error_rule("final_state", final, final64, final_low, FWD)
    for k in names:
        assert grads[k].dtype == inputs[k].dtype
        assert_error_rule(f"d{k}", grads[k], grads64[k], grads_low[k], BWD)


CASES = {   # id: (bsz, seqlen, channels, width, dtype, cu_seqlens, initial_state, bias, activation)
    "batched": (2, 37, 20, 4, torch.float32, None, False, True, "silu"),
    "batched-init-fp16": (2, 37, 20, 4, torch.float16, None, True, True, "silu"),
    "packed-init": (1, 37, 20, 4, torch.float32, [0, 2, 2, 10, 37], True, True, "silu"),   # empty, < K-1 seqs
    "packed-k3-noact": (1, 37, 20, 3, torch.float16, [0, 1, 20, 37], False, False, None),
    "one-token": (1, 1, 12, 4, torch.float32, None, True, True, "silu"),
    "bf16-k2": (3, 9, 8, 2, torch.bfloat16, None, True, True, "silu"),
    "packed-init-k6": (1, 41, 20, 6, torch.float32, [0, 3, 3, 4, 17, 41], True, True, "silu"),  # taps from memory
    "k1": (2, 9, 8, 1, torch.float32, None, False, True, "silu"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.usefixtures("interpret")
def test_interpreter_matches_reference(case):
    bsz, seqlen, channels, width, dtype, cu, init, bias, act = CASES[case]
    inputs = make_inputs(len(case), bsz, seqlen, channels, width, dtype, cu, init, bias)
    check_fwd_bwd(inputs, act)


@pytest.mark.parametrize("programs_per_sm", [1, 8])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.usefixtures("interpret")
def test_interpreter_segments(monkeypatch, programs_per_sm, packed):
    """The forward cuts L into segments of 4 (8 programs per SM) or 12 tokens (1: three loop iterations each);
    segments start inside a sequence, on a boundary, and inside a sequence's first K-1 tokens (halo rows from
    the previous sequence must come from the initial state instead)."""
    from nemotron_kernels.triton import mamba_common
    monkeypatch.setattr(mamba_common.kernel_module("causal_conv1d_fwd"), "FWD_PROGRAMS_PER_SM", programs_per_sm)
    cu = [0, 5, 6, 13, 14, 15, 38, 61, 150] if packed else None
    inputs = make_inputs(7, 1 if packed else 2, 150, 24, 4, torch.float32, cu, init=True)
    check_fwd_bwd(inputs)


BWD_SEG_CU = [0, 0, 4, 4, 5, 9, 10, 16, 17, 25, 26, 26, 36, 39, 50, 50]   # L = 50, 15 sequences


@pytest.mark.parametrize("seg_len,packed,width", [(4, True, 4), (8, True, 4), (12, True, 4), (4, False, 4),
                                                  (12, False, 4), (4, True, 2), (8, True, 6), (4, True, 1)])
@pytest.mark.usefixtures("interpret")
def test_interpreter_bwd_segments(monkeypatch, seg_len, packed, width):
    """The backward walks segments of seg_len tokens, with 3 halo rows on each side. With BWD_SEG_CU, segments
    start inside a sequence, on a sequence start (4, 16, 36), inside a sequence's first K-1 tokens (12 with 4 and
    12, 28, 40); empty (leading, inner, trailing) and 1-token sequences; sequences ending inside a segment's
    trailing halo; a last segment shorter than the others (seg_len 8, 12)."""
    from nemotron_kernels.triton import mamba_common
    kernels = mamba_common.kernel_module("causal_conv1d_bwd")
    monkeypatch.setattr(kernels, "bwd_seg_len", lambda *args: seg_len)
    cu = BWD_SEG_CU if packed else None
    inputs = make_inputs(11 + seg_len + width, 1 if packed else 2, 50, 20, width, torch.float32, cu, init=True)
    check_fwd_bwd(inputs)


@pytest.mark.parametrize("packed,width", [(False, 4), (True, 4), (True, 6)], ids=["batched", "packed", "packed-k6"])
@pytest.mark.usefixtures("interpret")
def test_interpreter_reads_only_what_it_writes(assert_reads_only_written, packed, width):
    """Batched rows, and packed sequences (leading and trailing empty ones, 1 token, fewer than K-1 tokens) cut
    into 4-token segments; K = 6 keeps dw partial rows in memory: with scratch memory poisoned as NaN, y, the final
    states and every gradient equal a plain run's, so no kernel reads an element that no kernel wrote."""
    cu = [0, 0, 1, 3, 10, 11, 29, 29] if packed else None
    inputs = make_inputs(17 + width, 1 if packed else 2, 29, 20, width, torch.float32, cu, init=True)
    dy = torch.randn(inputs["x"].shape)
    names = ("x", "weight", "bias", "initial_state")

    def run():
        leaves = {k: inputs[k].clone().requires_grad_() for k in names}
        y, final = causal_conv1d(**leaves, cu_seqlens=inputs["cu_seqlens"], return_final_state=True)
        grads = torch.autograd.grad(y, list(leaves.values()), dy)
        return {"y": y.detach(), "final_state": final, **{f"d{k}": g for k, g in zip(names, grads)}}

    assert_reads_only_written(run)


@pytest.mark.usefixtures("interpret")
def test_interpreter_bwd_seg_len():
    """NemotronH's 32K tokens on 132 SMs split into whole waves of programs; every segment is a multiple of 4."""
    from nemotron_kernels.triton import mamba_common
    kernels = mamba_common.kernel_module("causal_conv1d_bwd")
    slots = kernels.BWD_RESIDENT_PER_SM * 132
    for bsz, seqlen in ((1, 32768), (4, 8192), (16, 2048), (1, 3000), (1, 1), (3, 37)):
        seg = kernels.bwd_seg_len(bsz, seqlen, 6144, 132)
        programs = bsz * (6144 // 512) * -(-seqlen // seg)
        assert seg % 4 == 0 and seg >= 4
        if bsz * seqlen == 32768:
            assert programs % slots == 0, (bsz, seqlen, seg, programs)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.usefixtures("interpret")
def test_interpreter_bwd_strided(packed):
    """Backward with x a channel slice of a wider row (in_proj's xBC) and dy a channel slice too."""
    cu = [0, 7, 8, 19] if packed else None
    inputs = make_inputs(13, 1 if packed else 2, 19, 24, 4, torch.float32, cu, init=True)
    wide = torch.cat([torch.zeros(inputs["x"].shape[0], 19, 5), inputs["x"], torch.zeros(inputs["x"].shape[0], 19, 3)],
                     dim=-1)
    grads = []
    for fn, x_in in ((causal_conv1d, wide[..., 5:29]), (causal_conv1d_ref, inputs["x"])):
        leaves = [t.detach().clone().requires_grad_() for t in (x_in, inputs["weight"], inputs["bias"],
                                                               inputs["initial_state"])]
        y = fn(*leaves[:3], initial_state=leaves[3], cu_seqlens=inputs["cu_seqlens"])
        dy_wide = torch.randn(y.shape[0], 19, 40, generator=torch.Generator().manual_seed(3))
        y.backward(dy_wide[..., 8:32])
        grads.append([t.grad for t in leaves])
    assert wide[..., 5:29].stride(1) == 32
    for name, g, g_ref in zip(("dx", "dweight", "dbias", "dinit"), *grads):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.usefixtures("interpret")
def test_interpreter_strided_x():
    """x as a channel slice of a wider row (in_proj's xBC), forward and final state."""
    inputs = make_inputs(3, 2, 19, 24, 4, torch.float32, init=True)
    wide = torch.cat([torch.zeros(2, 19, 5), inputs["x"], torch.zeros(2, 19, 3)], dim=-1)
    x = wide[..., 5:29]
    assert x.stride(1) == 32
    kwargs = dict(weight=inputs["weight"], bias=inputs["bias"], initial_state=inputs["initial_state"],
                  return_final_state=True)
    y, final = causal_conv1d(x, **kwargs)
    y_ref, final_ref = causal_conv1d_ref(x.contiguous(), **kwargs)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, final_ref, rtol=0, atol=0)


@pytest.mark.parametrize("dtype,state_dtype,slots", [(torch.float32, torch.float32, "int64"),
                                                     (torch.float16, torch.float32, "int32"),
                                                     (torch.bfloat16, torch.bfloat16, None)])
@pytest.mark.usefixtures("interpret")
def test_interpreter_update(dtype, state_dtype, slots):
    g = torch.Generator().manual_seed(1)
    bsz, channels, width, nslots = 3, 40, 4, 5
    x = torch.randn(bsz, channels, generator=g, dtype=F64)
    weight = torch.randn(channels, width, generator=g, dtype=F64)
    bias = torch.randn(channels, generator=g, dtype=F64)
    state = torch.randn(nslots, channels, width - 1, generator=g, dtype=F64).to(state_dtype)
    slot_idx = None if slots is None else torch.tensor([4, 0, 2], dtype=getattr(torch, slots))
    low = [t.to(dtype) for t in (x, weight, bias)]
    s_kernel, s64, s_low = state.clone(), state.to(F64), state.clone()
    y = causal_conv1d_update(low[0], s_kernel, low[1], low[2], "silu", slot_idx)
    y64 = causal_conv1d_update_ref(*(t.to(F64) for t in low), s64, slot_idx=slot_idx) if False else \
        causal_conv1d_update_ref(low[0].to(F64), s64, low[1].to(F64), low[2].to(F64), "silu", slot_idx)
    y_low = causal_conv1d_update_ref(low[0], s_low, low[1], low[2], "silu", slot_idx)
    assert y.dtype == dtype
    assert_error_rule("y", y, y64, y_low, FWD)
    assert torch.equal(s_kernel, s_low), "conv_state must hold exactly the shifted inputs"


@pytest.mark.usefixtures("interpret")
def test_interpreter_update_reads_only_what_it_writes(assert_reads_only_written):
    """C = 300 channels (256-channel blocks: the second has 44) for 3 rows in slots 4, 0, 2 of 5, with bias and
    K = 4; and K = 2 (no tap moves), no bias, no slots, no activation: with scratch memory poisoned as NaN, y and
    the updated states equal a plain run's, so the kernel writes every element of y."""
    inputs = make_inputs(13, 3, 1, 300, 4, torch.float32)
    state = torch.randn(5, 300, 3, generator=torch.Generator().manual_seed(7))
    slot_idx = torch.tensor([4, 0, 2], dtype=torch.int32)
    x = inputs["x"][:, 0]

    def run():
        s4, s2 = state.clone(), state[:3, :, :1].clone()
        y4 = causal_conv1d_update(x, s4, inputs["weight"], inputs["bias"], "silu", slot_idx)
        y2 = causal_conv1d_update(x, s2, inputs["weight"][:, :2], activation=None)
        return {"y (K = 4)": y4, "conv_state (K = 4)": s4, "y (K = 2)": y2, "conv_state (K = 2)": s2}

    assert_reads_only_written(run)


@pytest.mark.usefixtures("interpret")
def test_interpreter_prefill_then_decode():
    """Prefill L-2 tokens (final state), then two update steps == the prefill of all L tokens."""
    inputs = make_inputs(9, 2, 12, 16, 4, torch.float32, init=True)
    x, w, b, s0 = inputs["x"], inputs["weight"], inputs["bias"], inputs["initial_state"]
    y_full = causal_conv1d(x, w, b, initial_state=s0)
    _, state = causal_conv1d(x[:, :-2], w, b, initial_state=s0, return_final_state=True)
    state = state.clone()
    for t in (10, 11):
        y_t = causal_conv1d_update(x[:, t], state, w, b)
        torch.testing.assert_close(y_t, y_full[:, t], rtol=1e-5, atol=1e-5)


def test_dispatch_without_interpreter_is_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inputs = make_inputs(2, 1, 8, 6, 4, torch.float32)
    kwargs = {k: v for k, v in inputs.items()}
    assert torch.equal(causal_conv1d(**kwargs), causal_conv1d_ref(**kwargs))


@pytest.mark.usefixtures("interpret")
def test_bad_input_named():
    inputs = make_inputs(2, 2, 8, 6, 4, torch.float32, init=True)
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(inputs["x"], inputs["weight"][:3])
    with pytest.raises(ValueError, match="initial_state"):
        causal_conv1d(inputs["x"], inputs["weight"], initial_state=inputs["initial_state"][:1])
    with pytest.raises(ValueError, match="batch dimension must be 1"):
        causal_conv1d(inputs["x"], inputs["weight"], cu_seqlens=torch.tensor([0, 8], dtype=torch.int32))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(inputs["x"], inputs["weight"], activation="relu")
    state = torch.zeros(3, 6, 3)
    with pytest.raises(ValueError, match="slot_idx"):
        causal_conv1d_update(inputs["x"][:, 0], state, inputs["weight"], slot_idx=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="conv_state"):
        causal_conv1d_update(inputs["x"][:, 0], state[:, :, :2], inputs["weight"])


@pytest.mark.usefixtures("interpret")
def test_custom_op_registration():
    inputs = make_inputs(4, 1, 9, 8, 4, torch.float32, cu=[0, 4, 9], init=True)
    x, w, b, s0, cu = (inputs[k] for k in ("x", "weight", "bias", "initial_state", "cu_seqlens"))
    seq_idx = torch.tensor([0] * 4 + [1] * 5, dtype=torch.int32)
    utils = ("test_schema", "test_faketensor")
    ops = torch.ops.nemotron_kernels
    torch.library.opcheck(ops.causal_conv1d_fwd.default, (x, w, b, seq_idx, cu, s0, True), test_utils=utils)
    torch.library.opcheck(ops.causal_conv1d_final_state.default, (x, w, cu, s0), test_utils=utils)
    torch.library.opcheck(ops.causal_conv1d_bwd.default, (x, w, b, seq_idx, cu, s0, torch.randn_like(x), True),
                          test_utils=utils)
    torch.library.opcheck(ops.causal_conv1d_update.default, (x[0, :2], torch.randn(3, 8, 3), w, b,
                                                             torch.tensor([2, 0]), True), test_utils=utils)


def test_aot_compile_sm90():
    assert len(aot_lines("causal_conv1d_fwd")) == 4
    assert len(aot_lines("causal_conv1d_bwd")) == 4
    assert len(aot_lines("causal_conv1d_update")) == 2


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["B4-L2048", "packed", "B1-L1"])
def test_cuda_nemotron_shapes(case):
    """NemotronH's xBC conv: C = 6144, K = 4, bias, SiLU, bf16."""
    if case == "B4-L2048":
        inputs = make_inputs(1, 4, 2048, 6144, 4, torch.bfloat16, init=True, device="cuda")
    elif case == "packed":
        inputs = make_inputs(2, 1, 3000, 6144, 4, torch.bfloat16, cu=[0, 1, 3, 1000, 2999, 3000], init=True,
                             device="cuda")
    else:
        inputs = make_inputs(3, 1, 1, 6144, 4, torch.bfloat16, device="cuda")
    check_fwd_bwd(inputs)


@pytest.mark.cuda
@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float32])
def test_cuda_update_nemotron_batch(state_dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    bsz, channels, nslots = 256, 6144, 300
    x = torch.randn(bsz, channels, device="cuda", generator=g).bfloat16()
    weight = (torch.randn(channels, 4, device="cuda", generator=g) / 2).bfloat16()
    bias = torch.randn(channels, device="cuda", generator=g).bfloat16()
    state = torch.randn(nslots, channels, 3, device="cuda", generator=g).to(state_dtype)
    slot_idx = torch.randperm(nslots, device="cuda", generator=g)[:bsz].int()
    s_kernel, s64, s_low = state.clone(), state.double(), state.clone()
    y = causal_conv1d_update(x, s_kernel, weight, bias, "silu", slot_idx)
    y64 = causal_conv1d_update_ref(x.double(), s64, weight.double(), bias.double(), "silu", slot_idx)
    y_low = causal_conv1d_update_ref(x, s_low, weight, bias, "silu", slot_idx)
    assert_error_rule("y", y, y64, y_low, FWD)
    assert torch.equal(s_kernel, s_low)


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_past_2_31_elements():
    """x with 2^31 + 2^22 elements (350K tokens x 6144 channels): int64 token offsets, checked at the tail."""
    seqlen = (2 ** 31 + 2 ** 22) // 6144
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, seqlen, 6144, device="cuda", dtype=torch.bfloat16, generator=g)
    weight = torch.randn(6144, 4, device="cuda", dtype=torch.bfloat16, generator=g)
    y, final = causal_conv1d(x, weight, return_final_state=True)
    tail = x[:, -64:]
    y_tail = causal_conv1d_ref(tail.double(), weight.double(), initial_state=x[0, -67:-64].t()[None].double())
    assert (y[:, -64:].double() - y_tail).abs().max().item() < 0.05
    assert torch.equal(final[0], x[0, -3:].t())


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_bwd_past_2_31_elements():
    """Backward on x and dy with 2^31 + 2^22 elements each: int64 offsets; dx's last 64 rows against the reference
    on the last 67 tokens (the 3 before them as its initial state)."""
    from nemotron_kernels.ops.causal_conv1d import causal_conv1d_bwd
    seqlen = (2 ** 31 + 2 ** 22) // 6144
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(1, seqlen, 6144, device="cuda", dtype=torch.bfloat16, generator=g)
    dy = torch.randn(1, seqlen, 6144, device="cuda", dtype=torch.bfloat16, generator=g)
    weight = (torch.randn(6144, 4, device="cuda", generator=g) / 2).bfloat16()
    bias = torch.randn(6144, device="cuda", generator=g).bfloat16()
    dx, dweight, dbias, _ = causal_conv1d_bwd(x, weight, bias, None, None, None, dy, True)
    tail = x[:, -67:].double().requires_grad_()
    y = causal_conv1d_ref(tail, weight.double(), bias.double(), initial_state=x[0, -70:-67].t()[None].double())
    y.backward(dy[:, -67:].double())
    torch.testing.assert_close(dx[:, -64:].double(), tail.grad[:, -64:], rtol=1e-2, atol=1e-2)
    assert torch.isfinite(dweight).all() and torch.isfinite(dbias).all()
