"""Depthwise causal conv1d backward (Triton). With pre[t] = bias + sum_k w[k] u[t-(K-1)+k] and y = act(pre):
    dpre[t] = dy[t] * act'(pre[t])                       (pre recomputed from x, nothing saved)
    dx[t]   = sum_k w[k] dpre[t + (K-1) - k]              (only taps inside t's sequence)
    dw[k]   = sum_t dpre[t] u[t-(K-1)+k],  dbias = sum_t dpre[t]
    dinit[s, j] = sum_{k<=j} w[k] dpre[start_s + j - k]    (the initial state's inputs, second kernel)
The main kernel walks a range of token tiles per program and keeps dw / dbias partials in registers; the
launcher sums the [programs, K+1, C] fp32 partials. Token offsets are int64."""
import triton
import triton.language as tl

from . import causal_conv1d_fwd
from .causal_conv1d_fwd import _tap, check_layout
from .mamba_common import dep_tokens, interpreting

INTERPRETED = interpreting()
LOAD_TOKEN = object()
DEPENDS = ("causal_conv1d_fwd",)
DEP_TOKENS = dep_tokens(causal_conv1d_fwd)


@triton.jit
def _dpre(x_ptr, w_ptr, bias_ptr, init_ptr, dy_ptr, x_row_base, dy_row_base, pos, start, end, state_row,
          offs_c, c_ok, stride_x_l, stride_init_s, stride_init_c, stride_dy_l,
          K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr):
    """dL/dpre at a [BLOCK_L] vector of positions (zero outside [start, end)). -> [BLOCK_L, BLOCK_C] fp32."""
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
        sig = tl.sigmoid(pre)
        dy = dy * sig * (1.0 + pre * (1.0 - sig))
    return dy


@triton.jit
def _causal_conv1d_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr,
    dx_ptr, dw_partial_ptr,                  # dx [B, L, C] contiguous; dw_partial [B * n_ranges, K + 1, C] fp32
    seqlen, channels, tiles_per_range,
    stride_x_b, stride_x_l, stride_init_s, stride_init_c, stride_dy_b, stride_dy_l,
    K: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, IS_VARLEN: tl.constexpr, SILU: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < channels
    x_row_base = b * stride_x_b
    dy_row_base = b * stride_dy_b
    offs_k = tl.arange(0, BLOCK_K)
    dw_acc = tl.zeros([BLOCK_K, BLOCK_C], dtype=tl.float32)           # row k: sum_t dpre[t] u[t-(K-1)+k]
    db_acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    tile0 = pid_r * tiles_per_range
    for tile in range(tile0, tile0 + tiles_per_range):
        offs_l = tile * BLOCK_L + tl.arange(0, BLOCK_L)
        l_ok = offs_l < seqlen
        if IS_VARLEN:
            seq = tl.load(seq_idx_ptr + offs_l, mask=l_ok, other=0)
            start = tl.load(cu_ptr + seq, mask=l_ok, other=0).to(tl.int64)
            end = tl.load(cu_ptr + seq + 1, mask=l_ok, other=0).to(tl.int64)
            state_row = seq.to(tl.int64)
        else:
            start = tl.zeros([BLOCK_L], dtype=tl.int64)
            end = tl.zeros([BLOCK_L], dtype=tl.int64) + seqlen
            state_row = tl.zeros([BLOCK_L], dtype=tl.int64) + b
        pos = offs_l.to(tl.int64)
        end = tl.where(l_ok, end, 0)                                    # rows past L contribute nothing
        dx = tl.zeros([BLOCK_L, BLOCK_C], dtype=tl.float32)
        for shift in tl.static_range(K):                                # tap k = K-1-shift reads t + shift
            dpre = _dpre(x_ptr, w_ptr, bias_ptr, init_ptr, dy_ptr, x_row_base, dy_row_base, pos + shift, start,
                         end, state_row, offs_c, c_ok, stride_x_l, stride_init_s, stride_init_c, stride_dy_l,
                         K, HAS_BIAS, HAS_INIT, SILU)
            w_k = tl.load(w_ptr + offs_c * K + (K - 1 - shift), mask=c_ok, other=0.0).to(tl.float32)
            dx += dpre * w_k[None, :]
            if shift == 0:                                              # dpre at t itself: weight / bias grads
                db_acc += tl.sum(dpre, axis=0)
                for k in tl.static_range(K):
                    u = _tap(x_ptr, init_ptr, x_row_base, pos - (K - 1) + k, start, end, state_row, offs_c, c_ok,
                             stride_x_l, stride_init_s, stride_init_c, K - 1, HAS_INIT)
                    dw_acc += tl.where(offs_k[:, None] == k, tl.sum(dpre * u, axis=0)[None, :], 0.0)
        tl.store(dx_ptr + b * seqlen * channels + pos[:, None] * channels + offs_c[None, :],
                 dx.to(dx_ptr.dtype.element_ty), mask=l_ok[:, None] & c_ok[None, :])
    part = (b * tl.num_programs(0) + pid_r) * (K + 1) * channels
    tl.store(dw_partial_ptr + part + offs_k[:, None] * channels + offs_c[None, :], dw_acc,
             mask=(offs_k < K)[:, None] & c_ok[None, :])
    tl.store(dw_partial_ptr + part + K * channels + offs_c, db_acc, mask=c_ok)


@triton.jit
def _causal_conv1d_bwd_init_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, cu_ptr, dy_ptr, dinit_ptr,   # dinit [B or S, C, K-1] fp32 contiguous
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
        tl.store(dinit_ptr + s * channels * (K - 1) + offs_c * (K - 1) + j, acc, mask=c_ok)


BWD_BLOCK_L, BWD_BLOCK_C, BWD_WARPS = 16, 128, 8     # 8 elements per thread (the K^2 recomputed taps are many)


def bwd_ranges(bsz: int, seqlen: int, channels: int, sm_count: int) -> tuple[int, int]:
    """(ranges per row, token tiles per range): ~4 programs per SM, each walking consecutive token tiles."""
    n_tiles = triton.cdiv(seqlen, BWD_BLOCK_L)
    n_c = triton.cdiv(channels, BWD_BLOCK_C)
    ranges = max(1, min(n_tiles, (4 * sm_count) // max(1, bsz * n_c)))
    tiles_per_range = triton.cdiv(n_tiles, ranges)
    return triton.cdiv(n_tiles, tiles_per_range), tiles_per_range


def causal_conv1d_bwd_launch(x, weight, bias, seq_idx, cu_seqlens, initial_state, dy, dx, silu: bool,
                             sm_count: int, want_dinit: bool):
    """dx [B, L, C] (contiguous) <- dL/dx; returns (dw_partial [programs, K+1, C] fp32, dinit fp32 | None)."""
    import torch
    bsz, seqlen, channels = x.shape
    width = weight.shape[1]
    check_layout(x, weight, bias, initial_state, "causal_conv1d backward")
    assert dy.stride(2) == 1 and dx.is_contiguous(), "causal_conv1d backward: dy unit channel stride, dx contiguous"
    init = initial_state if initial_state is not None else x
    init_strides = (init.stride(0), init.stride(1)) if initial_state is not None else (0, 0)
    common = dict(K=width, HAS_BIAS=bias is not None, IS_VARLEN=cu_seqlens is not None, SILU=silu)
    bias_arg = bias if bias is not None else weight
    dinit = None
    if want_dinit:
        dinit = torch.empty(initial_state.shape, device=x.device, dtype=torch.float32)
        if dinit.numel():
            _causal_conv1d_bwd_init_kernel[(dinit.shape[0], triton.cdiv(channels, BWD_BLOCK_C))](
                x, weight, bias_arg, init, cu_seqlens if cu_seqlens is not None else x, dy, dinit, seqlen, channels,
                x.stride(0), x.stride(1), *init_strides, dy.stride(0), dy.stride(1),
                KPOS=max(2, triton.next_power_of_2(width - 1)), BLOCK_C=BWD_BLOCK_C, num_warps=4, **common)
    if x.numel() == 0:
        return torch.zeros(1, width + 1, channels, device=x.device, dtype=torch.float32), dinit
    ranges, tiles_per_range = bwd_ranges(bsz, seqlen, channels, sm_count)
    dw_partial = torch.empty(bsz * ranges, width + 1, channels, device=x.device, dtype=torch.float32)
    _causal_conv1d_bwd_kernel[(ranges, triton.cdiv(channels, BWD_BLOCK_C), bsz)](
        x, weight, bias_arg, init, seq_idx if seq_idx is not None else x,
        cu_seqlens if cu_seqlens is not None else x, dy, dx, dw_partial, seqlen, channels, tiles_per_range,
        x.stride(0), x.stride(1), *init_strides, dy.stride(0), dy.stride(1),
        BLOCK_K=triton.next_power_of_2(width), BLOCK_L=BWD_BLOCK_L, BLOCK_C=BWD_BLOCK_C,
        HAS_INIT=initial_state is not None, num_warps=BWD_WARPS, **common)
    return dw_partial, dinit


def aot_compile_all():
    """(name, CompiledKernel) for NemotronH's conv backward (K = 4, bf16, silu, bias), sm_90a."""
    from .mamba_common import aot_compile
    dt = "bf16"
    sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "bias_ptr": f"*{dt}", "init_ptr": f"*{dt}", "seq_idx_ptr": "*i32",
           "cu_ptr": "*i32", "dy_ptr": f"*{dt}", "dx_ptr": f"*{dt}", "dw_partial_ptr": "*fp32", "seqlen": "i32",
           "channels": "i32", "tiles_per_range": "i32", "stride_x_b": "i64", "stride_x_l": "i64",
           "stride_init_s": "i64", "stride_init_c": "i64", "stride_dy_b": "i64", "stride_dy_l": "i64"}
    for varlen, has_init in ((False, False), (True, True)):
        consts = {"K": 4, "BLOCK_K": 4, "BLOCK_L": BWD_BLOCK_L, "BLOCK_C": BWD_BLOCK_C, "HAS_BIAS": True,
                  "HAS_INIT": has_init, "IS_VARLEN": varlen, "SILU": True}
        yield (f"causal_conv1d_bwd varlen={varlen} init={has_init}",
               aot_compile(_causal_conv1d_bwd_kernel, sig, consts, num_warps=BWD_WARPS, num_stages=1,
                           aligned=("channels",)))
    sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "bias_ptr": f"*{dt}", "init_ptr": f"*{dt}", "cu_ptr": "*i32",
           "dy_ptr": f"*{dt}", "dinit_ptr": "*fp32", "seqlen": "i32", "channels": "i32", "stride_x_b": "i64",
           "stride_x_l": "i64", "stride_init_s": "i64", "stride_init_c": "i64", "stride_dy_b": "i64",
           "stride_dy_l": "i64"}
    consts = {"K": 4, "KPOS": 4, "BLOCK_C": BWD_BLOCK_C, "HAS_BIAS": True, "IS_VARLEN": True, "SILU": True}
    yield "causal_conv1d_bwd_init varlen", aot_compile(_causal_conv1d_bwd_init_kernel, sig, consts, num_warps=4,
                                                       num_stages=1, aligned=("channels",))
