"""Public op `moe_router`: NemotronH's sigmoid MoE gate (see reference/moe_router.py for the math).

Layers: custom ops `nemotron_kernels::moe_router_logits` (fp32 logits, never TF32: for a few CUDA bf16 tokens the
extension's logits GEMV, for many three exact bf16 pieces of the weight on tensor cores, else SGEMM) ->
`::moe_router_fused`
(sigmoid, +bias, group-limited top-k, renormalise, scale, counts: the CUDA kernel for CUDA tensors, the C++
kernel for CPU tensors, the reference for float64 or without the extension) -> `MoeRouterFn` (autograd:
topk_weight is differentiable in x and weight; backward GEMMs in `::moe_router_logits_backward`)
-> `moe_router()` (argument checks). `::moe_router_gate` runs the first two, or for a few CUDA bf16 tokens the
extension's moe_router_few, the logits GEMV and the fused kernel from one host call (the GEMV zeroes the counts:
no memset launch). `::moe_router_permute` is `::moe_router_fused` that also makes the expert-sorted permutation
(a second launch places every assignment); MoeRouterFn calls it when moe_router is asked for the permutation."""
import contextlib
import functools

import torch

from .. import _ext
from ..reference.moe_permute import expert_permutation_ref, permuted_rows
from ..reference.moe_router import EPS, check_router_args, moe_router_from_logits_ref, router_sigmoid
from ..triton.mamba_common import kernel_module, use_triton
from ._kernel_op import kernel_op


@contextlib.contextmanager
def _fp32_matmul_ieee(device_type: str):
    """cuBLAS fp32 GEMMs without TF32 inside the block; the caller's setting is restored after it.
    Uses the API the caller's torch has (`fp32_precision` on torch >= 2.9; mixing it with `allow_tf32` raises)."""
    if device_type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    try:
        attr, previous = "fp32_precision", matmul.fp32_precision
        wanted = "ieee"
    except AttributeError:
        attr, previous = "allow_tf32", matmul.allow_tf32
        wanted = False
    if previous == wanted:
        yield
        return
    setattr(matmul, attr, wanted)
    try:
        yield
    finally:
        setattr(matmul, attr, previous)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.cache
def _cuda_kernel_ok() -> bool:
    return _ext.cuda_status()[0]


def _use_kernel(logits: torch.Tensor) -> bool:
    """The compiled kernel takes fp32 logits on CPU, or on CUDA with at most 1024 experts."""
    if logits.dtype != torch.float32 or _ext._C is None:
        return False
    if logits.device.type == "cpu":
        return True
    return (logits.device.type == "cuda" and logits.shape[1] <= _ext._C.moe_router_cuda_max_experts
            and _cuda_kernel_ok())


# From this many tokens, CUDA bf16 x with fp32 weights takes the logits from bf16 tensor cores (split_bf16x3)
# instead of cuBLAS's fp32 SGEMM on CUDA cores (0.36 ms of the 0.38 ms router at T = 16384 on the H200,
# bench/NOTES.md); below it the split's few small kernels cost about what the SGEMM takes.
SPLIT_GEMM_MIN_TOKENS = 2048


def split_bf16x3(weight: torch.Tensor) -> torch.Tensor:
    """weight [E, Hd] fp32 -> [3E, Hd] bf16 pieces (lo; mid; hi) with hi + mid + lo == weight exactly: each piece
    rounds what the larger ones left, 8 significant bits at a time, and 3 x 8 bits hold fp32's 24. One Triton
    launch for CUDA tensors (and CPU ones under TRITON_INTERPRET=1); these torch expressions otherwise."""
    if use_triton(weight) and weight.dtype == torch.float32:
        return kernel_module("moe_router_split").split_bf16x3(weight.contiguous())
    hi = weight.to(torch.bfloat16)
    rest = weight - hi.float()                                                  # exact in fp32
    mid = rest.to(torch.bfloat16)
    lo = (rest - mid.float()).to(torch.bfloat16)                                # <= 8 significant bits left: exact
    return torch.cat([lo, mid, hi])


def _logits_bf16x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [T, Hd] bf16, weight [E, Hd] fp32 -> [T, E] fp32 = x W^T near fp32 accuracy on tensor cores: bf16 x bf16
    products are exact and accumulate in fp32, one GEMM over the three pieces, summed smallest first. Measured on
    the H200 at Hd = 2688: 1.6e-5 off float64 at most, the SGEMM 2.5e-6, TF32 ~1e-3 (the tensor cores' fp32
    accumulation, not the split, which is exact). So a near-tie of two experts' scores may break either way."""
    E = weight.shape[0]
    parts = torch.mm(x, split_bf16x3(weight).t(), out_dtype=torch.float32)       # [T, 3E]: lo, mid, hi
    return (parts[:, :E] + parts[:, E:2 * E]) + parts[:, 2 * E:]


def _logits_gemv_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """CUDA bf16 x of a few tokens with fp32 weights: the extension's logits GEMV (csrc/router/
    moe_router_logits_kernel.cu) instead of a cast and cuBLAS's SGEMM, whose small-M kernels took 6.7 us at T = 1
    (bench/NOTES.md, session 8)."""
    return (x.is_cuda and x.dtype == torch.bfloat16 and weight.dtype == torch.float32 and _cuda_kernel_ok()
            and hasattr(_ext._C, "moe_router_logits") and 0 < x.shape[0] <= _ext._C.moe_router_logits_max_tokens
            and x.shape[1] % 4 == 0 and weight.is_contiguous() and weight.data_ptr() % 16 == 0
            and (not x.is_contiguous() or x.data_ptr() % 8 == 0))          # a copy of a strided x is aligned


@kernel_op("nemotron_kernels::moe_router_logits", mutates_args=())
def moe_router_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [T, Hd], weight [E, Hd] -> logits [T, E] fp32 (fp64 for fp64 x), never TF32: cuBLAS SGEMM; for CUDA bf16
    x with fp32 weights, the logits GEMV at T <= 64 and the exact bf16 x 3 split (_logits_bf16x3) from
    SPLIT_GEMM_MIN_TOKENS on."""
    if _logits_gemv_ok(x, weight):
        return _ext._C.moe_router_logits(x.contiguous(), weight)
    if (x.is_cuda and x.dtype == torch.bfloat16 and weight.dtype == torch.float32 and _ext.MM_OUT_DTYPE
            and x.shape[0] >= SPLIT_GEMM_MIN_TOKENS):
        return _logits_bf16x3(x, weight)
    cdtype = _compute_dtype(x.dtype)
    with _fp32_matmul_ieee(x.device.type):
        return torch.matmul(x.to(cdtype), weight.to(cdtype).t())


@moe_router_logits.register_fake
def _(x, weight):
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=_compute_dtype(x.dtype))


@kernel_op("nemotron_kernels::moe_router_fused", mutates_args=())
def moe_router_fused(logits: torch.Tensor, bias: torch.Tensor, top_k: int, routed_scaling_factor: float,
                     n_group: int, topk_group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [T, E] fp32 (fp64 -> reference), bias [E] fp32 ->
    (topk_idx [T, k] int32, topk_weight [T, k] like logits, counts [E] int32)."""
    if _use_kernel(logits):
        return tuple(_ext._C.moe_router_fused(logits, bias, top_k, routed_scaling_factor, n_group, topk_group))
    return moe_router_from_logits_ref(logits, bias, top_k, routed_scaling_factor, n_group, topk_group)


@moe_router_fused.register_fake
def _(logits, bias, top_k, routed_scaling_factor, n_group, topk_group):
    ntokens, nexperts = logits.shape
    return (logits.new_empty((ntokens, top_k), dtype=torch.int32), logits.new_empty((ntokens, top_k)),
            logits.new_empty((nexperts,), dtype=torch.int32))


@kernel_op("nemotron_kernels::moe_router_permute", mutates_args=())
def moe_router_permute(logits: torch.Tensor, bias: torch.Tensor, top_k: int, routed_scaling_factor: float,
                       n_group: int, topk_group: int, pad_to: int = 1
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """moe_router_fused's outputs and the expert-sorted permutation of its choices: logits [T, E] fp32, bias [E] ->
    (topk_idx [T, k] int32, topk_weight [T, k], counts [E] int32, row_of_assignment [T, k] int32, expert_offsets
    [E+1] int32, token_of_row [M] int32 with -1 for padding rows), the last three what moe_permute's ranking writes
    (expert_permutation_ref). CUDA: two launches after the logits GEMM (the router kernel also ranks each block's
    assignments and writes its histogram; a second launch sums the histograms into counts and offsets and places
    every assignment); elsewhere moe_router_fused, then the reference permutation."""
    if logits.is_cuda and _use_kernel(logits):
        return tuple(_ext._C.moe_router_permute(logits, bias, top_k, routed_scaling_factor, n_group, topk_group,
                                                pad_to))
    topk_idx, topk_weight, counts = moe_router_fused(logits, bias, top_k, routed_scaling_factor, n_group,
                                                     topk_group)
    return (topk_idx, topk_weight, counts, *expert_permutation_ref(topk_idx, logits.shape[1], pad_to))


@moe_router_permute.register_fake
def _(logits, bias, top_k, routed_scaling_factor, n_group, topk_group, pad_to=1):
    ntokens, nexperts = logits.shape
    ints = dict(dtype=torch.int32)
    return (logits.new_empty((ntokens, top_k), **ints), logits.new_empty((ntokens, top_k)),
            logits.new_empty((nexperts,), **ints), logits.new_empty((ntokens, top_k), **ints),
            logits.new_empty((nexperts + 1,), **ints),
            logits.new_empty((permuted_rows(ntokens, top_k, nexperts, pad_to),), **ints))


@kernel_op("nemotron_kernels::moe_router_gate", mutates_args=())
def moe_router_gate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, top_k: int,
                    routed_scaling_factor: float, n_group: int, topk_group: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [T, Hd], weight [E, Hd], bias [E] -> (logits [T, E], topk_idx, topk_weight, counts): moe_router_logits then
    moe_router_fused. Where x takes the logits GEMV (_logits_gemv_ok), both come from one host call
    (_C.moe_router_few: the GEMV zeroes the counts the fused kernel adds into, which saves a memset launch at 17-64
    tokens), bitwise the same. One op, so the choice (it reads data pointers) stays out of torch.compile's trace."""
    if _logits_gemv_ok(x, weight) and weight.shape[0] <= _ext._C.moe_router_cuda_max_experts:
        return tuple(_ext._C.moe_router_few(x.contiguous(), weight, bias, top_k, routed_scaling_factor, n_group,
                                            topk_group))
    logits = moe_router_logits(x, weight)                                      # [T, E]
    return (logits, *moe_router_fused(logits, bias, top_k, routed_scaling_factor, n_group, topk_group))


@moe_router_gate.register_fake
def _(x, weight, bias, top_k, routed_scaling_factor, n_group, topk_group):
    ntokens, nexperts, cdtype = x.shape[0], weight.shape[0], _compute_dtype(x.dtype)
    return (x.new_empty((ntokens, nexperts), dtype=cdtype), x.new_empty((ntokens, top_k), dtype=torch.int32),
            x.new_empty((ntokens, top_k), dtype=cdtype), x.new_empty((nexperts,), dtype=torch.int32))


@kernel_op("nemotron_kernels::moe_router_logits_backward", mutates_args=())
def moe_router_logits_backward(grad_topk_logits: torch.Tensor, topk_idx: torch.Tensor, x: torch.Tensor,
                               weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_topk_logits [T, k] (compute dtype), topk_idx [T, k] -> (dx [T, Hd] like x, dweight [E, Hd] like
    weight): the logits GEMM's backward with the sparse logits gradient scattered to [T, E]; no TF32."""
    cdtype = grad_topk_logits.dtype
    grad_logits = grad_topk_logits.new_zeros((x.shape[0], weight.shape[0]))  # [T, E]
    grad_logits.scatter_(1, topk_idx.long(), grad_topk_logits)
    with _fp32_matmul_ieee(x.device.type):
        grad_x = (grad_logits @ weight.to(cdtype)).to(x.dtype)          # [T, Hd]
        grad_weight = (grad_logits.t() @ x.to(cdtype)).to(weight.dtype)  # [E, Hd]
    return grad_x, grad_weight


@moe_router_logits_backward.register_fake
def _(grad_topk_logits, topk_idx, x, weight):
    return torch.empty_like(x), torch.empty_like(weight)


class MoeRouterFn(torch.autograd.Function):
    """(x, weight, bias, ...) -> (topk_idx, topk_weight, counts, row_of_assignment, expert_offsets, token_of_row);
    gradients flow to x and weight through topk_weight (the selection itself is piecewise constant; bias gets
    none). The last three are the permutation when one is asked for and _permutation_ok, else None."""

    @staticmethod
    def forward(ctx, x, weight, bias, top_k: int, routed_scaling_factor: float, n_group: int, topk_group: int,
                with_permutation: bool):
        permutation = (None,) * 3
        if with_permutation and _permutation_ok(x, weight):
            logits = moe_router_logits(x, weight)                                  # [T, E]
            topk_idx, topk_weight, counts, *permutation = moe_router_permute(
                logits, bias, top_k, routed_scaling_factor, n_group, topk_group, 1)  # ..., [T, k], [E+1], [T*k]
            ctx.mark_non_differentiable(*permutation)
        else:
            logits, topk_idx, topk_weight, counts = moe_router_gate(x, weight, bias, top_k, routed_scaling_factor,
                                                                    n_group, topk_group)  # [T, E], [T, k] x 2, [E]
        ctx.mark_non_differentiable(topk_idx, counts)
        ctx.scale = routed_scaling_factor
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            topk_score = router_sigmoid(logits.gather(1, topk_idx.long()))     # [T, k] unbiased scores
            ctx.save_for_backward(x, weight, topk_idx, topk_score)
        return topk_idx, topk_weight, counts, *permutation

    @staticmethod
    def backward(ctx, grad_idx, grad_topk_weight, *_):
        x, weight, topk_idx, score = ctx.saved_tensors
        # w_j = c s_j / D, D = sum_i s_i + eps  =>  dL/ds_j = (c g_j - sum_i g_i w_i) / D;  ds/dlogit = s (1 - s)
        denom = score.sum(-1, keepdim=True) + EPS                               # [T, 1]
        grad = grad_topk_weight.to(score.dtype)                                 # [T, k]
        topk_weight = score / denom * ctx.scale
        grad_score = (ctx.scale * grad - (grad * topk_weight).sum(-1, keepdim=True)) / denom
        grad_x, grad_weight = moe_router_logits_backward(grad_score * score * (1 - score), topk_idx, x, weight)
        return (grad_x if ctx.needs_input_grad[0] else None, grad_weight if ctx.needs_input_grad[1] else None,
                None, None, None, None, None, None)


def _permutation_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The router's kernels make the permutation: CUDA, with more tokens than the logits GEMV takes (up to that
    many, moe_router_few's two launches plus moe_permute's one-block ranking are as few launches as
    moe_router_permute's, and the decode experts do not permute at all)."""
    return (x.is_cuda and x.dtype != torch.float64 and _cuda_kernel_ok()
            and weight.shape[0] <= _ext._C.moe_router_cuda_max_experts
            and x.shape[0] > _ext._C.moe_router_logits_max_tokens)


def moe_router(x, weight, bias, top_k: int, routed_scaling_factor: float = 1.0, n_group: int = 1,
               topk_group: int = 1, with_permutation: bool = False):
    """NemotronH MoE router: fp32 logits -> sigmoid -> +bias (selection only) -> group-limited top-k ->
    renormalise -> x routed_scaling_factor, plus the number of tokens routed to each expert.

    Args:
        x [T, Hd]: bf16/fp16/fp32/fp64.   weight [E, Hd]: float32 or x's dtype.   bias [E]: float32.
        top_k: experts per token, 1 <= top_k <= E.   routed_scaling_factor: weight multiplier (Nano: 2.5).
        n_group, topk_group: group-limited selection (n_group divides E; 1, 1 = off).
        with_permutation: also return the expert-sorted permutation of the choices.
    Returns:
        topk_idx [T, k] int32 (descending biased score, ties -> lower expert index),
        topk_weight [T, k] fp32 (fp64 for fp64 x; differentiable in x and weight), counts [E] int32;
        with with_permutation, a fourth: (row_of_assignment [T, k], expert_offsets [E+1], token_of_row [T*k])
        int32, what moe_permute's ranking writes (pad_to 1), for moe_experts / moe_permute(permutation=); or None
        where the router's kernels do not make it (see _permutation_ok: not CUDA, float64 x, more experts than
        the CUDA kernel takes, or at most moe_router_logits_max_tokens tokens): those ops then rank the choices
        themselves.
    """
    check_router_args(x, weight, bias, top_k, n_group, topk_group)
    topk_idx, topk_weight, counts, *permutation = MoeRouterFn.apply(
        x, weight, bias, top_k, float(routed_scaling_factor), n_group, topk_group, bool(with_permutation))
    if not with_permutation:
        return topk_idx, topk_weight, counts
    return topk_idx, topk_weight, counts, None if permutation[0] is None else tuple(permutation)


def backend_report(device_type: str) -> str:
    if device_type == "cpu":
        ok, why = _ext.cpu_status()
    elif device_type == "cuda":
        ok, why = _ext.cuda_status()
    else:
        return f"reference: no kernel for {device_type} tensors"
    if not ok:
        return f"reference: {why}"
    return f"{device_type}: {why} after an fp32 torch GEMM (float64 inputs and E > 1024 on CUDA use the reference)"
