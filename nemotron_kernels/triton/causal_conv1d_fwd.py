"""Depthwise causal conv1d forward (Triton): y[t, c] = act(bias[c] + sum_k w[c, k] * u[t - (K-1) + k, c]),
where u is the sequence preceded by its K-1 earlier inputs (the initial state, or zeros).

Layout: x [B, L, C] channel-last (unit channel stride, any row stride: x may be a slice of in_proj's output).
The main kernel streams: each program owns BLOCK_C channels (16-byte vectors per thread) and walks one segment of
tokens row by row, keeping the K-1 previous rows in registers (a sliding window), so x is read from memory once.
The loop body loads FWD_ROWS rows before computing any of them (several rows in flight per program), and the
launcher cuts L into enough segments to fill every SM; a segment starts by loading its K-1 halo rows from x or
from the initial state. Packed sequences (cu_seqlens, B = 1): a token whose seq_idx differs from the previous
token's starts a sequence, and the window restarts from that sequence's initial state (or zeros). Taps older
than 3 rows (K > 4 only) are reloaded from memory. A second small kernel writes each sequence's final state (its
last K-1 inputs). Token offsets are int64."""
import triton
import triton.language as tl

from .common import cdiv, next_power_of_2
from .mamba_common import interpreting

INTERPRETED = interpreting()
LOAD_TOKEN = object()


@triton.jit
def _tap(x_ptr, init_ptr, x_row_base, pos, start, stop, state_row, offs_c, c_ok,
         stride_x_l, stride_init_s, stride_init_c,
         KM1: tl.constexpr, HAS_INIT: tl.constexpr):
    """u[pos, c] for a [BLOCK_L] vector of positions (>= start - (K-1)): x inside the sequence, the initial state
    (or zero) before it, zero from `stop` on (never read past the tensor). -> [BLOCK_L, BLOCK_C] fp32.
    (Used by the backward.)"""
    inside = pos >= start
    vals = tl.load(x_ptr + x_row_base + pos[:, None] * stride_x_l + offs_c[None, :],
                   mask=(inside & (pos < stop))[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    if HAS_INIT:
        j = KM1 + pos - start                                  # index into the state [.., K-1], valid when < K-1
        before = (~inside) & (j >= 0)
        init = tl.load(init_ptr + state_row[:, None] * stride_init_s + offs_c[None, :] * stride_init_c + j[:, None],
                       mask=before[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        vals += init
    return vals


@triton.jit
def _row_tap(x_ptr, init_ptr, x_row_base, pos, start, state_row, offs_c, c_ok,
             stride_x_l, stride_init_s, stride_init_c,
             KM1: tl.constexpr, HAS_INIT: tl.constexpr):
    """u[pos, :] for one int64 position pos >= start - (K-1) of the sequence starting at `start`: x inside it,
    the initial state row `state_row` (or zero) before it. -> [BLOCK_C] fp32."""
    inside = pos >= start
    vals = tl.load(x_ptr + x_row_base + pos * stride_x_l + offs_c, mask=c_ok & inside, other=0.0).to(tl.float32)
    if HAS_INIT:
        j = KM1 + pos - start
        vals += tl.load(init_ptr + state_row.to(tl.int64) * stride_init_s + offs_c * stride_init_c + j,
                        mask=c_ok & (pos < start) & (j >= 0), other=0.0).to(tl.float32)
    return vals


@triton.jit
def _pre_act(x_ptr, w_ptr, init_ptr, x_row_base, t, x_t, p1, p2, p3, w0, w1, w2, w3, bias, seq, start, offs_c, c_ok,
             stride_x_l, stride_init_s, stride_init_c, K: tl.constexpr, HAS_INIT: tl.constexpr):
    """bias + sum_j w_j u[t - j] for row t (x_t = u[t], p1..p3 = u[t-1..t-3]; forward and backward)."""
    acc = bias + w0 * x_t
    if K > 1:
        acc += w1 * p1
    if K > 2:
        acc += w2 * p2
    if K > 3:
        acc += w3 * p3
    for lag in tl.static_range(4, K):             # K > 4: older taps come from memory (L1/L2), not registers
        w_lag = tl.load(w_ptr + offs_c * K + (K - 1 - lag), mask=c_ok, other=0.0).to(tl.float32)
        acc += w_lag * _row_tap(x_ptr, init_ptr, x_row_base, t - lag, start, seq, offs_c, c_ok, stride_x_l,
                                stride_init_s, stride_init_c, K - 1, HAS_INIT)
    return acc


@triton.jit
def _conv_row(x_ptr, w_ptr, init_ptr, seq_idx_ptr, y_ptr, x_row_base, y_row_base, t, t_end, cur, p1, p2, p3,
              seq, start, w0, w1, w2, w3, bias, offs_c, c_ok,
              stride_x_l, stride_y_l, stride_init_s, stride_init_c,
              K: tl.constexpr, HAS_INIT: tl.constexpr, IS_VARLEN: tl.constexpr, SILU: tl.constexpr):
    """y[t] from the current row `cur` (x[t], loaded by the caller) and the window p1..p3 = u[t-1..t-3]; stores
    it (if t < t_end) and returns the window shifted by one row, plus the (seq, start) of row t."""
    if IS_VARLEN:
        seq_t = tl.load(seq_idx_ptr + t, mask=t < t_end, other=seq)
        if seq_t != seq:                          # t starts sequence seq_t: restart the window from its state
            seq = seq_t
            start = t
            p1 = _row_tap(x_ptr, init_ptr, x_row_base, t - 1, start, seq, offs_c, c_ok, stride_x_l,
                          stride_init_s, stride_init_c, K - 1, HAS_INIT)
            if K > 2:
                p2 = _row_tap(x_ptr, init_ptr, x_row_base, t - 2, start, seq, offs_c, c_ok, stride_x_l,
                              stride_init_s, stride_init_c, K - 1, HAS_INIT)
            if K > 3:
                p3 = _row_tap(x_ptr, init_ptr, x_row_base, t - 3, start, seq, offs_c, c_ok, stride_x_l,
                              stride_init_s, stride_init_c, K - 1, HAS_INIT)
    x_t = cur.to(tl.float32)
    acc = _pre_act(x_ptr, w_ptr, init_ptr, x_row_base, t, x_t, p1, p2, p3, w0, w1, w2, w3, bias, seq, start,
                   offs_c, c_ok, stride_x_l, stride_init_s, stride_init_c, K, HAS_INIT)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + y_row_base + t * stride_y_l + offs_c, acc.to(y_ptr.dtype.element_ty), mask=c_ok & (t < t_end))
    return x_t, p1, p2, seq, start


@triton.jit
def _segment_start(x_ptr, w_ptr, bias_ptr, init_ptr, seq_idx_ptr, cu_ptr, x_row_base, b, t0, offs_c, c_ok,
                   stride_x_l, stride_init_s, stride_init_c, BLOCK_C: tl.constexpr, K: tl.constexpr,
                   HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """What a program walking tokens from t0 needs first (forward and backward): the taps w_j (w_j multiplies
    u[t - j], weight column K-1-j; taps past K are zero), the bias, t0's sequence id and start, and the halo p1..p3
    = u[t0-1], u[t0-2], u[t0-3] from x, the initial state or zeros. -> (w0, w1, w2, w3, bias, seq, start, p1, p2, p3)"""
    w0 = tl.load(w_ptr + offs_c * K + (K - 1), mask=c_ok, other=0.0).to(tl.float32)
    w1 = tl.load(w_ptr + offs_c * K + (K - 2), mask=c_ok & (K > 1), other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + offs_c * K + (K - 3), mask=c_ok & (K > 2), other=0.0).to(tl.float32)
    w3 = tl.load(w_ptr + offs_c * K + (K - 4), mask=c_ok & (K > 3), other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_C], dtype=tl.float32)
    if IS_VARLEN:
        seq = tl.load(seq_idx_ptr + t0)
        start = tl.load(cu_ptr + seq).to(tl.int64)
    else:
        seq = b
        start = t0 * 0
    p1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    p2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    p3 = tl.zeros([BLOCK_C], dtype=tl.float32)
    if K > 1:
        p1 = _row_tap(x_ptr, init_ptr, x_row_base, t0 - 1, start, seq, offs_c, c_ok, stride_x_l, stride_init_s,
                      stride_init_c, K - 1, HAS_INIT)
    if K > 2:
        p2 = _row_tap(x_ptr, init_ptr, x_row_base, t0 - 2, start, seq, offs_c, c_ok, stride_x_l, stride_init_s,
                      stride_init_c, K - 1, HAS_INIT)
    if K > 3:
        p3 = _row_tap(x_ptr, init_ptr, x_row_base, t0 - 3, start, seq, offs_c, c_ok, stride_x_l, stride_init_s,
                      stride_init_c, K - 1, HAS_INIT)
    return w0, w1, w2, w3, bias, seq, start, p1, p2, p3


@triton.jit
def _causal_conv1d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, seq_idx_ptr, cu_ptr, y_ptr,
    seqlen, channels, seg_len,                # seg_len: tokens per program, a multiple of ROWS
    stride_x_b, stride_x_l,                   # x [B, L, C], unit channel stride
    stride_init_s, stride_init_c,             # initial state [B or S, C, K-1], unit last stride
    stride_y_b, stride_y_l,                   # y [B, L, C], unit channel stride
    K: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, IS_VARLEN: tl.constexpr, SILU: tl.constexpr,
):
    """Tokens [pid_s * seg_len, +seg_len) x channels [pid_c * BLOCK_C, +BLOCK_C) of batch row b."""
    tl.static_assert(ROWS == 4, "the loop body is written out for 4 rows")
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < channels
    t0 = pid_s.to(tl.int64) * seg_len
    t_end = tl.minimum(t0 + seg_len, seqlen)
    x_row_base = b * stride_x_b
    y_row_base = b * stride_y_b
    w0, w1, w2, w3, bias, seq, start, p1, p2, p3 = _segment_start(
        x_ptr, w_ptr, bias_ptr, init_ptr, seq_idx_ptr, cu_ptr, x_row_base, b, t0, offs_c, c_ok, stride_x_l,
        stride_init_s, stride_init_c, BLOCK_C, K, HAS_BIAS, HAS_INIT, IS_VARLEN)
    x_ptrs = x_ptr + x_row_base + offs_c
    for t in range(t0, t_end, ROWS):
        # all ROWS loads are issued before the first store, so they are in flight together
        c0 = tl.load(x_ptrs + t * stride_x_l, mask=c_ok & (t < t_end), other=0.0)
        c1 = tl.load(x_ptrs + (t + 1) * stride_x_l, mask=c_ok & (t + 1 < t_end), other=0.0)
        c2 = tl.load(x_ptrs + (t + 2) * stride_x_l, mask=c_ok & (t + 2 < t_end), other=0.0)
        c3 = tl.load(x_ptrs + (t + 3) * stride_x_l, mask=c_ok & (t + 3 < t_end), other=0.0)
        p1, p2, p3, seq, start = _conv_row(x_ptr, w_ptr, init_ptr, seq_idx_ptr, y_ptr, x_row_base, y_row_base, t,
                                           t_end, c0, p1, p2, p3, seq, start, w0, w1, w2, w3, bias, offs_c, c_ok,
                                           stride_x_l, stride_y_l, stride_init_s, stride_init_c,
                                           K, HAS_INIT, IS_VARLEN, SILU)
        p1, p2, p3, seq, start = _conv_row(x_ptr, w_ptr, init_ptr, seq_idx_ptr, y_ptr, x_row_base, y_row_base,
                                           t + 1, t_end, c1, p1, p2, p3, seq, start, w0, w1, w2, w3, bias, offs_c,
                                           c_ok, stride_x_l, stride_y_l, stride_init_s, stride_init_c,
                                           K, HAS_INIT, IS_VARLEN, SILU)
        p1, p2, p3, seq, start = _conv_row(x_ptr, w_ptr, init_ptr, seq_idx_ptr, y_ptr, x_row_base, y_row_base,
                                           t + 2, t_end, c2, p1, p2, p3, seq, start, w0, w1, w2, w3, bias, offs_c,
                                           c_ok, stride_x_l, stride_y_l, stride_init_s, stride_init_c,
                                           K, HAS_INIT, IS_VARLEN, SILU)
        p1, p2, p3, seq, start = _conv_row(x_ptr, w_ptr, init_ptr, seq_idx_ptr, y_ptr, x_row_base, y_row_base,
                                           t + 3, t_end, c3, p1, p2, p3, seq, start, w0, w1, w2, w3, bias, offs_c,
                                           c_ok, stride_x_l, stride_y_l, stride_init_s, stride_init_c,
                                           K, HAS_INIT, IS_VARLEN, SILU)


@triton.jit
def _causal_conv1d_final_state_kernel(
    x_ptr, init_ptr, cu_ptr, final_ptr,
    seqlen, channels,
    stride_x_b, stride_x_l,
    stride_init_s, stride_init_c,
    stride_final_s, stride_final_c,           # final [B or S, C, K-1], unit last stride
    K: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_INIT: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """final[s, c, j] = u[end - (K-1) + j, c]: the last K-1 inputs of sequence s, reaching into its initial state
    (or zeros) when it is shorter than K-1."""
    s = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_j = tl.arange(0, BLOCK_K)
    c_ok = offs_c < channels
    j_ok = offs_j < K - 1
    if IS_VARLEN:
        start = tl.load(cu_ptr + s).to(tl.int64)
        end = tl.load(cu_ptr + s + 1).to(tl.int64)
        b = 0
    else:
        start = 0
        end = seqlen
        b = s
    # int64 positions: without varlen `end` is the int32 seqlen, and pos * stride_x_l passes 2^31 on long inputs
    pos = end - (K - 1) + offs_j.to(tl.int64)                                          # [BLOCK_K]
    inside = pos >= start
    mask = (inside & j_ok)[None, :] & c_ok[:, None]
    vals = tl.load(x_ptr + b * stride_x_b + pos[None, :] * stride_x_l + offs_c[:, None], mask=mask,
                   other=0.0).to(tl.float32)                                           # [BLOCK_C, BLOCK_K]
    if HAS_INIT:
        j = (K - 1) + pos - start
        before = (~inside) & (j >= 0) & j_ok
        vals += tl.load(init_ptr + s * stride_init_s + offs_c[:, None] * stride_init_c + j[None, :],
                        mask=before[None, :] & c_ok[:, None], other=0.0).to(tl.float32)
    tl.store(final_ptr + s * stride_final_s + offs_c[:, None] * stride_final_c + offs_j[None, :],
             vals.to(final_ptr.dtype.element_ty), mask=j_ok[None, :] & c_ok[:, None])


FWD_ROWS = 4                 # rows per loop iteration (written out in the kernel)
FWD_MAX_BLOCK_C = 1024       # channels per program: 4 warps x 32 threads x 8 (16 B of bf16 per thread)
FWD_PROGRAMS_PER_SM = 8      # segments are cut so that about this many programs per SM cover the input


def fwd_config(channels: int) -> dict:
    block_c = min(FWD_MAX_BLOCK_C, max(32, next_power_of_2(channels)))
    return {"BLOCK_C": block_c, "num_warps": max(1, min(4, block_c // 256))}


def fwd_seg_len(bsz: int, seqlen: int, channels: int, sm_count: int) -> int:
    """Tokens per program: enough programs for every SM (~FWD_PROGRAMS_PER_SM each), a multiple of FWD_ROWS.
    Each segment re-reads K-1 halo rows, < 2% extra at NemotronH's prefill shapes."""
    n_c = cdiv(channels, fwd_config(channels)["BLOCK_C"])
    per_program = cdiv(bsz * seqlen * n_c, FWD_PROGRAMS_PER_SM * sm_count)
    return FWD_ROWS * cdiv(max(1, per_program), FWD_ROWS)


def check_layout(x, weight, bias, initial_state, where: str) -> None:
    assert x.stride(2) == 1, f"{where}: x needs a unit channel stride"
    assert weight.is_contiguous(), f"{where}: weight must be contiguous [C, K]"
    assert bias is None or bias.is_contiguous(), f"{where}: bias must be contiguous [C]"
    assert initial_state is None or initial_state.stride(2) == 1, \
        f"{where}: initial_state needs a unit stride on its last dim"


def causal_conv1d_fwd_launch(x, weight, bias, seq_idx, cu_seqlens, initial_state, y, silu: bool,
                             sm_count: int) -> None:
    """x [B, L, C]; weight [C, K]; bias [C] | None; seq_idx [L] int32 and cu_seqlens [S+1] with packed sequences
    (else None); initial_state [B or S, C, K-1] | None; writes y [B, L, C]."""
    bsz, seqlen, channels = x.shape
    if x.numel() == 0:
        return
    check_layout(x, weight, bias, initial_state, "causal_conv1d")
    assert y.stride(2) == 1, "causal_conv1d: y needs a unit channel stride"
    assert (seq_idx is None) == (cu_seqlens is None), "causal_conv1d: seq_idx and cu_seqlens go together"
    cfg = fwd_config(channels)
    seg_len = fwd_seg_len(bsz, seqlen, channels, sm_count)
    has_init = initial_state is not None
    init = initial_state if has_init else x
    init_strides = (init.stride(0), init.stride(1)) if has_init else (0, 0)
    grid = (cdiv(seqlen, seg_len), cdiv(channels, cfg["BLOCK_C"]), bsz)
    _causal_conv1d_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, init, seq_idx if seq_idx is not None else x,
        cu_seqlens if cu_seqlens is not None else x, y, seqlen, channels, seg_len, x.stride(0), x.stride(1),
        *init_strides, y.stride(0), y.stride(1), K=weight.shape[1], BLOCK_C=cfg["BLOCK_C"], ROWS=FWD_ROWS,
        HAS_BIAS=bias is not None, HAS_INIT=has_init, IS_VARLEN=cu_seqlens is not None, SILU=silu,
        num_warps=cfg["num_warps"], num_stages=1)


def causal_conv1d_final_state_launch(x, weight, cu_seqlens, initial_state, final) -> None:
    """final [B or S, C, K-1] <- the last K-1 inputs of each row / packed sequence."""
    nstates, channels, km1 = final.shape
    if final.numel() == 0:
        return
    check_layout(x, weight, None, initial_state, "causal_conv1d final state")
    assert final.stride(2) == 1, "causal_conv1d: final_state needs a unit last stride"
    init = initial_state if initial_state is not None else final
    block_c = 128
    grid = (nstates, cdiv(channels, block_c))
    _causal_conv1d_final_state_kernel[grid](
        x, init, cu_seqlens if cu_seqlens is not None else final, final,
        x.shape[1], channels, x.stride(0), x.stride(1), init.stride(0), init.stride(1),
        final.stride(0), final.stride(1),
        K=km1 + 1, BLOCK_K=next_power_of_2(max(km1, 1)), BLOCK_C=block_c,
        HAS_INIT=initial_state is not None, IS_VARLEN=cu_seqlens is not None, num_warps=4)


def aot_compile_all():
    """(name, CompiledKernel) for NemotronH's conv (K = 4, bf16, silu, bias) in every mode, sm_90a."""
    from .mamba_common import aot_compile
    dt = "bf16"
    sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "bias_ptr": f"*{dt}", "init_ptr": f"*{dt}", "seq_idx_ptr": "*i32",
           "cu_ptr": "*i32", "y_ptr": f"*{dt}", "seqlen": "i32", "channels": "i32", "seg_len": "i32",
           "stride_x_b": "i64", "stride_x_l": "i64", "stride_init_s": "i64", "stride_init_c": "i64",
           "stride_y_b": "i64", "stride_y_l": "i64"}
    cfg = fwd_config(6144)
    for varlen, has_init in ((False, False), (False, True), (True, True)):
        consts = {"K": 4, "BLOCK_C": cfg["BLOCK_C"], "ROWS": FWD_ROWS, "HAS_BIAS": True, "HAS_INIT": has_init,
                  "IS_VARLEN": varlen, "SILU": True}
        yield (f"causal_conv1d_fwd varlen={varlen} init={has_init}",
               aot_compile(_causal_conv1d_fwd_kernel, sig, consts, num_warps=cfg["num_warps"], num_stages=1,
                           aligned=("channels",)))
    sig = {"x_ptr": f"*{dt}", "init_ptr": f"*{dt}", "cu_ptr": "*i32", "final_ptr": f"*{dt}", "seqlen": "i32",
           "channels": "i32", "stride_x_b": "i64", "stride_x_l": "i64", "stride_init_s": "i64",
           "stride_init_c": "i64", "stride_final_s": "i64", "stride_final_c": "i64"}
    consts = {"K": 4, "BLOCK_K": 4, "BLOCK_C": 128, "HAS_INIT": True, "IS_VARLEN": True}
    yield "causal_conv1d_final_state varlen init", aot_compile(_causal_conv1d_final_state_kernel, sig, consts,
                                                               num_warps=4, num_stages=1, aligned=("channels",))
