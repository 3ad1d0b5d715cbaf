"""moe_decode_gemv: the MoE layer's projections at decode straight from topk_idx (no permute), the shared expert in
the same launch; moe_decode_down: one token's down projection and weighted sum in one launch; and the decode path of
moe_experts / moe_experts_fp8 built on them (three kernels per layer, two for one token)."""
import pytest
import torch

from nemotron_kernels.ops.moe_experts import moe_experts, moe_experts_fp8, quantize_experts_fp8
from nemotron_kernels.reference.grouped_gemm import (moe_decode_down_ref, moe_decode_gemv_ref, moe_experts_fp8_ref,
                                                     quantize_fp8_rowwise_ref)
from nemotron_kernels.reference.moe_experts import moe_experts_ref
from nemotron_kernels.testing import assert_error_rule

BF16 = torch.bfloat16


def weights(g, *shape, fp8=False):
    """Random weights [..., N, K] in bf16 scaled by K^-1/2 with None scales, or (fp8) their e4m3 rows with
    per-channel scales [..., N]."""
    w = (torch.randn(*shape, generator=g) * shape[-1] ** -0.5).to(BF16)
    if not fp8:
        return w, None
    q, scale = quantize_fp8_rowwise_ref(w.reshape(-1, shape[-1]))
    return q.view(shape), scale.view(shape[:-1])


def operands(ntokens, top_k, experts, n, k, shared_n, seed, fp8=False, per_assignment=False, device="cpu"):
    """a [T or T*k, K] bf16, topk_idx [T, k] int32 (distinct experts per token), b [E, N, K] (+ scales for e4m3),
    and the shared expert's shared_a [T, Ks = K], shared_b [Ns, K] (or None for shared_n = 0)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(ntokens * top_k if per_assignment else ntokens, k, generator=g).to(BF16)
    idx = torch.stack([torch.randperm(experts, generator=g)[:top_k] for _ in range(ntokens)]).to(torch.int32)
    b, b_scale = weights(g, experts, n, k, fp8=fp8)
    sa = torch.randn(ntokens, k, generator=g).to(BF16) if shared_n else None
    sb, sb_scale = weights(g, shared_n, k, fp8=fp8) if shared_n else (None, None)
    out = (a, idx, b, b_scale, sa, sb, sb_scale)
    return tuple(t.to(device) if t is not None else None for t in out)


def as64(a, idx, b, b_scale, sa, sb, sb_scale):
    """The same operands for the float64 reference (e4m3 weights stay e4m3 with their scales)."""
    f = (lambda t: t) if b.dtype == torch.float8_e4m3fn else (lambda t: t.double())
    return (a.double(), idx, f(b), b_scale, sa.double() if sa is not None else None,
            f(sb) if sb is not None else None, sb_scale)


# ---------------------------------------------------------------------------------------------- reference (CPU)

@pytest.mark.parametrize("fp8", [False, True])
def test_reference_layer_is_moe_experts(fp8):
    """up (a = the tokens), down (a = one row per assignment), weighted sum + shared: the MoE layer's references."""
    T, k, E, H, I = 2, 3, 5, 32, 16
    g = torch.Generator().manual_seed(1)
    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)
    x, w = randn(T, H), torch.rand(T, k, generator=g, dtype=torch.float64)
    idx = torch.tensor([[4, 0, 2], [1, 4, 3]], dtype=torch.int32)
    up, down, s_up, s_down = randn(E, I, H), randn(E, H, I), randn(2 * I, H), randn(H, 2 * I)
    if fp8:
        q = quantize_experts_fp8(up, down, s_up, s_down)
        h, hs = moe_decode_gemv_ref(x, idx, q["up_q"], q["up_scale"], x, q["shared_up_q"], q["shared_up_scale"],
                                    "relu2")
        y, ys = moe_decode_gemv_ref(h.to(BF16).double(), idx, q["down_q"], q["down_scale"], hs.to(BF16).double(),
                                    q["shared_down_q"], q["shared_down_scale"])
        want = moe_experts_fp8_ref(x, idx, w, **q, weights_only=True).double()
        tol = dict(rtol=2 ** -7, atol=2 ** -7 * want.abs().max().item())       # its bf16 rounding points
    else:
        h, hs = moe_decode_gemv_ref(x, idx, up, None, x, s_up, None, "relu2")
        y, ys = moe_decode_gemv_ref(h, idx, down, None, hs, s_down, None)
        want = moe_experts_ref(x, idx, w, up, down, s_up, s_down)
        tol = dict(rtol=1e-12, atol=1e-12)
    got = (w[..., None] * y.to(want.dtype).view(T, k, H)).sum(1) + ys.to(want.dtype)
    if fp8:
        got = got.to(BF16).double()
    torch.testing.assert_close(got, want, **tol)


def test_reference_rows_invalid_experts_and_no_shared():
    a, idx, b, *_ = operands(2, 3, 4, 8, 16, 0, seed=2, per_assignment=True)
    idx[0, 1], idx[1, 2] = -1, 4                                                  # outside [0, E): zero rows
    d, sd = moe_decode_gemv_ref(a.double(), idx, b.double())
    assert sd.shape == (2, 0) and d.shape == (6, 8)
    assert torch.equal(d[1], torch.zeros(8, dtype=torch.float64)) and torch.equal(d[5], d[1])
    torch.testing.assert_close(d[3], b[idx[1, 0]].double() @ a[3].double())   # a row per assignment: row j


@pytest.mark.parametrize("change,exc,match", [
    (dict(a=torch.zeros(5, 16, dtype=BF16)), ValueError, "T = 2 rows"),
    (dict(topk_idx=torch.zeros(2, 3)), TypeError, "topk_idx"),
    (dict(b=torch.zeros(4, 8, 8, dtype=BF16)), ValueError, r"b must have shape \[E, N, K\]"),
    (dict(b_scale=torch.ones(4, 8)), ValueError, "b_scale must be given exactly"),
    (dict(shared_a=torch.zeros(2, 16, dtype=BF16)), ValueError, "pass both"),
    (dict(activation="gelu"), ValueError, "activation"),
])
def test_reference_bad_inputs_name_the_argument(change, exc, match):
    a, idx, b, *_ = operands(2, 3, 4, 8, 16, 0, seed=3)
    args = dict(a=a, topk_idx=idx, b=b, b_scale=None, shared_a=None, shared_b=None, shared_b_scale=None,
                activation="none")
    with pytest.raises(exc, match=match):
        moe_decode_gemv_ref(**{**args, **change})


def test_binding_refuses_cpu_tensors():
    from nemotron_kernels import _ext
    if _ext._C is None:
        pytest.skip(f"extension not built: {_ext.LOAD_ERROR}")
    a, idx, b, *_ = operands(1, 2, 4, 8, 16, 0, seed=4)
    with pytest.raises(RuntimeError, match="a must be a CUDA tensor"):
        _ext._C.moe_decode_gemv(a, idx, b, None, None, None, None, False)


# ---------------------------------------------------------------------------------------------- kernel (GPU)

@pytest.mark.cuda
@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("split", [0, 1, 2, 4, 8])
@pytest.mark.parametrize("ntokens,top_k,experts,n,k,shared_n,per_assignment,relu2", [
    (1, 6, 8, 1856, 2688, 3712, False, True),     # Nemotron-H up at T = 1: 6 experts + the shared expert's 2 blocks
    (1, 6, 8, 2688, 1856, 2688, True, False),     # down (the shared expert's K = 3712 comes from shared_a below)
    (2, 6, 16, 24, 64, 48, False, True),          # T = 2: a token's 6 rows, 2-row shared passes, odd sizes
    (3, 2, 5, 40, 48, 0, True, False),            # no shared expert; K shorter than a warp's pieces
])
def test_cuda_kernel_against_float64(fp8, split, ntokens, top_k, experts, n, k, shared_n, per_assignment, relu2):
    """Every forced split, BF16 and weights-only FP8: the DESIGN 2x rule against float64 on the same operands,
    bitwise repeatable, and the auto split agreeing with the op."""
    from nemotron_kernels import _ext
    from nemotron_kernels.ops.grouped_gemm import moe_decode_gemv
    ops = list(operands(ntokens, top_k, experts, n, k, shared_n, seed=split + n, fp8=fp8,
                        per_assignment=per_assignment, device="cuda"))
    if shared_n and per_assignment:                                           # the down: shared K = 2 x K
        ops[4] = torch.randn(ntokens, 2 * k, device="cuda").to(BF16)
        ops[5] = (torch.randn(shared_n, 2 * k, device="cuda") * (2 * k) ** -0.5).to(BF16)
        if fp8:
            ops[5], ops[6] = quantize_fp8_rowwise_ref(ops[5])
    d, sd = _ext._C.moe_decode_gemv(*ops, relu2, split)
    act = "relu2" if relu2 else "none"
    want, s_want = moe_decode_gemv_ref(*as64(*ops), act)
    assert d.dtype == BF16 and d.shape == (ntokens * top_k, n) and sd.shape == (ntokens, shared_n)
    assert_error_rule(f"decode GEMV split {split}", d, want, want.to(BF16), 2)
    assert_error_rule(f"decode GEMV shared, split {split}", sd, s_want, s_want.to(BF16), 2)
    again = _ext._C.moe_decode_gemv(*ops, relu2, split)
    assert torch.equal(d, again[0]) and torch.equal(sd, again[1]), "not deterministic"
    if split == 0:
        got = moe_decode_gemv(*ops, relu2)
        assert torch.equal(got[0], d) and torch.equal(got[1], sd)


@pytest.mark.cuda
def test_cuda_invalid_experts_give_zero_rows():
    from nemotron_kernels.ops.grouped_gemm import moe_decode_gemv
    a, idx, b, _, sa, sb, _ = operands(2, 3, 4, 64, 32, 64, seed=5, device="cuda")
    idx[0, 1], idx[1, 2] = -1, 4
    d, sd = moe_decode_gemv(a, idx, b, None, sa, sb, None, True)
    assert torch.equal(d[1], torch.zeros_like(d[1])) and torch.equal(d[5], d[1])
    want, s_want = moe_decode_gemv_ref(a.double(), idx, b.double(), None, sa.double(), sb.double(), None, "relu2")
    assert_error_rule("decode GEMV with invalid ids", d, want, want.to(BF16), 2)
    assert_error_rule("decode GEMV with invalid ids, shared", sd, s_want, s_want.to(BF16), 2)


@pytest.mark.cuda
def test_cuda_bad_inputs_name_the_argument():
    from nemotron_kernels import _ext
    a, idx, b, _, sa, sb, _ = operands(1, 2, 4, 16, 32, 32, seed=6, device="cuda")
    q, qs = (t.cuda() for t in quantize_fp8_rowwise_ref(b.reshape(-1, 32).cpu()))
    q, qs = q.view(4, 16, 32), qs.view(4, 16)
    call = _ext._C.moe_decode_gemv
    cases = [
        ((a.float(), idx, b, None, None, None, None), "a must have dtype"),
        ((torch.zeros(3, 32, device="cuda", dtype=BF16), idx, b, None, None, None, None), "T = 1 rows"),
        ((a, idx.long(), b, None, None, None, None), "topk_idx must have dtype"),
        ((a, idx, b[:, :, :16].contiguous(), None, None, None, None), "b must have shape"),
        ((a, idx, q, None, None, None, None), "b_scale is required"),
        ((a, idx, b, qs, None, None, None), "b_scale applies to e4m3"),
        ((a, idx, b, None, sa, None, None), "pass both"),
        ((a, idx, b, None, sa, sb[:24].contiguous(), None), "multiple of N = 16"),
        ((a, idx, b, None, None, None, torch.ones(32, device="cuda")), "shared_b_scale without"),
        ((a, idx, b[:, :12].contiguous(), None, None, None, None), "N \\(b.shape\\[1\\]\\) = 12"),
    ]
    for args, match in cases:
        with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
            call(*args, False)
    with pytest.raises((RuntimeError, ValueError), match="gemv_split"):
        call(a, idx, b, None, None, None, None, False, 3)


@pytest.mark.cuda
def test_cuda_unpermute_in_assignment_order():
    """moe_unpermute without row_of_assignment reads row t*k + j: bitwise the same as with that map spelled out."""
    from nemotron_kernels.ops.moe_permute import moe_unpermute_op
    g = torch.Generator(device="cuda").manual_seed(7)
    rows = torch.randn(12, 64, device="cuda", generator=g).to(BF16)
    weight = torch.rand(3, 4, device="cuda", generator=g)
    add = torch.randn(3, 64, device="cuda", generator=g).to(BF16)
    identity = torch.arange(12, device="cuda", dtype=torch.int32).view(3, 4)
    assert torch.equal(moe_unpermute_op(rows, None, weight, add), moe_unpermute_op(rows, identity, weight, add))
    with pytest.raises((RuntimeError, ValueError), match="topk_weight is required"):
        moe_unpermute_op(rows, None, None, None)
    with pytest.raises((RuntimeError, ValueError), match="rows must have shape"):
        moe_unpermute_op(rows[:11].contiguous(), None, weight, None)
    torch.library.opcheck(moe_unpermute_op.op, (rows, None, weight, add))


def _layer(ntokens, seed, experts=16, hidden=2688, inter=1856, top_k=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ntokens, hidden, generator=g).to(BF16)
    idx = torch.stack([torch.randperm(experts, generator=g)[:top_k] for _ in range(ntokens)]).to(torch.int32)
    w = torch.rand(ntokens, top_k, generator=g) * 0.5
    up = (torch.randn(experts, inter, hidden, generator=g) * hidden ** -0.5).to(BF16)
    down = (torch.randn(experts, hidden, inter, generator=g) * inter ** -0.5).to(BF16)
    s_up = (torch.randn(2 * inter, hidden, generator=g) * hidden ** -0.5).to(BF16)
    s_down = (torch.randn(hidden, 2 * inter, generator=g) * (2 * inter) ** -0.5).to(BF16)
    return [t.cuda() for t in (x, idx, w, up, down, s_up, s_down)]


@pytest.mark.cuda
@pytest.mark.parametrize("ntokens", [1, 2])
def test_cuda_moe_experts_decode_path(ntokens):
    """moe_experts without gradients at T * k <= 16 takes the decode path: against float64 (2x rule) and within
    bf16 rounding of the permute path it replaces (which still runs when gradients are wanted)."""
    x, idx, w, up, down, s_up, s_down = _layer(ntokens, seed=8)
    with torch.no_grad():
        got = moe_experts(x, idx, w, up, down, s_up, s_down)
    want = moe_experts_ref(*(t.double() if t.is_floating_point() else t for t in (x, idx, w, up, down, s_up, s_down)))
    low = moe_experts_ref(x, idx, w, up, down, s_up, s_down)
    assert_error_rule(f"moe_experts decode T={ntokens}", got, want, low, 2)
    x.requires_grad_(True)
    permuted = moe_experts(x, idx, w, up, down, s_up, s_down)                   # autograd: the permute path
    torch.testing.assert_close(got.float(), permuted.detach().float(), rtol=2 ** -7,
                               atol=2 ** -7 * got.abs().max().item())


@pytest.mark.cuda
@pytest.mark.parametrize("ntokens", [1, 2])
def test_cuda_moe_experts_fp8_decode_path(ntokens):
    x, idx, w, up, down, s_up, s_down = _layer(ntokens, seed=9)
    q = quantize_experts_fp8(up, down, s_up, s_down)
    got = moe_experts_fp8(x, idx, w, **q)
    want = moe_experts_fp8_ref(x.double(), idx, w.double(), **q, weights_only=True)
    torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=2 ** -7 * want.abs().max().item())


@pytest.mark.cuda
def test_cuda_decode_path_captures_in_a_graph():
    x, idx, w, up, down, s_up, s_down = _layer(1, seed=10)
    with torch.no_grad():
        expect = moe_experts(x, idx, w, up, down, s_up, s_down)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = moe_experts(x, idx, w, up, down, s_up, s_down)
    out.zero_()
    graph.replay()
    assert torch.equal(out, expect)


@pytest.mark.cuda
def test_cuda_custom_op_opcheck():
    from nemotron_kernels.ops.grouped_gemm import moe_decode_gemv
    a, idx, b, _, sa, sb, _ = operands(2, 3, 4, 16, 32, 32, seed=11, device="cuda")
    torch.library.opcheck(moe_decode_gemv.op, (a, idx, b, None, sa, sb, None, True))
    torch.library.opcheck(moe_decode_gemv.op, (a, idx, b, None, None, None, None, False))


# ---------------------------------------------------------------------------------------------- moe_decode_down

def down_operands(top_k, experts, hidden, inter, pieces, seed, fp8=False, device="cpu"):
    """h [k, I] bf16, topk_idx [1, k], topk_weight [1, k], down [E, H, I] (+ scales), hs [1, Is], shared_down
    [H, Is] (+ scales), Is = pieces * I."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(top_k, inter, generator=g).to(BF16)
    idx = torch.randperm(experts, generator=g)[:top_k][None].to(torch.int32)
    w = torch.rand(1, top_k, generator=g)
    down, d_scale = weights(g, experts, hidden, inter, fp8=fp8)
    hs = torch.randn(1, pieces * inter, generator=g).to(BF16)
    sdown, s_scale = weights(g, hidden, pieces * inter, fp8=fp8)
    out = (h, idx, w, down, d_scale, hs, sdown, s_scale)
    return tuple(t.to(device) if t is not None else None for t in out)


def test_down_reference_is_the_layer_for_one_token():
    """up (moe_decode_gemv_ref) then moe_decode_down_ref is moe_experts_ref for one token, in float64."""
    g = torch.Generator().manual_seed(12)
    E, H, I, k = 5, 24, 16, 3
    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)
    x, w = randn(1, H), torch.rand(1, k, generator=g, dtype=torch.float64)
    idx = torch.tensor([[3, 0, 4]], dtype=torch.int32)
    up, down, s_up, s_down = randn(E, I, H), randn(E, H, I), randn(2 * I, H), randn(H, 2 * I)
    h, hs = moe_decode_gemv_ref(x, idx, up, None, x, s_up, None, "relu2")
    got = moe_decode_down_ref(h, idx, w, down, None, hs, s_down)
    torch.testing.assert_close(got, moe_experts_ref(x, idx, w, up, down, s_up, s_down), rtol=1e-12, atol=1e-12)
    idx_bad = torch.tensor([[3, -1, 4]], dtype=torch.int32)                       # an id outside [0, E): nothing
    w_kept = w.clone()
    w_kept[0, 1] = 0
    torch.testing.assert_close(moe_decode_down_ref(h, idx_bad, w, down, None, hs, s_down),
                               moe_decode_down_ref(h, idx, w_kept, down, None, hs, s_down))


@pytest.mark.cuda
@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("top_k,experts,hidden,inter,pieces", [
    (6, 8, 2688, 1856, 2),        # Nemotron-H: 6 routed + the shared expert's 2 pieces = the CTA's 8 warps
    (3, 5, 24, 64, 1),            # fewer units than warps
    (12, 16, 40, 32, 4),          # 16 units: two per warp
])
def test_cuda_decode_down_against_float64_and_the_three_kernels(fp8, top_k, experts, hidden, inter, pieces):
    from nemotron_kernels import _ext
    from nemotron_kernels.ops.grouped_gemm import moe_decode_down, moe_decode_gemv
    from nemotron_kernels.ops.moe_permute import moe_unpermute_op
    ops = down_operands(top_k, experts, hidden, inter, pieces, seed=top_k + hidden, fp8=fp8, device="cuda")
    h, idx, w, down, d_scale, hs, sdown, s_scale = ops
    got = moe_decode_down(*ops)
    f64 = (lambda t: t) if fp8 else (lambda t: t.double())
    want = moe_decode_down_ref(h.double(), idx, w.double(), f64(down), d_scale, hs.double(), f64(sdown), s_scale)
    low = moe_decode_down_ref(h, idx, w, down, d_scale, hs, sdown, s_scale)      # bf16 rounding points
    assert got.dtype == BF16 and got.shape == (1, hidden)
    assert_error_rule("decode down + sum", got, want, low, 2)
    assert torch.equal(_ext._C.moe_decode_down(*ops), got), "not deterministic"
    y, ys = moe_decode_gemv(h, idx, down, d_scale, hs, sdown, s_scale, False)
    three = moe_unpermute_op(y, None, w, ys)
    torch.testing.assert_close(got.float(), three.float(), rtol=2 ** -7, atol=2 ** -7 * three.abs().max().item())


@pytest.mark.cuda
@pytest.mark.parametrize("fp8", [False, True])
def test_cuda_decode_down_channels_per_cta_change_nothing(fp8):
    """The grid knob (output channels per CTA, for scripts/sweep_gemv_split.py) leaves every channel's sums as they
    are: bit for bit at 1, 2, 4 and 8, at the Nemotron-H shape and with two units per warp."""
    from nemotron_kernels import _ext
    for shape in ((6, 8, 2688, 1856, 2), (12, 16, 40, 32, 4)):
        ops = down_operands(*shape, seed=sum(shape), fp8=fp8, device="cuda")
        default = _ext._C.moe_decode_down(*ops)
        for channels in (1, 2, 4, 8):
            assert torch.equal(_ext._C.moe_decode_down(*ops, channels), default), (shape, channels)


@pytest.mark.cuda
def test_cuda_decode_down_invalid_expert_adds_nothing():
    from nemotron_kernels.ops.grouped_gemm import moe_decode_down
    h, idx, w, down, _, hs, sdown, _ = down_operands(3, 5, 24, 64, 1, seed=13, device="cuda")
    bad, kept = idx.clone(), w.clone()
    bad[0, 1], kept[0, 1] = 7, 0.0
    assert torch.equal(moe_decode_down(h, bad, w, down, None, hs, sdown, None),
                       moe_decode_down(h, idx, kept, down, None, hs, sdown, None))


@pytest.mark.cuda
def test_cuda_decode_down_bad_inputs_name_the_argument():
    from nemotron_kernels import _ext
    from nemotron_kernels.ops.grouped_gemm import moe_decode_down
    h, idx, w, down, _, hs, sdown, _ = down_operands(3, 5, 24, 64, 1, seed=14, device="cuda")
    call = _ext._C.moe_decode_down
    cases = [
        ((h, idx.repeat(2, 1), w, down, None, hs, sdown, None), "topk_idx must have shape"),
        ((h, idx, w.double(), down, None, hs, sdown, None), "topk_weight must have dtype"),
        ((h[:2].contiguous(), idx, w, down, None, hs, sdown, None), "h must have shape"),
        ((h, idx, w, down, None, torch.zeros(1, 96, device="cuda", dtype=BF16), sdown, None), "multiple of I = 64"),
        ((h, idx, w, down, torch.ones(5, 24, device="cuda"), hs, sdown, None), "down_scale applies to e4m3"),
        ((h, idx, w, down, None, hs, sdown[:16].contiguous(), None), "shared_down must have shape"),
    ]
    for args, match in cases:
        with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
            call(*args)
    big = down_operands(12, 16, 24, 16, 5, seed=15, device="cuda")                 # 12 + 5 units > 16
    with pytest.raises((RuntimeError, ValueError), match="work units"):
        call(*big)
    with pytest.raises((RuntimeError, ValueError), match="channels .per CTA. must be"):
        call(h, idx, w, down, None, hs, sdown, None, 3)
    torch.library.opcheck(moe_decode_down.op, (h, idx, w, down, None, hs, sdown, None))
