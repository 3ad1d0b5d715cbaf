"""Chunked cross-entropy on fp32 logits: the [T, V] logits of a 131K vocabulary never exist whole.

`chunked_cross_entropy(hidden, weight, labels)` = sum over labelled rows of -log softmax(hidden @ weight^T)[label],
computed `chunk_rows` rows at a time. The forward pass also computes the gradients of each chunk while its logits
exist (the loss is a scalar, so backward only scales them): one logits GEMM per chunk instead of a recomputation,
and at most one chunk of logits ([chunk_rows, V] fp32) alive at a time. The gradient of the weight is accumulated
in fp32.

Two paths, the same sums:
- reference (CPU, float64, no Triton): logits from a GEMM in the weights' dtype, upcast to fp32 before the
  log-softmax, as Megatron does; logsumexp / gather / softmax / scatter in PyTorch.
- kernel (CUDA fp16/bf16/fp32; CPU under TRITON_INTERPRET=1): on CUDA the BF16 GEMM writes its fp32 accumulators
  as the logits (no BF16 logits, no cast pass); one Triton kernel per chunk (cross_entropy_triton.py) reads them
  twice and writes the per-row losses and the BF16 gradient softmax - onehot(label), zero rows for IGNORE_INDEX;
  the weight gradient accumulates in fp32 inside the GEMM (addmm, torch >= 2.10).

Shape legend: T rows (tokens), H hidden, V vocab, n rows of a chunk.
"""
from __future__ import annotations

import torch

from nemotron_kernels._ext import MM_OUT_DTYPE, TORCH_RELEASE

from .data import IGNORE_INDEX

# addmm.dtype accepts an fp32 `self` (accumulate into fp32 in the GEMM) from torch 2.10 (pytorch#167931)
_ADDMM_FP32_ACC = TORCH_RELEASE >= (2, 10)


def default_chunk_rows(vocab_size: int, budget_elems: int = 1 << 28) -> int:
    """Rows per chunk so a chunk of fp32 logits stays near `budget_elems` elements (1 GiB)."""
    return max(1, budget_elems // vocab_size)


def kernel_available(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the Triton path runs: CUDA fp16/bf16/fp32 weights with Triton importable, or CPU under
    TRITON_INTERPRET=1 (Triton's interpreter, tests); float64 always takes the reference."""
    from nemotron_kernels.triton.common import interpreting, triton_status
    if weight.dtype not in (torch.float16, torch.bfloat16, torch.float32) or hidden.dtype == torch.float64:
        return False
    if not triton_status()[0]:
        return False
    return weight.device.type == "cuda" or (weight.device.type == "cpu" and interpreting())


def _kernels():
    """training.cross_entropy_triton in the current Triton mode (reloaded when TRITON_INTERPRET changed)."""
    from nemotron_kernels.triton.common import kernel_module
    return kernel_module("cross_entropy_triton", package="training")


def cross_entropy_rows_(logits: torch.Tensor, labels: torch.Tensor, grad: bool):
    """The reference expressions of one chunk: logits [n, V] float (overwritten by the gradient when grad),
    labels [n] -> (loss_rows [n], softmax - onehot(label) [n, V] in logits' storage or None). Rows labelled
    IGNORE_INDEX get a zero loss; their gradient rows are not masked here (the caller masks [n, H] operands)."""
    valid = labels != IGNORE_INDEX                                                      # [n]
    y_safe = torch.where(valid, labels, 0)
    lse = torch.logsumexp(logits, dim=-1)                                               # [n]
    target = logits.gather(1, y_safe[:, None])[:, 0]                                    # [n]
    loss_rows = torch.where(valid, lse - target, 0.0)
    if not grad:
        return loss_rows, None
    g = logits.sub_(lse[:, None]).exp_()                                                # softmax, in place [n, V]
    g.scatter_add_(1, y_safe[:, None], torch.full_like(lse[:, None], -1.0))
    return loss_rows, g


def _logits_fp32(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """h [n, H] @ weight [V, H]^T -> [n, V] fp32. CUDA BF16/FP16: the GEMM writes its fp32 accumulators."""
    if h.is_cuda and MM_OUT_DTYPE and weight.dtype in (torch.bfloat16, torch.float16):
        return torch.mm(h, weight.T, out_dtype=torch.float32)
    return (h @ weight.T).to(torch.float32)                                   # CPU: mm.dtype is CUDA-only


def _accumulate_grad_w(grad_w: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> None:
    """grad_w [V, H] fp32 += g [n, V]^T @ h [n, H], in the GEMM's epilogue where the dtypes allow."""
    if g.dtype == grad_w.dtype:
        grad_w.addmm_(g.T, h)
    elif g.is_cuda and _ADDMM_FP32_ACC:
        torch.addmm(grad_w, g.T, h, out_dtype=torch.float32, out=grad_w)
    else:
        grad_w += (g.T @ h).to(grad_w.dtype)


def _forward_kernel(hidden, weight, labels, chunk_rows: int, need_h: bool, need_w: bool):
    """The Triton path of ChunkedCrossEntropyFn.forward -> (loss fp32 scalar, grad_h [T, H] | None,
    grad_w [V, H] fp32 | None). Ignored rows get zero gradient rows from the kernel, so the [n, H] operands
    need no mask."""
    kernels = _kernels()
    T = hidden.shape[0]
    labels = labels.to(torch.int64).contiguous()
    loss_rows = torch.empty(T, device=hidden.device, dtype=torch.float32)           # [T]
    grad_h = torch.empty_like(hidden) if need_h else None                           # [T, H]
    grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None  # [V, H]
    for a in range(0, T, chunk_rows):
        h = hidden[a:a + chunk_rows].to(weight.dtype)                               # [n, H]
        logits = _logits_fp32(h, weight)                                            # [n, V] fp32
        g = torch.empty(logits.shape, device=logits.device, dtype=weight.dtype) if (need_h or need_w) else None
        kernels.cross_entropy_grad_launch(logits, labels[a:a + chunk_rows], loss_rows[a:a + chunk_rows], g)
        del logits
        if need_h:
            grad_h[a:a + chunk_rows] = g @ weight                                   # [n, H]
        if need_w:
            _accumulate_grad_w(grad_w, g, h)                                        # [V, H]
    return loss_rows.sum(), grad_h, grad_w


class ChunkedCrossEntropyFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_rows: int, use_kernel: bool = False):
        """hidden [T, H], weight [V, H], labels [T] int64 (IGNORE_INDEX = skip) -> loss sum, fp32 (fp64) scalar."""
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.weight_dtype = weight.dtype
        if use_kernel:
            loss, grad_h, grad_w = _forward_kernel(hidden, weight, labels, chunk_rows, need_h, need_w)
            ctx.save_for_backward(grad_h, grad_w)
            return loss
        T = hidden.shape[0]
        cdtype = torch.promote_types(weight.dtype, torch.float32)                      # fp32 (fp64 stays fp64)
        loss = torch.zeros((), device=hidden.device, dtype=cdtype)
        grad_h = torch.empty_like(hidden) if need_h else None                          # [T, H]
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=cdtype) if need_w else None  # [V, H]
        for a in range(0, T, chunk_rows):
            h = hidden[a:a + chunk_rows]                                                # [n, H]
            y = labels[a:a + chunk_rows]                                                # [n]
            logits = (h.to(weight.dtype) @ weight.T).to(cdtype)                          # [n, V] fp32
            loss_rows, grad_logits = cross_entropy_rows_(logits, y, need_h or need_w)   # [n], [n, V] or None
            loss += loss_rows.sum()
            if grad_logits is not None:
                g = grad_logits.to(weight.dtype)
                # rows without a label get no gradient: masked in the [n, H] operands, not in the [n, V] logits
                keep = (y != IGNORE_INDEX)[:, None]                                     # [n, 1]
                if need_h:
                    grad_h[a:a + chunk_rows] = ((g @ weight) * keep).to(hidden.dtype)   # [n, H]
                if need_w:
                    grad_w += (g.T @ (h.to(weight.dtype) * keep)).to(cdtype)            # [V, H]
            del logits
        ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          chunk_rows: int | None = None, use_kernel: bool | None = None) -> torch.Tensor:
    """Sum of token cross-entropies (fp32 scalar) of the logits hidden @ weight^T.

    hidden [..., H] (the lm_head input), weight [V, H] (the lm_head weight), labels [...] int64 with IGNORE_INDEX
    for rows without a target. Divide by the number of labelled tokens (of the whole step) for the mean.
    use_kernel: None picks the Triton path where `kernel_available`, False forces the reference path."""
    H = hidden.shape[-1]
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} must have the leading shape of hidden {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != H:
        raise ValueError(f"weight must be [V, H={H}], got {tuple(weight.shape)}")
    chunk_rows = chunk_rows or default_chunk_rows(weight.shape[0])
    if use_kernel is None:
        use_kernel = kernel_available(hidden, weight)
    elif use_kernel and not kernel_available(hidden, weight):
        raise ValueError(f"use_kernel=True needs CUDA (or TRITON_INTERPRET=1 on CPU), fp16/bf16/fp32 weights and "
                         f"Triton; got {weight.device.type} {weight.dtype}")
    return ChunkedCrossEntropyFn.apply(hidden.reshape(-1, H), weight, labels.reshape(-1), chunk_rows, use_kernel)
