"""Jit helpers shared by the SSD scan stages (chunk_cumsum, chunk_state, chunk_scan and the backward's).
Stage 0 (chunk_cumsum) computes each chunk's dt and cumulative dt A once, into dtcs [3, B, H, L] fp32; the other
kernels read them with _chunk_dtcs, contiguous per head.

Chunks: the scan splits every sequence into chunks of Q tokens that start at the sequence's first token, so a
chunk never spans two sequences. Chunks are numbered globally, gc in [0, n_chunks):
  batched (B rows of L tokens): gc = b * cdiv(L, Q) + c, chunk c of row b starts at token c * Q;
  packed (cu_seqlens, B = 1):   a host-built table [5, n_table] int32 (sequence, start, length, first, last) per
                                chunk slot; the last slots may be padding (length 0, never first or last).
"""
import triton
import triton.language as tl

from .mamba_common import interpreting

INTERPRETED = interpreting()
LOAD_TOKEN = object()


@triton.jit
def _chunk_info(gc, table_ptr, n_table, seqlen, chunks_per_row, Q: tl.constexpr, IS_VARLEN: tl.constexpr):
    """-> (row b, sequence / state index, first token, tokens in the chunk, starts its sequence, ends it)."""
    if IS_VARLEN:
        seq = tl.load(table_ptr + gc)
        start = tl.load(table_ptr + n_table + gc)
        length = tl.load(table_ptr + 2 * n_table + gc)
        first = tl.load(table_ptr + 3 * n_table + gc) != 0
        last = tl.load(table_ptr + 4 * n_table + gc) != 0
        b = gc * 0
    else:
        b = gc // chunks_per_row
        c = gc - b * chunks_per_row
        start = c * Q
        length = tl.minimum(seqlen - start, Q)
        seq = b
        first = c == 0
        last = c == chunks_per_row - 1
    return b, seq, start, length, first, last


@triton.jit
def _past_chunk_end(row0, length, IS_VARLEN: tl.constexpr):
    """Whether a program's rows, from row0 of its chunk, all lie past the chunk's end, so it has nothing to do: with
    packed sequences, the spare slots at the end of the chunk table (length 0: the slot count is a bound, which
    needs no host sync) and the row blocks past a partial chunk's end. Batched chunks always have rows."""
    past = False
    if IS_VARLEN:
        past = row0 >= length
    return past


@triton.jit
def _chunk_dt(dt_ptr, dt_bias_ptr, row_base, start, length, h, stride_dt_l, offs_q,
              HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr):
    """The chunk's step sizes dt (+ dt_bias, softplus: identity above 20 like torch), fp32 [Q], zero past the end."""
    q_ok = offs_q < length
    dt = tl.load(dt_ptr + row_base + (start + offs_q).to(tl.int64) * stride_dt_l + h, mask=q_ok,
                 other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + h).to(tl.float32)
    if DT_SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    return tl.where(q_ok, dt, 0.0)


@triton.jit
def _dtcs_span(gc, start, seqlen, n_table, Q: tl.constexpr, IS_VARLEN: tl.constexpr):
    """(row length, the chunk's first position) in stage 0's dtcs rows. Batched, dtcs [3, B, H, L] holds each chunk
    at its tokens. Packed, [3, 1, H, n_table Q] holds slot gc at gc Q, the whole slot written: Q-aligned and
    loadable under the constant bound Q (_chunk_dtcs' SLOT_BOUND, which da uses), so those loads vectorise. At a
    table start, under the loaded length, they were scalar loads: packed da ran 26% slower per token than batched
    (session 24)."""
    row_len = seqlen
    pos = start
    if IS_VARLEN:
        row_len = n_table * Q
        pos = gc * Q
    return row_len, pos


@triton.jit
def _dtcs_row(dtcs_ptr, b, h, nheads, row_len, pos):
    """Head h's row of stage 0's dtcs [3, B, H, row_len] (plane 0), at the chunk's first position (_dtcs_span)."""
    return dtcs_ptr + (b * nheads + h) * row_len + pos


@triton.jit
def _chunk_dtcs(row, plane, offs, ok, Q: tl.constexpr = 0, SLOT_BOUND: tl.constexpr = False):
    """Stage 0's (dt, cs hi, cs lo) at the chunk's rows `offs` of a head's dtcs row (_dtcs_row), fp32, 0 where not
    `ok`: dtcs [3, B, H, row_len] (ssd_scan_chunk_cumsum; plane = B * H * row_len), cs the cumulative dt A from the
    chunk start in fp32 hi + lo parts (exp((hi_t - hi_s) + (lo_t - lo_s)) keeps ~eps * |cs_t - cs_s|, where fp32
    sums would lose ~eps * |cs|). SLOT_BOUND (packed only: the slot's Q positions are all allocated): load under
    the bound Q, which the compiler knows (vector loads), and apply `ok` (from a loaded length: scalar loads) after.
    It pays in da alone: packed da 805 -> 751 us, but chunk_scan +42, dx +78, dB + dC +18 us (session 25's A/B)."""
    plane = tl.cast(plane, tl.int64)                          # 3 planes may pass 2^31 elements
    mask = offs < Q if SLOT_BOUND else ok
    dt = tl.load(row + offs, mask=mask, other=0.0)
    hi = tl.load(row + plane + offs, mask=mask, other=0.0)
    lo = tl.load(row + 2 * plane + offs, mask=mask, other=0.0)
    if SLOT_BOUND:     # past the chunk's end the slot holds dt 0 and a flat cs: 0, as batched
        dt = tl.where(ok, dt, 0.0)
        hi = tl.where(ok, hi, 0.0)
        lo = tl.where(ok, lo, 0.0)
    return dt, hi, lo


@triton.jit
def _chunk_cs_end(row, plane, length):
    """cs_Q, the chunk's whole sum of dt A (stage 0's cs at its last token), as fp32 (hi, lo); 0 for an empty slot."""
    dt_end, hi, lo = _chunk_dtcs(row, plane, tl.maximum(length - 1, 0), length > 0)
    return hi, lo


@triton.jit
def _chunk_dt_grad_scale(dt_ptr, dt_bias_ptr, row_base, start, length, h, stride_dt_l, offs_q,
                         HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr):
    """d dt / d dt_raw of `_chunk_dt` at the chunk's tokens, fp32 [Q]: sigmoid(dt_raw + dt_bias) with softplus
    (1 above 20, like torch), else 1."""
    if DT_SOFTPLUS:
        q_ok = offs_q < length
        pre = tl.load(dt_ptr + row_base + (start + offs_q).to(tl.int64) * stride_dt_l + h, mask=q_ok,
                      other=0.0).to(tl.float32)
        if HAS_DT_BIAS:
            pre += tl.load(dt_bias_ptr + h).to(tl.float32)
        scale = tl.where(pre > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-tl.minimum(pre, 20.0))))
    else:
        scale = tl.full(offs_q.shape, 1.0, tl.float32)
    return scale


@triton.jit
def _chunk_state_full(state_ptr, decay_ptr, carry_ptr, head_chunk, carry_head, state_size, pn_offs, pn_ok,
                      HAS_CARRY: tl.constexpr):
    """A per-chunk state counted from its segment's boundary, completed with the carry across segments:
    state[head_chunk] + decay[head_chunk] * carry[carry_head], fp32 [BLOCK_P, BLOCK_N] (int64 offsets)."""
    S = tl.load(state_ptr + head_chunk * state_size + pn_offs, mask=pn_ok, other=0.0).to(tl.float32)
    if HAS_CARRY:
        decay = tl.load(decay_ptr + head_chunk)
        if decay != 0.0:   # 0 when a sequence boundary lies between the chunk and the segment boundary
            S += decay * tl.load(carry_ptr + carry_head * state_size + pn_offs, mask=pn_ok, other=0.0).to(tl.float32)
    return S


def aot_aligned(varlen: bool) -> tuple[str, ...]:
    """The int arguments the JIT launcher finds divisible by 16 (and so specialises) at Nemotron-H's shapes: B1 L32K
    batched, or the bench's 16 packed sequences (31,280 tokens, 260 table slots). Given to aot_compile, the AOT
    builds compile what the GPU runs (session 24: without them, the AOT batched da loaded dt / cs one element at a
    time where the H200's compile loaded pairs)."""
    ints = ("headdim", "dstate", "seqlen", "nheads", "plane", "chunks_per_row")
    return ints if varlen else ints + ("n_chunks", "n_table")
