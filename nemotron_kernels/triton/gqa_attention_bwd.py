"""GQA flash-attention backward (Triton): dq, dk, dv with the reduction over the query heads of each kv head.

  1. preprocess: delta = rowsum(o * do) and lse2 = lse * log2(e) (+inf for rows that saw no key), [B, Hq, Sq];
  2. dk/dv: one program per (kv head, tile of BLOCK_N keys) holds K, V and the fp32 dk, dv accumulators and
     streams every packed (position x query head) tile that sees those keys: the GQA reduction happens in
     registers (4 matmuls per tile pair);
  3. dq: one program per packed query tile (as in the forward) streams the K/V tiles it sees (3 matmuls, 7 in
     all). No atomics anywhere: the backward is bitwise reproducible.
The separate dq pass is the only mode because it is faster: adding dq with fp32 atomics inside the dk/dv loop
(5 matmuls) measured 30.1 ms against 24.0 ms at B4 S8K and 96.6 against 81.6 ms at B1 S32K (H200, 32/2 heads,
D=128, causal, bf16; 2026-11-30, bench/NOTES.md).
The main kernels recompute P = exp2(scale*log2e * q.k - lse2) and split causal work into an unmasked run and a
short masked run across the diagonal.

Shapes: do, o, q [B, Sq, Hq, D]; k, v [B, Sk, Hkv, D]; lse [B, Hq, Sq] fp32; varlen: B = 1 and cu_seqlens [S+1].
"""
import torch
import triton
import triton.language as tl

from .common import cdiv, gluon_platform
from .gqa_attention_common import LOG2E, aot_compile, dot_precision, interpreting, pack_heads

INTERPRETED = interpreting()   # the mode these kernels were defined in (see gqa_attention_common.kernel_module)


@triton.jit
def _attn_bwd_preprocess_kernel(O, DO, LSE, DELTA, LSE2, num_rows, seqlen_q, num_heads,
                                HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """Rows r of the contiguous o/do [B*Sq*Hq, D] (r = (b*Sq + pos)*Hq + h) -> delta, lse2 at [b, h, pos]."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < num_rows
    offs_d = tl.arange(0, HEAD_DIM)
    ptrs = rows.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :]
    o = tl.load(O + ptrs, mask=ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=ok[:, None], other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    head = rows % num_heads
    pos = (rows // num_heads) % seqlen_q
    b = rows // (num_heads * seqlen_q)
    out = (b.to(tl.int64) * num_heads + head) * seqlen_q + pos
    lse = tl.load(LSE + out, mask=ok, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    tl.store(DELTA + out, delta, mask=ok)
    tl.store(LSE2 + out, lse2, mask=ok)


@triton.jit
def _seq_bases(b, CU_SEQLENS, seqlen_q, seqlen_k, stride_qb, stride_qs, stride_kb, stride_ks,
               stride_lb, VARLEN: tl.constexpr):
    """(q-side row offset, k-side row offset, lse-side offset, seqlen_q, seqlen_k) of batch/sequence b."""
    if VARLEN:
        start = tl.load(CU_SEQLENS + b).to(tl.int64)
        seqlen_q = (tl.load(CU_SEQLENS + b + 1) - start).to(tl.int32)
        return start * stride_qs, start * stride_ks, start, seqlen_q, seqlen_q
    else:
        bb = b.to(tl.int64)
        return bb * stride_qb, bb * stride_kb, bb * stride_lb, seqlen_q, seqlen_k


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, lse2_base, delta_base, stride_qs, stride_qh, stride_lh,
                hkv, chunk, p_lo, p_hi, seqlen_q, key0, shift, qk_scale,
                GROUP: tl.constexpr, PACK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, MASKED: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """Accumulate dk, dv [BN, D] of keys key0 .. key0+BN over packed query tiles at positions [p_lo, p_hi)."""
    POS_PER_TILE: tl.constexpr = BLOCK_M // PACK
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    head = chunk * PACK + offs_m % PACK
    head_ok = (head < GROUP) & (offs_m < POS_PER_TILE * PACK)
    hq = hkv * GROUP + head
    key = key0 + tl.arange(0, BLOCK_N)
    for p0 in tl.range(p_lo, p_hi, POS_PER_TILE):
        pos = p0 + offs_m // PACK                                                   # [BM]
        ok = head_ok & (pos < seqlen_q)
        rows = pos.to(tl.int64) * stride_qs + hq * stride_qh
        q = tl.load(q_base + rows[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0)     # [BM, D]
        do = tl.load(do_base + rows[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0)
        stat = hq.to(tl.int64) * stride_lh + pos
        lse2 = tl.load(lse2_base + stat, mask=ok, other=float("inf"))                # [BM]
        delta = tl.load(delta_base + stat, mask=ok, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION)               # [BN, BM]
        p_t = tl.math.exp2(s_t * qk_scale - lse2[None, :])
        if MASKED:
            p_t = tl.where(key[:, None] <= pos[None, :] + shift, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=INPUT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)             # [BN, BM]
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
        dk = tl.dot(ds_t, q, dk, input_precision=INPUT_PRECISION)
    return dk, dv


@triton.jit
def _gqa_attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE2, DELTA, DK, DV, CU_SEQLENS,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_lb, stride_lh,
    seqlen_q, seqlen_k, num_kv_heads, num_head_chunks, qk_scale, softmax_scale,
    GROUP: tl.constexpr, PACK: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, VARLEN: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """q, do share strides (stride_q*); k, v, dk, dv share strides (stride_k*); lse2, delta [B, Hq, Sq]."""
    POS_PER_TILE: tl.constexpr = BLOCK_M // PACK
    pid_n = tl.program_id(0)
    hkv = tl.program_id(1) % num_kv_heads
    b = tl.program_id(1) // num_kv_heads
    q_off, k_off, l_off, seqlen_q, seqlen_k = _seq_bases(b, CU_SEQLENS, seqlen_q, seqlen_k, stride_qb, stride_qs,
                                                         stride_kb, stride_ks, stride_lb, VARLEN)
    key0 = pid_n * BLOCK_N
    if key0 < seqlen_k:
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        key_ok = (key0 + offs_n) < seqlen_k
        kv_rows = k_off + hkv * stride_kh + (key0 + offs_n).to(tl.int64) * stride_ks              # [BN]
        k = tl.load(K + kv_rows[:, None] + offs_d[None, :], mask=key_ok[:, None], other=0.0)      # [BN, D]
        v = tl.load(V + kv_rows[:, None] + offs_d[None, :], mask=key_ok[:, None], other=0.0)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        shift = seqlen_k - seqlen_q            # query at pos sees keys <= pos + shift
        if CAUSAL:
            first = tl.maximum(key0 - shift, 0)                                     # first position that sees key0
            p_lo = (first // POS_PER_TILE) * POS_PER_TILE
            full = tl.minimum(tl.maximum(key0 + BLOCK_N - 1 - shift, 0), seqlen_q)  # sees the whole key tile
            p_mid = tl.minimum(tl.cdiv(full, POS_PER_TILE) * POS_PER_TILE, seqlen_q)
        else:
            p_lo = 0
            p_mid = 0
        for chunk in range(num_head_chunks):
            if CAUSAL:
                dk, dv = _dkdv_inner(dk, dv, k, v, Q + q_off, DO + q_off, LSE2 + l_off, DELTA + l_off,
                                     stride_qs, stride_qh, stride_lh, hkv, chunk, p_lo, p_mid, seqlen_q, key0,
                                     shift, qk_scale, GROUP, PACK, HEAD_DIM, BLOCK_M, BLOCK_N, True,
                                     INPUT_PRECISION)
            dk, dv = _dkdv_inner(dk, dv, k, v, Q + q_off, DO + q_off, LSE2 + l_off, DELTA + l_off,
                                 stride_qs, stride_qh, stride_lh, hkv, chunk, p_mid, seqlen_q, seqlen_q, key0,
                                 shift, qk_scale, GROUP, PACK, HEAD_DIM, BLOCK_M, BLOCK_N, False,
                                 INPUT_PRECISION)
        dk = dk * softmax_scale
        tl.store(DK + kv_rows[:, None] + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=key_ok[:, None])
        tl.store(DV + kv_rows[:, None] + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=key_ok[:, None])


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, stride_kn, n_lo, n_hi, seqlen_k, kmax0, qk_scale,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PACK: tl.constexpr, MASKED: tl.constexpr,
              CAUSAL: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """Accumulate dq [BM, D] over key tiles [n_lo, n_hi); row m sees keys <= kmax0 + m // PACK when CAUSAL."""
    offs_n = tl.arange(0, BLOCK_N)
    k_ptrs += n_lo * stride_kn
    v_ptrs += n_lo * stride_kn
    for n0 in tl.range(n_lo, n_hi, BLOCK_N, num_stages=1 if MASKED else None):
        if MASKED:
            key = n0 + offs_n
            key_ok = key < seqlen_k
            k = tl.load(k_ptrs, mask=key_ok[:, None], other=0.0)                    # [BN, D]
            v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)                 # [BM, BN]
        p = tl.math.exp2(s * qk_scale - lse2[:, None])
        if MASKED:
            visible = key_ok[None, :]
            if CAUSAL:
                kmax = kmax0 + tl.arange(0, BLOCK_M) // PACK
                visible = visible & (key[None, :] <= kmax[:, None])
            p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION)               # [BM, BN]
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=INPUT_PRECISION)
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_kn
    return dq


@triton.jit
def _gqa_attn_bwd_dq_kernel(
    Q, K, V, DO, LSE2, DELTA, DQ, CU_SEQLENS,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_lb, stride_lh,
    seqlen_q, seqlen_k, num_kv_heads, num_head_chunks, qk_scale, softmax_scale,
    GROUP: tl.constexpr, PACK: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, VARLEN: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """q, do, dq share strides (stride_q*); k, v share strides (stride_k*); lse2, delta [B, Hq, Sq]."""
    POS_PER_TILE: tl.constexpr = BLOCK_M // PACK
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)          # heaviest causal tiles first
    pid_bh = tl.program_id(1)
    chunk = pid_bh % num_head_chunks
    hkv = (pid_bh // num_head_chunks) % num_kv_heads
    b = pid_bh // (num_head_chunks * num_kv_heads)
    q_off, k_off, l_off, seqlen_q, seqlen_k = _seq_bases(b, CU_SEQLENS, seqlen_q, seqlen_k, stride_qb, stride_qs,
                                                         stride_kb, stride_ks, stride_lb, VARLEN)
    p0 = pid_m * POS_PER_TILE
    if p0 < seqlen_q:
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        offs_n = tl.arange(0, BLOCK_N)
        pos = p0 + offs_m // PACK
        head = chunk * PACK + offs_m % PACK
        ok = (pos < seqlen_q) & (head < GROUP) & (offs_m < POS_PER_TILE * PACK)
        hq = hkv * GROUP + head
        rows = q_off + pos.to(tl.int64) * stride_qs + hq * stride_qh
        q = tl.load(Q + rows[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0)           # [BM, D]
        do = tl.load(DO + rows[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0)
        stat = l_off + hq.to(tl.int64) * stride_lh + pos
        lse2 = tl.load(LSE2 + stat, mask=ok, other=float("inf"))
        delta = tl.load(DELTA + stat, mask=ok, other=0.0)
        kv_base = k_off + hkv * stride_kh
        k_ptrs = K + kv_base + offs_n[:, None] * stride_ks + offs_d[None, :]                   # [BN, D]
        v_ptrs = V + kv_base + offs_n[:, None] * stride_ks + offs_d[None, :]
        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        shift = seqlen_k - seqlen_q
        if CAUSAL:
            last_pos = tl.minimum(p0 + POS_PER_TILE, seqlen_q) - 1
            full_end = tl.minimum(tl.maximum(p0 + shift + 1, 0), seqlen_k)
            hi = tl.minimum(tl.maximum(last_pos + shift + 1, 0), seqlen_k)
        else:
            full_end = seqlen_k
            hi = seqlen_k
        full_hi = (full_end // BLOCK_N) * BLOCK_N
        dq = _dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, stride_ks, 0, full_hi, seqlen_k, p0 + shift,
                       qk_scale, BLOCK_M, BLOCK_N, PACK, False, CAUSAL, INPUT_PRECISION)
        dq = _dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, stride_ks, full_hi, hi, seqlen_k, p0 + shift,
                       qk_scale, BLOCK_M, BLOCK_N, PACK, True, CAUSAL, INPUT_PRECISION)
        dq = dq * softmax_scale
        tl.store(DQ + rows[:, None] + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=ok[:, None])


# (BLOCK_M, BLOCK_N, num_warps, num_stages), fixed per head dim (a fresh machine compiles three kernels, no
# autotuning). D=128 from scripts/sweep_gqa_attention.py on the H200 (bench/NOTES.md, session 13): the whole
# backward at B4 S8K 24.4 -> 19.4 ms, B1 S32K 82.5 -> 69.1 ms against dk/dv (32, 128, 8, 2), dq (128, 64, 8, 2).
# AOT (Triton 3.8): dk/dv 32x64 w4 255 registers + 64 B of stack (64x128 w8: 176 B), dq 214 registers, no stack.
# Interpreter: small tiles.
DKDV_CONFIGS = {128: (32, 64, 4, 3), 64: (64, 128, 8, 2)}
DQ_CONFIGS = {128: (128, 64, 8, 3), 64: (128, 64, 8, 2)}
INTERPRET_DKDV_CONFIG = (32, 16, 4, 1)
INTERPRET_DQ_CONFIG = (32, 16, 4, 1)
PREPROCESS_BLOCK = 64


def _configs(head_dim: int):
    if INTERPRETED:
        return INTERPRET_DKDV_CONFIG, INTERPRET_DQ_CONFIG
    d = 128 if head_dim > 64 else 64
    return DKDV_CONFIGS[d], DQ_CONFIGS[d]


def gqa_attention_bwd(do, q, k, v, o, lse, causal: bool, softmax_scale: float, cu_seqlens=None, max_seqlen=None,
                      dkdv_config=None, dq_config=None):
    """Launch the backward (preprocess, dk/dv, dq; bitwise reproducible). do, o [B, Sq, Hq, D] contiguous;
    q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D] with contiguous last dims; lse [B, Hq, Sq] fp32 from the forward ->
    (dq like q, dk like k, dv like v), all contiguous. Without configs, inputs gqa_attention_bwd_gluon accepts
    (sm_90, triton 3.6, fp16/bf16, D=128, Sq = Sk, varlen too) run its Gluon FA3 kernels."""
    bsz, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    assert do.shape == q.shape and o.shape == q.shape, f"do and o must have q's shape {tuple(q.shape)}"
    assert do.is_contiguous() and o.is_contiguous(), "do and o must be contiguous"
    assert k.shape == (bsz, sk, hkv, d) and v.shape == k.shape, f"k, v must be [B, Sk, Hkv, D={d}]"
    assert hq % hkv == 0, f"Hq ({hq}) must be a multiple of Hkv ({hkv})"
    assert q.dtype == k.dtype == v.dtype == do.dtype, "q, k, v, do must share a dtype"
    assert q.dtype in (torch.float16, torch.bfloat16) or (q.dtype == torch.float32 and INTERPRETED), \
        f"dtype {q.dtype} not supported by the kernel (fp16/bf16; fp32 in the interpreter only)"
    assert lse.shape == (bsz, hq, sq) and lse.dtype == torch.float32 and lse.is_contiguous(), \
        f"lse must be contiguous fp32 [B, Hq, Sq] = {(bsz, hq, sq)}, got {lse.dtype} {tuple(lse.shape)}"
    assert d in (16, 32, 64, 128), f"head dim D={d} must be 16, 32, 64 or 128"
    varlen = cu_seqlens is not None
    if varlen:
        assert bsz == 1 and sk == sq and max_seqlen is not None, "varlen: B = 1, Sk == Sq and max_seqlen required"
    if dkdv_config is None and dq_config is None and gluon_platform(q.device)[0]:
        # the Gluon FA3 backward on sm_90 (imported here: Hopper with triton 3.6 only, never in the interpreter)
        from . import gqa_attention_bwd_gluon as gluon_bwd
        if gluon_bwd.gluon_bwd_ineligible_reason(q, k, v, causal, cu_seqlens, max_seqlen) is None:
            return gluon_bwd.gqa_attention_bwd_gluon(do, q, k, v, o, lse, causal, softmax_scale, cu_seqlens,
                                                     max_seqlen)
    group = hq // hkv
    # q/do and k/v/dk/dv share strides inside the kernels: make them contiguous alike
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = torch.empty_like(lse)
    lse2 = torch.empty_like(lse)
    rows = bsz * sq * hq
    _attn_bwd_preprocess_kernel[(cdiv(rows, PREPROCESS_BLOCK),)](
        o, do, lse, delta, lse2, rows, sq, hq, HEAD_DIM=d, BLOCK=PREPROCESS_BLOCK)

    num_seqs = cu_seqlens.numel() - 1 if varlen else bsz
    rows_q, rows_k = (max_seqlen, max_seqlen) if varlen else (sq, sk)
    default_dkdv, default_dq = _configs(d)
    qk_scale = float(softmax_scale) * LOG2E
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               lse.stride(0), lse.stride(1))

    bm, bn, w, s = dkdv_config or default_dkdv
    pack, chunks = pack_heads(group, bm)
    _gqa_attn_bwd_dkdv_kernel[(cdiv(max(rows_k, 1), bn), num_seqs * hkv)](
        q, k, v, do, lse2, delta, dk, dv, cu_seqlens if varlen else q, *strides,
        sq, sk, hkv, chunks, qk_scale, float(softmax_scale),
        GROUP=group, PACK=pack, HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=bool(causal), VARLEN=varlen,
        INPUT_PRECISION=dot_precision(q.dtype), num_warps=w, num_stages=s)

    bm, bn, w, s = dq_config or default_dq
    pack, chunks = pack_heads(group, bm)
    _gqa_attn_bwd_dq_kernel[(cdiv(max(rows_q, 1), bm // pack), num_seqs * hkv * chunks)](
        q, k, v, do, lse2, delta, dq, cu_seqlens if varlen else q, *strides,
        sq, sk, hkv, chunks, qk_scale, float(softmax_scale),
        GROUP=group, PACK=pack, HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=bool(causal), VARLEN=varlen,
        INPUT_PRECISION=dot_precision(q.dtype), num_warps=w, num_stages=s)
    return dq, dk, dv


def aot_compile_all():
    """Compile the backward kernels for sm_90a at the configurations the launcher uses. Yields (name, kernel)."""
    ints = ("stride_", "seqlen_", "num_")
    for dt, d, group, causal, varlen in (("bf16", 128, 16, True, False), ("fp16", 64, 3, False, True)):
        kernels = ((_gqa_attn_bwd_dkdv_kernel, DKDV_CONFIGS[d], ("Q", "K", "V", "DO", "DK", "DV")),
                   (_gqa_attn_bwd_dq_kernel, DQ_CONFIGS[d], ("Q", "K", "V", "DO", "DQ")))
        for kernel, cfg, tensors in kernels:
            bm, bn, w, s = cfg
            pack, _ = pack_heads(group, bm)
            sig = {n: "i32" for n in kernel.arg_names if n.startswith(ints)}
            sig.update({t: f"*{dt}" for t in tensors})
            sig.update(LSE2="*fp32", DELTA="*fp32", CU_SEQLENS="*i32", qk_scale="fp32", softmax_scale="fp32")
            const = dict(GROUP=group, PACK=pack, HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, VARLEN=varlen,
                         INPUT_PRECISION=None)
            name = f"{kernel.__name__} {dt} D{d} G{group} causal={causal} varlen={varlen} {bm}x{bn} w{w} s{s}"
            yield name, aot_compile(kernel, sig, const, w, s)
    for dt, d in (("bf16", 128),):
        sig = dict(O=f"*{dt}", DO=f"*{dt}", LSE="*fp32", DELTA="*fp32", LSE2="*fp32", num_rows="i32",
                   seqlen_q="i32", num_heads="i32")
        yield f"preprocess {dt} D{d}", aot_compile(_attn_bwd_preprocess_kernel, sig,
                                                   dict(HEAD_DIM=d, BLOCK=PREPROCESS_BLOCK), 4, 1)
