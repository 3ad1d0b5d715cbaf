"""Reference MoE router of NemotronH (DeepSeek-V3 style sigmoid gate with a selection-only bias):
    logits = x @ weight.T                      fp32 (fp64 for fp64 x)
    s      = sigmoid(logits)                   unbiased scores
    sel    = s + bias                          used ONLY to choose experts
    (n_group > 1: group score = sum of the top-2 `sel` in each group; experts outside the best
     `topk_group` groups are masked to -inf)
    idx    = the top_k experts by `sel`, descending, ties -> lower expert index (NaN ranks highest)
    w      = s[idx] / (sum(s[idx]) + 1e-20) * routed_scaling_factor

Determinism: the fp32 sigmoid is evaluated in fp64 and rounded to fp32 (correctly rounded in practice), and
the order is a stable descending sort, so the reference, the C++ CPU kernel and the CUDA kernel choose the
same experts bit for bit — even for exact ties — on every device. (torch.topk's tie order is unspecified and
torch's fp32 sigmoid differs by an ulp between its vectorised and scalar CPU loops.)"""
import torch

from ._checks import check_float, check_positive_int, check_same_device, check_shape, compute_dtype
from .moe_permute import expert_permutation_ref

X_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
EPS = 1e-20


def check_router_args(x, weight, bias, top_k, n_group, topk_group) -> None:
    """Validate moe_router arguments; every failure names the argument (TypeError / ValueError)."""
    check_float("x", x, "[T, Hd]", 2)
    if x.dtype not in X_DTYPES:
        raise TypeError(f"x must have dtype bfloat16, float16, float32 or float64, got {x.dtype}")
    check_float("weight", weight, "[E, Hd]", 2)
    if weight.dtype not in (torch.float32, x.dtype):
        raise TypeError(f"weight must have dtype float32 or x's dtype ({x.dtype}), got {weight.dtype}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must have shape [E, Hd] with Hd = {x.shape[1]} (like x), got {tuple(weight.shape)}")
    check_float("bias", bias, "[E]", 1)
    bias_ok = (torch.float32, torch.float64) if x.dtype == torch.float64 else (torch.float32,)
    if bias.dtype not in bias_ok:
        raise TypeError(f"bias must have dtype {' or '.join(map(str, bias_ok))}, got {bias.dtype}")
    check_shape("bias", bias, (weight.shape[0],), "[E]")
    check_same_device(x=x, weight=weight, bias=bias)
    check_group_args(weight.shape[0], top_k, n_group, topk_group)


def check_group_args(num_experts: int, top_k, n_group, topk_group) -> None:
    """top_k in [1, E], n_group divides E, topk_group in [1, n_group], top_k <= topk_group * (E / n_group)."""
    check_positive_int("top_k", top_k)
    check_positive_int("n_group", n_group)
    check_positive_int("topk_group", topk_group)
    if top_k > num_experts:
        raise ValueError(f"top_k must be in [1, E={num_experts}], got {top_k}")
    if num_experts % n_group:
        raise ValueError(f"n_group ({n_group}) must divide the number of experts E={num_experts}")
    if topk_group > n_group:
        raise ValueError(f"topk_group must be in [1, n_group={n_group}], got {topk_group}")
    if top_k > topk_group * (num_experts // n_group):
        raise ValueError(f"top_k ({top_k}) must be <= topk_group * E / n_group = "
                         f"{topk_group * (num_experts // n_group)} (the experts the kept groups hold)")


def router_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """sigmoid(logits) in logits' dtype; fp32 is evaluated in fp64 and rounded once (device-independent)."""
    if logits.dtype == torch.float32:
        return torch.sigmoid(logits.double()).float()
    return torch.sigmoid(logits)


def _top_indices(values: torch.Tensor, k: int) -> torch.Tensor:
    """[T, n] -> [T, k] int64: indices of the k largest per row, descending, ties -> lower index, NaN first."""
    return torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :k]


def moe_router_from_logits_ref(logits, bias, top_k: int, routed_scaling_factor: float = 1.0, n_group: int = 1,
                               topk_group: int = 1):
    """The router after the logits GEMM (what the fused kernels compute).

    Args:
        logits [T, E]: float32 or float64.   bias [E]: selection-only bias (cast to logits' dtype).
        top_k, routed_scaling_factor, n_group, topk_group: as in moe_router_ref.
    Returns:
        topk_idx [T, k] int32, topk_weight [T, k] in logits' dtype, counts [E] int32 (tokens per expert).
    """
    check_float("logits", logits, "[T, E]", 2)
    ntokens, nexperts = logits.shape
    check_float("bias", bias, "[E]", 1)
    check_shape("bias", bias, (nexperts,), "[E]")
    check_same_device(logits=logits, bias=bias)
    check_group_args(nexperts, top_k, n_group, topk_group)

    scores = router_sigmoid(logits)                                            # [T, E]
    selection = scores + bias.to(scores.dtype)                                 # [T, E]
    if n_group > 1:
        group_size = nexperts // n_group
        grouped = selection.view(ntokens, n_group, group_size)                 # [T, G, E/G]
        group_score = grouped.topk(min(2, group_size), dim=-1).values.sum(-1)  # [T, G]
        keep = torch.zeros(ntokens, n_group, dtype=torch.bool, device=logits.device)
        keep.scatter_(1, _top_indices(group_score, topk_group), True)          # [T, G]
        selection = grouped.masked_fill(~keep[:, :, None], float("-inf")).view(ntokens, nexperts)
    topk_idx = _top_indices(selection, top_k)                                  # [T, k] int64
    topk_score = scores.gather(1, topk_idx)                                    # [T, k]
    topk_weight = topk_score / (topk_score.sum(-1, keepdim=True) + EPS) * routed_scaling_factor
    counts = torch.zeros(nexperts, dtype=torch.int32, device=logits.device)
    counts.index_add_(0, topk_idx.flatten(), torch.ones(topk_idx.numel(), dtype=torch.int32, device=logits.device))
    return topk_idx.to(torch.int32), topk_weight, counts


def moe_router_ref(x, weight, bias, top_k: int, routed_scaling_factor: float = 1.0, n_group: int = 1,
                   topk_group: int = 1, with_permutation: bool = False):
    """NemotronH MoE router (reference). Differentiable in x and weight through topk_weight.

    Args:
        x [T, Hd]: tokens, bf16/fp16/fp32/fp64.   weight [E, Hd]: gate weight, float32 or x's dtype.
        bias [E] float32 (float64 allowed for float64 x): e_score_correction_bias, selection only.
        top_k: experts per token (Nano: 6).   routed_scaling_factor: multiplies the weights (Nano: 2.5).
        n_group, topk_group: group-limited selection (Nano: 1, 1 = off).
        with_permutation: also return the expert-sorted permutation of the choices.
    Returns:
        topk_idx [T, k] int32 (descending selection score, ties -> lower index),
        topk_weight [T, k] float32 (float64 for float64 x), counts [E] int32 (tokens routed to each expert);
        with with_permutation, a fourth: expert_permutation_ref(topk_idx, E) (row_of_assignment [T, k],
        expert_offsets [E+1], token_of_row [T*k], int32).
    """
    check_router_args(x, weight, bias, top_k, n_group, topk_group)
    cdtype = compute_dtype(x.dtype)
    logits = torch.matmul(x.to(cdtype), weight.to(cdtype).t())                # [T, E]
    topk_idx, topk_weight, counts = moe_router_from_logits_ref(logits, bias, top_k, routed_scaling_factor, n_group,
                                                               topk_group)
    if not with_permutation:
        return topk_idx, topk_weight, counts
    return topk_idx, topk_weight, counts, expert_permutation_ref(topk_idx, weight.shape[0])
