"""Reference MoE expert computation of NemotronH: non-gated squared-ReLU experts plus an optional shared expert.
    routed(x_t) = sum_j w_tj * down_e(relu(up_e x_t)^2),  e = topk_idx[t, j]
    shared(x_t) = down_s(relu(up_s x_t)^2)
The routed sum is accumulated in float32 (float64 for float64 x) and cast to x's dtype before the shared
expert's output (also cast to x's dtype) is added, as the checkpoint's remote code does."""
import torch

from ._checks import check_float, check_int, check_same_device, check_shape, compute_dtype
from .moe_permute import check_permutation


def _squared_relu_mlp(x, up, down):
    """x [n, Hd], up [I, Hd], down [Hd, I] (compute dtype) -> [n, Hd]."""
    return torch.relu(x @ up.T).square() @ down.T


def moe_experts_ref(x, topk_idx, topk_weight, up, down, shared_up=None, shared_down=None, permutation=None):
    """Routed experts (+ shared expert) for a batch of tokens (reference).

    Args:
        x [T, Hd]: tokens, any float dtype.
        topk_idx [T, k] int32/int64: chosen experts, values in [0, E).   topk_weight [T, k]: their weights.
        up [E, I, Hd], down [E, Hd, I]: expert weights (nn.Linear layout, no bias).
        shared_up [Is, Hd] | None, shared_down [Hd, Is] | None: the shared expert (both or neither).
        permutation: the router's expert-sorted permutation of topk_idx, or None (moe_experts' signature: the
            result does not depend on it, so the reference checks its shapes only).
    Returns:
        [T, Hd] in x's dtype.
    """
    check_float("x", x, "[T, Hd]", 2)
    ntokens, hidden = x.shape
    check_int("topk_idx", topk_idx, "[T, k]", 2)
    if topk_idx.shape[0] != ntokens:
        raise ValueError(f"topk_idx must have T = {ntokens} rows [T, k], got shape {tuple(topk_idx.shape)}")
    top_k = topk_idx.shape[1]
    check_float("topk_weight", topk_weight, "[T, k]", 2)
    check_shape("topk_weight", topk_weight, (ntokens, top_k), "[T, k] (like topk_idx)")
    check_float("up", up, "[E, I, Hd]", 3)
    nexperts, inter = up.shape[:2]
    check_shape("up", up, (nexperts, inter, hidden), "[E, I, Hd]")
    check_float("down", down, "[E, Hd, I]", 3)
    check_shape("down", down, (nexperts, hidden, inter), "[E, Hd, I]")
    if (shared_up is None) != (shared_down is None):
        raise ValueError("shared_up and shared_down must be given together (or both None)")
    if shared_up is not None:
        check_float("shared_up", shared_up, "[Is, Hd]", 2)
        check_shape("shared_up", shared_up, (shared_up.shape[0], hidden), "[Is, Hd]")
        check_float("shared_down", shared_down, "[Hd, Is]", 2)
        check_shape("shared_down", shared_down, (hidden, shared_up.shape[0]), "[Hd, Is]")
    check_same_device(x=x, topk_idx=topk_idx, topk_weight=topk_weight, up=up, down=down, shared_up=shared_up,
                      shared_down=shared_down)
    if topk_idx.numel() and not (0 <= int(topk_idx.min()) and int(topk_idx.max()) < nexperts):
        raise ValueError(f"topk_idx values must lie in [0, E={nexperts}), got min {int(topk_idx.min())} "
                         f"max {int(topk_idx.max())}")
    if permutation is not None:
        check_permutation(permutation, topk_idx, nexperts, 1)

    cdtype = compute_dtype(x.dtype)
    x_c = x.to(cdtype)                                                        # [T, Hd]
    weight_c = topk_weight.to(cdtype)                                         # [T, k]
    routed = x_c.new_zeros(ntokens, hidden)                                   # [T, Hd] accumulator
    for e in torch.unique(topk_idx).tolist():                                 # experts with no token are skipped
        tok, slot = torch.nonzero(topk_idx == e, as_tuple=True)               # [n_e] each
        out_e = _squared_relu_mlp(x_c[tok], up[e].to(cdtype), down[e].to(cdtype))  # [n_e, Hd]
        routed.index_add_(0, tok, weight_c[tok, slot, None] * out_e)
    out = routed.to(x.dtype)
    if shared_up is not None:
        out = out + _squared_relu_mlp(x_c, shared_up.to(cdtype), shared_down.to(cdtype)).to(x.dtype)
    return out
