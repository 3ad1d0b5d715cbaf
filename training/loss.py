"""Chunked cross-entropy on fp32 logits: the [T, V] logits of a 131K vocabulary never exist whole.

`chunked_cross_entropy(hidden, weight, labels)` = sum over labelled rows of -log softmax(hidden @ weight^T)[label],
computed `chunk_rows` rows at a time. The forward pass also computes the gradients of each chunk while its logits
exist (the loss is a scalar, so backward only scales them): one logits GEMM per chunk instead of a recomputation,
and at most one chunk of logits ([chunk_rows, V] fp32) alive at a time. Logits come from a GEMM in the weights'
dtype (BF16 on GPU, accumulated in fp32 by the GEMM) and are upcast to fp32 before the log-softmax, as Megatron
does; the gradient of the weight is accumulated in fp32.

Shape legend: T rows (tokens), H hidden, V vocab, n rows of a chunk.
"""
from __future__ import annotations

import torch

from .data import IGNORE_INDEX


def default_chunk_rows(vocab_size: int, budget_elems: int = 1 << 28) -> int:
    """Rows per chunk so a chunk of fp32 logits stays near `budget_elems` elements (1 GiB)."""
    return max(1, budget_elems // vocab_size)


class ChunkedCrossEntropyFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_rows: int):
        """hidden [T, H], weight [V, H], labels [T] int64 (IGNORE_INDEX = skip) -> loss sum, fp32 (fp64) scalar."""
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        T = hidden.shape[0]
        cdtype = torch.promote_types(weight.dtype, torch.float32)                      # fp32 (fp64 stays fp64)
        loss = torch.zeros((), device=hidden.device, dtype=cdtype)
        grad_h = torch.empty_like(hidden) if need_h else None                          # [T, H]
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=cdtype) if need_w else None  # [V, H]
        for a in range(0, T, chunk_rows):
            h = hidden[a:a + chunk_rows]                                                # [n, H]
            y = labels[a:a + chunk_rows]                                                # [n]
            valid = y != IGNORE_INDEX                                                   # [n]
            y_safe = torch.where(valid, y, 0)
            logits = (h.to(weight.dtype) @ weight.T).to(cdtype)                          # [n, V] fp32
            lse = torch.logsumexp(logits, dim=-1)                                       # [n]
            target = logits.gather(1, y_safe[:, None])[:, 0]                            # [n]
            loss += torch.where(valid, lse - target, 0.0).sum()
            if need_h or need_w:
                grad_logits = logits.sub_(lse[:, None]).exp_()                          # softmax, in place [n, V]
                grad_logits.scatter_add_(1, y_safe[:, None], torch.full_like(lse[:, None], -1.0))
                g = grad_logits.to(weight.dtype)
                # rows without a label get no gradient: masked in the [n, H] operands, not in the [n, V] logits
                keep = valid[:, None]                                                   # [n, 1]
                if need_h:
                    grad_h[a:a + chunk_rows] = ((g @ weight) * keep).to(hidden.dtype)   # [n, H]
                if need_w:
                    grad_w += (g.T @ (h.to(weight.dtype) * keep)).to(cdtype)            # [V, H]
            del logits
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          chunk_rows: int | None = None) -> torch.Tensor:
    """Sum of token cross-entropies (fp32 scalar) of the logits hidden @ weight^T.

    hidden [..., H] (the lm_head input), weight [V, H] (the lm_head weight), labels [...] int64 with IGNORE_INDEX
    for rows without a target. Divide by the number of labelled tokens (of the whole step) for the mean."""
    H = hidden.shape[-1]
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} must have the leading shape of hidden {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != H:
        raise ValueError(f"weight must be [V, H={H}], got {tuple(weight.shape)}")
    chunk_rows = chunk_rows or default_chunk_rows(weight.shape[0])
    return ChunkedCrossEntropyFn.apply(hidden.reshape(-1, H), weight, labels.reshape(-1), chunk_rows)
