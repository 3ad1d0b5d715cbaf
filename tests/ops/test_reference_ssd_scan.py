"""ssd_scan_ref (chunked) against ssd_recurrence_ref (the definition), in float64, plus packing and bad input."""
import functools

import pytest
import torch

from nemotron_kernels.reference.ssd_scan import ssd_recurrence_ref, ssd_scan_ref

F64 = torch.float64
H, P, N = 4, 3, 5


def assert_rel_close(actual, expected, tol):
    """max |actual - expected| <= tol * max |expected| (scale-free)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= tol * scale, f"max abs err {err:.3e} > {tol:.1e} * {scale:.3e}"


def make_inputs(seed, bsz, seqlen, ngroups, softplus=True, dtype=F64, nstates=None):
    """Fresh random SSD inputs; dt is positive when no softplus will be applied."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=F64)

    args = dict(
        x=randn(bsz, seqlen, H, P),
        dt=randn(bsz, seqlen, H) if softplus else 0.05 + 0.4 * rand(bsz, seqlen, H),
        A=-torch.exp(0.5 * randn(H)),
        B=randn(bsz, seqlen, ngroups, N),
        C=randn(bsz, seqlen, ngroups, N),
    )
    extras = dict(D=randn(H), dt_bias=0.5 * randn(H) if softplus else 0.1 * rand(H),
                  initial_states=randn(nstates or bsz, H, P, N))
    return {k: v.to(dtype) for k, v in args.items()}, {k: v.to(dtype) for k, v in extras.items()}


@functools.cache
def recurrence_case(seqlen, bsz, ngroups):
    """Inputs and the (slow) recurrence's outputs, shared by the chunk sizes tested on them."""
    args, extras = make_inputs(seqlen * 1000 + bsz * 10 + ngroups, bsz, seqlen, ngroups)
    return args, extras, ssd_recurrence_ref(**args, **extras, dt_softplus=True, return_final_states=True)


@pytest.mark.parametrize("seqlen", [1, 7, 64, 100, 130])
@pytest.mark.parametrize("chunk_size", [16, 32, 64])
@pytest.mark.parametrize("bsz", [1, 2])
@pytest.mark.parametrize("ngroups", [1, H])
def test_chunked_matches_recurrence(seqlen, chunk_size, bsz, ngroups):
    args, extras, (y_rec, final_rec) = recurrence_case(seqlen, bsz, ngroups)
    y, final = ssd_scan_ref(**args, **extras, dt_softplus=True, chunk_size=chunk_size, return_final_states=True)
    assert_rel_close(y, y_rec, 1e-10)
    assert_rel_close(final, final_rec, 1e-10)


@pytest.mark.parametrize("use_D", [False, True])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("use_init", [False, True])
def test_optional_features(use_D, use_bias, softplus, use_init):
    args, extras = make_inputs(7 + 2 * use_D + 4 * use_bias + 8 * softplus + 16 * use_init, 2, 45, 2, softplus)
    kwargs = dict(D=extras["D"] if use_D else None, dt_bias=extras["dt_bias"] if use_bias else None,
                  initial_states=extras["initial_states"] if use_init else None, dt_softplus=softplus)
    y, final = ssd_scan_ref(**args, **kwargs, chunk_size=16, return_final_states=True)
    y_rec, final_rec = ssd_recurrence_ref(**args, **kwargs, return_final_states=True)
    assert_rel_close(y, y_rec, 1e-10)
    assert_rel_close(final, final_rec, 1e-10)
    y_only = ssd_scan_ref(**args, **kwargs, chunk_size=16)  # return_final_states=False: y alone
    assert isinstance(y_only, torch.Tensor)
    torch.testing.assert_close(y_only, y, rtol=0, atol=0)


def test_recurrence_is_the_formula():
    """One head, two tokens, written out by hand."""
    args, extras = make_inputs(3, 1, 2, 1, softplus=False)
    y = ssd_recurrence_ref(**args, D=extras["D"])
    x, dt, A, B, C = (args[k] for k in ("x", "dt", "A", "B", "C"))
    for h in range(H):
        s = dt[0, 0, h] * torch.outer(x[0, 0, h], B[0, 0, 0])
        torch.testing.assert_close(y[0, 0, h], s @ C[0, 0, 0] + extras["D"][h] * x[0, 0, h])
        s = torch.exp(dt[0, 1, h] * A[h]) * s + dt[0, 1, h] * torch.outer(x[0, 1, h], B[0, 1, 0])
        torch.testing.assert_close(y[0, 1, h], s @ C[0, 1, 0] + extras["D"][h] * x[0, 1, h])


@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("use_init", [False, True])
def test_packed_sequences(chunk_size, use_init):
    lens = [37, 1, 50, 12, 30]   # a length-1 sequence; boundaries fall inside 16-token chunks
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    total = sum(lens)
    args, extras = make_inputs(11 + use_init, 1, total, 2, nstates=len(lens))
    init = extras["initial_states"] if use_init else None
    common = dict(D=extras["D"], dt_bias=extras["dt_bias"], dt_softplus=True, initial_states=init,
                  cu_seqlens=cu, return_final_states=True)
    y, final = ssd_scan_ref(**args, **common, chunk_size=chunk_size)
    y_rec, final_rec = ssd_recurrence_ref(**args, **common)
    assert final.shape == (len(lens), H, P, N)
    assert_rel_close(y, y_rec, 1e-10)
    assert_rel_close(final, final_rec, 1e-10)
    # packed == each sequence on its own
    for s, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        part = {k: (v[:, start:end] if v.dim() > 1 else v) for k, v in args.items()}
        y_s, final_s = ssd_scan_ref(**part, D=extras["D"], dt_bias=extras["dt_bias"], dt_softplus=True,
                                    initial_states=None if init is None else init[s:s + 1],
                                    chunk_size=chunk_size, return_final_states=True)
        assert_rel_close(y[:, start:end], y_s, 1e-12)
        assert_rel_close(final[s:s + 1], final_s, 1e-12)


def test_packed_int64_and_empty_sequence():
    cu = torch.tensor([0, 5, 5, 9], dtype=torch.int64)  # the middle sequence is empty
    args, extras = make_inputs(5, 1, 9, 1, nstates=3)
    y, final = ssd_scan_ref(**args, chunk_size=4, cu_seqlens=cu, initial_states=extras["initial_states"],
                            return_final_states=True)
    y_rec, final_rec = ssd_recurrence_ref(**args, cu_seqlens=cu, initial_states=extras["initial_states"],
                                          return_final_states=True)
    assert_rel_close(y, y_rec, 1e-10)
    torch.testing.assert_close(final[1], extras["initial_states"][1])  # nothing happened to the empty one
    assert_rel_close(final, final_rec, 1e-10)


def test_low_precision_dtypes():
    args, extras = make_inputs(21, 2, 40, 2, dtype=torch.bfloat16)
    y, final = ssd_scan_ref(**args, **extras, dt_softplus=True, chunk_size=16, return_final_states=True)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    args64 = {k: v.to(F64) for k, v in args.items()}
    extras64 = {k: v.to(F64) for k, v in extras.items()}
    y64, final64 = ssd_recurrence_ref(**args64, **extras64, dt_softplus=True, return_final_states=True)
    assert_rel_close(y.to(F64), y64.to(torch.bfloat16).to(F64), 2e-2)
    assert_rel_close(final.to(F64), final64, 1e-5)


def test_bad_inputs():
    args, extras = make_inputs(0, 2, 8, 2)
    x, dt, A, B, C = (args[k] for k in ("x", "dt", "A", "B", "C"))
    with pytest.raises(ValueError, match="x must be 4-D"):
        ssd_scan_ref(x[0], dt, A, B, C)
    with pytest.raises(TypeError, match="dt must have a floating-point dtype"):
        ssd_scan_ref(x, dt.to(torch.int32), A, B, C)
    with pytest.raises(ValueError, match="C must have shape"):
        ssd_scan_ref(x, dt, A, B, C[:, :, :1])
    with pytest.raises(ValueError, match=r"H \(heads of x\) \(4\) must be a multiple of G"):
        ssd_scan_ref(x, dt, A, torch.cat([B, B[:, :, :1]], 2), torch.cat([C, C[:, :, :1]], 2))
    with pytest.raises(ValueError, match="D must have shape"):
        ssd_scan_ref(x, dt, A, B, C, D=extras["D"][:2])
    with pytest.raises(ValueError, match="initial_states must have shape"):
        ssd_scan_ref(x, dt, A, B, C, initial_states=extras["initial_states"][:1])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        ssd_scan_ref(x, dt, A, B, C, chunk_size=0)
    with pytest.raises(ValueError, match="batch dimension must be 1"):
        ssd_scan_ref(x, dt, A, B, C, cu_seqlens=torch.tensor([0, 8], dtype=torch.int32))
    one = {k: v[:1] if v.dim() > 1 else v for k, v in args.items()}
    with pytest.raises(TypeError, match="cu_seqlens must have dtype"):
        ssd_recurrence_ref(**one, cu_seqlens=torch.tensor([0.0, 8.0]))
    with pytest.raises(ValueError, match="cu_seqlens must be non-decreasing"):
        ssd_recurrence_ref(**one, cu_seqlens=torch.tensor([0, 5, 3, 8]))
    with pytest.raises(ValueError, match=r"cu_seqlens\[-1\] \(7\) must equal the packed length 8"):
        ssd_scan_ref(**one, cu_seqlens=torch.tensor([0, 7]))


def test_chunked_gradients_match_recurrence():
    """Backward kernels are checked against autograd through the reference, so its gradients must be right."""
    args, extras = make_inputs(31, 1, 21, 2, nstates=2)
    leaves = {k: v.clone().requires_grad_() for k, v in {**args, **extras}.items()}
    leaves["initial_states"] = leaves["initial_states"].detach().requires_grad_()
    cu = torch.tensor([0, 9, 21], dtype=torch.int32)
    g = torch.Generator().manual_seed(32)
    y_grad = torch.randn(1, 21, H, P, generator=g, dtype=F64)
    f_grad = torch.randn(2, H, P, N, generator=g, dtype=F64)
    grads = []
    for fn, kw in ((ssd_scan_ref, dict(chunk_size=4)), (ssd_recurrence_ref, {})):
        y, final = fn(**leaves, dt_softplus=True, cu_seqlens=cu, return_final_states=True, **kw)
        grads.append(torch.autograd.grad((y * y_grad).sum() + (final * f_grad).sum(), list(leaves.values())))
    for name, g_chunked, g_rec in zip(leaves, *grads):
        assert torch.isfinite(g_chunked).all(), name
        assert_rel_close(g_chunked, g_rec, 1e-10)
