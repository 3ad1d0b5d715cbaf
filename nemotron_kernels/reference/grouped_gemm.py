"""Reference grouped GEMM of the MoE experts: expert-sorted rows times each expert's weight, optionally squared ReLU.
    out[rows_e] = act(a[rows_e] @ b[e]^T),  rows_e = [expert_offsets[e], expert_offsets[e+1]),  act in {none, relu2}
or, without an activation, each row times its row_scale (the down projection with the routing weights applied).
b is in nn.Linear layout per expert ([E, N, K]: the up projection is [E, I, H], the down projection [E, H, I]).
FP8: row-wise e4m3 quantisation (scale = amax / 448), the FP8 grouped GEMM on dequantised operands, and the whole
FP8 expert pipeline (moe_experts_fp8_ref) with the kernels' rounding points."""
import torch

from ._checks import check_float, check_int, check_optional_float, check_same_device, compute_dtype
from .moe_permute import moe_unpermute_ref

ACTIVATIONS = ("none", "relu2")


def check_grouped_gemm_args(a, b, expert_offsets, activation, row_scale=None) -> None:
    """Shapes, dtypes and devices (no value checks: the offsets stay on the device in the kernel path)."""
    check_float("a", a, "[M, K]", 2)
    check_float("b", b, "[E, N, K]", 3)
    if b.shape[2] != a.shape[1]:
        raise ValueError(f"b must have shape [E, N, K] with K = a.shape[1] = {a.shape[1]}, got {tuple(b.shape)}")
    _check_offsets_and_activation(expert_offsets, "b", b.shape[0], activation)
    check_row_scale(row_scale, a.shape[0], activation)
    check_same_device(a=a, b=b, expert_offsets=expert_offsets, row_scale=row_scale)


def check_row_scale(row_scale, m_rows: int, activation: str) -> None:
    """row_scale [M] float or None; only without an activation (relu(acc)^2 * s is no GEMM epilogue of the down
    projection, and an FP8 kernel folds s into the row's dequantisation scale, which relu^2 would square)."""
    check_optional_float("row_scale", row_scale, (m_rows,), "[M]")
    if row_scale is not None and activation != "none":
        raise ValueError(f"row_scale applies without an activation only, got activation {activation!r}")


def _check_offsets_and_activation(expert_offsets, weights_name: str, nexperts: int, activation: str) -> None:
    check_int("expert_offsets", expert_offsets, "[E+1]", 1)
    if expert_offsets.shape[0] != nexperts + 1:
        raise ValueError(f"expert_offsets must have E+1 = {nexperts + 1} entries ({weights_name} has E = {nexperts} "
                         f"experts), got {expert_offsets.shape[0]}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def check_offsets_values(offsets: list[int], m_rows: int) -> None:
    """offsets[0] = 0, non-decreasing, offsets[E] = M (what moe_permute produces)."""
    if offsets[0] != 0 or offsets[-1] != m_rows or any(q < p for p, q in zip(offsets[:-1], offsets[1:])):
        raise ValueError(f"expert_offsets must start at 0, be non-decreasing and end at M = a.shape[0] = {m_rows}, "
                         f"got {offsets[:8]}{'...' if len(offsets) > 8 else ''} (last {offsets[-1]})")


def grouped_gemm_ref(a, b, expert_offsets, activation: str = "none", row_scale=None):
    """Per-expert a[rows_e] @ b[e]^T with an optional fused squared ReLU or per-row scale (reference).

    Args:
        a [M, K]: expert-sorted rows, any float dtype.   b [E, N, K]: per-expert weights (nn.Linear layout).
        expert_offsets [E+1] int32/int64: expert e owns rows [expert_offsets[e], expert_offsets[e+1]);
            0 = offsets[0] <= ... <= offsets[E] = M.
        activation: "none" or "relu2" (relu(.)^2).
        row_scale [M] float | None: out[r] *= row_scale[r] before the one rounding (activation "none" only).
    Returns:
        [M, N] in a's dtype, computed in float32 (float64 for float64 inputs). Differentiable in a, b and row_scale.
    """
    check_grouped_gemm_args(a, b, expert_offsets, activation, row_scale)
    offsets = [int(v) for v in expert_offsets.tolist()]
    check_offsets_values(offsets, a.shape[0])
    cdtype = compute_dtype(a.dtype, b.dtype)
    parts = []
    for e in range(b.shape[0]):
        a_e = a[offsets[e]:offsets[e + 1]].to(cdtype)                              # [M_e, K]
        out_e = a_e @ b[e].to(cdtype).T                                            # [M_e, N]
        if row_scale is not None:
            out_e = out_e * row_scale[offsets[e]:offsets[e + 1], None].to(cdtype)
        parts.append(torch.relu(out_e).square() if activation == "relu2" else out_e)
    return torch.cat(parts).to(a.dtype) if parts else a.new_zeros(0, b.shape[1])



def relu2_grad_ref(dout, out):
    """The gradient through out = relu(pre)^2, written with out itself (reference): d pre = dout * 2 sqrt(out),
    since relu(pre) = sqrt(out). fp32 math (float64 for float64 inputs), rounded once to dout's dtype."""
    check_float("dout", dout)
    check_float("out", out)
    if out.shape != dout.shape:
        raise ValueError(f"out must have dout's shape {tuple(dout.shape)}, got {tuple(out.shape)}")
    check_same_device(dout=dout, out=out)
    cdtype = compute_dtype(dout.dtype, out.dtype)
    # the square root through float64, then rounded: correctly rounded in cdtype, as the kernel's sqrt_rn is (torch's
    # CPU fp32 sqrt is 1 ulp off for some inputs on some machines: 0x1.0a5fp-1 -> 0x1.714ca0p-1, not ...a2p-1)
    root = out.to(torch.float64).sqrt().to(cdtype)
    return (dout.to(cdtype) * root * 2.0).to(dout.dtype)


E4M3_MAX = 448.0  # largest finite float8_e4m3fn (the model and the attention references use this one too)


def quantize_fp8_rowwise_ref(x):
    """Row-wise FP8 e4m3 quantisation (reference): x [R, C] float -> (q [R, C] float8_e4m3fn, scale [R] float32),
    scale = amax(|x[r]|) / 448 (1 for an all-zero row), q = round_to_nearest_even(x / scale) in e4m3 (saturated),
    so that x[r] ~= q[r] * scale[r]."""
    check_float("x", x, "[R, C]", 2)
    x32 = x.float()
    amax = x32.abs().amax(1) if x.shape[1] else x32.new_zeros(x.shape[0])       # [R]
    # A tensor divisor, not the Python float: CUDA torch turns division by a scalar into a multiplication by
    # its fp32 reciprocal (1 ulp off the true quotient), which the kernel's correctly rounded division is not.
    scale = torch.where(amax > 0, amax / torch.full_like(amax, E4M3_MAX), torch.ones_like(amax))  # [R]
    q = (x32 / scale[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


def grouped_gemm_fp8_ref(a_q, a_scale, b_q, b_scale, expert_offsets, activation: str = "none", row_scale=None):
    """FP8 grouped GEMM (reference): act((a_q * a_scale[:, None]) @ (b_q[e] * b_scale[e][:, None])^T) per expert,
    computed in float32 from the dequantised operands, returned in bfloat16.

    Args:
        a_q [M, K] float8_e4m3fn, a_scale [M] float32; b_q [E, N, K] float8_e4m3fn, b_scale [E, N] float32;
        expert_offsets [E+1]; activation "none" or "relu2"; row_scale [M] | None (as for grouped_gemm_ref).
    """
    check_grouped_gemm_fp8_args(a_q, a_scale, b_q, b_scale, expert_offsets, activation, row_scale)
    a = a_q.float() * a_scale.float()[:, None]
    b = b_q.float() * b_scale.float()[..., None]
    return grouped_gemm_ref(a, b, expert_offsets, activation, row_scale).to(torch.bfloat16)


def grouped_gemm_w8_ref(a, b_q, b_scale, expert_offsets, activation: str = "none", row_scale=None):
    """Weights-only FP8 grouped GEMM (reference): act(a[rows_e] @ (b_q[e] * b_scale[e][:, None])^T) per expert,
    a in its own precision (no activation quantisation), computed in float32 (float64 for float64 a), returned in
    a's dtype.

    Args:
        a [M, K] float; b_q [E, N, K] float8_e4m3fn, b_scale [E, N] float32; expert_offsets [E+1];
        activation "none" or "relu2"; row_scale [M] | None (as for grouped_gemm_ref).
    """
    check_grouped_gemm_w8_args(a, b_q, b_scale, expert_offsets, activation, row_scale)
    cdtype = compute_dtype(a.dtype, torch.float32)
    b = b_q.to(cdtype) * b_scale.to(cdtype)[..., None]                               # [E, N, K]
    return grouped_gemm_ref(a.to(cdtype), b, expert_offsets, activation, row_scale).to(a.dtype)


def moe_decode_gemv_ref(a, topk_idx, b, b_scale=None, shared_a=None, shared_b=None, shared_b_scale=None,
                        activation: str = "none"):
    """The MoE decode GEMV (reference): each assignment j of topk_idx [T, k] (row-major) through its expert,
    d[j] = act(a_j @ w[topk_idx[j]]^T), with a_j = a[j // k] when a is [T, K] (the tokens) or a[j] when a is
    [T*k, K]; an expert id outside [0, E) gives a zero row. The shared expert, when given: act(shared_a @ ws^T).
    w = b, or b * b_scale[..., None] for e4m3 b with per-channel scales.

    Args:
        a [T or T*k, K] float; topk_idx [T, k] int; b [E, N, K] float or e4m3, b_scale [E, N] (e4m3 only);
        shared_a [T, Ks], shared_b [Ns, Ks], shared_b_scale [Ns] (e4m3 only), or None; activation "none" / "relu2".
    Returns:
        (d [T*k, N], shared_d [T, Ns], [T, 0] without the shared expert) in a's dtype, computed in float32 (float64
        for float64 a) and rounded once.
    """
    check_float("a", a, "[T or T*k, K]", 2)
    check_int("topk_idx", topk_idx, "[T, k]", 2)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    ntokens, top_k = topk_idx.shape
    if a.shape[0] not in (ntokens, ntokens * top_k):
        raise ValueError(f"a must have T = {ntokens} rows (the tokens) or T*k = {ntokens * top_k} (one per "
                         f"assignment), got {tuple(a.shape)}")
    if b.dim() != 3 or b.shape[2] != a.shape[1]:
        raise ValueError(f"b must have shape [E, N, K] with K = {a.shape[1]}, got {tuple(b.shape)}")
    if (shared_a is None) != (shared_b is None):
        raise ValueError("shared_a and shared_b: pass both (the shared expert) or neither")
    cdtype = compute_dtype(a.dtype, torch.float32)

    def weights(w, scale, name):                                                 # [..., N, K] in cdtype
        if (w.dtype == torch.float8_e4m3fn) != (scale is not None):
            raise ValueError(f"{name}_scale must be given exactly when {name} is e4m3")
        return w.to(cdtype) * scale.to(cdtype)[..., None] if scale is not None else w.to(cdtype)

    def act(y):
        return (torch.relu(y).square() if activation == "relu2" else y).to(a.dtype)

    w = weights(b, b_scale, "b")                                                 # [E, N, K]
    idx = topk_idx.reshape(-1).long()                                            # [T*k]
    rows = a.to(cdtype)
    if a.shape[0] != idx.numel():
        rows = rows.repeat_interleave(top_k, 0)                                  # [T*k, K]
    d = torch.zeros(idx.numel(), b.shape[1], dtype=cdtype, device=a.device)
    for j in torch.nonzero((idx >= 0) & (idx < b.shape[0])).flatten().tolist():
        d[j] = w[idx[j]] @ rows[j]
    if shared_a is None:
        return act(d), a.new_zeros(ntokens, 0)
    if shared_a.shape[0] != ntokens or shared_b.dim() != 2 or shared_b.shape[1] != shared_a.shape[1]:
        raise ValueError(f"shared_a must be [T={ntokens}, Ks] and shared_b [Ns, Ks], got {tuple(shared_a.shape)} and "
                         f"{tuple(shared_b.shape)}")
    return act(d), act(shared_a.to(cdtype) @ weights(shared_b, shared_b_scale, "shared_b").T)


def moe_decode_down_ref(h, topk_idx, topk_weight, down, down_scale=None, hs=None, shared_down=None,
                        shared_down_scale=None):
    """One token's down projection and weighted sum (reference): moe_decode_gemv_ref's down rows, summed by
    moe_unpermute_ref (row j is slot j), plus the shared output, rounded where the kernels round. h [k, I],
    topk_idx [1, k], topk_weight [1, k], down [E, H, I] (+ down_scale for e4m3), hs [1, Is], shared_down [H, Is]
    (+ shared_down_scale) -> [1, H] in h's dtype; an expert id outside [0, E) adds nothing (its row is zero)."""
    y, ys = moe_decode_gemv_ref(h, topk_idx, down, down_scale, hs, shared_down, shared_down_scale)   # [k, H], [1, H]
    slots = torch.arange(y.shape[0], device=h.device)[None]                     # [1, k]
    routed = moe_unpermute_ref(y, slots, topk_weight)                             # [1, H] in h's dtype
    cdtype = compute_dtype(h.dtype, torch.float32)
    return (routed.to(cdtype) + ys.to(cdtype)).to(h.dtype)


def _check_fp8_weights(b_q, b_scale, k: int, k_name: str) -> None:
    """e4m3 weights b_q [E, N, K] with per-channel scales b_scale [E, N] (the FP8 and weights-only FP8 GEMMs)."""
    check_tensor_fp8("b_q", b_q, 3)
    check_float("b_scale", b_scale, "[E, N]", 2)
    if b_q.shape[2] != k:
        raise ValueError(f"b_q must have shape [E, N, K] with K = {k_name} = {k}, got {tuple(b_q.shape)}")
    if tuple(b_scale.shape) != tuple(b_q.shape[:2]):
        raise ValueError(f"b_scale must have shape [E, N] = {tuple(b_q.shape[:2])}, got {tuple(b_scale.shape)}")


def check_grouped_gemm_fp8_args(a_q, a_scale, b_q, b_scale, expert_offsets, activation, row_scale=None) -> None:
    """Shapes, dtypes and devices of grouped_gemm_fp8's arguments (no value checks)."""
    check_tensor_fp8("a_q", a_q, 2)
    check_float("a_scale", a_scale, "[M]", 1)
    _check_fp8_weights(b_q, b_scale, a_q.shape[1], "a_q.shape[1]")
    if a_scale.shape[0] != a_q.shape[0]:
        raise ValueError(f"a_scale must have shape [M] = ({a_q.shape[0]},), got {tuple(a_scale.shape)}")
    _check_offsets_and_activation(expert_offsets, "b_q", b_q.shape[0], activation)
    check_row_scale(row_scale, a_q.shape[0], activation)
    check_same_device(a_q=a_q, a_scale=a_scale, b_q=b_q, b_scale=b_scale, expert_offsets=expert_offsets,
                      row_scale=row_scale)


def check_grouped_gemm_w8_args(a, b_q, b_scale, expert_offsets, activation, row_scale=None) -> None:
    """Shapes, dtypes and devices of grouped_gemm_w8's arguments (no value checks)."""
    check_float("a", a, "[M, K]", 2)
    _check_fp8_weights(b_q, b_scale, a.shape[1], "a.shape[1]")
    _check_offsets_and_activation(expert_offsets, "b_q", b_q.shape[0], activation)
    check_row_scale(row_scale, a.shape[0], activation)
    check_same_device(a=a, b_q=b_q, b_scale=b_scale, expert_offsets=expert_offsets, row_scale=row_scale)


def check_tensor_fp8(name, t, rank):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float8_e4m3fn:
        raise TypeError(f"{name} must have dtype torch.float8_e4m3fn, got {t.dtype}")
    if t.dim() != rank:
        raise ValueError(f"{name} must be {rank}-D, got shape {tuple(t.shape)}")


def _fp8_mlp_rows(a, up_q, up_scale, down_q, down_scale, quantise_h: bool):
    """One expert's FP8 MLP, rounding where the kernels round: h in bf16 (re-quantised per row with quantise_h),
    y in bf16. a [n, H] fp32 (dequantised e4m3 rows, or the rows as they are); up_q [I, H], up_scale [I];
    down_q [H, I], down_scale [H] -> [n, H]."""
    h = torch.relu(a @ (up_q.float() * up_scale[:, None]).T).square().to(torch.bfloat16)     # [n, I]
    if quantise_h:
        h_q, h_scale = quantize_fp8_rowwise_ref(h)
        h = h_q.float() * h_scale[:, None]
    return (h.float() @ (down_q.float() * down_scale[:, None]).T).to(torch.bfloat16)


# Up to this many rows (T * top_k for the experts) the FP8 layers run weights-only: a GEMM of so few rows is a
# stream of its weights (the grouped GEMV), so quantising the activations saves no bytes and costs a launch and
# their e4m3 rounding. The GEMV's own bound (csrc/moe/moe_kernels.h, path_for).
WEIGHTS_ONLY_MAX_ROWS = 16


def weights_only_for(rows: int) -> bool:
    return rows <= WEIGHTS_ONLY_MAX_ROWS


def moe_experts_fp8_ref(x, topk_idx, topk_weight, up_q, up_scale, down_q, down_scale, shared_up_q=None,
                        shared_up_scale=None, shared_down_q=None, shared_down_scale=None, weights_only=None):
    """The FP8 expert pipeline of moe_experts_fp8, emulated in float32 (reference): tokens quantised per row to e4m3,
    weights given as e4m3 with per-output-channel scales, relu^2 output rounded to bf16 and re-quantised per row,
    expert outputs rounded to bf16, routed sum in float32 rounded to bf16, plus the shared expert (same pipeline).
    Weights-only (decode): the same with x and h as they are (x in its precision, h rounded to bf16), no
    activation quantisation.

    Args:
        x [T, H] (any float; quantised here).   topk_idx [T, k], topk_weight [T, k].
        up_q [E, I, H] e4m3, up_scale [E, I]; down_q [E, H, I] e4m3, down_scale [E, H];
        shared_up_q [Is, H], shared_up_scale [Is], shared_down_q [H, Is], shared_down_scale [H] (or all None).
        weights_only: None (default) for T * k <= WEIGHTS_ONLY_MAX_ROWS, or forced on / off.
    Returns:
        [T, H] bfloat16.
    """
    check_float("x", x, "[T, H]", 2)
    check_int("topk_idx", topk_idx, "[T, k]", 2)
    check_tensor_fp8("up_q", up_q, 3)
    check_tensor_fp8("down_q", down_q, 3)
    if weights_only is None:
        weights_only = weights_only_for(topk_idx.numel())
    if weights_only:
        a = x.float()                                                                # [T, H] as they are
    else:
        x_q, x_scale = quantize_fp8_rowwise_ref(x)
        a = x_q.float() * x_scale[:, None]                                           # [T, H] dequantised e4m3
    routed = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in torch.unique(topk_idx).tolist():
        tok, slot = torch.nonzero(topk_idx == e, as_tuple=True)
        y = _fp8_mlp_rows(a[tok], up_q[e], up_scale[e].float(), down_q[e], down_scale[e].float(), not weights_only)
        routed.index_add_(0, tok, topk_weight[tok, slot, None].float() * y.float())
    out = routed.to(torch.bfloat16)
    if shared_up_q is not None:
        out = out + _fp8_mlp_rows(a, shared_up_q, shared_up_scale.float(), shared_down_q, shared_down_scale.float(),
                                  not weights_only)
    return out
