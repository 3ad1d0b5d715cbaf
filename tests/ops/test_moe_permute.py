"""moe_permute / moe_unpermute: the reference against explicit loops (CPU), the public ops (CPU = reference), bad
input, and the CUDA kernels against the reference (bitwise for the permutation, error rule for the weighted sum)."""
import pytest
import torch

from nemotron_kernels import moe_permute, moe_unpermute, ops_for
from nemotron_kernels.ops.moe_permute import moe_unpermute_op
from nemotron_kernels.reference.moe_permute import moe_permute_ref, moe_unpermute_ref

F64 = torch.float64


def routing(ntokens, nexperts, top_k, seed, device="cpu", skip=(), only=None):
    """topk_idx [T, k] int32: distinct experts per token, avoiding `skip`, or all on `only` (then k must be 1)."""
    g = torch.Generator().manual_seed(seed)
    if only is not None:
        return torch.full((ntokens, top_k), only, dtype=torch.int32, device=device)
    experts = torch.tensor([e for e in range(nexperts) if e not in skip])
    choice = torch.stack([torch.randperm(len(experts), generator=g)[:top_k] for _ in range(ntokens)]) if ntokens else \
        torch.zeros(0, top_k, dtype=torch.long)
    return experts[choice].to(torch.int32).to(device)


def explicit_permutation(topk_idx, nexperts, pad_to):
    """Expected (row_of_assignment [T, k], expert_offsets [E+1]) by a plain loop: experts in order, assignments
    a = t*k + j increasing within an expert, each expert padded to a multiple of pad_to."""
    ntokens, top_k = topk_idx.shape
    row = torch.empty(ntokens, top_k, dtype=torch.int32)
    offsets, start = [0], 0
    for e in range(nexperts):
        count = 0
        for a in range(ntokens * top_k):
            if int(topk_idx.view(-1)[a]) == e:
                row.view(-1)[a] = start + count
                count += 1
        start += -(-count // pad_to) * pad_to
        offsets.append(start)
    return row, torch.tensor(offsets, dtype=torch.int32)


CASES = [  # (T, E, k, pad_to, skip, only)
    (1, 8, 2, 1, (), None),
    (1, 5, 3, 4, (), None),
    (13, 7, 3, 1, (2,), None),        # expert 2 gets no token, E not a power of two
    (16, 6, 1, 1, (), 4),             # all tokens on one expert
    (33, 12, 4, 8, (0, 11), None),    # padding, first and last expert empty
    (50, 128, 6, 1, (), None),        # Nemotron's E and k
]


@pytest.mark.parametrize("ntokens,nexperts,top_k,pad_to,skip,only", CASES)
def test_reference_matches_explicit_loop(ntokens, nexperts, top_k, pad_to, skip, only):
    topk_idx = routing(ntokens, nexperts, top_k, seed=ntokens, skip=skip, only=only)
    x = torch.randn(ntokens, 10, dtype=F64)
    rows, row_of_assignment, offsets = moe_permute_ref(x, topk_idx, nexperts, pad_to)
    row_exp, offsets_exp = explicit_permutation(topk_idx, nexperts, pad_to)
    assert row_of_assignment.dtype == torch.int32 and offsets.dtype == torch.int32
    assert torch.equal(row_of_assignment, row_exp)
    assert torch.equal(offsets, offsets_exp)
    assert rows.shape == (ntokens * top_k + (nexperts * (pad_to - 1) if pad_to > 1 else 0), 10)
    covered = torch.zeros(rows.shape[0], dtype=torch.bool)
    for t in range(ntokens):
        for j in range(top_k):
            r = int(row_of_assignment[t, j])
            assert torch.equal(rows[r], x[t])
            covered[r] = True
    assert torch.count_nonzero(rows[~covered]) == 0          # padding rows are zero
    for e in range(nexperts):                                  # each expert's rows hold only its tokens
        for r in range(int(offsets[e]), int(offsets[e + 1])):
            if covered[r]:
                t, j = divmod(int((row_of_assignment.view(-1) == r).nonzero()), top_k)
                assert int(topk_idx[t, j]) == e


@pytest.mark.parametrize("with_weight", [True, False])
def test_unpermute_reference_matches_loop_and_roundtrip(with_weight):
    ntokens, nexperts, top_k = 9, 5, 3
    topk_idx = routing(ntokens, nexperts, top_k, seed=3)
    x = torch.randn(ntokens, 6, dtype=F64)
    weight = torch.rand(ntokens, top_k, dtype=F64) if with_weight else None
    rows, row_of_assignment, _ = moe_permute_ref(x, topk_idx, nexperts, 2)
    out = moe_unpermute_ref(rows, row_of_assignment, weight)
    expect = torch.stack([sum((1.0 if weight is None else weight[t, j]) * rows[int(row_of_assignment[t, j])]
                              for j in range(top_k)) for t in range(ntokens)])
    torch.testing.assert_close(out, expect, rtol=1e-14, atol=1e-14)
    scale = torch.ones(ntokens, top_k, dtype=F64) if weight is None else weight
    torch.testing.assert_close(out, x * scale.sum(1, keepdim=True), rtol=1e-12, atol=1e-12)


def test_unpermute_reference_bf16_sums_in_fp32():
    rows = torch.tensor([[1.0], [2 ** -8], [2 ** -8]], dtype=torch.bfloat16)
    out = moe_unpermute_ref(rows, torch.tensor([[0, 1, 2]]), None)
    assert out.dtype == torch.bfloat16 and out.item() == 1.0 + 2 ** -7   # bf16 adds one at a time would give 1


def test_gradcheck_reference_float64():
    topk_idx = routing(5, 4, 2, seed=1)
    x = torch.randn(5, 3, dtype=F64, requires_grad=True)
    weight = torch.rand(5, 2, dtype=F64, requires_grad=True)

    def f(x, weight):
        rows, row_of_assignment, _ = moe_permute(x, topk_idx, 4, 2)
        return moe_unpermute(rows * rows, row_of_assignment, weight)

    assert torch.autograd.gradcheck(f, (x, weight))


def test_public_ops_on_cpu_are_the_reference():
    topk_idx = routing(11, 6, 2, seed=5).long()
    x = torch.randn(11, 8, dtype=torch.bfloat16)
    got = moe_permute(x, topk_idx, 6, 4)
    want = moe_permute_ref(x, topk_idx, 6, 4)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    w = torch.rand(11, 2)
    assert torch.equal(moe_unpermute(got[0], got[1], w), moe_unpermute_ref(want[0], want[1], w))


def _permute_args():
    return dict(x=torch.randn(4, 8), topk_idx=routing(4, 5, 2, seed=0), num_experts=5, pad_to=1)


@pytest.mark.parametrize("change,exc,match", [
    (dict(x=torch.randn(4, 8).int()), TypeError, "x must have a floating-point dtype"),
    (dict(x=torch.randn(4, 8, 1)), ValueError, "x must be 2-D"),
    (dict(topk_idx=torch.zeros(4, 2)), TypeError, "topk_idx must have dtype"),
    (dict(topk_idx=torch.zeros(3, 2, dtype=torch.int32)), ValueError, "topk_idx must have T = 4 rows"),
    (dict(topk_idx=torch.full((4, 2), 5, dtype=torch.int32)), ValueError, r"topk_idx values must lie in \[0, num_experts=5\)"),
    (dict(topk_idx=torch.full((4, 2), -1, dtype=torch.int32)), ValueError, "topk_idx values must lie"),
    (dict(num_experts=0), ValueError, "num_experts must be >= 1"),
    (dict(num_experts=2.0), TypeError, "num_experts must be an int"),
    (dict(pad_to=0), ValueError, "pad_to must be >= 1"),
])
def test_permute_bad_inputs_name_the_argument(change, exc, match):
    with pytest.raises(exc, match=match):
        moe_permute(**{**_permute_args(), **change})


def test_extension_refuses_cpu_tensors_naming_the_device():
    """The extension's MoE entries are CUDA-only (the ops send CPU inputs to the reference) and say so."""
    from nemotron_kernels import _ext
    if _ext._C is None:
        pytest.skip(f"extension not loaded: {_ext.LOAD_ERROR}")
    args = _permute_args()
    with pytest.raises(RuntimeError) as raised:
        _ext._C.moe_permute(args["x"], args["topk_idx"], args["num_experts"], args["pad_to"], None)
    assert str(raised.value).splitlines()[0] == (
        "x must be a CUDA tensor (on CPU the MoE ops run their Python reference), got cpu")


@pytest.mark.parametrize("change,exc,match", [
    (dict(rows=torch.randn(8)), ValueError, "rows must be 2-D"),
    (dict(row_of_assignment=torch.zeros(4, 2)), TypeError, "row_of_assignment must have dtype"),
    (dict(row_of_assignment=torch.full((4, 2), 8, dtype=torch.int32)), ValueError, r"values must lie in \[0, M=8\)"),
    (dict(topk_weight=torch.rand(4, 3)), ValueError, "topk_weight must have shape"),
    (dict(topk_weight=torch.ones(4, 2, dtype=torch.int32)), TypeError, "topk_weight must have a floating-point"),
])
def test_unpermute_bad_inputs_name_the_argument(change, exc, match):
    args = dict(rows=torch.randn(8, 3), row_of_assignment=torch.arange(8, dtype=torch.int32).view(4, 2),
                topk_weight=torch.rand(4, 2))
    with pytest.raises(exc, match=match):
        moe_unpermute(**{**args, **change})


# ------------------------------------------------------------------------------------------------ CUDA kernels

CUDA_CASES = CASES + [(0, 4, 2, 1, (), None), (1, 128, 6, 1, (), None), (4096, 128, 6, 1, (), None),
                      (3000, 100, 8, 16, (7, 99), None), (5000, 1024, 2, 1, (), None),
                      # around the one-block path's limits (2048 assignments, 4096 rows)
                      (341, 128, 6, 1, (), None), (342, 128, 6, 1, (), None), (300, 64, 4, 16, (5,), None),
                      (200, 128, 6, 32, (), None), (1024, 1024, 2, 1, (), None)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("ntokens,nexperts,top_k,pad_to,skip,only", CUDA_CASES)
def test_cuda_permute_is_the_reference_bitwise(ntokens, nexperts, top_k, pad_to, skip, only, dtype):
    topk_idx = routing(ntokens, nexperts, top_k, seed=ntokens + 1, device="cuda", skip=skip, only=only)
    x = torch.randn(ntokens, 200, device="cuda").to(dtype)
    got = moe_permute(x, topk_idx, nexperts, pad_to)
    want = moe_permute_ref(x, topk_idx, nexperts, pad_to)
    for name, a, b in zip(("rows", "row_of_assignment", "expert_offsets"), got, want):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    again = moe_permute(x, topk_idx, nexperts, pad_to)
    assert all(torch.equal(a, b) for a, b in zip(got, again))


@pytest.mark.cuda
@pytest.mark.parametrize("ntokens,pad_to", [(40, 16), (300, 1), (900, 16)])   # one block (<= 2,048 assignments
def test_cuda_scaled_permute_carries_row_scales(ntokens, pad_to):             # and 4,096 rows), five launches
    """moe_permute_scaled (FP8 rows + their per-token scales): the rows and offsets as moe_permute's, and row_scale
    = the scale of each row's token, 0 on padding rows."""
    from nemotron_kernels.ops.moe_permute import moe_permute_scaled_op
    nexperts, top_k = 128, 6
    topk_idx = routing(ntokens, nexperts, top_k, seed=ntokens, device="cuda", skip=(3,), only=None)
    x = torch.randn(ntokens, 256, device="cuda").to(torch.float8_e4m3fn)
    x_scale = torch.rand(ntokens, device="cuda") + 0.5
    rows, row_scale, row_of_assignment, offsets = moe_permute_scaled_op(x, x_scale, topk_idx, nexperts, pad_to)
    want_rows, want_roa, want_offsets = moe_permute_ref(x.float(), topk_idx, nexperts, pad_to)   # e4m3: exact
    assert torch.equal(rows.float(), want_rows) and torch.equal(row_of_assignment, want_roa)
    assert torch.equal(offsets, want_offsets)
    want_scale = torch.zeros(rows.shape[0], device="cuda")
    want_scale[want_roa.view(-1).long()] = x_scale.repeat_interleave(top_k)
    assert torch.equal(row_scale, want_scale)
    assert (pad_to == 1) == bool((row_scale > 0).all())


@pytest.mark.cuda
def test_cuda_permute_drops_out_of_range_experts():
    topk_idx = torch.tensor([[0, 9], [1, -3]], dtype=torch.int32, device="cuda")
    rows, row_of_assignment, offsets = moe_permute(torch.randn(2, 8, device="cuda"), topk_idx, 4)
    assert row_of_assignment.tolist() == [[0, -1], [1, -1]]
    assert offsets.tolist() == [0, 1, 2, 2, 2]
    assert torch.count_nonzero(rows[2:]) == 0


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,hidden", [(torch.bfloat16, 2688), (torch.float32, 2100)])   # 2100 fp32: 525
def test_cuda_permute_many_tokens_with_drops(dtype, hidden):                                  # units, two passes
    """Past one chunk (the scatter: one CTA per token, then CTAs zeroing unfilled rows): every kept slot's row is
    its token's row bit for bit, dropped slots get row -1, and every row no slot fills is zero."""
    ntokens, nexperts, top_k = 700, 128, 6
    topk_idx = routing(ntokens, nexperts, top_k, seed=5, device="cuda", skip=(), only=None)
    dropped = torch.zeros_like(topk_idx, dtype=torch.bool)
    dropped[::7, 2] = True
    dropped[3::11, 5] = True
    topk_idx = torch.where(dropped, torch.where(torch.rand_like(topk_idx, dtype=torch.float) < 0.5, -1, nexperts),
                           topk_idx).to(torch.int32)
    x = torch.randn(ntokens, hidden, device="cuda").to(dtype)
    rows, roa, offsets = moe_permute(x, topk_idx, nexperts, 8)
    assert bool((roa[dropped] == -1).all()) and bool((roa[~dropped] >= 0).all())
    token = torch.arange(ntokens, device="cuda")[:, None].expand(-1, top_k)
    assert torch.equal(rows[roa[~dropped].long()], x[token[~dropped]])
    filled = torch.zeros(rows.shape[0], dtype=torch.bool, device="cuda")
    filled[roa[~dropped].long()] = True
    assert int(offsets[-1]) <= rows.shape[0] and torch.count_nonzero(rows[~filled]) == 0
    again = moe_permute(x, topk_idx, nexperts, 8)
    assert all(torch.equal(a, b) for a, b in zip((rows, roa, offsets), again))


def _assert_error_rule(name, got, ref64, low, k, scale=None):
    """err <= k x the low-precision reference's + one eps of `scale` (default max |ref64|; for a long fp32 sum the
    sum of its terms' magnitudes, the scale of its rounding error whatever the order)."""
    err = (got.double() - ref64).abs().max().item() if got.numel() else 0.0
    base = (low.double() - ref64).abs().max().item() if got.numel() else 0.0
    scale = scale if scale is not None else (ref64.abs().max().item() if got.numel() else 0.0)
    floor = torch.finfo(got.dtype).eps * scale
    assert err <= k * base + floor, f"{name}: err {err:.3e} > {k} x {base:.3e} + {floor:.3e}"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("ntokens,hidden,pad_to", [(1, 2688, 1), (777, 2688, 1), (300, 200, 4), (64, 37, 1)])
def test_cuda_unpermute_forward_backward(ntokens, hidden, pad_to, dtype):
    nexperts, top_k = 128, 6
    topk_idx = routing(ntokens, nexperts, top_k, seed=ntokens, device="cuda")
    x = torch.randn(ntokens, hidden, device="cuda").to(dtype)
    rows, row_of_assignment, _ = moe_permute(x, topk_idx, nexperts, pad_to)
    rows = (rows.float() * torch.rand_like(rows.float())).to(dtype).requires_grad_()   # distinct rows per slot
    weight = torch.rand(ntokens, top_k, device="cuda", requires_grad=True)
    out = moe_unpermute(rows, row_of_assignment, weight)
    rows64 = rows.detach().double().requires_grad_()
    weight64 = weight.detach().double().requires_grad_()
    out64 = moe_unpermute_ref(rows64, row_of_assignment, weight64)
    rows_low = rows.detach().clone().requires_grad_()
    weight_low = weight.detach().clone().requires_grad_()
    out_low = moe_unpermute_ref(rows_low, row_of_assignment, weight_low)
    _assert_error_rule("out", out, out64, out_low, 2)
    assert torch.equal(out, moe_unpermute(rows, row_of_assignment, weight))          # deterministic
    dout = torch.randn_like(out)
    out.backward(dout)
    out64.backward(dout.double())
    out_low.backward(dout)
    _assert_error_rule("d rows", rows.grad, rows64.grad, rows_low.grad, 3)
    # d topk_weight[t, j] = <dout[t], rows[r]>: an fp32 sum of H products, rounded in the kernel's order and in
    # torch's. Its floor is one eps of the products' magnitudes: with few tokens (T = 1: six values) torch's error
    # alone can fall far below the kernel's by chance. The likely cause of this test's one unexplained failure
    # (T = 1, bf16, session 15; the failing check was not kept), the only check here on a long sum.
    terms = (dout.double()[:, None, :] * rows64.detach()[row_of_assignment.long()]).abs().sum(-1)   # [T, k]
    _assert_error_rule("d topk_weight", weight.grad, weight64.grad, weight_low.grad, 3,
                       scale=terms.max().item() if terms.numel() else 0.0)


@pytest.mark.cuda
@pytest.mark.parametrize("top_k", [1, 6, 8, 11])   # 11: two of the kernel's batches of 8 loads, the second partial
def test_cuda_unpermute_exact_sums_with_dropped_slots_and_add(top_k):
    # Small integers times quarter weights: every product and partial sum is exact in fp32, so a row loaded for the
    # wrong slot, a dropped slot (-1) that adds something, or a slot lost past the first batch shows as inequality.
    ntokens, hidden = 37, 2688
    m = ntokens * top_k
    g = torch.Generator(device="cuda").manual_seed(top_k)
    rows = torch.randint(-8, 9, (m, hidden), device="cuda", generator=g).to(torch.bfloat16)
    roa = torch.randperm(m, device="cuda", generator=g).view(ntokens, top_k).int()
    roa[::3, top_k // 2] = -1
    weight = torch.randint(1, 5, (ntokens, top_k), device="cuda", generator=g).float() / 4
    add = torch.randint(-8, 9, (ntokens, hidden), device="cuda", generator=g).to(torch.bfloat16)
    got = moe_unpermute_op(rows, roa, weight, add)
    kept = weight * (roa >= 0)
    sums = (rows.float()[roa.clamp(min=0).long()] * kept[..., None]).sum(1)   # [T, H], exact
    assert torch.equal(got, (sums.to(torch.bfloat16).float() + add.float()).to(torch.bfloat16))


@pytest.mark.cuda
def test_cuda_permute_backward_sums_slots():
    topk_idx = routing(300, 16, 4, seed=9, device="cuda")
    x = torch.randn(300, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    rows, _, _ = moe_permute(x, topk_idx, 16, 8)
    d_rows = torch.randn_like(rows)
    rows.backward(d_rows)
    x64 = x.detach().double().requires_grad_()
    moe_permute_ref(x64, topk_idx, 16, 8)[0].backward(d_rows.double())
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=2 ** -8, atol=1e-6)


@pytest.mark.cuda
def test_cuda_opcheck_and_compile():
    topk_idx = routing(40, 8, 2, seed=2, device="cuda")
    x = torch.randn(40, 16, device="cuda", dtype=torch.bfloat16)
    from nemotron_kernels.ops.moe_permute import moe_permute_op, moe_unpermute_bwd_op, moe_unpermute_op
    torch.library.opcheck(moe_permute_op.op, (x, topk_idx, 8, 4))
    rows, row_of_assignment, _ = moe_permute_op(x, topk_idx, 8, 1)
    w = torch.rand(40, 2, device="cuda")
    torch.library.opcheck(moe_unpermute_op.op, (rows, row_of_assignment, w, None))
    torch.library.opcheck(moe_unpermute_bwd_op.op, (x, rows, row_of_assignment, w, rows.shape[0]))
    from nemotron_kernels.ops.moe_permute import moe_permute_rows_op
    from nemotron_kernels.reference.moe_permute import expert_permutation_ref
    roa, _, token_of_row = (t.cuda() for t in expert_permutation_ref(topk_idx.cpu(), 8, 4))
    torch.library.opcheck(moe_permute_rows_op.op, (x, roa, token_of_row))

    def layer(x, w):
        rows, row_of_assignment, _ = moe_permute(x, topk_idx, 8)
        return moe_unpermute(rows, row_of_assignment, w)

    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x, w), layer(x, w), rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.isolated
def test_cuda_entry_checks_name_the_argument():
    from nemotron_kernels import _ext
    x = torch.randn(4, 8, device="cuda")
    idx = torch.zeros(4, 2, dtype=torch.int32, device="cuda")
    with pytest.raises(TypeError, match="topk_idx must have dtype Int"):
        _ext._C.moe_permute(x, idx.long(), 4, 1, None)
    with pytest.raises(ValueError, match="num_experts must be in"):
        _ext._C.moe_permute(x, idx, 5000, 1, None)
    with pytest.raises(ValueError, match="topk_idx must be contiguous"):
        _ext._C.moe_permute(x, torch.zeros(2, 4, dtype=torch.int32, device="cuda").t(), 4, 1, None)


# ------------------------------------------------------------------------------------------------ given permutation

def test_permute_with_a_given_permutation_is_the_same():
    """moe_permute(..., permutation=expert_permutation_ref(...)) (what moe_router_permute returns) gives what it
    gives without one, gradient included; a permutation of the wrong shape or type is refused by name."""
    from nemotron_kernels.reference.moe_permute import expert_permutation_ref
    idx = routing(9, 5, 2, seed=3)
    x = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    for pad_to in (1, 4):
        perm = expert_permutation_ref(idx, 5, pad_to)
        got, want = moe_permute(x, idx, 5, pad_to, permutation=perm), moe_permute(x, idx, 5, pad_to)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        ref = ops_for("reference").moe_permute(x, idx, 5, pad_to, permutation=perm)   # the reference takes it too
        assert all(torch.equal(a, b) for a, b in zip(ref, want))
        g = torch.randn_like(got[0])
        assert torch.equal(torch.autograd.grad(got[0], x, g)[0], torch.autograd.grad(want[0], x, g)[0])
    with pytest.raises(ValueError, match=r"token_of_row must have shape \[M\] = \(18,\)"):
        moe_permute(x, idx, 5, 1, permutation=(perm[0], perm[1], perm[2][:5]))
    with pytest.raises(TypeError, match="permutation must be"):
        moe_permute(x, idx, 5, 1, permutation=perm[:2])


@pytest.mark.cuda
@pytest.mark.parametrize("ntokens,pad_to", [(3, 1), (300, 1), (5000, 1), (5000, 128)])
def test_cuda_permute_with_the_routers_permutation(ntokens, pad_to):
    """The rows copied for moe_router_permute's permutation (one launch) equal moe_permute's own, bitwise, and so
    does the backward; moe_experts with it equals moe_experts without, output and gradients."""
    from nemotron_kernels import _ext, moe_experts
    from nemotron_kernels.ops.moe_router import moe_router_permute
    g = torch.Generator(device="cuda").manual_seed(ntokens)
    logits = torch.randn(ntokens, 128, device="cuda", generator=g)
    bias = 0.1 * torch.randn(128, device="cuda", generator=g)
    idx, weight, _, *perm = moe_router_permute(logits, bias, 6, 2.5, 1, 1, pad_to)
    x = torch.randn(ntokens, 264, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    got, want = moe_permute(x, idx, 128, pad_to, permutation=perm), moe_permute(x, idx, 128, pad_to)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    dy = torch.randn_like(got[0])
    assert torch.equal(torch.autograd.grad(got[0], x, dy)[0], torch.autograd.grad(want[0], x, dy)[0])
    if pad_to != 1:
        return
    up = torch.randn(128, 64, 264, device="cuda", generator=g).to(torch.bfloat16) * 264 ** -0.5
    down = torch.randn(128, 264, 64, device="cuda", generator=g).to(torch.bfloat16) * 64 ** -0.5
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, up, down)]
    again = [t.detach().clone().requires_grad_() for t in (x, weight, up, down)]
    out = moe_experts(leaves[0], idx, leaves[1], leaves[2], leaves[3], permutation=perm)
    ref = moe_experts(again[0], idx, again[1], again[2], again[3])
    assert torch.equal(out, ref)
    dout = torch.randn_like(out)
    out.backward(dout)
    ref.backward(dout)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(leaves, again))
    assert _ext._C is not None
