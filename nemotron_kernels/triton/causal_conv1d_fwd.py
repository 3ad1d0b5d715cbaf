"""Depthwise causal conv1d forward (Triton): y[t, c] = act(bias[c] + sum_k w[c, k] * u[t - (K-1) + k, c]),
where u is the sequence preceded by its K-1 earlier inputs (the initial state, or zeros).

Layout: x [B, L, C] channel-last (unit channel stride, any row stride: x may be a slice of in_proj's output).
The main kernel covers BLOCK_L tokens x BLOCK_C channels per program and reads the K shifted [BLOCK_L, BLOCK_C]
tiles (the overlap hits L1/L2, so HBM sees x about once); taps before a sequence start read zero. Packed
sequences (cu_seqlens, B = 1): each token's sequence start comes from seq_idx (token -> sequence) and cu_seqlens.
With an initial state, a small second kernel rewrites the first K-1 outputs of every sequence (their taps reach
into the state), which keeps the state's gathers out of the main kernel. A third small kernel writes each
sequence's final state (its last K-1 inputs). Token offsets are int64."""
import triton
import triton.language as tl

from .mamba_common import interpreting

INTERPRETED = interpreting()
LOAD_TOKEN = object()


@triton.jit
def _tap(x_ptr, init_ptr, x_row_base, pos, start, stop, state_row, offs_c, c_ok,
         stride_x_l, stride_init_s, stride_init_c,
         KM1: tl.constexpr, HAS_INIT: tl.constexpr):
    """u[pos, c] for a [BLOCK_L] vector of positions (>= start - (K-1)): x inside the sequence, the initial state
    (or zero) before it, zero from `stop` on (never read past the tensor). -> [BLOCK_L, BLOCK_C] fp32."""
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
def _conv_rows(x_ptr, w_ptr, bias_ptr, init_ptr, x_row_base, pos, start, stop, state_row, offs_c, c_ok,
               stride_x_l, stride_init_s, stride_init_c,
               K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr):
    """act(bias + sum_k w[:, k] u[pos - (K-1) + k]) for a [BLOCK_L] vector of positions -> [BLOCK_L, BLOCK_C] fp32."""
    acc = tl.zeros([pos.shape[0], offs_c.shape[0]], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(K):
        w_k = tl.load(w_ptr + offs_c * K + k, mask=c_ok, other=0.0).to(tl.float32)       # [BLOCK_C]
        u = _tap(x_ptr, init_ptr, x_row_base, pos - (K - 1) + k, start, stop, state_row, offs_c, c_ok,
                 stride_x_l, stride_init_s, stride_init_c, K - 1, HAS_INIT)
        acc += u * w_k[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    return acc


@triton.jit
def _causal_conv1d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, seq_idx_ptr, cu_ptr, y_ptr,
    seqlen, channels,
    stride_x_b, stride_x_l,                   # x [B, L, C], unit channel stride
    stride_y_b, stride_y_l,                   # y [B, L, C], unit channel stride
    K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_BIAS: tl.constexpr, IS_VARLEN: tl.constexpr, SILU: tl.constexpr,
):
    """All tokens, taps before a sequence start read as zero (the init fix-up kernel redoes the first K-1)."""
    pid_l = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)                  # [BLOCK_L] token positions (int32: L < 2^31)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    l_ok = offs_l < seqlen
    c_ok = offs_c < channels
    if IS_VARLEN:
        seq = tl.load(seq_idx_ptr + offs_l, mask=l_ok, other=0)
        start = tl.load(cu_ptr + seq, mask=l_ok, other=0).to(tl.int64)
    else:
        start = tl.zeros([BLOCK_L], dtype=tl.int64)
    pos = offs_l.to(tl.int64)
    acc = _conv_rows(x_ptr, w_ptr, bias_ptr, x_ptr, b * stride_x_b, pos, start, seqlen, start, offs_c, c_ok,
                     stride_x_l, 0, 0, K, HAS_BIAS, False, SILU)
    tl.store(y_ptr + b * stride_y_b + pos[:, None] * stride_y_l + offs_c[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=l_ok[:, None] & c_ok[None, :])


@triton.jit
def _causal_conv1d_fwd_init_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, cu_ptr, y_ptr,
    seqlen, channels,
    stride_x_b, stride_x_l, stride_init_s, stride_init_c, stride_y_b, stride_y_l,
    K: tl.constexpr, KPOS: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_BIAS: tl.constexpr, IS_VARLEN: tl.constexpr, SILU: tl.constexpr,
):
    """Rewrites the first K-1 outputs of sequence s, whose taps reach into its initial state."""
    s = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < channels
    offs_q = tl.arange(0, KPOS)
    if IS_VARLEN:
        start = tl.load(cu_ptr + s).to(tl.int64)
        end = tl.load(cu_ptr + s + 1).to(tl.int64)
        b = s * 0
    else:
        start = s * 0
        end = s * 0 + seqlen
        b = s
    pos = start + offs_q
    ok = (offs_q < K - 1) & (pos < end)
    start_v = tl.zeros([KPOS], dtype=tl.int64) + start
    acc = _conv_rows(x_ptr, w_ptr, bias_ptr, init_ptr, b * stride_x_b, pos, start_v, end, start_v * 0 + s, offs_c,
                     c_ok, stride_x_l, stride_init_s, stride_init_c, K, HAS_BIAS, True, SILU)
    tl.store(y_ptr + b * stride_y_b + pos[:, None] * stride_y_l + offs_c[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=ok[:, None] & c_ok[None, :])


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


FWD_BLOCK_L, FWD_BLOCK_C, FWD_WARPS = 32, 128, 8     # 16 elements per thread


def check_layout(x, weight, bias, initial_state, where: str) -> None:
    assert x.stride(2) == 1, f"{where}: x needs a unit channel stride"
    assert weight.is_contiguous(), f"{where}: weight must be contiguous [C, K]"
    assert bias is None or bias.is_contiguous(), f"{where}: bias must be contiguous [C]"
    assert initial_state is None or initial_state.stride(2) == 1, \
        f"{where}: initial_state needs a unit stride on its last dim"


def causal_conv1d_fwd_launch(x, weight, bias, seq_idx, cu_seqlens, initial_state, y, silu: bool) -> None:
    """x [B, L, C]; weight [C, K]; bias [C] | None; seq_idx [L] int32 and cu_seqlens [S+1] with packed sequences
    (else None); initial_state [B or S, C, K-1] | None; writes y [B, L, C]."""
    bsz, seqlen, channels = x.shape
    if x.numel() == 0:
        return
    check_layout(x, weight, bias, initial_state, "causal_conv1d")
    assert y.stride(2) == 1, "causal_conv1d: y needs a unit channel stride"
    assert (seq_idx is None) == (cu_seqlens is None), "causal_conv1d: seq_idx and cu_seqlens go together"
    width = weight.shape[1]
    bias_arg = bias if bias is not None else weight
    grid = (triton.cdiv(seqlen, FWD_BLOCK_L), triton.cdiv(channels, FWD_BLOCK_C), bsz)
    _causal_conv1d_fwd_kernel[grid](
        x, weight, bias_arg, seq_idx if seq_idx is not None else x, cu_seqlens if cu_seqlens is not None else x, y,
        seqlen, channels, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
        K=width, BLOCK_L=FWD_BLOCK_L, BLOCK_C=FWD_BLOCK_C, HAS_BIAS=bias is not None,
        IS_VARLEN=cu_seqlens is not None, SILU=silu, num_warps=FWD_WARPS)
    if initial_state is not None and width > 1 and initial_state.shape[0] > 0:
        _causal_conv1d_fwd_init_kernel[(initial_state.shape[0], triton.cdiv(channels, 128))](
            x, weight, bias_arg, initial_state, cu_seqlens if cu_seqlens is not None else x, y,
            seqlen, channels, x.stride(0), x.stride(1), initial_state.stride(0), initial_state.stride(1),
            y.stride(0), y.stride(1), K=width, KPOS=max(2, triton.next_power_of_2(width - 1)), BLOCK_C=128,
            HAS_BIAS=bias is not None, IS_VARLEN=cu_seqlens is not None, SILU=silu, num_warps=4)


def causal_conv1d_final_state_launch(x, weight, cu_seqlens, initial_state, final) -> None:
    """final [B or S, C, K-1] <- the last K-1 inputs of each row / packed sequence."""
    nstates, channels, km1 = final.shape
    if final.numel() == 0:
        return
    check_layout(x, weight, None, initial_state, "causal_conv1d final state")
    assert final.stride(2) == 1, "causal_conv1d: final_state needs a unit last stride"
    init = initial_state if initial_state is not None else final
    block_c = 128
    grid = (nstates, triton.cdiv(channels, block_c))
    _causal_conv1d_final_state_kernel[grid](
        x, init, cu_seqlens if cu_seqlens is not None else final, final,
        x.shape[1], channels, x.stride(0), x.stride(1), init.stride(0), init.stride(1),
        final.stride(0), final.stride(1),
        K=km1 + 1, BLOCK_K=triton.next_power_of_2(max(km1, 1)), BLOCK_C=block_c,
        HAS_INIT=initial_state is not None, IS_VARLEN=cu_seqlens is not None, num_warps=4)


def aot_compile_all():
    """(name, CompiledKernel) for NemotronH's conv (K = 4, bf16, silu, bias) in every mode, sm_90a."""
    from .mamba_common import aot_compile
    dt = "bf16"
    sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "bias_ptr": f"*{dt}", "seq_idx_ptr": "*i32", "cu_ptr": "*i32",
           "y_ptr": f"*{dt}", "seqlen": "i32", "channels": "i32", "stride_x_b": "i64", "stride_x_l": "i64",
           "stride_y_b": "i64", "stride_y_l": "i64"}
    for varlen in (False, True):
        consts = {"K": 4, "BLOCK_L": FWD_BLOCK_L, "BLOCK_C": FWD_BLOCK_C, "HAS_BIAS": True, "IS_VARLEN": varlen,
                  "SILU": True}
        yield (f"causal_conv1d_fwd varlen={varlen}",
               aot_compile(_causal_conv1d_fwd_kernel, sig, consts, num_warps=FWD_WARPS, num_stages=1,
                           aligned=("channels",)))
    sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "bias_ptr": f"*{dt}", "init_ptr": f"*{dt}", "cu_ptr": "*i32",
           "y_ptr": f"*{dt}", "seqlen": "i32", "channels": "i32", "stride_x_b": "i64", "stride_x_l": "i64",
           "stride_init_s": "i64", "stride_init_c": "i64", "stride_y_b": "i64", "stride_y_l": "i64"}
    consts = {"K": 4, "KPOS": 4, "BLOCK_C": 128, "HAS_BIAS": True, "IS_VARLEN": True, "SILU": True}
    yield "causal_conv1d_fwd_init varlen", aot_compile(_causal_conv1d_fwd_init_kernel, sig, consts, num_warps=4,
                                                       num_stages=1, aligned=("channels",))
    sig = {"x_ptr": f"*{dt}", "init_ptr": f"*{dt}", "cu_ptr": "*i32", "final_ptr": f"*{dt}", "seqlen": "i32",
           "channels": "i32", "stride_x_b": "i64", "stride_x_l": "i64", "stride_init_s": "i64",
           "stride_init_c": "i64", "stride_final_s": "i64", "stride_final_c": "i64"}
    consts = {"K": 4, "BLOCK_K": 4, "BLOCK_C": 128, "HAS_INIT": True, "IS_VARLEN": True}
    yield "causal_conv1d_final_state varlen init", aot_compile(_causal_conv1d_final_state_kernel, sig, consts,
                                                               num_warps=4, num_stages=1, aligned=("channels",))
