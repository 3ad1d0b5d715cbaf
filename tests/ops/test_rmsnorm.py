"""rmsnorm (Triton forward + backward) against the float64 reference, under the DESIGN error rule.
CPU: the kernels run in Triton's interpreter (fp16/bf16/fp32, small shapes); `cuda`: NemotronH shapes in bf16."""
import pytest
import torch
from mamba_checks import BWD, F64, FWD, aot_lines, assert_error_rule

from nemotron_kernels.ops.rmsnorm import rmsnorm
from nemotron_kernels.reference.rmsnorm import rmsnorm_ref


def make_inputs(seed, lead, dim, dtype, device="cpu", noncontiguous=False):
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(*lead, dim, generator=g, dtype=F64)
    weight = 1.0 + 0.5 * torch.randn(dim, generator=g, dtype=F64)
    x, weight = (t.to(device=device, dtype=dtype) for t in (x, weight))
    if noncontiguous:   # rows with a stride wider than D
        x = torch.cat([x, torch.zeros_like(x[..., :8])], dim=-1)[..., :dim]
    return x, weight


def check_fwd_bwd(x, weight, eps=1e-5):
    """Forward (2x rule) and backward (3x rule) of the kernel against fp64 and the same-dtype reference."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight)]
    out = rmsnorm(*leaves, eps)
    assert out.dtype == x.dtype and out.shape == x.shape
    leaves64 = [t.detach().to(F64).requires_grad_() for t in (x, weight)]
    out64 = rmsnorm_ref(*leaves64, eps)
    leaves_low = [t.detach().clone().requires_grad_() for t in (x, weight)]
    out_low = rmsnorm_ref(*leaves_low, eps)
    assert_error_rule("out", out.detach(), out64.detach(), out_low.detach(), FWD)

    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(99), dtype=F64)
    out.backward(dout.to(out.dtype).to(out.device))
    out64.backward(dout.to(out64.device))
    out_low.backward(dout.to(out_low.dtype).to(out.device))
    for name, a, b, c in zip(("dx", "dweight"), leaves, leaves64, leaves_low):
        assert a.grad.dtype == a.dtype
        assert_error_rule(name, a.grad, b.grad, c.grad, BWD)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lead,dim", [((3, 5), 48), ((7,), 40), ((1,), 64), ((), 24)])
@pytest.mark.usefixtures("interpret")
def test_interpreter_matches_reference(dtype, lead, dim):
    x, weight = make_inputs(dim + len(lead), lead, dim, dtype)
    check_fwd_bwd(x, weight)


@pytest.mark.usefixtures("interpret")
def test_interpreter_forward_rounds_where_the_reference_does():
    """The normalised row is rounded to x's dtype before the weight multiply, as in the reference: bit-identical
    out at this seed. fp16: the interpreter's bf16 casts truncate instead of rounding to nearest."""
    x, weight = make_inputs(8, (6,), 56, torch.float16)
    assert torch.equal(rmsnorm(x, weight), rmsnorm_ref(x, weight))


@pytest.mark.usefixtures("interpret")
def test_interpreter_strided_rows_and_many_row_blocks():
    x, weight = make_inputs(5, (2, 9), 32, torch.float32, noncontiguous=True)
    assert not x.is_contiguous()
    check_fwd_bwd(x, weight, eps=1e-3)
    x, weight = make_inputs(11, (300,), 16, torch.float16)      # more row blocks than backward programs
    check_fwd_bwd(x, weight)


@pytest.mark.usefixtures("interpret")
def test_interpreter_reads_only_what_it_writes(assert_reads_only_written):
    """279 rows of D = 40 (BLOCK_D 64, row blocks of 16: the last one has 7 rows; 18 blocks for 16 backward
    programs, so two of them loop), with and without the residual: with scratch memory poisoned as NaN, out, h and
    every gradient (through rstd and the dw partials) equal a plain run's, so no kernel reads an element that no
    kernel wrote."""
    x, weight = make_inputs(41, (9, 31), 40, torch.float32)
    r, dout, dh = (torch.randn(x.shape, generator=torch.Generator().manual_seed(s)) for s in range(3))

    def run():
        x1, w1, x2, r2, w2 = (t.clone().requires_grad_() for t in (x, weight, x, r, weight))
        out = rmsnorm(x1, w1)
        out_add, h = rmsnorm(x2, w2, residual=r2)
        grads = torch.autograd.grad((out, out_add, h), (x1, w1, x2, r2, w2), (dout, dout, dh))
        return {"out": out.detach(), "out (residual)": out_add.detach(), "h": h.detach(),
                **dict(zip(("dx", "dweight", "dx (residual)", "dresidual", "dweight (residual)"), grads))}

    assert_reads_only_written(run)


def check_residual(x, weight, seed=0):
    """rmsnorm(x, w, residual=r) against the reference: h and out bit for bit (h = torch's add, then the same norm),
    and the gradients of x, r and w with a gradient reaching h too (as the next block's add sends it) equal to
    those of the unfused graph: norm(x + r) with h used again."""
    g = torch.Generator().manual_seed(seed)
    r = (torch.randn(x.shape, generator=g, dtype=F64)).to(device=x.device, dtype=x.dtype)
    dout, dh = (torch.randn(x.shape, generator=g, dtype=F64).to(device=x.device, dtype=x.dtype) for _ in range(2))
    ours = [t.detach().clone().requires_grad_() for t in (x, r, weight)]
    out, h = rmsnorm(ours[0], ours[2], 1e-5, residual=ours[1])
    ref = [t.detach().clone().requires_grad_() for t in (x, r, weight)]
    h_ref = ref[0] + ref[1]
    out_ref = rmsnorm(h_ref, ref[2], 1e-5)                     # the unfused kernel path
    assert torch.equal(h, h_ref) and torch.equal(out, out_ref)
    assert torch.equal(h, rmsnorm_ref(x, weight, 1e-5, residual=r)[1])
    torch.autograd.backward((out, h), (dout, dh))
    torch.autograd.backward((out_ref, h_ref), (dout, dh))
    for name, a, b in zip(("dx", "dresidual", "dweight"), ours, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.usefixtures("interpret")
def test_interpreter_residual_add_fused(dtype):
    x, weight = make_inputs(21, (5, 3), 40, dtype)
    check_residual(x, weight)
    x, weight = make_inputs(22, (2, 9), 32, dtype, noncontiguous=True)
    check_residual(x, weight, seed=1)


@pytest.mark.usefixtures("interpret")
def test_interpreter_residual_h_unused_and_model_blocks():
    """Only out used (as norm_f): the gradients of x and residual are the norm's. And a tiny model whose norms run
    the fused kernel (the other ops their references) against the reference model: logits and every weight
    gradient close (the kernel sums squares in another order), the residual adds' gradients flowing through."""
    from model.config import NemotronHConfig
    from model.nemotron_h import build_model
    x, weight = make_inputs(31, (6,), 24, torch.float32)
    r = torch.randn(6, 24, generator=torch.Generator().manual_seed(3))
    leaves = [t.clone().requires_grad_() for t in (x, r)]
    out, _ = rmsnorm(leaves[0], weight, residual=leaves[1])
    out.sum().backward()
    h = (x + r).requires_grad_()
    rmsnorm(h, weight).sum().backward()
    assert torch.equal(leaves[0].grad, h.grad) and torch.equal(leaves[1].grad, h.grad)

    cfg = NemotronHConfig.from_preset("tiny")
    ref_model = build_model(cfg, seed=0, backend="reference")
    fused = build_model(cfg, seed=0, backend="reference")
    fused.ops.rmsnorm = rmsnorm                                  # the Triton op, under the interpreter
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(4))
    grads = []
    for model in (ref_model, fused):
        loss = model(ids).float().logsumexp(-1).mean()
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.usefixtures("interpret")
def test_residual_of_another_dtype_or_shape():
    """A residual the kernel cannot take in x's dtype runs the reference (torch's promotion); a wrong shape is named."""
    x, weight = make_inputs(23, (4,), 16, torch.float16)
    r = torch.randn(4, 16, dtype=torch.float32)
    out, h = rmsnorm(x, weight, residual=r)
    assert h.dtype == torch.float32 and torch.equal(h, x + r) and torch.equal(out, rmsnorm_ref(x + r, weight))
    with pytest.raises(ValueError, match="residual must have shape"):
        rmsnorm(x, weight, residual=r[:2])


@pytest.mark.usefixtures("interpret")
def test_interpreter_empty():
    x, weight = make_inputs(1, (0,), 16, torch.float32)
    weight.requires_grad_()
    out = rmsnorm(x, weight)
    assert out.shape == (0, 16)
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_dispatch_without_interpreter_is_reference(monkeypatch):
    """CPU tensors without TRITON_INTERPRET, and float64 anywhere, take the reference (bit-identical)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, weight = make_inputs(2, (4,), 16, torch.float32)
    assert torch.equal(rmsnorm(x, weight), rmsnorm_ref(x, weight))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, weight = make_inputs(2, (4,), 16, F64)
    assert torch.equal(rmsnorm(x, weight), rmsnorm_ref(x, weight))


@pytest.mark.usefixtures("interpret")
def test_bad_input_named():
    x, weight = make_inputs(3, (4,), 16, torch.float32)
    with pytest.raises(ValueError, match="weight"):
        rmsnorm(x, weight[:8])
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        rmsnorm(x.to(torch.int32), weight)


@pytest.mark.usefixtures("interpret")
def test_custom_op_registration():
    """Schema, fake (meta) and autograd registration of the custom ops (torch.library.opcheck)."""
    x, weight = make_inputs(4, (3,), 16, torch.float32)
    out, rstd = torch.ops.nemotron_kernels.rmsnorm_fwd.default(x, weight, 1e-5)
    torch.library.opcheck(torch.ops.nemotron_kernels.rmsnorm_fwd.default, (x, weight, 1e-5),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.nemotron_kernels.rmsnorm_bwd.default, (out, x, weight, rstd),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.nemotron_kernels.rmsnorm_add_fwd.default, (x, torch.randn_like(x), weight, 1e-5),
                          test_utils=("test_schema", "test_faketensor"))


def test_aot_compile_sm90():
    """Every kernel configuration compiles for sm_90a (no GPU needed)."""
    lines = aot_lines("rmsnorm")
    assert sum("rmsnorm_fwd" in line for line in lines) == 6 and sum("rmsnorm_bwd" in line for line in lines) == 3
    assert sum("residual=True" in line for line in lines) == 3


@pytest.mark.cuda
@pytest.mark.parametrize("lead", [(4, 2048), (1, 1), (256,)])
def test_cuda_nemotron_shapes(lead):
    """NemotronH: D = 2688, bf16 (prefill rows, one decode token, a decode batch)."""
    x, weight = make_inputs(7, lead, 2688, torch.bfloat16, device="cuda")
    check_fwd_bwd(x, weight)
    check_residual(x, weight)
