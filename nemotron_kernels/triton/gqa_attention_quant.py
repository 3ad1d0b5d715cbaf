"""FP8 e4m3 quantisation of attention inputs on the device (Triton): one scale per (batch row or packed sequence,
kv head), the granularity the FP8 attention and decode kernels take as descales.

x [B, S, H, D] with H = Hkv * G (query heads of a kv head are one group; for k, v: G = 1):
  1. amax kernel: one program per (sequence, kv head, block of BLOCK_S positions) reduces |x| over its positions,
     the group's heads and D, and atomically maxes it into amax [rows, Hkv] (fp32, zero-initialised; max is
     order-independent, so the result is deterministic);
  2. quantise kernel: descale = max(amax, tiny) / 448, x8 = round-to-nearest(clamp(x / descale, +-448)) with an
     IEEE division (bit-identical to torch's `(x / descale).clamp(-448, 448).to(float8_e4m3fn)`), same grid.
With a given descale, only step 2 runs (e.g. writing into an FP8 KV cache with a fixed scale).
Varlen: B = 1 and cu_seqlens [S+1]; rows = S sequences.
"""
import torch
import triton
import triton.language as tl

from .common import cdiv
from .gqa_attention_common import aot_compile, interpreting

INTERPRETED = interpreting()   # the mode these kernels were defined in (see gqa_attention_common.kernel_module)
FP8_MAX = 448.0                # largest finite float8_e4m3fn
TINY = 1e-12                   # amax floor: an all-zero group gets descale TINY / 448 (and quantises to zeros)


@triton.jit
def _rows_of(pid_row, CU_SEQLENS, seqlen, stride_b, stride_s, VARLEN: tl.constexpr):
    """(row offset of sequence / batch row `pid_row`, its length)."""
    if VARLEN:
        start = tl.load(CU_SEQLENS + pid_row).to(tl.int64)
        return start * stride_s, (tl.load(CU_SEQLENS + pid_row + 1) - start).to(tl.int32)
    else:
        return pid_row.to(tl.int64) * stride_b, seqlen


@triton.jit
def _fp8_amax_kernel(X, AMAX, CU_SEQLENS, stride_b, stride_s, stride_h, seqlen, num_kv_heads,
                     GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, VARLEN: tl.constexpr):
    pid_s = tl.program_id(0)
    row = tl.program_id(1) // num_kv_heads
    hkv = tl.program_id(1) % num_kv_heads
    base, length = _rows_of(row, CU_SEQLENS, seqlen, stride_b, stride_s, VARLEN)
    pos = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    if pid_s * BLOCK_S < length:
        ok = pos < length
        offs_d = tl.arange(0, HEAD_DIM)
        amax = tl.zeros([BLOCK_S, HEAD_DIM], tl.float32)
        for j in range(GROUP):
            ptrs = X + base + pos.to(tl.int64)[:, None] * stride_s + (hkv * GROUP + j) * stride_h + offs_d[None, :]
            amax = tl.maximum(amax, tl.abs(tl.load(ptrs, mask=ok[:, None], other=0.0).to(tl.float32)))
        tl.atomic_max(AMAX + row * num_kv_heads + hkv, tl.max(tl.max(amax, 1), 0))


@triton.jit
def _fp8_quantize_kernel(X, X8, AMAX, DESCALE, CU_SEQLENS, stride_b, stride_s, stride_h,
                         stride_ob, stride_os, stride_oh, seqlen, num_kv_heads,
                         GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, VARLEN: tl.constexpr,
                         FROM_AMAX: tl.constexpr):
    """FROM_AMAX: descale = max(amax, TINY) / 448 (written to DESCALE by the first position block); else DESCALE
    is given."""
    pid_s = tl.program_id(0)
    row = tl.program_id(1) // num_kv_heads
    hkv = tl.program_id(1) % num_kv_heads
    base, length = _rows_of(row, CU_SEQLENS, seqlen, stride_b, stride_s, VARLEN)
    if VARLEN:
        out_base = tl.load(CU_SEQLENS + row).to(tl.int64) * stride_os
    else:
        out_base = row.to(tl.int64) * stride_ob
    if FROM_AMAX:
        descale = tl.maximum(tl.load(AMAX + row * num_kv_heads + hkv), 1e-12) / 448.0
        if pid_s == 0:
            tl.store(DESCALE + row * num_kv_heads + hkv, descale)
    else:
        descale = tl.load(DESCALE + row * num_kv_heads + hkv)
    pos = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    if pid_s * BLOCK_S < length:
        ok = pos < length
        offs_d = tl.arange(0, HEAD_DIM)
        for j in range(GROUP):
            head = hkv * GROUP + j
            x = tl.load(X + base + pos.to(tl.int64)[:, None] * stride_s + head * stride_h + offs_d[None, :],
                        mask=ok[:, None], other=0.0).to(tl.float32)
            x8 = tl.minimum(tl.maximum(tl.math.div_rn(x, descale), -448.0), 448.0).to(X8.dtype.element_ty)
            tl.store(X8 + out_base + pos.to(tl.int64)[:, None] * stride_os + head * stride_oh + offs_d[None, :], x8,
                     mask=ok[:, None])


BLOCK_S = 16


def quantize_fp8(x, num_kv_heads: int, cu_seqlens=None, max_seqlen=None, descale=None):
    """x [B, S, H, D] (last dim contiguous) -> (x8 [B, S, H, D] float8_e4m3fn contiguous, descale [rows, Hkv] fp32)
    with rows = B, or the S sequences of cu_seqlens (B = 1, max_seqlen required). x ~= x8 * descale (per row and
    kv head; the H // Hkv heads of a kv head share it). descale given ([rows, Hkv] fp32): quantise with it."""
    assert x.dim() == 4 and x.stride(3) == 1, f"x must be [B, S, H, D] with a contiguous last dim, got {x.shape}"
    bsz, seqlen, heads, d = x.shape
    assert heads % num_kv_heads == 0, f"H ({heads}) must be a multiple of num_kv_heads ({num_kv_heads})"
    assert d in (16, 32, 64, 128, 256), f"head dim D={d} must be a power of two in [16, 256]"
    varlen = cu_seqlens is not None
    if varlen:
        assert bsz == 1 and max_seqlen is not None, "with cu_seqlens: B = 1 and max_seqlen required"
    rows = cu_seqlens.numel() - 1 if varlen else bsz
    group = heads // num_kv_heads
    x8 = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    grid = (max(cdiv(max_seqlen if varlen else seqlen, BLOCK_S), 1), rows * num_kv_heads)
    common = dict(GROUP=group, HEAD_DIM=d, BLOCK_S=BLOCK_S, VARLEN=varlen)
    cu = cu_seqlens if varlen else x
    if descale is None:
        amax = torch.zeros(rows, num_kv_heads, dtype=torch.float32, device=x.device)
        descale = torch.empty_like(amax)
        _fp8_amax_kernel[grid](x, amax, cu, x.stride(0), x.stride(1), x.stride(2), seqlen, num_kv_heads, **common)
    else:
        assert descale.shape == (rows, num_kv_heads) and descale.dtype == torch.float32 and descale.is_contiguous(), \
            f"descale must be contiguous fp32 [{rows}, {num_kv_heads}], got {descale.dtype} {tuple(descale.shape)}"
        amax = None
    _fp8_quantize_kernel[grid](x, x8, amax if amax is not None else descale, descale, cu,
                               x.stride(0), x.stride(1), x.stride(2), x8.stride(0), x8.stride(1), x8.stride(2),
                               seqlen, num_kv_heads, FROM_AMAX=amax is not None, **common)
    return x8, descale


def aot_compile_all():
    """Compile both kernels for sm_90a: q of NemotronH (bf16, 16 heads per kv head, D=128), padded and varlen."""
    ints = ("stride_", "seqlen", "num_")
    for kernel in (_fp8_amax_kernel, _fp8_quantize_kernel):
        sig = {n: "i32" for n in kernel.arg_names if n.startswith(ints)}
        sig.update(X="*bf16", X8="*fp8e4nv", AMAX="*fp32", DESCALE="*fp32", CU_SEQLENS="*i32")
        sig = {k: v for k, v in sig.items() if k in kernel.arg_names}
        for varlen in (False, True):
            const = dict(GROUP=16, HEAD_DIM=128, BLOCK_S=BLOCK_S, VARLEN=varlen)
            if kernel is _fp8_quantize_kernel:
                const["FROM_AMAX"] = not varlen
            yield f"{kernel.__name__} varlen={varlen}", aot_compile(kernel, sig, const, 4, 1)
