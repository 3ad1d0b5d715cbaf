"""Reference token permutation for the MoE experts: tokens -> expert-sorted rows, and the weighted way back.

The permutation (one representation through every layer):
  * assignment a = t*k + j is token t's j-th choice, routed to expert topk_idx[t, j];
  * rows are sorted by expert, stably: expert e owns rows [expert_offsets[e], expert_offsets[e+1]) and holds its
    assignments in increasing a (so in increasing token order);
  * with pad_to > 1 each expert's row count is rounded up to a multiple of pad_to with zero rows (an expert
    without tokens stays empty); the rows tensor has room for every expert's padding, M = T*k + E*(pad_to-1)
    rows, and the rows past expert_offsets[E] are zero as well. With pad_to = 1, M = T*k;
  * row_of_assignment[t, j] is the row that holds assignment (t, j).
moe_unpermute gathers, for each token, its k rows in slot order and sums them weighted by topk_weight."""
import torch

from ._checks import check_float, check_int, check_positive_int, check_same_device, check_shape, compute_dtype


def permuted_rows(ntokens: int, top_k: int, num_experts: int, pad_to: int) -> int:
    """M, the number of rows moe_permute returns: T*k, plus E*(pad_to-1) of room for padding when pad_to > 1."""
    return ntokens * top_k + (num_experts * (pad_to - 1) if pad_to > 1 else 0)


def check_permute_args(x, topk_idx, num_experts, pad_to) -> None:
    """Shapes, dtypes and devices of moe_permute's arguments (no value checks: they need the host)."""
    check_float("x", x, "[T, H]", 2)
    check_int("topk_idx", topk_idx, "[T, k]", 2)
    if topk_idx.shape[0] != x.shape[0]:
        raise ValueError(f"topk_idx must have T = {x.shape[0]} rows [T, k] (like x), got shape {tuple(topk_idx.shape)}")
    if topk_idx.shape[1] < 1:
        raise ValueError(f"topk_idx must have at least one column (top_k >= 1), got shape {tuple(topk_idx.shape)}")
    check_positive_int("num_experts", num_experts)
    check_positive_int("pad_to", pad_to)
    check_same_device(x=x, topk_idx=topk_idx)


def check_unpermute_args(rows, row_of_assignment, topk_weight) -> None:
    """Shapes, dtypes and devices of moe_unpermute's arguments (no value checks)."""
    check_float("rows", rows, "[M, H]", 2)
    check_int("row_of_assignment", row_of_assignment, "[T, k]", 2)
    if topk_weight is not None:
        check_float("topk_weight", topk_weight, "[T, k]", 2)
        check_shape("topk_weight", topk_weight, tuple(row_of_assignment.shape), "[T, k] (like row_of_assignment)")
    check_same_device(rows=rows, row_of_assignment=row_of_assignment, topk_weight=topk_weight)


def moe_permute_ref(x, topk_idx, num_experts: int, pad_to: int = 1, permutation=None):
    """Tokens -> expert-sorted rows (reference; see the module docstring for the layout).

    Args:
        x [T, H]: tokens, any float dtype.   topk_idx [T, k] int32/int64: experts, values in [0, num_experts).
        num_experts: E.   pad_to: round every expert's row count up to a multiple of this (1: no padding).
        permutation: expert_permutation_ref(topk_idx, num_experts, pad_to) made elsewhere (the router's), or None:
            then it is made here. Its rows are copied as given (only its shapes are checked).
    Returns:
        rows [M, H] in x's dtype (M = T*k + E*(pad_to-1) if pad_to > 1 else T*k; padding rows are zero),
        row_of_assignment [T, k] int32, expert_offsets [E+1] int32. Differentiable in x.
    """
    check_permute_args(x, topk_idx, num_experts, pad_to)
    if permutation is None:
        permutation = expert_permutation_ref(topk_idx, num_experts, pad_to)
    else:
        check_permutation(permutation, topk_idx, num_experts, pad_to)
    row_of_assignment, expert_offsets, token_of_row = permutation
    filled = token_of_row >= 0                                                     # [M]
    rows = x.new_zeros(token_of_row.numel(), x.shape[1])
    rows[filled] = x[token_of_row[filled].long()]
    return rows, row_of_assignment.to(torch.int32), expert_offsets.to(torch.int32)


def check_permutation(permutation, topk_idx, num_experts: int, pad_to: int) -> None:
    """A given permutation (row_of_assignment [T, k], expert_offsets [E+1], token_of_row [M]) has the shapes and
    dtypes of expert_permutation_ref's for topk_idx (its values are not read: they stay on the device)."""
    if not (isinstance(permutation, (tuple, list)) and len(permutation) == 3):
        raise TypeError("permutation must be (row_of_assignment, expert_offsets, token_of_row), as "
                        "moe_router_permute returns them")
    ntokens, top_k = topk_idx.shape
    m_rows = permuted_rows(ntokens, top_k, num_experts, pad_to)
    for name, t, dims, shape in zip(("row_of_assignment", "expert_offsets", "token_of_row"), permutation,
                                    ("[T, k]", "[E+1]", "[M]"), ((ntokens, top_k), (num_experts + 1,), (m_rows,))):
        check_int(name, t, dims, len(shape))
        check_shape(name, t, shape, dims)
    check_same_device(topk_idx=topk_idx, row_of_assignment=permutation[0], expert_offsets=permutation[1],
                      token_of_row=permutation[2])


def expert_permutation_ref(topk_idx, num_experts: int, pad_to: int = 1):
    """The permutation alone (reference; the layout of the module docstring): topk_idx [T, k] int, values in
    [0, num_experts) -> (row_of_assignment [T, k] int32, expert_offsets [E+1] int32, token_of_row [M] int32, -1 for
    padding rows), M = permuted_rows(T, k, E, pad_to)."""
    check_positive_int("pad_to", pad_to)
    ntokens, top_k = topk_idx.shape
    flat = topk_idx.reshape(-1).long()                                             # [T*k]
    if flat.numel() and not (0 <= int(flat.min()) and int(flat.max()) < num_experts):
        raise ValueError(f"topk_idx values must lie in [0, num_experts={num_experts}), got min {int(flat.min())} "
                         f"max {int(flat.max())}")
    counts = torch.bincount(flat, minlength=num_experts)                           # [E]
    padded = (counts + pad_to - 1) // pad_to * pad_to                              # [E]
    expert_offsets = torch.zeros(num_experts + 1, dtype=torch.long, device=flat.device)
    expert_offsets[1:] = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)                                       # [T*k] assignments, expert-sorted
    expert_sorted = flat[order]                                                    # [T*k]
    first_unpadded = torch.cumsum(counts, 0) - counts                              # [E]
    rank = torch.arange(flat.numel(), device=flat.device) - first_unpadded[expert_sorted]
    row_of_assignment = torch.empty_like(flat)
    row_of_assignment[order] = expert_offsets[expert_sorted] + rank
    token_of_row = torch.full((permuted_rows(ntokens, top_k, num_experts, pad_to),), -1, dtype=torch.long,
                              device=flat.device)
    token_of_row[row_of_assignment] = torch.arange(flat.numel(), device=flat.device) // top_k
    return (row_of_assignment.view(ntokens, top_k).to(torch.int32), expert_offsets.to(torch.int32),
            token_of_row.to(torch.int32))


def moe_unpermute_ref(rows, row_of_assignment, topk_weight=None):
    """Expert-sorted rows -> tokens: out[t] = sum_j topk_weight[t, j] * rows[row_of_assignment[t, j]] (reference).

    Args:
        rows [M, H]: any float dtype.   row_of_assignment [T, k] int32/int64: values in [0, M).
        topk_weight [T, k] | None: any float dtype (None: weight 1, the backward of moe_permute).
    Returns:
        [T, H] in rows' dtype, summed in float32 (float64 for float64 inputs). Differentiable in rows and topk_weight.
    """
    check_unpermute_args(rows, row_of_assignment, topk_weight)
    idx = row_of_assignment.long()                                                 # [T, k]
    if idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < rows.shape[0]):
        raise ValueError(f"row_of_assignment values must lie in [0, M={rows.shape[0]}), got min {int(idx.min())} "
                         f"max {int(idx.max())}")
    dtypes = (rows.dtype,) if topk_weight is None else (rows.dtype, topk_weight.dtype)
    cdtype = compute_dtype(*dtypes)
    gathered = rows.to(cdtype)[idx]                                                # [T, k, H]
    if topk_weight is not None:
        gathered = gathered * topk_weight.to(cdtype)[..., None]
    return gathered.sum(1).to(rows.dtype)
