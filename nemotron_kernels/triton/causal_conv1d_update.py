"""One decode token of the depthwise causal conv (Triton), in place on a slot pool of conv states.

conv_state [S_slots, C, K-1] holds each slot's last K-1 inputs, oldest first. For batch row b (slot
slot_idx[b], or b): window = [state[slot, :, 0..K-2], x[b]]; y[b] = act(bias + sum_k w[:, k] window[k]);
state[slot] <- window[1..K-1]. A program owns BLOCK_C channels of one row: it reads the state before writing it."""
import triton
import triton.language as tl

from .common import cdiv
from .mamba_common import interpreting

INTERPRETED = interpreting()
LOAD_TOKEN = object()


@triton.jit
def _causal_conv1d_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, slot_idx_ptr, y_ptr,
    channels,
    stride_x_b,                                  # x [B, C], unit channel stride
    stride_state_s, stride_state_c, stride_state_k,
    stride_y_b,
    K: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_SLOTS: tl.constexpr, SILU: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < channels
    if HAS_SLOTS:
        slot = tl.load(slot_idx_ptr + b).to(tl.int64)
    else:
        slot = b
    state_row = state_ptr + slot * stride_state_s + offs_c * stride_state_c       # [BLOCK_C] pointers

    x_new = tl.load(x_ptr + b * stride_x_b + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    acc += x_new * tl.load(w_ptr + offs_c * K + (K - 1), mask=c_ok, other=0.0).to(tl.float32)
    # taps 1..K-2 of the state move one step left; tap 0 (the oldest) drops out
    prev = tl.load(state_row, mask=c_ok, other=0.0)                                # state[.., 0]
    acc += prev.to(tl.float32) * tl.load(w_ptr + offs_c * K, mask=c_ok, other=0.0).to(tl.float32)
    for j in tl.static_range(1, K - 1):
        cur = tl.load(state_row + j * stride_state_k, mask=c_ok, other=0.0)
        acc += cur.to(tl.float32) * tl.load(w_ptr + offs_c * K + j, mask=c_ok, other=0.0).to(tl.float32)
        tl.store(state_row + (j - 1) * stride_state_k, cur, mask=c_ok)
    tl.store(state_row + (K - 2) * stride_state_k, x_new.to(state_ptr.dtype.element_ty), mask=c_ok)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + b * stride_y_b + offs_c, acc.to(y_ptr.dtype.element_ty), mask=c_ok)


UPDATE_BLOCK_C = 256


def causal_conv1d_update_launch(x, conv_state, weight, bias, slot_idx, y, silu: bool) -> None:
    """x [B, C]; conv_state [S_slots, C, K-1] (updated in place); weight [C, K] contiguous; slot_idx [B] | None;
    writes y [B, C]."""
    bsz, channels = x.shape
    width = weight.shape[1]
    assert width >= 2, "causal_conv1d_update: K must be >= 2 (a conv state of K-1 >= 1 inputs)"
    assert x.stride(1) == 1 and y.stride(1) == 1, "causal_conv1d_update: x and y need a unit channel stride"
    assert weight.is_contiguous(), "causal_conv1d_update: weight must be contiguous [C, K]"
    assert bias is None or bias.is_contiguous(), "causal_conv1d_update: bias must be contiguous [C]"
    assert slot_idx is None or slot_idx.is_contiguous(), "causal_conv1d_update: slot_idx must be contiguous"
    if bsz == 0 or channels == 0:
        return
    grid = (bsz, cdiv(channels, UPDATE_BLOCK_C))
    _causal_conv1d_update_kernel[grid](
        x, conv_state, weight, bias if bias is not None else weight, slot_idx if slot_idx is not None else x, y,
        channels, x.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2), y.stride(0),
        K=width, BLOCK_C=UPDATE_BLOCK_C, HAS_BIAS=bias is not None, HAS_SLOTS=slot_idx is not None, SILU=silu,
        num_warps=4)


def aot_compile_all():
    """(name, CompiledKernel) for NemotronH's decode conv (K = 4, bf16 x, bf16 / fp32 state, slots), sm_90a."""
    from .mamba_common import aot_compile
    for state_dtype in ("bf16", "fp32"):
        sig = {"x_ptr": "*bf16", "state_ptr": f"*{state_dtype}", "w_ptr": "*bf16", "bias_ptr": "*bf16",
               "slot_idx_ptr": "*i32", "y_ptr": "*bf16", "channels": "i32", "stride_x_b": "i64",
               "stride_state_s": "i64", "stride_state_c": "i32", "stride_state_k": "i32", "stride_y_b": "i64"}
        consts = {"K": 4, "BLOCK_C": UPDATE_BLOCK_C, "HAS_BIAS": True, "HAS_SLOTS": True, "SILU": True}
        yield (f"causal_conv1d_update state={state_dtype}",
               aot_compile(_causal_conv1d_update_kernel, sig, consts, num_warps=4, num_stages=1,
                           unaligned=("stride_state_c", "stride_state_k"), aligned=("channels",)))
