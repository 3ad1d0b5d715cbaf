"""SSD scan stage 2 (Triton): pass states between segments, then complete the final states.

carry[0] = 0 and carry[s+1] = seg_decay[s] * carry[s] + seg_state[s] is the true state entering segment s
(stage 1's segment states count from the segment start, and seg_decay is 0 when a sequence starts inside it).
Program (head, block of the P*N state elements), a loop over the few segments. Only launched with > 1 segment
(with one segment stage 1's states are already complete).

A sequence ending in segment s has final = final_local + final_decay * carry[s]; an empty packed sequence (no
chunk: stage 1 never wrote it) has its initial state. A second kernel does both, one program per (sequence, block
of its H*P*N elements): the sequences in parallel (a loop over them in the kernel above was a chain of dependent
loads per sequence), and the sequences with nothing to do return after one or two loads (final_decay 0: started
in its last segment). The backward uses it for the initial-state gradients of empty sequences (dfinal passes
through)."""
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
    n_seg, nheads, state_size,
    BLOCK: tl.constexpr,
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


@triton.jit
def _ssd_final_states_kernel(
    final_ptr,                          # [n_states, H * P * N] fp32 (in place)
    init_ptr,                           # [n_states, H * P * N] what an empty sequence passes through, if HAS_INIT
    carry_ptr, final_decay_ptr,         # [n_seg, H * P * N] fp32, [n_states, H] fp32, if HAS_CARRY
    last_chunk_ptr,                     # [n_states] int32 with packed sequences: global chunk of each end (-1: empty)
    first_chunk_ptr,                    # [n_states] int32 with packed sequences: global chunk of each start (BACKWARD)
    numel, state_size, nheads, seg_len, chunks_per_row, n_seg,
    BLOCK: tl.constexpr, HAS_INIT: tl.constexpr, HAS_CARRY: tl.constexpr, IS_VARLEN: tl.constexpr,
    BACKWARD: tl.constexpr,
):
    """One (sequence, block) of the final states, in place (see final_states_launch). BACKWARD: the initial-state
    gradients instead, completed with the carry of the reversed segment holding each sequence's first chunk."""
    s = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    base = tl.cast(s, tl.int64) * numel
    if IS_VARLEN:
        lc = tl.load(last_chunk_ptr + s)
    else:
        lc = s * chunks_per_row + chunks_per_row - 1
    if lc < 0:
        value = tl.zeros([BLOCK], dtype=tl.float32)
        if HAS_INIT:
            value = tl.load(init_ptr + base + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(final_ptr + base + offs, value, mask=ok)
    if HAS_CARRY:
        decay = tl.load(final_decay_ptr + s * nheads + offs // state_size, mask=ok & (lc >= 0), other=0.0)
        keep = ok & (decay != 0.0)                                   # [BLOCK]
        if BACKWARD:
            if IS_VARLEN:
                fc = tl.load(first_chunk_ptr + s)
            else:
                fc = s * chunks_per_row
            seg = n_seg - 1 - tl.maximum(fc, 0) // seg_len
        else:
            seg = tl.maximum(lc, 0) // seg_len
        carry = tl.load(carry_ptr + tl.cast(seg, tl.int64) * numel + offs, mask=keep, other=0.0)
        final = tl.load(final_ptr + base + offs, mask=keep, other=0.0)
        tl.store(final_ptr + base + offs, final + decay * carry, mask=keep)


PASS_BLOCK = 1024
FINAL_BLOCK = 2048


def state_passing_launch(seg_state, seg_decay, carry, carry_lp) -> None:
    n_seg, nheads = seg_decay.shape
    state_size = seg_state[0, 0].numel()
    assert seg_state.is_contiguous() and carry.is_contiguous() and carry_lp.is_contiguous(), \
        "ssd_scan state passing: buffers must be contiguous"
    _ssd_state_passing_kernel[(nheads, cdiv(state_size, PASS_BLOCK))](
        seg_state, seg_decay, carry, carry_lp, n_seg, nheads, state_size, BLOCK=PASS_BLOCK, num_warps=4)


def final_states_launch(final, initial_states, carry, final_decay, last_chunk, geometry: dict, first_chunk=None,
                        backward: bool = False) -> None:
    """final [S, H, P, N] fp32, in place: + final_decay * carry[its last segment] (carry [n_seg, H, P, N] fp32 from
    state_passing_launch, None with one segment), and for every empty packed sequence (last_chunk -1; None when
    batched) what passes through it, `initial_states` or 0: the forward's initial state into its final state, the
    backward's final-state gradient into its initial one. backward: `final` holds the initial-state gradients,
    completed with the reversed-segment carry of each sequence's first chunk (first_chunk [S] int32 when packed)."""
    n_states = final.shape[0]
    numel = final[0].numel()
    assert final.is_contiguous() and final.dtype == torch.float32, "ssd_scan: final states fp32, contiguous"
    assert initial_states is None or (initial_states.is_contiguous() and initial_states.shape == final.shape), \
        "ssd_scan: initial_states [S, H, P, N], contiguous"
    assert last_chunk is None or (last_chunk.dtype == torch.int32 and last_chunk.shape == (n_states,)), \
        "ssd_scan: last_chunk [S] int32"
    assert carry is None or (carry.is_contiguous() and final_decay is not None and final_decay.is_contiguous()), \
        "ssd_scan: carry and final_decay, contiguous"
    assert not (backward and last_chunk is not None) or (first_chunk is not None and first_chunk.dtype == torch.int32
                                                         and first_chunk.shape == (n_states,)), \
        "ssd_scan: the backward's packed final-states pass needs first_chunk [S] int32"
    if n_states == 0 or numel == 0 or (carry is None and last_chunk is None):
        return
    _ssd_final_states_kernel[(n_states, cdiv(numel, FINAL_BLOCK))](
        final, initial_states if initial_states is not None else final, carry if carry is not None else final,
        final_decay if final_decay is not None else final, last_chunk if last_chunk is not None else final,
        first_chunk if first_chunk is not None else final, numel, final[0, 0].numel(), final.shape[1],
        geometry["seg_len"], geometry["chunks_per_row"], geometry["n_seg"],
        BLOCK=FINAL_BLOCK, HAS_INIT=initial_states is not None, HAS_CARRY=carry is not None,
        IS_VARLEN=last_chunk is not None, BACKWARD=backward, num_warps=4)


def aot_compile_all():
    from .mamba_common import aot_compile
    sig = {"seg_state_ptr": "*fp32", "seg_decay_ptr": "*fp32", "carry_ptr": "*fp32", "carry_lp_ptr": "*bf16",
           "n_seg": "i32", "nheads": "i32", "state_size": "i32"}
    yield ("ssd_state_passing", aot_compile(_ssd_state_passing_kernel, sig, {"BLOCK": PASS_BLOCK}, num_warps=4,
                                            num_stages=1, aligned=("state_size",)))
    sig = {"final_ptr": "*fp32", "init_ptr": "*bf16", "carry_ptr": "*fp32", "final_decay_ptr": "*fp32",
           "last_chunk_ptr": "*i32", "first_chunk_ptr": "*i32", "numel": "i32", "state_size": "i32", "nheads": "i32",
           "seg_len": "i32", "chunks_per_row": "i32", "n_seg": "i32"}
    for has_init, has_carry, varlen, backward in ((False, True, False, False), (True, True, True, False),
                                                  (True, False, True, False), (True, True, True, True)):
        consts = {"BLOCK": FINAL_BLOCK, "HAS_INIT": has_init, "HAS_CARRY": has_carry, "IS_VARLEN": varlen,
                  "BACKWARD": backward}
        yield (f"ssd_final_states init={has_init} carry={has_carry} varlen={varlen} backward={backward}",
               aot_compile(_ssd_final_states_kernel, sig, consts, num_warps=4, num_stages=1,
                           aligned=("numel", "state_size")))
