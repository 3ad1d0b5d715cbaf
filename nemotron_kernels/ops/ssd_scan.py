"""Public op `ssd_scan`: the chunked Mamba-2 SSD scan (initial / final states, packed sequences).

Forward: three Triton stages (nemotron_kernels/triton/ssd_scan_*.py) on CUDA tensors:
  1. chunk_state    chunk states carried through segments of consecutive chunks (one tl.dot per chunk),
  2. state_passing  states between segments + final states (only with > 1 segment),
  3. chunk_scan     outputs of every chunk (CB once per group, tl.dot for the intra-chunk and state terms).
The reference runs on CPU, for float64, or without Triton — unless TRITON_INTERPRET=1, where CPU fp16/fp32
tensors run the kernels in Triton's interpreter (bf16 goes to the reference there: the interpreter mis-computes
bf16 tl.dot). Backward: autograd of the reference, recomputed in float32 from the saved inputs (no Triton
backward yet). Layers: custom op `nemotron_kernels::ssd_scan_fwd` -> `SSDScanFn` -> `ssd_scan()`.
The kernel path never synchronises: cu_seqlens is checked for shape and dtype, not values."""
from typing import Optional

import torch

from ..reference._checks import (
    check_divisible,
    check_float,
    check_int,
    check_optional_float,
    check_positive_int,
    check_same_device,
    check_shape,
)
from ..reference.ssd_scan import ssd_scan_ref
from ..triton import mamba_common

KERNEL_CHUNKS = (16, 32, 64, 128, 256)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _chunk_table(cu_seqlens: torch.Tensor, chunk: int, n_table: int):
    """Chunks of packed sequences, each starting at its sequence's first token (device-side, no sync).
    -> (table [5, n_table] int32: sequence, start, length, first, last; last_chunk [S] int32 (-1: empty sequence);
    seq_len [S] int64)."""
    cu = cu_seqlens.to(torch.int64)
    nseq = cu.numel() - 1
    seq_len = cu[1:] - cu[:-1]                                          # [S]
    n_chunks = (seq_len + chunk - 1) // chunk
    ends = torch.cumsum(n_chunks, 0)                                   # chunk index one past each sequence's last
    slot = torch.arange(n_table, device=cu.device)
    seq = torch.searchsorted(ends, slot, right=True).clamp_max(nseq - 1)
    k = slot - (ends - n_chunks)[seq]
    valid = slot < ends[-1]
    start = torch.where(valid, cu[seq] + k * chunk, 0)
    length = torch.where(valid, torch.clamp(cu[seq + 1] - start, max=chunk), 0)
    first = valid & (k == 0)
    last = valid & (start + length == cu[seq + 1])
    table = torch.stack([seq, start, length, first.long(), last.long()]).to(torch.int32).contiguous()
    last_chunk = torch.where(n_chunks > 0, ends - 1, -1).to(torch.int32)
    return table, last_chunk, seq_len


@torch.library.custom_op("nemotron_kernels::ssd_scan_fwd", mutates_args=())
def ssd_scan_fwd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor], dt_softplus: bool, chunk_size: int,
                 initial_states: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
                 return_final_states: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (y [B, L, H, P] in x's dtype, final_states [B or S, H, P, N] fp32 (empty [0] unless requested)) (Triton)."""
    state_k = mamba_common.kernel_module("ssd_scan_chunk_state")
    pass_k = mamba_common.kernel_module("ssd_scan_state_passing")
    scan_k = mamba_common.kernel_module("ssd_scan_chunk_scan")
    bsz, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    dev = x.device
    nstates = bsz if cu_seqlens is None else cu_seqlens.shape[0] - 1
    y = torch.empty(x.shape, dtype=x.dtype, device=dev)
    final = torch.empty(nstates, nheads, headdim, dstate, dtype=torch.float32, device=dev) \
        if return_final_states else None
    if seqlen == 0 or y.numel() == 0:
        if final is not None:
            final.copy_(initial_states if initial_states is not None else torch.zeros_like(final))
        return y, final if final is not None else y.new_empty(0, dtype=torch.float32)

    def unit_last(t):
        return t if t is None or t.stride(-1) == 1 else t.contiguous()

    x, dt, B, C, initial_states = (unit_last(t) for t in (x, dt, B, C, initial_states))
    A = A.to(torch.float32).contiguous()
    D = None if D is None else D.to(torch.float32).contiguous()
    dt_bias = None if dt_bias is None else dt_bias.to(torch.float32).contiguous()
    chunk = chunk_size
    sm = mamba_common.sm_count(dev)
    st_cfg = state_k.chunk_state_config(headdim, dstate, chunk)
    p_blocks = _cdiv(headdim, st_cfg["BLOCK_P"])
    table = last_chunk = seq_len = None
    if cu_seqlens is None:
        chunks_per_row = _cdiv(seqlen, chunk)
        n_chunks = n_table = bsz * chunks_per_row
    else:
        chunks_per_row = 0
        n_chunks = n_table = (seqlen + nstates * (chunk - 1)) // chunk     # >= the chunks of all sequences
        table, last_chunk, seq_len = _chunk_table(cu_seqlens, chunk, n_table)
    n_seg, seg_len = state_k.segments(n_chunks, nheads, p_blocks, sm)
    geometry = dict(n_chunks=n_chunks, n_table=n_table, chunks_per_row=chunks_per_row, n_seg=n_seg, seg_len=seg_len,
                    Q=chunk)
    precision = mamba_common.dot_precision(x.dtype)
    s_in_dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
    s_in = torch.empty(n_chunks, nheads, headdim, dstate, dtype=s_in_dtype, device=dev)
    carry_decay = torch.empty(n_chunks, nheads, dtype=torch.float32, device=dev)
    seg_state = torch.empty(n_seg, nheads, headdim, dstate, dtype=torch.float32, device=dev)
    seg_decay = torch.empty(n_seg, nheads, dtype=torch.float32, device=dev)
    final_decay = torch.empty(nstates, nheads, dtype=torch.float32, device=dev) if final is not None else None
    state_k.chunk_state_launch(x, dt, A, B, dt_bias, initial_states, table, s_in, carry_decay, seg_state, seg_decay,
                               final, final_decay, geometry, dt_softplus, st_cfg, precision)
    carry_lp = None
    if n_seg > 1:
        carry = torch.empty(n_seg, nheads, headdim, dstate, dtype=torch.float32, device=dev)
        carry_lp = carry if s_in_dtype == torch.float32 else torch.empty(carry.shape, dtype=s_in_dtype, device=dev)
        pass_k.state_passing_launch(seg_state, seg_decay, carry, carry_lp, final, final_decay, last_chunk, geometry)
    scan_cfg = scan_k.chunk_scan_config(n_chunks, ngroups, nheads // ngroups, headdim, dstate, chunk,
                                        sm if dev.type == "cuda" else 0)
    scan_k.chunk_scan_launch(x, dt, A, B, C, D, dt_bias, table, s_in, carry_decay, carry_lp, y, geometry, dt_softplus,
                             scan_cfg, precision, autotune=dev.type == "cuda")
    if final is None:
        return y, y.new_empty(0, dtype=torch.float32)
    if cu_seqlens is not None:      # empty packed sequences have no chunk: their final state is the initial one
        start = initial_states.to(torch.float32) if initial_states is not None else torch.zeros_like(final)
        final = torch.where((seq_len == 0)[:, None, None, None], start, final)
    return y, final


@ssd_scan_fwd.register_fake
def _(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size, initial_states, cu_seqlens, return_final_states):
    nstates = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    final = x.new_empty(nstates, x.shape[2], x.shape[3], B.shape[3], dtype=torch.float32) if return_final_states \
        else x.new_empty(0, dtype=torch.float32)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), final


class SSDScanFn(torch.autograd.Function):
    """Forward: the Triton kernels. Backward: autograd of the reference, recomputed in float32."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, dt_softplus: bool, chunk_size: int,
                return_final_states: bool):
        ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens)
        ctx.dt_softplus, ctx.chunk_size, ctx.return_final_states = dt_softplus, chunk_size, return_final_states
        y, final = ssd_scan_fwd(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size, initial_states, cu_seqlens,
                                return_final_states)
        return (y, final) if return_final_states else y

    @staticmethod
    def backward(ctx, dy, *dfinal):
        saved = ctx.saved_tensors          # x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens
        cu_seqlens = saved[8]
        leaves = [t.detach().float().requires_grad_(t.requires_grad) if t is not None and t.is_floating_point()
                  else t for t in saved]
        with torch.enable_grad():
            out = ssd_scan_ref(*leaves[:7], dt_softplus=ctx.dt_softplus, chunk_size=ctx.chunk_size,
                               initial_states=leaves[7], cu_seqlens=cu_seqlens,
                               return_final_states=ctx.return_final_states)
            outs, grads_out = ([out[0], out[1]], [dy, dfinal[0]]) if ctx.return_final_states else ([out], [dy])
            pairs = [(o, g) for o, g in zip(outs, grads_out) if g is not None]
            wanted = [i for i, t in enumerate(leaves[:8]) if isinstance(t, torch.Tensor) and t.requires_grad]
            grads = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in wanted],
                                        [g.float() for _, g in pairs], allow_unused=True)
        result = [None] * 12
        for i, grad in zip(wanted, grads):
            result[i] = None if grad is None else grad.to(saved[i].dtype)
        return tuple(result)


def ssd_scan(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus: bool = False, chunk_size: int = 128,
             initial_states=None, cu_seqlens=None, return_final_states: bool = False):
    """Chunked Mamba-2 SSD scan.

    Args:
        x [B, L, H, P], dt [B, L, H], A [H] (negative decay rate, -exp(A_log)), B [B, L, G, N], C [B, L, G, N]:
            head h uses group h // (H // G); unit stride on the last dim preferred (any other strides).
        D [H] | None.   dt_bias [H] | None.   dt_softplus: dt = softplus(dt + dt_bias) if True else dt + dt_bias.
        chunk_size: tokens per chunk; the kernels take 16, 32, 64, 128 or 256 (others run the reference).
        initial_states [B, H, P, N] (with cu_seqlens [S, H, P, N]) | None: state before the first token.
        cu_seqlens [S+1] int32/int64 | None: packed sequences along L (B must be 1); the state resets at each start.
        return_final_states: also return the state after the last token of each row / sequence.
    Returns:
        y [B, L, H, P] in x's dtype, or (y, final_states [B or S, H, P, N] float32). Differentiable (backward:
        autograd of the float32 reference).
    """
    kernel_dtype_ok = mamba_common.use_triton(x, dt, A, B, C, D, dt_bias, initial_states, dot_kernel=True)
    if not kernel_dtype_ok or chunk_size not in KERNEL_CHUNKS or not isinstance(x, torch.Tensor) or x.dim() != 4 \
            or not isinstance(B, torch.Tensor) or B.dim() != 4 or B.shape[3] > 256 or x.shape[3] > 256:
        return ssd_scan_ref(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size, initial_states, cu_seqlens,
                            return_final_states)
    check_float("x", x, "[B, L, H, P]", 4)
    bsz, seqlen, nheads, headdim = x.shape
    check_float("dt", dt, "[B, L, H]", 3)
    check_shape("dt", dt, (bsz, seqlen, nheads), "[B, L, H]")
    check_float("A", A, "[H]", 1)
    check_shape("A", A, (nheads,), "[H]")
    check_float("B", B, "[B, L, G, N]", 4)
    ngroups, dstate = B.shape[2], B.shape[3]
    check_shape("B", B, (bsz, seqlen, ngroups, dstate), "[B, L, G, N]")
    check_float("C", C, "[B, L, G, N]", 4)
    check_shape("C", C, (bsz, seqlen, ngroups, dstate), "[B, L, G, N]")
    check_divisible("H (heads of x)", nheads, "G (groups of B)", ngroups)
    check_optional_float("D", D, (nheads,), "[H]")
    check_optional_float("dt_bias", dt_bias, (nheads,), "[H]")
    check_positive_int("chunk_size", chunk_size)
    if cu_seqlens is not None:
        check_int("cu_seqlens", cu_seqlens, "[S+1]", 1)
        if cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must hold at least 2 offsets [S+1], got {cu_seqlens.numel()}")
        if bsz != 1:
            raise ValueError(f"with cu_seqlens, the batch dimension must be 1 (sequences are packed along it), "
                             f"got {bsz}")
        cu_seqlens = cu_seqlens.contiguous()
        check_optional_float("initial_states", initial_states, (cu_seqlens.numel() - 1, nheads, headdim, dstate),
                             "[S, H, P, N] (one per sequence of cu_seqlens)")
    else:
        check_optional_float("initial_states", initial_states, (bsz, nheads, headdim, dstate), "[B, H, P, N]")
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, initial_states=initial_states,
                      cu_seqlens=cu_seqlens)
    return SSDScanFn.apply(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, bool(dt_softplus), chunk_size,
                           return_final_states)


def backend_report(device_type: str) -> str:
    return mamba_common.backend_report(device_type, "ssd_scan forward (backward: autograd of the reference)",
                                       dot_kernel=True)
