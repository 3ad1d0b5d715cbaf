"""SSD scan backward stage 1 (Triton): state gradients, carried backwards through a *segment* of chunks.

G^c = dL/dS_out^c, the gradient of the state leaving chunk c, obeys the reverse recurrence
    G^{c-1} = dL/dS_in^c = exp(sum_chunk dt A) G^c + sum_t exp(cs_t) dy_t C_t^T     (cs: cumsum of dt A in chunk c)
with G = dfinal (or 0) at the last chunk of a sequence. Program (segment, head h, block of P rows) walks its chunks
last to first like forward stage 1 walks them first to last: it stores G_out of each chunk (counted from the
segment end) and gcarry_decay, the decay from the chunk's end to the segment end (0 once a sequence ended inside
the segment); at a sequence start it stores the (segment-local) gradient of the initial state and its decay.
The segment's gradient and decay are stored at the *reversed* segment index n_seg - 1 - seg, so forward stage 2
(ssd_scan_state_passing) run on them yields gcarry[n_seg - 1 - seg], the gradient entering the segment's end from
the later segments: G^c = G_out[c] + gcarry_decay[c] * gcarry[n_seg - 1 - seg].
"""
import triton
import triton.language as tl

from . import ssd_scan_common
from .common import cdiv
from .mamba_common import dep_tokens, interpreting
from .ssd_scan_common import _chunk_cs_end, _chunk_dtcs, _chunk_info, _dtcs_row, _dtcs_span, aot_aligned

INTERPRETED = interpreting()
LOAD_TOKEN = object()
DEPENDS = ("ssd_scan_common",)
DEP_TOKENS = dep_tokens(ssd_scan_common)


@triton.jit
def _ssd_bwd_chunk_state_kernel(
    dy_ptr, dtcs_ptr, C_ptr, dfinal_ptr, table_ptr,  # dtcs [3, B, H, L] fp32: stage 0's dt, cumulative dt A (hi, lo)
    g_out_ptr,                    # [n_chunks, H, P, N] dL/dS_out of each chunk (from the segment end), state dtype
    gcarry_decay_ptr,             # [n_chunks, H] fp32
    seg_g_ptr, seg_decay_ptr,     # [n_seg, H, P, N] fp32, [n_seg, H] fp32, reversed segment order
    dinit_ptr, dinit_decay_ptr,   # [n_states, H, P, N] fp32, [n_states, H] fp32
    seqlen, n_chunks, n_table, chunks_per_row, seg_len, n_seg, headdim, dstate, heads_per_group, nheads, plane,
    stride_dy_b, stride_dy_l, stride_dy_h,    # dy [B, L, H, P], unit P stride
    stride_C_b, stride_C_l, stride_C_g,       # C [B, L, G, N], unit N stride
    stride_df_s, stride_df_h, stride_df_p,    # dfinal [n_states, H, P, N], unit N stride
    Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_DFINAL: tl.constexpr, HAS_DINIT: tl.constexpr,
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

    G = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    carry = tl.full([], 1.0, tl.float32)                                   # decay to the segment end
    gc_start = seg * seg_len
    gc_end = tl.minimum(gc_start + seg_len, n_chunks)
    # packed, each chunk's table entry is loaded one step ahead (as in the forward's chunk_state walk)
    nb, nseq, nstart, nlength, nfirst, nlast = _chunk_info(tl.maximum(gc_end - 1, 0), table_ptr, n_table, seqlen,
                                                           chunks_per_row, Q, IS_VARLEN)
    for i in range(gc_end - gc_start):
        gc = gc_end - 1 - i
        if IS_VARLEN:
            b, seq, start, length, first, last = nb, nseq, nstart, nlength, nfirst, nlast
            nb, nseq, nstart, nlength, nfirst, nlast = _chunk_info(tl.maximum(gc - 1, 0), table_ptr, n_table,
                                                                   seqlen, chunks_per_row, Q, IS_VARLEN)
        else:
            b, seq, start, length, first, last = _chunk_info(gc, table_ptr, n_table, seqlen, chunks_per_row, Q,
                                                             IS_VARLEN)
        dt_len, dt_pos = _dtcs_span(gc, start, seqlen, n_table, Q, IS_VARLEN)
        b = tl.cast(b, tl.int64)
        seq = tl.cast(seq, tl.int64)
        dt_row = _dtcs_row(dtcs_ptr, b, h, nheads, dt_len, dt_pos)
        if HAS_DFINAL:
            dfinal = tl.load(dfinal_ptr + seq * stride_df_s + h * stride_df_h + offs_p[:, None] * stride_df_p
                             + offs_n[None, :], mask=pn_ok & last, other=0.0).to(tl.float32)
            G = tl.where(last, dfinal, G)
        else:
            G = tl.where(last, 0.0, G)
        carry = tl.where(last, 0.0, carry)
        head_chunk = tl.cast(gc, tl.int64) * nheads + h
        tl.store(g_out_ptr + head_chunk * state_size + pn_offs, G.to(g_out_ptr.dtype.element_ty),
                 mask=pn_ok & (length > 0))
        if pid_p == 0:
            tl.store(gcarry_decay_ptr + head_chunk, carry)

        rows = (start + offs_q).to(tl.int64)
        q_ok = offs_q < length
        dt, cs_hi, cs_lo = _chunk_dtcs(dt_row, plane, offs_q, q_ok)  # [Q]
        end_hi, end_lo = _chunk_cs_end(dt_row, plane, length)   # cs_Q
        decay = tl.exp(end_hi + end_lo)
        dy = tl.load(dy_ptr + b * stride_dy_b + rows[:, None] * stride_dy_l + h * stride_dy_h + offs_p[None, :],
                     mask=q_ok[:, None] & p_ok[None, :], other=0.0)                 # [Q, BLOCK_P]
        Ct = tl.load(C_ptr + b * stride_C_b + rows[:, None] * stride_C_l + g * stride_C_g + offs_n[None, :],
                     mask=q_ok[:, None] & n_ok[None, :], other=0.0)                 # [Q, BLOCK_N]
        Cw = (Ct.to(tl.float32) * tl.exp(cs_hi)[:, None]).to(dy_ptr.dtype.element_ty)
        G = tl.dot(tl.trans(dy), Cw, G * decay, input_precision=DOT_PRECISION)      # [BLOCK_P, BLOCK_N]
        carry = carry * decay
        if HAS_DINIT:
            tl.store(dinit_ptr + seq * nheads * state_size + h * state_size + pn_offs, G, mask=pn_ok & first)
            if pid_p == 0:
                tl.store(dinit_decay_ptr + seq * nheads + h, carry, mask=first)
        G = tl.where(first, 0.0, G)                   # nothing flows back past a sequence start
        carry = tl.where(first, 0.0, carry)
    rseg = tl.cast(n_seg - 1 - seg, tl.int64) * nheads + h
    tl.store(seg_g_ptr + rseg * state_size + pn_offs, G, mask=pn_ok)
    if pid_p == 0:
        tl.store(seg_decay_ptr + rseg, carry)


def bwd_chunk_state_launch(dy, dtcs, C, dfinal, table, g_out, gcarry_decay, seg_g, seg_decay, dinit, dinit_decay,
                           geometry: dict, cfg: dict, dot_precision: str):
    """Backward stage 1 over all chunks; dtcs [3, B, H, L] from stage 0; `geometry` and `cfg` as forward stage 1
    (ssd_scan_chunk_state). -> the launched CompiledKernel."""
    _, seqlen, nheads, headdim = dy.shape
    ngroups, dstate = C.shape[2], C.shape[3]
    assert dy.stride(3) == 1 and C.stride(3) == 1, "ssd_scan bwd chunk_state: dy, C need a unit last stride"
    row_len = geometry["dtcs_len"]
    assert dtcs.is_contiguous() and dtcs.shape == (3, dy.shape[0], nheads, row_len), "ssd_scan bwd: stage 0's dtcs"
    assert dfinal is None or dfinal.stride(3) == 1, "ssd_scan bwd: dfinal needs a unit N stride"
    assert g_out.is_contiguous() and seg_g.is_contiguous(), "ssd_scan bwd: state buffers must be contiguous"
    assert dinit is None or dinit.is_contiguous(), "ssd_scan bwd: dinit must be contiguous"
    df = dfinal if dfinal is not None else seg_g
    grid = (geometry["n_seg"], nheads, cdiv(headdim, cfg["BLOCK_P"]))
    return _ssd_bwd_chunk_state_kernel[grid](
        dy, dtcs, C, df, table if table is not None else dtcs,
        g_out, gcarry_decay, seg_g, seg_decay,
        dinit if dinit is not None else seg_g, dinit_decay if dinit_decay is not None else seg_decay,
        seqlen, geometry["n_chunks"], geometry["n_table"], geometry["chunks_per_row"], geometry["seg_len"],
        geometry["n_seg"], headdim, dstate, nheads // ngroups, nheads, dtcs[0].numel(),
        dy.stride(0), dy.stride(1), dy.stride(2), C.stride(0), C.stride(1), C.stride(2),
        df.stride(0), df.stride(1), df.stride(2),
        Q=geometry["Q"], BLOCK_P=cfg["BLOCK_P"], BLOCK_N=cfg["BLOCK_N"], HAS_DFINAL=dfinal is not None,
        HAS_DINIT=dinit is not None,
        IS_VARLEN=table is not None, DOT_PRECISION=dot_precision, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], maxnreg=cfg["maxnreg"])


def aot_compile_all(cfg: dict | None = None):
    """(name, CompiledKernel) at NemotronH's shapes (P=64, N=128, Q=128, bf16, bf16 G_out), sm_90a, at the tile `cfg`
    (default: chunk_state_config's); the batched variant first."""
    from .mamba_common import aot_compile
    from .ssd_scan_chunk_state import chunk_state_config
    cfg = cfg or chunk_state_config(64, 128, 128, backward=True)
    sig = {"dy_ptr": "*bf16", "dtcs_ptr": "*fp32", "C_ptr": "*bf16",
           "dfinal_ptr": "*fp32", "table_ptr": "*i32", "g_out_ptr": "*bf16", "gcarry_decay_ptr": "*fp32",
           "seg_g_ptr": "*fp32", "seg_decay_ptr": "*fp32", "dinit_ptr": "*fp32", "dinit_decay_ptr": "*fp32",
           "seqlen": "i32", "n_chunks": "i32", "n_table": "i32", "chunks_per_row": "i32", "seg_len": "i32",
           "n_seg": "i32", "headdim": "i32", "dstate": "i32", "heads_per_group": "i32", "nheads": "i32",
           "plane": "i32", "stride_dy_b": "i64", "stride_dy_l": "i64", "stride_dy_h": "i32", "stride_C_b": "i64",
           "stride_C_l": "i64", "stride_C_g": "i32",
           "stride_df_s": "i64", "stride_df_h": "i32", "stride_df_p": "i32"}
    for varlen, has_init in ((False, False), (True, True)):
        consts = {"Q": 128, "BLOCK_P": cfg["BLOCK_P"], "BLOCK_N": cfg["BLOCK_N"], "HAS_DFINAL": True,
                  "HAS_DINIT": has_init, "IS_VARLEN": varlen,
                  "DOT_PRECISION": "tf32"}
        yield (f"ssd_bwd_chunk_state varlen={varlen} init={has_init}",
               aot_compile(_ssd_bwd_chunk_state_kernel, sig, consts, num_warps=cfg["num_warps"],
                           num_stages=cfg["num_stages"], maxnreg=cfg["maxnreg"], aligned=aot_aligned(varlen)))
