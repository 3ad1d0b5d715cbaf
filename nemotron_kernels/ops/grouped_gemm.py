"""Public op `grouped_gemm`: out[rows_e] = act(a[rows_e] @ b[e]^T) for expert-sorted rows (reference/grouped_gemm.py).

CUDA: hand-written CUTLASS 3.x grouped GEMMs for sm_90a (csrc/moe/grouped_gemm_*.cu): TMA + warp-specialised
persistent wgmma kernels over ptr-array problem shapes whose per-expert arguments are built on the device from
expert_offsets (no host sync), BF16 in, fp32 accumulation, BF16 out, relu^2 fused in the epilogue. Backward:
da = dpre @ b[e] (grouped NN GEMM), db[e] = dpre_e^T @ a_e (grouped TN GEMM, K = the expert's rows), with
dpre = relu2_grad(dout, out) = dout * 2 sqrt(out) for relu^2 (relu(pre) = sqrt(relu(pre)^2), so only the output
is kept), one Triton pass (triton/relu2_grad.py).
row_scale (the down projection with each row's routing weight, so the combine is a plain sum): out[r] =
(a[r] @ b[e]^T) * row_scale[r], applied to the fp32 accumulator in the epilogue (csrc/moe/grouped_gemm_nt_scaled*.cu;
the FP8 kernels fold it into the row's dequantisation scale). Its backward: g = dout @ b[e] (NN), da = g * s,
ds = <g, a> per row, db[e] = (dout * s)_e^T a_e.
Decode-sized forwards are a stream of the touched experts' weights, which 128-row tiles would mostly pad: up to 32
rows per expert on average they run with swapped operands (d^T = b[e] @ a[rows_e]^T on 128x32 tiles: the channels on
the MMA's 64-row side, the rows on a 32-wide N side), and with the fewest rows (<= 16, a couple of
tokens) a grouped GEMV (csrc/moe/moe_gemv_kernel.cu). csrc/moe/moe_kernels.h (path_for) has the rule.
The reference runs on CPU, for dtypes other than bf16, or without the extension.
Layers: custom ops `nemotron_kernels::grouped_gemm_nt` / `_nn` / `_tn` -> `GroupedGemmFn` -> `grouped_gemm()`.

Kernel contract: K and N multiples of 8 (TMA needs 16-byte aligned row strides; other sizes raise ValueError),
expert_offsets as moe_permute makes them (0 = offsets[0] <= ... <= offsets[E] = M). The offsets never reach the
host: others are clamped into [0, M] (memory-safe, rows outside every group are left unwritten)."""

import torch

from .. import _ext
from ..reference.grouped_gemm import (check_grouped_gemm_args, check_grouped_gemm_fp8_args, check_grouped_gemm_w8_args,
                                      grouped_gemm_fp8_ref, grouped_gemm_ref, grouped_gemm_w8_ref,
                                      quantize_fp8_rowwise_ref, relu2_grad_ref)
from ..triton import mamba_common
from ._kernel_op import kernel_op


def use_kernel(*tensors: torch.Tensor) -> bool:
    """All tensors bf16 on a CUDA device where the sm_90a kernels run."""
    return all(t.is_cuda and t.dtype == torch.bfloat16 for t in tensors) and _ext.cuda_ok()[0]


_ONE_GROUP: dict = {}          # (M, device, CUDA stream) -> [0, M] int32, for M <= ONE_GROUP_MAX_ROWS
ONE_GROUP_MAX_ROWS = 1024


def one_group_offsets(rows: int, device: torch.device) -> torch.Tensor:
    """expert_offsets [0, M] int32 of one group of all M rows (a plain weight [N, K] as b[None]), made on the device
    (a host tensor would need a copy, and a sync). Kept per (M, device, stream) for decode-sized M and never freed,
    so a CUDA-graph capture whose eager warm-up on the same stream made it reads it instead of capturing an arange
    (the MoE's shared expert and the single-row projections: a kernel per call in every decode graph otherwise).
    Not kept when made during a capture (graph memory) or under inference_mode (it may be saved for a backward
    later). Under torch.compile the plain arange is traced."""
    if torch.compiler.is_compiling():
        return torch.arange(0, 2 * rows, rows, dtype=torch.int32, device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    key = (rows, device, stream)
    kept = _ONE_GROUP.get(key)
    if kept is not None:
        return kept
    t = torch.arange(0, 2 * rows, rows, dtype=torch.int32, device=device)
    capturing = stream is not None and torch.cuda.is_current_stream_capturing()
    if rows <= ONE_GROUP_MAX_ROWS and not capturing and not torch.is_inference_mode_enabled():
        _ONE_GROUP[key] = t
    return t


@kernel_op("nemotron_kernels::grouped_gemm_nt", mutates_args=())
def grouped_gemm_nt(a: torch.Tensor, b: torch.Tensor, expert_offsets: torch.Tensor, relu2: bool,
                    row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """a [M, K] bf16, b [E, N, K] bf16, expert_offsets [E+1] int32 -> [M, N] = act(a[rows_e] @ b[e]^T), or
    (a[rows_e] @ b[e]^T) * row_scale[row] with row_scale [M] fp32 (relu2 False)."""
    return _ext._C.grouped_gemm_nt(a, b, expert_offsets, relu2, row_scale=row_scale)


@grouped_gemm_nt.register_fake
def _(a, b, expert_offsets, relu2, row_scale=None):
    return a.new_empty(a.shape[0], b.shape[1])


@kernel_op("nemotron_kernels::grouped_gemm_nn", mutates_args=())
def grouped_gemm_nn(a: torch.Tensor, b: torch.Tensor, expert_offsets: torch.Tensor) -> torch.Tensor:
    """a [M, K], b [E, K, N] -> [M, N] = a[rows_e] @ b[e]."""
    return _ext._C.grouped_gemm_nn(a, b, expert_offsets)


@grouped_gemm_nn.register_fake
def _(a, b, expert_offsets):
    return a.new_empty(a.shape[0], b.shape[2])


@kernel_op("nemotron_kernels::grouped_gemm_tn", mutates_args=())
def grouped_gemm_tn(a: torch.Tensor, b: torch.Tensor, expert_offsets: torch.Tensor) -> torch.Tensor:
    """a [M, P], b [M, Q] -> [E, P, Q] = a[rows_e]^T @ b[rows_e] (weight gradients; zeros for an empty expert)."""
    return _ext._C.grouped_gemm_tn(a, b, expert_offsets)


@grouped_gemm_tn.register_fake
def _(a, b, expert_offsets):
    return a.new_empty(expert_offsets.shape[0] - 1, a.shape[1], b.shape[1])


@kernel_op("nemotron_kernels::quantize_fp8_rowwise", mutates_args=())
def quantize_fp8_rowwise_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, C] bf16/fp16/fp32 (CUDA) -> (q [R, C] float8_e4m3fn, scale [R] fp32), bitwise the reference's."""
    return tuple(_ext._C.quantize_fp8_rowwise(x))


@quantize_fp8_rowwise_op.register_fake
def _(x):
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty(x.shape[0], dtype=torch.float32)


@kernel_op("nemotron_kernels::grouped_gemm_fp8_nt", mutates_args=())
def grouped_gemm_fp8_nt(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                        expert_offsets: torch.Tensor, relu2: bool) -> torch.Tensor:
    """a [M, K] e4m3, a_scale [M] fp32, b [E, N, K] e4m3, b_scale [E, N] fp32 -> [M, N] bf16 =
    act(a[rows_e] @ b[e]^T * a_scale[row] * b_scale[e, col]) (fp32 accumulation, dequantised in the epilogue)."""
    return _ext._C.grouped_gemm_fp8_nt(a, a_scale, b, b_scale, expert_offsets, relu2)


@grouped_gemm_fp8_nt.register_fake
def _(a, a_scale, b, b_scale, expert_offsets, relu2):
    return a.new_empty(a.shape[0], b.shape[1], dtype=torch.bfloat16)


def check_tma_operands(k: int, n: int, k_multiple: int, k_elements: str, **operands: torch.Tensor) -> None:
    """The CUTLASS kernels' size and alignment contract, checked here as well as in _C, with _C's messages:
    a ValueError raised inside _C crashed the process on torch 2.11 (bench/NOTES.md, 2026-11-29)."""
    for what, size, multiple, elements in (("K (a.shape[1], b.shape[2])", k, k_multiple, k_elements),
                                           ("N (b.shape[1])", n, 8, "8 bf16 elements")):
        if size % multiple:
            raise ValueError(f"{what} = {size} must be a multiple of {multiple}: TMA needs 16-byte aligned row "
                             f"strides ({elements})")
    if torch.compiler.is_compiling():     # no data pointers while tracing: _C checks the addresses at run time
        return
    for name, t in operands.items():
        if t.data_ptr() % 16:
            raise ValueError(f"{name} must start at a 16-byte aligned address (TMA); got a view with storage offset "
                             f"{t.storage_offset()}: pass a fresh contiguous tensor")


@kernel_op("nemotron_kernels::relu2_grad", mutates_args=())
def relu2_grad_op(dout: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """dout, out [...] (one shape and dtype, contiguous) -> dout * 2 sqrt(out) (Triton, one pass)."""
    dpre = torch.empty_like(dout)
    mamba_common.kernel_module("relu2_grad").relu2_grad_launch(dout, out, dpre)
    return dpre


@relu2_grad_op.register_fake
def _(dout, out):
    return torch.empty_like(dout)


def relu2_grad(dout: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The gradient through out = relu(pre)^2 from its output: d pre = dout * 2 sqrt(out), fp32 math rounded once
    to dout's dtype (bitwise relu2_grad_ref). The Triton pass for CUDA tensors of one shape and dtype (fp16 / bf16 /
    fp32; on CPU under TRITON_INTERPRET=1), else the reference. Not differentiable (a backward's building block)."""
    if (isinstance(dout, torch.Tensor) and isinstance(out, torch.Tensor) and out.shape == dout.shape
            and out.dtype == dout.dtype and out.device == dout.device and mamba_common.use_triton(dout, out)):
        return relu2_grad_op(dout.contiguous(), out.contiguous())
    return relu2_grad_ref(dout, out)


class GroupedGemmFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, expert_offsets, activation: str, row_scale):
        relu2 = activation == "relu2"
        out = grouped_gemm_nt(a, b, expert_offsets, relu2, row_scale)
        ctx.relu2 = relu2
        ctx.save_for_backward(a, b, expert_offsets, out if relu2 else None, row_scale)
        return out

    @staticmethod
    def backward(ctx, dout):
        a, b, expert_offsets, out, row_scale = ctx.saved_tensors
        need_a, need_b, _, _, need_s = ctx.needs_input_grad
        dout = dout.contiguous()
        da = ds = None
        if row_scale is None:
            dpre = relu2_grad(dout, out) if ctx.relu2 else dout                          # [M, N]
            da = grouped_gemm_nn(dpre, b, expert_offsets) if need_a else None              # [M, K]
        else:
            s = row_scale[:, None]                                                        # [M, 1] fp32
            dpre = (dout.float() * s).to(dout.dtype) if need_b or (need_a and not need_s) else None  # [M, N]
            if need_s:                   # ds[r] = <dout[r], a[r] @ b[e]^T> = <dout[r] @ b[e], a[r]>
                g = grouped_gemm_nn(dout, b, expert_offsets).float()                     # [M, K] fp32
                ds = (g * a).sum(1).to(row_scale.dtype)                                   # [M], fp32 products
                da = g.mul_(s).to(a.dtype) if need_a else None
            elif need_a:
                da = grouped_gemm_nn(dpre, b, expert_offsets)
        db = grouped_gemm_tn(dpre, a, expert_offsets) if need_b else None                 # [E, N, K]
        return da, db, None, None, ds


def grouped_gemm(a, b, expert_offsets, activation: str = "none", row_scale=None):
    """Per-expert GEMM over expert-sorted rows, with an optional fused squared ReLU or per-row scale.

    Args:
        a [M, K]: rows sorted by expert (moe_permute).   b [E, N, K]: per-expert weights, nn.Linear layout.
        expert_offsets [E+1] int32/int64: expert e owns rows [offsets[e], offsets[e+1]), 0 = offsets[0] <= ... <=
            offsets[E] = M.   activation: "none" or "relu2" (relu(.)^2, fused in the epilogue).
        row_scale [M] float | None: each output row times its scale, applied to the fp32 accumulator in the
            epilogue (activation "none" only): the down projection with the routing weights (moe_permute's rows
            carry topk_weight.flatten()[assignment of the row]), after which moe_unpermute(..., None) sums.
    Returns:
        [M, N] in a's dtype (fp32 accumulation). Differentiable in a, b and row_scale.
    On CUDA with bf16 a and b the CUTLASS kernel runs (K and N must be multiples of 8); otherwise the reference.
    """
    check_grouped_gemm_args(a, b, expert_offsets, activation, row_scale)
    if not use_kernel(a, b):
        return grouped_gemm_ref(a, b, expert_offsets, activation, row_scale)
    a, b = a.contiguous(), b.contiguous()
    check_tma_operands(a.shape[1], b.shape[1], 8, "8 bf16 elements", a=a, b=b)
    scale32 = None if row_scale is None else row_scale.float().contiguous()
    return GroupedGemmFn.apply(a, b, expert_offsets.to(torch.int32).contiguous(), activation, scale32)


def quantize_fp8_rowwise(x):
    """Row-wise FP8 e4m3 quantisation: x [R, C] -> (q [R, C] float8_e4m3fn, scale [R] float32), x[r] ~= q[r] scale[r],
    scale = amax(|x[r]|) / 448. CUDA kernel for bf16/fp16/fp32 CUDA tensors (bitwise the reference), else the
    reference. Not differentiable."""
    if isinstance(x, torch.Tensor) and x.is_cuda and x.dim() == 2 and x.dtype in (torch.bfloat16, torch.float16,
                                                                                  torch.float32) and _ext.cuda_ok()[0]:
        return quantize_fp8_rowwise_op(x.contiguous())
    return quantize_fp8_rowwise_ref(x)


def grouped_gemm_fp8(a_q, a_scale, b_q, b_scale, expert_offsets, activation: str = "none", row_scale=None):
    """FP8 e4m3 grouped GEMM with per-row activation scales and per-channel weight scales (forward only).

    Args:
        a_q [M, K] float8_e4m3fn, a_scale [M] fp32 (quantize_fp8_rowwise of the rows);
        b_q [E, N, K] float8_e4m3fn, b_scale [E, N] fp32 (quantize_fp8_rowwise of b.view(E*N, K));
        expert_offsets [E+1] as for grouped_gemm; activation "none" or "relu2" (applied after dequantisation);
        row_scale [M] | None: as for grouped_gemm (activation "none"): a routing weight per row, not a
            dequantisation scale (that is a_scale, which moe_permute_scaled calls its rows' row_scale); folded
            into a_scale, so the epilogue's dequantisation applies it.
    Returns:
        [M, N] bfloat16. CUDA: the CUTLASS sm90 FP8 kernel (K multiple of 16, N of 8); elsewhere the reference.
    """
    fp8 = torch.float8_e4m3fn
    if (all(isinstance(t, torch.Tensor) and t.is_cuda for t in (a_q, a_scale, b_q, b_scale, expert_offsets))
            and a_q.dtype == fp8 and b_q.dtype == fp8 and _ext.cuda_ok()[0] and activation in ("none", "relu2")):
        check_grouped_gemm_fp8_args(a_q, a_scale, b_q, b_scale, expert_offsets, activation, row_scale)
        a_q, b_q, b_scale = a_q.contiguous(), b_q.contiguous(), b_scale.float().contiguous()
        check_tma_operands(a_q.shape[1], b_q.shape[1], 16, "16 fp8 elements", a_q=a_q, b_q=b_q, b_scale=b_scale)
        a_scale = a_scale.float() if row_scale is None else a_scale.float() * row_scale.float()    # [M]
        return grouped_gemm_fp8_nt(a_q, a_scale.contiguous(), b_q, b_scale,
                                   expert_offsets.to(torch.int32).contiguous(), activation == "relu2")
    return grouped_gemm_fp8_ref(a_q, a_scale, b_q, b_scale, expert_offsets, activation, row_scale)


@kernel_op("nemotron_kernels::grouped_gemm_w8_nt", mutates_args=())
def grouped_gemm_w8_nt(a: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor, expert_offsets: torch.Tensor,
                       relu2: bool, row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """a [M, K] bf16, b [E, N, K] e4m3, b_scale [E, N] fp32 -> [M, N] bf16 = act(a[rows_e] @ b[e]^T * b_scale[e])
    (* row_scale[row], row_scale [M] fp32, relu2 False)."""
    return _ext._C.grouped_gemm_w8_nt(a, b, b_scale, expert_offsets, relu2, row_scale=row_scale)


@grouped_gemm_w8_nt.register_fake
def _(a, b, b_scale, expert_offsets, relu2, row_scale=None):
    return a.new_empty(a.shape[0], b.shape[1])


@kernel_op("nemotron_kernels::moe_decode_gemv", mutates_args=())
def moe_decode_gemv(a: torch.Tensor, topk_idx: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor | None,
                    shared_a: torch.Tensor | None, shared_b: torch.Tensor | None, shared_b_scale: torch.Tensor | None,
                    relu2: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The MoE decode GEMV (reference: moe_decode_gemv_ref): assignment j of topk_idx [T, k] int32 through expert
    topk_idx[j] straight from the routing, no permute; a [T, K] (the tokens) or [T*k, K] (one row per assignment)
    bf16, b [E, N, K] bf16, or e4m3 with b_scale [E, N] fp32; the shared expert (shared_a [T, Ks], shared_b [Ns, Ks]
    with Ns a multiple of N, shared_b_scale [Ns] for e4m3) in the same launch, or None ->
    (d [T*k, N], shared_d [T, Ns], [T, 0] without) bf16, relu^2 fused optionally."""
    return tuple(_ext._C.moe_decode_gemv(a, topk_idx, b, b_scale, shared_a, shared_b, shared_b_scale, relu2))


@moe_decode_gemv.register_fake
def _(a, topk_idx, b, b_scale, shared_a, shared_b, shared_b_scale, relu2):
    return (a.new_empty(topk_idx.numel(), b.shape[1]),
            a.new_empty(topk_idx.shape[0], shared_b.shape[0] if shared_b is not None else 0))


@kernel_op("nemotron_kernels::moe_decode_down", mutates_args=())
def moe_decode_down(h: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor, down: torch.Tensor,
                    down_scale: torch.Tensor | None, hs: torch.Tensor, shared_down: torch.Tensor,
                    shared_down_scale: torch.Tensor | None) -> torch.Tensor:
    """One token's MoE down projection and weighted sum in one launch (reference: moe_decode_down_ref): h [k, I]
    bf16 (moe_decode_gemv's up rows), topk_idx [1, k] int32, topk_weight [1, k] fp32, down [E, H, I] bf16 or e4m3
    with down_scale [E, H]; the shared expert's hs [1, Is], shared_down [H, Is] (+ shared_down_scale [H]), Is a
    multiple of I -> [1, H] bf16, rounded where moe_decode_gemv + moe_unpermute round."""
    return _ext._C.moe_decode_down(h, topk_idx, topk_weight, down, down_scale, hs, shared_down, shared_down_scale)


@moe_decode_down.register_fake
def _(h, topk_idx, topk_weight, down, down_scale, hs, shared_down, shared_down_scale):
    return h.new_empty(1, down.shape[1])


def grouped_gemm_w8(a, b_q, b_scale, expert_offsets, activation: str = "none", row_scale=None):
    """Weights-only FP8 grouped GEMM for decode: bf16 activations as they are, e4m3 weights with per-channel
    scales (forward only). Against grouped_gemm_fp8 it skips the activations' row quantisation (a launch, and
    their e4m3 rounding); it streams the same e4m3 weight bytes.

    Args:
        a [M, K] bfloat16; b_q [E, N, K] float8_e4m3fn, b_scale [E, N] fp32; expert_offsets [E+1];
        activation "none" or "relu2"; row_scale [M] | None: as for grouped_gemm (activation "none"), in the GEMV's
        epilogue.
    Returns:
        [M, N] bfloat16. CUDA: the grouped GEMV (csrc/moe/moe_gemv_kernel.cu; K multiple of 16, N of 8), meant
        for a few rows per expert; elsewhere the reference.
    """
    if (all(isinstance(t, torch.Tensor) and t.is_cuda for t in (a, b_q, b_scale, expert_offsets))
            and a.dtype == torch.bfloat16 and b_q.dtype == torch.float8_e4m3fn and _ext.cuda_ok()[0]
            and activation in ("none", "relu2")):
        check_grouped_gemm_w8_args(a, b_q, b_scale, expert_offsets, activation, row_scale)
        a, b_q, b_scale = a.contiguous(), b_q.contiguous(), b_scale.float().contiguous()
        check_tma_operands(a.shape[1], b_q.shape[1], 16, "16 fp8 elements", a=a, b_q=b_q, b_scale=b_scale)
        scale32 = None if row_scale is None else row_scale.float().contiguous()
        return grouped_gemm_w8_nt(a, b_q, b_scale, expert_offsets.to(torch.int32).contiguous(), activation == "relu2",
                                  scale32)
    return grouped_gemm_w8_ref(a, b_q, b_scale, expert_offsets, activation, row_scale)


def backend_report(device_type: str) -> str:
    return _ext.cuda_only_report(device_type, "CUDA: CUTLASS sm90 grouped GEMM (TMA + wgmma, ptr-array; bf16, relu^2 "
                                              "fused; other dtypes -> reference)")
