"""Public op `ssd_scan`: the chunked Mamba-2 SSD scan (initial / final states, packed sequences), fwd + bwd.

Forward: four Triton stages (nemotron_kernels/triton/ssd_scan_*.py) on CUDA tensors:
  0. chunk_cumsum   each chunk's dt (+ bias, softplus) and cumulative dt A, head-major, for stages 1 and 3,
  1. chunk_state    chunk states carried through segments of consecutive chunks (one tl.dot per chunk),
  2. state_passing  states between segments (only with > 1 segment), then final_states: the carries into the
                    final states, and empty packed sequences' final states (their initial ones),
  3. chunk_scan     outputs of every chunk (CB once per group, tl.dot for the intra-chunk and state terms).
On Hopper with Triton 3.6, stages 1 and 3 run warp-specialised Gluon kernels (triton/ssd_scan_chunk_*_gluon.py)
where gluon_eligible holds (bf16, P 64, N 128; batched with L a multiple of 128, or packed; NK_GLUON=0 turns
them off), and so do the backward's dx kernel (triton/ssd_scan_bwd_dx_gluon.py; batched or packed; also D,
dt_bias and dt softplus) and its dB / dC kernel (triton/ssd_scan_bwd_dbc_gluon.py: both in one launch, no pw
scratch; batched, from GLUON_DBC_MIN_WAVES waves of CTAs up).
Backward (Triton, deterministic: no atomics, every sum in a fixed order): the forward's chunk states, kept by the
autograd Function (stages 0-2 recompute them where absent), then
  4. bwd_chunk_state  state gradients dL/dS_out carried backwards through each segment (+ the initial states'),
  2. state_passing    the same kernel on reversed segments: the gradient entering each segment from later ones,
  5. bwd_chunk_scan   dC (+ the intra-chunk parts of dL/d(dt A)), then dx, ddt and per-chunk dA / dD sums, then
                      dB (dB / dC: the heads of a group summed in registers); dA, dD, ddt_bias are summed over
                      chunks / tokens in torch (fp64).
The reference runs on CPU, for float64, or without Triton — unless TRITON_INTERPRET=1, where CPU fp16/fp32
tensors run the kernels in Triton's interpreter (bf16 goes to the reference there: the interpreter mis-computes
bf16 tl.dot); where the forward runs the reference, the backward is the reference's autograd.
Layers: custom ops `nemotron_kernels::ssd_scan_fwd` / `ssd_scan_bwd` -> `SSDScanFn` -> `ssd_scan()`.
The kernel path never synchronises: cu_seqlens is checked for shape and dtype, not values."""
import functools
from typing import Optional

import torch

from ..reference._checks import check_positive_int
from ..reference.ssd_scan import check_ssd_args, ssd_chunk_table_ref, ssd_scan_ref
from ..triton import mamba_common
from ..triton.common import cdiv, gluon_platform
from ._kernel_op import kernel_op
from .._tensor_cache import derived

KERNEL_CHUNKS = (16, 32, 64, 128, 256)
# the Gluon dB / dC (one CTA per chunk and group, one CTA an SM) from one wave of CTAs up. H200 (session 27,
# scripts/probe_ssd_bwd_dbc_gluon.py --lengths, us against Triton's two launches): 64 CTAs (B1 L1K) 109 vs 83,
# 128 (L2K) 139 vs 136, 256 (L4K) 131 vs 161, 512 (L8K) 180 vs 293, 2,048 (L32K) 626 vs 1,051
GLUON_DBC_MIN_WAVES = 1


def _chunk_table(cu_seqlens: torch.Tensor, chunk: int, n_table: int):
    """Chunks of packed sequences, each starting at its sequence's first token (device-side, no sync): on the GPU
    one Triton launch (inside a CUDA-graph capture it runs on every replay, where the reference's ~20 torch ops
    would), on the CPU the reference. -> (table [5, n_table] int32: sequence, start, length, first, last; last_chunk
    [S] int32 (-1: empty sequence); first_chunk [S] int32)."""
    if cu_seqlens.is_cuda:
        return mamba_common.kernel_module("ssd_scan_chunk_cumsum").chunk_table_launch(cu_seqlens, chunk, n_table)
    return ssd_chunk_table_ref(cu_seqlens, chunk, n_table)


def _unit_last(t):
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def kernel_configs(nheads: int, headdim: int, ngroups: int, dstate: int, chunk: int, n_chunks: int,
                   sm_count: int) -> dict:
    """Each kernel's tile by name, the kernel modules' defaults (sm_count 0: the interpreter's): chunk_state,
    bwd_chunk_state (chunk_state_config, backward), chunk_scan (chunk_scan_config), dx / da / dc / db
    (bwd_config). scripts/sweep_ssd.py swaps this function to time other tiles through the whole op."""
    state_k = mamba_common.kernel_module("ssd_scan_chunk_state")
    scan_k = mamba_common.kernel_module("ssd_scan_chunk_scan")
    bwd_scan_k = mamba_common.kernel_module("ssd_scan_bwd_chunk_scan")
    shape = (n_chunks, ngroups, nheads // ngroups, headdim, dstate, chunk, sm_count)
    return dict(chunk_state=state_k.chunk_state_config(headdim, dstate, chunk),
                bwd_chunk_state=state_k.chunk_state_config(headdim, dstate, chunk, backward=True),
                chunk_scan=scan_k.chunk_scan_config(*shape), **bwd_scan_k.bwd_config(*shape))


def _geometry(x, B, chunk: int, packed: bool, nstates: int) -> tuple[dict, dict]:
    """(geometry, tiles) from shapes alone (no launch: the fake ops size their outputs with it): chunk slots, the
    segments of stage 1, the length of stage 0's dtcs rows (ssd_scan_common._dtcs_span: the tokens batched, the
    slots x chunk packed), each kernel's tile. Cached per shape (and kernel_configs, which the sweep swaps): ~40 us
    of host time per call on the H200's host; the dicts are shared, read-only."""
    dims = (*x.shape, B.shape[2], B.shape[3], nstates)
    fn = _geometry_of if all(type(d) is int for d in dims) else _geometry_of.__wrapped__   # SymInts: no hash
    return fn(kernel_configs, tuple(x.shape), B.shape[2], B.shape[3], chunk, packed, nstates, x.device,
              mamba_common.interpreting())


@functools.lru_cache(maxsize=256)
def _geometry_of(configs, shape: tuple, ngroups: int, dstate: int, chunk: int, packed: bool, nstates: int,
                 device: torch.device, interpreted: bool) -> tuple[dict, dict]:
    state_k = mamba_common.kernel_module("ssd_scan_chunk_state")
    bsz, seqlen, nheads, headdim = shape
    if packed:
        chunks_per_row = 0
        n_chunks = n_table = (seqlen + nstates * (chunk - 1)) // chunk     # >= the chunks of all sequences
    else:
        chunks_per_row = cdiv(seqlen, chunk)
        n_chunks = n_table = bsz * chunks_per_row
    sm = mamba_common.sm_count(device)
    cfg = configs(nheads, headdim, ngroups, dstate, chunk, n_chunks, sm if device.type == "cuda" else 0)
    st_cfg = cfg["chunk_state"]
    n_seg, seg_len = state_k.segments(n_chunks, nheads, cdiv(headdim, st_cfg["BLOCK_P"]),
                                      sm * st_cfg["programs_per_sm"])
    return dict(n_chunks=n_chunks, n_table=n_table, chunks_per_row=chunks_per_row, n_seg=n_seg, seg_len=seg_len,
                Q=chunk, dtcs_len=n_table * chunk if packed else seqlen), cfg


def _state_dtype(x) -> torch.dtype:
    return torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32


def _tma_rows(t) -> bool:
    """Whether t [B, L, K, D] reads as one 2-D TMA view [B*L, K*D] (the Gluon kernels' descriptors): unit last
    stride, its K rows of D packed, rows evenly spaced over the batch, a 16-byte aligned base and row stride (the
    model's x, B, C, views of one conv output row, qualify)."""
    bsz, seqlen, k, d = t.shape
    s_b, s_l, s_k, s_d = t.stride()
    return s_d == 1 and (s_k == d or k == 1) and (s_b == seqlen * s_l or bsz == 1) \
        and (s_l * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0


def gluon_eligible(stage: str, x, B, C=None, chunk: int = 128, packed: bool = False, initial_states=None,
                   dy=None, D=None, dt_bias=None, dt_softplus: bool = False) -> tuple[bool, str]:
    """(whether ssd_scan's `stage`, "chunk_state", "chunk_scan" or the backward's "dx" or "dbc" (dB and dC), runs
    its Hopper Gluon kernel (triton/ssd_scan_<stage>_gluon.py, ssd_scan_bwd_{dx,dbc}_gluon.py) for this call, why
    (not)). Exactly the kernels' scope; the rest runs the Triton kernels: gluon_platform (triton/common.py), chunk
    128, tokens, batched with L a multiple of 128 or packed (cu_seqlens given: any lengths, the chunk table's slots;
    not dbc), P = 64, N = 128 (any H, G), bf16 x, B (and C, and dy for dx and dbc: the chunk states are then bf16
    too; dbc takes the op's B, C, as it writes dB, dC in their dtype), _tma_rows views; chunk_state with or without
    initial states (any float dtype, [P, N] rows contiguous) and final states, chunk_scan with or without D; dx with
    D, dt_bias and dt_softplus (Nemotron's; dt any strides and dtype); dx and dbc with or without initial states
    and final-state gradients (they change only the values of the states they read) and with or without the
    carries between segments. Beyond the scope, dbc needs GLUON_DBC_MIN_WAVES waves of CTAs (n_chunks G, one an SM):
    below, Triton's two launches were faster."""
    ok, why = gluon_platform(x.device)
    if not ok:
        return ok, why
    tensors = {"chunk_state": (x, B), "chunk_scan": (x, B, C), "dx": (x, B, C, dy), "dbc": (x, B, C, dy)}[stage]
    if stage == "dbc" and packed:
        return False, "dbc: batched only (no cu_seqlens)"
    if chunk != 128 or x.numel() == 0 or (not packed and x.shape[1] % 128):
        return False, "needs chunk 128 and tokens, batched L a positive multiple of 128"
    if x.shape[3] != 64 or B.shape[3] != 128:
        return False, "needs P = 64 and N = 128"
    if any(t.dtype != torch.bfloat16 for t in tensors):
        return False, "needs bf16 x, B, C (dx, dbc: dy)"
    if stage == "chunk_state" and initial_states is not None and initial_states.stride()[2:] != (B.shape[3], 1):
        return False, "initial states' [P, N] rows not contiguous (chunk_state)"
    if stage == "dx" and (D is None or dt_bias is None or not dt_softplus):
        return False, "dx needs D, dt_bias and dt_softplus"
    if not all(_tma_rows(t) for t in tensors):
        return False, "strides a 2-D TMA view cannot take"
    if stage == "dbc":
        ctas, sms = x.shape[0] * (x.shape[1] // 128) * B.shape[2], mamba_common.sm_count(x.device)
        if ctas < GLUON_DBC_MIN_WAVES * sms:
            return False, f"dbc: {ctas} CTAs, under {GLUON_DBC_MIN_WAVES} wave(s) of {sms} SMs (the size rule)"
    return True, why


def _plan(x, B, chunk: int, cu_seqlens, nstates: int) -> dict:
    """Chunk geometry shared by the forward and the backward: chunk table (packed), segments of stage 1, tiles."""
    geometry, cfg = _geometry(x, B, chunk, cu_seqlens is not None, nstates)
    table = last_chunk = first_chunk = None
    if cu_seqlens is not None:
        n_table = geometry["n_table"]
        table, last_chunk, first_chunk = derived(cu_seqlens, "chunk_table", (chunk, n_table),
                                                 lambda: _chunk_table(cu_seqlens, chunk, n_table))
    return dict(geometry=geometry, table=table, last_chunk=last_chunk, first_chunk=first_chunk, cfg=cfg,
                precision=mamba_common.dot_precision(x.dtype), state_dtype=_state_dtype(x))


def _saved_shapes(x, B, geometry: dict) -> list[tuple[tuple, torch.dtype]]:
    """(shape, dtype) of the forward's chunk states that the backward reuses (ssd_scan_fwd's last four outputs):
    s_in, carry_decay, carry_lp ([0] with one segment), dtcs."""
    bsz, _, nheads, headdim = x.shape
    n_chunks, n_seg, state = geometry["n_chunks"], geometry["n_seg"], (nheads, headdim, B.shape[3])
    return [((n_chunks, *state), _state_dtype(x)), ((n_chunks, nheads), torch.float32),
            ((n_seg, *state) if n_seg > 1 else (0,), _state_dtype(x)),
            ((3, bsz, nheads, geometry["dtcs_len"]), torch.float32)]


def _keeps_states(x, B) -> bool:
    """Whether ssd_scan_fwd returns its chunk states for the backward: there are tokens, and B is in x's dtype
    (the backward casts B, so states from another B would differ)."""
    return x.shape[1] > 0 and x.numel() > 0 and B.dtype == x.dtype


def _no_saved(x) -> list[torch.Tensor]:
    """ssd_scan_fwd's chunk-state outputs where the backward recomputes them: four distinct (op outputs may not
    alias) empty fp32 tensors."""
    return [x.new_empty(0, dtype=torch.float32) for _ in range(4)]


def _chunk_states(x, dt, A, B, dt_bias, initial_states, dt_softplus: bool, plan: dict, final=None):
    """Forward stages 0-2: (s_in [n_chunks, H, P, N] state dtype, carry_decay [n_chunks, H] fp32, carry_lp
    [n_seg, H, P, N] state dtype | None with one segment, dtcs [3, B, H, L] fp32: stage 0's dt and cumulative dt A
    for stage 3); completes `final` [n_states, H, P, N] in place if given."""
    pass_k = mamba_common.kernel_module("ssd_scan_state_passing")
    _, _, nheads, headdim = x.shape
    dstate, dev = B.shape[3], x.device
    geometry = plan["geometry"]
    n_chunks, n_seg = geometry["n_chunks"], geometry["n_seg"]
    s_in = torch.empty(n_chunks, nheads, headdim, dstate, dtype=plan["state_dtype"], device=dev)
    carry_decay = torch.empty(n_chunks, nheads, dtype=torch.float32, device=dev)
    seg_state = torch.empty(n_seg, nheads, headdim, dstate, dtype=torch.float32, device=dev)
    seg_decay = torch.empty(n_seg, nheads, dtype=torch.float32, device=dev)
    final_decay = torch.empty(final.shape[0], nheads, dtype=torch.float32, device=dev) if final is not None else None
    dtcs = mamba_common.kernel_module("ssd_scan_chunk_cumsum").chunk_cumsum_launch(dt, A, dt_bias, plan["table"],
                                                                                   geometry, dt_softplus)
    if gluon_eligible("chunk_state", x, B, None, geometry["Q"], plan["table"] is not None, initial_states)[0]:
        from ..triton import ssd_scan_chunk_state_gluon as state_k    # plain import: CUDA only, never interpreted
    else:
        state_k = mamba_common.kernel_module("ssd_scan_chunk_state")
    state_k.chunk_state_launch(x, dtcs, B, initial_states, plan["table"], s_in, carry_decay, seg_state, seg_decay,
                               final, final_decay, geometry, plan["cfg"]["chunk_state"], plan["precision"])
    carry = carry_lp = None
    if n_seg > 1:
        carry = torch.empty(n_seg, nheads, headdim, dstate, dtype=torch.float32, device=dev)
        state_dtype = plan["state_dtype"]
        carry_lp = carry if state_dtype == torch.float32 else torch.empty(carry.shape, dtype=state_dtype, device=dev)
        pass_k.state_passing_launch(seg_state, seg_decay, carry, carry_lp)
    if final is not None:      # complete with the carries; empty packed sequences pass their initial state through
        packed_init = initial_states is not None and plan["last_chunk"] is not None    # batched: none is empty
        pass_k.final_states_launch(final, initial_states.contiguous() if packed_init else None, carry, final_decay,
                                   plan["last_chunk"], geometry)
    return s_in, carry_decay, carry_lp, dtcs


def _state_grads(dy, dtcs, C, dfinal, want_dinit: bool, nstates: int, plan: dict):
    """Backward stage 1 per segment (last chunk to first; dtcs: stage 0's, from _chunk_states), then stage 2 over
    reversed segments: (g_out [n_chunks, H, P, N] state dtype, gcarry_decay [n_chunks, H] fp32, gcarry [n_seg, H, P,
    N] fp32 and gcarry_lp in the state dtype | None with one segment, dinit [n_states, H, P, N] fp32 and dinit_decay
    [n_states, H] fp32 | None)."""
    bwd_state_k = mamba_common.kernel_module("ssd_scan_bwd_chunk_state")
    pass_k = mamba_common.kernel_module("ssd_scan_state_passing")
    _, _, nheads, headdim = dy.shape
    dstate, dev, state_dtype = C.shape[3], dy.device, plan["state_dtype"]
    geometry = plan["geometry"]
    n_chunks, n_seg = geometry["n_chunks"], geometry["n_seg"]
    g_out = torch.empty(n_chunks, nheads, headdim, dstate, dtype=state_dtype, device=dev)
    gcarry_decay = torch.empty(n_chunks, nheads, dtype=torch.float32, device=dev)
    seg_g = torch.empty(n_seg, nheads, headdim, dstate, dtype=torch.float32, device=dev)
    seg_gdecay = torch.empty(n_seg, nheads, dtype=torch.float32, device=dev)
    dinit = torch.empty(nstates, nheads, headdim, dstate, dtype=torch.float32, device=dev) if want_dinit else None
    dinit_decay = torch.empty(nstates, nheads, dtype=torch.float32, device=dev) if want_dinit else None
    bwd_state_k.bwd_chunk_state_launch(dy, dtcs, C, dfinal, plan["table"], g_out, gcarry_decay, seg_g, seg_gdecay,
                                       dinit, dinit_decay, geometry, plan["cfg"]["bwd_chunk_state"],
                                       plan["precision"])
    gcarry = gcarry_lp = None
    if n_seg > 1:
        gcarry = torch.empty(n_seg, nheads, headdim, dstate, dtype=torch.float32, device=dev)
        gcarry_lp = gcarry if state_dtype == torch.float32 else torch.empty(gcarry.shape, dtype=state_dtype,
                                                                            device=dev)
        pass_k.state_passing_launch(seg_g, seg_gdecay, gcarry, gcarry_lp)
    return g_out, gcarry_decay, gcarry, gcarry_lp, dinit, dinit_decay


@kernel_op("nemotron_kernels::ssd_scan_fwd", mutates_args=())
def ssd_scan_fwd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor], dt_softplus: bool, chunk_size: int,
                 initial_states: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
                 return_final_states: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                      torch.Tensor, torch.Tensor]:
    """-> (y [B, L, H, P] in x's dtype, final_states [B or S, H, P, N] fp32 (empty [0] unless requested), and the
    chunk states for the backward (_saved_shapes: s_in, carry_decay, carry_lp, dtcs; all empty [0] where the
    backward recomputes them: no tokens, or B not in x's dtype, which the backward casts)) (Triton; stages 1 and
    3 in Gluon where gluon_eligible holds)."""
    bsz, seqlen, nheads, headdim = x.shape
    dstate = B.shape[3]
    dev = x.device
    nstates = bsz if cu_seqlens is None else cu_seqlens.shape[0] - 1
    y = torch.empty(x.shape, dtype=x.dtype, device=dev)
    final = torch.empty(nstates, nheads, headdim, dstate, dtype=torch.float32, device=dev) \
        if return_final_states else None
    if seqlen == 0 or y.numel() == 0:
        if final is not None:
            final.copy_(initial_states if initial_states is not None else torch.zeros_like(final))
        return y, final if final is not None else y.new_empty(0, dtype=torch.float32), *_no_saved(x)

    x, dt, B, C, initial_states = (_unit_last(t) for t in (x, dt, B, C, initial_states))
    A = A.to(torch.float32).contiguous()
    D = None if D is None else D.to(torch.float32).contiguous()
    dt_bias = None if dt_bias is None else dt_bias.to(torch.float32).contiguous()
    plan = _plan(x, B, chunk_size, cu_seqlens, nstates)
    geometry = plan["geometry"]
    s_in, carry_decay, carry_lp, dtcs = _chunk_states(x, dt, A, B, dt_bias, initial_states, dt_softplus, plan,
                                                      final)
    if gluon_eligible("chunk_scan", x, B, C, chunk_size, cu_seqlens is not None)[0]:
        from ..triton import ssd_scan_chunk_scan_gluon as scan_k      # plain import: CUDA only, never interpreted
    else:
        scan_k = mamba_common.kernel_module("ssd_scan_chunk_scan")
    scan_k.chunk_scan_launch(x, dtcs, B, C, D, plan["table"], s_in, carry_decay, carry_lp, y, geometry,
                             plan["cfg"]["chunk_scan"], plan["precision"])
    # one segment: no carry, an empty one in the state dtype (_saved_shapes)
    saved = [s_in, carry_decay, carry_lp if carry_lp is not None else s_in.new_empty(0), dtcs] \
        if _keeps_states(x, B) else _no_saved(x)
    return y, final if final is not None else y.new_empty(0, dtype=torch.float32), *saved


@ssd_scan_fwd.register_fake
def _(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size, initial_states, cu_seqlens, return_final_states):
    nstates = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    final = x.new_empty(nstates, x.shape[2], x.shape[3], B.shape[3], dtype=torch.float32) if return_final_states \
        else x.new_empty(0, dtype=torch.float32)
    if _keeps_states(x, B):
        geometry, _ = _geometry(x, B, chunk_size, cu_seqlens is not None, nstates)
        saved = [x.new_empty(shape, dtype=dtype) for shape, dtype in _saved_shapes(x, B, geometry)]
    else:
        saved = _no_saved(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), final, *saved


@kernel_op("nemotron_kernels::ssd_scan_bwd", mutates_args=())
def ssd_scan_bwd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor], dt_softplus: bool, chunk_size: int,
                 initial_states: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], dy: torch.Tensor,
                 dfinal: Optional[torch.Tensor], s_in: Optional[torch.Tensor] = None,
                 carry_decay: Optional[torch.Tensor] = None, carry_lp: Optional[torch.Tensor] = None,
                 dtcs: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                               torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dy [B, L, H, P], dfinal [B or S, H, P, N] | None -> (dx, ddt, dA, dB, dC, dD, ddt_bias, dinitial_states), each
    like its input (empty [0] for an absent D / dt_bias / initial_states) (Triton, deterministic).
    Takes the forward's chunk states (s_in, carry_decay, carry_lp, dtcs: ssd_scan_fwd's last outputs) or, where
    they are absent or empty, recomputes them (stages 0-2: one chunk_state pass, ~0.33 ms at B1 L32K); then passes
    state gradients backwards (bwd stage 1 + stage 2 on reversed segments), then the chunk-parallel da, dx / ddt /
    dA / dD, dC and dB kernels (dx and dB + dC in Gluon where gluon_eligible holds)."""
    bwd_scan_k = mamba_common.kernel_module("ssd_scan_bwd_chunk_scan")
    bsz, seqlen, nheads, headdim = x.shape
    dev = x.device
    nstates = bsz if cu_seqlens is None else cu_seqlens.shape[0] - 1
    if seqlen == 0 or x.numel() == 0:
        dinit = x.new_empty(0)
        if initial_states is not None:
            dinit = dfinal.to(initial_states.dtype, copy=True) if dfinal is not None \
                else torch.zeros_like(initial_states)
        return (torch.zeros_like(x), torch.zeros_like(dt), torch.zeros_like(A), torch.zeros_like(B),
                torch.zeros_like(C), torch.zeros_like(D) if D is not None else x.new_empty(0),
                torch.zeros_like(dt_bias) if dt_bias is not None else x.new_empty(0), dinit)

    B_in, C_in = B, C
    x, dt, initial_states, dfinal = (_unit_last(t) for t in (x, dt, initial_states, dfinal))
    B, C, dy = (_unit_last(t.to(x.dtype)) for t in (B, C, dy))    # tensor-core operands share x's dtype
    A32 = A.to(torch.float32).contiguous()
    D32 = None if D is None else D.to(torch.float32).contiguous()
    bias32 = None if dt_bias is None else dt_bias.to(torch.float32).contiguous()
    plan = _plan(x, B, chunk_size, cu_seqlens, nstates)
    geometry, precision = plan["geometry"], plan["precision"]
    n_chunks = geometry["n_chunks"]
    if s_in is not None and s_in.numel() > 0:       # the forward's, bitwise what stages 0-2 would recompute
        want = _saved_shapes(x, B, geometry)
        for name, t, (shape, dtype) in zip(("s_in", "carry_decay", "carry_lp", "dtcs"),
                                           (s_in, carry_decay, carry_lp, dtcs), want):
            if t is None or tuple(t.shape) != shape or t.dtype != dtype or not t.is_contiguous():
                raise ValueError(f"ssd_scan_bwd: the forward's {name} must be {shape} {dtype}, contiguous")
        carry_lp = carry_lp if carry_lp.numel() > 0 else None
    else:
        s_in, carry_decay, carry_lp, dtcs = _chunk_states(x, dt, A32, B, bias32, initial_states, dt_softplus, plan)

    want_dinit = initial_states is not None
    g_out, gcarry_decay, gcarry, gcarry_lp, dinit, dinit_decay = _state_grads(dy, dtcs, C, dfinal, want_dinit,
                                                                              nstates, plan)

    # chunk-parallel gradients
    cfg = plan["cfg"]
    dx = torch.empty(x.shape, dtype=x.dtype, device=dev)
    ddt = torch.empty(bsz, seqlen, nheads, dtype=dt.dtype, device=dev)
    # per-chunk fp64 partial sums of dA, dD (and ddt_bias), written by dx: one buffer, reduced by one launch
    parts = torch.empty(2 if dt_bias is None else 3, n_chunks, nheads, dtype=torch.float64, device=dev)
    dB = torch.empty(B.shape, dtype=B_in.dtype, device=dev)
    dC = torch.empty(C.shape, dtype=C_in.dtype, device=dev)
    da_part = torch.empty(n_chunks, bwd_scan_k.da_blocks(chunk_size, cfg["da"]), nheads, chunk_size,
                          dtype=torch.float32, device=dev)
    bwd_scan_k.bwd_da_launch(x, dtcs, plan["table"], dy, B, C, da_part, geometry, cfg["da"], precision)
    if gluon_eligible("dx", x, B, C, chunk_size, cu_seqlens is not None, None, dy, D32, bias32, dt_softplus)[0]:
        from ..triton import ssd_scan_bwd_dx_gluon as dx_k            # plain import: CUDA only, never interpreted
    else:
        dx_k = bwd_scan_k
    dx_k.bwd_dx_launch(x, dt, dtcs, A32, B, C, D32, bias32, plan["table"], dy, s_in, carry_decay, carry_lp, g_out,
                       gcarry_decay, gcarry_lp, dx, ddt, parts[0], parts[1], parts[2] if dt_bias is not None else None,
                       da_part, geometry, dt_softplus, cfg["dx"], precision)
    # dbc checks the op's B_in, C_in, whose dtype dB, dC take; eligible (bf16, unit last stride), they are B, C
    if gluon_eligible("dbc", x, B_in, C_in, chunk_size, cu_seqlens is not None, None, dy)[0]:
        from ..triton import ssd_scan_bwd_dbc_gluon as dbc_k          # plain import: CUDA only, never interpreted
        dbc_k.bwd_dc_db_launch(x, dtcs, dy, B, C, s_in, carry_decay, carry_lp, g_out, gcarry_decay, gcarry_lp, dC,
                               dB, geometry)                          # the pair weights stay on the SM: no pw
    else:
        pw = torch.empty(n_chunks, B.shape[2], chunk_size, chunk_size, dtype=x.dtype, device=dev)   # dC -> dB
        bwd_scan_k.bwd_dbc_launch(x, dtcs, plan["table"], dy, B, s_in, carry_decay, carry_lp, pw, dC, False,
                                  geometry, cfg["dc"], precision)
        bwd_scan_k.bwd_dbc_launch(x, dtcs, plan["table"], dy, C, g_out, gcarry_decay, gcarry_lp, pw, dB, True,
                                  geometry, cfg["db"], precision)

    # parameter gradients: fixed-order fp64 torch reductions of per-chunk partial sums (deterministic)
    sums = parts.sum(1)                                                                # [2 or 3, H] fp64
    out_dA = sums[0].to(A.dtype, copy=True)           # copies: op outputs may not alias each other
    out_dD = sums[1].to(D.dtype, copy=True) if D is not None else x.new_empty(0)
    out_dbias = sums[2].to(dt_bias.dtype, copy=True) if dt_bias is not None else x.new_empty(0)
    if want_dinit:
        # completed with the gradient entering the segment of each sequence's first chunk; an empty sequence passes
        # its final-state gradient through to its initial state
        mamba_common.kernel_module("ssd_scan_state_passing").final_states_launch(
            dinit, None if dfinal is None or cu_seqlens is None else dfinal.contiguous(), gcarry, dinit_decay,
            plan["last_chunk"], geometry, first_chunk=plan["first_chunk"], backward=True)
        dinit = dinit.to(initial_states.dtype)
    else:
        dinit = x.new_empty(0)
    return dx, ddt, out_dA, dB, dC, out_dD, out_dbias, dinit


@ssd_scan_bwd.register_fake
def _(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size, initial_states, cu_seqlens, dy, dfinal, s_in=None,
      carry_decay=None, carry_lp=None, dtcs=None):
    def like(t):
        return torch.empty(t.shape, dtype=t.dtype, device=t.device) if t is not None else x.new_empty(0)
    return like(x), like(dt), like(A), like(B), like(C), like(D), like(dt_bias), like(initial_states)


class SSDScanFn(torch.autograd.Function):
    """Forward and backward: the Triton kernels. The backward reuses the forward's chunk states instead of
    recomputing them: kept while the graph lives, they are x's size at N = chunk (B1 L32K training step 4.86 ->
    4.51 ms on the H200, bench/NOTES.md, session 25)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, dt_softplus: bool, chunk_size: int,
                return_final_states: bool):
        ctx.dt_softplus, ctx.chunk_size, ctx.return_final_states = dt_softplus, chunk_size, return_final_states
        y, final, *chunk_states = ssd_scan_fwd(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size, initial_states,
                                               cu_seqlens, return_final_states)
        ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, *chunk_states)
        return (y, final) if return_final_states else y

    @staticmethod
    def backward(ctx, dy, *dfinal):
        x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, *chunk_states = ctx.saved_tensors
        dfinal = dfinal[0] if dfinal else None
        if dy is None:
            dy = torch.zeros_like(x)
        grads = ssd_scan_bwd(x, dt, A, B, C, D, dt_bias, ctx.dt_softplus, ctx.chunk_size, initial_states, cu_seqlens,
                             dy, dfinal, *chunk_states)
        dx, ddt, dA, dB, dC, dD, ddt_bias, dinit = grads
        return (dx, ddt, dA, dB, dC, dD if D is not None else None, ddt_bias if dt_bias is not None else None,
                dinit if initial_states is not None else None, None, None, None, None)


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
        y [B, L, H, P] in x's dtype, or (y, final_states [B or S, H, P, N] float32). Differentiable in x, dt, A,
        B, C, D, dt_bias and initial_states, from y and from final_states (Triton backward, deterministic: bitwise
        identical across runs; the reference's autograd where the forward runs the reference).
    """
    kernel_dtype_ok = mamba_common.use_triton(x, dt, A, B, C, D, dt_bias, initial_states, dot_kernel=True)
    if not kernel_dtype_ok or chunk_size not in KERNEL_CHUNKS or not isinstance(x, torch.Tensor) or x.dim() != 4 \
            or not isinstance(B, torch.Tensor) or B.dim() != 4 or B.shape[3] > 256 or x.shape[3] > 256:
        return ssd_scan_ref(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size, initial_states, cu_seqlens,
                            return_final_states)
    check_ssd_args(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, values=False)
    check_positive_int("chunk_size", chunk_size)
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.contiguous()
    return SSDScanFn.apply(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, bool(dt_softplus), chunk_size,
                           return_final_states)


def backend_report(device_type: str) -> str:
    report = mamba_common.backend_report(device_type, "ssd_scan forward + deterministic backward", dot_kernel=True)
    if device_type == "cuda" and report.startswith("triton") and torch.cuda.is_available():
        ok, why = gluon_platform(torch.device("cuda"))
        report += (f"; forward stages 1 and 3 and the backward's dx and dB / dC in Gluon ({why}) for bf16, P 64, N 128,"
                   " batched with L % 128 == 0 or packed (dx: with D, dt_bias, dt softplus; dB / dC: batched only, from"
                   f" {GLUON_DBC_MIN_WAVES} wave(s) of CTAs up)") if ok \
            else f"; no Gluon stages ({why})"
    return report
