"""Gluon (sm_90a) jit helpers shared by the SSD scan's warp-specialised kernels: ssd_scan_chunk_state_gluon,
ssd_scan_chunk_scan_gluon and the backward's ssd_scan_bwd_dx_gluon / ssd_scan_bwd_dbc_gluon (one CTA per (chunk, group),
or a persistent grid; a 1-warp TMA producer feeding a ring of STAGES stages through ready / empty mbarriers, the
loaded-once C and B boxes through a third). Inlined where called: the kernels' SASS is what it was with these lines
written out (every aot_compile_all variant compared). Not folded: the CTA's (chunk, group) decode from the program id
(pid // G, pid % G): as a helper it changed the dx kernel's batched SASS (96 more instructions) with the same PTX
instructions, only the line info differing. Imported only by those modules (Gluon, never interpreted)."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma

Q, P, N = 128, 64, 128          # chunk, head dim, state size: the kernels' scope
# NVMMA shared layouts (128-byte swizzle) of the [Q, P] x / dy / dx boxes, the [Q, N] B / C / dB / dC boxes and the
# [P, N] state boxes: built once here, as each costs ~6 us of host time
X_LAYOUT = gl.NVMMASharedLayout.get_default_for([Q, P], gl.bfloat16)
BC_LAYOUT = gl.NVMMASharedLayout.get_default_for([Q, N], gl.bfloat16)
S_LAYOUT = gl.NVMMASharedLayout.get_default_for([P, N], gl.bfloat16)


@gluon.jit
def _batched_chunk(gc, chunks_per_row, seqlen, Q: gl.constexpr):
    """Batched (L a multiple of Q): chunk gc's (row b, chunk c of the row, first row b L + c Q of the [B*L, .]
    views)."""
    b = gc // chunks_per_row
    c = gc - b * chunks_per_row
    return b, c, b * seqlen + c * Q


@gluon.jit
def _dtcs_row(dtcs_ptr, b, c, h, seqlen, H: gl.constexpr, Q: gl.constexpr):
    """Head h's dtcs at batched chunk (b, c): dtcs [3, B, H, L] fp32, plane 0 (dt); planes 1, 2 (cs hi, lo) one and
    two planes on."""
    return dtcs_ptr + ((b * H + h).to(gl.int64) * seqlen + c * Q)


@gluon.jit
def _smem_box(desc):
    """Shared memory for one TMA box of `desc` (its dtype, block shape and layout)."""
    return gl.allocate_shared_memory(desc.dtype, desc.block_type.shape, desc.layout)


@gluon.jit
def _smem_ring(desc, STAGES: gl.constexpr):
    """Shared memory for STAGES TMA boxes of `desc`: the ring's [STAGES, ...] buffers."""
    return gl.allocate_shared_memory(desc.dtype, [STAGES] + desc.block_type.shape, desc.layout)


@gluon.jit
def _barrier():
    """One mbarrier, count 1 (the producer's expect-tx arrival: the loaded-once C and B boxes). The caller fences the
    init (fence_async_shared) before any TMA uses it."""
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=1)
    return bar


@gluon.jit
def _ring_barriers(STAGES: gl.constexpr):
    """The ring's (ready, empty) mbarriers [STAGES, 1], count 1 each: ready the producer's expect-tx arrival, empty
    the consumer's one release of the stage. The caller fences the inits (fence_async_shared) before any TMA uses
    them."""
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    return ready, empty


@gluon.jit
def _load_boxes(desc0, desc1, row, g, bar, smem0, smem1):
    """Producer: the boxes at rows row .. of desc0 and desc1, columns of group g (the chunk's C and B rows [Q, N]),
    into smem0, smem1, both arriving on bar (its expect-tx first)."""
    mbarrier.expect(bar, desc0.block_type.nbytes + desc1.block_type.nbytes)
    N: gl.constexpr = desc0.block_type.shape[1]
    tma.async_copy_global_to_shared(desc0, [row, g * N], bar, smem0)
    tma.async_copy_global_to_shared(desc1, [row, g * N], bar, smem1)


@gluon.jit
def _wait_free(empty, i, STAGES: gl.constexpr):
    """Producer: waits until ring iteration i's stage (i % STAGES, returned) is free. Completion k of empty[stage]
    is the consumer's release of iteration k STAGES + stage; a fresh mbarrier passes a wait on parity 1 at once, so
    iterations i < STAGES need no release and i >= STAGES waits for completion i // STAGES - 1, parity
    ((i // STAGES) & 1) ^ 1 (never more than one phase ahead: each is waited for in turn)."""
    stage = i % STAGES
    mbarrier.wait(empty.index(stage), ((i // STAGES) & 1) ^ 1)
    return stage


@gluon.jit
def _release(empty, stage):
    """Consumer (several warps): every warp's reads of the stage are done (their values used, their wgmmas waited
    for) before one arrival hands it back to the producer."""
    gl.thread_barrier()
    mbarrier.arrive(empty.index(stage), count=1)


@gluon.jit
def _store_box(desc, smem, acc, row, col):
    """Consumer epilogue: acc fp32 in registers (dx [Q, P], y [64, P]) -> desc's box at (row, col) through smem (one
    box of desc) and a TMA store, left in flight: the next call's wait, or the caller's before exit, drains it."""
    tma.store_wait(pendings=0)                                                    # the last head's box has left
    smem.store(acc.to(desc.dtype))
    fence_async_shared()                                                          # generic writes -> TMA reads
    tma.async_copy_shared_to_global(desc, [row, col], smem)
