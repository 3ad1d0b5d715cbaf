"""SSD scan stage 3 on Hopper (Gluon, sm_90a): chunk_scan_launch's y from a warp-specialised kernel.

Math (the Triton kernel's, ssd_scan_chunk_scan.py; cs = stage 0's cumulative dt A from the chunk start, hi + lo):
    y_t = sum_{s<=t} (C_t . B_s) exp(min((hi_t - hi_s) + (lo_t - lo_s), 0)) dt_s x_s      intra-chunk
        + exp(hi_t) C_t . (S_in + carry_decay * carry)                                    state entering the chunk
        + D x_t
One difference: the carry term is its own wgmma (C carry^T, scaled by carry_decay in fp32) where Triton rounds
S_in + carry_decay carry to bf16 before one dot: y agrees within bf16 rounding (2.3e-3 relative at B1 L32K).
Scope (ops/ssd_scan.py gluon_eligible; else the Triton kernel runs): batched with L a multiple of Q = 128, or
packed (cu_seqlens, B = 1, any lengths); P = 64, N = 128, bf16 x / B / C / y / S_in; any H, G; D present or not.
Packed (PACKED): CTA gc is slot gc of the chunk table (ssd_scan_common: its sequence's rows start .. start +
length - 1, dtcs at slot position gc Q). Its 128-row boxes also hold the next sequence's rows (or rows past T,
which TMA zero-fills): they need no mask, as for a row t < length every s >= length lies past t (causal mask)
and has dt_s = 0 (stage 0 writes the slot's tail dt 0, cs flat); rows t >= length are computed but never stored:
a partial slot stores y by masked register stores (a TMA box would overwrite the next sequence's y). Padding
slots (length 0) exit at once, as Triton's programs do.

Design: one CTA per (chunk, group), 9 warps (padded to 12), gl.warp_specialize into
  - consumer warpgroup 0 (the default partition): rows 0..63 of the chunk (the diagonal block only),
  - consumer warpgroup 1 (a 4-warp worker, 240 registers): rows 64..127 (diagonal + off-diagonal block),
  - a producer (1 warp, 24 registers): TMA loads of C and B [128, N] once, then per head of the group x [128, P],
    S_in [P, N], the carry [P, N] and stage 0's 3 dtcs rows [Q] into a 2-stage ring (ready / empty mbarriers; empty
    counts one arrival per warpgroup). S_in and the carry are read once per (chunk, head), where the Triton kernel
    reads them per row block.
A consumer computes C B^T once (wgmma, [t, s]: the masked, decayed M = (C B^T o exp(segsum)) dt_s goes straight to
the A operand of the next wgmma from registers), then per head: the state wgmmas C S_in^T and C carry^T (async),
M in registers meanwhile, M x, D x from the ring's x, y through shared memory and a TMA store.
Imported only where gluon_eligible holds (never interpreted: Gluon has no interpreter), so not via kernel_module.

H200 (scripts/probe_ssd_chunk_scan_gluon.py, bench/NOTES.md sessions 26-27; y bitwise the same throughout): B1 L32K
(256 chunks, carries) 337 us against Triton's 634, packed (16 sequences, 260 chunks) 348 against 620. Session 26's
build read the dtcs rows by global loads after each head's ready wait, a DRAM latency on every head's path to its
stage release: 420 us, packed 445. Tried with the ring's dtcs and dropped, neither gaining: a third stage (340 us,
packed 355) and y staged in B's slots once C B^T has read them (336, 350). What is left (estimates): ~0.96 GB
through DRAM (x, S_in, y 268 MB each, B / C 134, dtcs 25) takes 230 us at the 4.19 TB/s copy ceiling, so 337 us is
68% of it; as deeper buffering did not help, the rest is likely each CTA's serial start (C / B and the first stage
in one latency, then C B^T: ~2 us of its ~21) and end (the last y store's drain) over 16 waves. 2 CTAs an SM
cannot be: the partitions take all 64K registers (12 warps at 168).

Persistent (PERSISTENT; the op's grid from PERSISTENT_MIN_WAVES waves of tiles up): grid
(min(#SMs, tiles), ), program p walks tiles p, p + #programs, ... (a wave's order, a chunk's G tiles adjacent;
packed padding slots are skipped, not returned from). The producer runs on into the next tile: its C and B, then
its heads into the ring, whose fill count (k HPG + i for the k-th tile with rows) and so its phases run on across
tiles. C and B rotate through 3 pairs of [64, N] boxes (the same 96 KB as C, B and a second C; 211 KB in all with
the carry): tile k's C into pair k % 3 once tile k - 1's C B^T has read its B there (b_free, one arrival per
warpgroup), its B into pair (k + 1) % 3 once tile k - 2's heads are done with their C (c_free[k % 2]), both on
cb_ready[k % 2]. Every wgmma descriptor then depends on the tile: with one B buffer LLVM hoisted C B^T's 16
B-operand descriptors out of the tile loop and ptxas spilled them (12-88 B). Packed, y_ptr and table_ptr go
through an asm move per tile (_opaque_ptr), else y_ptr + the thread's columns is hoisted above the partitions'
dispatch and spilled. AOT (sm_90a, Triton 3.6, 8 variants): no spills, no register read before written, highest
register R214-R237, 216,448 B shared memory with the carry (183,632 without) of 232,448.
Prediction: a tile boundary keeps C B^T (24 m64n64k16 wgmmas, ~0.4 us) and, packed, the consumers'
table read (an L2 hit, ~0.5 us); it loses the CTA launch and barrier set-up, the wait for C / B and the first stage
(issued ~2 heads early now) and the last head with no loads in flight, ~1.5-2.5 us of a tile's 20.7 at B1 L32K
(2048 tiles: 68 programs take 16, 64 take 15). 331 us (probe, session 27) - 15 boundaries x 1.5-2.5 us = 294-309 us,
~300; packed (2080 tiles, 342 us, 21.4 a tile) 1.0-2.0 us a boundary: 312-327, ~320. The DRAM floor is 230 us.
Measured (H200, session 28, y bitwise equal): 2048 tiles (B1 L32K, B4 L8K, B16 L2K) 335-339 -> 323-326 us, packed
340 -> 324 (3.5-5%): B1 L32K gained 11 us, a third to a half of the predicted 22-37; packed landed inside its range.
At 1.9 waves (B1 L4K, 256 tiles) persistent lost, 130 -> 134 us, so the rule starts at 2 waves."""
import itertools

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .common import sm_count
from .ssd_scan_gluon_common import N, P, Q, _store_box, _wait_free

BLOCK_M = 64                    # rows per consumer warpgroup (a wgmma's M): two per chunk
STAGES = 2                      # the per-head ring (x, S_in, carry, dtcs): a third stage gained nothing (H200)
MAXNREG = 168                   # 12 warps x 32 threads x 168 <= 64K registers at launch
CONSUMER_REGS, PRODUCER_REGS = 240, 24      # setmaxnreg targets of the workers: consumer WG 1, producer
PERSISTENT_MIN_WAVES = 2        # the persistent grid from 2 waves of tiles (H200, the probe: see the docstring)
# NVMMA shared layouts (128-byte swizzle) of the [64, P] x / y boxes and the [64, N] B / C / state boxes: built once
# here, as each costs ~6 us of host time (the probe built them per call)
XY_LAYOUT = gl.NVMMASharedLayout.get_default_for([BLOCK_M, P], gl.bfloat16)
BCS_LAYOUT = gl.NVMMASharedLayout.get_default_for([BLOCK_M, N], gl.bfloat16)
# stage 0's (dt, cs hi, cs lo) rows of a (chunk, head): [1, Q] fp32 boxes, unswizzled (read as plain vectors)
DT_LAYOUT = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)


@gluon.jit
def _tile(tile, seqlen, chunks_per_row, y_ptr, table_ptr, n_table, G: gl.constexpr, H: gl.constexpr,
          P: gl.constexpr, Q: gl.constexpr, PACKED: gl.constexpr):
    """Tile `tile` = gc G + g: chunk (packed: table slot) gc, group g. -> (gc, g, row0 (its first row in the
    [B*L, .] views), length (its rows; batched Q, packed 0 for a padding slot), dt_row, dt_col (head 0's dtcs row
    and the chunk's first column), y_slot (packed: y's row row0))."""
    gc = tile // G
    g = tile % G
    if PACKED:
        row0 = gl.load(table_ptr + n_table + gc)                                  # the slot's first row
        length = gl.load(table_ptr + 2 * n_table + gc)
        dt_row = 0                                                                # head 0's dtcs row: slot gc's
        dt_col = gc * Q                                                           # columns
        y_slot = y_ptr + row0.to(gl.int64) * (H * P)                             # y's row row0
    else:
        b = gc // chunks_per_row
        dt_col = (gc - b * chunks_per_row) * Q                                    # the chunk's start in its row
        row0 = b * seqlen + dt_col                                                # in the [B*L, .] views
        length = Q
        dt_row = b * H
        y_slot = y_ptr                                                            # unused
    return gc, g, row0, length, dt_row, dt_col, y_slot


@gluon.jit
def _load_rows(desc, bufs, first, bar, row0, col):
    """Both 64-row boxes of rows row0 .. row0 + 127 at column col into bufs[first], bufs[first + 1] (on bar)."""
    for k in gl.static_range(2):
        tma.async_copy_global_to_shared(desc, [row0 + k * desc.block_type.shape[0], col], bar, bufs.index(first + k))


@gluon.jit
def _load_heads(x_desc, s_desc, carry_desc, dt_desc, x_bufs, s_bufs, carry_bufs, dt_bufs, ready, empty, gc, row0, g,
                seg, dt_row, dt_col, dt_plane_rows, n0, H: gl.constexpr, HPG: gl.constexpr, STAGES: gl.constexpr,
                HAS_CARRY: gl.constexpr):
    """Per head i of group g, into the ring's n0 + i-th fill (stage (n0 + i) % STAGES): both 64-row halves of x
    (warpgroup 1 also reads rows 0..63), S_in, the carry of segment seg and the head's 3 dtcs rows (plane k: row
    k dt_plane_rows + dt_row + h, columns dt_col .. dt_col + Q - 1)."""
    P: gl.constexpr = x_desc.block_type.shape[1]
    X_BYTES: gl.constexpr = 2 * x_desc.block_type.nbytes
    S_BYTES: gl.constexpr = s_desc.block_type.nbytes
    C_BYTES: gl.constexpr = carry_desc.block_type.nbytes if HAS_CARRY else 0
    DT_BYTES: gl.constexpr = 3 * dt_desc.block_type.nbytes
    for i in range(HPG):
        h = g * HPG + i
        stage = _wait_free(empty, n0 + i, STAGES)
        mbarrier.expect(ready.index(stage), X_BYTES + S_BYTES + C_BYTES + DT_BYTES)
        _load_rows(x_desc, x_bufs, stage * 2, ready.index(stage), row0, h * P)       # x [64 rows, P] halves
        tma.async_copy_global_to_shared(s_desc, [(gc * H + h) * P, 0], ready.index(stage), s_bufs.index(stage))
        if HAS_CARRY:
            tma.async_copy_global_to_shared(carry_desc, [(seg * H + h) * P, 0], ready.index(stage),
                                            carry_bufs.index(stage))
        for k in gl.static_range(3):                                             # dt, cs hi, cs lo
            tma.async_copy_global_to_shared(dt_desc, [k * dt_plane_rows + dt_row + h, dt_col], ready.index(stage),
                                            dt_bufs.index(stage * 3 + k))


@gluon.jit
def _producer(x_desc, b_desc, c_desc, s_desc, carry_desc, dt_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs,
              dt_bufs, bc_bar, ready, empty, gc, row0, g, seg_len, dt_row, dt_col, dt_plane_rows, H: gl.constexpr,
              HPG: gl.constexpr, STAGES: gl.constexpr, HAS_CARRY: gl.constexpr):
    """One warp: C / B rows of the chunk (group g) once (bc_bar), then the group's heads into the ring."""
    N: gl.constexpr = c_desc.block_type.shape[1]
    seg = gc // seg_len                                    # the carry's segment
    mbarrier.expect(bc_bar, 4 * c_desc.block_type.nbytes)  # two [64, N] halves each of C and B
    _load_rows(c_desc, c_smem, 0, bc_bar, row0, g * N)
    _load_rows(b_desc, b_smem, 0, bc_bar, row0, g * N)
    _load_heads(x_desc, s_desc, carry_desc, dt_desc, x_bufs, s_bufs, carry_bufs, dt_bufs, ready, empty, gc, row0, g,
                seg, dt_row, dt_col, dt_plane_rows, 0, H, HPG, STAGES, HAS_CARRY)


@gluon.jit
def _producer_persistent(x_desc, b_desc, c_desc, s_desc, carry_desc, dt_desc, cb_smem, x_bufs, s_bufs, carry_bufs,
                         dt_bufs, cb_ready, b_free, c_free, ready, empty, pid, n_progs, seqlen, chunks_per_row,
                         seg_len, dt_plane_rows, y_ptr, table_ptr, n_table, H: gl.constexpr, G: gl.constexpr,
                         HPG: gl.constexpr, STAGES: gl.constexpr, HAS_CARRY: gl.constexpr, PACKED: gl.constexpr):
    """The TMA warp over this program's tiles (pid, pid + n_progs, ...; padding slots skipped). C and B rotate
    through cb_smem's 3 pairs of [64, N] boxes: the k-th tile with rows takes C into pair k % 3 (tile k - 1's B,
    once its C B^T has read it: b_free) and B into pair (k + 1) % 3 (tile k - 2's C, once its heads are done:
    c_free[k % 2]), both on cb_ready[k % 2]; then its heads into the ring, whose fill count runs on across tiles
    (k HPG + i). So the next tile's C / B and first heads load while the consumers finish this one."""
    N: gl.constexpr = c_desc.block_type.shape[1]
    P: gl.constexpr = x_desc.block_type.shape[1]
    Q: gl.constexpr = 2 * x_desc.block_type.shape[0]
    k = 0                                                  # tiles with rows so far: the barriers' phases
    for tile in range(pid, n_table * G, n_progs):
        gc, g, row0, length, dt_row, dt_col, _ = _tile(tile, seqlen, chunks_per_row, y_ptr, table_ptr, n_table, G,
                                                       H, P, Q, PACKED)
        if length > 0:
            pair = k % 3
            mbarrier.wait(b_free, (k & 1) ^ 1)
            mbarrier.wait(c_free.index(k % 2), ((k // 2) & 1) ^ 1)
            mbarrier.expect(cb_ready.index(k % 2), 4 * c_desc.block_type.nbytes)
            _load_rows(c_desc, cb_smem, 2 * pair, cb_ready.index(k % 2), row0, g * N)
            _load_rows(b_desc, cb_smem, 2 * ((pair + 1) % 3), cb_ready.index(k % 2), row0, g * N)
            _load_heads(x_desc, s_desc, carry_desc, dt_desc, x_bufs, s_bufs, carry_bufs, dt_bufs, ready, empty, gc,
                        row0, g, gc // seg_len, dt_row, dt_col, dt_plane_rows, k * HPG, H, HPG, STAGES, HAS_CARRY)
            k += 1


@gluon.jit
def _dtcs_smem(dt_bufs, stage, start: gl.constexpr, layout: gl.constexpr):
    """(dt, cs hi, cs lo) at chunk rows start .. start + 63 from ring stage `stage` (dt_bufs [STAGES*3, 1, Q] fp32),
    in `layout` (a slice of the wgmma layout)."""
    BM: gl.constexpr = 64
    Q: gl.constexpr = dt_bufs.shape[2]
    LIN: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0])   # plain fp32 [Q]
    return (dt_bufs.index(stage * 3)._reinterpret(gl.float32, [Q], LIN).slice(start, BM).load(layout),
            dt_bufs.index(stage * 3 + 1)._reinterpret(gl.float32, [Q], LIN).slice(start, BM).load(layout),
            dt_bufs.index(stage * 3 + 2)._reinterpret(gl.float32, [Q], LIN).slice(start, BM).load(layout))


@gluon.jit
def _opaque_ptr(p, ALIGN: gl.constexpr):
    """Pointer p (ALIGN bytes aligned) through an asm move with side effects: addresses computed from it stay
    below the move."""
    v = gl.inline_asm_elementwise("mov.b64 $0, $1;", "=l,l", [p], dtype=p.dtype, is_pure=False, pack=1)
    return gl.multiple_of(v, ALIGN)


@gluon.jit
def _tile_consts(y_desc, BLK: gl.constexpr):
    """What consumer warpgroup BLK's heads share: -> (r, c: aranges over t / s in the wgmma layout's slices,
    offs_t: its chunk rows t, causal [t, s] s <= t, zero [64, 64] fp32)."""
    BM: gl.constexpr = y_desc.block_type.shape[0]                                 # 64
    P: gl.constexpr = y_desc.block_type.shape[1]                                  # 64
    gl.static_assert(BM == P, "one accumulator layout for [t, s] and [t, p] tiles")
    # wgmma accumulator layout: 4 warps stacked along M (16 rows each), m64n64k16 instructions
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])
    r = gl.arange(0, BM, layout=gl.SliceLayout(1, mma))                           # over t
    c = gl.arange(0, BM, layout=gl.SliceLayout(0, mma))                           # over s
    offs_t = BLK * BM + r                                                         # chunk rows t
    causal = gl.expand_dims(c, 0) <= gl.expand_dims(r, 1)                         # [t, s]: s <= t
    return r, c, offs_t, causal, gl.full([BM, BM], 0.0, gl.float32, layout=mma)


@gluon.jit
def _cb(c_m, b_bufs, b_first, zero, BLK: gl.constexpr):
    """C B^T of the chunk's rows BLK*64 .. BLK*64+63 (t), B's halves in b_bufs[b_first], [b_first + 1], once for
    all heads: -> (cb_d, cb_o) [64, 64] fp32, the diagonal block [t, s] and (block 1) the off-diagonal one [t, s in
    0..63]; block 0's cb_o is cb_d (unused)."""
    cb_d = warpgroup_mma(c_m, b_bufs.index(b_first + BLK).permute((1, 0)), zero, use_acc=False, is_async=True)
    if BLK > 0:
        cb_o = warpgroup_mma(c_m, b_bufs.index(b_first).permute((1, 0)), zero, use_acc=False, is_async=True)
        cb_d, cb_o = warpgroup_mma_wait(num_outstanding=0, deps=(cb_d, cb_o))
    else:
        cb_d = warpgroup_mma_wait(num_outstanding=0, deps=(cb_d, ))
        cb_o = cb_d
    return cb_d, cb_o


@gluon.jit
def _head(y_desc, c_m, x_bufs, s_bufs, carry_bufs, dt_bufs, y_m, ready, empty, D_ptr, carry_decay_ptr, cb_d, cb_o,
          gc, row0, h, n, y_slot, length, r, c, offs_t, causal, zero, BLK: gl.constexpr, H: gl.constexpr,
          STAGES: gl.constexpr, HAS_D: gl.constexpr, HAS_CARRY: gl.constexpr, PACKED: gl.constexpr):
    """Head h's y at rows BLK*64 .. BLK*64+63 of the chunk from the ring's n-th fill (stage n % STAGES); r / c:
    aranges over t / s in the wgmma layout's slices, offs_t the chunk rows t, causal [t, s] s <= t, zero [64, 64]
    fp32 (_tile_consts)."""
    BM: gl.constexpr = y_desc.block_type.shape[0]                                 # 64
    P: gl.constexpr = y_desc.block_type.shape[1]                                  # 64
    rows_l: gl.constexpr = r.type.layout
    cols_l: gl.constexpr = c.type.layout
    mma: gl.constexpr = zero.type.layout
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    stage = n % STAGES
    if HAS_D:
        d_h = gl.load(D_ptr + h)
    if HAS_CARRY:
        carry_decay = gl.load(carry_decay_ptr + gc * H + h)

    # dtcs come with the stage (H200: 420 -> 337 us at B1 L32K against global loads after this wait)
    mbarrier.wait(ready.index(stage), (n // STAGES) & 1)
    _, hi_t, lo_t = _dtcs_smem(dt_bufs, stage, BLK * BM, rows_l)                  # [64] over t
    # state terms first (they need only the ring): the exp work below overlaps them
    a_st = warpgroup_mma(c_m, s_bufs.index(stage).permute((1, 0)), zero, use_acc=False,
                         is_async=True)                                           # C_m S_in^T [t, p]
    if HAS_CARRY:
        a_cr = warpgroup_mma(c_m, carry_bufs.index(stage).permute((1, 0)), zero, use_acc=False,
                             is_async=True)                                       # C_m carry^T [t, p]
    # vectors over s are 16 registers a thread in the wgmma layout: loaded here, just before use, and the
    # off-diagonal block finished before the diagonal one's, so few are live at once (WG 1 has 240 registers)
    hi_t2 = gl.expand_dims(hi_t, 1)
    lo_t2 = gl.expand_dims(lo_t, 1)
    x_m = x_bufs.index(stage * 2 + BLK)                                           # [64 (s), P] bf16
    if BLK > 0:
        dt_o, hi_o, lo_o = _dtcs_smem(dt_bufs, stage, 0, cols_l)                  # [64] over s in rows 0..63
        seg_o = gl.minimum((hi_t2 - gl.expand_dims(hi_o, 0)) + (lo_t2 - gl.expand_dims(lo_o, 0)), 0.0)
        m_o = cb_o * gl.exp(seg_o) * gl.expand_dims(dt_o, 0)                      # [t, s in 0..63] fp32
        m_o = gl.convert_layout(m_o.to(gl.bfloat16), op_a)                        # registers: the A operand
        a_in = warpgroup_mma(m_o, x_bufs.index(stage * 2), zero, use_acc=False, is_async=True)   # [t, p]
    dt_s, hi_s, lo_s = _dtcs_smem(dt_bufs, stage, BLK * BM, cols_l)               # [64] over s
    seg_d = gl.minimum((hi_t2 - gl.expand_dims(hi_s, 0)) + (lo_t2 - gl.expand_dims(lo_s, 0)), 0.0)
    m_d = cb_d * gl.where(causal, gl.exp(seg_d), 0.0) * gl.expand_dims(dt_s, 0)   # [t, s] fp32
    m_d = gl.convert_layout(m_d.to(gl.bfloat16), op_a)
    if BLK > 0:
        a_in = warpgroup_mma(m_d, x_m, a_in, is_async=True)                       # [t, p]
    else:
        a_in = warpgroup_mma(m_d, x_m, zero, use_acc=False, is_async=True)        # [t, p]
    # the register A operands (m_d) are deps too: kept alive until the wgmmas reading them are done, as
    # Triton's own pipeliner does
    if HAS_CARRY:
        a_st, a_cr, a_in, m_d = warpgroup_mma_wait(num_outstanding=0, deps=(a_st, a_cr, a_in, m_d))
        a_st = a_st + carry_decay * a_cr
    else:
        a_st, a_in, m_d = warpgroup_mma_wait(num_outstanding=0, deps=(a_st, a_in, m_d))
    if HAS_D:
        xv = x_m.load(mma).to(gl.float32)             # x_t for D x [t, p], read once a_cr is folded in
    mbarrier.arrive(empty.index(stage), count=1)                                  # the stage may be refilled
    acc = a_in + a_st * gl.expand_dims(gl.exp(hi_t), 1)                           # y [t, p] fp32
    if HAS_D:
        acc = acc + d_h * xv

    if PACKED:
        if length < 2 * BM:               # the rows past the slot's sequence end are not y's: not stored
            # addresses from y_slot and length (captures): LLVM hoists what only kernel arguments and the
            # thread index give above the partitions' dispatch, where ptxas spilled it (8-16 B)
            y_rows = gl.minimum(offs_t, length - 1)
            y_offs = gl.expand_dims(y_rows * (H * P) + h * P, 1) + gl.expand_dims(c, 0)   # [t, p] in y's rows
            t_ok = gl.expand_dims(offs_t, 1) + gl.expand_dims(c * 0, 0) < length
            gl.store(y_slot + y_offs, acc.to(gl.bfloat16), mask=t_ok)
        else:
            _store_box(y_desc, y_m, acc, row0 + BLK * BM, h * P)
    else:
        _store_box(y_desc, y_m, acc, row0 + BLK * BM, h * P)


@gluon.jit
def _consumer(y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, dt_bufs, y_smem, bc_bar, ready, empty, D_ptr,
              carry_decay_ptr, gc, row0, g, y_slot, length, BLK: gl.constexpr, H: gl.constexpr, HPG: gl.constexpr,
              STAGES: gl.constexpr, HAS_D: gl.constexpr, HAS_CARRY: gl.constexpr, PACKED: gl.constexpr):
    """A consumer warpgroup (4 warps): rows BLK*64 .. BLK*64+63 of the chunk (t), for the group's HPG heads.
    Packed: y_slot y's row row0 (y [T, H*P] contiguous), length the slot's rows."""
    r, c, offs_t, causal, zero = _tile_consts(y_desc, BLK)
    c_m = c_smem.index(BLK)                                                       # [64, N] bf16
    y_m = y_smem.index(BLK)                                                       # [64, P] bf16

    mbarrier.wait(bc_bar, 0)
    cb_d, cb_o = _cb(c_m, b_smem, 0, zero, BLK)
    for i in range(HPG):
        _head(y_desc, c_m, x_bufs, s_bufs, carry_bufs, dt_bufs, y_m, ready, empty, D_ptr, carry_decay_ptr, cb_d,
              cb_o, gc, row0, g * HPG + i, i, y_slot, length, r, c, offs_t, causal, zero, BLK, H, STAGES, HAS_D,
              HAS_CARRY, PACKED)
    tma.store_wait(pendings=0)


@gluon.jit
def _consumer_persistent(y_desc, cb_smem, x_bufs, s_bufs, carry_bufs, dt_bufs, y_smem, cb_ready, b_free, c_free,
                         ready, empty, D_ptr, carry_decay_ptr, pid, n_progs, seqlen, chunks_per_row, y_ptr, table_ptr,
                         n_table, BLK: gl.constexpr, H: gl.constexpr, G: gl.constexpr, HPG: gl.constexpr,
                         STAGES: gl.constexpr, HAS_D: gl.constexpr, HAS_CARRY: gl.constexpr, PACKED: gl.constexpr):
    """_consumer over this program's tiles (_producer_persistent's walk and C / B pairs): its k-th tile with rows
    frees B once C B^T has read it (b_free) and C after its last head (c_free[k % 2]); the ring's fill count and
    the y buffer's store wait run on across tiles."""
    Q: gl.constexpr = 2 * y_desc.block_type.shape[0]
    P: gl.constexpr = y_desc.block_type.shape[1]
    r, c, offs_t, causal, zero = _tile_consts(y_desc, BLK)
    y_m = y_smem.index(BLK)                                                       # [64, P] bf16
    k = 0                                                                         # tiles with rows so far
    for tile in range(pid, n_table * G, n_progs):
        if PACKED:
            # what only kernel arguments and the thread index give (the table's rows, y_ptr + the thread's
            # columns) LLVM hoists above the partitions' dispatch, where ptxas spills it: per tile instead
            tbl = _opaque_ptr(table_ptr, 4)
        else:
            tbl = table_ptr
        gc, g, row0, length, _, _, y_slot = _tile(tile, seqlen, chunks_per_row, y_ptr, tbl, n_table, G, H, P, Q,
                                                  PACKED)
        if length > 0:
            if PACKED:
                y_slot = _opaque_ptr(y_slot, 16)                    # 16-byte aligned, as TMA asks of y
            pair = k % 3
            c_m = cb_smem.index(2 * pair + BLK)                                   # [64, N] bf16
            mbarrier.wait(cb_ready.index(k % 2), (k // 2) & 1)
            cb_d, cb_o = _cb(c_m, cb_smem, 2 * ((pair + 1) % 3), zero, BLK)
            mbarrier.arrive(b_free, count=1)                                      # B's pair may take tile k + 1's C
            for i in range(HPG):
                _head(y_desc, c_m, x_bufs, s_bufs, carry_bufs, dt_bufs, y_m, ready, empty, D_ptr, carry_decay_ptr,
                      cb_d, cb_o, gc, row0, g * HPG + i, k * HPG + i, y_slot, length, r, c, offs_t, causal,
                      zero, BLK, H, STAGES, HAS_D, HAS_CARRY, PACKED)
            mbarrier.arrive(c_free.index(k % 2), count=1)                         # C's pair may take tile k + 2's B
            k += 1
    tma.store_wait(pendings=0)


@gluon.jit
def _chunk_scan_kernel(x_desc, b_desc, c_desc, s_desc, carry_desc, y_desc, dt_desc, D_ptr, carry_decay_ptr, seqlen,
                       chunks_per_row, seg_len, dt_plane_rows, y_ptr, table_ptr, n_table, H: gl.constexpr,
                       G: gl.constexpr, STAGES: gl.constexpr, HAS_D: gl.constexpr, HAS_CARRY: gl.constexpr,
                       PACKED: gl.constexpr, CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr,
                       PERSISTENT: gl.constexpr = False):
    """x_desc / y_desc: [B*L, H*P] in [64, P] boxes; b_desc / c_desc: [B*L, G*N] in [64, N] boxes; s_desc:
    s_in [n_chunks*H*P, N], carry_desc: carry [n_seg*H*P, N] (s_desc again without carry), [P, N] boxes; dt_desc:
    dtcs [3, B, H, L] fp32 as [3*B*H, L] rows (dt_plane_rows = B*H a plane) in [1, Q] boxes; D [H] fp32,
    carry_decay [n_chunks, H] fp32; n_table: the chunks (packed: table slots). Grid (n_table * G, ): a chunk's
    CTAs are adjacent, so its rows of x stay in L2; PERSISTENT: grid (min(#SMs, n_table * G), ), program p walks
    tiles p, p + #programs, ... (the same order a wave at a time). Packed: the views' rows are [T, .], table
    [5, n_table] int32 (sequence, start, length, first, last), y_ptr y [T, H*P] contiguous, dtcs
    [3, 1, H, n_table Q]; batched, y_ptr and table_ptr are unused, packed seqlen and chunks_per_row."""
    HPG: gl.constexpr = H // G
    Q: gl.constexpr = 2 * x_desc.block_type.shape[0]                              # two 64-row blocks per chunk
    P: gl.constexpr = x_desc.block_type.shape[1]
    if not PERSISTENT:
        gc, g, row0, length, dt_row, dt_col, y_slot = _tile(gl.program_id(0), seqlen, chunks_per_row, y_ptr,
                                                            table_ptr, n_table, G, H, P, Q, PACKED)
        if PACKED:
            if length == 0:                                                       # a padding slot: no rows
                return

    # shared memory (carry): C, B [2, 64, N] 32 KB each; ring: x [STAGES*2, 64, P] 32 KB, S_in and the carry
    # [STAGES, P, N] 32 KB each, dtcs [STAGES*3, 1, Q] fp32 3 KB; y [2, 64, P] 16 KB: 179 KB; persistent: 3 pairs
    # for C and B (the next tile's C lands while this one's heads read theirs), 211 KB
    if PERSISTENT:
        c_smem = gl.allocate_shared_memory(c_desc.dtype, [6] + c_desc.block_type.shape, c_desc.layout)
        b_smem = c_smem
    else:
        c_smem = gl.allocate_shared_memory(c_desc.dtype, [2] + c_desc.block_type.shape, c_desc.layout)
        b_smem = gl.allocate_shared_memory(b_desc.dtype, [2] + b_desc.block_type.shape, b_desc.layout)
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES * 2] + x_desc.block_type.shape, x_desc.layout)
    s_bufs = gl.allocate_shared_memory(s_desc.dtype, [STAGES] + s_desc.block_type.shape, s_desc.layout)
    if HAS_CARRY:
        carry_bufs = gl.allocate_shared_memory(carry_desc.dtype, [STAGES] + carry_desc.block_type.shape,
                                               carry_desc.layout)
    else:
        carry_bufs = s_bufs                                                       # never read
    dt_bufs = gl.allocate_shared_memory(gl.float32, [STAGES * 3] + dt_desc.block_type.shape, dt_desc.layout)
    y_smem = gl.allocate_shared_memory(y_desc.dtype, [2] + y_desc.block_type.shape, y_desc.layout)
    bc_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())    # persistent: B free
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    if PERSISTENT:
        cb_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())   # tile k: C, B landed
        c_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())     # tile k: C read
        mbarrier.init(bc_bar, count=2)                # one arrival per consumer warpgroup
        for i in gl.static_range(2):
            mbarrier.init(cb_ready.index(i), count=1)
            mbarrier.init(c_free.index(i), count=2)
    else:
        mbarrier.init(bc_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)        # the producer's expect-tx arrival
        mbarrier.init(empty.index(i), count=2)        # one arrival per consumer warpgroup
    fence_async_shared()                              # barrier inits visible to the async proxy (TMA)

    BLK0: gl.constexpr = 0
    BLK1: gl.constexpr = 1
    # (argument tuples written out: a tuple sum here would turn the constexprs into plain ints)
    if PERSISTENT:
        pid = gl.program_id(0)
        n_progs = gl.num_programs(0)
        gl.warp_specialize([
            (_consumer_persistent, (y_desc, c_smem, x_bufs, s_bufs, carry_bufs, dt_bufs, y_smem, cb_ready, bc_bar,
                                    c_free, ready, empty, D_ptr, carry_decay_ptr, pid, n_progs, seqlen,
                                    chunks_per_row, y_ptr, table_ptr, n_table, BLK0, H, G, HPG, STAGES, HAS_D,
                                    HAS_CARRY, PACKED)),
            (_consumer_persistent, (y_desc, c_smem, x_bufs, s_bufs, carry_bufs, dt_bufs, y_smem, cb_ready, bc_bar,
                                    c_free, ready, empty, D_ptr, carry_decay_ptr, pid, n_progs, seqlen,
                                    chunks_per_row, y_ptr, table_ptr, n_table, BLK1, H, G, HPG, STAGES, HAS_D,
                                    HAS_CARRY, PACKED)),
            (_producer_persistent, (x_desc, b_desc, c_desc, s_desc, carry_desc, dt_desc, c_smem, x_bufs, s_bufs,
                                    carry_bufs, dt_bufs, cb_ready, bc_bar, c_free, ready, empty, pid, n_progs,
                                    seqlen, chunks_per_row, seg_len, dt_plane_rows, y_ptr, table_ptr, n_table, H,
                                    G, HPG, STAGES, HAS_CARRY, PACKED)),
        ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
    else:
        gl.warp_specialize([
            # default partition (num_warps = 4): consumer of rows 0..63
            (_consumer, (y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, dt_bufs, y_smem, bc_bar, ready, empty,
                         D_ptr, carry_decay_ptr, gc, row0, g, y_slot, length, BLK0, H, HPG, STAGES, HAS_D, HAS_CARRY,
                         PACKED)),
            # worker, 4 warps: consumer of rows 64..127
            (_consumer, (y_desc, c_smem, b_smem, x_bufs, s_bufs, carry_bufs, dt_bufs, y_smem, bc_bar, ready, empty,
                         D_ptr, carry_decay_ptr, gc, row0, g, y_slot, length, BLK1, H, HPG, STAGES, HAS_D, HAS_CARRY,
                         PACKED)),
            # worker, 1 warp: TMA loads
            (_producer, (x_desc, b_desc, c_desc, s_desc, carry_desc, dt_desc, c_smem, b_smem, x_bufs, s_bufs,
                         carry_bufs, dt_bufs, bc_bar, ready, empty, gc, row0, g, seg_len, dt_row, dt_col,
                         dt_plane_rows, H, HPG, STAGES, HAS_CARRY)),
        ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


def chunk_scan_launch(x, dtcs, B, C, D, table, s_in, carry_decay, carry, y, geometry: dict, cfg: dict,
                      dot_precision: str, persistent: bool | None = None):
    """Stage 3 over all chunks into y [B, L, H, P]: the Triton chunk_scan_launch's signature (the op swaps the
    module), in gluon_eligible's scope: x / y [B, L, H, P] and B / C [B, L, G, N] bf16 that read as [B*L, H*P] /
    [B*L, G*N] TMA views, s_in / carry bf16 contiguous, dtcs chunk_cumsum_launch's; cfg and dot_precision unused.
    Host: seven descriptor builds (~2 us each on a CI CPU; the probe also rebuilt the layouts, ~6 us each), then
    Gluon's JIT launch: Triton's argument binding plus, in the launcher, one cuTensorMapEncodeTiled per descriptor
    (not measurable without a GPU: scripts/launcher_host_time.py --cuda). persistent: the persistent grid or one
    CTA a tile (the probe's A/B); None: the size rule, persistent from PERSISTENT_MIN_WAVES waves of tiles.
    -> the launched CompiledKernel."""
    assert geometry["Q"] == Q, "ssd_scan gluon chunk_scan: out of scope"
    bsz, seqlen, nheads, _ = x.shape
    packed = table is not None
    assert not packed or (bsz == 1 and y.is_contiguous()), "ssd_scan gluon chunk_scan: packed y [1, T, H, P]"
    ngroups = B.shape[2]
    rows = bsz * seqlen
    x_desc = TensorDescriptor(x, [rows, nheads * P], [x.stride(1), 1], [BLOCK_M, P], XY_LAYOUT)
    y_desc = TensorDescriptor(y, [rows, nheads * P], [y.stride(1), 1], [BLOCK_M, P], XY_LAYOUT)
    b_desc = TensorDescriptor(B, [rows, ngroups * N], [B.stride(1), 1], [BLOCK_M, N], BCS_LAYOUT)
    c_desc = TensorDescriptor(C, [rows, ngroups * N], [C.stride(1), 1], [BLOCK_M, N], BCS_LAYOUT)
    # the states [n, H, P, N] contiguous as [n*H*P, N]
    s_desc = TensorDescriptor(s_in, [s_in.shape[0] * nheads * P, N], [N, 1], [P, N], BCS_LAYOUT)
    carry_desc = s_desc if carry is None else \
        TensorDescriptor(carry, [carry.shape[0] * nheads * P, N], [N, 1], [P, N], BCS_LAYOUT)
    # dtcs [3, B, H, len] as [3*B*H, len] rows: chunk_cumsum_launch's fresh tensor (a 16-byte aligned base) with
    # len = L (a multiple of Q here) or n_table Q, so the row stride is a multiple of 16 bytes, as TMA needs
    row_len = geometry["dtcs_len"]
    assert dtcs.is_contiguous() and dtcs.shape[-1] == row_len and row_len % Q == 0, \
        "ssd_scan gluon chunk_scan: dtcs [3, B, H, len] contiguous, len a multiple of the chunk"
    dt_desc = TensorDescriptor(dtcs, [dtcs.numel() // row_len, row_len], [row_len, 1], [1, Q], DT_LAYOUT)
    tiles = geometry["n_table"] * ngroups                 # batched: n_table = n_chunks
    sms = sm_count(x.device, 1)
    if persistent is None:
        persistent = tiles >= PERSISTENT_MIN_WAVES * sms
    if persistent:
        grid, knob = (min(tiles, sms), ), dict(PERSISTENT=True)
    else:
        grid, knob = (tiles, ), {}                          # one CTA a tile: PERSISTENT at its default
    return _chunk_scan_kernel[grid](
        x_desc, b_desc, c_desc, s_desc, carry_desc, y_desc, dt_desc, D if D is not None else carry_decay,
        carry_decay, row_len, geometry["chunks_per_row"], geometry["seg_len"], dtcs.shape[1] * nheads, y,
        table if packed else carry_decay, geometry["n_table"], H=nheads, G=ngroups, STAGES=STAGES,
        HAS_D=D is not None, HAS_CARRY=carry is not None, PACKED=packed, CONSUMER_REGS=CONSUMER_REGS,
        PRODUCER_REGS=PRODUCER_REGS, num_warps=4, maxnreg=MAXNREG, **knob)


def aot_compile_all():
    """(name, CompiledKernel) for sm_90a at Nemotron-H's shape (H=64, G=8) of every variant the op dispatches:
    batched and packed, with and without D, with and without a carry, one CTA a tile and on the persistent grid
    (16): needs Triton 3.6 (the Gluon API the kernel is written for), no GPU."""
    from .common import aot_compile_gluon
    xy = f"tensordesc<bf16[{BLOCK_M}, {P}],{XY_LAYOUT!r}>"
    bcs = f"tensordesc<bf16[{BLOCK_M}, {N}],{BCS_LAYOUT!r}>"
    types = {"x_desc": xy, "y_desc": xy, "b_desc": bcs, "c_desc": bcs, "s_desc": bcs, "carry_desc": bcs,
             "dt_desc": f"tensordesc<fp32[1, {Q}],{DT_LAYOUT!r}>", "D_ptr": "*fp32", "carry_decay_ptr": "*fp32",
             "seqlen": "i32", "chunks_per_row": "i32", "seg_len": "i32", "dt_plane_rows": "i32", "y_ptr": "*bf16",
             "table_ptr": "*i32", "n_table": "i32"}
    # what the JIT launcher specialises at B1 L32K (pointers 16-byte aligned, seqlen / chunks_per_row / B*H
    # multiples of 16) and at the bench's 16 packed sequences (260 table slots, seqlen = 260 Q)
    aligned = ("D_ptr", "carry_decay_ptr", "seqlen", "chunks_per_row", "dt_plane_rows")
    packed_aligned = ("D_ptr", "carry_decay_ptr", "seqlen", "dt_plane_rows", "y_ptr", "table_ptr")
    for persistent, packed, has_d, has_carry in itertools.product((False, True), repeat=4):
        constexprs = {"H": 64, "G": 8, "STAGES": STAGES, "HAS_D": has_d, "HAS_CARRY": has_carry,
                      "PACKED": packed, "CONSUMER_REGS": CONSUMER_REGS, "PRODUCER_REGS": PRODUCER_REGS,
                      "PERSISTENT": persistent}
        yield (f"ssd_chunk_scan_gluon D={has_d} carry={has_carry}" + (" packed" if packed else "")
               + (" persistent" if persistent else ""),
               aot_compile_gluon(_chunk_scan_kernel, types, constexprs,
                                 aligned=packed_aligned if packed else aligned, num_warps=4, maxnreg=MAXNREG))
