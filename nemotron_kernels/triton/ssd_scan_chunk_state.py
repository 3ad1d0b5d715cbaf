"""SSD scan stage 1 (Triton): chunk states, carried sequentially through a *segment* of consecutive chunks.

Program (segment, head h, block of P rows). Walking its chunks in order it keeps the running state S [P, N]
(fp32, registers): S_in of each chunk is stored (the state entering the chunk, counted from the segment start),
then S <- exp(sum_chunk dt A) S + sum_t exp(sum_{s>t} dt_s A) dt_t x_t B_t^T (one tl.dot over the chunk).
At a sequence start S restarts from the initial state (or zero). Per chunk it also stores carry_decay, the
decay from the segment start to the chunk (0 once a sequence started inside the segment), so stage 3 can add
the contribution of the state entering the segment (stage 2's carry). At the segment end it stores the segment's
state and total decay; at a sequence end, its final state and decay (completed by stage 2).
Segments make the sequential walk parallel over the sequence at B = 1 (32K tokens: ~5 segments of ~50 chunks).
"""
import functools

import triton
import triton.language as tl

from . import ssd_scan_common
from .common import cdiv, next_power_of_2
from .mamba_common import dep_tokens, interpreting
from .ssd_scan_common import _chunk_cs_end, _chunk_dtcs, _chunk_info, _dtcs_row, _dtcs_span, aot_aligned

INTERPRETED = interpreting()
LOAD_TOKEN = object()
DEPENDS = ("ssd_scan_common",)
DEP_TOKENS = dep_tokens(ssd_scan_common)


@triton.jit
def _ssd_chunk_state_kernel(
    x_ptr, dtcs_ptr, B_ptr, init_ptr, table_ptr,  # dtcs [3, B, H, L] fp32: stage 0's dt, cumulative dt A (hi, lo)
    s_in_ptr,                     # [n_chunks, H, P, N] state entering each chunk (from the segment start), state dtype
    carry_decay_ptr,              # [n_chunks, H] fp32
    seg_state_ptr, seg_decay_ptr,  # [n_seg, H, P, N] fp32, [n_seg, H] fp32
    final_ptr, final_decay_ptr,   # [n_states, H, P, N] fp32, [n_states, H] fp32
    seqlen, n_chunks, n_table, chunks_per_row, seg_len, headdim, dstate, heads_per_group, nheads, plane,
    stride_x_b, stride_x_l, stride_x_h,       # x [B, L, H, P], unit P stride
    stride_B_b, stride_B_l, stride_B_g,       # B [B, L, G, N], unit N stride
    stride_init_s, stride_init_h, stride_init_p,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, HAS_INIT: tl.constexpr, HAS_FINAL: tl.constexpr,
    IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    seg = tl.program_id(0)
    h = tl.program_id(1)
    pid_p = tl.program_id(2)
    g = h // heads_per_group
    offs_q = tl.arange(0, Q)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    p_ok = offs_p < headdim
    n_ok = offs_n < dstate
    pn_ok = p_ok[:, None] & n_ok[None, :]
    state_size = headdim * dstate
    pn_offs = offs_p[:, None] * dstate + offs_n[None, :]                  # into a contiguous [P, N] state

    S = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    carry = tl.full([], 1.0, tl.float32)                                   # decay since the segment start
    gc_start = seg * seg_len
    gc_end = tl.minimum(gc_start + seg_len, n_chunks)
    # packed, each chunk's table entry is loaded one step ahead, so the step's x and B loads need not wait on it
    # (batched, the entry is arithmetic: carrying it cost bwd_chunk_state 356 -> 380 us, bench/NOTES.md session 24)
    nb, nseq, nstart, nlength, nfirst, nlast = _chunk_info(tl.minimum(gc_start, n_chunks - 1), table_ptr, n_table,
                                                           seqlen, chunks_per_row, Q, IS_VARLEN)
    for gc in range(gc_start, gc_end):
        if IS_VARLEN:
            b, seq, start, length, first, last = nb, nseq, nstart, nlength, nfirst, nlast
            nb, nseq, nstart, nlength, nfirst, nlast = _chunk_info(tl.minimum(gc + 1, n_chunks - 1), table_ptr,
                                                                   n_table, seqlen, chunks_per_row, Q, IS_VARLEN)
        else:
            b, seq, start, length, first, last = _chunk_info(gc, table_ptr, n_table, seqlen, chunks_per_row, Q,
                                                             IS_VARLEN)
        dt_len, dt_pos = _dtcs_span(gc, start, seqlen, n_table, Q, IS_VARLEN)
        b = tl.cast(b, tl.int64)
        seq = tl.cast(seq, tl.int64)
        dt_row = _dtcs_row(dtcs_ptr, b, h, nheads, dt_len, dt_pos)
        if HAS_INIT:
            init = tl.load(init_ptr + seq * stride_init_s + h * stride_init_h + offs_p[:, None] * stride_init_p
                           + offs_n[None, :], mask=pn_ok & first, other=0.0).to(tl.float32)
            S = tl.where(first, init, S)
        else:
            S = tl.where(first, 0.0, S)
        carry = tl.where(first, 0.0, carry)
        head_chunk = tl.cast(gc, tl.int64) * nheads + h
        tl.store(s_in_ptr + head_chunk * state_size + pn_offs, S.to(s_in_ptr.dtype.element_ty),
                 mask=pn_ok & (length > 0))
        if pid_p == 0:
            tl.store(carry_decay_ptr + head_chunk, carry)

        # the chunk's x and B before the decays: their round trip overlaps those loads and exponentials
        rows = (start + offs_q).to(tl.int64)
        q_ok = offs_q < length
        x = tl.load(x_ptr + b * stride_x_b + rows[:, None] * stride_x_l + h * stride_x_h + offs_p[None, :],
                    mask=q_ok[:, None] & p_ok[None, :], other=0.0)                   # [Q, BLOCK_P]
        Bt = tl.load(B_ptr + b * stride_B_b + rows[:, None] * stride_B_l + g * stride_B_g + offs_n[None, :],
                     mask=q_ok[:, None] & n_ok[None, :], other=0.0)                  # [Q, BLOCK_N]
        dt, cs_hi, cs_lo = _chunk_dtcs(dt_row, plane, offs_q, q_ok)  # [Q]
        end_hi, end_lo = _chunk_cs_end(dt_row, plane, length)   # cs_Q
        # sum_{s>t} dA_s from the fp64 sums' hi + lo parts: a plain fp32 difference of two long sums cancels badly
        to_end = tl.exp((end_hi - cs_hi) + (end_lo - cs_lo)) * dt                     # [Q]
        total = end_hi + end_lo
        xw = (x.to(tl.float32) * to_end[:, None]).to(x_ptr.dtype.element_ty)
        decay = tl.exp(total)
        S = tl.dot(tl.trans(xw), Bt, S * decay, input_precision=DOT_PRECISION)       # [BLOCK_P, BLOCK_N]
        carry = carry * decay
        if HAS_FINAL:
            tl.store(final_ptr + seq * nheads * state_size + h * state_size + pn_offs, S, mask=pn_ok & last)
            if pid_p == 0:
                tl.store(final_decay_ptr + seq * nheads + h, carry, mask=last)
    seg_head = tl.cast(seg, tl.int64) * nheads + h
    tl.store(seg_state_ptr + seg_head * state_size + pn_offs, S, mask=pn_ok)
    if pid_p == 0:
        tl.store(seg_decay_ptr + seg_head, carry)


def chunk_state_config(headdim: int, dstate: int, chunk: int, backward: bool = False) -> dict:
    """Tile of stage 1 (backward: of backward stage 1). maxnreg: ptxas' register cap per thread (None: up to 255).
    programs_per_sm: how many programs an SM holds at once (registers, shared memory), which sets the segments'
    wave count. The forward's wide tiles run 4 warps, one stage, 2 programs per SM: 491 -> 390 us at B1 L32K on
    the H200 (scripts/sweep_ssd.py, bench/NOTES.md); the backward's are fastest at 8 warps, 1 program per SM."""
    block_p = max(16, min(64, next_power_of_2(headdim)))
    block_n = max(16, next_power_of_2(dstate))
    wide = block_p * block_n >= 8192
    if wide and not backward:
        return {"BLOCK_P": block_p, "BLOCK_N": block_n, "num_warps": 4, "num_stages": 1, "maxnreg": None,
                "programs_per_sm": 2}
    return {"BLOCK_P": block_p, "BLOCK_N": block_n, "num_warps": 8 if wide else 4, "num_stages": 2,
            "maxnreg": None, "programs_per_sm": 1}


@functools.lru_cache(maxsize=256)           # called by every forward and backward with a handful of shapes
def segments(n_chunks: int, nheads: int, p_blocks: int, slots: int) -> tuple[int, int]:
    """(n_seg, chunks per segment). A program walks its segment's chunks one after another and `slots` programs
    (SMs x programs per SM) run at a time, so the time goes as waves x chunks per segment. Take the fewest
    segments (each adds carry work to stage 3) within 15% of the best such time, n_seg <= 64."""
    options = []
    for n_seg in range(1, min(n_chunks, 64) + 1):
        seg_len = cdiv(n_chunks, n_seg)
        n_seg = cdiv(n_chunks, seg_len)
        options.append((cdiv(n_seg * nheads * p_blocks, slots) * seg_len, n_seg, seg_len))
    best = min(cost for cost, _, _ in options)
    return next((n_seg, seg_len) for cost, n_seg, seg_len in options if cost <= 1.15 * best)


def chunk_state_launch(x, dtcs, B, initial_states, table, s_in, carry_decay, seg_state, seg_decay, final,
                       final_decay, geometry: dict, cfg: dict, dot_precision: str):
    """Stage 1 over all chunks; dtcs [3, B, H, L] from stage 0 (ssd_scan_chunk_cumsum); `geometry` from
    ops/ssd_scan.py (n_chunks, n_table, chunks_per_row, n_seg, seg_len, Q), `cfg` a chunk_state_config tile; see the
    kernel for the buffers. -> the launched CompiledKernel (its n_regs / n_spills for sweeps)."""
    _, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    assert x.stride(3) == 1 and B.stride(3) == 1, "ssd_scan chunk_state: x, B need a unit last stride"
    row_len = geometry["dtcs_len"]
    assert dtcs.is_contiguous() and dtcs.shape == (3, x.shape[0], nheads, row_len), \
        "ssd_scan chunk_state: stage 0's dtcs"
    assert initial_states is None or initial_states.stride(3) == 1, "ssd_scan: initial_states needs a unit N stride"
    assert s_in.is_contiguous() and seg_state.is_contiguous(), "ssd_scan: state buffers must be contiguous"
    init = initial_states if initial_states is not None else seg_state
    grid = (geometry["n_seg"], nheads, cdiv(headdim, cfg["BLOCK_P"]))
    return _ssd_chunk_state_kernel[grid](
        x, dtcs, B, init, table if table is not None else dtcs,
        s_in, carry_decay, seg_state, seg_decay,
        final if final is not None else seg_state, final_decay if final_decay is not None else seg_decay,
        seqlen, geometry["n_chunks"], geometry["n_table"], geometry["chunks_per_row"], geometry["seg_len"],
        headdim, dstate, nheads // ngroups, nheads, dtcs[0].numel(),
        x.stride(0), x.stride(1), x.stride(2), B.stride(0), B.stride(1), B.stride(2),
        init.stride(0), init.stride(1), init.stride(2),
        Q=geometry["Q"], BLOCK_P=cfg["BLOCK_P"], BLOCK_N=cfg["BLOCK_N"], HAS_INIT=initial_states is not None,
        HAS_FINAL=final is not None, IS_VARLEN=table is not None, DOT_PRECISION=dot_precision,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], maxnreg=cfg["maxnreg"])


def aot_compile_all(cfg: dict | None = None):
    """(name, CompiledKernel) at NemotronH's shapes (P=64, N=128, Q=128, bf16, bf16 S_in), sm_90a, at the tile `cfg`
    (default: chunk_state_config's); the batched variant first."""
    from .mamba_common import aot_compile
    cfg = cfg or chunk_state_config(64, 128, 128)
    sig = {"x_ptr": "*bf16", "dtcs_ptr": "*fp32", "B_ptr": "*bf16",
           "init_ptr": "*fp32", "table_ptr": "*i32", "s_in_ptr": "*bf16", "carry_decay_ptr": "*fp32",
           "seg_state_ptr": "*fp32", "seg_decay_ptr": "*fp32", "final_ptr": "*fp32", "final_decay_ptr": "*fp32",
           "seqlen": "i32", "n_chunks": "i32", "n_table": "i32", "chunks_per_row": "i32", "seg_len": "i32",
           "headdim": "i32", "dstate": "i32", "heads_per_group": "i32", "nheads": "i32", "plane": "i32",
           "stride_x_b": "i64", "stride_x_l": "i64", "stride_x_h": "i32",
           "stride_B_b": "i64", "stride_B_l": "i64", "stride_B_g": "i32", "stride_init_s": "i64",
           "stride_init_h": "i32", "stride_init_p": "i32"}
    for varlen, has_init in ((False, False), (True, True)):
        consts = {"Q": 128, "BLOCK_P": cfg["BLOCK_P"], "BLOCK_N": cfg["BLOCK_N"], "HAS_INIT": has_init,
                  "HAS_FINAL": True, "IS_VARLEN": varlen,
                  "DOT_PRECISION": "tf32"}
        yield (f"ssd_chunk_state varlen={varlen} init={has_init}",
               aot_compile(_ssd_chunk_state_kernel, sig, consts, num_warps=cfg["num_warps"],
                           num_stages=cfg["num_stages"], maxnreg=cfg["maxnreg"], aligned=aot_aligned(varlen)))
