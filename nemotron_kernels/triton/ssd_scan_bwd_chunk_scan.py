"""SSD scan backward stage 2 (Triton): the gradients of every chunk, fully parallel over chunks, four kernels
(da, dx, dC, dB, launched in that order).

Per chunk and head, with cs the cumulative sum of a = dt A in the chunk, M[t, s] = (C_t . B_s) exp(cs_t - cs_s)
(s <= t), S_in the state entering the chunk (forward stages 1-2, recomputed) and G = dL/dS_out (backward stage 1):
  dx kernel (program: chunk and head on the GPU; chunk and a group's heads, sharing CB = C B^T, in the interpreter):
    dxpre_s = sum_t M[t, s] dy_t + exp(cs_Q - cs_s) G B_s          dx_s = dt_s dxpre_s + D dy_s
    ddt_s   = x_s . dxpre_s + A da_s      (times softplus' when dt_softplus)
    da_k    = dL/d(dt_k A): the terms whose decay spans token k (see the kernel), the intra-chunk pairs s < k <= t
              summed by the da kernel (program: chunk, head, block of rows t; the columns in blocks up to the
              diagonal, a cumulative sum over each with the prefix carried), directly over the pairs (row-minus-
              column sums of the pair terms, dy . y - x . dx, would cancel their large diagonal terms in rounding);
    per (chunk, head) partial sums of dA = sum_k dt_k da_k and dD = sum_t dy_t . x_t (summed in torch).
  dB / dC kernel (program: chunk, group, block of rows; the group's heads summed in registers, no atomics). The
  intra-chunk pair weights of the heads share B (C) and are summed in fp32 before one product with it; dC writes
  the summed weights (rounded to x's dtype, as its product uses them) and dB, launched after it, reads them
  transposed; the state terms take a product per head:
    dC_t = sum_h [ sum_{s <= t} (dy_t . x_s) exp(cs_t - cs_s) dt_s B_s + exp(cs_t) dy_t S_in ]
    dB_s = sum_h [ sum_{t >= s} (x_s . dy_t) exp(cs_t - cs_s) dt_s C_t + exp(cs_Q - cs_s) dt_s x_s G ]
Every output element is written by exactly one program and every sum runs in a fixed order, so the backward is
deterministic (bitwise identical across runs)."""
import triton
import triton.language as tl

from . import ssd_scan_common
from .common import cdiv, next_power_of_2
from .mamba_common import dep_tokens, interpreting
from .ssd_scan_common import (_chunk_cs_end, _chunk_dt_grad_scale, _chunk_dtcs, _chunk_info, _chunk_state_full,
                              _dtcs_row, _dtcs_span, _past_chunk_end, aot_aligned)

INTERPRETED = interpreting()
LOAD_TOKEN = object()
DEPENDS = ("ssd_scan_common",)
DEP_TOKENS = dep_tokens(ssd_scan_common)


@triton.jit
def _ssd_bwd_dx_kernel(
    x_ptr, dt_ptr, dtcs_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dt_bias_ptr, table_ptr, dy_ptr,
    s_in_ptr, carry_decay_ptr, carry_ptr,       # forward: S_in from the segment start, decay, carry (state dtype)
    g_out_ptr, gcarry_decay_ptr, gcarry_ptr,    # backward stage 1: G from the segment end, decay, carry (reversed)
    dx_ptr,                                     # [B, L, H, P] x's dtype
    ddt_ptr,                                    # [B, L, H] dt's dtype, gradient of the raw dt input
    dA_part_ptr, dD_part_ptr, dbias_part_ptr,   # [n_chunks, H] fp64 partial sums (dbias: with HAS_DT_BIAS)
    da_part_ptr,                                # [n_chunks, M_BLOCKS, H, Q] fp32 intra-chunk parts of da (da kernel)
    seqlen, n_table, chunks_per_row, seg_len, n_seg, headdim, dstate, heads_per_group, nheads, plane,
    stride_x_b, stride_x_l, stride_x_h,
    stride_dt_b, stride_dt_l,
    stride_B_b, stride_B_l, stride_B_g,
    stride_C_b, stride_C_l, stride_C_g,
    stride_dy_b, stride_dy_l, stride_dy_h,
    stride_dx_b, stride_dx_l, stride_dx_h,
    stride_ddt_b, stride_ddt_l,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, HEADS_PER_PROG: tl.constexpr,
    M_BLOCKS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    HAS_CARRY: tl.constexpr,
    IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    n_gh = nheads // HEADS_PER_PROG                           # a chunk's programs are adjacent: B, C stay in L2
    gc = tl.program_id(0) // n_gh
    pid_gh = tl.program_id(0) % n_gh
    splits = heads_per_group // HEADS_PER_PROG
    g = pid_gh // splits
    h0 = g * heads_per_group + (pid_gh % splits) * HEADS_PER_PROG
    b, _, start, length, _, _ = _chunk_info(gc, table_ptr, n_table, seqlen, chunks_per_row, Q, IS_VARLEN)
    dt_len, dt_pos = _dtcs_span(gc, start, seqlen, n_table, Q, IS_VARLEN)
    if _past_chunk_end(0, length, IS_VARLEN):     # a spare slot: no tokens, zero partial sums
        for hh in range(HEADS_PER_PROG):
            tl.store(dA_part_ptr + tl.cast(gc, tl.int64) * nheads + h0 + hh, 0.0)
            tl.store(dD_part_ptr + tl.cast(gc, tl.int64) * nheads + h0 + hh, 0.0)
            if HAS_DT_BIAS:
                tl.store(dbias_part_ptr + tl.cast(gc, tl.int64) * nheads + h0 + hh, 0.0)
        return
    b = tl.cast(b, tl.int64)
    dtype = x_ptr.dtype.element_ty

    offs_q = tl.arange(0, Q)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    q_ok = offs_q < length
    p_ok = offs_p < headdim
    n_ok = offs_n < dstate
    rows = (start + offs_q).to(tl.int64)
    qp_ok = q_ok[:, None] & p_ok[None, :]

    C_q = tl.load(C_ptr + b * stride_C_b + rows[:, None] * stride_C_l + g * stride_C_g + offs_n[None, :],
                  mask=q_ok[:, None] & n_ok[None, :], other=0.0)                     # [Q, BLOCK_N]
    B_q = tl.load(B_ptr + b * stride_B_b + rows[:, None] * stride_B_l + g * stride_B_g + offs_n[None, :],
                  mask=q_ok[:, None] & n_ok[None, :], other=0.0)                     # [Q, BLOCK_N]
    CB = tl.dot(C_q, tl.trans(B_q), input_precision=DOT_PRECISION)                  # [Q, Q]: t, s
    causal = offs_q[:, None] >= offs_q[None, :]
    state_size = headdim * dstate
    pn_offs = offs_p[:, None] * dstate + offs_n[None, :]
    pn_ok = p_ok[:, None] & n_ok[None, :] & (length > 0)    # padding chunk slots (packed) have no state
    seg = gc // seg_len

    for hh in range(HEADS_PER_PROG):
        h = h0 + hh
        dt_row = _dtcs_row(dtcs_ptr, b, h, nheads, dt_len, dt_pos)
        A = tl.load(A_ptr + h).to(tl.float32)
        dt, cs_hi, cs_lo = _chunk_dtcs(dt_row, plane, offs_q, q_ok)  # [Q], stage 0's
        end_hi, end_lo = _chunk_cs_end(dt_row, plane, length)   # cs_Q
        seg_sum = tl.minimum((cs_hi[:, None] - cs_hi[None, :]) + (cs_lo[:, None] - cs_lo[None, :]), 0.0)
        M = tl.where(causal, CB * tl.exp(seg_sum), 0.0)                                # [Q, Q]: t, s
        to_end = tl.exp((end_hi - cs_hi) + (end_lo - cs_lo))                           # [Q] exp(cs_Q - cs_s)
        exp_cs = tl.exp(cs_hi)                                                         # [Q]

        x = tl.load(x_ptr + b * stride_x_b + rows[:, None] * stride_x_l + h * stride_x_h + offs_p[None, :],
                    mask=qp_ok, other=0.0)                                             # [Q, BLOCK_P]
        dy = tl.load(dy_ptr + b * stride_dy_b + rows[:, None] * stride_dy_l + h * stride_dy_h + offs_p[None, :],
                     mask=qp_ok, other=0.0)                                            # [Q, BLOCK_P]
        head_chunk = tl.cast(gc, tl.int64) * nheads + h
        S = _chunk_state_full(s_in_ptr, carry_decay_ptr, carry_ptr, head_chunk,
                              tl.cast(seg, tl.int64) * nheads + h, state_size, pn_offs, pn_ok, HAS_CARRY)
        G = _chunk_state_full(g_out_ptr, gcarry_decay_ptr, gcarry_ptr, head_chunk,
                              tl.cast(n_seg - 1 - seg, tl.int64) * nheads + h, state_size, pn_offs, pn_ok,
                              HAS_CARRY)                                               # [BLOCK_P, BLOCK_N]

        # the pre-dt gradient of x
        SC = tl.dot(C_q, tl.trans(S.to(dtype)), input_precision=DOT_PRECISION)        # [Q, BLOCK_P]: t
        dxpre = tl.dot(tl.trans(M.to(dtype)), dy, input_precision=DOT_PRECISION)      # [Q, BLOCK_P]: s
        GB = tl.dot(B_q, tl.trans(G.to(dtype)), input_precision=DOT_PRECISION)        # [Q, BLOCK_P]: s
        GB = to_end[:, None] * GB
        dxpre += GB
        xf = x.to(tl.float32)
        dyf = dy.to(tl.float32)
        dx = dt[:, None] * dxpre
        # da_k = dL/d(dt_k A): every term whose decay spans token k, summed directly over the pairs s < k <= t (not
        # as row minus column sums, whose large diagonal terms would cancel in rounding):
        #   intra  sum_{t >= k} sum_{s < k} W[t, s],  W[t, s] = M[t, s] dt_s (dy_t . x_s): from the da kernel, one
        #          [Q] part per block of its rows t
        #   state  exp(cs_Q) <G, S_in> + sum_{s < k} V_s + sum_{t >= k} Z_t
        #          V_s = dt_s exp(cs_Q - cs_s) x_s . (G B_s),  Z_t = exp(cs_t) dy_t . (S_in C_t)
        da = tl.zeros([Q], dtype=tl.float32)
        for mb in range(M_BLOCKS):   # row block mb wrote the columns up to its diagonal block
            da += tl.load(da_part_ptr + ((tl.cast(gc, tl.int64) * M_BLOCKS + mb) * nheads + h) * Q + offs_q,
                          mask=(offs_q < (mb + 1) * (Q // M_BLOCKS)) & (mb * (Q // M_BLOCKS) < length),
                          other=0.0)
        V = dt * tl.sum(xf * GB, axis=1)                                               # [Q]: s
        Z = tl.sum(dyf * SC, axis=1) * exp_cs                                          # [Q]: t
        da += tl.exp(end_hi + end_lo) * tl.sum(tl.sum(G * S, axis=1), axis=0)
        da += tl.cumsum(V, axis=0) - V + tl.cumsum(Z, axis=0, reverse=True)
        ddt = tl.sum(xf * dxpre, axis=1) + A * da
        ddt *= _chunk_dt_grad_scale(dt_ptr, dt_bias_ptr, b * stride_dt_b, start, length, h, stride_dt_l, offs_q,
                                    HAS_DT_BIAS, DT_SOFTPLUS)
        tl.store(ddt_ptr + b * stride_ddt_b + rows * stride_ddt_l + h, ddt.to(ddt_ptr.dtype.element_ty), mask=q_ok)
        if HAS_DT_BIAS:   # ddt_bias = sum of the fp32 ddt over tokens (before ddt is rounded to dt's dtype)
            tl.store(dbias_part_ptr + head_chunk, tl.sum(tl.where(q_ok, ddt, 0.0), axis=0).to(tl.float64))
        if HAS_D:
            dx += tl.load(D_ptr + h).to(tl.float32) * dyf
        tl.store(dx_ptr + b * stride_dx_b + rows[:, None] * stride_dx_l + h * stride_dx_h + offs_p[None, :],
                 dx.to(dx_ptr.dtype.element_ty), mask=qp_ok)
        # per-head sums over every token, the chunks' partials in fp64: dA's terms in fp64, dD's rows in fp32 then
        # fp64. Where these sums sit and their precision moved dx by up to 50 us on the H200 (sessions 25-26's
        # A/Bs, bench/NOTES.md: this form is batched -31 us, packed +18 us against fp32 chunk sums)
        dA_terms = tl.where(q_ok, dt.to(tl.float64) * da.to(tl.float64), 0.0)
        tl.store(dA_part_ptr + head_chunk, tl.sum(dA_terms, axis=0))
        tl.store(dD_part_ptr + head_chunk, tl.sum(tl.sum(dyf * xf, axis=1).to(tl.float64), axis=0))


@triton.jit
def _ssd_bwd_dbc_kernel(
    x_ptr, dtcs_ptr, table_ptr, dy_ptr,         # dtcs [3, B, H, L] fp32: stage 0's dt, cumulative dt A (hi, lo)
    v_ptr,                                      # dC: B, dB: C  [B, L, G, N]
    st_ptr, st_decay_ptr, st_carry_ptr,         # dC: S_in, carry_decay, carry; dB: G_out, gcarry_decay, gcarry
    pw_ptr,                                     # [n_chunks, G, Q, Q] x's dtype: the group's summed pair weights
                                                # [t, s], written by dC, read (transposed) by dB
    out_ptr,                                    # dC or dB [B, L, G, N]
    seqlen, n_table, chunks_per_row, seg_len, n_seg, headdim, dstate, heads_per_group, nheads, plane,
    stride_x_b, stride_x_l, stride_x_h,
    stride_dy_b, stride_dy_l, stride_dy_h,
    stride_v_b, stride_v_l, stride_v_g,
    stride_o_b, stride_o_l, stride_o_g,
    Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, IS_DB: tl.constexpr,
    HAS_CARRY: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Rows r of the program (tokens t for dC, s for dB) against all columns k of the chunk."""
    # the row blocks of a (chunk, group) are adjacent programs, so its x / dy columns, B / C and states are read
    # from DRAM once and then from L2 (with the chunk outermost, 4 x 256 KB per chunk came from DRAM: 6% L2 hits)
    m_blocks = (Q + BLOCK_M - 1) // BLOCK_M
    gc = tl.program_id(0) // m_blocks
    pid_m = tl.program_id(0) % m_blocks
    g = tl.program_id(1)
    b, _, start, length, _, _ = _chunk_info(gc, table_ptr, n_table, seqlen, chunks_per_row, Q, IS_VARLEN)
    dt_len, dt_pos = _dtcs_span(gc, start, seqlen, n_table, Q, IS_VARLEN)
    if _past_chunk_end(pid_m * BLOCK_M, length, IS_VARLEN):   # dB masks the weights of rows t past the end
        return
    b = tl.cast(b, tl.int64)
    dtype = x_ptr.dtype.element_ty

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, Q)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    m_ok = offs_m < length
    k_ok = offs_k < length
    p_ok = offs_p < headdim
    n_ok = offs_n < dstate
    rows_m = (start + offs_m).to(tl.int64)
    rows_k = (start + offs_k).to(tl.int64)
    if IS_DB:
        r_ptr = x_ptr
        stride_r_b, stride_r_l, stride_r_h = stride_x_b, stride_x_l, stride_x_h
        carry_seg = n_seg - 1 - gc // seg_len
    else:
        tri = (offs_k[None, :] <= offs_m[:, None]) & k_ok[None, :]                      # s <= t
        r_ptr = dy_ptr
        stride_r_b, stride_r_l, stride_r_h = stride_dy_b, stride_dy_l, stride_dy_h
        carry_seg = gc // seg_len
    V = tl.load(v_ptr + b * stride_v_b + rows_k[:, None] * stride_v_l + g * stride_v_g + offs_n[None, :],
                mask=k_ok[:, None] & n_ok[None, :], other=0.0)                       # [Q, BLOCK_N]
    state_size = headdim * dstate
    pn_offs = offs_p[:, None] * dstate + offs_n[None, :]
    pn_ok = p_ok[:, None] & n_ok[None, :] & (length > 0)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if not IS_DB:
        P_sum = tl.zeros([BLOCK_M, Q], dtype=tl.float32)   # sum over the group's heads of the decayed pair weights
    for hh in range(heads_per_group):
        h = g * heads_per_group + hh
        dt_row = _dtcs_row(dtcs_ptr, b, h, nheads, dt_len, dt_pos)
        dt_m, cs_m_hi, cs_m_lo = _chunk_dtcs(dt_row, plane, offs_m, m_ok)  # [BLOCK_M]
        R = tl.load(r_ptr + b * stride_r_b + rows_m[:, None] * stride_r_l + h * stride_r_h + offs_p[None, :],
                    mask=m_ok[:, None] & p_ok[None, :], other=0.0)                     # [BLOCK_M, BLOCK_P]
        if IS_DB:
            end_hi, end_lo = _chunk_cs_end(dt_row, plane, length)   # cs_Q
            r_scale = tl.exp((end_hi - cs_m_hi) + (end_lo - cs_m_lo)) * dt_m            # exp(cs_Q - cs_s) dt_s
        else:
            dt, cs_hi, cs_lo = _chunk_dtcs(dt_row, plane, offs_k, k_ok)  # [Q]
            K = tl.load(x_ptr + b * stride_x_b + rows_k[:, None] * stride_x_l + h * stride_x_h + offs_p[None, :],
                        mask=k_ok[:, None] & p_ok[None, :], other=0.0)                 # [Q, BLOCK_P]: x_s
            RK = tl.dot(R, tl.trans(K), input_precision=DOT_PRECISION)                 # [BLOCK_M, Q]: dy_t . x_s
            diff = (cs_m_hi[:, None] - cs_hi[None, :]) + (cs_m_lo[:, None] - cs_lo[None, :])   # cs_t - cs_s
            P_sum += tl.where(tri, RK * tl.exp(tl.minimum(diff, 0.0)) * dt[None, :], 0.0)
            r_scale = tl.exp(cs_m_hi)                                                  # exp(cs_t)
        head_chunk = tl.cast(gc, tl.int64) * nheads + h
        St = _chunk_state_full(st_ptr, st_decay_ptr, st_carry_ptr, head_chunk,
                               tl.cast(carry_seg, tl.int64) * nheads + h, state_size, pn_offs, pn_ok, HAS_CARRY)
        Rs = (R.to(tl.float32) * r_scale[:, None]).to(dtype)
        acc = tl.dot(Rs, St.to(dtype), acc, input_precision=DOT_PRECISION)            # [BLOCK_M, BLOCK_N]
    # the intra-chunk term of all heads in one dot: V (B or C) is shared by the group's heads. The sum is rounded
    # once to x's dtype (bf16: as before, within its range; fp16: 8 heads' sum overflows 8x sooner than one head's).
    # dB's pair weights are dC's transposed (x_s . dy_t exp(cs_t - cs_s) dt_s, t >= s): dC writes them, dB reads
    # them instead of recomputing the products and decays of every head
    pw_base = pw_ptr + (tl.cast(gc, tl.int64) * tl.num_programs(1) + g) * Q * Q
    if IS_DB:
        # rows t < length were written whole by dC (0 at s past the end): no mask along s, which keeps the loads
        # vector ones when the length is loaded (packed; session 24: 32 scalar bf16 loads)
        PT = tl.load(pw_base + offs_k[:, None] * Q + offs_m[None, :], mask=k_ok[:, None],
                     other=0.0)                                                        # [Q, BLOCK_M]: t, s
        acc = tl.dot(tl.trans(PT), V, acc, input_precision=DOT_PRECISION)              # [BLOCK_M, BLOCK_N]
    else:
        P_w = P_sum.to(dtype)
        tl.store(pw_base + offs_m[:, None] * Q + offs_k[None, :], P_w, mask=(offs_m < Q)[:, None])
        acc = tl.dot(P_w, V, acc, input_precision=DOT_PRECISION)                       # [BLOCK_M, BLOCK_N]
    tl.store(out_ptr + b * stride_o_b + rows_m[:, None] * stride_o_l + g * stride_o_g + offs_n[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _ssd_bwd_da_kernel(
    x_ptr, dtcs_ptr, table_ptr, dy_ptr, B_ptr, C_ptr,
    da_part_ptr,                                # [n_chunks, Q / BLOCK_M, H, Q] fp32 out (see the dx kernel)
    seqlen, n_table, chunks_per_row, headdim, dstate, heads_per_group, nheads, plane,
    stride_x_b, stride_x_l, stride_x_h,
    stride_dy_b, stride_dy_l, stride_dy_h,
    stride_B_b, stride_B_l, stride_B_g,
    stride_C_b, stride_C_l, stride_C_g,
    Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HEADS_PER_PROG: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The intra-chunk part of da for rows t of one block, per head: sum_{t >= k} sum_{s < k} W[t, s] with
    W[t, s] = (C_t . B_s) exp(cs_t - cs_s) dt_s (dy_t . x_s), s < t. Its own launch so that dC's registers hold
    only dC. The columns k (and s) run in blocks of BLOCK_K up to the row block's diagonal, the prefix over s
    carried from block to block; da_part's columns past the diagonal block are not written (the dx kernel masks
    them)."""
    # a chunk's programs are adjacent (row blocks innermost, then heads): its x / dy columns, B and C stay in L2
    m_blocks = Q // BLOCK_M
    n_gh = nheads // HEADS_PER_PROG
    gc = tl.program_id(0) // (n_gh * m_blocks)
    pid_gh = tl.program_id(0) // m_blocks % n_gh
    pid_m = m_blocks - 1 - tl.program_id(0) % m_blocks          # the longest row block first
    h0 = pid_gh * HEADS_PER_PROG
    g = h0 // heads_per_group
    b, _, start, length, _, _ = _chunk_info(gc, table_ptr, n_table, seqlen, chunks_per_row, Q, IS_VARLEN)
    dt_len, dt_pos = _dtcs_span(gc, start, seqlen, n_table, Q, IS_VARLEN)
    if _past_chunk_end(pid_m * BLOCK_M, length, IS_VARLEN):   # dx masks the parts of row blocks past the end
        return
    b = tl.cast(b, tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    m_ok = offs_m < length
    p_ok = offs_p < headdim
    n_ok = offs_n < dstate
    rows_m = (start + offs_m).to(tl.int64)
    C_m = tl.load(C_ptr + b * stride_C_b + rows_m[:, None] * stride_C_l + g * stride_C_g + offs_n[None, :],
                  mask=m_ok[:, None] & n_ok[None, :], other=0.0)                     # [BLOCK_M, BLOCK_N]
    part = da_part_ptr + (tl.cast(gc, tl.int64) * m_blocks + pid_m) * nheads * Q
    for hh in range(HEADS_PER_PROG):
        h = h0 + hh
        dt_row = _dtcs_row(dtcs_ptr, b, h, nheads, dt_len, dt_pos)
        dt_m, cs_m_hi, cs_m_lo = _chunk_dtcs(dt_row, plane, offs_m, m_ok, Q, IS_VARLEN)  # [BLOCK_M]
        dy = tl.load(dy_ptr + b * stride_dy_b + rows_m[:, None] * stride_dy_l + h * stride_dy_h + offs_p[None, :],
                     mask=m_ok[:, None] & p_ok[None, :], other=0.0)                  # [BLOCK_M, BLOCK_P]
        carry = tl.zeros([BLOCK_M], dtype=tl.float32)                                  # sum_{s < k0} W[t, s]
        for k0 in range(0, (pid_m + 1) * BLOCK_M, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < length
            rows_k = (start + offs_k).to(tl.int64)
            B_k = tl.load(B_ptr + b * stride_B_b + rows_k[:, None] * stride_B_l + g * stride_B_g + offs_n[None, :],
                          mask=k_ok[:, None] & n_ok[None, :], other=0.0)             # [BLOCK_K, BLOCK_N]
            x = tl.load(x_ptr + b * stride_x_b + rows_k[:, None] * stride_x_l + h * stride_x_h + offs_p[None, :],
                        mask=k_ok[:, None] & p_ok[None, :], other=0.0)               # [BLOCK_K, BLOCK_P]
            dt, cs_hi, cs_lo = _chunk_dtcs(dt_row, plane, offs_k, k_ok, Q, IS_VARLEN)  # [BLOCK_K]
            CB = tl.dot(C_m, tl.trans(B_k), input_precision=DOT_PRECISION)             # [BLOCK_M, BLOCK_K]: t, s
            dyx = tl.dot(dy, tl.trans(x), input_precision=DOT_PRECISION)               # [BLOCK_M, BLOCK_K]: t, s
            diff = (cs_m_hi[:, None] - cs_hi[None, :]) + (cs_m_lo[:, None] - cs_lo[None, :])   # cs_t - cs_s
            strict = (offs_k[None, :] < offs_m[:, None]) & k_ok[None, :]
            W = tl.where(strict, dyx * tl.exp(tl.minimum(diff, 0.0)) * dt[None, :] * CB, 0.0)
            before_k = tl.cumsum(W, axis=1) - W + carry[:, None]                       # [t, k]: sum_{s < k} W[t, s]
            carry += tl.sum(W, axis=1)
            k_le_t = (offs_k[None, :] <= offs_m[:, None]) & m_ok[:, None]
            tl.store(part + h * Q + offs_k, tl.sum(tl.where(k_le_t, before_k, 0.0), axis=0))   # [BLOCK_K]: k


def bwd_config(n_chunks: int, ngroups: int, heads_per_group: int, headdim: int, dstate: int, chunk: int,
               sm_count: int) -> dict:
    """{"dx": tile, "da": tile, "dc": tile, "db": tile}: the tiles of the four launches, chosen by the sm_90a
    register report (cuobjdump -res-usage of the AOT compile at NemotronH's shapes, Q=128, P=64, N=128) and
    scripts/sweep_ssd.py on the H200 (bench/NOTES.md, session 22):
    the dx kernel takes whole chunks, one head per program on the GPU (walking the 8 heads of a group to share CB
    spilled 2.6 KB per thread, 1 head: ~0.1 KB), all heads of the group in the interpreter (sm_count 0); the da
    kernel Q / 2 rows of one head against column blocks of Q / 4 at 4 warps (120 registers, 4 programs per SM:
    665 us; 8 warps 1,116 us, 32 x 32 at 8 warps 4,928 us); the dC and dB kernels Q / 2 rows (<= 64: wgmma; dC at
    16 warps, 128 registers: 878 us, 8 warps 255 registers: 1,084 us; dB, which reads dC's pair weights, 122
    registers with no spills under maxnreg 128: 2 programs per SM), both at 3 stages, so the next head's loads are
    in flight during this head's products (session 23: dC 889 -> 767 us, dB 329 -> 289 us). maxnreg: ptxas'
    register cap per thread (None: up to 255)."""
    whole = {"BLOCK_P": max(16, next_power_of_2(headdim)), "BLOCK_N": max(16, next_power_of_2(dstate)),
             "num_warps": 8, "num_stages": 2, "maxnreg": None}
    return {"dx": dict(whole, HEADS_PER_PROG=1 if sm_count else heads_per_group),
            "da": dict(whole, BLOCK_M=max(16, min(chunk // 2, 64)), BLOCK_K=max(16, min(chunk // 4, 32)),
                       HEADS_PER_PROG=1 if sm_count else heads_per_group, num_warps=4),
            "dc": dict(whole, BLOCK_M=max(16, min(chunk // 2, 64)), num_warps=16, num_stages=3),
            "db": dict(whole, BLOCK_M=max(16, min(chunk // 2, 64)), num_stages=3,
                       maxnreg=128 if whole["BLOCK_P"] * whole["BLOCK_N"] <= 64 * 128 else None)}


def _common_args(x, geometry: dict, n_seg: int):
    _, seqlen, _, headdim = x.shape
    return (seqlen, geometry["n_table"], geometry["chunks_per_row"], geometry["seg_len"], n_seg, headdim)


def bwd_dx_launch(x, dt, dtcs, A, B, C, D, dt_bias, table, dy, s_in, carry_decay, carry, g_out, gcarry_decay,
                  gcarry, dx, ddt, dA_part, dD_part, dbias_part, da_part, geometry: dict, dt_softplus: bool, cfg: dict,
                  dot_precision: str):
    """dx, ddt (in ddt's dtype), per-chunk dA / dD / dt_bias sums (dbias_part: None without dt_bias) at the tile
    `cfg` (bwd_config's "dx"); runs after the da launch, which writes da_part. dtcs: stage 0's [3, B, H, L]; dt
    and dt_bias only for softplus' derivative. -> the launched CompiledKernel."""
    nheads = x.shape[2]
    ngroups, dstate = B.shape[2], B.shape[3]
    for name, t in (("x", x), ("B", B), ("C", C), ("dy", dy), ("dx", dx)):
        assert t.stride(3) == 1, f"ssd_scan bwd dx: {name} needs a unit last stride"
    assert dt.stride(2) == 1 and ddt.stride(2) == 1, "ssd_scan bwd dx: dt, ddt need a unit head stride"
    hpg = nheads // ngroups
    has_carry = carry is not None
    grid = (geometry["n_chunks"] * ngroups * (hpg // cfg["HEADS_PER_PROG"]),)
    return _ssd_bwd_dx_kernel[grid](
        x, dt, dtcs, A, B, C, D if D is not None else A, dt_bias if dt_bias is not None else A,
        table if table is not None else A, dy, s_in, carry_decay, carry if has_carry else s_in,
        g_out, gcarry_decay, gcarry if has_carry else g_out, dx, ddt, dA_part, dD_part,
        dbias_part if dt_bias is not None else dD_part, da_part,
        *_common_args(x, geometry, geometry["n_seg"]), dstate, hpg, nheads, dtcs[0].numel(),
        x.stride(0), x.stride(1), x.stride(2), dt.stride(0), dt.stride(1), B.stride(0), B.stride(1), B.stride(2),
        C.stride(0), C.stride(1), C.stride(2), dy.stride(0), dy.stride(1), dy.stride(2),
        dx.stride(0), dx.stride(1), dx.stride(2), ddt.stride(0), ddt.stride(1),
        Q=geometry["Q"], BLOCK_P=cfg["BLOCK_P"], BLOCK_N=cfg["BLOCK_N"], HEADS_PER_PROG=cfg["HEADS_PER_PROG"],
        M_BLOCKS=da_part.shape[1], HAS_D=D is not None, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus,
        HAS_CARRY=has_carry,
        IS_VARLEN=table is not None, DOT_PRECISION=dot_precision, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], maxnreg=cfg["maxnreg"])


def bwd_dbc_launch(x, dtcs, table, dy, v, state, state_decay, state_carry, pw, out, is_db: bool, geometry: dict,
                   cfg: dict, dot_precision: str):
    """dC (is_db False: v = B, state = forward S_in; writes pw) or dB (is_db True: v = C, state = backward G_out;
    reads pw, after dC), at the tile `cfg` (bwd_config's "dc" / "db"). pw [n_chunks, G, Q, Q] in x's dtype: the
    group's summed pair weights. -> the launched CompiledKernel."""
    nheads = x.shape[2]
    ngroups, dstate = v.shape[2], v.shape[3]
    chunk = geometry["Q"]
    for name, t in (("x", x), ("dy", dy), ("B/C", v), ("dB/dC", out)):
        assert t.stride(3) == 1, f"ssd_scan bwd dB/dC: {name} needs a unit last stride"
    assert pw.is_contiguous() and pw.dtype == x.dtype and pw.shape == (geometry["n_chunks"], ngroups, chunk, chunk), \
        "ssd_scan bwd dB/dC: pw [n_chunks, G, Q, Q] in x's dtype, contiguous"
    grid = (geometry["n_chunks"] * cdiv(chunk, cfg["BLOCK_M"]), ngroups)
    return _ssd_bwd_dbc_kernel[grid](
        x, dtcs, table if table is not None else dtcs, dy, v, state, state_decay,
        state_carry if state_carry is not None else state, pw, out,
        *_common_args(x, geometry, geometry["n_seg"]), dstate, nheads // ngroups, nheads, dtcs[0].numel(),
        x.stride(0), x.stride(1), x.stride(2), dy.stride(0), dy.stride(1), dy.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        Q=chunk, BLOCK_M=cfg["BLOCK_M"], BLOCK_P=cfg["BLOCK_P"],
        BLOCK_N=cfg["BLOCK_N"], IS_DB=is_db, HAS_CARRY=state_carry is not None,
        IS_VARLEN=table is not None, DOT_PRECISION=dot_precision, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], maxnreg=cfg["maxnreg"])


def da_blocks(chunk: int, cfg: dict) -> int:
    """Row blocks of the da launch at the tile `cfg`: da_part's second dimension."""
    return chunk // cfg["BLOCK_M"]


def bwd_da_launch(x, dtcs, table, dy, B, C, da_part, geometry: dict, cfg: dict, dot_precision: str):
    """The intra-chunk parts of da, da_part [n_chunks, da_blocks, H, Q] fp32, at the tile `cfg` (bwd_config's
    "da"); the dx launch sums them. -> the launched CompiledKernel."""
    nheads = x.shape[2]
    ngroups, dstate = B.shape[2], B.shape[3]
    hpg = nheads // ngroups
    chunk = geometry["Q"]
    assert hpg % cfg["HEADS_PER_PROG"] == 0, "ssd_scan bwd da: HEADS_PER_PROG must divide the heads per group"
    assert chunk % cfg["BLOCK_M"] == 0 and chunk % cfg["BLOCK_K"] == 0, "ssd_scan bwd da: BLOCK_M, BLOCK_K divide Q"
    assert da_part.is_contiguous() and da_part.shape == (geometry["n_chunks"], da_blocks(chunk, cfg), nheads, chunk), \
        "ssd_scan bwd da: da_part [n_chunks, da_blocks, H, Q], contiguous"
    for name, t in (("x", x), ("dy", dy), ("B", B), ("C", C)):
        assert t.stride(3) == 1, f"ssd_scan bwd da: {name} needs a unit last stride"
    grid = (geometry["n_chunks"] * (nheads // cfg["HEADS_PER_PROG"]) * da_blocks(chunk, cfg),)
    return _ssd_bwd_da_kernel[grid](
        x, dtcs, table if table is not None else dtcs, dy, B, C, da_part,
        x.shape[1], geometry["n_table"], geometry["chunks_per_row"], x.shape[3], dstate, hpg, nheads,
        dtcs[0].numel(), x.stride(0), x.stride(1), x.stride(2), dy.stride(0), dy.stride(1), dy.stride(2),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        Q=chunk, BLOCK_M=cfg["BLOCK_M"], BLOCK_K=cfg["BLOCK_K"], BLOCK_P=cfg["BLOCK_P"], BLOCK_N=cfg["BLOCK_N"],
        HEADS_PER_PROG=cfg["HEADS_PER_PROG"], IS_VARLEN=table is not None, DOT_PRECISION=dot_precision,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], maxnreg=cfg["maxnreg"])


def aot_compile_all(cfg: dict | None = None):
    """(name, CompiledKernel) at NemotronH's shapes (P=64, N=128, Q=128, G=8, bf16, bf16 states), sm_90a, of the
    kernels named in `cfg` ({"dx" / "da" / "dc" / "db": tile}, default: bwd_config's four), each main variant
    first."""
    from .mamba_common import aot_compile
    default = bwd_config(256, 8, 8, 64, 128, 128, 132)
    cfg = cfg or default
    common = {"dtcs_ptr": "*fp32", "table_ptr": "*i32", "x_ptr": "*bf16", "dy_ptr": "*bf16", "seqlen": "i32",
              "n_table": "i32", "chunks_per_row": "i32", "seg_len": "i32", "n_seg": "i32", "headdim": "i32",
              "dstate": "i32", "heads_per_group": "i32", "nheads": "i32", "plane": "i32", "stride_x_b": "i64",
              "stride_x_l": "i64", "stride_x_h": "i32", "stride_dy_b": "i64", "stride_dy_l": "i64",
              "stride_dy_h": "i32"}
    dx_sig = dict(common, dt_ptr="*bf16", A_ptr="*fp32", dt_bias_ptr="*fp32", stride_dt_b="i64", stride_dt_l="i64",
                  B_ptr="*bf16", C_ptr="*bf16", D_ptr="*fp32", s_in_ptr="*bf16", carry_decay_ptr="*fp32",
                  carry_ptr="*bf16", g_out_ptr="*bf16", gcarry_decay_ptr="*fp32", gcarry_ptr="*bf16",
                  dx_ptr="*bf16", ddt_ptr="*bf16", dA_part_ptr="*fp64", dD_part_ptr="*fp64", dbias_part_ptr="*fp64",
                  da_part_ptr="*fp32",
                  stride_B_b="i64", stride_B_l="i64", stride_B_g="i32", stride_C_b="i64", stride_C_l="i64",
                  stride_C_g="i32", stride_dx_b="i64", stride_dx_l="i64", stride_dx_h="i32", stride_ddt_b="i64",
                  stride_ddt_l="i64")
    dx_variants = ((False, True), (True, True), (False, False)) if "dx" in cfg else ()
    for varlen, carry in dx_variants:
        tile = cfg["dx"]
        consts = {"Q": 128, "BLOCK_P": tile["BLOCK_P"], "BLOCK_N": tile["BLOCK_N"],
                  "HEADS_PER_PROG": tile["HEADS_PER_PROG"], "M_BLOCKS": da_blocks(128, cfg.get("da", default["da"])),
                  "HAS_D": True, "HAS_DT_BIAS": True, "DT_SOFTPLUS": True,
                  "HAS_CARRY": carry, "IS_VARLEN": varlen, "DOT_PRECISION": "tf32"}
        yield (f"ssd_bwd_dx varlen={varlen} carry={carry}",
               aot_compile(_ssd_bwd_dx_kernel, dx_sig, consts, num_warps=tile["num_warps"],
                           num_stages=tile["num_stages"], maxnreg=tile["maxnreg"], aligned=aot_aligned(varlen)))
    da_sig = {k: v for k, v in dx_sig.items() if k in common or k in (
        "B_ptr", "C_ptr", "da_part_ptr", "stride_B_b", "stride_B_l", "stride_B_g", "stride_C_b", "stride_C_l",
        "stride_C_g")}
    del da_sig["seg_len"], da_sig["n_seg"]
    for varlen in (False, True) if "da" in cfg else ():
        tile = cfg["da"]
        consts = {"Q": 128, "BLOCK_M": tile["BLOCK_M"], "BLOCK_K": tile["BLOCK_K"], "BLOCK_P": tile["BLOCK_P"],
                  "BLOCK_N": tile["BLOCK_N"], "HEADS_PER_PROG": tile["HEADS_PER_PROG"], "IS_VARLEN": varlen,
                  "DOT_PRECISION": "tf32"}
        yield (f"ssd_bwd_da varlen={varlen}",
               aot_compile(_ssd_bwd_da_kernel, da_sig, consts, num_warps=tile["num_warps"],
                           num_stages=tile["num_stages"], maxnreg=tile["maxnreg"], aligned=aot_aligned(varlen)))
    dbc_sig = dict(common, v_ptr="*bf16", st_ptr="*bf16", st_decay_ptr="*fp32", st_carry_ptr="*bf16",
                   pw_ptr="*bf16", out_ptr="*bf16", stride_v_b="i64", stride_v_l="i64", stride_v_g="i32",
                   stride_o_b="i64", stride_o_l="i64", stride_o_g="i32")
    dbc_variants = (("dc", False), ("db", False), ("db", True))
    for kernel, varlen in ((k, varlen) for k, varlen in dbc_variants if k in cfg):
        tile = cfg[kernel]
        consts = {"Q": 128, "BLOCK_M": tile["BLOCK_M"], "BLOCK_P": tile["BLOCK_P"], "BLOCK_N": tile["BLOCK_N"],
                  "IS_DB": kernel == "db", "HAS_CARRY": True,
                  "IS_VARLEN": varlen, "DOT_PRECISION": "tf32"}
        yield (f"ssd_bwd_dbc is_db={kernel == 'db'} varlen={varlen}",
               aot_compile(_ssd_bwd_dbc_kernel, dbc_sig, consts, num_warps=tile["num_warps"],
                           num_stages=tile["num_stages"], maxnreg=tile["maxnreg"], aligned=aot_aligned(varlen)))
