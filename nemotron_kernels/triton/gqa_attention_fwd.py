"""GQA flash-attention forward (Triton): causal (bottom-right aligned) or full, packed varlen, returns lse.

One program owns one tile of BLOCK_M rows = (BLOCK_M // PACK positions) x (PACK query heads of one kv head) and
streams the kv head's K/V tiles once for all packed heads. Online softmax in the exp2 domain (the scale is
prescaled by log2 e). Causal tiles are split into an unmasked run of K tiles every row sees in full and a short
masked run across the diagonal; tiles past the diagonal are never visited. Programs are launched heaviest
(last positions) first.

Shapes: q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D] (last dim contiguous, other strides free), o like q,
lse [B, Hq, Sq] float32 (natural log). Varlen: B = 1, cu_seqlens [S+1] shared by q and k.
FP8 (e4m3 q/k/v, bf16 o): the launcher copies V to v^T [B, Hkv, D, Sk'] so both products are e4m3 wgmmas with
K-major operands (H200, B4 S8K: 8.67 -> 3.58 ms with the copy; bench/NOTES.md, session 10).
"""
import torch
import triton
import triton.language as tl

from .._tensor_cache import derived
from .common import cdiv, gluon_platform
from .gqa_attention_common import LOG2E, aot_compile, descale_arg, dot_precision, interpreting, pack_heads

INTERPRETED = interpreting()   # the mode these kernels were defined in (see gqa_attention_common.kernel_module)


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, k_desc, v_desc, desc_row0, desc_col,
                    vt_row, vt_col0, n_lo, n_hi, seqlen_k, kmax0, qk_scale,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PACK: tl.constexpr, MASKED: tl.constexpr,
                    CAUSAL: tl.constexpr, USE_TMA: tl.constexpr, IS_FP8: tl.constexpr, P_SCALE: tl.constexpr,
                    INPUT_PRECISION: tl.constexpr):
    """Online-softmax update of (acc [BM, D], l_i [BM], m_i [BM]) over key tiles [n_lo, n_hi) (relative to the
    sequence start). K/V tiles come from k_ptrs/v_ptrs [BN, D] (pointing at key tile 0), or with USE_TMA from the
    2-D descriptors at rows desc_row0 + key, column desc_col. IS_FP8: V comes transposed, v_ptrs [D, BN], or the
    descriptor's [D, BN] box at row vt_row, column vt_col0 + key (an e4m3 wgmma takes its B operand K-major only:
    V as [keys, D] made Triton transpose every tile through registers). MASKED: apply the key bound and the causal
    mask (row m sees keys <= kmax0 + m // PACK); the short masked run is not software-pipelined (fewer
    registers)."""
    offs_n = tl.arange(0, BLOCK_N)
    k_ptrs += n_lo * stride_kn
    v_ptrs += n_lo * stride_vn
    for n0 in tl.range(n_lo, n_hi, BLOCK_N, num_stages=1 if MASKED else None):
        if MASKED:
            key = n0 + offs_n                                                      # [BN]
            key_ok = key < seqlen_k
        if USE_TMA:
            k = k_desc.load([desc_row0 + n0, desc_col])                            # [BN, D]
            if IS_FP8:
                v = v_desc.load([vt_row, vt_col0 + n0])                            # [D, BN]
                if MASKED:  # keys past the sequence belong to the next one (or are padding)
                    v = tl.where(key_ok[None, :], v, 0.0)
            else:
                v = v_desc.load([desc_row0 + n0, desc_col])
                if MASKED:  # rows past the sequence belong to the next one (or are zero past the tensor)
                    v = tl.where(key_ok[:, None], v, 0.0)
        elif MASKED:
            k = tl.load(k_ptrs, mask=key_ok[:, None], other=0.0)                   # [BN, D]
            v = tl.load(v_ptrs, mask=key_ok[None, :] if IS_FP8 else key_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)                # [BM, BN]
        if MASKED:
            visible = key_ok[None, :]
            if CAUSAL:
                kmax = kmax0 + tl.arange(0, BLOCK_M) // PACK                       # [BM]
                visible = visible & (key[None, :] <= kmax[:, None])
            s = tl.where(visible, s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)                   # rows that see no key yet
            p = tl.math.exp2(s - m_use[:, None])
            alpha = tl.math.exp2(m_i - m_use)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            p = tl.math.exp2(s * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if IS_FP8:          # P in e4m3, scaled by P_SCALE so small probabilities stay normal numbers
            acc = tl.dot((p * P_SCALE).to(v.dtype), tl.trans(v), acc)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
        m_i = m_new
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.jit
def _gqa_attn_fwd_kernel(
    Q, K, V, O, LSE, CU_SEQLENS, K_DESC, V_DESC, Q_DESCALE, K_DESCALE, V_DESCALE,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh,
    stride_dqb, stride_dqh, stride_dkb, stride_dkh, stride_dvb, stride_dvh,
    seqlen_q, seqlen_k, num_kv_heads, num_head_chunks, qk_scale, out_scale,
    GROUP: tl.constexpr, PACK: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, VARLEN: tl.constexpr, USE_TMA: tl.constexpr, IS_FP8: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """K_DESC, V_DESC (USE_TMA): 2-D TMA descriptors over k, v viewed as [B*Sk, Hkv*D] with [BLOCK_N, D] boxes.
    IS_FP8: V is v^T [B, Hkv, D, Sk'] (stride_vs = 1, stride_vd its row stride; V_DESC over [B*Hkv*D, Sk'] with
    [D, BLOCK_N] boxes).
    Q/K/V_DESCALE (FP8; None when absent): fp32 [rows, Hkv] (row b of batch / sequence b, stride 0 to broadcast);
    the scores are scaled by q_descale * k_descale and the output by v_descale (times out_scale)."""
    POS_PER_TILE: tl.constexpr = BLOCK_M // PACK
    P_SCALE: tl.constexpr = 256.0
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)          # heaviest causal tiles first
    pid_bh = tl.program_id(1)
    chunk = pid_bh % num_head_chunks
    hkv = (pid_bh // num_head_chunks) % num_kv_heads
    b = pid_bh // (num_head_chunks * num_kv_heads)

    if VARLEN:                                  # B = 1: sequence b is rows cu[b] .. cu[b+1] of the packed batch
        start = tl.load(CU_SEQLENS + b).to(tl.int64)
        seqlen_q = (tl.load(CU_SEQLENS + b + 1) - start).to(tl.int32)
        seqlen_k = seqlen_q
        desc_row0 = start.to(tl.int32)
        vt_col0 = ((start + 15) // 16 * 16 + 16 * b).to(tl.int32)    # FP8 v^T: the sequence's first column
        q_base = Q + start * stride_qs
        k_base = K + start * stride_ks
        v_base = V + (vt_col0 if IS_FP8 else start) * stride_vs
        o_base = O + start * stride_os
        lse_base = LSE + start
    else:
        q_base = Q + b.to(tl.int64) * stride_qb
        k_base = K + b.to(tl.int64) * stride_kb
        v_base = V + b.to(tl.int64) * stride_vb
        o_base = O + b.to(tl.int64) * stride_ob
        lse_base = LSE + b.to(tl.int64) * stride_lb
        desc_row0 = b * seqlen_k
    if Q_DESCALE is not None:
        qk_scale = qk_scale * tl.load(Q_DESCALE + b * stride_dqb + hkv * stride_dqh)
    if K_DESCALE is not None:
        qk_scale = qk_scale * tl.load(K_DESCALE + b * stride_dkb + hkv * stride_dkh)
    if V_DESCALE is not None:
        out_scale = out_scale * tl.load(V_DESCALE + b * stride_dvb + hkv * stride_dvh)
    if IS_FP8:
        out_scale = out_scale / P_SCALE
    p0 = pid_m * POS_PER_TILE
    if p0 < seqlen_q:
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        offs_n = tl.arange(0, BLOCK_N)
        pos = p0 + offs_m // PACK                                                  # [BM] query position
        head = chunk * PACK + offs_m % PACK                                        # [BM] head within the group
        row_ok = (pos < seqlen_q) & (head < GROUP) & (offs_m < POS_PER_TILE * PACK)
        hq = hkv * GROUP + head                                                    # [BM] query head

        q_rows = pos.to(tl.int64) * stride_qs + hq * stride_qh
        q = tl.load(q_base + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)   # [BM, D]
        k_ptrs = k_base + hkv * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :]        # [BN, D]
        if IS_FP8:
            v_ptrs = v_base + hkv * stride_vh + offs_d[:, None] * stride_vd + offs_n[None, :] * stride_vs  # [D, BN]
        else:
            v_ptrs = v_base + hkv * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :]

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

        shift = seqlen_k - seqlen_q                  # bottom-right alignment: row at pos sees keys <= pos + shift
        if CAUSAL:
            last_pos = tl.minimum(p0 + POS_PER_TILE, seqlen_q) - 1
            full_end = tl.minimum(tl.maximum(p0 + shift + 1, 0), seqlen_k)      # keys every row of the tile sees
            hi = tl.minimum(tl.maximum(last_pos + shift + 1, 0), seqlen_k)
        else:
            full_end = seqlen_k
            hi = seqlen_k
        full_hi = (full_end // BLOCK_N) * BLOCK_N
        desc_col = hkv * HEAD_DIM
        if VARLEN:                                   # v^T rows (batch, kv head, d), columns keys (FP8 only)
            vt_row = hkv * HEAD_DIM
        else:
            vt_row = (b * num_kv_heads + hkv) * HEAD_DIM
            vt_col0 = 0
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_ks, stride_vs, K_DESC, V_DESC,
                                        desc_row0, desc_col, vt_row, vt_col0, 0, full_hi, seqlen_k, p0 + shift,
                                        qk_scale,
                                        BLOCK_M, BLOCK_N, PACK, False, CAUSAL, USE_TMA, IS_FP8, P_SCALE,
                                        INPUT_PRECISION)
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_ks, stride_vs, K_DESC, V_DESC,
                                        desc_row0, desc_col, vt_row, vt_col0, full_hi, hi, seqlen_k, p0 + shift,
                                        qk_scale,
                                        BLOCK_M, BLOCK_N, PACK, True, CAUSAL, USE_TMA, IS_FP8, P_SCALE,
                                        INPUT_PRECISION)

        seen = l_i > 0.0                                                           # rows with no visible key: o = 0
        l_div = tl.where(seen, l_i, 1.0)
        out = acc * (out_scale / l_div)[:, None]
        lse = tl.where(seen, (m_i + tl.math.log2(l_div)) * 0.6931471805599453, float("-inf"))
        pos = p0 + offs_m // PACK
        head = chunk * PACK + offs_m % PACK
        row_ok = (pos < seqlen_q) & (head < GROUP) & (offs_m < POS_PER_TILE * PACK)
        hq = hkv * GROUP + head
        o_rows = pos.to(tl.int64) * stride_os + hq * stride_oh
        tl.store(o_base + o_rows[:, None] + offs_d[None, :], out.to(O.dtype.element_ty), mask=row_ok[:, None])
        tl.store(lse_base + hq.to(tl.int64) * stride_lh + pos, lse, mask=row_ok)


# Hopper configs (BLOCK_M, BLOCK_N, num_warps, num_stages, K/V through TMA); tiny on purpose: each compiles on a
# fresh machine. (128, 64, 4 warps) spills ~1.3 KB per thread (ptxas) and is left out. The last, a third TMA stage
# at 128 x 128 (224 KB of shared memory), was the fastest forward tile in session 14's sweep (1.08x the autotuned
# pick at B4 S8K, 1.13x at B1 S32K); tests index the first four.
FWD_CONFIGS = [(128, 128, 8, 2, True), (128, 64, 8, 3, True), (128, 128, 8, 2, False), (128, 64, 8, 3, False),
               (128, 128, 8, 3, True)]
# FP8 with v^T needs half the shared memory per stage (81 KB at 128x128 s2): deeper TMA pipelines fit (sm_90a
# AOT: 115 / 147 KB, 240 registers, no spills). Candidates only: the autotuner times them against FWD_CONFIGS.
FP8_EXTRA_CONFIGS = [(128, 128, 8, 4, True)]
INTERPRET_CONFIG = (32, 16, 4, 1, False)    # small tiles so short test sequences cross several tiles
assert len({c[0] for c in FWD_CONFIGS}) == 1, "autotuned configs must share BLOCK_M (it fixes the head packing)"


def _set_desc_blocks(nargs):
    """Autotune pre-hook: the TMA boxes follow the config's BLOCK_N (V's box is [D, BLOCK_N] for FP8: v^T)."""
    if nargs["K_DESC"] is not None:
        bn, d = nargs["BLOCK_N"], nargs["HEAD_DIM"]
        nargs["K_DESC"].block_shape = [bn, d]
        nargs["V_DESC"].block_shape = [d, bn] if nargs["IS_FP8"] else [bn, d]


def _tuned(configs):
    return triton.autotune(
        configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "USE_TMA": tma}, num_warps=w, num_stages=s,
                               pre_hook=_set_desc_blocks) for bm, bn, w, s, tma in configs],
        key=["GROUP", "PACK", "HEAD_DIM", "CAUSAL", "VARLEN"],
    )(_gqa_attn_fwd_kernel)


_fwd_tuned_any = _tuned(FWD_CONFIGS)                              # TMA-eligible inputs: TMA and pointer configs
_fwd_tuned_ptr = _tuned([c for c in FWD_CONFIGS if not c[4]])     # others: pointer configs only
_fwd_tuned_fp8 = _tuned(FWD_CONFIGS + FP8_EXTRA_CONFIGS)          # TMA-eligible FP8


def tma_eligible(k, v) -> bool:
    """k, v [B, Sk, Hkv, D] can be read as 2-D [B*Sk, Hkv*D] row-major views with 16-byte aligned rows."""
    bsz, sk, hkv, d = k.shape
    for t in (k, v):
        if t.stride(2) != d or (bsz > 1 and t.stride(0) != sk * t.stride(1)):
            return False
        if (t.stride(1) * t.element_size()) % 16 or t.data_ptr() % 16:
            return False
    return True


def _descriptors(k, v, block_n: int, v_transposed: bool):
    """TMA descriptors: k (and 16-bit v) as [B*Sk, Hkv*D]; v_transposed (FP8: IS_FP8) v^T [B, Hkv, D, Sk'] as
    [B*Hkv*D, Sk']."""
    from triton.tools.tensor_descriptor import TensorDescriptor
    bsz, sk, hkv, d = k.shape
    k_desc = TensorDescriptor(k, [bsz * sk, hkv * d], [k.stride(1), 1], [block_n, d])
    if v_transposed:
        rows = v.shape[0] * v.shape[1] * v.shape[2]
        return k_desc, TensorDescriptor(v, [rows, v.shape[3]], [v.stride(2), 1], [d, block_n])
    return k_desc, TensorDescriptor(v, [bsz * sk, hkv * d], [v.stride(1), 1], [block_n, d])


def transpose_v_fp8(v: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """v [B, Sk, Hkv, D] e4m3 -> v^T [B, Hkv, D, Sk'] with Sk' = Sk rounded up to 16 (16-byte TMA rows); the
    padding is never used unmasked. One copy of V (B4 S8K: 8 MB) buys an FP8 PV product without a per-tile
    transpose.
    Varlen (B = 1, cu_seqlens [S+1]): sequence b's keys start at column 16 * ceil(cu[b] / 16) + 16 * b (the
    kernel's vt_col0) and Sk' = Sk rounded up to 16, plus 16 * S: every TMA box then starts on a 16-byte column.
    A box at an unaligned column (keys from cu[b]) faulted on the H200 (illegal instruction, bench/NOTES.md)."""
    bsz, sk, hkv, d = v.shape
    if cu_seqlens is None:
        vt = torch.empty(bsz, hkv, d, -(-sk // 16) * 16, dtype=v.dtype, device=v.device)
        vt[..., :sk].copy_(v.permute(0, 2, 3, 1))
        return vt
    # the column map depends on cu_seqlens only: kept on it for the step's other attention layers (~8 small kernels)
    col = derived(cu_seqlens, "vt_columns", (sk, v.device), lambda: _vt_columns(cu_seqlens, sk, v.device))
    vt = torch.empty(bsz, hkv, d, -(-sk // 16) * 16 + 16 * (cu_seqlens.numel() - 1), dtype=v.dtype, device=v.device)
    vt.view(torch.uint8).index_copy_(3, col, v.view(torch.uint8).permute(0, 2, 3, 1))   # (no fp8 index_copy)
    return vt


def _vt_columns(cu_seqlens: torch.Tensor, sk: int, device: torch.device) -> torch.Tensor:
    """[Sk] int64: the column of v^T each packed key goes to (transpose_v_fp8's layout)."""
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    tok = torch.arange(sk, device=device)                                        # [Sk]
    seq = torch.searchsorted(cu[1:], tok, right=True)                            # [Sk] sequence of each key
    start = cu[seq]
    return tok + (start + 15) // 16 * 16 - start + 16 * seq


FP8 = torch.float8_e4m3fn


def check_qkv(q, k, v, cu_seqlens, max_seqlen):
    """Launcher contract (AssertionError naming the argument): 4-D q/k/v on one device, one dtype (fp16, bf16, fp8
    e4m3; fp32 in the interpreter), last dim contiguous, D in (16, 32, 64, 128), Hq % Hkv == 0; varlen: B = 1,
    Sq == Sk, max_seqlen given."""
    assert q.dim() == 4 and k.dim() == 4 and v.dim() == 4, "q, k, v must be 4-D [B, S, H, D]"
    bsz, sq, hq, d = q.shape
    assert k.shape[0] == bsz and k.shape[3] == d, f"k must be [B={bsz}, Sk, Hkv, D={d}], got {tuple(k.shape)}"
    assert v.shape == k.shape, f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}"
    assert hq % k.shape[2] == 0, f"Hq ({hq}) must be a multiple of Hkv ({k.shape[2]})"
    assert q.dtype == k.dtype == v.dtype, f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    assert q.dtype in (torch.float16, torch.bfloat16, FP8) or (q.dtype == torch.float32 and INTERPRETED), \
        f"q dtype {q.dtype} not supported by the kernel (fp16/bf16/fp8 e4m3; fp32 in the interpreter only)"
    assert d in (16, 32, 64, 128), f"head dim D={d} must be 16, 32, 64 or 128"
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert t.stride(3) == 1, f"{name} must have a contiguous last dim, got strides {t.stride()}"
        assert t.device == q.device, f"{name} is on {t.device}, q on {q.device}"
    if cu_seqlens is not None:
        assert bsz == 1, f"with cu_seqlens, B must be 1, got {bsz}"
        assert k.shape[1] == sq, f"with cu_seqlens, k must have Sq={sq} tokens, got {k.shape[1]}"
        assert cu_seqlens.dim() == 1 and cu_seqlens.dtype in (torch.int32, torch.int64), \
            f"cu_seqlens must be 1-D int32/int64, got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}"
        assert cu_seqlens.device == q.device, f"cu_seqlens is on {cu_seqlens.device}, q on {q.device}"
        assert max_seqlen is not None and max_seqlen >= 0, "with cu_seqlens, max_seqlen (an int) is required"


def gqa_attention_fwd(q, k, v, causal: bool, softmax_scale: float, cu_seqlens=None, max_seqlen=None, config=None,
                      q_descale=None, k_descale=None, v_descale=None, out_scale: float = 1.0):
    """Launch the forward kernel. q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D] -> (o like q (bf16 for fp8 q),
    lse [B, Hq, Sq] fp32). Descales (FP8): None or fp32 tensors of one element or [B (or S) or 1, Hkv]; the
    scores use q_descale * k_descale * softmax_scale, the output is scaled by v_descale * out_scale.
    config: optional (BLOCK_M, BLOCK_N, num_warps, num_stages, use_tma) to bypass autotuning (tests, benchmarks).
    Without config, inputs gqa_attention_fwd_gluon.gluon_eligible accepts run the Gluon FA3 kernel instead: sm_90,
    triton 3.6, D=128, Sq = Sk; fp16/bf16 (varlen too, no descales) or FP8 e4m3 (batched, S % 128 == 0, descales
    per tensor or per (batch, kv head), any out_scale)."""
    check_qkv(q, k, v, cu_seqlens, max_seqlen)
    bsz, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    is_fp8 = q.dtype == FP8
    o = torch.empty(q.shape, dtype=torch.bfloat16 if is_fp8 else q.dtype, device=q.device)
    lse = torch.empty((bsz, hq, sq), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    if config is None and gluon_platform(q.device)[0]:
        # the Gluon FA3 forward on sm_90 (imported here: Hopper with triton 3.6 only, never in the interpreter)
        from . import gqa_attention_fwd_gluon as gluon_fwd
        descales = (q_descale, k_descale, v_descale)
        if gluon_fwd.gluon_eligible(q, k, v, causal, cu_seqlens, descales, max_seqlen, out_scale):
            return gluon_fwd.gqa_attention_fwd_gluon(q, k, v, causal, softmax_scale, o, lse, cu_seqlens, max_seqlen,
                                                     descales, out_scale)
    varlen = cu_seqlens is not None
    if varlen:
        num_seqs = cu_seqlens.numel() - 1
        rows_q = max_seqlen
    else:
        num_seqs = bsz
        rows_q = sq
    if config is None and INTERPRETED:
        config = INTERPRET_CONFIG
    block_m = config[0] if config is not None else FWD_CONFIGS[0][0]
    pack, chunks = pack_heads(group, block_m)
    common = dict(GROUP=group, PACK=pack, HEAD_DIM=d, CAUSAL=bool(causal), VARLEN=varlen, IS_FP8=is_fp8,
                  INPUT_PRECISION=dot_precision(q.dtype))
    descales = [descale_arg(t, num_seqs, hkv, q.device) for t in (q_descale, k_descale, v_descale)]
    use_tma = tma_eligible(k, v) and (q.is_cuda if config is None else config[4])
    if is_fp8:
        v = transpose_v_fp8(v, cu_seqlens if varlen else None)                   # [B, Hkv, D, Sk']
        v_strides = (v.stride(0), v.stride(3), v.stride(1), v.stride(2))          # b, key, head, d
    else:
        v_strides = (v.stride(0), v.stride(1), v.stride(2), 1)
    block_n = config[1] if config else FWD_CONFIGS[0][1]
    k_desc, v_desc = _descriptors(k, v, block_n, v_transposed=is_fp8) if use_tma else (None, None)
    args = (q, k, v, o, lse, cu_seqlens if varlen else q, k_desc, v_desc, *(t for t, _, _ in descales),
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            *v_strides, o.stride(0), o.stride(1), o.stride(2),
            lse.stride(0), lse.stride(1), *(st for _, sb, sh in descales for st in (sb, sh)),
            sq, sk, hkv, chunks, float(softmax_scale) * LOG2E, float(out_scale))

    def grid(meta):
        return (cdiv(max(rows_q, 1), meta["BLOCK_M"] // pack), num_seqs * hkv * chunks)

    if config is not None:
        bm, bn, w, s, _ = config
        _gqa_attn_fwd_kernel[grid](*args, BLOCK_M=bm, BLOCK_N=bn, USE_TMA=use_tma, num_warps=w, num_stages=s,
                                   **common)
    else:
        tuned = (_fwd_tuned_fp8 if is_fp8 else _fwd_tuned_any) if use_tma else _fwd_tuned_ptr
        tuned[grid](*args, **common)
    return o, lse


def aot_compile_all():
    """Compile for sm_90a every autotune config at the Nemotron case (bf16, D=128, 16 heads per kv head, causal)
    and the other constexpr paths once (fp16, D=64, odd packing, full attention, varlen; FP8 with descales).
    Yields (name, CompiledKernel)."""
    sig = {n: "i32" for n in _gqa_attn_fwd_kernel.arg_names
           if n.startswith(("stride_", "seqlen_", "num_"))}
    sig.update(LSE="*fp32", CU_SEQLENS="*i32", qk_scale="fp32")
    cases = [("bf16", 128, 16, True, False, cfg) for cfg in FWD_CONFIGS]
    cases += [("fp16", 64, 3, False, True, FWD_CONFIGS[0]), ("fp8e4nv", 128, 16, True, False, FWD_CONFIGS[0]),
              ("fp8e4nv", 64, 2, False, True, FWD_CONFIGS[3])]
    cases += [("fp8e4nv", 128, 16, True, False, cfg) for cfg in (FWD_CONFIGS[4], *FP8_EXTRA_CONFIGS)]
    sig.update(out_scale="fp32")
    for dt, d, group, causal, varlen, (bm, bn, w, s, tma) in cases:
        pack, _ = pack_heads(group, bm)
        fp8 = dt == "fp8e4nv"
        sig.update(Q=f"*{dt}", K=f"*{dt}", V=f"*{dt}", O="*bf16" if fp8 else f"*{dt}")
        const = dict(GROUP=group, PACK=pack, HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, VARLEN=varlen,
                     USE_TMA=tma, IS_FP8=fp8, INPUT_PRECISION=None)
        if fp8:
            sig.update(Q_DESCALE="*fp32", K_DESCALE="*fp32", V_DESCALE="*fp32")
        else:
            const.update(Q_DESCALE=None, K_DESCALE=None, V_DESCALE=None)
        if tma:
            v_box = f"[{d}, {bn}]" if fp8 else f"[{bn}, {d}]"                     # FP8: v^T
            sig.update(K_DESC=f"tensordesc<{dt}[{bn}, {d}]>", V_DESC=f"tensordesc<{dt}{v_box}>")
        else:
            const.update(K_DESC=None, V_DESC=None)
        name = f"gqa_attn_fwd {dt} D{d} G{group} causal={causal} varlen={varlen} {bm}x{bn} w{w} s{s} tma={tma}"
        yield name, aot_compile(_gqa_attn_fwd_kernel, {k: t for k, t in sig.items() if k not in const}, const, w, s)
