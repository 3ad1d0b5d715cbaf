"""moe_router: the C++ CPU kernel and the CUDA kernel against moe_router_ref (indices and counts bit for bit,
weights to fp32 rounding), ties, gradients, argument checks, torch.library registration."""
import pytest
import torch

from mamba_checks import aot_lines

from nemotron_kernels import _ext
from nemotron_kernels.ops import moe_router as router_ops
from nemotron_kernels.ops.moe_router import moe_router
from nemotron_kernels.reference.moe_router import moe_router_from_logits_ref, moe_router_ref

F32, F64 = torch.float32, torch.float64
needs_ext = pytest.mark.skipif(_ext._C is None, reason=f"extension not built: {_ext.LOAD_ERROR}")

# (n_group, topk_group): off, DeepSeek-like, and group size 1 for E=8 (group score = the one score).
GROUPS = [(1, 1), (4, 2), (8, 3)]


def _valid(num_experts, top_k, n_group, topk_group):
    return top_k <= num_experts and num_experts % n_group == 0 and top_k <= topk_group * (num_experts // n_group)


def _router_inputs(ntokens, nexperts, seed, device="cpu", scale=2.0):
    """Random logits [T, E] fp32 (sigmoid well spread) and a selection bias [E] fp32 of the size seen in practice."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(ntokens, nexperts, generator=g)
    bias = 0.1 * torch.randn(nexperts, generator=g)
    return logits.to(device), bias.to(device)


def _kernel(logits, bias, top_k, scale=1.0, n_group=1, topk_group=1):
    return _ext._C.moe_router_fused(logits, bias, top_k, scale, n_group, topk_group)


def _assert_weights(weight, idx, logits, weight_ref, scale):
    """DESIGN rule 1 at the kernel's own indices: err(kernel) <= 2 * err(torch fp32 reference) + floor vs fp64."""
    if weight.numel() == 0:
        return
    score64 = torch.sigmoid(logits.double()).gather(1, idx.long())
    weight64 = score64 / (score64.sum(-1, keepdim=True) + 1e-20) * scale
    err = (weight.double() - weight64).abs().max().item()
    err_ref = (weight_ref.double() - weight64).abs().max().item()
    floor = 4 * torch.finfo(F32).eps * max(1.0, scale)
    assert err <= 2 * err_ref + floor, (err, err_ref)


def _assert_matches_reference(logits, bias, top_k, scale, n_group, topk_group, out):
    idx, weight, counts = out
    idx_ref, weight_ref, counts_ref = moe_router_from_logits_ref(logits, bias, top_k, scale, n_group, topk_group)
    assert idx.dtype == torch.int32 and weight.dtype == F32 and counts.dtype == torch.int32
    assert idx.shape == weight.shape == (logits.shape[0], top_k) and counts.shape == (logits.shape[1],)
    assert torch.equal(idx, idx_ref)
    assert torch.equal(counts, counts_ref)
    assert torch.equal(counts.long(), torch.bincount(idx.flatten().long(), minlength=logits.shape[1]))
    _assert_weights(weight, idx, logits, weight_ref, scale)


# ---------------------------------------------------------------- C++ CPU kernel

CPU_SHAPES = [(t, e, k, ng, tg) for t in (0, 1, 7, 64, 333) for e in (8, 96, 128, 256) for k in (1, 2, 6, 8)
              for ng, tg in GROUPS if _valid(e, k, ng, tg)]


@needs_ext
@pytest.mark.parametrize("ntokens,nexperts,top_k,n_group,topk_group", CPU_SHAPES)
def test_cpu_kernel_matches_reference(ntokens, nexperts, top_k, n_group, topk_group):
    logits, bias = _router_inputs(ntokens, nexperts, seed=ntokens * 1000 + nexperts + top_k)
    scale = 2.5
    out = _kernel(logits, bias, top_k, scale, n_group, topk_group)
    _assert_matches_reference(logits, bias, top_k, scale, n_group, topk_group, out)


@needs_ext
@pytest.mark.parametrize("nexperts,top_k,n_group,topk_group", [(7, 3, 1, 1), (40, 5, 5, 2), (1, 1, 1, 1),
                                                                 (2048, 16, 1, 1), (256, 8, 8, 4)])
def test_cpu_kernel_awkward_shapes(nexperts, top_k, n_group, topk_group):
    logits, bias = _router_inputs(29, nexperts, seed=nexperts)
    out = _kernel(logits, bias, top_k, 1.0, n_group, topk_group)
    _assert_matches_reference(logits, bias, top_k, 1.0, n_group, topk_group, out)


def _brute_force_order(selection_row, top_k):
    return sorted(range(selection_row.numel()), key=lambda e: (-selection_row[e].item(), e))[:top_k]


@needs_ext
@pytest.mark.parametrize("seed", range(4))
def test_ties_go_to_lower_index(seed):
    """Quantised logits and bias: many exact ties in the biased score, all resolved by the lower expert index."""
    g = torch.Generator().manual_seed(seed)
    ntokens, nexperts, top_k = 50, 64, 8
    logits = torch.randint(-2, 3, (ntokens, nexperts), generator=g).float() * 0.5
    bias = torch.randint(-1, 2, (nexperts,), generator=g).float() * 0.25
    idx, weight, counts = _kernel(logits, bias, top_k, 2.5)
    selection = torch.sigmoid(logits.double()).float() + bias
    for t in range(ntokens):
        assert idx[t].tolist() == _brute_force_order(selection[t], top_k), t
    _assert_matches_reference(logits, bias, top_k, 2.5, 1, 1, (idx, weight, counts))


@needs_ext
def test_all_equal_scores_pick_lowest_groups_and_experts():
    logits, bias = torch.full((3, 16), 0.25), torch.zeros(16)
    idx, weight, _ = _kernel(logits, bias, 4, 1.0, 4, 2)
    assert idx.tolist() == [[0, 1, 2, 3]] * 3
    torch.testing.assert_close(weight, torch.full((3, 4), 0.25), rtol=0, atol=1e-7)
    idx, _, _ = _kernel(logits, bias, 6, 1.0, 4, 2)       # groups 0 and 1 tie with 2 and 3: keep 0, 1
    assert idx.tolist() == [[0, 1, 2, 3, 4, 5]] * 3
    bias[12:] = 0.5                                          # now group 3 wins, then group 0
    idx, _, counts = _kernel(logits, bias, 6, 1.0, 4, 2)
    assert idx.tolist() == [[12, 13, 14, 15, 0, 1]] * 3
    assert counts.tolist() == [3, 3] + [0] * 10 + [3] * 4


@needs_ext
@pytest.mark.parametrize("n_group,topk_group", [(1, 1), (4, 2)])
def test_nan_scores_rank_first_like_the_reference(n_group, topk_group):
    logits, bias = _router_inputs(9, 32, seed=5)
    logits[:, 7] = float("nan")
    logits[3, 20] = float("nan")
    idx, weight, counts = _kernel(logits, bias, 4, 1.0, n_group, topk_group)
    idx_ref, weight_ref, counts_ref = moe_router_from_logits_ref(logits, bias, 4, 1.0, n_group, topk_group)
    assert torch.equal(idx, idx_ref) and torch.equal(counts, counts_ref)
    assert idx[:, 0].tolist() == [7] * 9 and idx[3, 1].item() == 20
    assert weight.isnan().all()


# ---------------------------------------------------------------- public op

@needs_ext
@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.bfloat16, F32), (torch.bfloat16, torch.bfloat16),
                                             (torch.float16, F32), (F32, F32)])
@pytest.mark.parametrize("n_group,topk_group", [(1, 1), (8, 4)])
def test_public_op_matches_reference(x_dtype, w_dtype, n_group, topk_group):
    g = torch.Generator().manual_seed(3)
    ntokens, hidden, nexperts, top_k = 77, 96, 128, 6
    x = torch.randn(ntokens, hidden, generator=g).to(x_dtype)
    weight = (torch.randn(nexperts, hidden, generator=g) / hidden ** 0.5).to(w_dtype)
    bias = 0.05 * torch.randn(nexperts, generator=g)
    idx, topk_weight, counts = moe_router(x, weight, bias, top_k, 2.5, n_group, topk_group)
    idx_ref, weight_ref, counts_ref = moe_router_ref(x, weight, bias, top_k, 2.5, n_group, topk_group)
    assert torch.equal(idx, idx_ref) and torch.equal(counts, counts_ref)
    logits = x.float() @ weight.float().t()
    _assert_weights(topk_weight, idx, logits, weight_ref, 2.5)


def test_float64_uses_reference():
    g = torch.Generator().manual_seed(4)
    x, weight = torch.randn(10, 16, generator=g, dtype=F64), torch.randn(24, 16, generator=g, dtype=F64)
    bias = 0.1 * torch.randn(24, generator=g)
    out = moe_router(x, weight, bias, 3, 1.5, 3, 2)
    ref = moe_router_ref(x, weight, bias, 3, 1.5, 3, 2)
    assert out[1].dtype == F64
    for a, b in zip(out, ref):
        assert torch.equal(a, b)


def test_gradcheck_float64():
    """The hand-written backward (MoeRouterFn) against finite differences."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 8, generator=g, dtype=F64, requires_grad=True)
    weight = torch.randn(16, 8, generator=g, dtype=F64, requires_grad=True)
    bias = 0.1 * torch.randn(16, generator=g)
    for n_group, topk_group in [(1, 1), (4, 2)]:
        torch.autograd.gradcheck(lambda a, b: moe_router(a, b, bias, 4, 2.5, n_group, topk_group)[1], (x, weight))


@needs_ext
@pytest.mark.parametrize("x_dtype", [F32, torch.bfloat16])
def test_gradients_match_float64_reference(x_dtype, device="cpu"):
    g = torch.Generator().manual_seed(7)
    ntokens, hidden, nexperts, top_k, scale = 64, 48, 32, 6, 2.5
    x0 = torch.randn(ntokens, hidden, generator=g).to(x_dtype)
    w0 = torch.randn(nexperts, hidden, generator=g) / hidden ** 0.5
    bias = (0.1 * torch.randn(nexperts, generator=g)).to(device)
    grad_out = torch.randn(ntokens, top_k, generator=g).to(device)

    def grads(fn, x, weight):
        x = x.detach().to(device).requires_grad_()
        weight = weight.detach().to(device).requires_grad_()
        idx, topk_weight, _ = fn(x, weight, bias, top_k, scale)
        (topk_weight * grad_out.to(topk_weight.dtype)).sum().backward()
        return idx, x.grad, weight.grad

    idx, dx, dw = grads(moe_router, x0, w0)
    idx_ref, dx_ref, dw_ref = grads(moe_router_ref, x0, w0)
    idx64, dx64, dw64 = grads(moe_router_ref, x0.double(), w0.double())
    assert torch.equal(idx, idx_ref) and torch.equal(idx, idx64)
    assert dx.dtype == x_dtype and dw.dtype == F32
    for ours, ref, exact in [(dx, dx_ref, dx64), (dw, dw_ref, dw64)]:
        err = (ours.double() - exact).abs().max().item()
        err_ref = (ref.double() - exact).abs().max().item()
        assert err <= 3 * err_ref + 1e-6, (err, err_ref)


def test_bias_gets_no_gradient():
    x = torch.randn(4, 8, requires_grad=True)
    bias = torch.zeros(16, requires_grad=True)
    _, topk_weight, _ = moe_router(x, torch.randn(16, 8), bias, 2)
    topk_weight.sum().backward()
    assert x.grad is not None and bias.grad is None


BAD_ARGS = [  # (change to the good arguments, exception, message)
    (dict(x=torch.randn(4, 8).int()), TypeError, "x must"),
    (dict(x=torch.randn(2, 4, 8)), ValueError, "x must be 2-D"),
    (dict(x=torch.randn(4, 8).to(torch.bfloat16), weight=torch.randn(16, 8).half()), TypeError, "weight must have dtype"),
    (dict(weight=torch.randn(16, 9)), ValueError, "weight must have shape"),
    (dict(weight=torch.randn(16)), ValueError, "weight must be 2-D"),
    (dict(bias=torch.randn(16).half()), TypeError, "bias must have dtype"),
    (dict(bias=torch.randn(15)), ValueError, "bias must have shape"),
    (dict(bias=torch.randn(16, device="meta")), ValueError, "bias is on meta"),
    (dict(top_k=0), ValueError, "top_k must be >= 1"),
    (dict(top_k=17), ValueError, "top_k must be in"),
    (dict(top_k=2.0), TypeError, "top_k must be an int"),
    (dict(n_group=3), ValueError, "n_group"),
    (dict(n_group=4, topk_group=5), ValueError, "topk_group must be in"),
    (dict(n_group=4, topk_group=0), ValueError, "topk_group must be >= 1"),
    (dict(n_group=4, topk_group=1, top_k=5), ValueError, r"top_k \(5\) must be <= topk_group"),
]


@pytest.mark.parametrize("fn", [moe_router, moe_router_ref])
@pytest.mark.parametrize("change,exc,match", BAD_ARGS)
def test_bad_inputs_name_the_argument(fn, change, exc, match):
    args = dict(x=torch.randn(4, 8), weight=torch.randn(16, 8), bias=torch.randn(16), top_k=2, n_group=1,
                topk_group=1)
    args.update(change)
    with pytest.raises(exc, match=match):
        fn(args["x"], args["weight"], args["bias"], args["top_k"], 1.0, args["n_group"], args["topk_group"])


BAD_KERNEL_ARGS = [  # (change to the good arguments, exception, its whole message: numbers and shapes pinned)
    (dict(logits=torch.randn(4, 16, dtype=F64)), TypeError, "logits must have dtype Float, got Double"),
    (dict(logits=torch.randn(16, 4).t()), ValueError,
     "logits must be contiguous, got strides [1, 4] for shape [4, 16]"),
    (dict(logits=torch.randn(4, 16, 1)), ValueError, "logits must have shape [-1, -1] (-1 = any), got [4, 16, 1]"),
    (dict(logits=torch.randn(4, 0), bias=torch.randn(0)), ValueError,
     "logits must have 1 to 2^31-1 experts (columns), got 0"),
    (dict(bias=torch.randn(8)), ValueError, "bias must have shape [16] (-1 = any), got [8]"),
    (dict(bias=torch.randn(32)[::2]), ValueError, "bias must be contiguous, got strides [2] for shape [16]"),
    (dict(bias=torch.randn(16).half()), TypeError, "bias must have dtype Float, got Half"),
    (dict(bias=torch.randn(16, device="meta")), RuntimeError, "bias must be on cpu (like the other inputs), got meta"),
    (dict(logits=torch.randn(4, 16, device="meta"), bias=torch.randn(16, device="meta")), RuntimeError,
     "logits must be on cpu or cuda, got meta"),
    (dict(top_k=0), ValueError, "top_k must be in [1, E=16], got 0"),
    (dict(top_k=-3), ValueError, "top_k must be in [1, E=16], got -3"),
    (dict(top_k=17), ValueError, "top_k must be in [1, E=16], got 17"),
    (dict(n_group=5), ValueError, "n_group (5) must divide the number of experts E=16"),
    (dict(n_group=4, topk_group=5), ValueError, "topk_group must be in [1, n_group=4], got 5"),
    (dict(n_group=4, topk_group=1, top_k=5), ValueError, "top_k (5) must be <= topk_group * E / n_group = 4"),
]


@needs_ext
@pytest.mark.parametrize("change,exc,message", BAD_KERNEL_ARGS)
def test_kernel_entry_checks_name_the_argument(change, exc, message):
    args = dict(logits=torch.randn(4, 16), bias=torch.randn(16), top_k=2, n_group=1, topk_group=1)
    args.update(change)
    with pytest.raises(exc) as raised:
        _kernel(args["logits"], args["bias"], args["top_k"], 1.0, args["n_group"], args["topk_group"])
    assert str(raised.value).splitlines()[0] == message


@pytest.mark.parametrize("n_group,topk_group", [(1, 1), (4, 2)])
def test_opcheck_custom_ops(n_group, topk_group):
    logits, bias = _router_inputs(13, 32, seed=8)
    torch.library.opcheck(torch.ops.nemotron_kernels.moe_router_fused.default,
                          (logits, bias, 6, 2.5, n_group, topk_group))
    torch.library.opcheck(torch.ops.nemotron_kernels.moe_router_permute.default,
                          (logits, bias, 6, 2.5, n_group, topk_group, 4))
    x, weight = torch.randn(13, 24).to(torch.bfloat16), torch.randn(32, 24)
    torch.library.opcheck(torch.ops.nemotron_kernels.moe_router_logits.default, (x, weight))
    torch.library.opcheck(torch.ops.nemotron_kernels.moe_router_gate.default,
                          (x, weight, bias, 6, 2.5, n_group, topk_group))
    idx = _kernel(logits, bias, 6) if _ext._C is not None else moe_router_from_logits_ref(logits, bias, 6)
    torch.library.opcheck(torch.ops.nemotron_kernels.moe_router_logits_backward.default,
                          (torch.randn(13, 6), idx[0], x, weight))


def test_torch_compile_fullgraph_forward_and_backward():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(33, 64, generator=g, requires_grad=True)
    weight = torch.randn(32, 64, generator=g, requires_grad=True)
    bias = 0.05 * torch.randn(32, generator=g)
    grads = []
    for fn in (moe_router, torch.compile(moe_router, backend="aot_eager", fullgraph=True)):
        out = fn(x, weight, bias, 4, 2.5, 4, 2)
        grads.append((out, torch.autograd.grad(out[1].square().sum(), (x, weight))))
    (out_eager, grad_eager), (out_compiled, grad_compiled) = grads
    for a, b in zip(out_eager + grad_eager, out_compiled + grad_compiled):
        assert torch.equal(a, b)


def test_backend_report():
    assert router_ops.backend_report("cpu").startswith("cpu:" if _ext._C is not None else "reference:")
    assert router_ops.backend_report("mps").startswith("reference:")


# ---------------------------------------------------------------- CUDA kernel (lead runs these on the H200)

def _poison_cuda_cache():
    """Fill and free large and small blocks so the caching allocator's next allocations start as NaN garbage."""
    blocks = [torch.full((1 << 24,), float("nan"), device="cuda")]
    blocks += [torch.full((1 << 17,), float("nan"), device="cuda") for _ in range(16)]
    del blocks


CUDA_SHAPES = [  # (T, E, k, n_group, topk_group)
    (t, e, k, ng, tg)
    for t in (1, 7, 64, 65, 333, 4097) for e in (8, 96, 128, 256) for k in (1, 2, 6, 8) for ng, tg in GROUPS
    if _valid(e, k, ng, tg)
] + [(16384, 128, 6, 1, 1), (16384, 256, 8, 8, 4), (100, 7, 3, 1, 1), (50, 40, 5, 5, 2), (33, 512, 8, 1, 1),
     (300, 1024, 40, 64, 40), (64, 1024, 100, 64, 40), (5, 2048, 6, 1, 1)]


@pytest.mark.cuda
@needs_ext
def test_cuda_kernel_matches_reference_and_cpu_kernel():
    assert _ext.cuda_status()[0], _ext.cuda_status()[1]
    for ntokens, nexperts, top_k, n_group, topk_group in CUDA_SHAPES:
        case = (ntokens, nexperts, top_k, n_group, topk_group)
        logits, bias = _router_inputs(ntokens, nexperts, seed=sum(case), device="cuda")
        _poison_cuda_cache()
        out = router_ops.moe_router_fused(logits, bias, top_k, 2.5, n_group, topk_group)
        try:
            _assert_matches_reference(logits, bias, top_k, 2.5, n_group, topk_group, out)
            if nexperts <= 1024:  # same arithmetic in the same order: bit for bit with the CPU kernel
                out_cpu = _kernel(logits.cpu(), bias.cpu(), top_k, 2.5, n_group, topk_group)
                for a, b in zip(out, out_cpu):
                    assert torch.equal(a.cpu(), b)
        except AssertionError as e:
            raise AssertionError(f"case (T, E, k, n_group, topk_group) = {case}") from e


@pytest.mark.cuda
@needs_ext
def test_cuda_ties_and_nan():
    g = torch.Generator().manual_seed(9)
    logits = (torch.randint(-2, 3, (3000, 128), generator=g).float() * 0.5)
    logits[::7, 3] = float("nan")
    bias = torch.randint(-1, 2, (128,), generator=g).float() * 0.25
    for n_group, topk_group in [(1, 1), (8, 4)]:
        out = _kernel(logits.cuda(), bias.cuda(), 6, 2.5, n_group, topk_group)
        ref = moe_router_from_logits_ref(logits.cuda(), bias.cuda(), 6, 2.5, n_group, topk_group)
        cpu = _kernel(logits, bias, 6, 2.5, n_group, topk_group)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[2], ref[2])
        for a, b in zip(out, cpu):
            torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0, equal_nan=True)


def _assert_valid_topk(idx, keys64, tol):
    """idx [T, k] is a top-k of keys64 [T, E] (float64 selection keys) up to tol: distinct experts, in descending
    order, none left out that beats a chosen one by more than tol. What a router computing its logits to fp32
    accuracy in another summation order than the reference's can promise (near-ties may break either way)."""
    idx = idx.long()
    T, k = idx.shape
    assert (idx.sort(1).values.diff(dim=1) > 0).all(), "an expert chosen twice"
    chosen = keys64.gather(1, idx)                                                       # [T, k]
    assert (chosen[:, :-1] >= chosen[:, 1:] - tol).all(), "not in descending order"
    left_out = keys64.scatter(1, idx, float("-inf")).max(1).values                       # [T]
    assert (chosen[:, -1] >= left_out - tol).all(), "a left-out expert beats a chosen one"


def _split_operand():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g) * torch.exp2(torch.randint(-100, 100, (64, 96), generator=g).float())
    w[0, :4] = torch.tensor([0.0, -0.0, 1.0, -3.0])
    return w


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_split_bf16x3_is_exact(path, request):
    """The three bf16 pieces of an fp32 weight sum back to it exactly, over fp32's whole exponent range: the torch
    expressions, and the Triton kernel under the interpreter (whose bf16 casts truncate: exact all the same)."""
    if path == "triton":
        request.getfixturevalue("interpret")
    w = _split_operand()
    pieces = router_ops.split_bf16x3(w)
    assert pieces.dtype == torch.bfloat16 and pieces.shape == (192, 96)
    lo, mid, hi = pieces.double().chunk(3)
    assert torch.equal(lo + mid + hi, w.double())
    assert torch.equal((lo.float() + mid.float()) + hi.float(), w)


@pytest.mark.usefixtures("interpret")
def test_interpreter_split_bf16x3_reads_only_what_it_writes(assert_reads_only_written):
    """A strided [64, 91] slice: 5824 elements, five full 1024-element blocks and a last one of 704: with scratch
    memory poisoned as NaN, the three pieces equal a plain run's, so the kernel writes every element of out."""
    w = _split_operand()[:, :91]

    def run():
        return {"pieces": router_ops.split_bf16x3(w)}

    assert_reads_only_written(run)


def test_split_bf16x3_kernel_compiles_for_sm90a():
    assert len(aot_lines("moe_router_split")) == 1


@pytest.mark.cuda
def test_cuda_split_bf16x3_kernel_equals_torch():
    w = _split_operand()                                        # CPU, not interpreted: the torch expressions
    assert torch.equal(router_ops.split_bf16x3(w.cuda()).cpu(), router_ops.split_bf16x3(w))


@pytest.mark.cuda
@needs_ext
@pytest.mark.parametrize("ntokens", [1, 64, 65, 4096, 16384])
def test_cuda_public_op_nemotron_shape(ntokens):
    """Between the logits GEMV's 64 tokens and SPLIT_GEMM_MIN_TOKENS the logits are the reference's SGEMM and the
    indices equal it bit for bit; elsewhere they come from the GEMV (other summation order) or the exact bf16 x 3
    split: a valid top-k within fp32 rounding of the logits, equal to the reference but for near-ties, and weights
    to the DESIGN rule."""
    g = torch.Generator().manual_seed(ntokens)
    hidden, nexperts, top_k = 2688, 128, 6
    x = torch.randn(ntokens, hidden, generator=g).to(torch.bfloat16).cuda()
    weight = (torch.randn(nexperts, hidden, generator=g) / hidden ** 0.5).cuda()
    bias = (0.05 * torch.randn(nexperts, generator=g)).cuda()
    idx, topk_weight, counts = moe_router(x, weight, bias, top_k, 2.5)
    idx_ref, weight_ref, counts_ref = moe_router_ref(x, weight, bias, top_k, 2.5)
    assert torch.equal(counts.long(), torch.bincount(idx.flatten().long(), minlength=nexperts))
    assert counts.sum().item() == ntokens * top_k
    if _ext._C.moe_router_logits_max_tokens < ntokens < router_ops.SPLIT_GEMM_MIN_TOKENS:
        assert torch.equal(idx, idx_ref) and torch.equal(counts, counts_ref)
    else:
        # DESIGN rule 1 on the selection keys: a left-out expert may beat a chosen one by at most twice the
        # error of the fp32 SGEMM's keys (TF32 logits, ~1e-3 off, fail this)
        logits64 = x.double() @ weight.double().t()                                         # [T, E]
        keys64 = torch.sigmoid(logits64) + bias.double()
        with router_ops._fp32_matmul_ieee("cuda"):
            sgemm = (x.float() @ weight.t()).double()
        err_ref = (torch.sigmoid(sgemm) - torch.sigmoid(logits64)).abs().max().item()
        _assert_valid_topk(idx, keys64, tol=2 * err_ref + torch.finfo(F32).eps)
        assert (idx != idx_ref).any(1).float().mean().item() < 1e-2, "more than near-ties differ"
    _assert_weights(topk_weight, idx, x.double() @ weight.double().t(), weight_ref, 2.5)


@pytest.mark.cuda
@needs_ext
def test_cuda_split_logits_are_near_sgemm_accuracy():
    """The bf16 x 3 tensor-core logits against float64: within 10x the fp32 SGEMM's error. Measured on the H200
    (bench/NOTES.md, session 5): 1.6e-5 against the SGEMM's 2.5e-6, the tensor cores' fp32 accumulation over 2688
    products; TF32 logits are ~1e-3 off."""
    g = torch.Generator().manual_seed(11)
    T, hidden, nexperts = router_ops.SPLIT_GEMM_MIN_TOKENS, 2688, 128
    x = torch.randn(T, hidden, generator=g).to(torch.bfloat16).cuda()
    weight = (torch.randn(nexperts, hidden, generator=g) / hidden ** 0.5).cuda()
    exact = x.double() @ weight.double().t()
    ours = router_ops.moe_router_logits(x, weight)
    with router_ops._fp32_matmul_ieee("cuda"):
        sgemm = x.float() @ weight.t()
    assert ours.dtype == F32 and ours.shape == (T, nexperts)
    err, err_sgemm = ((ours.double() - exact).abs().max().item(), (sgemm.double() - exact).abs().max().item())
    assert err <= 10 * err_sgemm, (err, err_sgemm)


@pytest.mark.cuda
@needs_ext
@pytest.mark.parametrize("tokens,nexperts,hidden", [(1, 128, 2688), (2, 128, 2688), (3, 128, 2688),
                                                    (8, 128, 2688), (13, 128, 2688), (64, 128, 2688),
                                                    (5, 37, 100), (1, 1, 4)])
def test_cuda_logits_gemv_near_sgemm_accuracy(tokens, nexperts, hidden):
    """The few-token logits GEMV against float64: within 4x the fp32 SGEMM's error (both sum fp32 products, in other
    orders), deterministic, and what the op returns at these sizes."""
    g = torch.Generator().manual_seed(tokens * 1000 + nexperts)
    x = torch.randn(tokens, hidden, generator=g).to(torch.bfloat16).cuda()
    weight = (torch.randn(nexperts, hidden, generator=g) / hidden ** 0.5).cuda()
    ours = _ext._C.moe_router_logits(x, weight)
    exact = x.double() @ weight.double().t()
    with router_ops._fp32_matmul_ieee("cuda"):
        sgemm = x.float() @ weight.t()
    assert ours.dtype == F32 and ours.shape == (tokens, nexperts)
    err, err_sgemm = ((ours.double() - exact).abs().max().item(), (sgemm.double() - exact).abs().max().item())
    assert err <= 4 * err_sgemm + 4 * torch.finfo(F32).eps * exact.abs().max().item(), (err, err_sgemm)
    assert torch.equal(_ext._C.moe_router_logits(x, weight), ours)
    assert torch.equal(router_ops.moe_router_logits(x, weight), ours)


@pytest.mark.cuda
@needs_ext
def test_cuda_logits_gemv_bad_input():
    x, w = torch.randn(2, 64, device="cuda").bfloat16(), torch.randn(8, 64, device="cuda")
    with pytest.raises(TypeError, match="x must have dtype"):
        _ext._C.moe_router_logits(x.half(), w)
    with pytest.raises(TypeError, match="weight must have dtype"):
        _ext._C.moe_router_logits(x, w.bfloat16())
    with pytest.raises(ValueError, match="weight must have shape"):
        _ext._C.moe_router_logits(x, w[:, :32].contiguous())
    with pytest.raises(ValueError, match="up to 64 tokens"):
        _ext._C.moe_router_logits(torch.randn(65, 64, device="cuda").bfloat16(), w)
    with pytest.raises(ValueError, match="multiple of 4"):
        _ext._C.moe_router_logits(x[:, :62].contiguous(), w[:, :62].contiguous())
    with pytest.raises(RuntimeError, match="must be on cuda"):
        _ext._C.moe_router_logits(x.cpu(), w.cpu())
    # the op falls back to the SGEMM where the GEMV cannot take the input: an unaligned view of x
    big = torch.randn(2 * 64 + 1, device="cuda").bfloat16()
    xv = big[1:].view(2, 64)
    with router_ops._fp32_matmul_ieee("cuda"):
        assert torch.equal(router_ops.moe_router_logits(xv, w), xv.float() @ w.t())


@pytest.mark.cuda
@needs_ext
@pytest.mark.parametrize("tokens,nexperts,n_group,topk_group", [(1, 128, 1, 1), (16, 128, 1, 1), (17, 128, 1, 1),
                                                                (64, 128, 1, 1), (40, 64, 8, 2), (33, 37, 1, 1)])
def test_cuda_router_few_is_the_two_ops_bitwise(tokens, nexperts, n_group, topk_group):
    """moe_router_few (the GEMV zeroes the counts, no memset) against moe_router_logits + moe_router_fused, on a
    counts buffer the caching allocator hands back dirty: T <= 16 writes the counts from one block, T > 16 adds
    into them from several (atomics over the GEMV's zeros). The op that picks it traces under torch.compile."""
    g = torch.Generator().manual_seed(tokens * 7 + nexperts)
    x = torch.randn(tokens, 2688, generator=g).to(torch.bfloat16).cuda()
    weight = (torch.randn(nexperts, 2688, generator=g) / 50).cuda()
    bias = (0.05 * torch.randn(nexperts, generator=g)).cuda()
    want_logits = _ext._C.moe_router_logits(x, weight)
    want = _ext._C.moe_router_fused(want_logits, bias, 6, 2.5, n_group, topk_group)
    for _ in range(3):
        dirty = [torch.full((nexperts,), -7, dtype=torch.int32, device="cuda") for _ in range(8)]
        del dirty                                                   # freed: the next small tensors reuse them
        got = _ext._C.moe_router_few(x, weight, bias, 6, 2.5, n_group, topk_group)
        assert torch.equal(got[0], want_logits)
        for a, b in zip(got[1:], want):
            assert torch.equal(a, b)
    assert int(got[3].sum()) == tokens * 6
    idx, w, counts = router_ops.moe_router(x, weight, bias, 6, 2.5, n_group, topk_group)   # the op takes this path
    assert torch.equal(idx, want[0]) and torch.equal(w, want[1]) and torch.equal(counts, want[2])
    torch.library.opcheck(torch.ops.nemotron_kernels.moe_router_gate.default,
                          (x, weight, bias, 6, 2.5, n_group, topk_group))
    compiled = torch.compile(router_ops.moe_router, backend="aot_eager", fullgraph=True)
    assert all(torch.equal(a, b) for a, b in zip(compiled(x, weight, bias, 6, 2.5, n_group, topk_group), want))
    with pytest.raises(ValueError, match="top_k must be in"):
        _ext._C.moe_router_few(x, weight, bias, nexperts + 1, 2.5, 1, 1)
    with pytest.raises(ValueError, match="bias must have shape"):
        _ext._C.moe_router_few(x, weight, bias[1:], 6, 2.5, 1, 1)


@pytest.mark.cuda
@needs_ext
def test_cuda_gradients_match_float64_reference():
    test_gradients_match_float64_reference(torch.bfloat16, device="cuda")
    test_gradients_match_float64_reference(F32, device="cuda")


@pytest.mark.cuda
@needs_ext
def test_cuda_no_tf32_even_when_enabled_and_setting_restored():
    matmul = torch.backends.cuda.matmul
    attr = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    before = getattr(matmul, attr)
    g = torch.Generator().manual_seed(10)
    x, weight = torch.randn(256, 2688, generator=g).cuda(), torch.randn(128, 2688, generator=g).cuda()
    exact = (x.double() @ weight.double().t())
    try:
        setattr(matmul, attr, "tf32" if attr == "fp32_precision" else True)
        logits = router_ops.moe_router_logits(x, weight)
        assert getattr(matmul, attr) == ("tf32" if attr == "fp32_precision" else True)
    finally:
        setattr(matmul, attr, before)
    rel = ((logits.double() - exact).abs().max() / exact.abs().max()).item()
    assert rel < 1e-5, rel   # TF32 (10-bit mantissa) would be ~1e-3


@pytest.mark.cuda
@needs_ext
@pytest.mark.parametrize("ntokens,with_permutation", [(64, False), (256, True)])
def test_cuda_graph_capture(ntokens, with_permutation):
    """Capturable (decode steps run in CUDA graphs), the permutation path too (decode batches past 64 sequences)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(ntokens, 2688, generator=g).to(torch.bfloat16).cuda()
    weight, bias = torch.randn(128, 2688, generator=g).cuda() / 50, (0.05 * torch.randn(128, generator=g)).cuda()

    def route():
        out = moe_router(x, weight, bias, 6, 2.5, with_permutation=with_permutation)
        return (*out[:3], *out[3]) if with_permutation else out
    eager = route()
    assert len(eager) == (6 if with_permutation else 3)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        route()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = route()
    x.copy_(torch.randn(ntokens, 2688, generator=g).to(torch.bfloat16))
    graph.replay()
    expected = route()
    assert not torch.equal(expected[0], eager[0])
    for a, b in zip(captured, expected):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ with the permutation

@pytest.mark.parametrize("pad_to", [1, 4])
@pytest.mark.parametrize("n_group,topk_group", [(1, 1), (4, 2)])
def test_router_permute_is_the_router_then_the_reference_permutation(pad_to, n_group, topk_group):
    """moe_router_permute off the GPU: moe_router_fused's outputs and expert_permutation_ref of its choices, whose
    rows are moe_permute_ref's (token_of_row names each row's token, -1 for padding)."""
    from nemotron_kernels.ops.moe_router import moe_router_permute
    from nemotron_kernels.reference.moe_permute import moe_permute_ref
    logits, bias = _router_inputs(37, 16, seed=pad_to)
    out = moe_router_permute(logits, bias, 3, 2.5, n_group, topk_group, pad_to)
    fused = router_ops.moe_router_fused(logits, bias, 3, 2.5, n_group, topk_group)
    assert all(torch.equal(a, b) for a, b in zip(out[:3], fused))
    x = torch.randn(37, 5, dtype=F64)
    rows, roa, offsets = moe_permute_ref(x, out[0], 16, pad_to)
    assert torch.equal(out[3], roa) and torch.equal(out[4], offsets)
    token_of_row = out[5]
    assert token_of_row.shape == (rows.shape[0],)
    filled = token_of_row >= 0
    assert torch.equal(rows[filled], x[token_of_row[filled].long()]) and not rows[~filled].any()
    assert int(filled.sum()) == 37 * 3


@pytest.mark.cuda
@needs_ext
@pytest.mark.parametrize("ntokens,nexperts,n_group,topk_group", [
    (1, 128, 1, 1), (16, 128, 1, 1), (17, 128, 1, 1), (64, 128, 1, 1), (300, 128, 1, 1), (1024, 128, 1, 1),
    (16384, 128, 1, 1), (70000, 128, 1, 1),        # past 16 tokens a warp: bigger router blocks
    (5000, 96, 1, 1), (3000, 1024, 1, 1), (4096, 64, 8, 3),
    (2000, 32, 1, 1), (2000, 256, 8, 4), (2000, 512, 1, 1),   # 1, 8 and 16 scores a lane
    (3000, 1024, 512, 4), (8, 1024, 512, 4),   # many groups: fewer warps a block than the counting mode's
])
@pytest.mark.parametrize("pad_to", [1, 128])
def test_cuda_router_permute_equals_the_router_then_moe_permute(ntokens, nexperts, n_group, topk_group, pad_to):
    """The two launches (the router ranking each block's assignments, then the placement) give bitwise what
    moe_router_fused gives and what moe_permute's ranking writes for its choices, token_of_row included (against
    expert_permutation_ref); deterministic across runs."""
    from nemotron_kernels.ops.moe_permute import moe_permute_op
    from nemotron_kernels.reference.moe_permute import expert_permutation_ref
    logits, bias = _router_inputs(ntokens, nexperts, seed=ntokens + nexperts, device="cuda")
    _poison_cuda_cache()
    out = _ext._C.moe_router_permute(logits, bias, 6, 2.5, n_group, topk_group, pad_to)
    fused = _kernel(logits, bias, 6, 2.5, n_group, topk_group)
    for name, a, b in zip(("topk_idx", "topk_weight", "counts"), out[:3], fused):
        assert torch.equal(a, b), f"{name} differs from moe_router_fused's"
    _, roa, offsets = moe_permute_op(torch.zeros(ntokens, 8, device="cuda", dtype=torch.bfloat16), fused[0],
                                     nexperts, pad_to)
    assert torch.equal(out[3], roa), "row_of_assignment differs from moe_permute's"
    assert torch.equal(out[4], offsets), "expert_offsets differ from moe_permute's"
    assert torch.equal(out[5], expert_permutation_ref(fused[0], nexperts, pad_to)[2]), "token_of_row"
    again = _ext._C.moe_router_permute(logits, bias, 6, 2.5, n_group, topk_group, pad_to)
    assert all(torch.equal(a, b) for a, b in zip(out, again)), "not deterministic"


@pytest.mark.cuda
@needs_ext
def test_cuda_router_permute_no_tokens_and_bad_pad():
    logits, bias = _router_inputs(0, 128, seed=0, device="cuda")
    out = _ext._C.moe_router_permute(logits, bias, 6, 2.5, 1, 1, 8)
    assert out[2].eq(0).all() and out[4].eq(0).all() and out[5].eq(-1).all() and out[5].numel() == 128 * 7
    for pad_to in (0, 4097):
        with pytest.raises(ValueError, match=rf"pad_to must be in \[1, 4096\], got {pad_to}"):
            _ext._C.moe_router_permute(logits, bias, 6, 2.5, 1, 1, pad_to)


def test_with_permutation_off_the_gpu():
    """moe_router(with_permutation=True): the permutation is None where the router's kernels do not make it (here:
    CPU), so moe_experts ranks for itself; the reference returns expert_permutation_ref of its choices."""
    from nemotron_kernels.reference.moe_permute import expert_permutation_ref
    x, weight, bias = torch.randn(70, 24), torch.randn(16, 24), 0.1 * torch.randn(16)
    *out, permutation = moe_router(x, weight, bias, 3, 2.5, with_permutation=True)
    assert permutation is None
    assert all(torch.equal(a, b) for a, b in zip(out, moe_router(x, weight, bias, 3, 2.5)))
    *ref, ref_permutation = moe_router_ref(x, weight, bias, 3, 2.5, with_permutation=True)
    assert all(torch.equal(a, b) for a, b in zip(ref, moe_router_ref(x, weight, bias, 3, 2.5)))
    for a, b in zip(ref_permutation, expert_permutation_ref(ref[0], 16)):
        assert torch.equal(a, b)


@pytest.mark.cuda
@needs_ext
@pytest.mark.parametrize("ntokens", [64, 65, 4096])
def test_cuda_with_permutation(ntokens):
    """On CUDA past the logits GEMV's tokens the public op returns moe_router_permute's permutation (bitwise
    expert_permutation_ref of its choices), the same choices and weights as without it, and the same gradients;
    at the GEMV's sizes it returns None (moe_router_few's path, unchanged)."""
    from nemotron_kernels.reference.moe_permute import expert_permutation_ref
    g = torch.Generator().manual_seed(ntokens)
    x = torch.randn(ntokens, 2688, generator=g).to("cuda", torch.bfloat16).requires_grad_()
    weight = (0.02 * torch.randn(128, 2688, generator=g)).cuda().requires_grad_()
    bias = (0.1 * torch.randn(128, generator=g)).cuda()
    idx, w, counts, permutation = moe_router(x, weight, bias, 6, 2.5, with_permutation=True)
    plain = moe_router(x, weight, bias, 6, 2.5)
    for name, a, b in zip(("topk_idx", "topk_weight", "counts"), (idx, w, counts), plain):
        assert torch.equal(a, b), f"{name} differs with the permutation"
    if ntokens <= _ext._C.moe_router_logits_max_tokens:
        assert permutation is None
        return
    for name, a, b in zip(("row_of_assignment", "expert_offsets", "token_of_row"), permutation,
                          expert_permutation_ref(idx, 128)):
        assert torch.equal(a, b), name
    dw = torch.randn_like(w)
    grads = torch.autograd.grad(w, (x, weight), dw)
    for a, b in zip(grads, torch.autograd.grad(plain[1], (x, weight), dw)):
        assert torch.equal(a, b)
