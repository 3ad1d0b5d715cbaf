"""GQA decode attention over a paged KV cache (Triton), stage 1: split-K (flash-decoding) partial attention.

One program owns (kv head of one sequence, tile of packed query rows, split of the context): the Sq x (Hq//Hkv)
query rows that share the kv head are packed into the tile's rows (row m = position m // PACK, head m % PACK),
so each K/V page is read once per kv head. The context (the block table's capacity, known on the host without a
sync) is cut into `num_splits` splits of `split_len` tokens (a multiple of BLOCK_N); a program whose split lies
past its sequence's length returns at once (split 0 always runs: a sequence of length 0, e.g. a padded batch slot,
gets zeros). With one split the program writes the normalised output; otherwise
it writes o_part (normalised over its split) and lse_part (log2 domain), and gqa_decode_combine merges them.

Token t of sequence b lives in page block_table[b, t // PAGE_SIZE], row t % PAGE_SIZE. Query i of Sq (the last
Sq positions) sees tokens <= seq_len - Sq + i.

FP8 caches (e4m3) are widened in registers to q's dtype, or to fp16 (q too) when q is bf16; V is read as int16 pairs
and widened with one cvt per pair before its layout change (as bytes it cost a shared-memory load per element). The
descales scale the scores (k) and the output (v).

Transposed FP8 path (TRANSPOSED; FP8 caches with 16-row tiles, i.e. Sq * Hq/Hkv <= 16: plain decode; on by default,
TRANSPOSED_FP8). Why: with 16
query rows the QK^T dot is M = 16, which Triton runs as f16 mma.sync after widening every e4m3 K element; the FP8
loop was bound by its instructions and shared-memory traffic, not by HBM (2.5 TB/s of FP8 bytes against BF16's
4.4 TB/s: bench/NOTES.md), and padding q to 64 rows for an FP8 wgmma was slower (48 of 64 rows padding). So the
keys take the MMA's M side:
    S^T [BN, BM] = K [BN, D] (e4m3 as loaded: K-major) @ Q8^T [D, BM]      FP8 wgmma, M = BLOCK_N, K unwidened
    O^T [D, BM] += V^T [D, BN] (widened to fp16) @ P^T [BN, BM] (fp16)    f16 wgmma, M = D
FP8 wgmma needs both operands K-major, which V^T from a D-contiguous cache is not, so V is widened as above (the
f16 wgmma gets V^T through ldmatrix.trans). K goes from its cp.async buffer straight into the FP8 wgmma. The softmax
runs along the key axis (axis 0). sm_90a loop per 64 keys: 315 SASS instructions, 32 e4m3 -> f16 cvts (today's
path: 387 and 64).
The trade: q is rounded to e4m3 in the kernel, one fp32 scale per query row (scale = amax |q_row| / 448, so the
row's largest element is 448): 3 mantissa bits, a relative error of up to 2^-4 per element (amax-relative below
e4m3's normal range). Measured in float64 at NemotronH's shape (q ~ randn in bf16, 32/2 heads, D=128, 2K tokens of
e4m3 K/V): rounding q to e4m3 moves o by 2.6% of rms(o) (5.1% with 3x sharper logits), against 2.8% (6.4%) for
storing K in e4m3 at all; against the reference on the dequantised q8 * q_scale the kernel is at fp16 level (CPU
interpreter: 1.5e-4 at max |o| 0.34). tests/ops/test_gqa_decode.py holds it to both. The QK wgmma accumulates
K = D = 128 products in the FP8 MMA's own accumulator (Triton's sm_90 default, no fp32 promotion): promoting every
32 products (max_num_imprecise_acc=32) gave the same errors to 3 digits on the H200 and cost 5% (bench/NOTES.md).

Shapes: q [B, Sq, Hq, D]; k_cache, v_cache [num_blocks, PAGE_SIZE, Hkv, D] (q's dtype or fp8 e4m3); block_table [B, max_blocks] int32/64;
seq_lens [B] int32/64; o [B, Sq, Hq, D]; o_part [num_splits, B, Sq*Hq, D] fp32; lse_part [num_splits, B, Sq*Hq].
"""
import torch
import triton
import triton.language as tl

from .common import cdiv, next_power_of_2
from .gqa_attention_common import (LOG2E, aot_compile, descale_arg, dot_precision, interpreting, kernel_module,
                                   pack_heads, sm_count)

INTERPRETED = interpreting()   # the mode these kernels were defined in (see gqa_attention_common.kernel_module)
INTERPRET = tl.constexpr(INTERPRETED)


@triton.jit
def _e4m3_pairs_to_f16(w):
    """int16 [R, C] holding two e4m3 bytes each (low byte first) -> fp16 [R, 2C] in memory order: one
    cvt.rn.f16x2.e4m3x2 per pair on the GPU. The interpreter has no PTX: there e4m3's fields move into fp16's
    (sign; exponent and mantissa shifted by 7, which is the value / 2^8: biases 7 and 15); e4m3 NaN is not mapped."""
    if INTERPRET:
        w = w.to(tl.int32)
        lo, hi = w & 0xFF, (w >> 8) & 0xFF
        lo = (((lo & 0x80) << 8) | ((lo & 0x7F) << 7)).to(tl.int16).to(tl.float16, bitcast=True) * 256.0
        hi = (((hi & 0x80) << 8) | ((hi & 0x7F) << 7)).to(tl.int16).to(tl.float16, bitcast=True) * 256.0
    else:
        lo, hi = tl.inline_asm_elementwise(
            "{ .reg .b32 t; cvt.rn.f16x2.e4m3x2 t, $2; mov.b32 {$0, $1}, t; }", "=h,=h,h", [w],
            dtype=(tl.float16, tl.float16), is_pure=True, pack=1)
    v = tl.join(lo, hi)                                                             # [R, C, 2]
    return tl.reshape(v, (v.shape[0], v.shape[1] * 2))


@triton.jit
def _load_e4m3_as_f16(V, rows, row_ok, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr):
    """e4m3 V rows [BN, D] at element offsets rows [BN], read as int16 pairs and widened to fp16 in registers. Read
    as bytes, V (whose dot reduces over tokens, its strided dim) reached the MMA through one shared-memory load per
    byte; as fp16 it takes the transposing ldmatrix path."""
    offs_h = tl.arange(0, HEAD_DIM // 2)
    ptrs = V.to(tl.pointer_type(tl.int16), bitcast=True) + rows[:, None] // 2 + offs_h[None, :]
    if MASKED:
        pairs = tl.load(ptrs, mask=row_ok[:, None], other=0)
    else:
        pairs = tl.load(ptrs)
    return _e4m3_pairs_to_f16(pairs)


@triton.jit
def _decode_inner(acc, l_i, m_i, q, K, V, bt_row, kv_head_off, stride_kb, stride_ks, stride_vb, stride_vs,
                  n_lo, n_hi, kmax0, qk_scale,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PACK: tl.constexpr, PAGE_SIZE: tl.constexpr,
                  HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """Online softmax over tokens [n_lo, n_hi) gathered through the block table row `bt_row`. MASKED: causal
    (row m sees tokens <= kmax0 + m // PACK; this also bounds the sequence)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for n0 in tl.range(n_lo, n_hi, BLOCK_N):
        tok = n0 + offs_n                                                           # [BN]
        if PAGE_SIZE % BLOCK_N == 0:        # the tile lies inside one page
            page = tl.load(bt_row + n0 // PAGE_SIZE).to(tl.int64)
            in_page = n0 % PAGE_SIZE + offs_n
            k_rows = page * stride_kb + in_page * stride_ks
            v_rows = page * stride_vb + in_page * stride_vs
        else:                               # gather: one page id per token
            page = tl.load(bt_row + tok // PAGE_SIZE, mask=tok < n_hi, other=0).to(tl.int64)
            in_page = tok % PAGE_SIZE
            k_rows = page * stride_kb + in_page * stride_ks
            v_rows = page * stride_vb + in_page * stride_vs
        tok_ok = tok < n_hi
        if MASKED:
            k = tl.load(K + kv_head_off + k_rows[:, None] + offs_d[None, :], mask=tok_ok[:, None], other=0.0)
        else:
            k = tl.load(K + kv_head_off + k_rows[:, None] + offs_d[None, :])                # [BN, D]
        if V.dtype.element_ty == tl.float8e4nv:
            v = _load_e4m3_as_f16(V, kv_head_off + v_rows, tok_ok, HEAD_DIM, MASKED)       # [BN, D] fp16
        elif MASKED:
            v = tl.load(V + kv_head_off + v_rows[:, None] + offs_d[None, :], mask=tok_ok[:, None], other=0.0)
        else:
            v = tl.load(V + kv_head_off + v_rows[:, None] + offs_d[None, :])                # [BN, D]
        k = k.to(q.dtype)           # FP8 caches: widened in registers (a no-op for 16-bit caches)
        v = v.to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)                 # [BM, BN]
        if MASKED:
            kmax = kmax0 + tl.arange(0, BLOCK_M) // PACK
            s = tl.where((tok[None, :] <= kmax[:, None]) & tok_ok[None, :], s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_use[:, None])
            alpha = tl.math.exp2(m_i - m_use)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            p = tl.math.exp2(s * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _quantize_rows_e4m3(q):
    """q [BM, D] -> (q8 [BM, D] e4m3, q_scale [BM] fp32) with q ~= q8 * q_scale[:, None]: each row scaled so that its
    largest |element| becomes 448 (e4m3's largest), rounded to nearest even. Exact divisions (div_rn), so
    quantize_rows_e4m3 (torch) reproduces it bit for bit. The interpreter casts fp32 -> e4m3 by truncating the
    mantissa: there the values are first rounded onto e4m3's grid in fp32 (3 mantissa bits, or multiples of 2^-9
    below 2^-6), which the cast then keeps exactly."""
    qf = q.to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(qf), 1), 1e-30)                                 # [BM]; zero rows stay zero
    scaled = tl.clamp(qf * tl.math.div_rn(448.0, amax)[:, None], -448.0, 448.0)   # [BM, D]
    if INTERPRET:
        bits = scaled.to(tl.int32, bitcast=True)
        normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000).to(tl.float32, bitcast=True)
        subnormal = (scaled + 24576.0) - 24576.0       # 1.5 * 2^14: its fp32 ulp is e4m3's subnormal step 2^-9
        scaled = tl.where(tl.abs(scaled) < 0.015625, subnormal, normal)
    return scaled.to(tl.float8e4nv), tl.math.div_rn(amax, 448.0)


@triton.jit
def _decode_inner_transposed(acc_t, l_t, m_i, q8, K, V, bt_row, kv_head_off, stride_kb, stride_ks, stride_vb,
                             stride_vs, n_lo, n_hi, kmax0, col_scale,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PACK: tl.constexpr,
                             PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr):
    """_decode_inner with keys as the MMA rows (see the module docstring): acc_t O^T [D, BM], m_i [BM], q8 [BM, D]
    e4m3 over an e4m3 K / V; col_scale [BM] = q_scale * qk_scale turns S^T's columns into log2 logits. l_t [BN, BM]
    holds per-key partial sums of P^T, rescaled like acc_t and summed over keys once after the loop: a sum along
    the keys crosses the 4 warps (shared memory + a barrier), which the per-tile max alone still pays."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for n0 in tl.range(n_lo, n_hi, BLOCK_N):
        tok = n0 + offs_n                                                           # [BN]
        if PAGE_SIZE % BLOCK_N == 0:        # the tile lies inside one page
            page = tl.load(bt_row + n0 // PAGE_SIZE).to(tl.int64)
            in_page = n0 % PAGE_SIZE + offs_n
        else:                               # gather: one page id per token
            page = tl.load(bt_row + tok // PAGE_SIZE, mask=tok < n_hi, other=0).to(tl.int64)
            in_page = tok % PAGE_SIZE
        k_rows = page * stride_kb + in_page * stride_ks
        v_rows = page * stride_vb + in_page * stride_vs
        tok_ok = tok < n_hi
        if MASKED:
            k = tl.load(K + kv_head_off + k_rows[:, None] + offs_d[None, :], mask=tok_ok[:, None], other=0.0)
        else:
            k = tl.load(K + kv_head_off + k_rows[:, None] + offs_d[None, :])                # [BN, D] e4m3
        v = _load_e4m3_as_f16(V, kv_head_off + v_rows, tok_ok, HEAD_DIM, MASKED)           # [BN, D] fp16
        s_t = tl.dot(k, tl.trans(q8))                                               # [BN, BM] fp32
        if MASKED:
            kmax = kmax0 + tl.arange(0, BLOCK_M) // PACK
            s_t = tl.where((tok[:, None] <= kmax[None, :]) & tok_ok[:, None], s_t * col_scale[None, :],
                           float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s_t, 0))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p_t = tl.math.exp2(s_t - m_use[None, :])
            alpha = tl.math.exp2(m_i - m_use)
        else:               # col_scale > 0: the column max commutes with it
            m_new = tl.maximum(m_i, tl.max(s_t, 0) * col_scale)
            p_t = tl.math.exp2(s_t * col_scale[None, :] - m_new[None, :])
            alpha = tl.math.exp2(m_i - m_new)
        l_t = l_t * alpha[None, :] + p_t
        acc_t = acc_t * alpha[None, :]
        acc_t = tl.dot(tl.trans(v), p_t.to(tl.float16), acc_t)                    # [D, BM]
        m_i = m_new
    return acc_t, l_t, m_i


@triton.jit
def _gqa_decode_split_kernel(
    Q, K, V, BLOCK_TABLE, SEQ_LENS, O, O_PART, LSE_PART, K_DESCALE, V_DESCALE,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_btb,
    stride_ob, stride_os, stride_oh,
    stride_dkb, stride_dkh, stride_dvb, stride_dvh,
    seqlen_q, num_kv_heads, num_head_chunks, batch, split_len, qk_scale, out_scale,
    GROUP: tl.constexpr, PACK: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    TRANSPOSED: tl.constexpr,
):
    """K_DESCALE, V_DESCALE (FP8 caches; None when absent): fp32 [B or 1, Hkv] (stride 0 to broadcast); the
    scores are scaled by k_descale, the output by v_descale * out_scale. TRANSPOSED: the FP8 path with keys as the
    MMA rows (e4m3 caches only; see the module docstring)."""
    POS_PER_TILE: tl.constexpr = BLOCK_M // PACK
    split = tl.program_id(0)
    m_tile = tl.program_id(1) // num_head_chunks
    chunk = tl.program_id(1) % num_head_chunks
    hkv = tl.program_id(2) % num_kv_heads
    b = tl.program_id(2) // num_kv_heads
    seq_len = tl.load(SEQ_LENS + b).to(tl.int32)
    if K_DESCALE is not None:
        qk_scale = qk_scale * tl.load(K_DESCALE + b * stride_dkb + hkv * stride_dkh)
    if V_DESCALE is not None:
        out_scale = out_scale * tl.load(V_DESCALE + b * stride_dvb + hkv * stride_dvh)
    n_start = split * split_len
    p0 = m_tile * POS_PER_TILE
    if (n_start < seq_len) | (split == 0):      # split 0 always writes (zeros for an empty sequence)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        pos = p0 + offs_m // PACK
        head = chunk * PACK + offs_m % PACK
        row_ok = (pos < seqlen_q) & (head < GROUP) & (offs_m < POS_PER_TILE * PACK)
        hq = hkv * GROUP + head
        q_rows = b.to(tl.int64) * stride_qb + pos.to(tl.int64) * stride_qs + hq * stride_qh
        q = tl.load(Q + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)        # [BM, D]
        if (K.dtype.element_ty == tl.float8e4nv) & (Q.dtype.element_ty == tl.bfloat16) & (not TRANSPOSED):
            # FP8 caches with a bf16 q compute in fp16: e4m3 widens to fp16 in one cvt per pair of elements, and
            # to bf16 through one more cvt per element (20% of the loop's instructions in the sm_90a PTX; FP8 KV
            # decoded no faster than BF16 KV: bench/NOTES.md, session 4). fp16 holds every e4m3 value exactly and
            # has more mantissa than bf16; q is clamped into its range (queries are far below 65504).
            q = tl.clamp(q.to(tl.float32), -65504.0, 65504.0).to(tl.float16)

        shift = seq_len - seqlen_q                   # query at pos sees tokens <= pos + shift
        n_end = tl.minimum(n_start + split_len, seq_len)
        last_pos = tl.minimum(p0 + POS_PER_TILE, seqlen_q) - 1
        full_end = tl.minimum(p0 + shift + 1, n_end)                               # seen by every row
        full_hi = tl.maximum((full_end // BLOCK_N) * BLOCK_N, n_start)
        hi = tl.minimum(last_pos + shift + 1, n_end)
        bt_row = BLOCK_TABLE + b.to(tl.int64) * stride_btb

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        if TRANSPOSED:
            q8, q_scale = _quantize_rows_e4m3(q)                                    # [BM, D] e4m3, [BM]
            col_scale = q_scale * qk_scale
            acc_t = tl.zeros([HEAD_DIM, BLOCK_M], tl.float32)                       # O^T
            l_t = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
            acc_t, l_t, m_i = _decode_inner_transposed(
                acc_t, l_t, m_i, q8, K, V, bt_row, hkv * stride_kh, stride_kb, stride_ks, stride_vb, stride_vs,
                n_start, full_hi, p0 + shift, col_scale, BLOCK_M, BLOCK_N, PACK, PAGE_SIZE, HEAD_DIM, False)
            acc_t, l_t, m_i = _decode_inner_transposed(
                acc_t, l_t, m_i, q8, K, V, bt_row, hkv * stride_kh, stride_kb, stride_ks, stride_vb, stride_vs,
                full_hi, hi, p0 + shift, col_scale, BLOCK_M, BLOCK_N, PACK, PAGE_SIZE, HEAD_DIM, True)
            l_i = tl.sum(l_t, 0)
            acc = tl.trans(acc_t)                                                   # [BM, D]
        else:
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
            acc, l_i, m_i = _decode_inner(acc, l_i, m_i, q, K, V, bt_row, hkv * stride_kh, stride_kb, stride_ks,
                                          stride_vb, stride_vs, n_start, full_hi, p0 + shift, qk_scale,
                                          BLOCK_M, BLOCK_N, PACK, PAGE_SIZE, HEAD_DIM, False, INPUT_PRECISION)
            acc, l_i, m_i = _decode_inner(acc, l_i, m_i, q, K, V, bt_row, hkv * stride_kh, stride_kb, stride_ks,
                                          stride_vb, stride_vs, full_hi, hi, p0 + shift, qk_scale,
                                          BLOCK_M, BLOCK_N, PACK, PAGE_SIZE, HEAD_DIM, True, INPUT_PRECISION)
        seen = l_i > 0.0
        l_div = tl.where(seen, l_i, 1.0)
        out = acc * (out_scale / l_div)[:, None]
        if SPLIT:
            # partial results of this split: row r = pos * Hq + hq of sequence b
            part_row = ((split * batch + b).to(tl.int64) * seqlen_q + pos) * (num_kv_heads * GROUP) + hq
            tl.store(O_PART + part_row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=row_ok[:, None])
            tl.store(LSE_PART + part_row, tl.where(seen, m_i + tl.math.log2(l_div), float("-inf")), mask=row_ok)
        else:
            o_rows = b.to(tl.int64) * stride_ob + pos.to(tl.int64) * stride_os + hq * stride_oh
            tl.store(O + o_rows[:, None] + offs_d[None, :], out.to(O.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _widen_e4m3_kernel(src, dst, C: tl.constexpr):
    """One row of int16 e4m3 pairs [C] -> fp16 [2C] through _e4m3_pairs_to_f16 (tests: every byte pair)."""
    row = tl.program_id(0).to(tl.int64)
    w = tl.load(src + row * C + tl.arange(0, C)[None, :])                          # [1, C]
    tl.store(dst + row * 2 * C + tl.arange(0, 2 * C)[None, :], _e4m3_pairs_to_f16(w))


def widen_e4m3_pairs(pairs: torch.Tensor) -> torch.Tensor:
    """pairs [R, C] int16 (two e4m3 bytes each, low byte first; C a power of two) -> [R, 2C] fp16, as the decode
    kernel widens an FP8 V cache."""
    out = torch.empty(pairs.shape[0], 2 * pairs.shape[1], dtype=torch.float16, device=pairs.device)
    _widen_e4m3_kernel[(pairs.shape[0],)](pairs, out, C=pairs.shape[1])
    return out


# (BLOCK_N, num_warps, num_stages): memory-bound, so narrow tiles with deep pipelining; BLOCK_M from the rows.
DECODE_CONFIG = (64, 4, 3)
TRANSPOSED_CONFIG = (64, 4, 4)   # H200 sweep (bench/NOTES.md): 64-key tiles (128: 362 against 319 us at B64 ctx 32K)
INTERPRET_CONFIG = (16, 4, 1)
MIN_SPLIT_TOKENS = 256       # a split below this spends more on its partial output than on its tokens
MAX_SPLITS = 256
TRANSPOSED_FP8 = True        # eligible FP8 launches take the transposed path: 445 -> 319 us at B64 ctx 32K (#5)


def transposed_eligible(kv_dtype: torch.dtype, block_m: int, head_dim: int) -> bool:
    """Whether the transposed FP8 path can run: an e4m3 cache, 16-row tiles (Sq * Hq/Hkv <= 16, plain decode) and
    D >= 32 (an e4m3 wgmma reduces over at least 32: its K @ q8^T reduces over D)."""
    return kv_dtype == torch.float8_e4m3fn and block_m == 16 and head_dim >= 32


def quantize_rows_e4m3(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch twin of the kernel's q quantisation, bit for bit: q [..., D] -> (q8 [..., D] e4m3, q_scale [..., 1]
    fp32), q ~= q8 * q_scale (tests: the reference on the dequantised q isolates the rest of the kernel's error)."""
    qf = q.to(torch.float32)
    amax = qf.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    four48 = torch.full_like(amax, 448.0)
    q8 = (qf * (four48 / amax)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q8, amax / four48


def block_m_for(rows: int) -> int:
    """Rows of a tile: the packed query rows of one kv head, rounded up to a power of two in [16, 64]."""
    return max(16, min(64, next_power_of_2(max(rows, 1))))


def choose_splits(capacity: int, work_units: int, sms: int, block_n: int, transposed: bool = False) -> tuple[int, int]:
    """(num_splits, split_len) for a context capacity of `capacity` tokens and `work_units` (sequence, kv head,
    row tile) programs per split: enough splits to give every SM two programs, each split >= MIN_SPLIT_TOKENS.
    The transposed path (fewer registers) is fastest at four programs per SM in one wave (H200 sweep: 4 splits at
    B64 ctx 32K; at B1 ctx 128K 264 asked, 256 after rounding splits to whole key tiles)."""
    want = max(4 * sms // max(work_units, 1), 1) if transposed else cdiv(2 * sms, max(work_units, 1))
    splits = max(1, min(want, cdiv(capacity, MIN_SPLIT_TOKENS), MAX_SPLITS))
    split_len = cdiv(cdiv(capacity, splits), block_n) * block_n
    return cdiv(capacity, split_len), split_len


def check_decode_inputs(q, k_cache, v_cache, block_table, seq_lens):
    """Launcher contract (AssertionError naming the argument)."""
    assert q.dim() == 4, f"q must be [B, Sq, Hq, D], got {tuple(q.shape)}"
    bsz, sq, hq, d = q.shape
    assert k_cache.dim() == 4 and k_cache.shape[3] == d, f"k_cache must be [num_blocks, block_size, Hkv, D={d}]"
    assert v_cache.shape == k_cache.shape, f"v_cache must have k_cache's shape {tuple(k_cache.shape)}"
    assert hq % k_cache.shape[2] == 0, f"Hq ({hq}) must be a multiple of Hkv ({k_cache.shape[2]})"
    assert k_cache.dtype == v_cache.dtype and k_cache.dtype in (q.dtype, torch.float8_e4m3fn), \
        f"k_cache, v_cache must share q's dtype or be fp8 e4m3, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}"
    assert q.dtype in (torch.float16, torch.bfloat16) or (q.dtype == torch.float32 and INTERPRETED), \
        f"dtype {q.dtype} not supported by the kernel (fp16/bf16; fp32 in the interpreter only)"
    assert d in (16, 32, 64, 128), f"head dim D={d} must be 16, 32, 64 or 128"
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        assert t.stride(3) == 1, f"{name} must have a contiguous last dim, got strides {t.stride()}"
    if v_cache.dtype == torch.float8_e4m3fn:   # read as int16 pairs of elements
        assert all(st % 2 == 0 for st in v_cache.stride()[:3]) and v_cache.data_ptr() % 2 == 0, \
            f"an fp8 v_cache needs even strides and a 2-byte aligned start, got strides {v_cache.stride()}"
    assert block_table.dim() == 2 and block_table.shape[0] == bsz and block_table.stride(1) == 1, \
        f"block_table must be [B={bsz}, max_blocks] with contiguous rows, got {tuple(block_table.shape)}"
    assert block_table.dtype in (torch.int32, torch.int64), f"block_table must be int32/int64, got {block_table.dtype}"
    assert seq_lens.shape == (bsz,) and seq_lens.dtype in (torch.int32, torch.int64), \
        f"seq_lens must be int32/int64 [B={bsz}], got {seq_lens.dtype} {tuple(seq_lens.shape)}"
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("block_table", block_table), ("seq_lens", seq_lens)):
        assert t.device == q.device, f"{name} is on {t.device}, q on {q.device}"


def gqa_decode_fwd(q, k_cache, v_cache, block_table, seq_lens, softmax_scale: float, num_splits=None, config=None,
                   k_descale=None, v_descale=None, out_scale: float = 1.0, transposed=None):
    """Launch paged decode attention. q [B, Sq, Hq, D] -> o [B, Sq, Hq, D] in q's dtype. Caches in q's dtype or
    fp8 e4m3 with descales (None, numbers, or tensors of 1 or [B or 1, Hkv] elements; the output is also scaled
    by out_scale). num_splits: force the number of context splits (tests, benchmarks); config: (BLOCK_N, num_warps,
    num_stages); transposed: force the transposed FP8 path on or off (None: TRANSPOSED_FP8 where eligible)."""
    check_decode_inputs(q, k_cache, v_cache, block_table, seq_lens)
    bsz, sq, hq, d = q.shape
    page_size, hkv = k_cache.shape[1], k_cache.shape[2]
    group = hq // hkv
    o = torch.empty_like(q)
    if o.numel() == 0:
        return o
    block_m = block_m_for(sq * group)
    pack, chunks = pack_heads(group, block_m)
    m_tiles = cdiv(sq, block_m // pack)
    eligible = transposed_eligible(k_cache.dtype, block_m, q.shape[-1])
    assert not transposed or eligible, ("the transposed path needs an fp8 e4m3 cache, Sq * Hq/Hkv <= 16 and D >= 32 "
                                        f"(got {k_cache.dtype}, {sq * group} rows, D={q.shape[-1]})")
    transposed = eligible and (TRANSPOSED_FP8 if transposed is None else transposed)
    block_n, w, s = config or (INTERPRET_CONFIG if INTERPRETED else TRANSPOSED_CONFIG if transposed else DECODE_CONFIG)
    capacity = max(block_table.shape[1] * page_size, 1)
    if num_splits is None:
        num_splits, split_len = choose_splits(capacity, bsz * hkv * m_tiles * chunks, sm_count(q.device), block_n,
                                              transposed)
    else:
        split_len = cdiv(cdiv(capacity, num_splits), block_n) * block_n
        num_splits = cdiv(capacity, split_len)
    split = num_splits > 1
    if split:
        o_part = torch.empty((num_splits, bsz, sq * hq, d), dtype=torch.float32, device=q.device)
        lse_part = torch.empty((num_splits, bsz, sq * hq), dtype=torch.float32, device=q.device)
    else:
        o_part = lse_part = o          # unused
    if k_descale is not None and not isinstance(k_descale, torch.Tensor):       # numbers fold into the scales
        softmax_scale, k_descale = softmax_scale * float(k_descale), None
    if v_descale is not None and not isinstance(v_descale, torch.Tensor):
        out_scale, v_descale = out_scale * float(v_descale), None
    (kd, kd_b, kd_h), (vd, vd_b, vd_h) = (descale_arg(t, bsz, hkv, q.device) for t in (k_descale, v_descale))
    _gqa_decode_split_kernel[(num_splits, m_tiles * chunks, bsz * hkv)](
        q, k_cache, v_cache, block_table, seq_lens, o, o_part, lse_part, kd, vd,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_table.stride(0),
        o.stride(0), o.stride(1), o.stride(2), kd_b, kd_h, vd_b, vd_h,
        sq, hkv, chunks, bsz, split_len, float(softmax_scale) * LOG2E, float(out_scale),
        GROUP=group, PACK=pack, HEAD_DIM=d, PAGE_SIZE=page_size, BLOCK_M=block_m, BLOCK_N=block_n, SPLIT=split,
        INPUT_PRECISION=dot_precision(q.dtype), TRANSPOSED=transposed, num_warps=w, num_stages=s)
    if split:
        kernel_module("gqa_decode_combine").gqa_decode_combine(o_part, lse_part, seq_lens, split_len, o)
    return o


def aot_compile_all():
    """Compile the split kernel for sm_90a: the NemotronH decode case (bf16, D=128, 16 heads per kv head,
    one query token) with page size 16 (gather path, split) and an FP8 cache with page size 64 (one page per
    tile, unsplit), the transposed FP8 path (page 64 split, page 16 gather), an FP8 cache with D=16 (the tiny
    serving model: the launcher's rule keeps it off the transposed path), and a chunked-prefill case (Sq=8: 32-row
    tiles). Yields (name, CompiledKernel)."""
    ints = ("stride_", "seqlen_", "num_", "batch", "split_len")
    sig = {n: "i32" for n in _gqa_decode_split_kernel.arg_names if n.startswith(ints)}
    sig.update(BLOCK_TABLE="*i32", SEQ_LENS="*i32", O_PART="*fp32", LSE_PART="*fp32", qk_scale="fp32",
               out_scale="fp32")
    for dt, kv, d, group, sq, page, split, transposed in (("bf16", "bf16", 128, 16, 1, 16, True, False),
                                                          ("bf16", "fp8e4nv", 128, 16, 1, 64, False, False),
                                                          ("bf16", "fp8e4nv", 128, 16, 1, 64, True, True),
                                                          ("bf16", "fp8e4nv", 128, 16, 1, 16, True, True),
                                                          ("bf16", "fp8e4nv", 16, 2, 1, 16, True, None),
                                                          ("fp16", "fp16", 64, 4, 8, 32, True, False)):
        block_m = block_m_for(sq * group)
        if transposed is None:                                   # what gqa_decode_fwd picks by default
            transposed = TRANSPOSED_FP8 and transposed_eligible(torch.float8_e4m3fn, block_m, d)
        block_n, w, s = TRANSPOSED_CONFIG if transposed else DECODE_CONFIG
        pack, _ = pack_heads(group, block_m)
        sig.update(Q=f"*{dt}", K=f"*{kv}", V=f"*{kv}", O=f"*{dt}", K_DESCALE="*fp32", V_DESCALE="*fp32")
        const = dict(GROUP=group, PACK=pack, HEAD_DIM=d, PAGE_SIZE=page, BLOCK_M=block_m, BLOCK_N=block_n,
                     SPLIT=split, INPUT_PRECISION=None, TRANSPOSED=transposed)
        if kv != "fp8e4nv":
            const.update(K_DESCALE=None, V_DESCALE=None)
        name = (f"gqa_decode_split {dt} kv={kv} D{d} G{group} Sq{sq} page{page} split={split} "
                f"{'transposed ' if transposed else ''}{block_m}x{block_n} w{w} s{s}")
        yield name, aot_compile(_gqa_decode_split_kernel, {k: t for k, t in sig.items() if k not in const}, const,
                                w, s)
    yield from kernel_module("gqa_decode_combine").aot_compile_all()
