"""Public op `moe_experts`: NemotronH's routed squared-ReLU experts plus the shared expert (reference/moe_experts.py).

CUDA path (bf16 x and weights, hidden/expert widths multiples of 8, E <= 1024, top_k <= 32), all without a host
sync and bitwise deterministic:
    rows, row_of_assignment, offsets = moe_permute(x, topk_idx)          [M = T*k rows, expert-sorted]
    h  = relu(rows @ up[e]^T)^2        grouped NT GEMM, relu^2 in the epilogue   [M, I]
    y  = h @ down[e]^T                 grouped NT GEMM                          [M, H]
    hs = relu(x @ shared_up^T)^2, ys = hs @ shared_down^T   (the same kernels with one group)
    out[t] = round(sum_j w[t, j] y[row(t, j)]) + ys[t]       (one gather kernel, fp32 sum in slot order)
Backward (dX and dW of both GEMMs, bf16): dy = w * dout (rows), dw = <dout, y>; dpre = (dy @ down[e]) * 2 sqrt(h)
(a grouped NN GEMM, then relu2_grad, one Triton pass: relu(pre) = sqrt(h), so only h is kept, never pre; fused
into the GEMM's epilogue it was 18% slower at T = 16384, bench/NOTES.md session 19);
d_down[e] = dy_e^T h_e and d_up[e] = dpre_e^T rows_e (grouped TN GEMMs, K = the expert's rows);
d rows = dpre @ up[e]; dx = sum_j d rows[row(t, j)] (+ the shared expert's dx, in the same gather kernel).
Saved for backward: rows, h, y (for d topk_weight), and the shared expert's hs.
The forward GEMMs pick their kernel by rows per expert (csrc/moe/moe_kernels.h, path_for): <= 16 rows in
all (T <= 2 at top-6) a grouped GEMV that streams each touched expert's weights once; <= 32 rows per expert on
average swapped operands (the weights' channels on the MMA's 64-row side, the rows on a 32-wide N side); more,
128-row tiles.
Inference at decode sizes (no gradient wanted, T * k <= 16) skips the permute: moe_decode_gemv takes each
assignment's expert straight from topk_idx and runs the shared expert in the same launch, so the layer is three
kernels (up, down, weighted sum) instead of six; for one token two (moe_decode_down: the down and the sum).
Everything else (CPU, other dtypes, unaligned sizes) runs the reference; unaligned sizes on CUDA warn once.

moe_experts_fp8 (+ quantize_experts_fp8): the same layer with FP8 e4m3 GEMMs for inference (per-token activation
scales, per-channel weight scales, dequantisation and relu^2 fused in the epilogue, h re-quantised per row); at
decode sizes (T * k <= 16) weights-only instead: bf16 x and h through the weights-only decode GEMV."""
import functools
import warnings

import torch

from .. import _ext
from ..reference.grouped_gemm import WEIGHTS_ONLY_MAX_ROWS, moe_experts_fp8_ref, weights_only_for
from ..reference.moe_experts import moe_experts_ref
from .grouped_gemm import (grouped_gemm_fp8_nt, grouped_gemm_nn, grouped_gemm_nt, grouped_gemm_tn,
                           grouped_gemm_w8_nt, moe_decode_down, moe_decode_gemv, one_group_offsets,
                           quantize_fp8_rowwise, quantize_fp8_rowwise_op, relu2_grad, use_kernel)
from .moe_permute import (MAX_EXPERTS, MAX_TOP_K, kernel_permutation, moe_permute_op, moe_permute_rows_op,
                          moe_permute_scaled_op, moe_unpermute_bwd_op, moe_unpermute_op)


class MoeExpertsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, topk_idx, topk_weight, up, down, shared_up, shared_down, permutation):
        nexperts = up.shape[0]
        has_shared = shared_up is not None
        if permutation is None:
            rows, row_of_assignment, offsets = moe_permute_op(x, topk_idx, nexperts, 1)   # [M, H], [T, k], [E+1]
        else:                                                                           # the router's (one launch)
            row_of_assignment, offsets, token_of_row = permutation
            rows = moe_permute_rows_op(x, row_of_assignment, token_of_row)
        h = grouped_gemm_nt(rows, up, offsets, True)                                  # [M, I]
        y = grouped_gemm_nt(h, down, offsets, False)                                  # [M, H]
        ys = hs = offsets_s = None
        if has_shared:
            offsets_s = one_group_offsets(x.shape[0], x.device)
            hs = grouped_gemm_nt(x, shared_up.unsqueeze(0), offsets_s, True)          # [T, Is]
            ys = grouped_gemm_nt(hs, shared_down.unsqueeze(0), offsets_s, False)      # [T, H]
        weight32 = topk_weight.float().contiguous()                                   # [T, k]
        out = moe_unpermute_op(y, row_of_assignment, weight32, ys)                    # [T, H]
        ctx.has_shared = has_shared
        ctx.weight_dtype = topk_weight.dtype
        ctx.save_for_backward(x, rows, row_of_assignment, offsets, h, y if topk_weight.requires_grad else None,
                              weight32, up, down, hs, offsets_s, shared_up, shared_down)
        return out

    @staticmethod
    def backward(ctx, dout):
        (x, rows, row_of_assignment, offsets, h, y, weight32, up, down, hs, offsets_s, shared_up,
         shared_down) = ctx.saved_tensors
        need_x, _, need_w, need_up, need_down, need_sup, need_sdown, _ = ctx.needs_input_grad
        dout = dout.contiguous()                                                      # [T, H]
        dy, d_weight = moe_unpermute_bwd_op(dout, y, row_of_assignment, weight32, rows.shape[0])  # [M, H], [T, k]
        d_down = grouped_gemm_tn(dy, h, offsets) if need_down else None               # [E, H, I]
        d_up = d_x = d_shared_up = d_shared_down = None
        if need_x or need_up:
            dpre = relu2_grad(grouped_gemm_nn(dy, down, offsets), h)                  # [M, I] = (dy @ down) * 2 sqrt(h)
            if need_up:
                d_up = grouped_gemm_tn(dpre, rows, offsets)                           # [E, I, H]
            if need_x:
                d_rows = grouped_gemm_nn(dpre, up, offsets)                           # [M, H]
        d_x_shared = None
        if ctx.has_shared and (need_x or need_sup or need_sdown):
            if need_sdown:
                d_shared_down = grouped_gemm_tn(dout, hs, offsets_s)[0]               # [H, Is]
            if need_x or need_sup:
                dpre_s = relu2_grad(grouped_gemm_nn(dout, shared_down.unsqueeze(0), offsets_s), hs)  # [T, Is]
                if need_sup:
                    d_shared_up = grouped_gemm_tn(dpre_s, x, offsets_s)[0]            # [Is, H]
                if need_x:
                    d_x_shared = grouped_gemm_nn(dpre_s, shared_up.unsqueeze(0), offsets_s)  # [T, H]
        if need_x:
            d_x = moe_unpermute_op(d_rows, row_of_assignment, None, d_x_shared)       # [T, H]
        d_weight = d_weight.to(ctx.weight_dtype) if need_w else None
        return d_x, None, d_weight, d_up, d_down, d_shared_up, d_shared_down, None


@functools.cache
def _warn_fallback(why: str) -> None:
    warnings.warn(f"moe_experts: running the reference on CUDA ({why})", stacklevel=3)


def _kernel_blocker(x, topk_idx, up, down, shared_up, shared_down) -> str | None:
    """Why the CUDA path cannot take these (CUDA, bf16) inputs, or None."""
    sizes = {"H (hidden)": x.shape[1], "I (expert width)": up.shape[1]}
    if shared_up is not None:
        sizes["Is (shared expert width)"] = shared_up.shape[0]
    bad = [f"{name} = {n}" for name, n in sizes.items() if n % 8 != 0]
    if bad:
        return f"{', '.join(bad)} not a multiple of 8 (TMA needs 16-byte aligned rows)"
    if up.shape[0] > MAX_EXPERTS:
        return f"E = {up.shape[0]} > {MAX_EXPERTS} experts"
    if topk_idx.shape[1] > MAX_TOP_K:
        return f"top_k = {topk_idx.shape[1]} > {MAX_TOP_K}"
    if x.shape[0] == 0:
        return "no tokens"
    return None


def moe_experts(x, topk_idx, topk_weight, up, down, shared_up=None, shared_down=None, permutation=None):
    """Routed experts (+ shared expert) for a batch of tokens.

    Args:
        x [T, Hd]: tokens.   topk_idx [T, k] int32/int64: chosen experts, values in [0, E).
        topk_weight [T, k]: routing weights.   up [E, I, Hd], down [E, Hd, I]: expert weights (nn.Linear layout).
        shared_up [Is, Hd] | None, shared_down [Hd, Is] | None: the shared expert (both or neither).
        permutation: (row_of_assignment, expert_offsets, token_of_row) of topk_idx as moe_router_permute returns
            them (pad_to 1, `moe_router(..., with_permutation=True)`), or None: with one, the CUDA path copies the
            rows without ranking them again. The result is the same either way.
    Returns:
        [T, Hd] in x's dtype: round(sum_j w_j down_j(relu(up_j x)^2)) + shared(x). Differentiable in x,
        topk_weight, up, down, shared_up and shared_down.
    """
    weights = [up, down] + ([shared_up, shared_down] if shared_up is not None else [])
    tensors_ok = all(isinstance(t, torch.Tensor) for t in [x, topk_idx, topk_weight, *weights])
    if not (tensors_ok and (shared_up is None) == (shared_down is None) and use_kernel(x, *weights)
            and x.dim() == 2 and topk_idx.dim() == 2 and up.dim() == 3
            and (shared_up is None or shared_up.dim() == 2)):
        return moe_experts_ref(x, topk_idx, topk_weight, up, down, shared_up, shared_down, permutation)
    blocker = _kernel_blocker(x, topk_idx, up, down, shared_up, shared_down)
    if blocker is not None:
        if x.shape[0] > 0:
            _warn_fallback(blocker)
        return moe_experts_ref(x, topk_idx, topk_weight, up, down, shared_up, shared_down, permutation)
    # Shapes, dtypes and devices exactly as the reference checks them (the values stay on the device).
    ntokens, hidden = x.shape
    nexperts, inter = up.shape[:2]
    expect = {"topk_weight": (topk_weight, (ntokens, topk_idx.shape[1])), "up": (up, (nexperts, inter, hidden)),
              "down": (down, (nexperts, hidden, inter)), "topk_idx": (topk_idx, (ntokens, topk_idx.shape[1]))}
    if shared_up is not None:
        expect["shared_up"] = (shared_up, (shared_up.shape[0], hidden))
        expect["shared_down"] = (shared_down, (hidden, shared_up.shape[0]))
    for name, (t, shape) in expect.items():
        if tuple(t.shape) != shape or t.device != x.device:
            return moe_experts_ref(x, topk_idx, topk_weight, up, down, shared_up, shared_down,
                                   permutation)                           # raises, named
    if topk_idx.dtype not in (torch.int32, torch.int64) or not topk_weight.is_floating_point():
        return moe_experts_ref(x, topk_idx, topk_weight, up, down, shared_up, shared_down,
                               permutation)                               # raises, named
    contig = [t.contiguous() for t in (x, up, down)]
    shared = [t.contiguous() if t is not None else None for t in (shared_up, shared_down)]
    idx32 = topk_idx.to(torch.int32).contiguous()
    permutation = kernel_permutation(permutation, idx32, nexperts, 1)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, topk_weight, *weights))
    if not needs_grad and _decode_ok(idx32, inter, shared_up):
        return _decode_experts(contig[0], idx32, topk_weight.float().contiguous(), (contig[1], None, contig[2], None),
                               None if shared_up is None else (shared[0], None, shared[1], None))
    return MoeExpertsFn.apply(contig[0], idx32, topk_weight, contig[1], contig[2], *shared, permutation)


def _decode_ok(topk_idx, inter: int, shared_up) -> bool:
    """The decode path: as few assignments as the GEMV serves (T * k <= 16, csrc/moe/moe_kernels.h path_for), and a
    shared expert, if any, whose width is whole blocks of the routed width I (Nemotron-H: 3712 = 2 x 1856)."""
    return topk_idx.numel() <= WEIGHTS_ONLY_MAX_ROWS and (shared_up is None or shared_up.shape[0] % inter == 0)


def _decode_experts(x, topk_idx, weight32, routed, shared):
    """Inference at decode sizes: three launches, no permute. The up GEMV takes each assignment's expert straight
    from topk_idx (rows in assignment order, row t*k + j) with the shared expert's up in the same grid, the down
    GEMV likewise, then the weighted sum adds the shared output. One token with a shared expert: two launches, the
    down projection and the weighted sum in one (moe_decode_down). x [T, H] bf16, topk_idx [T, k] int32, weight32
    [T, k] fp32; routed / shared: (up, up_scale, down, down_scale), bf16 weights with None scales or e4m3 with
    per-channel scales (shared: [Is, H], [Is], [H, Is], [H]; or None) -> [T, H] bf16."""
    up, up_scale, down, down_scale = routed
    s_up, s_up_scale, s_down, s_down_scale = shared if shared is not None else (None,) * 4
    h, hs = moe_decode_gemv(x, topk_idx, up, up_scale, x if shared is not None else None, s_up, s_up_scale,
                            True)                                                 # [T*k, I], [T, Is]
    if (shared is not None and x.shape[0] == 1
            and topk_idx.shape[1] + s_down.shape[1] // h.shape[1] <= _ext._C.moe_decode_down_max_units):
        return moe_decode_down(h, topk_idx, weight32, down, down_scale, hs, s_down, s_down_scale)   # [1, H]
    y, ys = moe_decode_gemv(h, topk_idx, down, down_scale, hs if shared is not None else None, s_down,
                            s_down_scale, False)                                  # [T*k, H], [T, H]
    return moe_unpermute_op(y, None, weight32, ys if shared is not None else None)   # [T, H]


def quantize_experts_fp8(up, down, shared_up=None, shared_down=None) -> dict:
    """Per-output-channel FP8 e4m3 weights for moe_experts_fp8 (do it once, at load time).

    Args: up [E, I, H], down [E, H, I], shared_up [Is, H] | None, shared_down [H, Is] | None (any float dtype).
    Returns: dict of the keyword arguments of moe_experts_fp8: up_q [E, I, H] e4m3, up_scale [E, I] fp32,
        down_q, down_scale [E, H], and shared_up_q, shared_up_scale [Is], shared_down_q, shared_down_scale [H].
    """
    out = {}
    named = dict(up=up, down=down, shared_up=shared_up, shared_down=shared_down)
    for name, w in named.items():
        if w is None:
            continue
        q, scale = quantize_fp8_rowwise(w.reshape(-1, w.shape[-1]))
        out[f"{name}_q"], out[f"{name}_scale"] = q.view(w.shape), scale.view(w.shape[:-1])
    return out


def moe_experts_fp8(x, topk_idx, topk_weight, up_q, up_scale, down_q, down_scale, shared_up_q=None,
                    shared_up_scale=None, shared_down_q=None, shared_down_scale=None, weights_only=None):
    """moe_experts with FP8 e4m3 GEMMs (inference: no autograd). Tokens are quantised per row, weights come
    quantised per output channel (quantize_experts_fp8); relu^2 is fused into the up GEMM's dequantising epilogue,
    its bf16 output is re-quantised per row for the down GEMM. Weights-only (the default at decode sizes,
    T * k <= 16): x and h stay bf16 and go to the weights-only grouped GEMV (grouped_gemm_w8), no quantisation.

    Args:
        x [T, H] bf16.   topk_idx [T, k] int32/int64.   topk_weight [T, k].
        up_q [E, I, H] e4m3, up_scale [E, I] fp32; down_q [E, H, I] e4m3, down_scale [E, H] fp32;
        shared_*: the shared expert, quantised the same way (all four or none).
        weights_only: None (by size, weights_only_for(T * k)), True or False.
    Returns:
        [T, H] bf16. CUDA: permute + CUTLASS FP8 grouped GEMMs (H multiple of 16, I and Is of 16); elsewhere the
        float32 emulation moe_experts_fp8_ref (which also defines the rounding points).
    """
    args = (x, topk_idx, topk_weight, up_q, up_scale, down_q, down_scale, shared_up_q, shared_up_scale,
            shared_down_q, shared_down_scale)
    tensors = [t for t in args if t is not None]
    sizes_ok = (x.dim() == 2 and up_q.dim() == 3 and x.shape[1] % 16 == 0 and up_q.shape[1] % 16 == 0
                and (shared_up_q is None or shared_up_q.shape[0] % 16 == 0))
    if not (all(isinstance(t, torch.Tensor) and t.is_cuda for t in tensors) and x.dtype == torch.bfloat16
            and _ext.cuda_ok()[0] and sizes_ok and x.shape[0] > 0 and up_q.shape[0] <= MAX_EXPERTS
            and topk_idx.dim() == 2 and topk_idx.shape[1] <= MAX_TOP_K):
        return moe_experts_fp8_ref(*args, weights_only=weights_only)
    if weights_only is None:
        weights_only = weights_only_for(topk_idx.numel())
    x, topk_idx, weight32 = x.contiguous(), topk_idx.to(torch.int32).contiguous(), topk_weight.float().contiguous()
    routed = (up_q.contiguous(), up_scale.float().contiguous(), down_q.contiguous(), down_scale.float().contiguous())
    if weights_only and _decode_ok(topk_idx, up_q.shape[1], shared_up_q):
        shared = None if shared_up_q is None else (shared_up_q.contiguous(), shared_up_scale.float().contiguous(),
                                                   shared_down_q.contiguous(), shared_down_scale.float().contiguous())
        return _decode_experts(x, topk_idx, weight32, routed, shared)
    shared = None if shared_up_q is None else (*_one_group(shared_up_q, shared_up_scale),
                                               *_one_group(shared_down_q, shared_down_scale))
    return _fp8_pipeline(x, topk_idx, weight32, routed, shared, weights_only)


def _one_group(w_q, scale):
    """The shared expert's e4m3 weight [N, K] and scales [N] as the one-group operands [1, N, K], [1, N]."""
    return w_q.unsqueeze(0).contiguous(), scale.float().reshape(1, -1).contiguous()


def _fp8_mlp(a_q, a_scale, up_q, up_scale, down_q, down_scale, offsets):
    """e4m3 rows [M, H] with row scales [M] -> FP8 up (dequantised, relu^2 fused), h re-quantised per row, FP8 down
    -> [M, H] bf16."""
    h = grouped_gemm_fp8_nt(a_q, a_scale, up_q, up_scale, offsets, True)             # [M, I] bf16
    h_q, h_scale = quantize_fp8_rowwise_op(h)                                         # [M, I] e4m3, [M]
    return grouped_gemm_fp8_nt(h_q, h_scale, down_q, down_scale, offsets, False)      # [M, H]


def _w8_mlp(a, up_q, up_scale, down_q, down_scale, offsets):
    """Weights-only: bf16 rows [M, H] through the weights-only grouped GEMV, relu^2 fused -> [M, H] bf16."""
    h = grouped_gemm_w8_nt(a, up_q, up_scale, offsets, True)                          # [M, I]
    return grouped_gemm_w8_nt(h, down_q, down_scale, offsets, False)                  # [M, H]


def _fp8_pipeline(x, topk_idx, weight32, routed, shared, weights_only: bool):
    """moe_experts_fp8 on the kernels: x [T, H] bf16, topk_idx [T, k] int32, weight32 [T, k] fp32; routed / shared:
    (up_q, up_scale, down_q, down_scale) as the grouped GEMMs take them (shared: one group, or None). Weights-only:
    rows permuted as they are; else x quantised per token first and its row scales permuted with it."""
    nexperts = routed[0].shape[0]
    offsets_s = one_group_offsets(x.shape[0], x.device) if shared is not None else None
    if weights_only:
        rows, row_of_assignment, offsets = moe_permute_op(x, topk_idx, nexperts, 1)  # [M, H], [T, k], [E+1]
        y = _w8_mlp(rows, *routed, offsets)                                           # [M, H]
        ys = _w8_mlp(x, *shared, offsets_s) if shared is not None else None          # [T, H]
    else:
        x_q, x_scale = quantize_fp8_rowwise_op(x)                                     # [T, H] e4m3, [T]
        rows, row_scale, row_of_assignment, offsets = moe_permute_scaled_op(
            x_q, x_scale, topk_idx, nexperts, 1)                                      # [M, H], [M], [T, k], [E+1]
        y = _fp8_mlp(rows, row_scale, *routed, offsets)
        ys = _fp8_mlp(x_q, x_scale, *shared, offsets_s) if shared is not None else None
    return moe_unpermute_op(y, row_of_assignment, weight32, ys)                      # [T, H]


def backend_report(device_type: str) -> str:
    return _ext.cuda_only_report(device_type, "CUDA: permute -> CUTLASS sm90 grouped GEMMs (relu^2 fused) -> weighted "
                                 "gather, fwd+bwd, bf16; inference at T*k <= 16: the decode GEMV from topk_idx, shared "
                                 "expert in the same launch (other dtypes or sizes not a multiple of 8 -> reference)")
