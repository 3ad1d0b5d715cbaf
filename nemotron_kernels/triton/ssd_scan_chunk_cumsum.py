"""SSD scan stage 0 (Triton): each chunk's step sizes and cumulative log-decays, once, in a head-major layout; and
the chunk table of packed sequences (_ssd_chunk_table_kernel).

Program (chunk gc, block of BLOCK_H heads). dt [Q, BLOCK_H] is read along the heads (coalesced), + dt_bias,
softplus; cs = cumsum over the chunk of dt A, summed in fp64 and split into fp32 hi + lo parts (stage 3 takes
exp((hi_t - hi_s) + (lo_t - lo_s)), which keeps ~eps * |cs_t - cs_s| where plain fp32 sums would lose ~eps * |cs|).
Out: dtcs [3, B, H, L] fp32 = (dt, cs hi, cs lo), each head's tokens contiguous (packed: [3, 1, H, n_table Q], each
slot's chunk Q-aligned, ssd_scan_common._dtcs_span). Stage 3 used to compute these per
head in its loop: a strided dt load and an fp64 scan across warps, 10 of its 16 barriers per head iteration
(PTX, 128-row tile) and the top stall reason against mamba_ssm's kernel (ncu, bench/NOTES.md session 20)."""
import torch
import triton
import triton.language as tl

from . import ssd_scan_common
from .common import cdiv, next_power_of_2
from .mamba_common import dep_tokens, interpreting
from .ssd_scan_common import _chunk_dt, _chunk_info, _dtcs_span, aot_aligned

INTERPRETED = interpreting()
LOAD_TOKEN = object()
DEPENDS = ("ssd_scan_common",)
DEP_TOKENS = dep_tokens(ssd_scan_common)


@triton.jit
def _ssd_chunk_cumsum_kernel(
    dt_ptr, A_ptr, dt_bias_ptr, table_ptr,
    dtcs_ptr,                                 # [3, B, H, row length] fp32 out: dt, cs hi, cs lo (_dtcs_span)
    seqlen, n_table, chunks_per_row, nheads, plane,
    stride_dt_b, stride_dt_l,                 # dt [B, L, H], unit H stride
    Q: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    gc = tl.program_id(0)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    b, _, start, length, _, _ = _chunk_info(gc, table_ptr, n_table, seqlen, chunks_per_row, Q, IS_VARLEN)
    dt_len, dt_pos = _dtcs_span(gc, start, seqlen, n_table, Q, IS_VARLEN)
    b = tl.cast(b, tl.int64)
    offs_q = tl.arange(0, Q)
    h_ok = offs_h < nheads
    h = tl.minimum(offs_h, nheads - 1)        # in-bounds loads for the last block's spare heads (not stored)
    dt = _chunk_dt(dt_ptr, dt_bias_ptr, b * stride_dt_b, start, length, h[None, :], stride_dt_l, offs_q[:, None],
                   HAS_DT_BIAS, DT_SOFTPLUS)                                          # [Q, BLOCK_H], 0 past the end
    A = tl.load(A_ptr + h).to(tl.float32)
    cs = tl.cumsum((dt * A[None, :]).to(tl.float64), axis=0)                          # [Q, BLOCK_H]
    cs_hi = cs.to(tl.float32)
    cs_lo = (cs - cs_hi.to(tl.float64)).to(tl.float32)
    # packed, each slot's Q positions are its own: written whole (dt 0 and cs flat past the chunk's end), under
    # masks the compiler knows constant (vector stores; under the loaded length they were scalar)
    ok = (offs_q < (Q if IS_VARLEN else length))[:, None] & h_ok[None, :]
    plane = tl.cast(plane, tl.int64)                          # 3 planes may pass 2^31 elements
    ptrs = dtcs_ptr + (b * nheads + h[None, :]) * dt_len + (dt_pos + offs_q)[:, None]
    tl.store(ptrs, dt, mask=ok)
    tl.store(ptrs + plane, cs_hi, mask=ok)
    tl.store(ptrs + 2 * plane, cs_lo, mask=ok)


@triton.jit
def _ssd_chunk_table_kernel(
    cu_ptr,                                   # [S + 1] int32 / int64 sequence offsets
    table_ptr,                                # [5, n_table] int32 out: sequence, start, length, first, last
    last_ptr, first_ptr,                      # [S] int32 out: each sequence's last chunk (-1: empty), first chunk
    nseq, n_table,
    Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Program: BLOCK_T slots of the table. The sequences' chunk counts are summed over blocks of BLOCK_S; a slot's
    sequence is the number of sequences that end at or before it (ssd_chunk_table_ref's searchsorted), and its
    first chunk the largest of those ends. Program 0 also writes the per-sequence chunk indices."""
    slot = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)                       # [BLOCK_T]
    seq = tl.zeros([BLOCK_T], dtype=tl.int32)
    seq_chunk0 = tl.zeros([BLOCK_T], dtype=tl.int32)     # the first chunk of the slot's sequence
    done = tl.zeros([], dtype=tl.int32)                  # chunks of the sequences before this block
    for s0 in range(0, nseq, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_ok = offs_s < nseq
        lo = tl.load(cu_ptr + offs_s, mask=s_ok, other=0).to(tl.int64)
        hi = tl.load(cu_ptr + offs_s + 1, mask=s_ok, other=0).to(tl.int64)
        n = tl.where(s_ok, (hi - lo + Q - 1) // Q, 0).to(tl.int32)                  # [BLOCK_S] chunks
        ends = done + tl.cumsum(n, axis=0)                                          # one past each one's last
        ended = (ends[None, :] <= slot[:, None]) & s_ok[None, :]                    # [BLOCK_T, BLOCK_S]
        seq += tl.sum(ended.to(tl.int32), axis=1)
        seq_chunk0 = tl.maximum(seq_chunk0, tl.max(tl.where(ended, ends[None, :], 0), axis=1))
        if tl.program_id(0) == 0:
            tl.store(last_ptr + offs_s, tl.where(n > 0, ends - 1, -1), mask=s_ok)
            tl.store(first_ptr + offs_s, ends - n, mask=s_ok)
        done += tl.sum(n, axis=0)
    valid = slot < done
    seq = tl.minimum(seq, nseq - 1)
    lo = tl.load(cu_ptr + seq).to(tl.int64)
    hi = tl.load(cu_ptr + seq + 1).to(tl.int64)
    k = slot - seq_chunk0
    start = tl.where(valid, lo + k * Q, 0)
    length = tl.where(valid, tl.minimum(hi - start, Q), 0)
    first = valid & (k == 0)
    last = valid & (start + length == hi)
    t_ok = slot < n_table
    tl.store(table_ptr + slot, seq, mask=t_ok)
    tl.store(table_ptr + n_table + slot, start.to(tl.int32), mask=t_ok)
    tl.store(table_ptr + 2 * n_table + slot, length.to(tl.int32), mask=t_ok)
    tl.store(table_ptr + 3 * n_table + slot, first.to(tl.int32), mask=t_ok)
    tl.store(table_ptr + 4 * n_table + slot, last.to(tl.int32), mask=t_ok)


def chunk_table_launch(cu_seqlens, chunk: int, n_table: int):
    """ssd_chunk_table_ref's (table [5, n_table], last_chunk [S], first_chunk [S]) int32, in one launch."""
    nseq = cu_seqlens.numel() - 1
    table = torch.empty(5, n_table, dtype=torch.int32, device=cu_seqlens.device)
    last = torch.empty(nseq, dtype=torch.int32, device=cu_seqlens.device)
    first = torch.empty(nseq, dtype=torch.int32, device=cu_seqlens.device)
    block_t = min(128, max(16, next_power_of_2(n_table)))
    _ssd_chunk_table_kernel[(max(1, cdiv(n_table, block_t)),)](
        cu_seqlens, table, last, first, nseq, n_table, Q=chunk, BLOCK_T=block_t,
        BLOCK_S=min(128, max(16, next_power_of_2(nseq))), num_warps=4)
    return table, last, first


def block_h(nheads: int) -> int:
    """Heads per program: up to 16 (a chunk's [128, 16] fp64 sums stay in registers)."""
    return min(16, next_power_of_2(nheads))


def chunk_cumsum_launch(dt, A, dt_bias, table, geometry: dict, dt_softplus: bool) -> torch.Tensor:
    """Stage 0 over all chunks. dt [B, L, H] (unit H stride), A [H] fp32 -> dtcs [3, B, H, L] fp32, packed
    [3, 1, H, n_table Q] (geometry["dtcs_len"])."""
    bsz, seqlen, nheads = dt.shape
    assert dt.stride(2) == 1, "ssd_scan chunk_cumsum: dt needs a unit head stride"
    row_len = geometry["dtcs_len"]
    dtcs = torch.empty(3, bsz, nheads, row_len, dtype=torch.float32, device=dt.device)
    bh = block_h(nheads)
    _ssd_chunk_cumsum_kernel[(geometry["n_chunks"], cdiv(nheads, bh))](
        dt, A, dt_bias if dt_bias is not None else A, table if table is not None else A, dtcs,
        seqlen, geometry["n_table"], geometry["chunks_per_row"], nheads, dtcs[0].numel(), dt.stride(0), dt.stride(1),
        Q=geometry["Q"], BLOCK_H=bh, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus,
        IS_VARLEN=table is not None, num_warps=4)
    return dtcs


def aot_compile_all():
    """(name, CompiledKernel) at NemotronH's shapes (H=64, Q=128, bf16 dt), batched and packed, and the chunk table
    (16 sequences), sm_90a."""
    from .mamba_common import aot_compile
    sig = {"dt_ptr": "*bf16", "A_ptr": "*fp32", "dt_bias_ptr": "*fp32", "table_ptr": "*i32", "dtcs_ptr": "*fp32",
           "seqlen": "i32", "n_table": "i32", "chunks_per_row": "i32", "nheads": "i32", "plane": "i64",
           "stride_dt_b": "i64", "stride_dt_l": "i64"}
    for varlen in (False, True):
        consts = {"Q": 128, "BLOCK_H": block_h(64), "HAS_DT_BIAS": True, "DT_SOFTPLUS": True, "IS_VARLEN": varlen}
        yield (f"ssd_chunk_cumsum varlen={varlen}",
               aot_compile(_ssd_chunk_cumsum_kernel, sig, consts, num_warps=4, num_stages=1,
                           aligned=aot_aligned(varlen)))
    sig = {"cu_ptr": "*i32", "table_ptr": "*i32", "last_ptr": "*i32", "first_ptr": "*i32", "nseq": "i32",
           "n_table": "i32"}
    yield "ssd_chunk_table", aot_compile(_ssd_chunk_table_kernel, sig, {"Q": 128, "BLOCK_T": 128, "BLOCK_S": 16},
                                         num_warps=4, num_stages=1)
