"""Reference grouped-query attention (no positional encoding, as in NemotronH): explicit scores, mask, softmax.

Query head j reads kv head j // (Hq // Hkv). Causal masking is bottom-right aligned: with Sq queries and Sk keys,
query i sees keys 0 .. i + Sk - Sq (decode-style queries are the last Sq positions). A query that sees no key
(causal with Sq > Sk) gets a zero output and lse = -inf, as FlashAttention does.
"""
import math

import torch

from ._checks import (check_cu_seqlens, check_descale, check_divisible, check_float, check_positive_int,
                      check_same_device, check_shape, compute_dtype)
from .grouped_gemm import E4M3_MAX

FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
                   if hasattr(torch, n))


def output_dtype(q_dtype: torch.dtype) -> torch.dtype:
    """Attention output dtype: q's dtype, or bf16 when q is fp8."""
    return torch.bfloat16 if q_dtype in FP8_DTYPES else q_dtype


def _descale_factor(descale, group: int, offsets: list[int] | None, dtype: torch.dtype):
    """The multiplier for q, k or v [B, S, Hq, D] (kv heads already repeated): a scalar, or from a [B, Hkv]
    (with cu_seqlens also [num_seqs, Hkv]) tensor a [B, 1, Hq, 1] (or per token [1, S, Hq, 1]) tensor;
    head j uses descale column j // group."""
    if descale is None:
        return 1.0
    if not isinstance(descale, torch.Tensor):
        return float(descale)
    if descale.numel() == 1:
        return descale.reshape(()).to(dtype)
    per_head = descale.to(dtype).repeat_interleave(group, dim=1)             # [B or num_seqs, Hq]
    if offsets is not None and per_head.shape[0] == len(offsets) - 1:
        lengths = torch.tensor([b - a for a, b in zip(offsets[:-1], offsets[1:])], device=per_head.device)
        return per_head.repeat_interleave(lengths, dim=0)[None, :, :, None]  # [1, S, Hq, 1]: its sequence's row
    return per_head[:, None, :, None]                                        # [B, 1, Hq, 1]


def _attention(q, k, v, causal: bool, scale: float):
    """q [b, Sq, Hq, D], k/v [b, Sk, Hq, D] (kv already repeated per query head, compute dtype)
    -> (o [b, Sq, Hq, D], lse [b, Hq, Sq])."""
    sq, sk = q.shape[1], k.shape[1]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale                   # [b, Hq, Sq, Sk]
    if causal:
        # bottom-right: query i sees key j iff j <= i + Sk - Sq
        visible = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
        scores = scores.masked_fill(~visible, -math.inf)
    lse = torch.logsumexp(scores, dim=-1)                                    # [b, Hq, Sq]; -inf for rows with no key
    # rows with no visible key subtract 0 instead of -inf, so their probabilities are exp(-inf) = 0 (no NaN,
    # in the forward or the backward)
    probs = torch.exp(scores - torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)[..., None])
    o = torch.einsum("bhqk,bkhd->bqhd", probs, v)                            # [b, Sq, Hq, D]
    return o, lse


def gqa_attention_ref(q, k, v, causal: bool = True, softmax_scale=None, cu_seqlens=None, max_seqlen=None,
                      q_descale=None, k_descale=None, v_descale=None, return_lse: bool = False):
    """Grouped-query softmax attention (reference), in float32 (float64 for float64 q).

    Args:
        q [B, Sq, Hq, D], k [B, Sk, Hkv, D], v [B, Sk, Hkv, D]: any float dtype incl. fp8; Hq % Hkv == 0.
        causal: bottom-right aligned causal mask (query i sees keys <= i + Sk - Sq).
        softmax_scale: multiplies q.k; default D ** -0.5.
        cu_seqlens [S+1] int32/int64 | None: B = 1 and q, k, v packed with the same offsets (so Sq == Sk);
            each sequence attends only to itself.
        max_seqlen: optional hint for kernels; checked to be >= the longest sequence.
        q_descale, k_descale, v_descale: None, a scalar, or a float tensor [B, Hkv] (with cu_seqlens also
            [S, Hkv], one row per sequence); q, k, v are multiplied by them before use (FP8 path).
        return_lse: also return the natural-log sum of exp(scale * q.k) over the visible keys.
    Returns:
        o [B, Sq, Hq, D] in q's dtype (bf16 when q is fp8), or (o, lse [B, Hq, Sq] float32).
    """
    check_float("q", q, "[B, Sq, Hq, D]", 4)
    bsz, sq, hq, head_dim = q.shape
    check_float("k", k, "[B, Sk, Hkv, D]", 4)
    sk, hkv = k.shape[1], k.shape[2]
    check_shape("k", k, (bsz, sk, hkv, head_dim), "[B, Sk, Hkv, D]")
    check_float("v", v, "[B, Sk, Hkv, D]", 4)
    check_shape("v", v, (bsz, sk, hkv, head_dim), "[B, Sk, Hkv, D]")
    check_divisible("Hq (heads of q)", hq, "Hkv (heads of k)", hkv)
    offsets = None
    if cu_seqlens is not None:
        offsets = check_cu_seqlens(cu_seqlens, sq, bsz)
        if sk != sq:
            raise ValueError(f"with cu_seqlens, q and k are packed alike: k has {sk} tokens but q has {sq}")
    nseq = None if offsets is None else len(offsets) - 1
    for name, descale in (("q_descale", q_descale), ("k_descale", k_descale), ("v_descale", v_descale)):
        check_descale(name, descale, bsz, hkv, nseq)
    if max_seqlen is not None:
        check_positive_int("max_seqlen", max_seqlen, minimum=0)
        longest = max(sq, sk) if offsets is None else max(b - a for a, b in zip(offsets[:-1], offsets[1:]))
        if max_seqlen < longest:
            raise ValueError(f"max_seqlen ({max_seqlen}) is smaller than the longest sequence ({longest})")
    check_same_device(q=q, k=k, v=v, cu_seqlens=cu_seqlens, q_descale=q_descale, k_descale=k_descale,
                      v_descale=v_descale)

    cdtype = compute_dtype(q.dtype, k.dtype, v.dtype)
    group = hq // hkv
    scale = head_dim ** -0.5 if softmax_scale is None else float(softmax_scale)
    # kv head j // group serves query head j: repeat kv heads to line up with q's heads, then descale (FP8)
    q_c = q.to(cdtype) * _descale_factor(q_descale, group, offsets, cdtype)                   # [B, Sq, Hq, D]
    k_c = k.to(cdtype).repeat_interleave(group, dim=2)                                        # [B, Sk, Hq, D]
    k_c = k_c * _descale_factor(k_descale, group, offsets, cdtype)
    v_c = v.to(cdtype).repeat_interleave(group, dim=2)                                        # [B, Sk, Hq, D]
    v_c = v_c * _descale_factor(v_descale, group, offsets, cdtype)

    if offsets is None:
        o, lse = _attention(q_c, k_c, v_c, causal, scale)
    else:
        # each packed sequence attends only to itself
        parts = [_attention(q_c[:, start:end], k_c[:, start:end], v_c[:, start:end], causal, scale)
                 for start, end in zip(offsets[:-1], offsets[1:])]
        o = torch.cat([p[0] for p in parts], dim=1)                          # [1, Sq, Hq, D]
        lse = torch.cat([p[1] for p in parts], dim=2)                        # [1, Hq, Sq]
    o = o.to(output_dtype(q.dtype))
    return (o, lse.to(torch.float32)) if return_lse else o


def check_quantize_args(x, num_kv_heads: int, cu_seqlens, descale) -> None:
    """quantize_fp8's inputs: x [B, S, H, D] float, H a multiple of num_kv_heads, B = 1 when packed, descale None or
    [rows, Hkv] float (rows: B, or S sequences)."""
    check_float("x", x, "[B, S, H, D]", 4)
    check_divisible("H (heads of x)", x.shape[2], "num_kv_heads", num_kv_heads)
    if cu_seqlens is not None and x.shape[0] != 1:
        raise ValueError(f"with cu_seqlens, x must have B = 1, got shape {tuple(x.shape)}")
    if descale is not None:
        rows = x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
        check_float("descale", descale, "[rows, Hkv]", 2)
        check_shape("descale", descale, (rows, num_kv_heads), "[rows, Hkv]")


def quantize_fp8_ref(x, num_kv_heads: int, cu_seqlens=None, max_seqlen=None, descale=None):
    """FP8 e4m3 quantisation of attention inputs, one scale per (batch row or packed sequence, kv head):
    x [B, S, H, D] -> (x8 float8_e4m3fn, descale [B or S, Hkv] fp32 = amax / 448, floored at 1e-12), x ~= x8 *
    descale; with `descale` given, quantise with it. The CPU path and the kernels' ground truth (ops.gqa_attention
    .quantize_fp8 documents the arguments; max_seqlen is not needed here)."""
    check_quantize_args(x, num_kv_heads, cu_seqlens, descale)
    bsz, seqlen, heads, d = x.shape
    group = heads // num_kv_heads
    offsets = [0, seqlen] if cu_seqlens is None else [int(o) for o in cu_seqlens.tolist()]
    xs = [x] if cu_seqlens is None else [x[:, a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    if descale is None:       # [rows, Hkv]: amax over positions, the group's heads and D
        amax = torch.stack([t.float().abs().view(t.shape[0], t.shape[1], num_kv_heads, group * d).amax(dim=(1, 3))
                            if t.shape[1] else torch.zeros(t.shape[0], num_kv_heads, device=x.device) for t in xs])
        descale = (amax.clamp_min(1e-12) / E4M3_MAX).reshape(-1, num_kv_heads)    # [B or S, Hkv]
    descale = descale.float()
    per_row = descale.repeat_interleave(group, dim=1)                              # [rows, H]
    if cu_seqlens is None:
        scaled = x.float() / per_row[:, None, :, None]
    else:
        lengths = torch.tensor([b - a for a, b in zip(offsets[:-1], offsets[1:])], device=x.device)
        scaled = x.float() / per_row.repeat_interleave(lengths, dim=0)[None, :, :, None]
    return scaled.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), descale
