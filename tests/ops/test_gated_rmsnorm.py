"""gated_rmsnorm (Triton forward + backward) against the float64 reference, under the DESIGN error rule.
CPU: the kernels run in Triton's interpreter (fp16/bf16/fp32, small shapes); `cuda`: NemotronH shapes in bf16."""
import pytest
import torch
from mamba_checks import BWD, F64, FWD, aot_lines, assert_error_rule  # noqa: F401

from nemotron_kernels.ops.gated_rmsnorm import gated_rmsnorm
from nemotron_kernels.reference.gated_rmsnorm import gated_rmsnorm_ref


def make_inputs(seed, lead, dim, dtype, device="cpu", noncontiguous=False):
    g = torch.Generator().manual_seed(seed)
    y = 2.0 * torch.randn(*lead, dim, generator=g, dtype=F64)
    z = torch.randn(*lead, dim, generator=g, dtype=F64)
    weight = 1.0 + 0.5 * torch.randn(dim, generator=g, dtype=F64)
    y, z, weight = (t.to(device=device, dtype=dtype) for t in (y, z, weight))
    if noncontiguous:   # y and z as channel slices of one wider row, as they come out of in_proj
        wide = torch.cat([y, torch.zeros_like(y[..., :8]), z], dim=-1)
        y, z = wide[..., :dim], wide[..., dim + 8:]
    return y, z, weight


def check_fwd_bwd(y, z, weight, group_size, eps=1e-5):
    """Forward (2x rule) and backward (3x rule) of the kernel against fp64 and the same-dtype reference."""
    leaves = [t.detach().clone().requires_grad_() for t in (y, z, weight)]
    out = gated_rmsnorm(*leaves, group_size, eps)
    assert out.dtype == y.dtype and out.shape == y.shape
    leaves64 = [t.detach().to(F64).requires_grad_() for t in (y, z, weight)]
    out64 = gated_rmsnorm_ref(*leaves64, group_size, eps)
    leaves_low = [t.detach().clone().requires_grad_() for t in (y, z, weight)]
    out_low = gated_rmsnorm_ref(*leaves_low, group_size, eps)
    assert_error_rule("out", out.detach(), out64.detach(), out_low.detach(), FWD)

    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(99), dtype=F64)
    out.backward(dout.to(out.dtype).to(out.device))
    out64.backward(dout.to(out64.device))
    out_low.backward(dout.to(out_low.dtype).to(out.device))
    for name, a, b, c in zip(("dy", "dz", "dweight"), leaves, leaves64, leaves_low):
        assert a.grad.dtype == a.dtype
        assert_error_rule(name, a.grad, b.grad, c.grad, BWD)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lead,dim,group_size", [((3, 5), 48, 12), ((7,), 40, 40), ((1,), 64, 8), ((), 24, 8)])
@pytest.mark.usefixtures("interpret")
def test_interpreter_matches_reference(dtype, lead, dim, group_size):
    y, z, weight = make_inputs(dim + group_size + len(lead), lead, dim, dtype)
    check_fwd_bwd(y, z, weight, group_size)


@pytest.mark.usefixtures("interpret")
def test_interpreter_strided_inputs():
    y, z, weight = make_inputs(5, (2, 9), 32, torch.float32, noncontiguous=True)
    assert not y.is_contiguous()
    check_fwd_bwd(y, z, weight, 16, eps=1e-3)


@pytest.mark.usefixtures("interpret")
def test_interpreter_many_rows_per_program():
    """More row blocks than backward programs: each program loops and sums its dweight partial."""
    y, z, weight = make_inputs(11, (300,), 16, torch.float16)
    check_fwd_bwd(y, z, weight, 8)


@pytest.mark.parametrize("dim,group_size", [(36, 12), (40, 40), (4500, 1500)])
@pytest.mark.usefixtures("interpret")
def test_interpreter_reads_only_what_it_writes(assert_reads_only_written, dim, group_size):
    """37 rows (forward row blocks of 16 or 2: the last one partly empty; 16 or 8 backward programs, which loop)
    of groups narrower than their power-of-two block: 3 groups in a backward tile of 4, one whole-row group, and
    2 tiles of 2 groups, the second half empty. With scratch memory poisoned as NaN, out and every gradient (the
    dw partials' sum included) equal a plain run's, so no kernel reads an element that no kernel wrote."""
    y, z, weight = make_inputs(dim + group_size, (37,), dim, torch.float32)
    dout = torch.randn(y.shape, generator=torch.Generator().manual_seed(99))

    def run():
        leaves = [t.clone().requires_grad_() for t in (y, z, weight)]
        out = gated_rmsnorm(*leaves, group_size)
        return {"out": out.detach(), **dict(zip(("dy", "dz", "dweight"), torch.autograd.grad(out, leaves, dout)))}

    assert_reads_only_written(run)


@pytest.mark.usefixtures("interpret")
def test_interpreter_empty():
    y, z, weight = make_inputs(1, (0,), 16, torch.float32)
    weight.requires_grad_()
    out = gated_rmsnorm(y, z, weight, 8)
    assert out.shape == (0, 16)
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_dispatch_without_interpreter_is_reference(monkeypatch):
    """CPU tensors without TRITON_INTERPRET, and float64 anywhere, take the reference (bit-identical)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    y, z, weight = make_inputs(2, (4,), 16, torch.float32)
    assert torch.equal(gated_rmsnorm(y, z, weight, 8), gated_rmsnorm_ref(y, z, weight, 8))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    y, z, weight = make_inputs(2, (4,), 16, F64)
    assert torch.equal(gated_rmsnorm(y, z, weight, 8), gated_rmsnorm_ref(y, z, weight, 8))


@pytest.mark.usefixtures("interpret")
def test_bad_input_named():
    y, z, weight = make_inputs(3, (4,), 16, torch.float32)
    with pytest.raises(ValueError, match="group_size"):
        gated_rmsnorm(y, z, weight, 5)
    with pytest.raises(ValueError, match="weight"):
        gated_rmsnorm(y, z, weight[:8], 8)
    with pytest.raises(ValueError, match="z"):
        gated_rmsnorm(y, z[:2], weight, 8)


@pytest.mark.usefixtures("interpret")
def test_custom_op_registration():
    """Schema, fake (meta) and autograd registration of the custom ops (torch.library.opcheck)."""
    y, z, weight = make_inputs(4, (3,), 16, torch.float32)
    torch.library.opcheck(torch.ops.nemotron_kernels.gated_rmsnorm_fwd.default, (y, z, weight, 8, 1e-5),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.nemotron_kernels.gated_rmsnorm_bwd.default, (y, y, z, weight, 8, 1e-5),
                          test_utils=("test_schema", "test_faketensor"))


def test_aot_compile_sm90():
    """Every kernel configuration compiles for sm_90a (no GPU needed)."""
    assert len(aot_lines("gated_rmsnorm_fwd")) == 3
    assert len(aot_lines("gated_rmsnorm_bwd")) == 3


@pytest.mark.cuda
@pytest.mark.parametrize("lead", [(4, 2048), (1, 1), (256,)])
def test_cuda_nemotron_shapes(lead):
    """NemotronH: D = 4096, 8 groups of 512, bf16 (prefill rows, one decode token, a decode batch)."""
    y, z, weight = make_inputs(7, lead, 4096, torch.bfloat16, device="cuda")
    check_fwd_bwd(y, z, weight, 512)


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_past_2_31_elements():
    """2^31 + rows elements: int64 row offsets (524_800 rows x 4096 channels)."""
    rows = (2 ** 31) // 4096 + 512
    g = torch.Generator(device="cuda").manual_seed(0)
    y = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16, generator=g)
    z = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16, generator=g)
    weight = torch.ones(4096, device="cuda", dtype=torch.bfloat16)
    out = gated_rmsnorm(y, z, weight, 512)
    tail = slice(rows - 64, rows)
    expected = gated_rmsnorm_ref(y[tail].double(), z[tail].double(), weight.double(), 512)
    assert (out[tail].double() - expected).abs().max().item() < 0.05
