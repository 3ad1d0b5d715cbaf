"""SSD scan stage 3 (Triton): the outputs of every chunk, fully parallel over chunks.

Program (chunk gc, group g and a run of its heads, block of BLOCK_M rows t of the chunk, block of BLOCK_P of the
head's P channels: C B^T is recomputed per P block). Causal, so it computes
C B^T only for the s at or before its rows: the diagonal block (s in its own rows, masked s <= t) and, past the
chunk's first block, the off-diagonal block (the s before it), each once for the group's heads (tl.dot):
    y_t = sum_{s<=t} CB[t, s] exp(cs_t - cs_s) dt_s x_s          (intra-chunk, tl.dot with X, per block)
        + exp(cs_t) C_t . S_in                                   (state entering the chunk, tl.dot)
        + D x_t
with cs the cumulative sum of dt A in the chunk and S_in = stage 1's state (+ carry_decay * stage 2's carry
when the scan has several segments). The first row block skips the off-diagonal work: a quarter of the
intra-chunk work at two blocks per chunk."""
import triton
import triton.language as tl

from . import ssd_scan_common
from .common import cdiv, next_power_of_2
from .mamba_common import dep_tokens, interpreting
from .ssd_scan_common import _chunk_dtcs, _chunk_info, _dtcs_row, _dtcs_span, _past_chunk_end, aot_aligned

INTERPRETED = interpreting()
LOAD_TOKEN = object()
DEPENDS = ("ssd_scan_common",)
DEP_TOKENS = dep_tokens(ssd_scan_common)


@triton.jit
def _ssd_chunk_scan_kernel(
    x_ptr, dtcs_ptr, B_ptr, C_ptr, D_ptr, table_ptr,
    s_in_ptr, carry_decay_ptr, carry_ptr,     # stage 1 / 2 outputs (S_in and carry in the chunk-state dtype)
    y_ptr,                                    # [B, L, H, P]
    seqlen, n_table, chunks_per_row, seg_len, headdim, dstate, heads_per_group, nheads, plane,
    stride_x_b, stride_x_l, stride_x_h,
    stride_B_b, stride_B_l, stride_B_g,
    stride_C_b, stride_C_l, stride_C_g,
    stride_y_b, stride_y_l, stride_y_h,
    Q: tl.constexpr, BLOCK_M: tl.constexpr, OFF: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HEADS_PER_PROG: tl.constexpr,
    HAS_D: tl.constexpr, HAS_CARRY: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # a chunk's programs are adjacent (row and P blocks innermost, then heads): its B, C rows stay in L2
    p_blocks = tl.cdiv(headdim, BLOCK_P)
    n_mp = tl.cdiv(Q, BLOCK_M) * p_blocks
    n_gh = nheads // HEADS_PER_PROG
    gc = tl.program_id(0) // (n_gh * n_mp)
    pid_gh = tl.program_id(0) // n_mp % n_gh
    pid_m = tl.program_id(0) % n_mp // p_blocks
    pid_p = tl.program_id(0) % p_blocks
    splits = heads_per_group // HEADS_PER_PROG
    g = pid_gh // splits
    h0 = g * heads_per_group + (pid_gh % splits) * HEADS_PER_PROG
    b, _, start, length, _, _ = _chunk_info(gc, table_ptr, n_table, seqlen, chunks_per_row, Q, IS_VARLEN)
    dt_len, dt_pos = _dtcs_span(gc, start, seqlen, n_table, Q, IS_VARLEN)
    if _past_chunk_end(pid_m * BLOCK_M, length, IS_VARLEN):
        return
    b = tl.cast(b, tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)          # rows t of the chunk (and the diagonal block's s)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    m_ok = offs_m < length
    p_ok = offs_p < headdim
    n_ok = offs_n < dstate
    rows_m = (start + offs_m).to(tl.int64)

    C_m = tl.load(C_ptr + b * stride_C_b + rows_m[:, None] * stride_C_l + g * stride_C_g + offs_n[None, :],
                  mask=m_ok[:, None] & n_ok[None, :], other=0.0)                     # [BLOCK_M, BLOCK_N]
    B_m = tl.load(B_ptr + b * stride_B_b + rows_m[:, None] * stride_B_l + g * stride_B_g + offs_n[None, :],
                  mask=m_ok[:, None] & n_ok[None, :], other=0.0)                     # [BLOCK_M, BLOCK_N]
    # (C B^T)^T: the [s, t] orientation keeps the per-column vectors (over t) short in the MMA layout. Causal: only
    # the diagonal block (s in this block) and the off-diagonal one (s before it; none in the chunk's first block)
    # are computed, once for all of the program's heads.
    BC_d = tl.dot(B_m, tl.trans(C_m), input_precision=DOT_PRECISION)                 # [BLOCK_M, BLOCK_M] fp32
    causal = (offs_m[:, None] <= offs_m[None, :]) & m_ok[:, None]
    if OFF > 0:   # OFF: a power of two >= Q - BLOCK_M (0 when the block is the whole chunk)
        offs_o = tl.arange(0, OFF)                            # the s before this block: [0, pid_m * BLOCK_M)
        o_ok = (offs_o < pid_m * BLOCK_M) & (offs_o < length)
        rows_o = (start + offs_o).to(tl.int64)
        BC_o = tl.zeros([OFF, BLOCK_M], tl.float32)
        if pid_m > 0:
            B_o = tl.load(B_ptr + b * stride_B_b + rows_o[:, None] * stride_B_l + g * stride_B_g + offs_n[None, :],
                          mask=o_ok[:, None] & n_ok[None, :], other=0.0)             # [OFF, BLOCK_N]
            BC_o = tl.dot(B_o, tl.trans(C_m), input_precision=DOT_PRECISION)         # [OFF, BLOCK_M] fp32
    state_size = headdim * dstate
    pn_offs = offs_p[:, None] * dstate + offs_n[None, :]
    pn_ok = p_ok[:, None] & n_ok[None, :] & (length > 0)    # padding chunk slots (packed) have no state
    if HAS_CARRY:
        seg = gc // seg_len

    for hh in range(HEADS_PER_PROG):
        h = h0 + hh
        dt_row = _dtcs_row(dtcs_ptr, b, h, nheads, dt_len, dt_pos)
        dt_m, cs_m_hi, cs_m_lo = _chunk_dtcs(dt_row, plane, offs_m, m_ok)  # [BLOCK_M]
        x_m = tl.load(x_ptr + b * stride_x_b + rows_m[:, None] * stride_x_l + h * stride_x_h + offs_p[None, :],
                      mask=m_ok[:, None] & p_ok[None, :], other=0.0)                   # [BLOCK_M, BLOCK_P]
        acc = tl.zeros([BLOCK_M, BLOCK_P], tl.float32)
        if OFF > 0 and pid_m > 0:
            dt_o, cs_o_hi, cs_o_lo = _chunk_dtcs(dt_row, plane, offs_o, o_ok)  # [OFF]
            seg_o = tl.minimum((cs_m_hi[None, :] - cs_o_hi[:, None]) + (cs_m_lo[None, :] - cs_o_lo[:, None]), 0.0)
            M_o = (BC_o * tl.where(o_ok[:, None], tl.exp(seg_o), 0.0) * dt_o[:, None]).to(x_ptr.dtype.element_ty)
            x_o = tl.load(x_ptr + b * stride_x_b + rows_o[:, None] * stride_x_l + h * stride_x_h + offs_p[None, :],
                          mask=o_ok[:, None] & p_ok[None, :], other=0.0)               # [OFF, BLOCK_P]
            acc = tl.dot(tl.trans(M_o), x_o, acc, input_precision=DOT_PRECISION)      # [BLOCK_M, BLOCK_P]
        seg_d = tl.minimum((cs_m_hi[None, :] - cs_m_hi[:, None]) + (cs_m_lo[None, :] - cs_m_lo[:, None]), 0.0)
        M_d = (BC_d * tl.where(causal, tl.exp(seg_d), 0.0) * dt_m[:, None]).to(x_ptr.dtype.element_ty)
        acc = tl.dot(tl.trans(M_d), x_m, acc, input_precision=DOT_PRECISION)          # [BLOCK_M, BLOCK_P]

        head_chunk = tl.cast(gc, tl.int64) * nheads + h
        S = tl.load(s_in_ptr + head_chunk * state_size + pn_offs, mask=pn_ok, other=0.0).to(tl.float32)
        if HAS_CARRY:
            carry_decay = tl.load(carry_decay_ptr + head_chunk)
            if carry_decay != 0.0:   # 0 in a segment's first sequence-start chunk and once the decay underflows
                S += carry_decay * tl.load(carry_ptr + (tl.cast(seg, tl.int64) * nheads + h) * state_size + pn_offs,
                                           mask=pn_ok, other=0.0).to(tl.float32)
        acc_state = tl.dot(C_m, tl.trans(S.to(x_ptr.dtype.element_ty)), input_precision=DOT_PRECISION)
        acc += acc_state * tl.exp(cs_m_hi)[:, None]
        if HAS_D:
            acc += tl.load(D_ptr + h).to(tl.float32) * x_m.to(tl.float32)
        tl.store(y_ptr + b * stride_y_b + rows_m[:, None] * stride_y_l + h * stride_y_h + offs_p[None, :],
                 acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & p_ok[None, :])


def chunk_scan_config(n_chunks: int, ngroups: int, heads_per_group: int, headdim: int, dstate: int, chunk: int,
                      sm_count: int) -> dict:
    """Default tile: BLOCK_M rows per program (half the chunk, 16..64), and how many heads of a group one program
    walks: as many as keep >= 4 programs per SM (so CB is computed once for all of them at long sequences); all
    of them in Triton's interpreter (sm_count 0). On the GPU ("autotune"), BLOCK_M / num_warps / num_stages are
    autotuned over autotune_configs; a config without "autotune" launches its own tile. maxnreg: ptxas' register
    cap per thread (None: up to 255)."""
    block_m = max(16, min(chunk // 2, 64))
    block_p = max(16, next_power_of_2(headdim))
    block_n = max(16, next_power_of_2(dstate))
    m_blocks = cdiv(chunk, block_m)
    heads = heads_per_group
    while sm_count and heads % 2 == 0 and n_chunks * ngroups * (heads_per_group // heads) * m_blocks < 4 * sm_count:
        heads //= 2
    num_warps = 8 if block_m * max(chunk, block_n) >= 8192 else 4
    return {"BLOCK_M": block_m, "BLOCK_P": block_p, "BLOCK_N": block_n, "HEADS_PER_PROG": heads,
            "num_warps": num_warps, "num_stages": 2, "maxnreg": None, "autotune": sm_count > 0}


def off_rows(chunk: int, block_m: int) -> int:
    """OFF: the rows of the off-diagonal block (the s before a row block), a power of two >= chunk - block_m and
    >= 16 (tl.dot); 0 when one block is the whole chunk."""
    return 0 if block_m >= chunk else max(16, next_power_of_2(chunk - block_m))


def autotune_configs(chunk: int) -> list[dict]:
    """The few tiles tried on the GPU (each compiles on a fresh machine): half or whole chunk rows at 8 warps, and
    half rows at 4 warps and 1 stage, 2 programs per SM (H200, B1 L32K: 640 us against 720 us for the best 8-warp
    tile; bench/NOTES.md, session 23)."""
    half = max(16, min(chunk // 2, 64))
    rows = sorted({half, min(chunk, 128)})
    return [{"BLOCK_M": m, "num_warps": 8, "num_stages": 2} for m in rows] + \
        [{"BLOCK_M": half, "num_warps": 4, "num_stages": 1}]


_AUTOTUNED = {}


def _autotuned_kernel(chunk: int):
    """The kernel under triton.autotune over autotune_configs(chunk) (key: the shapes that change the best tile)."""
    if chunk not in _AUTOTUNED:
        configs = [triton.Config({"BLOCK_M": c["BLOCK_M"], "OFF": off_rows(chunk, c["BLOCK_M"])},
                                 num_warps=c["num_warps"], num_stages=c["num_stages"]) for c in autotune_configs(chunk)]
        _AUTOTUNED[chunk] = triton.autotune(configs=configs, key=["headdim", "dstate", "heads_per_group"])(
            _ssd_chunk_scan_kernel)
    return _AUTOTUNED[chunk]


def chunk_scan_launch(x, dtcs, B, C, D, table, s_in, carry_decay, carry, y, geometry: dict, cfg: dict,
                      dot_precision: str):
    """Stage 3 over all chunks at the tile `cfg` (chunk_scan_config); dtcs [3, B, H, L] from stage 0
    (chunk_cumsum_launch). -> the launched CompiledKernel."""
    _, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    assert x.stride(3) == 1 and B.stride(3) == 1 and C.stride(3) == 1 and y.stride(3) == 1, \
        "ssd_scan chunk_scan: x, B, C, y need a unit last stride"
    row_len = geometry["dtcs_len"]
    assert dtcs.is_contiguous() and dtcs.shape == (3, x.shape[0], nheads, row_len), \
        "ssd_scan chunk_scan: stage 0's dtcs"
    hpg = nheads // ngroups
    chunk = geometry["Q"]

    def grid(meta):
        return (geometry["n_chunks"] * ngroups * (hpg // cfg["HEADS_PER_PROG"])
                * cdiv(chunk, meta["BLOCK_M"]) * cdiv(headdim, cfg["BLOCK_P"]),)

    args = (x, dtcs, B, C, D if D is not None else dtcs, table if table is not None else dtcs, s_in, carry_decay,
            carry if carry is not None else s_in, y, seqlen, geometry["n_table"], geometry["chunks_per_row"],
            geometry["seg_len"], headdim, dstate, hpg, nheads, dtcs[0].numel(), x.stride(0), x.stride(1), x.stride(2),
            B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2), y.stride(0), y.stride(1),
            y.stride(2))
    consts = dict(Q=chunk, BLOCK_P=cfg["BLOCK_P"], BLOCK_N=cfg["BLOCK_N"], HEADS_PER_PROG=cfg["HEADS_PER_PROG"],
                  HAS_D=D is not None, HAS_CARRY=carry is not None, IS_VARLEN=table is not None,
                  DOT_PRECISION=dot_precision)
    if cfg.get("autotune"):
        return _autotuned_kernel(chunk)[grid](*args, **consts)
    return _ssd_chunk_scan_kernel[grid](*args, BLOCK_M=cfg["BLOCK_M"], OFF=off_rows(chunk, cfg["BLOCK_M"]),
                                        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                                        maxnreg=cfg["maxnreg"], **consts)


def aot_compile_all(cfg: dict | None = None):
    """(name, CompiledKernel) at NemotronH's shapes (P=64, N=128, Q=128, G=8, bf16), sm_90a: every autotune tile of
    the main variant, and the packed / single-segment variants at the default tile; with `cfg`, the three variants
    at that tile (the main one first)."""
    from .mamba_common import aot_compile
    default = chunk_scan_config(256, 8, 8, 64, 128, 128, 132)
    mains = [cfg] if cfg else [dict(default, **c) for c in autotune_configs(128)]
    cfg = cfg or default
    sig = {"x_ptr": "*bf16", "dtcs_ptr": "*fp32", "B_ptr": "*bf16", "C_ptr": "*bf16", "D_ptr": "*fp32",
           "table_ptr": "*i32", "s_in_ptr": "*bf16", "carry_decay_ptr": "*fp32", "carry_ptr": "*bf16",
           "y_ptr": "*bf16", "seqlen": "i32", "n_table": "i32", "chunks_per_row": "i32", "seg_len": "i32",
           "headdim": "i32", "dstate": "i32", "heads_per_group": "i32", "nheads": "i32", "plane": "i32",
           "stride_x_b": "i64", "stride_x_l": "i64", "stride_x_h": "i32", "stride_B_b": "i64", "stride_B_l": "i64",
           "stride_B_g": "i32",
           "stride_C_b": "i64", "stride_C_l": "i64", "stride_C_g": "i32", "stride_y_b": "i64", "stride_y_l": "i64",
           "stride_y_h": "i32"}
    tiles = [(c, False, True) for c in mains] + [(cfg, True, True), (cfg, False, False)]
    for tile, varlen, carry in tiles:
        consts = {"Q": 128, "BLOCK_M": tile["BLOCK_M"], "OFF": off_rows(128, tile["BLOCK_M"]),
                  "BLOCK_P": tile["BLOCK_P"], "BLOCK_N": tile["BLOCK_N"],
                  "HEADS_PER_PROG": tile["HEADS_PER_PROG"], "HAS_D": True, "HAS_CARRY": carry, "IS_VARLEN": varlen,
                  "DOT_PRECISION": "tf32"}
        yield (f"ssd_chunk_scan BLOCK_M={tile['BLOCK_M']} warps={tile['num_warps']} varlen={varlen} carry={carry}",
               aot_compile(_ssd_chunk_scan_kernel, sig, consts, num_warps=tile["num_warps"],
                           num_stages=tile["num_stages"], maxnreg=tile["maxnreg"], aligned=aot_aligned(varlen)))
