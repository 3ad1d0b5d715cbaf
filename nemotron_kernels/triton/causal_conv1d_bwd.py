"""Depthwise causal conv1d backward (Triton). With pre[t] = bias + sum_j w_j u[t-j] (w_j = weight column K-1-j,
u the sequence preceded by its initial state) and y = act(pre):
    g[t]    = dy[t] * act'(pre[t])                       (pre recomputed from x, nothing saved)
    dx[t]   = sum_j w_j g[t + j]                          (only rows t + j inside t's sequence)
    dw_j    = sum_t g[t] u[t-j],  dbias = sum_t g[t]
    dinit[s, i] = sum_{j} w_j g[start_s - (K-1) + i + j]   (the initial state's inputs, a small second kernel)
The main kernel streams like the forward: each program owns BLOCK_C channels (8-byte vectors per thread: the
kernel holds ~25 live fp32 values per channel, and 4 programs of 4 warps fit an SM) and walks one segment of
tokens row by row, ROWS rows per step, loading the next step's rows of x and dy before computing the current ones
(software pipelining: 2 x ROWS row loads in flight per program). It keeps the K-1 previous inputs (for pre and
dw) and K-1 pending dx rows in registers: row t's g is scattered into dx[t-3..t] (w_3..w_0), and dx[t-3], then
complete, is stored. The segment's first 3 rows therefore store nothing (the previous segment stores those dx
rows), and the walk runs 3 halo rows past the segment (their g feeds dx only, not dw). Packed sequences
(cu_seqlens, B = 1): g[t] reaches only dx rows of t's own sequence, and the input window restarts at each sequence
start from its initial state (or zeros); a step of rows with no sequence start in it or in the 3 rows before it
runs the plain rows.
K > 4: taps older than 3 rows are reloaded from memory, dx's contributions from g[t+1 ..] are recomputed from
memory, and their dw partials accumulate in memory (slow, correct; NemotronH has K = 4). dw / dbias: one fp32
partial [K+1, C] per program (no atomics), summed in a fixed order by a third small kernel. Token offsets are
int64."""
import functools

import triton
import triton.language as tl
from triton.language.extra.cuda import libdevice

from . import causal_conv1d_fwd
from .causal_conv1d_fwd import _pre_act, _row_tap, _segment_start, _tap, check_layout
from .common import cdiv, next_power_of_2
from .mamba_common import dep_tokens, interpreting

INTERPRETED = interpreting()
LOAD_TOKEN = object()
DEPENDS = ("causal_conv1d_fwd",)
DEP_TOKENS = dep_tokens(causal_conv1d_fwd)
FAST_SIGMOID = tl.constexpr(not INTERPRETED)    # libdevice has no interpreter implementation


@triton.jit
def _dsilu(dy, pre):
    """dy * silu'(pre) = dy * s (1 + pre (1 - s)), s = sigmoid(pre), fp32. Compiled: flush-to-zero exp2 and an
    approximate divide (2 MUFU + 3 FMA-pipe instructions, ~2 ulp; tl.sigmoid's denormal range fix-ups cost 6 more,
    and the main loop is issue-heavy: ~33 instructions per element and row); the interpreter: tl.sigmoid."""
    if FAST_SIGMOID:
        sig = libdevice.fast_dividef(tl.full(pre.shape, 1.0, tl.float32),
                                     1.0 + libdevice.exp2(pre * -1.4426950408889634))
    else:
        sig = tl.sigmoid(pre)
    t = pre - pre * sig                           # pre (1 - s): one FMA
    return dy * (sig + sig * t)


@triton.jit
def _dpre(x_ptr, w_ptr, bias_ptr, init_ptr, dy_ptr, x_row_base, dy_row_base, pos, start, end, state_row,
          offs_c, c_ok, stride_x_l, stride_init_s, stride_init_c, stride_dy_l,
          K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr):
    """dL/dpre at a [BLOCK_L] vector of positions (zero outside [start, end)). -> [BLOCK_L, BLOCK_C] fp32.
    (The initial-state kernel's.)"""
    valid = (pos >= start) & (pos < end)
    dy = tl.load(dy_ptr + dy_row_base + pos[:, None] * stride_dy_l + offs_c[None, :],
                 mask=valid[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    if SILU:
        pre = tl.zeros(dy.shape, dtype=tl.float32)
        if HAS_BIAS:
            pre += tl.load(bias_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        for j in tl.static_range(K):
            w_j = tl.load(w_ptr + offs_c * K + j, mask=c_ok, other=0.0).to(tl.float32)
            u = _tap(x_ptr, init_ptr, x_row_base, pos - (K - 1) + j, start, end, state_row, offs_c, c_ok,
                     stride_x_l, stride_init_s, stride_init_c, K - 1, HAS_INIT)
            pre += u * w_j[None, :]
        dy = _dsilu(dy, pre)
    return dy


@triton.jit
def _g_from_memory(x_ptr, w_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, x_row_base, dy_row_base, b, t, seqlen,
                   bias, offs_c, c_ok, stride_x_l, stride_init_s, stride_init_c, stride_dy_l,
                   K: tl.constexpr, HAS_INIT: tl.constexpr, IS_VARLEN: tl.constexpr, SILU: tl.constexpr):
    """g[t] (zero from seqlen on) and the start of t's sequence, all read from memory (K > 4 only)."""
    p = tl.minimum(t, seqlen - 1)
    if IS_VARLEN:
        seq = tl.load(seq_idx_ptr + p)
        start = tl.load(cu_ptr + seq).to(tl.int64)
    else:
        seq = b
        start = p * 0
    g = tl.load(dy_ptr + dy_row_base + p * stride_dy_l + offs_c, mask=c_ok & (t < seqlen), other=0.0).to(tl.float32)
    if SILU:
        pre = bias
        for lag in tl.static_range(K):
            w_lag = tl.load(w_ptr + offs_c * K + (K - 1 - lag), mask=c_ok, other=0.0).to(tl.float32)
            pre += w_lag * _row_tap(x_ptr, init_ptr, x_row_base, p - lag, start, seq, offs_c, c_ok, stride_x_l,
                                    stride_init_s, stride_init_c, K - 1, HAS_INIT)
        g = _dsilu(g, pre)
    return g, start


@triton.jit
def _state_tap(init_ptr, state_row, j, offs_c, c_ok, stride_init_s, stride_init_c, HAS_INIT: tl.constexpr):
    """Column j of initial-state row `state_row` (zeros without an initial state). -> [BLOCK_C] fp32."""
    vals = tl.zeros(offs_c.shape, dtype=tl.float32)
    if HAS_INIT:
        vals += tl.load(init_ptr + state_row.to(tl.int64) * stride_init_s + offs_c * stride_init_c + j, mask=c_ok,
                        other=0.0).to(tl.float32)
    return vals


@triton.jit
def _bwd_row(x_ptr, w_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, dx_ptr, part_ptr, x_row_base, dy_row_base,
             dx_row_base, b, t, t0, t_end, seqlen, cur, dcur, seq_t, p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3, db,
             seq, start, w0, w1, w2, w3, bias, offs_c, c_ok, channels,
             stride_x_l, stride_dy_l, stride_dx_l, stride_init_s, stride_init_c,
             K: tl.constexpr, HAS_INIT: tl.constexpr, IS_VARLEN: tl.constexpr, SILU: tl.constexpr,
             ACC_DW: tl.constexpr):
    """Row t: x[t] = `cur`, dy[t] = `dcur`, seq_idx[t] = `seq_t` (loaded by the caller); p1..p3 = u[t-1..t-3];
    q1..q3 = the partial dx[t-1..t-3] (all of g[< t] they receive). Computes g[t], adds it to dw / dbias (if
    ACC_DW), stores dx[t-3] if it lies in [t0, t_end), and returns the window, pending rows and sums shifted by
    one row, plus the (seq, start) of row t."""
    if IS_VARLEN:
        if seq_t != seq:                          # t starts sequence seq_t: restart the window from its state
            seq = seq_t
            start = t
            if K > 1:                             # u[t-j] = state column K-1-j (or zero)
                p1 = _state_tap(init_ptr, seq, K - 2, offs_c, c_ok, stride_init_s, stride_init_c, HAS_INIT)
            if K > 2:
                p2 = _state_tap(init_ptr, seq, K - 3, offs_c, c_ok, stride_init_s, stride_init_c, HAS_INIT)
            if K > 3:
                p3 = _state_tap(init_ptr, seq, K - 4, offs_c, c_ok, stride_init_s, stride_init_c, HAS_INIT)
    x_t = cur.to(tl.float32)
    g = dcur.to(tl.float32)
    if SILU:
        pre = _pre_act(x_ptr, w_ptr, init_ptr, x_row_base, t, x_t, p1, p2, p3, w0, w1, w2, w3, bias, seq, start,
                       offs_c, c_ok, stride_x_l, stride_init_s, stride_init_c, K, HAS_INIT)
        g = _dsilu(g, pre)
    if ACC_DW:
        db += g
        dw0 += g * x_t
        if K > 1:
            dw1 += g * p1
        if K > 2:
            dw2 += g * p2
        if K > 3:
            dw3 += g * p3
        for lag in tl.static_range(4, K):         # K > 4: this program's own partial row, read-modify-write
            u = _row_tap(x_ptr, init_ptr, x_row_base, t - lag, start, seq, offs_c, c_ok, stride_x_l,
                         stride_init_s, stride_init_c, K - 1, HAS_INIT)
            dw_ptrs = part_ptr + (K - 1 - lag) * channels + offs_c
            tl.store(dw_ptrs, tl.load(dw_ptrs, mask=c_ok, other=0.0) + g * u, mask=c_ok)
    # g[t] reaches dx[t-j] through w_j, inside t's sequence only (rows before `start` belong to another one)
    g1 = g
    g2 = g
    g3 = g
    if IS_VARLEN:
        g1 = tl.where(t - 1 >= start, g, 0.0)
        g2 = tl.where(t - 2 >= start, g, 0.0)
        g3 = tl.where(t - 3 >= start, g, 0.0)
    dx = q3 + w3 * g3                             # dx[t-3] is complete (for K <= 4)
    for m in tl.static_range(1, K - 3):           # K > 4: g[t+m] reaches dx[t-3] through w_{3+m}
        g_m, start_m = _g_from_memory(x_ptr, w_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, x_row_base, dy_row_base,
                                      b, t + m, seqlen, bias, offs_c, c_ok, stride_x_l, stride_init_s,
                                      stride_init_c, stride_dy_l, K, HAS_INIT, IS_VARLEN, SILU)
        if IS_VARLEN:
            g_m = tl.where(t - 3 >= start_m, g_m, 0.0)
        w_lag = tl.load(w_ptr + offs_c * K + (K - 4 - m), mask=c_ok, other=0.0).to(tl.float32)
        dx += w_lag * g_m
    tl.store(dx_ptr + dx_row_base + (t - 3) * stride_dx_l + offs_c, dx.to(dx_ptr.dtype.element_ty),
             mask=c_ok & (t - 3 >= t0) & (t - 3 < t_end))
    return x_t, p1, p2, w0 * g, q1 + w1 * g1, q2 + w2 * g2, dw0, dw1, dw2, dw3, db, seq, start


@triton.jit
def _load_rows(x_ptrs, dy_ptrs, seq_idx_ptr, t, seqlen, seq, c_ok, stride_x_l, stride_dy_l, IS_VARLEN: tl.constexpr):
    """x, dy rows t .. t+3 (zeros from seqlen on) and their sequence ids (the last token's from seqlen on)."""
    c0 = tl.load(x_ptrs + t * stride_x_l, mask=c_ok & (t < seqlen), other=0.0)
    c1 = tl.load(x_ptrs + (t + 1) * stride_x_l, mask=c_ok & (t + 1 < seqlen), other=0.0)
    c2 = tl.load(x_ptrs + (t + 2) * stride_x_l, mask=c_ok & (t + 2 < seqlen), other=0.0)
    c3 = tl.load(x_ptrs + (t + 3) * stride_x_l, mask=c_ok & (t + 3 < seqlen), other=0.0)
    d0 = tl.load(dy_ptrs + t * stride_dy_l, mask=c_ok & (t < seqlen), other=0.0)
    d1 = tl.load(dy_ptrs + (t + 1) * stride_dy_l, mask=c_ok & (t + 1 < seqlen), other=0.0)
    d2 = tl.load(dy_ptrs + (t + 2) * stride_dy_l, mask=c_ok & (t + 2 < seqlen), other=0.0)
    d3 = tl.load(dy_ptrs + (t + 3) * stride_dy_l, mask=c_ok & (t + 3 < seqlen), other=0.0)
    s0 = seq
    s1 = seq
    s2 = seq
    s3 = seq
    if IS_VARLEN:
        s0 = tl.load(seq_idx_ptr + tl.minimum(t, seqlen - 1))
        s1 = tl.load(seq_idx_ptr + tl.minimum(t + 1, seqlen - 1))
        s2 = tl.load(seq_idx_ptr + tl.minimum(t + 2, seqlen - 1))
        s3 = tl.load(seq_idx_ptr + tl.minimum(t + 3, seqlen - 1))
    return c0, c1, c2, c3, d0, d1, d2, d3, s0, s1, s2, s3


@triton.jit
def _bwd_step(x_ptr, w_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, dx_ptr, part_ptr, x_row_base, dy_row_base,
              dx_row_base, b, t, t0, t_end, seqlen, c0, c1, c2, c3, d0, d1, d2, d3, s0, s1, s2, s3, p1, p2, p3,
              q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start, w0, w1, w2, w3, bias, offs_c, c_ok, channels,
              stride_x_l, stride_dy_l, stride_dx_l, stride_init_s, stride_init_c,
              K: tl.constexpr, HAS_INIT: tl.constexpr, IS_VARLEN: tl.constexpr, SILU: tl.constexpr):
    """Rows t .. t+3 of the main loop (x rows c0..c3, dy rows d0..d3, sequence ids s0..s3): _bwd_row four times."""
    p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start = _bwd_row(
        x_ptr, w_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, dx_ptr, part_ptr, x_row_base, dy_row_base,
        dx_row_base, b, t, t0, t_end, seqlen, c0, d0, s0, p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3,
        db, seq, start, w0, w1, w2, w3, bias, offs_c, c_ok, channels, stride_x_l, stride_dy_l, stride_dx_l,
        stride_init_s, stride_init_c, K, HAS_INIT, IS_VARLEN, SILU, True)
    p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start = _bwd_row(
        x_ptr, w_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, dx_ptr, part_ptr, x_row_base, dy_row_base,
        dx_row_base, b, t + 1, t0, t_end, seqlen, c1, d1, s1, p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3,
        db, seq, start, w0, w1, w2, w3, bias, offs_c, c_ok, channels, stride_x_l, stride_dy_l, stride_dx_l,
        stride_init_s, stride_init_c, K, HAS_INIT, IS_VARLEN, SILU, True)
    p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start = _bwd_row(
        x_ptr, w_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, dx_ptr, part_ptr, x_row_base, dy_row_base,
        dx_row_base, b, t + 2, t0, t_end, seqlen, c2, d2, s2, p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3,
        db, seq, start, w0, w1, w2, w3, bias, offs_c, c_ok, channels, stride_x_l, stride_dy_l, stride_dx_l,
        stride_init_s, stride_init_c, K, HAS_INIT, IS_VARLEN, SILU, True)
    p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start = _bwd_row(
        x_ptr, w_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, dx_ptr, part_ptr, x_row_base, dy_row_base,
        dx_row_base, b, t + 3, t0, t_end, seqlen, c3, d3, s3, p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3,
        db, seq, start, w0, w1, w2, w3, bias, offs_c, c_ok, channels, stride_x_l, stride_dy_l, stride_dx_l,
        stride_init_s, stride_init_c, K, HAS_INIT, IS_VARLEN, SILU, True)
    return p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start


@triton.jit
def _causal_conv1d_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr,
    dx_ptr, part_ptr,                         # dx [B, L, C] unit channel stride; part [B * segments, K + 1, C] fp32
    seqlen, channels, seg_len,                # seg_len: tokens per program, a multiple of ROWS
    stride_x_b, stride_x_l,                   # x [B, L, C], unit channel stride
    stride_init_s, stride_init_c,             # initial state [B or S, C, K-1], unit last stride
    stride_dy_b, stride_dy_l,                 # dy [B, L, C], unit channel stride
    stride_dx_b, stride_dx_l,
    K: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, IS_VARLEN: tl.constexpr, SILU: tl.constexpr,
):
    """dx for tokens [pid_s * seg_len, +seg_len) x channels [pid_c * BLOCK_C, +BLOCK_C) of batch row b, and
    that block's dw / dbias partial (row k: weight column k; row K: bias)."""
    tl.static_assert(ROWS == 4, "the loop body is written out for 4 rows")
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < channels
    t0 = pid_s.to(tl.int64) * seg_len
    t_end = tl.minimum(t0 + seg_len, seqlen)
    x_row_base = b * stride_x_b
    dy_row_base = b * stride_dy_b
    dx_row_base = b * stride_dx_b
    part_ptr += (b * tl.num_programs(0) + pid_s) * (K + 1) * channels
    w0, w1, w2, w3, bias, seq, start, p1, p2, p3 = _segment_start(     # taps past K: their dx terms vanish
        x_ptr, w_ptr, bias_ptr, init_ptr, seq_idx_ptr, cu_ptr, x_row_base, b, t0, offs_c, c_ok, stride_x_l,
        stride_init_s, stride_init_c, BLOCK_C, K, HAS_BIAS, HAS_INIT, IS_VARLEN)
    if K > 4:                                     # these partial rows accumulate in memory
        for lag in tl.static_range(4, K):
            tl.store(part_ptr + (K - 1 - lag) * channels + offs_c, tl.zeros([BLOCK_C], dtype=tl.float32), mask=c_ok)
        tl.debug_barrier()
    q1 = tl.zeros([BLOCK_C], dtype=tl.float32)    # pending dx[t-1], dx[t-2], dx[t-3] (rows before t0: dropped)
    q2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    q3 = tl.zeros([BLOCK_C], dtype=tl.float32)
    dw0 = tl.zeros([BLOCK_C], dtype=tl.float32)   # dw_j = sum_t g[t] u[t-j]
    dw1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    dw2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    dw3 = tl.zeros([BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_C], dtype=tl.float32)
    x_ptrs = x_ptr + x_row_base + offs_c
    dy_ptrs = dy_ptr + dy_row_base + offs_c
    # software pipelining: the rows of the next ROWS-row step are loaded before the current step is computed, so
    # every program keeps 2 x ROWS row loads in flight while it computes
    c0, c1, c2, c3, d0, d1, d2, d3, s0, s1, s2, s3 = _load_rows(x_ptrs, dy_ptrs, seq_idx_ptr, t0, seqlen, seq, c_ok,
                                                                stride_x_l, stride_dy_l, IS_VARLEN)
    for t in range(t0, t_end, ROWS):
        n0, n1, n2, n3, e0, e1, e2, e3, r0, r1, r2, r3 = _load_rows(x_ptrs, dy_ptrs, seq_idx_ptr, t + ROWS, seqlen,
                                                                    seq, c_ok, stride_x_l, stride_dy_l, IS_VARLEN)
        if IS_VARLEN and K <= 4:
            # no sequence starts in these rows or in the 3 before them: the rows need no sequence logic
            if (s3 == seq) & (t >= start + 3):
                p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start = _bwd_step(
                    x_ptr, w_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, dx_ptr, part_ptr, x_row_base, dy_row_base,
                    dx_row_base, b, t, t0, t_end, seqlen, c0, c1, c2, c3, d0, d1, d2, d3, s0, s1, s2, s3, p1, p2, p3,
                    q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start, w0, w1, w2, w3, bias, offs_c, c_ok, channels,
                    stride_x_l, stride_dy_l, stride_dx_l, stride_init_s, stride_init_c, K, HAS_INIT, False, SILU)
            else:
                p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start = _bwd_step(
                    x_ptr, w_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, dx_ptr, part_ptr, x_row_base, dy_row_base,
                    dx_row_base, b, t, t0, t_end, seqlen, c0, c1, c2, c3, d0, d1, d2, d3, s0, s1, s2, s3, p1, p2, p3,
                    q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start, w0, w1, w2, w3, bias, offs_c, c_ok, channels,
                    stride_x_l, stride_dy_l, stride_dx_l, stride_init_s, stride_init_c, K, HAS_INIT, True, SILU)
        else:
            p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start = _bwd_step(
                x_ptr, w_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, dx_ptr, part_ptr, x_row_base, dy_row_base,
                dx_row_base, b, t, t0, t_end, seqlen, c0, c1, c2, c3, d0, d1, d2, d3, s0, s1, s2, s3, p1, p2, p3,
                q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start, w0, w1, w2, w3, bias, offs_c, c_ok, channels,
                stride_x_l, stride_dy_l, stride_dx_l, stride_init_s, stride_init_c, K, HAS_INIT, IS_VARLEN, SILU)
        c0, c1, c2, c3, d0, d1, d2, d3, s0, s1, s2, s3 = n0, n1, n2, n3, e0, e1, e2, e3, r0, r1, r2, r3
    # the halo after the segment (the last prefetched step, zero from seqlen on): 3 more rows complete the
    # segment's last dx rows; their g belongs to the next segment, so it feeds dx only (in the last segment the
    # loop may already have walked past seqlen: these rows are then zeros, and their dx rows are not stored)
    th = t0 + tl.cdiv(t_end - t0, ROWS) * ROWS
    p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start = _bwd_row(
        x_ptr, w_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, dx_ptr, part_ptr, x_row_base, dy_row_base,
        dx_row_base, b, th, t0, t_end, seqlen, c0, d0, s0, p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3,
        db, seq, start, w0, w1, w2, w3, bias, offs_c, c_ok, channels, stride_x_l, stride_dy_l, stride_dx_l,
        stride_init_s, stride_init_c, K, HAS_INIT, IS_VARLEN, SILU, False)
    p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start = _bwd_row(
        x_ptr, w_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, dx_ptr, part_ptr, x_row_base, dy_row_base,
        dx_row_base, b, th + 1, t0, t_end, seqlen, c1, d1, s1, p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3,
        db, seq, start, w0, w1, w2, w3, bias, offs_c, c_ok, channels, stride_x_l, stride_dy_l, stride_dx_l,
        stride_init_s, stride_init_c, K, HAS_INIT, IS_VARLEN, SILU, False)
    p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3, db, seq, start = _bwd_row(
        x_ptr, w_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, dx_ptr, part_ptr, x_row_base, dy_row_base,
        dx_row_base, b, th + 2, t0, t_end, seqlen, c2, d2, s2, p1, p2, p3, q1, q2, q3, dw0, dw1, dw2, dw3,
        db, seq, start, w0, w1, w2, w3, bias, offs_c, c_ok, channels, stride_x_l, stride_dy_l, stride_dx_l,
        stride_init_s, stride_init_c, K, HAS_INIT, IS_VARLEN, SILU, False)
    tl.store(part_ptr + (K - 1) * channels + offs_c, dw0, mask=c_ok)
    if K > 1:
        tl.store(part_ptr + (K - 2) * channels + offs_c, dw1, mask=c_ok)
    if K > 2:
        tl.store(part_ptr + (K - 3) * channels + offs_c, dw2, mask=c_ok)
    if K > 3:
        tl.store(part_ptr + (K - 4) * channels + offs_c, dw3, mask=c_ok)
    tl.store(part_ptr + K * channels + offs_c, db, mask=c_ok)


@triton.jit
def _causal_conv1d_bwd_dw_kernel(
    part_ptr, dw_ptr, db_ptr,                 # part [n_parts, K + 1, C] fp32; dw [C, K], db [C] contiguous
    n_parts, channels,
    K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dw[:, k] (k < K) or dbias (k = K) = the sum over the partials, in a fixed order (deterministic)."""
    pid_c = tl.program_id(0)
    k = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = tl.arange(0, BLOCK_P)
    c_ok = offs_c < channels
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, n_parts, BLOCK_P):
        p = (p0 + offs_p).to(tl.int64)
        acc += tl.load(part_ptr + (p[:, None] * (K + 1) + k) * channels + offs_c[None, :],
                       mask=(p < n_parts)[:, None] & c_ok[None, :], other=0.0)
    total = tl.sum(acc, axis=0)
    if k < K:
        tl.store(dw_ptr + offs_c * K + k, total.to(dw_ptr.dtype.element_ty), mask=c_ok)
    else:
        tl.store(db_ptr + offs_c, total.to(db_ptr.dtype.element_ty), mask=c_ok)


@triton.jit
def _causal_conv1d_bwd_init_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, cu_ptr, dy_ptr, dinit_ptr,   # dinit [B or S, C, K-1] contiguous
    seqlen, channels,
    stride_x_b, stride_x_l, stride_init_s, stride_init_c, stride_dy_b, stride_dy_l,
    K: tl.constexpr, KPOS: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_BIAS: tl.constexpr, IS_VARLEN: tl.constexpr, SILU: tl.constexpr,
):
    """dinit[s, c, j] = sum_{k<=j} w[c, k] dpre[start + j - k, c] for sequence s."""
    s = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < channels
    if IS_VARLEN:
        start = tl.load(cu_ptr + s).to(tl.int64)
        end = tl.load(cu_ptr + s + 1).to(tl.int64)
        b = 0
    else:
        start = 0
        end = seqlen
        b = s
    # positions start .. start + K - 2 as a [KPOS] vector (KPOS = power of two >= max(K-1, 2))
    offs_q = tl.arange(0, KPOS)
    pos = start + offs_q
    start_v = tl.zeros([KPOS], dtype=tl.int64) + start
    end_v = tl.where(offs_q < K - 1, tl.zeros([KPOS], dtype=tl.int64) + end, 0)
    state_row = tl.zeros([KPOS], dtype=tl.int64) + s
    dpre = _dpre(x_ptr, w_ptr, bias_ptr, init_ptr, dy_ptr, b * stride_x_b, b * stride_dy_b, pos, start_v, end_v,
                 state_row, offs_c, c_ok, stride_x_l, stride_init_s, stride_init_c, stride_dy_l,
                 K, HAS_BIAS, True, SILU)                                   # [KPOS, BLOCK_C], row q = dpre[start+q]
    for j in tl.static_range(K - 1):
        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for k in tl.static_range(j + 1):
            w_k = tl.load(w_ptr + offs_c * K + k, mask=c_ok, other=0.0).to(tl.float32)
            row = tl.sum(tl.where((offs_q == j - k)[:, None], dpre, 0.0), axis=0)
            acc += w_k * row
        tl.store(dinit_ptr + s * channels * (K - 1) + offs_c * (K - 1) + j, acc.to(dinit_ptr.dtype.element_ty),
                 mask=c_ok)
BWD_ROWS = 4                 # rows per loop iteration (written out in the kernel)
BWD_MAX_BLOCK_C = 512        # channels per program: 4 warps x 32 threads x 4 (8 B of bf16 per thread)
BWD_RESIDENT_PER_SM = 4      # programs an SM holds at once (<= 128 registers per thread)
BWD_MAXNREG = 128            # cap for 16-bit x, K <= 4: 125 registers without packed sequences; with them 164-168
                             # uncapped (3 programs per SM), 128 capped with 4-100 bytes of spills (None: no cap)
BWD_SEG_COST_ROWS = 10       # a segment's fixed cost in rows: 3 + 4 halo rows, its dw partial written and read
BWD_DW_BLOCK_P, BWD_DW_BLOCK_C = 32, 128     # the partials' reduction: [32 partials, 128 channels] per step
BWD_INIT_BLOCK_C = 128


def bwd_config(channels: int) -> dict:
    block_c = min(BWD_MAX_BLOCK_C, max(32, next_power_of_2(channels)))
    return {"BLOCK_C": block_c, "num_warps": max(1, min(4, block_c // 128))}


def bwd_seg_len(bsz: int, seqlen: int, channels: int, sm_count: int) -> int:
    """Tokens per program, a multiple of BWD_ROWS; each row of L is cut into equal segments. Programs run in waves
    of BWD_RESIDENT_PER_SM per SM and all take about as long, so a last wave with a few programs costs as much as a
    full one: among the cuts giving 2 to 8 waves (as many as L allows), take the one with the least
    waves x (segment + fixed cost). NemotronH's 32K tokens, 132 SMs: B1 and B4 -> 2 waves (376 tokens), B16 x L2K
    -> 4 waves (188)."""
    n_c = cdiv(channels, bwd_config(channels)["BLOCK_C"])
    return _seg_len(bsz, seqlen, n_c, BWD_RESIDENT_PER_SM * sm_count)


@functools.lru_cache(maxsize=64)
def _seg_len(bsz: int, seqlen: int, n_c: int, slots: int) -> int:
    max_segs = cdiv(seqlen, BWD_ROWS)
    lo = min(max_segs, cdiv(2 * slots, bsz * n_c))
    best = None
    for want in range(lo, min(max_segs, 4 * lo) + 1):
        seg_len = BWD_ROWS * cdiv(cdiv(seqlen, want), BWD_ROWS)
        waves = cdiv(bsz * n_c * cdiv(seqlen, seg_len), slots)
        cost = waves * (seg_len + BWD_SEG_COST_ROWS)
        if best is None or cost < best[0]:
            best = (cost, seg_len)
    return best[1]


def causal_conv1d_bwd_launch(x, weight, bias, seq_idx, cu_seqlens, initial_state, dy, dx, dweight, dbias, dinit,
                             silu: bool, sm_count: int) -> None:
    """x, dy [B, L, C] (unit channel stride); weight [C, K]; bias [C] | None; seq_idx [L] int32 and cu_seqlens
    [S+1] with packed sequences (else None); initial_state [B or S, C, K-1] | None. Writes dx [B, L, C] (unit
    channel stride), dweight [C, K] and dbias [C] (contiguous, any float dtype; dbias only with bias) and, if not
    None, dinit [B or S, C, K-1] (contiguous)."""
    import torch
    bsz, seqlen, channels = x.shape
    width = weight.shape[1]
    check_layout(x, weight, bias, initial_state, "causal_conv1d backward")
    assert dy.stride(2) == 1 and dx.stride(2) == 1, "causal_conv1d backward: dy and dx need a unit channel stride"
    assert dweight.is_contiguous() and (bias is None or dbias.is_contiguous()), \
        "causal_conv1d backward: dweight and dbias must be contiguous"
    assert (seq_idx is None) == (cu_seqlens is None), "causal_conv1d backward: seq_idx and cu_seqlens go together"
    has_init = initial_state is not None
    init = initial_state if has_init else x
    init_strides = (init.stride(0), init.stride(1)) if has_init else (0, 0)
    bias_arg = bias if bias is not None else weight
    cu_arg = cu_seqlens if cu_seqlens is not None else x
    if dinit is not None and dinit.numel():
        assert has_init and dinit.is_contiguous(), "causal_conv1d backward: dinit must be contiguous"
        _causal_conv1d_bwd_init_kernel[(dinit.shape[0], cdiv(channels, BWD_INIT_BLOCK_C))](
            x, weight, bias_arg, init, cu_arg, dy, dinit, seqlen, channels,
            x.stride(0), x.stride(1), *init_strides, dy.stride(0), dy.stride(1),
            K=width, KPOS=max(2, next_power_of_2(width - 1)), BLOCK_C=BWD_INIT_BLOCK_C,
            HAS_BIAS=bias is not None, IS_VARLEN=cu_seqlens is not None, SILU=silu, num_warps=4)
    if x.numel() == 0:
        dweight.zero_()
        if bias is not None:
            dbias.zero_()
        return
    cfg = bwd_config(channels)
    seg_len = bwd_seg_len(bsz, seqlen, channels, sm_count)
    n_seg = cdiv(seqlen, seg_len)
    part = torch.empty(bsz * n_seg, width + 1, channels, device=x.device, dtype=torch.float32)
    _causal_conv1d_bwd_kernel[(n_seg, cdiv(channels, cfg["BLOCK_C"]), bsz)](
        x, weight, bias_arg, init, seq_idx if seq_idx is not None else x, cu_arg, dy, dx, part,
        seqlen, channels, seg_len, x.stride(0), x.stride(1), *init_strides, dy.stride(0), dy.stride(1),
        dx.stride(0), dx.stride(1), K=width, BLOCK_C=cfg["BLOCK_C"], ROWS=BWD_ROWS, HAS_BIAS=bias is not None,
        HAS_INIT=has_init, IS_VARLEN=cu_seqlens is not None, SILU=silu, num_warps=cfg["num_warps"], num_stages=1,
        **({"maxnreg": BWD_MAXNREG} if BWD_MAXNREG and x.element_size() == 2 and width <= 4 else {}))
    _causal_conv1d_bwd_dw_kernel[(cdiv(channels, BWD_DW_BLOCK_C), width + (bias is not None))](
        part, dweight, dbias if bias is not None else dweight, part.shape[0], channels,
        K=width, BLOCK_P=BWD_DW_BLOCK_P, BLOCK_C=BWD_DW_BLOCK_C, num_warps=4)


def aot_compile_all():
    """(name, CompiledKernel) for NemotronH's conv backward (K = 4, bf16, silu, bias), sm_90a."""
    from .mamba_common import aot_compile
    dt = "bf16"
    sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "bias_ptr": f"*{dt}", "init_ptr": f"*{dt}", "seq_idx_ptr": "*i32",
           "cu_ptr": "*i32", "dy_ptr": f"*{dt}", "dx_ptr": f"*{dt}", "part_ptr": "*fp32", "seqlen": "i32",
           "channels": "i32", "seg_len": "i32", "stride_x_b": "i64", "stride_x_l": "i64", "stride_init_s": "i64",
           "stride_init_c": "i64", "stride_dy_b": "i64", "stride_dy_l": "i64", "stride_dx_b": "i64",
           "stride_dx_l": "i64"}
    cfg = bwd_config(6144)
    for varlen, has_init in ((False, False), (True, True)):
        consts = {"K": 4, "BLOCK_C": cfg["BLOCK_C"], "ROWS": BWD_ROWS, "HAS_BIAS": True, "HAS_INIT": has_init,
                  "IS_VARLEN": varlen, "SILU": True}
        yield (f"causal_conv1d_bwd varlen={varlen} init={has_init}",
               aot_compile(_causal_conv1d_bwd_kernel, sig, consts, num_warps=cfg["num_warps"], num_stages=1,
                           aligned=("channels",)))
    sig = {"part_ptr": "*fp32", "dw_ptr": f"*{dt}", "db_ptr": f"*{dt}", "n_parts": "i32", "channels": "i32"}
    consts = {"K": 4, "BLOCK_P": BWD_DW_BLOCK_P, "BLOCK_C": BWD_DW_BLOCK_C}
    yield "causal_conv1d_bwd_dw", aot_compile(_causal_conv1d_bwd_dw_kernel, sig, consts, num_warps=4,
                                              num_stages=1, aligned=("channels",))
    sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "bias_ptr": f"*{dt}", "init_ptr": f"*{dt}", "cu_ptr": "*i32",
           "dy_ptr": f"*{dt}", "dinit_ptr": f"*{dt}", "seqlen": "i32", "channels": "i32", "stride_x_b": "i64",
           "stride_x_l": "i64", "stride_init_s": "i64", "stride_init_c": "i64", "stride_dy_b": "i64",
           "stride_dy_l": "i64"}
    consts = {"K": 4, "KPOS": 4, "BLOCK_C": BWD_INIT_BLOCK_C, "HAS_BIAS": True, "IS_VARLEN": True, "SILU": True}
    yield "causal_conv1d_bwd_init varlen", aot_compile(_causal_conv1d_bwd_init_kernel, sig, consts, num_warps=4,
                                                       num_stages=1, aligned=("channels",))
