"""gqa_attention_ref against an explicit softmax(QK^T)V with repeated kv heads, in float64."""
import math

import pytest
import torch

from nemotron_kernels.reference.gqa_attention import gqa_attention_ref

F64 = torch.float64
HEAD_DIM = 8


def randn(g, *shape, dtype=F64):
    return torch.randn(*shape, generator=g, dtype=F64).to(dtype)


def explicit(q, k, v, causal, scale=None):
    """Scores with kv repeated per query head, bottom-right causal mask, softmax. -> (o [B,Sq,Hq,D], lse [B,Hq,Sq])."""
    group = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    sq, sk = q.shape[1], k.shape[1]
    if causal:
        i = torch.arange(sq)[:, None]
        j = torch.arange(sk)[None, :]
        scores = scores.masked_fill(j > i + sk - sq, -math.inf)
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v), torch.logsumexp(scores, dim=-1)


@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 1), (6, 2)])
@pytest.mark.parametrize("sq,sk", [(7, 7), (3, 10), (1, 9), (5, 5)])
@pytest.mark.parametrize("causal", [True, False])
def test_matches_explicit(hq, hkv, sq, sk, causal):
    g = torch.Generator().manual_seed(hq * 100 + hkv * 10 + sq + sk)
    q, k, v = randn(g, 2, sq, hq, HEAD_DIM), randn(g, 2, sk, hkv, HEAD_DIM), randn(g, 2, sk, hkv, HEAD_DIM)
    o, lse = gqa_attention_ref(q, k, v, causal=causal, return_lse=True)
    o_exp, lse_exp = explicit(q, k, v, causal)
    torch.testing.assert_close(o, o_exp, rtol=1e-12, atol=1e-12)
    assert lse.dtype == torch.float32 and lse.shape == (2, hq, sq)
    torch.testing.assert_close(lse, lse_exp.float(), rtol=1e-6, atol=1e-6)


def test_causal_bottom_right_alignment():
    """With Sq < Sk, query i is plain (non-causal) attention over keys 0 .. i + Sk - Sq."""
    g = torch.Generator().manual_seed(1)
    sq, sk = 4, 11
    q, k, v = randn(g, 1, sq, 4, HEAD_DIM), randn(g, 1, sk, 2, HEAD_DIM), randn(g, 1, sk, 2, HEAD_DIM)
    o = gqa_attention_ref(q, k, v, causal=True, softmax_scale=0.3)
    for i in range(sq):
        keys = i + sk - sq + 1
        o_i = gqa_attention_ref(q[:, i:i + 1], k[:, :keys], v[:, :keys], causal=False, softmax_scale=0.3)
        torch.testing.assert_close(o[:, i:i + 1], o_i, rtol=1e-13, atol=1e-13)


def test_queries_without_keys_give_zero():
    g = torch.Generator().manual_seed(2)
    q, k, v = randn(g, 1, 5, 2, HEAD_DIM), randn(g, 1, 3, 2, HEAD_DIM), randn(g, 1, 3, 2, HEAD_DIM)
    o, lse = gqa_attention_ref(q, k, v, causal=True, return_lse=True)
    assert torch.equal(o[:, :2], torch.zeros_like(o[:, :2])) and torch.isneginf(lse[..., :2]).all()
    torch.testing.assert_close(o[:, 2:], explicit(q[:, 2:], k, v, True)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_varlen_equals_per_sequence(causal):
    lens = [5, 1, 9, 3]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    g = torch.Generator().manual_seed(3)
    total = sum(lens)
    q, k, v = randn(g, 1, total, 6, HEAD_DIM), randn(g, 1, total, 3, HEAD_DIM), randn(g, 1, total, 3, HEAD_DIM)
    o, lse = gqa_attention_ref(q, k, v, causal=causal, cu_seqlens=cu, max_seqlen=9, return_lse=True)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        o_s, lse_s = explicit(q[:, start:end], k[:, start:end], v[:, start:end], causal)
        torch.testing.assert_close(o[:, start:end], o_s, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lse[..., start:end], lse_s.float(), rtol=1e-6, atol=1e-6)


def test_descales_multiply_inputs():
    g = torch.Generator().manual_seed(4)
    q, k, v = randn(g, 2, 3, 4, HEAD_DIM), randn(g, 2, 6, 2, HEAD_DIM), randn(g, 2, 6, 2, HEAD_DIM)
    q_ds, k_ds = 0.5 + torch.rand(2, 2, generator=g, dtype=F64), 0.5 + torch.rand(2, 2, generator=g, dtype=F64)
    o = gqa_attention_ref(q, k, v, q_descale=q_ds, k_descale=k_ds, v_descale=1.5)
    expected = explicit(q * q_ds.repeat_interleave(2, dim=1)[:, None, :, None], k * k_ds[:, None, :, None],
                        v * 1.5, True)[0]
    torch.testing.assert_close(o, expected, rtol=1e-12, atol=1e-12)


def test_varlen_descale_per_sequence():
    lens = [4, 7, 2]
    cu = torch.tensor([0, 4, 11, 13], dtype=torch.int32)
    g = torch.Generator().manual_seed(8)
    q, k, v = randn(g, 1, 13, 4, HEAD_DIM), randn(g, 1, 13, 2, HEAD_DIM), randn(g, 1, 13, 2, HEAD_DIM)
    k_ds = 0.5 + torch.rand(len(lens), 2, generator=g, dtype=F64)   # one row per sequence
    v_ds = 0.5 + torch.rand(1, 2, generator=g, dtype=F64)           # one row for all
    o = gqa_attention_ref(q, k, v, cu_seqlens=cu, k_descale=k_ds, v_descale=v_ds)
    for s, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        expected = explicit(q[:, start:end], k[:, start:end] * k_ds[s, None, :, None],
                            v[:, start:end] * v_ds[0, None, :, None], True)[0]
        torch.testing.assert_close(o[:, start:end], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="torch has no float8_e4m3fn")
def test_fp8_inputs_give_bf16():
    g = torch.Generator().manual_seed(5)
    q, k, v = (randn(g, 1, 4, 2, HEAD_DIM).to(torch.float8_e4m3fn) for _ in range(3))
    o = gqa_attention_ref(q, k, v, k_descale=torch.tensor(0.5), v_descale=2.0)
    assert o.dtype == torch.bfloat16
    expected = explicit(q.to(F64), k.to(F64) * 0.5, v.to(F64) * 2.0, True)[0]
    torch.testing.assert_close(o.to(F64), expected, rtol=1e-2, atol=1e-2)


def test_bad_inputs():
    g = torch.Generator().manual_seed(6)
    q, k, v = randn(g, 1, 4, 6, HEAD_DIM), randn(g, 1, 4, 4, HEAD_DIM), randn(g, 1, 4, 4, HEAD_DIM)
    with pytest.raises(ValueError, match=r"Hq \(heads of q\) \(6\) must be a multiple of Hkv"):
        gqa_attention_ref(q, k, v)
    with pytest.raises(ValueError, match="q must be 4-D"):
        gqa_attention_ref(q[0], k, v)
    with pytest.raises(ValueError, match="v must have shape"):
        gqa_attention_ref(q[..., :4, :], k, v[:, :3])
    with pytest.raises(TypeError, match="k must have a floating-point dtype"):
        gqa_attention_ref(q, k.to(torch.int64), v)
    q4 = q[..., :4, :]
    with pytest.raises(ValueError, match="k_descale must be a scalar or have shape"):
        gqa_attention_ref(q4, k, v, k_descale=torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"cu_seqlens\[0\] must be 0"):
        gqa_attention_ref(q4, k, v, cu_seqlens=torch.tensor([1, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match="max_seqlen"):
        gqa_attention_ref(q4, k, v, cu_seqlens=torch.tensor([0, 3, 4], dtype=torch.int32), max_seqlen=2)
    with pytest.raises(ValueError, match="with cu_seqlens, q and k are packed alike"):
        gqa_attention_ref(q4, k[:, :3], v[:, :3], cu_seqlens=torch.tensor([0, 4], dtype=torch.int32))


def test_gradients_are_finite_without_visible_keys():
    g = torch.Generator().manual_seed(7)
    q, k, v = (randn(g, 1, n, 2, HEAD_DIM).requires_grad_() for n in (5, 3, 3))
    o = gqa_attention_ref(q, k, v, causal=True)
    dq, dk, dv = torch.autograd.grad(o.sum(), (q, k, v))
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()
    assert torch.equal(dq[:, :2], torch.zeros_like(dq[:, :2]))
