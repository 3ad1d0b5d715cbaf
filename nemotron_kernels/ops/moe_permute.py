"""Public ops `moe_permute` and `moe_unpermute`: tokens -> expert-sorted rows and the weighted way back
(layout in reference/moe_permute.py).

CUDA kernels (csrc/moe/moe_permute_kernel.cu) for bf16/fp16/fp32 CUDA tensors: a stable counting sort, no host
synchronisation, no atomics (bitwise deterministic), in five launches; two (one block ranks and places, one
gathers) up to 2,048 assignments and 4,096 rows with padding (decode batches). unpermute gathers each token's k
rows in slot order. The reference runs on CPU, for float64, or without the extension.
Layers: custom ops `nemotron_kernels::moe_permute` / `::moe_unpermute` / `::moe_unpermute_bwd`, and
`::moe_permute_rows` (the row copy alone, for a permutation the router made) -> `MoePermuteFn`, `MoeUnpermuteFn`
(autograd) -> `moe_permute()`, `moe_unpermute()` (checks, dispatch).

On the CUDA path, expert ids outside [0, E) cannot be checked without reading them back to the host: such
assignments are dropped (row_of_assignment = -1, they contribute nothing); the reference raises ValueError."""

import torch

from .. import _ext
from ..reference.moe_permute import (check_permutation, check_permute_args, check_unpermute_args, moe_permute_ref,
                                     moe_unpermute_ref, permuted_rows)
from ._kernel_op import kernel_op

KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_EXPERTS = 1024  # kMaxPermuteExperts (shared memory of the ranking kernel)
MAX_TOP_K = 32


def _use_kernel(x: torch.Tensor, top_k: int, num_experts: int) -> bool:
    return (x.is_cuda and x.dtype in KERNEL_DTYPES and top_k <= MAX_TOP_K and num_experts <= MAX_EXPERTS
            and _ext.cuda_ok()[0])


@kernel_op("nemotron_kernels::moe_permute", mutates_args=())
def moe_permute_op(x: torch.Tensor, topk_idx: torch.Tensor, num_experts: int,
                   pad_to: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [T, H] (CUDA), topk_idx [T, k] int32 -> (rows [M, H], row_of_assignment [T, k] int32, expert_offsets [E+1])."""
    return tuple(_ext._C.moe_permute(x, topk_idx, num_experts, pad_to, None)[:3])


def _permute_fake(x, topk_idx, num_experts, pad_to):
    ntokens, top_k = topk_idx.shape
    return (x.new_empty(permuted_rows(ntokens, top_k, num_experts, pad_to), x.shape[1]),
            topk_idx.new_empty(ntokens, top_k, dtype=torch.int32), topk_idx.new_empty(num_experts + 1, dtype=torch.int32))


moe_permute_op.register_fake(_permute_fake)


@kernel_op("nemotron_kernels::moe_permute_rows", mutates_args=())
def moe_permute_rows_op(x: torch.Tensor, row_of_assignment: torch.Tensor, token_of_row: torch.Tensor) -> torch.Tensor:
    """x [T, H] (CUDA), row_of_assignment [T, k] int32, token_of_row [M] int32 -> rows [M, H]: the row copy of a
    permutation made elsewhere (moe_router_permute), zeros for padding rows."""
    return _ext._C.moe_permute_rows(x, row_of_assignment, token_of_row)


@moe_permute_rows_op.register_fake
def _(x, row_of_assignment, token_of_row):
    return x.new_empty(token_of_row.shape[0], x.shape[1])


@kernel_op("nemotron_kernels::moe_permute_scaled", mutates_args=())
def moe_permute_scaled_op(x: torch.Tensor, x_scale: torch.Tensor, topk_idx: torch.Tensor, num_experts: int,
                          pad_to: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """moe_permute for quantised tokens: x [T, H] (e.g. float8_e4m3fn), x_scale [T] fp32 -> (rows [M, H],
    row_scale [M] fp32 (0 for padding), row_of_assignment [T, k], expert_offsets [E+1]) (CUDA)."""
    rows, row_of_assignment, expert_offsets, row_scale = _ext._C.moe_permute(x, topk_idx, num_experts, pad_to,
                                                                             x_scale)
    return rows, row_scale, row_of_assignment, expert_offsets


@moe_permute_scaled_op.register_fake
def _(x, x_scale, topk_idx, num_experts, pad_to):
    rows, row_of_assignment, expert_offsets = _permute_fake(x, topk_idx, num_experts, pad_to)
    return rows, x_scale.new_empty(rows.shape[0]), row_of_assignment, expert_offsets


@kernel_op("nemotron_kernels::moe_unpermute", mutates_args=())
def moe_unpermute_op(rows: torch.Tensor, row_of_assignment: torch.Tensor | None, topk_weight: torch.Tensor | None,
                     add: torch.Tensor | None) -> torch.Tensor:
    """rows [M, H] (CUDA), row_of_assignment [T, k] int32 | None (rows [T*k, H] in assignment order, row t*k + j;
    then topk_weight is required), topk_weight [T, k] fp32 | None (weight 1), add [T, H] | None ->
    [T, H] = round(sum_j w_j rows[r_j]) (+ add, rounded again), fp32 sums in slot order."""
    return _ext._C.moe_unpermute(rows, row_of_assignment, topk_weight, add)


@moe_unpermute_op.register_fake
def _(rows, row_of_assignment, topk_weight, add):
    ntokens = (row_of_assignment if row_of_assignment is not None else topk_weight).shape[0]
    return rows.new_empty(ntokens, rows.shape[1])


@kernel_op("nemotron_kernels::moe_unpermute_bwd", mutates_args=())
def moe_unpermute_bwd_op(dout: torch.Tensor, rows: torch.Tensor | None, row_of_assignment: torch.Tensor,
                         topk_weight: torch.Tensor | None, m_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """dout [T, H] -> (d_rows [m_rows, H] = w_j dout[t] at row r_j (zeros elsewhere when m_rows != T*k),
    d_weight [T, k] fp32 = <dout[t], rows[r_j]>, or an empty [0, 0] when rows is None)."""
    return tuple(_ext._C.moe_unpermute_bwd(dout, rows, row_of_assignment, topk_weight, m_rows))


@moe_unpermute_bwd_op.register_fake
def _(dout, rows, row_of_assignment, topk_weight, m_rows):
    shape_w = tuple(row_of_assignment.shape) if rows is not None else (0, 0)
    return dout.new_empty(m_rows, dout.shape[1]), dout.new_empty(shape_w, dtype=torch.float32)


def kernel_permutation(permutation, topk_idx, num_experts: int, pad_to: int):
    """A given permutation (moe_router's) checked against topk_idx, as the kernels take it (int32, contiguous), or
    None."""
    if permutation is None:
        return None
    check_permutation(permutation, topk_idx, num_experts, pad_to)
    return tuple(t.to(torch.int32).contiguous() for t in permutation)


class MoePermuteFn(torch.autograd.Function):
    """x -> (rows, row_of_assignment, expert_offsets); the gradient of x sums each token's k row gradients."""

    @staticmethod
    def forward(ctx, x, topk_idx, num_experts: int, pad_to: int, permutation):
        if permutation is None:
            rows, row_of_assignment, expert_offsets = moe_permute_op(x, topk_idx, num_experts, pad_to)
        else:
            row_of_assignment, expert_offsets, token_of_row = permutation
            rows = moe_permute_rows_op(x, row_of_assignment, token_of_row)
        ctx.mark_non_differentiable(row_of_assignment, expert_offsets)
        ctx.save_for_backward(row_of_assignment)
        return rows, row_of_assignment, expert_offsets

    @staticmethod
    def backward(ctx, d_rows, _d_row_of_assignment, _d_expert_offsets):
        (row_of_assignment,) = ctx.saved_tensors
        dx = moe_unpermute_op(d_rows.contiguous(), row_of_assignment, None, None) if ctx.needs_input_grad[0] else None
        return dx, None, None, None, None


class MoeUnpermuteFn(torch.autograd.Function):
    """(rows, row_of_assignment, topk_weight | None) -> [T, H]; gradients for rows and topk_weight."""

    @staticmethod
    def forward(ctx, rows, row_of_assignment, topk_weight):
        weight32 = None if topk_weight is None else topk_weight.float().contiguous()
        out = moe_unpermute_op(rows, row_of_assignment, weight32, None)
        ctx.weight_dtype = None if topk_weight is None else topk_weight.dtype
        ctx.m_rows = rows.shape[0]
        need_weight_grad = topk_weight is not None and topk_weight.requires_grad
        ctx.save_for_backward(rows if need_weight_grad else None, row_of_assignment, weight32)
        return out

    @staticmethod
    def backward(ctx, dout):
        rows, row_of_assignment, weight32 = ctx.saved_tensors
        d_rows, d_weight = moe_unpermute_bwd_op(dout.contiguous(), rows, row_of_assignment, weight32, ctx.m_rows)
        return (d_rows if ctx.needs_input_grad[0] else None, None,
                d_weight.to(ctx.weight_dtype) if rows is not None else None)


def moe_permute(x, topk_idx, num_experts: int, pad_to: int = 1, permutation=None):
    """Tokens -> expert-sorted rows (stable: within an expert, tokens in increasing order).

    Args:
        x [T, H]: tokens.   topk_idx [T, k] int32/int64: each token's experts, values in [0, num_experts).
        num_experts: E (<= 1024 on the CUDA path).   pad_to: round each expert's rows up to a multiple (1: none).
        permutation: (row_of_assignment [T, k], expert_offsets [E+1], token_of_row [M]) int32 for topk_idx and
            pad_to, as moe_router_permute returns them (or moe_router(..., with_permutation=True) for pad_to 1):
            then only the rows are copied (one launch); None: the choices are ranked here.
    Returns:
        rows [M, H] like x (M = T*k, plus E*(pad_to-1) when pad_to > 1; padding rows are zero),
        row_of_assignment [T, k] int32 (the row of token t's j-th choice), expert_offsets [E+1] int32
        (expert e owns rows [expert_offsets[e], expert_offsets[e+1])). Differentiable in x.
    """
    check_permute_args(x, topk_idx, num_experts, pad_to)
    if not _use_kernel(x, topk_idx.shape[1], num_experts):
        return moe_permute_ref(x, topk_idx, num_experts, pad_to, permutation)
    return MoePermuteFn.apply(x.contiguous(), topk_idx.to(torch.int32).contiguous(), num_experts, pad_to,
                              kernel_permutation(permutation, topk_idx, num_experts, pad_to))


def moe_unpermute(rows, row_of_assignment, topk_weight=None):
    """Expert-sorted rows -> tokens: out[t] = sum_j topk_weight[t, j] * rows[row_of_assignment[t, j]].

    Args:
        rows [M, H].   row_of_assignment [T, k] int32/int64 (from moe_permute).
        topk_weight [T, k] | None: routing weights (None: plain sum, the backward of moe_permute).
    Returns:
        [T, H] in rows' dtype, summed in float32 in slot order (deterministic). Differentiable in rows and
        topk_weight.
    """
    check_unpermute_args(rows, row_of_assignment, topk_weight)
    if not _use_kernel(rows, row_of_assignment.shape[1], 1):
        return moe_unpermute_ref(rows, row_of_assignment, topk_weight)
    return MoeUnpermuteFn.apply(rows.contiguous(), row_of_assignment.to(torch.int32).contiguous(), topk_weight)


def backend_report(device_type: str) -> str:
    return _ext.cuda_only_report(device_type, "CUDA kernels (stable counting sort + gather, bf16/fp16/fp32; other "
                                              "dtypes -> reference)")
