"""GQA decode attention over a paged KV cache (Triton), stage 2: merge the split-K partial results.

For each query row (b, position, head): o = sum_s w_s o_s / sum_s w_s with w_s = exp2(lse_s - max_s lse_s) over the
splits that hold tokens of sequence b (cdiv(seq_len, split_len), at least one). Rows that saw no token get 0.

Shapes: o_part [num_splits, B, Sq*Hq, D] fp32 (normalised per split), lse_part [num_splits, B, Sq*Hq] fp32 (log2
domain), seq_lens [B]; o [B, Sq, Hq, D] (row r = position * Hq + head).
"""
import triton
import triton.language as tl

from .gqa_attention_common import aot_compile, interpreting

INTERPRETED = interpreting()   # the mode these kernels were defined in (see gqa_attention_common.kernel_module)


@triton.jit
def _gqa_decode_combine_kernel(
    O_PART, LSE_PART, SEQ_LENS, O,
    stride_ob, stride_os, stride_oh,
    num_rows, num_heads, batch, split_len, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr,
):
    b = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)                     # [R] rows of sequence b
    ok = rows < num_rows
    offs_d = tl.arange(0, HEAD_DIM)
    seq_len = tl.load(SEQ_LENS + b).to(tl.int32)
    n_valid = tl.minimum(tl.maximum(tl.cdiv(seq_len, split_len), 1), num_splits)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for s in range(n_valid):
        lse = tl.load(LSE_PART + (s * batch + b).to(tl.int64) * num_rows + rows, mask=ok, other=float("-inf"))
        m = tl.maximum(m, lse)
    m = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
    den = tl.zeros([BLOCK_R], tl.float32)
    for s in range(n_valid):
        part = (s * batch + b).to(tl.int64) * num_rows + rows
        w = tl.math.exp2(tl.load(LSE_PART + part, mask=ok, other=float("-inf")) - m)
        o_s = tl.load(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], mask=ok[:, None], other=0.0)
        den += w
        acc += w[:, None] * o_s
    out = acc / tl.where(den > 0.0, den, 1.0)[:, None]
    pos = rows // num_heads
    head = rows % num_heads
    o_rows = b.to(tl.int64) * stride_ob + pos.to(tl.int64) * stride_os + head * stride_oh
    tl.store(O + o_rows[:, None] + offs_d[None, :], out.to(O.dtype.element_ty), mask=ok[:, None])


BLOCK_R = 16


def gqa_decode_combine(o_part, lse_part, seq_lens, split_len: int, o):
    """Merge o_part [num_splits, B, Sq*Hq, D], lse_part [num_splits, B, Sq*Hq] into o [B, Sq, Hq, D] (in place)."""
    num_splits, bsz, num_rows, d = o_part.shape
    assert o_part.is_contiguous() and lse_part.is_contiguous() and lse_part.shape == (num_splits, bsz, num_rows), \
        "o_part / lse_part must be contiguous [num_splits, B, Sq*Hq(, D)]"
    assert o.shape[0] == bsz and o.shape[1] * o.shape[2] == num_rows and o.shape[3] == d and o.stride(3) == 1, \
        f"o must be [B={bsz}, Sq, Hq, D={d}] with Sq*Hq = {num_rows} and a contiguous last dim"
    _gqa_decode_combine_kernel[(triton.cdiv(num_rows, BLOCK_R), bsz)](
        o_part, lse_part, seq_lens, o, o.stride(0), o.stride(1), o.stride(2),
        num_rows, o.shape[2], bsz, split_len, num_splits, HEAD_DIM=d, BLOCK_R=BLOCK_R, num_warps=4)
    return o


def aot_compile_all():
    ints = ("stride_", "num_", "batch", "split_len")
    sig = {n: "i32" for n in _gqa_decode_combine_kernel.arg_names if n.startswith(ints)}
    for dt, d in (("bf16", 128), ("fp16", 64)):
        sig.update(O_PART="*fp32", LSE_PART="*fp32", SEQ_LENS="*i32", O=f"*{dt}")
        yield f"gqa_decode_combine {dt} D{d}", aot_compile(_gqa_decode_combine_kernel, sig,
                                                          dict(HEAD_DIM=d, BLOCK_R=BLOCK_R), 4, 1)
