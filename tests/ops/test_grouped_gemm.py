"""grouped_gemm: the reference against explicit per-row products (CPU), bad input, and the CUTLASS sm90 kernels
(forward with/without the fused relu^2, backward dA and dB) against the float64 reference under the error rule:
err(kernel) <= 2 x err(torch bf16) forward, 3 x backward (+ one bf16 ulp of the largest reference value)."""
import pytest
import torch

from mamba_checks import aot_lines
from nemotron_kernels import grouped_gemm
from nemotron_kernels.ops.grouped_gemm import relu2_grad
from nemotron_kernels.reference.grouped_gemm import (grouped_gemm_fp8_ref, grouped_gemm_ref, grouped_gemm_w8_ref,
                                                   quantize_fp8_rowwise_ref, relu2_grad_ref)

F64 = torch.float64
BF16 = torch.bfloat16


def offsets_from_counts(counts, device="cpu"):
    return torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32, device=device)


def operands(counts, n, k, seed, device="cpu", dtype=F64):
    g = torch.Generator(device="cpu").manual_seed(seed)
    m = sum(counts)
    a = torch.randn(m, k, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
    b = (torch.randn(len(counts), n, k, generator=g, dtype=torch.float32) * k ** -0.5).to(device=device, dtype=dtype)
    return a, b, offsets_from_counts(counts, device)


def assert_error_rule(name, got, ref64, low, k):
    """Max abs error to the float64 reference <= k x that of torch in bf16, + one ulp of the largest value."""
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    if got.numel() == 0:
        return
    err = (got.double() - ref64).abs().max().item()
    base = (low.double() - ref64).abs().max().item()
    floor = torch.finfo(got.dtype).eps * ref64.abs().max().item()
    assert err <= k * base + floor, f"{name}: kernel err {err:.3e} > {k} x torch-bf16 err {base:.3e} + {floor:.3e}"


def torch_bf16(a, b, offsets, activation):
    """The same computation in plain torch bf16 ops (the error-rule baseline): bf16 GEMM, bf16 relu, bf16 square."""
    bounds = offsets.tolist()
    parts = []
    for e in range(b.shape[0]):
        out = a[bounds[e]:bounds[e + 1]] @ b[e].T
        parts.append(torch.relu(out).square() if activation == "relu2" else out)
    return torch.cat(parts)


@pytest.mark.parametrize("activation", ["none", "relu2"])
@pytest.mark.parametrize("counts", [[3, 0, 5, 1], [0, 0, 7], [1], [4, 4, 0]])
def test_reference_matches_row_loop(counts, activation):
    a, b, offsets = operands(counts, 6, 5, seed=len(counts))
    out = grouped_gemm_ref(a, b, offsets, activation)
    rows = []
    e_of_row = [e for e, c in enumerate(counts) for _ in range(c)]
    for r, e in enumerate(e_of_row):
        v = b[e] @ a[r]
        rows.append(torch.relu(v) ** 2 if activation == "relu2" else v)
    expect = torch.stack(rows) if rows else a.new_zeros(0, 6)
    torch.testing.assert_close(out, expect, rtol=1e-13, atol=1e-13)


def test_reference_gradcheck_and_bf16_output():
    a, b, offsets = operands([2, 0, 3], 4, 3, seed=1)
    a.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: grouped_gemm(a, b, offsets, "relu2"), (a, b))
    out = grouped_gemm(a.detach().to(BF16), b.detach().to(BF16), offsets.long(), "relu2")
    assert out.dtype == BF16 and out.shape == (5, 4)


@pytest.mark.parametrize("change,exc,match", [
    (dict(a=torch.randn(5)), ValueError, "a must be 2-D"),
    (dict(b=torch.randn(3, 4, 7)), ValueError, r"b must have shape \[E, N, K\] with K = a.shape\[1\] = 3"),
    (dict(expert_offsets=torch.tensor([0, 5], dtype=torch.int32)), ValueError, "expert_offsets must have E\\+1 = 4"),
    (dict(expert_offsets=torch.tensor([0, 2, 2, 4], dtype=torch.int32)), ValueError, "end at M = a.shape\\[0\\] = 5"),
    (dict(expert_offsets=torch.tensor([0, 3, 2, 5], dtype=torch.int32)), ValueError, "non-decreasing"),
    (dict(expert_offsets=torch.tensor([0., 2., 2., 5.])), TypeError, "expert_offsets must have dtype"),
    (dict(activation="relu"), ValueError, "activation must be one of"),
])
def test_bad_inputs_name_the_argument(change, exc, match):
    a, b, offsets = operands([2, 0, 3], 4, 3, seed=0, dtype=torch.float32)
    args = dict(a=a, b=b, expert_offsets=offsets, activation="none")
    with pytest.raises(exc, match=match):
        grouped_gemm(**{**args, **change})


def row_scale_of(m: int, seed: int, device="cpu", dtype=F64) -> torch.Tensor:
    """[M] routing-weight-like scales in (0, 1], a zero among them."""
    s = torch.rand(m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 1e-3
    if m > 2:
        s[1] = 0.0
    return s.to(device=device, dtype=dtype)


@pytest.mark.parametrize("counts", [[3, 0, 5, 1], [0, 0, 7], [1]])
def test_reference_row_scale_is_each_row_times_its_scale(counts):
    """row_scale (the routing weights in the down projection's epilogue): out[r] = (a[r] @ b[e]^T) * s[r], with
    gradients in a, b and s (float64 gradcheck); the FP8 and weights-only references pass it through."""
    a, b, offsets = operands(counts, 6, 5, seed=len(counts))
    s = row_scale_of(a.shape[0], seed=len(counts))
    out = grouped_gemm(a, b, offsets, row_scale=s)
    torch.testing.assert_close(out, grouped_gemm_ref(a, b, offsets) * s[:, None], rtol=1e-13, atol=1e-13)
    a.requires_grad_()
    b.requires_grad_()
    s.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, s: grouped_gemm(a, b, offsets, row_scale=s), (a, b, s))
    s = s.detach().float()
    a_q, a_scale = quantize_fp8_rowwise_ref(a.detach())
    b_q, b_scale = quantize_fp8_rowwise_ref(b.detach().reshape(-1, 5))
    b_q, b_scale = b_q.view(b.shape), b_scale.view(b.shape[:2])
    fp8 = grouped_gemm_fp8_ref(a_q, a_scale, b_q, b_scale, offsets)
    assert torch.equal(grouped_gemm_fp8_ref(a_q, a_scale, b_q, b_scale, offsets, row_scale=torch.ones_like(s)), fp8)
    torch.testing.assert_close(grouped_gemm_fp8_ref(a_q, a_scale, b_q, b_scale, offsets, row_scale=s).float(),
                               fp8.float() * s[:, None], rtol=2 ** -7, atol=1e-6)
    a16 = a.detach().to(BF16)
    w8 = grouped_gemm_w8_ref(a16, b_q, b_scale, offsets)
    torch.testing.assert_close(grouped_gemm_w8_ref(a16, b_q, b_scale, offsets, row_scale=s).float(),
                               w8.float() * s[:, None], rtol=2 ** -7, atol=1e-6)


@pytest.mark.parametrize("wanted", ["a b s", "a b", "b s", "a s", "s"])
def test_row_scale_backward_formulas(monkeypatch, wanted):
    """GroupedGemmFn's backward with row_scale (g = dout @ b[e], da = g s, ds = <g, a>, db = (dout s)^T a) on the
    CPU: its three kernels swapped for float64 per-group products, then gradcheck, for each set of inputs that
    want a gradient (the backward takes another branch when the scale wants none)."""
    import nemotron_kernels.ops.grouped_gemm as gg
    a, b, offsets = operands([3, 0, 4, 1], 5, 6, seed=4)
    s = row_scale_of(a.shape[0], seed=4)
    groups = list(zip(offsets.tolist(), offsets.tolist()[1:]))            # (first row, end) per expert
    monkeypatch.setattr(gg, "grouped_gemm_nt", lambda a, b, offs, relu2, row_scale=None:
                        grouped_gemm_ref(a, b, offs, "relu2" if relu2 else "none", row_scale))
    monkeypatch.setattr(gg, "grouped_gemm_nn", lambda x, w, offs: torch.cat(
        [x[p:q] @ w[e] for e, (p, q) in enumerate(groups)]))
    monkeypatch.setattr(gg, "grouped_gemm_tn", lambda x, y, offs: torch.stack([x[p:q].T @ y[p:q] for p, q in groups]))
    inputs = [t.clone().requires_grad_(name in wanted.split()) for name, t in zip("abs", (a, b, s))]
    assert torch.autograd.gradcheck(lambda a, b, s: gg.GroupedGemmFn.apply(a, b, offsets, "none", s), inputs)


@pytest.mark.parametrize("change,exc,match", [
    (dict(activation="relu2"), ValueError, "row_scale applies without an activation only, got activation 'relu2'"),
    (dict(row_scale=torch.ones(4)), ValueError, r"row_scale must have shape \[M\] = \(5,\), got \(4,\)"),
    (dict(row_scale=torch.ones(5, 1)), ValueError, "row_scale must be 1-D"),
    (dict(row_scale=torch.ones(5, dtype=torch.int32)), TypeError, "row_scale must have a floating-point dtype"),
])
def test_row_scale_bad_inputs_name_the_argument(change, exc, match):
    a, b, offsets = operands([2, 0, 3], 4, 3, seed=0, dtype=torch.float32)
    args = dict(a=a, b=b, expert_offsets=offsets, activation="none", row_scale=torch.ones(5))
    with pytest.raises(exc, match=match):
        grouped_gemm(**{**args, **change})


def test_extension_path_argument_is_checked():
    """The extension's `path` (a moe::GemmPath to force, -1 = by rows per expert) is checked before anything else."""
    from nemotron_kernels import _ext
    if _ext._C is None:
        pytest.skip(f"extension not loaded: {_ext.LOAD_ERROR}")
    a, b, offsets = operands([2, 0, 3], 8, 8, seed=0, dtype=BF16)
    with pytest.raises(ValueError, match=r"path must be -1 \(auto\) or 0..2 .*, got 3$"):
        _ext._C.grouped_gemm_nt(a, b, offsets, False, 3)
    with pytest.raises(ValueError, match=r"path must be -1 \(auto\) or 0..2 .*, got -2$"):
        _ext._C.grouped_gemm_fp8_nt(a, offsets.float(), b, b[:, :, 0].float(), offsets, False, -2)
    with pytest.raises(ValueError, match=r"gemv_split must be 0 \(auto\), 1, 2, 4 or 8, got 3$"):
        _ext._C.grouped_gemm_nt(a, b, offsets, False, 2, 3)
    with pytest.raises(ValueError, match=r"gemv_split applies to the GEMV path only: pass path=2, got path=-1$"):
        _ext._C.grouped_gemm_nt(a, b, offsets, False, gemv_split=2)


def test_gemv_split_rule_matches_the_h200_sweep():
    """gemv_split_for at the resident count the sweeps ran with (3 CTAs of the 80-register BF16 and weights-only FP8
    kernels x 132 SMs) picks the split they measured fastest, or one within the run's noise (bench/NOTES.md,
    sessions 10 and 12), and at the 2 CTAs per SM of the 128-register FP8 x FP8 kernels (session 14)."""
    from nemotron_kernels import _ext
    if _ext._C is None or not hasattr(_ext._C, "gemv_split_for"):
        pytest.skip("extension built without CUDA")
    def rule(n, k, touched, elem=2, per_sm=3):        # resident CTAs: per_sm x 132 SMs
        return _ext._C.gemv_split_for(n, k, elem, touched, per_sm * 132)

    assert rule(3712, 2688, 1) == 2          # shared expert up, T = 1: 116 CTAs unsplit
    assert rule(2688, 3712, 1) == 4          # shared expert down: 84 CTAs
    assert rule(2688, 4096, 1) == 4          # Mamba out_proj, M = 1
    assert rule(10304, 2688, 1) == 1         # Mamba in_proj, M = 1: 322 CTAs already
    assert rule(1856, 2688, 6) == 1          # routed up, T = 1
    assert rule(2688, 1856, 6) == 2          # routed down, T = 1: 504 CTAs = 1.3 waves
    assert rule(1856, 2688, 48) == 1         # routed up, T = 8
    w8 = lambda n, k, touched: rule(n, k, touched, elem=1)  # noqa: E731  (session 12 sweep, µs at splits 1/2/4)
    assert w8(3712, 2688, 1) == 2            # shared expert up: 9.2 / 6.4 / 9.8
    assert w8(2688, 3712, 1) == 4            # shared expert down: 10.5 / 7.8 / 6.8
    assert w8(10304, 2688, 1) == 1           # Mamba in_proj, M = 1: 12.3 / 12.5 / 17.2
    assert w8(2688, 4096, 1) == 4            # Mamba out_proj: 9.7 / 7.1 / 6.2
    assert w8(1856, 2688, 6) == 1            # routed up, T = 1: 13.6 / 13.7 / 19.6
    assert w8(2688, 1856, 6) == 2            # routed down, T = 1: 16.2 / 16.3 / 17.0 (the fuller last wave)
    fp8 = lambda n, k, touched: rule(n, k, touched, elem=1, per_sm=2)  # noqa: E731  (µs at splits 1/2/4)
    assert fp8(3712, 2688, 1) == 2           # shared expert up: 10.0 / 6.8 / 10.1
    assert fp8(2688, 3712, 1) == 2           # shared expert down: 11.9 / 8.5 / 10.0
    assert fp8(10304, 2688, 1) == 2          # Mamba in_proj, M = 1: 19.1 / 15.4 / 21.8 (4 fills its last wave more)
    assert fp8(2688, 4096, 1) == 2           # Mamba out_proj: 10.7 / 7.4 / 8.4
    assert fp8(1856, 2688, 6) == 2           # routed up, T = 1: 20.6 / 17.5 / 28.4
    assert fp8(2688, 1856, 6) == 1           # routed down, T = 1: 16.9 / 21.0 / 22.5
    assert rule(64, 64, 1) == 1              # K too short for a split: each lane keeps >= 1 piece


def test_one_group_offsets_are_kept_for_decode_sizes_only():
    from nemotron_kernels.ops.grouped_gemm import _ONE_GROUP, ONE_GROUP_MAX_ROWS, one_group_offsets
    cpu = torch.device("cpu")
    kept = one_group_offsets(3, cpu)
    assert kept.tolist() == [0, 3] and kept.dtype == torch.int32
    assert one_group_offsets(3, cpu) is kept
    big = ONE_GROUP_MAX_ROWS + 1
    assert one_group_offsets(big, cpu).tolist() == [0, big]
    assert one_group_offsets(big, cpu) is not one_group_offsets(big, cpu)
    with torch.inference_mode():                       # an inference tensor could not be saved for a backward later
        assert one_group_offsets(5, cpu) is not one_group_offsets(5, cpu)
    assert not one_group_offsets(5, cpu).is_inference()
    traced = torch.compile(lambda n: one_group_offsets(n, cpu) + 0, fullgraph=True)      # traced as a plain arange
    assert traced(7).tolist() == [0, 7] and (7, cpu, None) not in _ONE_GROUP


# ------------------------------------------------------------------------------------------------ CUDA kernels

def routed_counts(ntokens, nexperts, top_k, seed, empty=()):
    """Per-expert row counts of a random top-k routing (experts in `empty` get none)."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([e for e in range(nexperts) if e not in empty])
    idx = torch.stack([allowed[torch.randperm(len(allowed), generator=g)[:top_k]] for _ in range(ntokens)])
    return torch.bincount(idx.view(-1), minlength=nexperts).tolist()


def check_forward(counts, n, k, activation, seed=0):
    a, b, offsets = operands(counts, n, k, seed, device="cuda", dtype=BF16)
    out = grouped_gemm(a, b, offsets, activation)
    ref64 = grouped_gemm_ref(a.double(), b, offsets, activation)        # b is cast per expert, in float64
    assert_error_rule(f"forward {activation}", out, ref64, torch_bf16(a, b, offsets, activation), 2)
    assert torch.equal(out, grouped_gemm(a, b, offsets, activation)), "not deterministic"
    return a, b, offsets


@pytest.mark.cuda
@pytest.mark.parametrize("activation", ["relu2", "none"])
@pytest.mark.parametrize("ntokens", [1, 8, 64, 512, 2048])   # GEMV (1), swapped operands (8, 64, 512), large tiles
def test_cuda_forward_nemotron_shapes(ntokens, activation):
    counts = routed_counts(ntokens, 128, 6, seed=ntokens, empty=(5,))
    n, k = (1856, 2688) if activation == "relu2" else (2688, 1856)   # up: [E, I, H]; down: [E, H, I]
    check_forward(counts, n, k, activation)


@pytest.mark.cuda
@pytest.mark.parametrize("activation", ["relu2", "none"])
@pytest.mark.parametrize("counts,n,k", [
    ([37, 0, 300, 1, 129], 104, 200),     # sizes not multiples of the 128x192 / 128x256 tiles, an empty expert
    ([0, 0, 513, 0], 1856, 2688),         # all rows on one expert
    ([1], 8, 8),                          # smallest aligned problem
    ([5, 0, 0, 0, 0, 0, 0, 3], 264, 72),  # E = 8, mostly empty
    ([12, 0, 0, 2, 0, 0, 0, 1], 264, 72), # the GEMV path (<= 16 rows), an expert over its 8-row pass
    ([0] * 69 + [2], 32, 64),             # the GEMV path finding the one busy expert past the first 32
])
def test_cuda_forward_odd_shapes(counts, n, k, activation):
    check_forward(counts, n, k, activation, seed=sum(counts))


PATHS = {0: "128-row tiles", 1: "swapped operands, 128x32 tiles", 2: "GEMV"}  # moe::GemmPath


@pytest.mark.cuda
@pytest.mark.parametrize("split", [0, 1, 2, 4, 8])
@pytest.mark.parametrize("counts,n,k", [
    ([1], 3712, 2688),                       # the shared expert's up at T = 1 (one group: auto splits K 4 ways)
    ([1, 0, 0, 2, 0, 5], 2688, 1856),        # routed down at T = 1..2, empty groups
    ([12, 0, 9], 264, 1040),                 # two 8-row passes (the split sums meet twice), K pieces uneven
    ([3], 40, 64),                           # K too short for every split: dead warps and idle lanes
])
def test_cuda_gemv_split(split, counts, n, k):
    """The GEMV's K split (warps sharing a channel group, sums meeting in shared memory in a fixed order), forced
    through the extension's gemv_split, BF16 and FP8, relu^2: the error rule, bitwise repeatable."""
    from nemotron_kernels import _ext
    a, b, offsets = operands(counts, n, k, seed=split + n, device="cuda", dtype=BF16)
    out = _ext._C.grouped_gemm_nt(a, b, offsets, True, 2, split)
    ref64 = grouped_gemm_ref(a.double(), b, offsets, "relu2")
    assert_error_rule(f"GEMV split {split}", out, ref64, torch_bf16(a, b, offsets, "relu2"), 2)
    assert torch.equal(out, _ext._C.grouped_gemm_nt(a, b, offsets, True, 2, split)), "not deterministic"
    a_q, a_scale, b_q, b_scale, offsets = quantized_operands(counts, n, k, seed=split)
    out = _ext._C.grouped_gemm_fp8_nt(a_q, a_scale, b_q, b_scale, offsets, True, 2, split)
    exact = grouped_gemm_ref(a_q.double() * a_scale.double()[:, None], b_q.double() * b_scale.double()[..., None],
                             offsets, "relu2")
    assert_error_rule(f"fp8 GEMV split {split}", out, exact, exact.to(BF16), 2)


@pytest.mark.cuda
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("activation", ["relu2", "none"])
@pytest.mark.parametrize("counts,n,k", [
    (routed_counts(256, 128, 6, seed=21, empty=(9,)), 1856, 2688),   # B256 decode: ~12 rows per expert
    ([37, 0, 5, 1, 70, 0, 33, 32], 264, 72),   # experts over one and two 32-row tiles, empty ones, odd starts
    ([1], 8, 8),
])
def test_cuda_every_forward_path(path, counts, n, k, activation):
    """Each kernel path, forced through the extension's `path` argument, on the same problems (path_for picks by
    rows per expert, so the sizes alone would not reach every path)."""
    from nemotron_kernels import _ext
    a, b, offsets = operands(counts, n, k, seed=path + len(counts), device="cuda", dtype=BF16)
    out = _ext._C.grouped_gemm_nt(a, b, offsets, activation == "relu2", path)
    ref64 = grouped_gemm_ref(a.double(), b, offsets, activation)
    assert_error_rule(f"{PATHS[path]} {activation}", out, ref64, torch_bf16(a, b, offsets, activation), 2)
    a_q, a_scale, b_q, b_scale, offsets = quantized_operands(counts, n, (k + 15) // 16 * 16, seed=path)  # K % 16
    out = _ext._C.grouped_gemm_fp8_nt(a_q, a_scale, b_q, b_scale, offsets, activation == "relu2", path)
    exact = grouped_gemm_ref(a_q.double() * a_scale.double()[:, None], b_q.double() * b_scale.double()[..., None],
                             offsets, activation)
    assert_error_rule(f"fp8 {PATHS[path]} {activation}", out, exact, exact.to(BF16), 2)


@pytest.mark.cuda
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("counts,n,k", [
    (routed_counts(256, 128, 6, seed=23, empty=(5,)), 2688, 1856),   # the down projection at B256 decode
    ([1, 0, 0, 2, 0, 5], 2688, 1856),                                # a decode batch: the GEMV's own size
    ([37, 0, 5, 1, 70, 0, 33, 32], 264, 72),
    ([300, 0, 211, 517, 2, 0, 64, 1], 2688, 1856),
])
def test_cuda_row_scale_every_path(path, counts, n, k):
    """row_scale on each kernel path (BF16 CUTLASS tiles, swapped tiles, GEMV; FP8 folded into a_scale;
    weights-only FP8 on its GEMV): scales of 1 give exactly the unscaled output, powers of two exactly the unscaled
    output times the scale (each row gets its own scale: a row or column mix-up shows; rounding once or twice
    cannot, powers of two commute with it), random scales the float64 reference under the error rule."""
    from nemotron_kernels import _ext
    if path == 2 and sum(counts) > 300:
        pytest.skip("not a GEMV size (path_for takes the GEMV up to 16 rows)")
    a, b, offsets = operands(counts, n, k, seed=path + 3, device="cuda", dtype=BF16)
    m = a.shape[0]
    plain = _ext._C.grouped_gemm_nt(a, b, offsets, False, path)
    ones = torch.ones(m, device="cuda")
    assert torch.equal(_ext._C.grouped_gemm_nt(a, b, offsets, False, path, row_scale=ones), plain)
    g = torch.Generator(device="cuda").manual_seed(path)
    pow2 = torch.exp2(torch.randint(-6, 3, (m,), device="cuda", generator=g).float())   # [M]
    got = _ext._C.grouped_gemm_nt(a, b, offsets, False, path, row_scale=pow2)
    assert torch.equal(got, (plain.float() * pow2[:, None]).to(BF16)), f"{PATHS[path]}: a scale on the wrong row"
    s = row_scale_of(m, seed=path, device="cuda", dtype=torch.float32)
    got = _ext._C.grouped_gemm_nt(a, b, offsets, False, path, row_scale=s)
    ref64 = grouped_gemm_ref(a.double(), b.double(), offsets, row_scale=s.double())
    low = (torch_bf16(a, b, offsets, "none") * s[:, None]).to(BF16)
    assert_error_rule(f"{PATHS[path]} row_scale", got, ref64, low, 2)

    a_q, a_scale, b_q, b_scale, offsets = quantized_operands(counts, n, (k + 15) // 16 * 16, seed=path)
    if path == 0:            # FP8 folds s into a_scale (each path's a_scale is tested above); once per problem
        got = grouped_gemm_fp8(a_q, a_scale, b_q, b_scale, offsets, row_scale=s)
        exact = grouped_gemm_ref(a_q.double() * a_scale.double()[:, None], b_q.double() * b_scale.double()[..., None],
                                 offsets, row_scale=s.double())
        assert_error_rule("fp8 row_scale", got, exact, exact.to(BF16), 2)
    if path == 2:
        a16 = (a_q.float() * a_scale[:, None]).to(BF16)
        got = _ext._C.grouped_gemm_w8_nt(a16, b_q, b_scale, offsets, False, row_scale=s)
        assert torch.equal(_ext._C.grouped_gemm_w8_nt(a16, b_q, b_scale, offsets, False, row_scale=ones),
                           _ext._C.grouped_gemm_w8_nt(a16, b_q, b_scale, offsets, False))
        exact = grouped_gemm_ref(a16.double(), b_q.double() * b_scale.double()[..., None], offsets,
                                 row_scale=s.double())
        assert_error_rule("w8 GEMV row_scale", got, exact, exact.to(BF16), 2)


@pytest.mark.cuda
@pytest.mark.parametrize("counts,n,k", [
    ([300, 0, 211, 517, 2, 0, 64, 1], 2688, 1856),   # the down projection's shape, 8 experts, two empty
    ([37, 0, 130, 1], 104, 200),
])
def test_cuda_row_scale_backward(counts, n, k):
    """grouped_gemm with row_scale, differentiated in a, b and the scale, against the float64 reference's autograd
    (error rule, k = 3, with torch's bf16 computation as the low-precision baseline); also with the scale not
    requiring a gradient (the other backward branch)."""
    a, b, offsets = operands(counts, n, k, seed=9, device="cuda", dtype=BF16)
    s = row_scale_of(a.shape[0], seed=9, device="cuda", dtype=torch.float32)
    dout = torch.randn(a.shape[0], n, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1)).to(BF16)
    leaves = [t.detach().clone().requires_grad_() for t in (a, b, s)]
    grouped_gemm(*leaves[:2], offsets, row_scale=leaves[2]).backward(dout)
    leaves64 = [t.detach().double().requires_grad_() for t in (a, b, s)]
    grouped_gemm_ref(*leaves64[:2], offsets, row_scale=leaves64[2]).backward(dout.double())
    leaves_low = [t.detach().clone().requires_grad_() for t in (a, b, s)]
    (torch_bf16(*leaves_low[:2], offsets, "none") * leaves_low[2][:, None]).to(BF16).backward(dout)
    for name, got, g64, low in zip(("a", "b", "row_scale"), leaves, leaves64, leaves_low):
        assert_error_rule(f"row_scale d{name}", got.grad, g64.grad, low.grad, 3)
    no_s = [t.detach().clone().requires_grad_() for t in (a, b)]
    grouped_gemm(*no_s, offsets, row_scale=s).backward(dout)
    assert_error_rule("row_scale (no grad) da", no_s[0].grad, leaves64[0].grad, leaves_low[0].grad, 3)
    assert torch.equal(no_s[1].grad, leaves[1].grad), "db must not depend on whether the scale wants a gradient"


@pytest.mark.cuda
@pytest.mark.parametrize("activation", ["relu2", "none"])
@pytest.mark.parametrize("counts,n,k", [
    ([300, 0, 211, 517, 2, 0, 64, 1], 1856, 2688),   # up-projection shape, 8 experts, two empty
    ([300, 0, 211, 517, 2, 0, 64, 1], 2688, 1856),   # down-projection shape
    ([37, 0, 130, 1], 104, 200),
])
def test_cuda_backward(counts, n, k, activation):
    a, b, offsets = operands(counts, n, k, seed=7, device="cuda", dtype=BF16)
    a.requires_grad_()
    b.requires_grad_()
    out = grouped_gemm(a, b, offsets, activation)
    dout = torch.randn_like(out)
    out.backward(dout)
    a64 = a.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_()
    grouped_gemm_ref(a64, b64, offsets, activation).backward(dout.double())
    a_low = a.detach().clone().requires_grad_()
    b_low = b.detach().clone().requires_grad_()
    torch_bf16(a_low, b_low, offsets, activation).backward(dout)
    assert_error_rule("d a", a.grad, a64.grad, a_low.grad, 3)
    assert_error_rule("d b", b.grad, b64.grad, b_low.grad, 3)
    for e, c in enumerate(counts):
        if c == 0:
            assert torch.count_nonzero(b.grad[e]) == 0, f"expert {e} has no rows but a nonzero weight gradient"


def relu2_grad_operands(shape, dtype, device="cpu", seed=0):
    """dout and out = relu(pre)^2 rounded to dtype, with exact zeros (pre <= 0) as the forward makes them."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    pre = torch.randn(shape, generator=g)
    return (torch.randn(shape, generator=g).to(device=device, dtype=dtype),
            torch.relu(pre).square().to(device=device, dtype=dtype))


def test_relu2_grad_reference_is_the_autograd_gradient():
    """float64: dout * 2 sqrt(relu(pre)^2) is autograd's d/dpre of relu(pre)^2 (sqrt undoes the square)."""
    pre = torch.randn(7, 33, dtype=F64, requires_grad=True)
    dout = torch.randn(7, 33, dtype=F64)
    torch.relu(pre).square().backward(dout)
    got = relu2_grad(dout, torch.relu(pre.detach()).square())
    torch.testing.assert_close(got, pre.grad, rtol=1e-14, atol=1e-14)


@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, BF16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 1856), (2, 4097), (0, 8)])   # one element, odd, past one block, none
def test_interpreter_relu2_grad_is_the_reference(shape, dtype):
    """The Triton pass under the interpreter: bitwise the reference in fp32 and fp16; in bf16 within one ulp (the
    interpreter's casts to bf16 truncate where the GPU rounds to nearest)."""
    dout, out = relu2_grad_operands(shape, dtype)
    got, ref = relu2_grad(dout, out), relu2_grad_ref(dout, out)
    assert got.dtype == dtype and got.shape == dout.shape
    if dtype == BF16:
        torch.testing.assert_close(got, ref, rtol=2 ** -7, atol=0)
    else:
        assert torch.equal(got, ref)


@pytest.mark.usefixtures("interpret")
def test_interpreter_relu2_grad_reads_only_what_it_writes(assert_reads_only_written):
    """[3, 1371]: 4113 elements, one 4096-element block and a last one of 17, in each dtype: with scratch memory
    poisoned as NaN, dpre equals a plain run's, so the pass writes every element."""
    operands = {dtype: relu2_grad_operands((3, 1371), dtype, seed=3) for dtype in (torch.float32, torch.float16, BF16)}

    def run():
        return {f"dpre ({dtype})": relu2_grad(dout, out) for dtype, (dout, out) in operands.items()}

    assert_reads_only_written(run)


def test_relu2_grad_bad_inputs():
    dout, out = relu2_grad_operands((4, 8), torch.float32)
    with pytest.raises(ValueError, match="out must have dout's shape"):
        relu2_grad(dout, out[:, :4])
    with pytest.raises(TypeError, match="dout must have a floating-point dtype"):
        relu2_grad(dout.int(), out)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [BF16, torch.float32])
@pytest.mark.parametrize("shape", [(98304 // 8, 1856), (5, 3712), (1, 7)])
def test_cuda_relu2_grad_is_the_reference_bitwise(shape, dtype):
    dout, out = relu2_grad_operands(shape, dtype, device="cuda")
    assert torch.equal(relu2_grad(dout, out), relu2_grad_ref(dout, out))


def test_aot_compile_relu2_grad_sm90():
    """The relu² gradient pass compiles for sm_90a in bf16 / fp16 / fp32 (no GPU needed)."""
    assert len(aot_lines("relu2_grad")) == 3

@pytest.mark.cuda
@pytest.mark.isolated
def test_cuda_unaligned_sizes_raise_clearly():
    a, b, offsets = operands([3, 2], 16, 100, seed=0, device="cuda", dtype=BF16)
    with pytest.raises(ValueError, match="multiple of 8: TMA needs 16-byte aligned row strides"):
        grouped_gemm(a, b, offsets)
    a, b, offsets = operands([3, 2], 20, 16, seed=0, device="cuda", dtype=BF16)
    with pytest.raises(ValueError, match=r"N \(b.shape\[1\]\) = 20 must be a multiple of 8"):
        grouped_gemm(a, b, offsets)
    a, b, offsets = operands([3, 2], 16, 16, seed=0, device="cuda", dtype=BF16)
    with pytest.raises(ValueError, match="16-byte aligned address"):
        grouped_gemm(a.view(-1)[4:4 + 4 * 16].view(4, 16), b, torch.tensor([0, 2, 4], dtype=torch.int32,
                                                                               device="cuda"))   # 8-byte offset


@pytest.mark.cuda
def test_cuda_custom_ops_opcheck_and_compile():
    from nemotron_kernels.ops.grouped_gemm import grouped_gemm_nn, grouped_gemm_nt, grouped_gemm_tn, relu2_grad_op
    a, b, offsets = operands([5, 0, 11], 24, 32, seed=3, device="cuda", dtype=BF16)
    h = grouped_gemm_nt(a, b, offsets, True)
    torch.library.opcheck(grouped_gemm_nt.op, (a, b, offsets, True))
    torch.library.opcheck(grouped_gemm_nt.op, (a, b, offsets, False, torch.rand(a.shape[0], device="cuda")))
    torch.library.opcheck(grouped_gemm_nn.op, (h, b, offsets))                           # [16, 24] @ [3, 24, 32]
    torch.library.opcheck(relu2_grad_op.op, (torch.randn_like(h), h))
    torch.library.opcheck(grouped_gemm_tn.op, (h, a, offsets))
    compiled = torch.compile(lambda a, b: grouped_gemm(a, b, offsets, "relu2"), fullgraph=True)
    assert torch.equal(compiled(a, b), grouped_gemm(a, b, offsets, "relu2"))


@pytest.mark.cuda
def test_cuda_graph_capture():
    a, b, offsets = operands([40, 0, 24], 64, 128, seed=4, device="cuda", dtype=BF16)
    expect = grouped_gemm(a, b, offsets, "relu2")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = grouped_gemm(a, b, offsets, "relu2")
    out.zero_()
    graph.replay()
    assert torch.equal(out, expect)


# ------------------------------------------------------------------------------------------------ FP8

from nemotron_kernels.ops.grouped_gemm import grouped_gemm_fp8, quantize_fp8_rowwise  # noqa: E402


def test_quantize_fp8_reference_bounds():
    x = torch.randn(7, 300) * torch.logspace(-3, 3, 7)[:, None]
    x[3] = 0
    q, scale = quantize_fp8_rowwise_ref(x)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale[3] == 1
    back = q.float() * scale[:, None]
    assert (back - x).abs().le(torch.maximum(x.abs() * 2 ** -4, scale[:, None] * 2 ** -10)).all()
    assert q.float().abs().amax(1)[[0, 1, 2, 4, 5, 6]].eq(448).all()    # each row's amax maps to e4m3's max


def test_fp8_reference_is_the_dequantised_gemm():
    a, b, offsets = operands([3, 0, 4], 16, 32, seed=2, dtype=torch.float32)
    a_q, a_scale = quantize_fp8_rowwise(a)
    b_q, b_scale = quantize_fp8_rowwise(b.view(-1, 32))
    b_q, b_scale = b_q.view(b.shape), b_scale.view(3, 16)
    out = grouped_gemm_fp8(a_q, a_scale, b_q, b_scale, offsets, "relu2")
    expect = grouped_gemm_ref(a_q.float() * a_scale[:, None], b_q.float() * b_scale[..., None], offsets, "relu2")
    assert out.dtype == BF16 and torch.equal(out, expect.to(BF16))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [BF16, torch.float32])
@pytest.mark.parametrize("rows,cols", [(1, 2688), (777, 1856), (9, 3072), (3, 3080), (6, 1536), (5, 100), (3, 7)])
# a warp per row up to 3,072 bf16 / 1,536 fp32 (777 rows: a partly filled last block), a block per row beyond and
# for unaligned rows
def test_cuda_quantize_fp8_is_the_reference_bitwise(rows, cols, dtype):
    x = (torch.randn(rows, cols, device="cuda") * torch.logspace(-4, 4, rows, device="cuda")[:, None]).to(dtype)
    x[0, : cols // 2] = 0
    x[-1, :2] = -0.0  # the kernel answers zeros without dividing: the sign must survive
    if rows > 2:
        x[2] = 0
    q, scale = quantize_fp8_rowwise(x)
    q_ref, scale_ref = quantize_fp8_rowwise_ref(x)
    assert torch.equal(scale, scale_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [BF16, torch.float32])   # 2,688 columns: bf16 by a warp per row, fp32 by a block
def test_cuda_quantize_fp8_exact_at_ties_and_extreme_rows(dtype):
    """The division-free quotient (moe_quant_kernel.cu, divide_fast) at its hardest inputs: integers times 2^k
    against a row max of 448 x 2^k, so x / s lands on e4m3 midpoints (round to even decides), and the rows outside
    its range (amax < 2^-60 or > 2^100), which divide."""
    g = torch.Generator(device="cuda").manual_seed(0)
    ints = torch.randint(-448, 449, (64, 2688), generator=g, device="cuda").float()
    ints[:, 0] = 448
    parts = [ints * 2.0 ** k for k in (-40, -3, 0, 5, 40)]
    parts += [torch.randn(8, 2688, generator=g, device="cuda") * 2.0 ** e for e in (-70, -61, 99, 105)]
    x = torch.cat(parts).to(dtype)
    x[1, 1::7] = -0.0
    q, scale = quantize_fp8_rowwise(x)
    q_ref, scale_ref = quantize_fp8_rowwise_ref(x)
    assert torch.equal(scale, scale_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


def quantized_operands(counts, n, k, seed):
    a, b, offsets = operands(counts, n, k, seed, device="cuda", dtype=BF16)
    a_q, a_scale = quantize_fp8_rowwise(a)
    b_q, b_scale = quantize_fp8_rowwise(b.view(-1, k))
    return a_q, a_scale, b_q.view(b.shape), b_scale.view(len(counts), n), offsets


@pytest.mark.cuda
@pytest.mark.parametrize("activation", ["relu2", "none"])
@pytest.mark.parametrize("counts,n,k", [
    (routed_counts(2048, 128, 6, seed=11, empty=(3,)), 1856, 2688),
    (routed_counts(64, 128, 6, seed=12), 2688, 1856),
    (routed_counts(1, 128, 6, seed=13), 1856, 2688),
    ([37, 0, 300, 1, 129], 104, 208),
    ([1], 8, 16),
    ([11, 2, 1], 264, 80),                  # the GEMV path (<= 16 rows), an expert over its 8-row pass
])
def test_cuda_fp8_forward(counts, n, k, activation):
    """Budget: the kernel's error to the exact product of the dequantised operands (float64) is at most 2 x the
    error of rounding that exact product to bf16, + one bf16 ulp of its largest value: everything FP8 loses is in
    the quantisation, which the reference shares."""
    a_q, a_scale, b_q, b_scale, offsets = quantized_operands(counts, n, k, seed=sum(counts))
    out = grouped_gemm_fp8(a_q, a_scale, b_q, b_scale, offsets, activation)
    exact = grouped_gemm_ref(a_q.double() * a_scale.double()[:, None], b_q.double() * b_scale.double()[..., None],
                             offsets, activation)
    assert out.dtype == BF16
    assert_error_rule(f"fp8 {activation}", out, exact, exact.to(BF16), 2)
    assert torch.equal(out, grouped_gemm_fp8(a_q, a_scale, b_q, b_scale, offsets, activation))


@pytest.mark.cuda
@pytest.mark.isolated
def test_cuda_fp8_checks_name_the_argument():
    a_q, a_scale, b_q, b_scale, offsets = quantized_operands([3, 5], 16, 40, seed=0)
    with pytest.raises(ValueError, match="multiple of 16: TMA needs 16-byte aligned row strides"):
        grouped_gemm_fp8(a_q, a_scale, b_q, b_scale, offsets)
    a_q, a_scale, b_q, b_scale, offsets = quantized_operands([3, 5], 16, 32, seed=0)
    with pytest.raises(ValueError, match="b_scale must have shape"):
        grouped_gemm_fp8(a_q, a_scale, b_q, b_scale[:, :8].contiguous(), offsets)
    with pytest.raises(TypeError, match="a must have dtype Float8_e4m3fn"):
        from nemotron_kernels.ops.grouped_gemm import grouped_gemm_fp8_nt
        grouped_gemm_fp8_nt(a_q.float().to(BF16), a_scale, b_q, b_scale, offsets, False)


# ------------------------------------------------------------------------------------------------ weights-only FP8

from nemotron_kernels.ops.grouped_gemm import grouped_gemm_w8  # noqa: E402


def w8_operands(counts, n, k, seed, device="cpu"):
    """bf16 rows, e4m3 weights with per-channel scales (quantised from random bf16 weights)."""
    a, b, offsets = operands(counts, n, k, seed, device=device, dtype=BF16)
    b_q, b_scale = quantize_fp8_rowwise_ref(b.reshape(-1, k).cpu())
    return a, b_q.view(b.shape).to(device), b_scale.view(len(counts), n).to(device), offsets


@pytest.mark.parametrize("activation", ["none", "relu2"])
def test_w8_reference_is_the_dequantised_gemm(activation):
    """grouped_gemm_w8 off the GPU: a (unquantised) @ dequantised weights per expert, out in a's dtype; empty
    experts and a zero row included."""
    a, b_q, b_scale, offsets = w8_operands([3, 0, 5, 1], 24, 32, seed=7)
    a[4] = 0
    out = grouped_gemm_w8(a, b_q, b_scale, offsets, activation)
    want = grouped_gemm_ref(a.double(), b_q.double() * b_scale.double()[..., None], offsets, activation)
    assert out.dtype == BF16 and out.shape == (9, 24)
    torch.testing.assert_close(out.double(), want, rtol=2 ** -7, atol=1e-6)
    assert torch.equal(grouped_gemm_w8_ref(a.double(), b_q, b_scale, offsets, activation), want)


def test_w8_bad_inputs_name_the_argument():
    a, b_q, b_scale, offsets = w8_operands([2, 2], 8, 16, seed=1)
    with pytest.raises(TypeError, match="b_q must have dtype torch.float8_e4m3fn"):
        grouped_gemm_w8(a, b_q.float(), b_scale, offsets)
    with pytest.raises(ValueError, match=r"b_q must have shape \[E, N, K\] with K = a.shape\[1\] = 8"):
        grouped_gemm_w8(a[:, :8], b_q, b_scale, offsets)
    with pytest.raises(ValueError, match=r"b_scale must have shape \[E, N\] = \(2, 8\)"):
        grouped_gemm_w8(a, b_q, b_scale[:, :4], offsets)
    from nemotron_kernels import _ext
    if _ext._C is not None:   # the extension checks gemv_split before the device
        with pytest.raises(ValueError, match=r"gemv_split must be 0 \(auto\), 1, 2, 4 or 8, got 5$"):
            _ext._C.grouped_gemm_w8_nt(a, b_q, b_scale, offsets, False, 5)


@pytest.mark.cuda
@pytest.mark.parametrize("activation", ["none", "relu2"])
@pytest.mark.parametrize("split", [0, 1, 2, 4])
@pytest.mark.parametrize("counts,n,k", [
    ([1, 0, 0, 1, 0, 1, 1, 0, 1, 1], 1856, 2688),   # routed up at T = 1 (6 experts of 10)
    ([1], 2688, 3712),                              # the shared expert's down
    ([12, 0, 9], 264, 1040),                        # two 8-row passes, K pieces uneven over the lanes
    ([3], 40, 64),                                  # K shorter than a warp's pieces: idle lanes
])
def test_cuda_w8_gemv(counts, n, k, split, activation):
    """The weights-only FP8 GEMV (bf16 a, e4m3 b, per-channel scales) at every forced split: the DESIGN 2x rule
    against float64 on the same operands (a unquantised), bitwise repeatable, and the public op agreeing."""
    from nemotron_kernels import _ext
    a, b_q, b_scale, offsets = w8_operands(counts, n, k, seed=split + n, device="cuda")
    relu2 = activation == "relu2"
    out = _ext._C.grouped_gemm_w8_nt(a, b_q, b_scale, offsets, relu2, split)
    want = grouped_gemm_ref(a.double(), b_q.double() * b_scale.double()[..., None], offsets, activation)
    assert out.dtype == BF16
    assert_error_rule(f"w8 GEMV split {split}", out, want, want.to(BF16), 2)
    assert torch.equal(out, _ext._C.grouped_gemm_w8_nt(a, b_q, b_scale, offsets, relu2, split)), "not deterministic"
    if split == 0:
        assert torch.equal(grouped_gemm_w8(a, b_q, b_scale, offsets, activation), out)


@pytest.mark.cuda
@pytest.mark.parametrize("split", [1, 2])
def test_cuda_w8_gemv_every_e4m3_value(split):
    """Every finite e4m3 value (subnormals, both zeros, +-448) as a weight of the weights-only GEMV, in rows of
    ordinary, tiny (2^-40) and large (2^40) activations, meets the DESIGN 2x rule against float64; each weight alone
    (a one-hot row of a) comes out exact: any way of widening e4m3 must get every code right."""
    from nemotron_kernels import _ext
    codes = torch.tensor([c for c in range(256) if c not in (0x7F, 0xFF)] + [0, 0x80], dtype=torch.uint8)
    g = torch.Generator().manual_seed(split)
    k = codes.numel()                                                                    # 256
    b_q = torch.stack([codes[torch.randperm(k, generator=g)] for _ in range(16)]).view(torch.float8_e4m3fn)
    b_scale = (torch.rand(1, 16, generator=g) + 0.5).to(BF16).float()    # 8 bits: w * scale is exact in fp32
    a = torch.randn(3, k, generator=g)
    a[1] *= 2.0 ** -40
    a[2] *= 2.0 ** 40
    onehot = torch.eye(k)[torch.randperm(k, generator=g)[:8]]                            # picks single weights
    a = torch.cat([a, onehot]).to(BF16)                                                 # [11, K]
    offsets = torch.tensor([0, a.shape[0]], dtype=torch.int32)
    a, b_q, b_scale, offsets = (t.cuda() for t in (a, b_q[None], b_scale, offsets))
    out = _ext._C.grouped_gemm_w8_nt(a, b_q, b_scale, offsets, False, split)
    want = grouped_gemm_ref(a.double(), b_q.double() * b_scale.double()[..., None], offsets, "none")
    assert_error_rule(f"w8 GEMV, every e4m3 value, split {split}", out, want, want.to(BF16), 2)
    assert torch.equal(out[3:], want[3:].to(BF16)), "a single weight times 1 must come out exact"
