"""Reference Mamba-2 SSD scan: the chunked algorithm (`ssd_scan_ref`) and the plain recurrence
(`ssd_recurrence_ref`), which must agree to rounding.

Per batch row b, head h (group g = h // (H // G)), with dt already biased / softplus-ed:
    S_t = exp(dt_t A_h) S_{t-1} + dt_t outer(x_t, B_t[g])      S: [P, N]
    y_t = S_t C_t[g] + D_h x_t
The chunked form splits the sequence into chunks of Q tokens and computes, per chunk,
  1. the intra-chunk output with the decay matrix L[i, j] = exp(sum_{j<k<=i} dt_k A) (i >= j),
  2. the state each chunk leaves behind when started from zero,
  3. the states entering each chunk, by passing states from chunk to chunk (a short loop over chunks),
  4. the contribution of the entering state to every token of the chunk.
With cu_seqlens every packed sequence is scanned on its own, so its chunks start at its first token and
the state resets exactly at the sequence start, wherever that falls relative to a global chunk grid.
"""
import math

import torch
import torch.nn.functional as F

from ._checks import (check_cu_seqlens, check_cu_seqlens_shape, check_divisible, check_float, check_optional_float,
                      check_positive_int, check_same_device, check_shape, compute_dtype)


def check_ssd_args(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, values: bool = True) -> list[int] | None:
    """Validates the SSD arguments' shapes, dtypes and devices; with `values` also cu_seqlens' offsets (a host
    sync, which kernel paths skip) and returns them as ints (None without cu_seqlens or values)."""
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
    offsets = None
    if cu_seqlens is None:
        check_optional_float("initial_states", initial_states, (bsz, nheads, headdim, dstate), "[B, H, P, N]")
    else:
        nseq = check_cu_seqlens_shape(cu_seqlens, bsz)
        if values:
            offsets = check_cu_seqlens(cu_seqlens, seqlen, bsz)
        check_optional_float("initial_states", initial_states, (nseq, nheads, headdim, dstate),
                             "[S, H, P, N] (one per sequence of cu_seqlens)")
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, initial_states=initial_states,
                      cu_seqlens=cu_seqlens)
    return offsets


def _prepare(x, dt, A, B, C, dt_bias, dt_softplus):
    """Casts to the compute dtype, applies dt_bias / softplus, and gives B and C one row per head."""
    cdtype = compute_dtype(x.dtype)
    heads_per_group = x.shape[2] // B.shape[2]
    dt_c = dt.to(cdtype)                                           # [B, L, H]
    if dt_bias is not None:
        dt_c = dt_c + dt_bias.to(cdtype)
    if dt_softplus:
        dt_c = F.softplus(dt_c)  # identity above 20, as the kernels do
    B_h = B.to(cdtype).repeat_interleave(heads_per_group, dim=2)  # [B, L, H, N]: head h reads group h // (H/G)
    C_h = C.to(cdtype).repeat_interleave(heads_per_group, dim=2)  # [B, L, H, N]
    return x.to(cdtype), dt_c, A.to(cdtype), B_h, C_h


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """a [..., Q] -> [..., Q, Q] with out[..., i, j] = sum_{j<k<=i} a_k for i >= j and -inf above the diagonal.
    Summing the masked terms (rather than subtracting two cumulative sums) keeps exp(out) exact on the diagonal
    and free of cancellation."""
    q = a.shape[-1]
    a_kj = a[..., :, None].expand(*a.shape, q)                                            # [..., k, j] = a_k
    k_after_j = torch.tril(torch.ones(q, q, dtype=torch.bool, device=a.device), diagonal=-1)
    sums = torch.cumsum(a_kj.masked_fill(~k_after_j, 0.0), dim=-2)                       # [..., i, j]
    causal = torch.tril(torch.ones(q, q, dtype=torch.bool, device=a.device))
    return sums.masked_fill(~causal, -math.inf)


def _ssd_chunked(x, dt, A, B, C, chunk_size: int, state0):
    """Chunked SSD over whole rows, everything in the compute dtype, D not applied.
    x [b, l, H, P], dt [b, l, H], A [H], B/C [b, l, H, N], state0 [b, H, P, N]
    -> (y [b, l, H, P], final [b, H, P, N])."""
    bsz, seqlen, nheads, headdim = x.shape
    if seqlen == 0:
        return x.new_zeros(x.shape), state0
    q = chunk_size
    nchunks = -(-seqlen // q)
    pad = nchunks * q - seqlen
    if pad:
        # Padding with dt = 0 gives decay 1 and no input, so the final state is the state after token l-1.
        x, dt, B, C = (torch.cat([t, t.new_zeros(bsz, pad, *t.shape[2:])], dim=1) for t in (x, dt, B, C))
    x = x.reshape(bsz, nchunks, q, nheads, headdim)         # [b, c, Q, H, P]
    dt = dt.reshape(bsz, nchunks, q, nheads)                 # [b, c, Q, H]
    B = B.reshape(bsz, nchunks, q, nheads, B.shape[-1])      # [b, c, Q, H, N]
    C = C.reshape(bsz, nchunks, q, nheads, C.shape[-1])      # [b, c, Q, H, N]

    dA = (dt * A).permute(0, 1, 3, 2)                        # [b, c, H, Q]  log decay of each token
    seg = _segsum(dA)                                        # [b, c, H, Q, Q]
    dA_cum = torch.cumsum(dA, dim=-1)                        # [b, c, H, Q]  log decay chunk start -> token i (incl.)
    dt_hq = dt.permute(0, 1, 3, 2)                           # [b, c, H, Q]

    # 1. intra-chunk: y_i = sum_{j<=i} (C_i . B_j) L[i, j] dt_j x_j
    CB = torch.einsum("bcihn,bcjhn->bchij", C, B)            # [b, c, H, Q, Q]
    weights = CB * torch.exp(seg) * dt_hq[:, :, :, None, :]  # exp(-inf) = 0 above the diagonal
    y_diag = torch.einsum("bchij,bcjhp->bcihp", weights, x)  # [b, c, Q, H, P]

    # 2. state left by each chunk started from zero: sum_j exp(sum_{k>j} dA_k) dt_j outer(x_j, B_j)
    to_end = (torch.exp(seg[..., -1, :]) * dt_hq).permute(0, 1, 3, 2)            # [b, c, Q, H]
    chunk_states = torch.einsum("bcjhp,bcjhn->bchpn", x * to_end[..., None], B)   # [b, c, H, P, N]

    # 3. state passing between chunks (sequential, like the kernel's state-passing stage)
    chunk_decay = torch.exp(dA_cum[..., -1])                 # [b, c, H]
    state = state0                                           # [b, H, P, N]
    states_in = []
    for c in range(nchunks):
        states_in.append(state)
        state = chunk_decay[:, c, :, None, None] * state + chunk_states[:, c]
    states_in = torch.stack(states_in, dim=1)                # [b, c, H, P, N] state entering chunk c

    # 4. entering state seen by token i: exp(dA_cum_i) * (S_in C_i)
    y_off = torch.einsum("bcihn,bchpn->bcihp", C, states_in) * torch.exp(dA_cum).permute(0, 1, 3, 2)[..., None]
    y = (y_diag + y_off).reshape(bsz, nchunks * q, nheads, headdim)[:, :seqlen]
    return y, state


def ssd_chunk_table_ref(cu_seqlens: torch.Tensor, chunk: int, n_table: int):
    """Chunks of packed sequences for the kernels, each starting at its sequence's first token (device-side, no
    sync); n_table >= the chunks of all sequences, the spare slots empty.
    -> (table [5, n_table] int32: sequence, start, length, first, last; last_chunk [S] int32 (-1: empty sequence);
    first_chunk [S] int32 (the global chunk of each sequence's start; meaningless for empty sequences))."""
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
    return table, last_chunk, (ends - n_chunks).to(torch.int32)


def ssd_scan_ref(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus: bool = False, chunk_size: int = 128,
                 initial_states=None, cu_seqlens=None, return_final_states: bool = False):
    """Chunked Mamba-2 SSD scan (reference).

    Args:
        x [B, L, H, P], dt [B, L, H], A [H] (negative decay rate, -exp(A_log)), B [B, L, G, N], C [B, L, G, N]:
            any float dtype; head h uses group h // (H // G).
        D [H] | None: skip term D_h x_t.   dt_bias [H] | None: added to dt before the optional softplus.
        dt_softplus: dt = softplus(dt + dt_bias) if True else dt + dt_bias.
        chunk_size: tokens per chunk (any positive int; L need not be a multiple).
        initial_states [B, H, P, N] (with cu_seqlens [S, H, P, N]) | None: state before the first token (zero if None).
        cu_seqlens [S+1] int32/int64 | None: packed sequences along L (B must be 1); the state resets at each start.
        return_final_states: also return the state after the last token of each row / sequence.
    Returns:
        y [B, L, H, P] in x's dtype, or (y, final_states [B, H, P, N] (with cu_seqlens [S, H, P, N])) with
        final_states in the compute dtype (float32, or float64 for float64 x).
    """
    offsets = check_ssd_args(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens)
    check_positive_int("chunk_size", chunk_size)
    x_c, dt_c, A_c, B_h, C_h = _prepare(x, dt, A, B, C, dt_bias, dt_softplus)
    bsz, seqlen, nheads, headdim = x.shape
    dstate = B.shape[-1]

    def start_state(first: int, count: int):
        """Rows [first, first + count) of initial_states in the compute dtype, or zeros."""
        if initial_states is None:
            return x_c.new_zeros(count, nheads, headdim, dstate)
        return initial_states[first:first + count].to(x_c.dtype)

    if offsets is None:
        y, final = _ssd_chunked(x_c, dt_c, A_c, B_h, C_h, chunk_size, start_state(0, bsz))
    else:
        ys, finals = [], []
        for s, (start, end) in enumerate(zip(offsets[:-1], offsets[1:])):
            part = slice(start, end)
            y_s, f_s = _ssd_chunked(x_c[:, part], dt_c[:, part], A_c, B_h[:, part], C_h[:, part], chunk_size,
                                    start_state(s, 1))
            ys.append(y_s)
            finals.append(f_s)
        y, final = torch.cat(ys, dim=1), torch.cat(finals, dim=0)
    if D is not None:
        y = y + D.to(x_c.dtype)[:, None] * x_c
    y = y.to(x.dtype)
    return (y, final) if return_final_states else y


def ssd_recurrence_ref(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus: bool = False, initial_states=None,
                       cu_seqlens=None, return_final_states: bool = False):
    """The SSD scan as the plain token-by-token recurrence; same arguments and outputs as `ssd_scan_ref`
    (without chunk_size). Slow on purpose: it is the definition the chunked form is checked against.

    Args / Returns: see ssd_scan_ref (x [B, L, H, P] -> y [B, L, H, P] (, final_states [B or S, H, P, N])).
    """
    offsets = check_ssd_args(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens)
    x_c, dt_c, A_c, B_h, C_h = _prepare(x, dt, A, B, C, dt_bias, dt_softplus)
    bsz, seqlen, nheads, headdim = x.shape
    dstate = B.shape[-1]
    # (row, first token, end token) of every independent sequence; its index is its initial/final-state row
    if offsets is None:
        segments = [(b, 0, seqlen) for b in range(bsz)]
    else:
        segments = [(0, start, end) for start, end in zip(offsets[:-1], offsets[1:])]
    y = x_c.new_zeros(x_c.shape)                            # [B, L, H, P]
    finals = []
    for s, (row, start, end) in enumerate(segments):
        if initial_states is None:
            state = x_c.new_zeros(nheads, headdim, dstate)  # [H, P, N]
        else:
            state = initial_states[s].to(x_c.dtype)
        for t in range(start, end):
            decay = torch.exp(dt_c[row, t] * A_c)                           # [H]
            dBx = (dt_c[row, t, :, None] * x_c[row, t])[:, :, None] * B_h[row, t][:, None, :]  # [H, P, N]
            state = decay[:, None, None] * state + dBx
            y[row, t] = torch.einsum("hpn,hn->hp", state, C_h[row, t])
        finals.append(state)
    if D is not None:
        y = y + D.to(x_c.dtype)[:, None] * x_c
    y = y.to(x.dtype)
    if not return_final_states:
        return y
    return y, (torch.stack(finals) if finals else x_c.new_zeros(0, nheads, headdim, dstate))
