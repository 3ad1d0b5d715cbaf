"""GQA decode attention over a paged KV cache (Triton), stage 2: merge the split-K partial results.

For each query row (b, position, head): o = sum_s w_s o_s / sum_s w_s with w_s = exp2(lse_s - max_s lse_s) over the
splits that hold tokens of sequence b (cdiv(seq_len, split_len), at least one). Rows that saw no token get 0.

Splits are many exactly when the batch is small (B = 1 at 32K context: 128 splits), so the merge must be
latency-bound, not a loop: one program per (row, BLOCK_D columns, sequence) loads all its splits' lse and o_part
columns at once ([BLOCK_S, BLOCK_D] with BLOCK_S = the split count rounded up to a power of two), which keeps
every load in flight together. (A program per 16 rows walking the splits one by one left B = 1 with 2 programs.)

Shapes: o_part [num_splits, B, Sq*Hq, D] fp32 (normalised per split), lse_part [num_splits, B, Sq*Hq] fp32 (log2
domain), seq_lens [B]; o [B, Sq, Hq, D] (row r = position * Hq + head).
"""
import triton
import triton.language as tl

from .common import next_power_of_2
from .gqa_attention_common import aot_compile, interpreting

INTERPRETED = interpreting()   # the mode these kernels were defined in (see gqa_attention_common.kernel_module)


@triton.jit
def _gqa_decode_combine_kernel(
    O_PART, LSE_PART, SEQ_LENS, O,
    stride_ob, stride_os, stride_oh,
    num_rows, num_heads, batch, split_len, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    row = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)                 # [BD] columns of this program
    b = tl.program_id(2)
    seq_len = tl.load(SEQ_LENS + b).to(tl.int32)
    n_valid = tl.minimum(tl.maximum(tl.cdiv(seq_len, split_len), 1), num_splits)
    splits = tl.arange(0, BLOCK_S)                                               # [BS]
    part = (splits * batch + b).to(tl.int64) * num_rows + row                   # [BS] rows of o_part / lse_part
    ok = splits < n_valid
    lse = tl.load(LSE_PART + part, mask=ok, other=float("-inf"))                 # [BS]
    o_s = tl.load(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], mask=ok[:, None], other=0.0)  # [BS, BD]
    m = tl.max(lse, 0)
    w = tl.math.exp2(lse - tl.where(m == float("-inf"), 0.0, m))                 # 0 for splits without tokens
    den = tl.sum(w, 0)
    out = tl.sum(w[:, None] * o_s, 0) / tl.where(den > 0.0, den, 1.0)            # [BD]
    pos = row // num_heads
    head = row % num_heads
    o_row = b.to(tl.int64) * stride_ob + pos.to(tl.int64) * stride_os + head * stride_oh
    tl.store(O + o_row + offs_d, out.to(O.dtype.element_ty))


BLOCK_D = 32


def block_s_for(num_splits: int) -> int:
    """Splits loaded at once: the split count rounded up to a power of two (the split kernel caps it at 256)."""
    return max(2, next_power_of_2(num_splits))


def gqa_decode_combine(o_part, lse_part, seq_lens, split_len: int, o):
    """Merge o_part [num_splits, B, Sq*Hq, D], lse_part [num_splits, B, Sq*Hq] into o [B, Sq, Hq, D] (in place)."""
    num_splits, bsz, num_rows, d = o_part.shape
    assert o_part.is_contiguous() and lse_part.is_contiguous() and lse_part.shape == (num_splits, bsz, num_rows), \
        "o_part / lse_part must be contiguous [num_splits, B, Sq*Hq(, D)]"
    assert o.shape[0] == bsz and o.shape[1] * o.shape[2] == num_rows and o.shape[3] == d and o.stride(3) == 1, \
        f"o must be [B={bsz}, Sq, Hq, D={d}] with Sq*Hq = {num_rows} and a contiguous last dim"
    block_d = min(BLOCK_D, d)
    _gqa_decode_combine_kernel[(num_rows, d // block_d, bsz)](
        o_part, lse_part, seq_lens, o, o.stride(0), o.stride(1), o.stride(2),
        num_rows, o.shape[2], bsz, split_len, num_splits, HEAD_DIM=d, BLOCK_D=block_d,
        BLOCK_S=block_s_for(num_splits), num_warps=4)
    return o


def aot_compile_all():
    ints = ("stride_", "num_", "batch", "split_len")
    sig = {n: "i32" for n in _gqa_decode_combine_kernel.arg_names if n.startswith(ints)}
    for dt, d, splits in (("bf16", 128, 128), ("fp16", 64, 4)):
        sig.update(O_PART="*fp32", LSE_PART="*fp32", SEQ_LENS="*i32", O=f"*{dt}")
        const = dict(HEAD_DIM=d, BLOCK_D=min(BLOCK_D, d), BLOCK_S=block_s_for(splits))
        yield f"gqa_decode_combine {dt} D{d} S{splits}", aot_compile(_gqa_decode_combine_kernel, sig, const, 4, 1)
