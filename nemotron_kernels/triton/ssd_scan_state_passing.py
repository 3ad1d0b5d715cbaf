"""SSD scan stage 2 (Triton): pass states between segments and complete the final states.

carry[0] = 0 and carry[s+1] = seg_decay[s] * carry[s] + seg_state[s] is the true state entering segment s
(stage 1's segment states count from the segment start, and seg_decay is 0 when a sequence starts inside it).
A sequence ending in segment s has final = final_local + final_decay * carry[s]. Program (head, block of the
P*N state elements); the loop runs over the few segments, then over the sequences. Only launched with > 1
segment (with one segment stage 1's states are already complete). A second kernel writes the final states of
empty packed sequences (and the backward's initial-state gradients of them)."""
import torch
import triton
import triton.language as tl

from .common import cdiv
from .mamba_common import interpreting

INTERPRETED = interpreting()
LOAD_TOKEN = object()


@triton.jit
def _ssd_state_passing_kernel(
    seg_state_ptr, seg_decay_ptr,       # [n_seg, H, P*N] fp32, [n_seg, H] fp32
    carry_ptr,                          # [n_seg, H, P*N] fp32 out: state entering each segment
    carry_lp_ptr,                       # the same in the chunk-state dtype (bf16 for bf16 inputs), for stage 3
    final_ptr, final_decay_ptr,         # [n_states, H, P*N] fp32 (in place), [n_states, H] fp32
    last_chunk_ptr,                     # [n_states] int32 with packed sequences: global chunk of each end (-1: empty)
    n_seg, seg_len, n_states, nheads, state_size, chunks_per_row,
    BLOCK: tl.constexpr, HAS_FINAL: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    h = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < state_size
    carry = tl.zeros([BLOCK], dtype=tl.float32)
    for seg in range(n_seg):
        base = (tl.cast(seg, tl.int64) * nheads + h) * state_size
        tl.store(carry_ptr + base + offs, carry, mask=ok)
        tl.store(carry_lp_ptr + base + offs, carry.to(carry_lp_ptr.dtype.element_ty), mask=ok)
        decay = tl.load(seg_decay_ptr + seg * nheads + h)
        carry = decay * carry + tl.load(seg_state_ptr + base + offs, mask=ok, other=0.0)
    if HAS_FINAL:
        tl.debug_barrier()
        for s in range(n_states):
            if IS_VARLEN:
                lc = tl.load(last_chunk_ptr + s)
            else:
                lc = s * chunks_per_row + chunks_per_row - 1
            valid = lc >= 0
            seg = tl.maximum(lc, 0) // seg_len
            decay = tl.load(final_decay_ptr + s * nheads + h, mask=valid, other=0.0)
            # 0 when the sequence starts in its last segment: its final state is complete, left unread (packed
            # batches of short sequences: most of them)
            keep = tl.where(decay != 0.0, ok & valid, False)
            carry_s = tl.load(carry_ptr + (tl.cast(seg, tl.int64) * nheads + h) * state_size + offs, mask=keep,
                              other=0.0)
            fptrs = final_ptr + tl.cast(s * nheads + h, tl.int64) * state_size + offs
            final = tl.load(fptrs, mask=keep, other=0.0)
            tl.store(fptrs, final + decay * carry_s, mask=keep)


@triton.jit
def _ssd_empty_final_kernel(
    final_ptr,                          # [n_states, H * P * N] fp32 (in place)
    init_ptr,                           # [n_states, H * P * N] initial states (any float dtype), if HAS_INIT
    last_chunk_ptr,                     # [n_states] int32: global chunk of each sequence's end (-1: empty)
    state_numel,
    BLOCK: tl.constexpr, HAS_INIT: tl.constexpr,
):
    """An empty packed sequence has no chunk, so stage 1 never wrote its final state: it is its initial state (0
    without). Program (sequence, block): the others return at once, so the pass costs a launch, not a read and a
    write of every final state (torch.where over [S, H, P, N] did)."""
    s = tl.program_id(0)
    if tl.load(last_chunk_ptr + s) < 0:
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < state_numel
        base = tl.cast(s, tl.int64) * state_numel
        value = tl.zeros([BLOCK], dtype=tl.float32)
        if HAS_INIT:
            value = tl.load(init_ptr + base + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(final_ptr + base + offs, value, mask=ok)


PASS_BLOCK = 1024
EMPTY_BLOCK = 2048


def state_passing_launch(seg_state, seg_decay, carry, carry_lp, final, final_decay, last_chunk,
                         geometry: dict) -> None:
    n_seg, nheads = seg_decay.shape
    state_size = seg_state[0, 0].numel()
    assert seg_state.is_contiguous() and carry.is_contiguous() and carry_lp.is_contiguous(), \
        "ssd_scan state passing: buffers must be contiguous"
    assert final is None or final.is_contiguous(), "ssd_scan state passing: final states must be contiguous"
    grid = (nheads, cdiv(state_size, PASS_BLOCK))
    _ssd_state_passing_kernel[grid](
        seg_state, seg_decay, carry, carry_lp, final if final is not None else carry,
        final_decay if final_decay is not None else seg_decay, last_chunk if last_chunk is not None else seg_decay,
        n_seg, geometry["seg_len"], final.shape[0] if final is not None else 0, nheads, state_size,
        geometry["chunks_per_row"], BLOCK=PASS_BLOCK, HAS_FINAL=final is not None, IS_VARLEN=last_chunk is not None,
        num_warps=4)


def empty_final_launch(final, initial_states, last_chunk) -> None:
    """final [S, H, P, N] fp32, in place: for every empty packed sequence, what passes through it (0 without):
    the forward's initial state into its final state, the backward's final-state gradient into its initial one."""
    n_states = final.shape[0]
    numel = final[0].numel()
    assert final.is_contiguous() and final.dtype == torch.float32, "ssd_scan: final states fp32, contiguous"
    assert initial_states is None or (initial_states.is_contiguous() and initial_states.shape == final.shape), \
        "ssd_scan: initial_states [S, H, P, N], contiguous"
    assert last_chunk.dtype == torch.int32 and last_chunk.shape == (n_states,), "ssd_scan: last_chunk [S] int32"
    if n_states == 0 or numel == 0:
        return
    _ssd_empty_final_kernel[(n_states, cdiv(numel, EMPTY_BLOCK))](
        final, initial_states if initial_states is not None else final, last_chunk, numel, BLOCK=EMPTY_BLOCK,
        HAS_INIT=initial_states is not None, num_warps=4)


def aot_compile_all():
    from .mamba_common import aot_compile
    sig = {"seg_state_ptr": "*fp32", "seg_decay_ptr": "*fp32", "carry_ptr": "*fp32", "carry_lp_ptr": "*bf16",
           "final_ptr": "*fp32",
           "final_decay_ptr": "*fp32", "last_chunk_ptr": "*i32", "n_seg": "i32", "seg_len": "i32", "n_states": "i32",
           "nheads": "i32", "state_size": "i32", "chunks_per_row": "i32"}
    for varlen in (False, True):
        consts = {"BLOCK": PASS_BLOCK, "HAS_FINAL": True, "IS_VARLEN": varlen}
        yield (f"ssd_state_passing varlen={varlen}",
               aot_compile(_ssd_state_passing_kernel, sig, consts, num_warps=4, num_stages=1,
                           aligned=("state_size",)))
    sig = {"final_ptr": "*fp32", "init_ptr": "*bf16", "last_chunk_ptr": "*i32", "state_numel": "i32"}
    for has_init in (False, True):
        yield (f"ssd_empty_final init={has_init}",
               aot_compile(_ssd_empty_final_kernel, sig, {"BLOCK": EMPTY_BLOCK, "HAS_INIT": has_init}, num_warps=4,
                           num_stages=1, aligned=("state_numel",)))
