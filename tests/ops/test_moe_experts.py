"""moe_experts: the public op on CPU is the reference; on CUDA (bf16) the permute -> CUTLASS grouped GEMMs ->
weighted gather path, forward and backward, against the float64 reference under the error rule
(err <= 2 x err(torch bf16) forward, 3 x backward, + one bf16 ulp of the largest reference value)."""
import pytest
import torch

from nemotron_kernels import moe_experts
from nemotron_kernels.reference.moe_experts import moe_experts_ref

F64 = torch.float64
BF16 = torch.bfloat16


def make(ntokens, nexperts, top_k, hidden, inter, shared_inter, seed, device="cpu", dtype=F64, empty=()):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(device=device, dtype=dtype)

    allowed = torch.tensor([e for e in range(nexperts) if e not in empty])
    idx = torch.stack([allowed[torch.randperm(len(allowed), generator=g)[:top_k]] for _ in range(ntokens)])
    weight = torch.rand(ntokens, top_k, generator=g).to(device)
    args = dict(x=randn(ntokens, hidden), topk_idx=idx.to(torch.int32).to(device), topk_weight=weight * 2.5 / top_k,
                up=randn(nexperts, inter, hidden, scale=hidden ** -0.5),
                down=randn(nexperts, hidden, inter, scale=inter ** -0.5 * 4))
    if shared_inter:
        args.update(shared_up=randn(shared_inter, hidden, scale=hidden ** -0.5),
                    shared_down=randn(hidden, shared_inter, scale=shared_inter ** -0.5 * 4))
    return args


@pytest.mark.parametrize("shared", [0, 20])
@pytest.mark.parametrize("dtype", [torch.float32, BF16, F64])
def test_cpu_public_op_is_the_reference(shared, dtype):
    args = make(9, 5, 2, 16, 12, shared, seed=shared, dtype=dtype, empty=(3,))
    assert torch.equal(moe_experts(**args), moe_experts_ref(**args))


def test_cpu_bad_input_is_named():
    args = make(4, 5, 2, 16, 12, 0, seed=0)
    with pytest.raises(ValueError, match="topk_idx values must lie in"):
        moe_experts(**{**args, "topk_idx": args["topk_idx"] + 5})
    with pytest.raises(ValueError, match="shared_up and shared_down must be given together"):
        moe_experts(**args, shared_up=torch.randn(8, 16, dtype=F64))


def test_cpu_a_given_permutation_changes_nothing_and_is_checked():
    """moe_experts(permutation=) (the router's, moe_router(with_permutation=True)): the same result; a permutation
    of the wrong shape or dtype is named (the reference checks it too)."""
    from nemotron_kernels.reference.moe_permute import expert_permutation_ref
    args = make(9, 5, 2, 16, 12, 20, seed=3, empty=(3,))
    permutation = expert_permutation_ref(args["topk_idx"], 5)
    assert torch.equal(moe_experts(**args, permutation=permutation), moe_experts(**args))
    assert torch.equal(moe_experts_ref(**args, permutation=permutation), moe_experts_ref(**args))
    with pytest.raises(ValueError, match="token_of_row"):
        moe_experts(**args, permutation=(*permutation[:2], permutation[2][:-1]))
    with pytest.raises(TypeError, match="row_of_assignment, expert_offsets, token_of_row"):
        moe_experts_ref(**args, permutation=permutation[:2])


# ------------------------------------------------------------------------------------------------ CUDA path

def torch_bf16(x, topk_idx, topk_weight, up, down, shared_up=None, shared_down=None):
    """The layer in plain torch bf16 ops (bf16 GEMMs, relu, square; fp32 routed sum): the error-rule baseline."""
    routed = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in torch.unique(topk_idx).tolist():
        tok, slot = torch.nonzero(topk_idx == e, as_tuple=True)
        y = torch.relu(x[tok] @ up[e].T).square() @ down[e].T
        routed = routed.index_add(0, tok, topk_weight[tok, slot, None].float() * y.float())
    out = routed.to(x.dtype)
    if shared_up is not None:
        out = out + torch.relu(x @ shared_up.T).square() @ shared_down.T
    return out


def assert_error_rule(name, got, ref64, low, k):
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    err = (got.double() - ref64).abs().max().item()
    base = (low.double() - ref64).abs().max().item()
    floor = torch.finfo(got.dtype).eps * ref64.abs().max().item()
    assert err <= k * base + floor, f"{name}: kernel err {err:.3e} > {k} x torch-bf16 err {base:.3e} + {floor:.3e}"


NEMOTRON = dict(nexperts=128, top_k=6, hidden=2688, inter=1856, shared_inter=3712)


@pytest.mark.cuda
@pytest.mark.parametrize("ntokens", [1, 64, 300, 1024])   # up to 32 rows per expert: small-tile kernels, then large
def test_cuda_forward_nemotron_shapes(ntokens):
    args = make(ntokens, **NEMOTRON, seed=ntokens, device="cuda", dtype=BF16, empty=(0, 77))
    out = moe_experts(**args)
    as64 = {k: (v.double() if v.is_floating_point() else v) for k, v in args.items()}
    ref64 = moe_experts_ref(**as64)
    assert_error_rule("out", out, ref64, torch_bf16(**args), 2)
    assert torch.equal(out, moe_experts(**args)), "not deterministic"


@pytest.mark.cuda
@pytest.mark.parametrize("ntokens", [64, 1024])
def test_cuda_routing_weights_in_the_down_epilogue(ntokens):
    """The routed experts composed from the public ops with each row's routing weight applied in the down GEMM's
    epilogue (grouped_gemm row_scale) and a plain sum (moe_unpermute without weights): the float64 reference
    under the error rule, as the fused layer is."""
    from nemotron_kernels import grouped_gemm, moe_permute, moe_unpermute
    args = make(ntokens, **{**NEMOTRON, "shared_inter": 0}, seed=ntokens + 1, device="cuda", dtype=BF16)
    rows, row_of_assignment, offsets = moe_permute(args["x"], args["topk_idx"], NEMOTRON["nexperts"])
    row_weight = torch.zeros(rows.shape[0], device="cuda")                                # [M]
    row_weight[row_of_assignment.flatten().long()] = args["topk_weight"].flatten()
    h = grouped_gemm(rows, args["up"], offsets, "relu2")
    out = moe_unpermute(grouped_gemm(h, args["down"], offsets, row_scale=row_weight), row_of_assignment)
    as64 = {k: (v.double() if v.is_floating_point() else v) for k, v in args.items()}
    assert_error_rule("out", out, moe_experts_ref(**as64), torch_bf16(**args), 2)


@pytest.mark.cuda
@pytest.mark.parametrize("ntokens", [1, 3])
def test_cuda_graph_of_a_decode_step_reads_the_kept_shared_offsets(ntokens):
    """A captured decode-sized MoE (warmed up eagerly on the capture stream, as the engine's probe does) replays the
    eager result. T = 1 takes the decode GEMVs (the shared expert inside them); T = 3 (T * k > 16) the grouped path,
    whose shared expert reads the [0, T] offsets its warm-up kept instead of capturing an arange."""
    from nemotron_kernels.ops.grouped_gemm import _ONE_GROUP
    args = make(ntokens, **NEMOTRON, seed=5, device="cuda", dtype=BF16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        eager = moe_experts(**args)
    assert ((ntokens, args["x"].device, stream) in _ONE_GROUP) == (ntokens > 1)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        out = moe_experts(**args)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)


GRAD_NAMES = ("x", "topk_weight", "up", "down", "shared_up", "shared_down")


@pytest.mark.cuda
@pytest.mark.parametrize("ntokens,nexperts,shared_inter", [(200, 32, 3712), (37, 8, 0), (1, 16, 3712)])
def test_cuda_backward(ntokens, nexperts, shared_inter):
    args = make(ntokens, nexperts, 6, 2688, 1856, shared_inter, seed=ntokens, device="cuda", dtype=BF16, empty=(1,))
    names = [n for n in GRAD_NAMES if n in args]
    leaves = {n: args[n].detach().clone().requires_grad_() for n in names}
    out = moe_experts(**{**args, **leaves})
    dout = torch.randn_like(out)
    out.backward(dout)
    leaves64 = {n: args[n].detach().double().requires_grad_() for n in names}
    moe_experts_ref(**{**args, **leaves64}).backward(dout.double())
    leaves_low = {n: args[n].detach().clone().requires_grad_() for n in names}
    torch_bf16(**{**args, **leaves_low}).backward(dout)
    for n in names:
        assert_error_rule(f"d {n}", leaves[n].grad, leaves64[n].grad, leaves_low[n].grad, 3)
    assert torch.count_nonzero(leaves["up"].grad[1]) == 0 and torch.count_nonzero(leaves["down"].grad[1]) == 0
    again = {n: args[n].detach().clone().requires_grad_() for n in names}
    moe_experts(**{**args, **again}).backward(dout)
    assert all(torch.equal(again[n].grad, leaves[n].grad) for n in names), "backward not deterministic"


@pytest.mark.cuda
def test_cuda_unaligned_sizes_fall_back_loudly():
    args = make(10, 4, 2, 12, 24, 0, seed=0, device="cuda", dtype=BF16)
    with pytest.warns(UserWarning, match="H \\(hidden\\) = 12 not a multiple of 8"):
        out = moe_experts(**args)
    assert torch.equal(out, moe_experts_ref(**args))


@pytest.mark.cuda
def test_cuda_compile_and_int64_indices():
    args = make(50, 16, 6, 256, 128, 384, seed=5, device="cuda", dtype=BF16)
    expect = moe_experts(**args)
    assert torch.equal(moe_experts(**{**args, "topk_idx": args["topk_idx"].long()}), expect)
    compiled = torch.compile(moe_experts, fullgraph=True)
    assert torch.equal(compiled(**args), expect)


# ------------------------------------------------------------------------------------------------ FP8

from nemotron_kernels.ops.moe_experts import moe_experts_fp8, quantize_experts_fp8  # noqa: E402
from nemotron_kernels.reference.grouped_gemm import moe_experts_fp8_ref  # noqa: E402


def _fp8_args(args):
    q = quantize_experts_fp8(args["up"], args["down"], args.get("shared_up"), args.get("shared_down"))
    return dict(x=args["x"], topk_idx=args["topk_idx"], topk_weight=args["topk_weight"], **q)


def test_cpu_fp8_is_the_emulation_and_close_to_bf16():
    args = make(20, 6, 2, 32, 16, 48, seed=4, dtype=torch.float32)
    out = moe_experts_fp8(**_fp8_args(args))
    assert torch.equal(out, moe_experts_fp8_ref(**_fp8_args(args)))
    exact = moe_experts_ref(**{k: (v.double() if v.is_floating_point() else v) for k, v in args.items()})
    rel = ((out.double() - exact).norm() / exact.norm()).item()
    assert rel < 0.1, rel


def test_cpu_fp8_weights_only_at_decode_sizes():
    """Up to 16 rows (T * k) the FP8 layer is weights-only by default: x and h are not quantised, so it is the
    weights-only emulation, closer to the BF16 layer than the fully quantised pipeline; forcing either way works."""
    from nemotron_kernels.reference.grouped_gemm import WEIGHTS_ONLY_MAX_ROWS
    args = make(2, 6, 2, 32, 16, 48, seed=5, dtype=torch.float32)                  # 2 tokens x top-2: 4 rows
    assert args["topk_idx"].numel() <= WEIGHTS_ONLY_MAX_ROWS
    fp8 = _fp8_args(args)
    out = moe_experts_fp8(**fp8)
    assert torch.equal(out, moe_experts_fp8_ref(**fp8, weights_only=True))
    quantised = moe_experts_fp8(**fp8, weights_only=False)
    assert torch.equal(quantised, moe_experts_fp8_ref(**fp8, weights_only=False)) and not torch.equal(out, quantised)
    exact = moe_experts_ref(**{k: (v.double() if v.is_floating_point() else v) for k, v in args.items()})

    def rel(t):
        return ((t.double() - exact).norm() / exact.norm()).item()
    assert rel(out) < rel(quantised) and rel(out) < 0.05, (rel(out), rel(quantised))


@pytest.mark.cuda
@pytest.mark.parametrize("ntokens, weights_only", [(1, None), (1, False), (2, None), (64, None), (64, True),
                                                   (1024, None)])
def test_cuda_fp8_nemotron_shapes(ntokens, weights_only):
    """Budget: relative Frobenius error to the float64 BF16-math layer <= 1.25 x that of the float32 emulation of the
    same FP8 pipeline (+ 1e-3), and <= 10% in absolute terms (e4m3 keeps 3 mantissa bits, relu^2 doubles the
    relative error of the up projection). T = 1, 2 run weights-only by default (the weights-only GEMV)."""
    args = make(ntokens, **NEMOTRON, seed=ntokens + 3, device="cuda", dtype=BF16, empty=(9,))
    fp8 = _fp8_args(args)
    out = moe_experts_fp8(**fp8, weights_only=weights_only)
    exact = moe_experts_ref(**{k: (v.double() if v.is_floating_point() else v) for k, v in args.items()})
    emulated = moe_experts_fp8_ref(**fp8, weights_only=weights_only)

    def rel(t):
        return ((t.double() - exact).norm() / exact.norm()).item()

    assert out.dtype == BF16 and torch.isfinite(out).all()
    assert rel(out) <= 1.25 * rel(emulated) + 1e-3 and rel(out) < 0.1, (rel(out), rel(emulated))
    assert torch.equal(out, moe_experts_fp8(**fp8, weights_only=weights_only)), "not deterministic"


@pytest.mark.parametrize("weights_only", [False, True])
@pytest.mark.parametrize("with_shared", [True, False])
def test_cpu_fp8_kernel_pipeline_on_reference_entries_is_the_reference(monkeypatch, weights_only, with_shared):
    """moe_experts_fp8's CUDA pipeline (quantise, permute, FP8 or weights-only grouped GEMMs, the shared expert as
    one group, unpermute) runs here with each kernel entry swapped for its CPU reference: the plumbing (operand
    order, scales, offsets, what is quantised) must give moe_experts_fp8_ref's result. CI has no GPU to run it."""
    import nemotron_kernels.ops.moe_experts as m
    from nemotron_kernels.reference.grouped_gemm import (grouped_gemm_fp8_ref, grouped_gemm_w8_ref,
                                                         quantize_fp8_rowwise_ref)
    from nemotron_kernels.reference.moe_permute import moe_permute_ref, moe_unpermute_ref

    def permute_scaled(x_q, x_scale, topk_idx, nexperts, pad_to):     # e4m3 rows: moved as bytes
        _, roa, offsets = moe_permute_ref(torch.zeros(x_q.shape[0], 1), topk_idx, nexperts, pad_to)
        token = torch.arange(topk_idx.numel()) // topk_idx.shape[1]
        rows = torch.zeros(int(offsets[-1]), x_q.shape[1], dtype=torch.uint8)
        rows[roa.view(-1).long()] = x_q.view(torch.uint8)[token]
        row_scale = torch.zeros(int(offsets[-1]))
        row_scale[roa.view(-1).long()] = x_scale[token]
        return rows.view(torch.float8_e4m3fn), row_scale, roa, offsets

    def unpermute(rows, roa, weight, add):                              # rounded sum, then + add rounded again
        out = moe_unpermute_ref(rows, roa, weight)
        return out if add is None else (out.float() + add.float()).to(out.dtype)

    act = {True: "relu2", False: "none"}
    monkeypatch.setattr(m, "moe_permute_op", moe_permute_ref)
    monkeypatch.setattr(m, "moe_permute_scaled_op", permute_scaled)
    monkeypatch.setattr(m, "moe_unpermute_op", unpermute)
    monkeypatch.setattr(m, "quantize_fp8_rowwise_op", quantize_fp8_rowwise_ref)
    monkeypatch.setattr(m, "grouped_gemm_fp8_nt", lambda a, sa, b, sb, o, r: grouped_gemm_fp8_ref(a, sa, b, sb, o, act[r]))
    monkeypatch.setattr(m, "grouped_gemm_w8_nt", lambda a, b, sb, o, r: grouped_gemm_w8_ref(a, b, sb, o, act[r]))
    args = make(9, 6, 2, 32, 16, 48 if with_shared else None, seed=7, dtype=torch.bfloat16)
    fp8 = _fp8_args(args)
    want = moe_experts_fp8_ref(**fp8, weights_only=weights_only)
    shared = None
    if with_shared:
        shared = (*m._one_group(fp8["shared_up_q"], fp8["shared_up_scale"]),
                  *m._one_group(fp8["shared_down_q"], fp8["shared_down_scale"]))
    routed = (fp8["up_q"], fp8["up_scale"].float(), fp8["down_q"], fp8["down_scale"].float())
    got = m._fp8_pipeline(fp8["x"], fp8["topk_idx"].int(), fp8["topk_weight"].float(), routed, shared, weights_only)
    assert torch.equal(got, want)           # the same rounding points in the same order, on the same values
