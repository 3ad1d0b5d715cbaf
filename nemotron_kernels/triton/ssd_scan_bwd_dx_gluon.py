"""SSD scan backward, the dx kernel on Hopper (Gluon, sm_90a): bwd_dx_launch's outputs from a warp-specialised kernel.

Math (the Triton kernel's, _ssd_bwd_dx_kernel in ssd_scan_bwd_chunk_scan.py), per (chunk, head); cs = stage 0's
cumulative dt A from the chunk start (fp32 hi + lo), M[t, s] = (C_t . B_s) exp(min((hi_t - hi_s) + (lo_t - lo_s), 0))
for s <= t, else 0:
    S = S_in + carry_decay carry,  G = G_out + gcarry_decay gcarry      fp32 [P, N] (carry only where decay != 0)
    SC = C S^T,  GB = exp(cs_Q - cs_s) B G^T       [Q, P]: bf16 products of S, G rounded to bf16, fp32 sums
    dxpre_s = sum_t M[t, s] dy_t + GB_s            (M rounded to bf16 for the product)
    dx_s = dt_s dxpre_s + D dy_s                   bf16
    da_k = sum_mb da_part[mb, k] (the da kernel's intra-chunk pairs) + exp(cs_Q) <G, S>
           + sum_{s<k} V_s + sum_{t>=k} Z_t,   V_s = dt_s x_s . GB_s,  Z_t = exp(hi_t) dy_t . SC_t
    ddt_s = (x_s . dxpre_s + A da_s) sigmoid(dt_raw_s + dt_bias)             in dt's dtype
    dA_part = sum_k dt_k da_k (fp64),  dD_part = sum_t (dy_t . x_t) (fp32 rows, fp64 sum),
    dbias_part = sum_s ddt_s (fp32 sum, then fp64)                          [n_chunks, H] each
Differences from Triton: the order of fp32 sums (wgmma K order, GB added first, the scans' tree) only; on the H200
dx and ddt came out bitwise equal, the fp64 partial sums within 1e-7 (scripts/probe_ssd_bwd_dx_gluon.py).
Scope (ops/ssd_scan.py gluon_eligible "dx"; else the Triton kernel runs): batched with L a multiple of Q = 128, or
packed (cu_seqlens, B = 1, any lengths); P = 64, N = 128, bf16 x / dy / B / C / states, D and dt_bias present, dt
softplus; any H, G; with or without the carries (one segment: none; that build first ran on a GPU with the op's
tests, B1 L128).
Packed (PACKED): CTA gc is slot gc of the chunk table (rows start .. start + length - 1, dtcs at slot position
gc Q). Its boxes also hold the next sequence's rows (or TMA's zeros past T), where Triton loads zeros; what they
would add to a valid row is masked: CB^T's columns t >= length (their dy_t would reach dxpre_s), Z_t, dy_t . x_t,
and da_part's row blocks past the end (never written); dt_s is 0 there (stage 0), which zeroes V_s. ddt, the
partial sums and dx keep the valid rows only (a partial slot's dx by masked register stores: a TMA box would
overwrite the next sequence's); padding slots (length 0) write zero partial sums and exit, as Triton's programs.

Design: one CTA per (chunk, group), walking the group's heads (Triton: one program per (chunk, head), C B^T
recomputed by each); gl.warp_specialize, 9 warps (padded to 12):
  - the 8 math warps (the default partition, 2 warpgroups over the chunk's 128 rows),
  - a 1-warp producer (24 registers): TMA loads of C and B [Q, N] once, then per head x, dy [Q, P] and S_in,
    G_out [P, N] into a 2-stage ring (ready / empty mbarriers, one math-side arrival per head).
The math: CB^T [s, t] = B C^T once per CTA (4 wgmmas of 32 columns t, zeroed where t < s, kept in registers for
all heads). Per head: S, G from the ring (+ the carries where their decay is not 0, then written back in bf16),
<G, S>; async wgmmas SC = C S^T and GB = B G^T; Z, dD, V in the accumulator layout; M^T built in registers 32
columns at a time, each piece the register A operand of a wgmma against dy's rows accumulating onto GB; meanwhile
da's scans; then ddt, dx, the three partial sums (one reduction), ddt by plain stores, dx by TMA store.
Shared memory: C, B 64 KB; ring 2 x (x, dy, S_in, G_out) 128 KB; dx 16 KB; cs 1 KB: 210 KB, one CTA per SM.
H200, B1 L32K (the probe, session 26): 980 us against Triton's 1,455 (L1K: 149 against 115, host launch cost).
Imported only where gluon_eligible holds (never interpreted: Gluon has no interpreter), so not via kernel_module."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .ssd_scan_gluon_common import (BC_LAYOUT, S_LAYOUT, X_LAYOUT, N, P, Q, _barrier, _batched_chunk, _dtcs_row,
                                    _load_boxes, _release, _ring_barriers, _smem_box, _smem_ring, _store_box,
                                    _wait_free)

STAGES = 2                      # the per-head ring (x, dy, S_in, G_out: 64 KB a stage)
MATH_WARPS = 8                  # two warpgroups over the chunk's 128 rows (the default partition)
PRODUCER_REGS = 24              # setmaxnreg target of the TMA warp
MAXNREG = 168                   # 12 warps x 32 threads x 168 <= 64K registers at launch


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def _add3(a0, a1, a2, b0, b1, b2):
    return a0 + b0, a1 + b1, a2 + b2


@gluon.jit
def _producer(x_desc, dy_desc, b_desc, c_desc, s_desc, g_desc, c_smem, b_smem, x_bufs, dy_bufs, s_bufs, g_bufs,
              bc_bar, ready, empty, gc, row0, g, H: gl.constexpr, HPG: gl.constexpr, STAGES: gl.constexpr):
    """One warp: C and B rows [Q, N] of the chunk (group g) once (bc_bar), then head i of the group into stage
    i % STAGES (ready): x, dy [Q, P] (head h's columns of the [B*L, H*P] views), S_in and G_out [P, N] (rows
    (gc H + h) P of the [n_chunks*H*P, N] views)."""
    P: gl.constexpr = x_desc.block_type.shape[1]
    _load_boxes(c_desc, b_desc, row0, g, bc_bar, c_smem, b_smem)
    STAGE_BYTES: gl.constexpr = (x_desc.block_type.nbytes + dy_desc.block_type.nbytes + s_desc.block_type.nbytes
                                 + g_desc.block_type.nbytes)
    for i in range(HPG):
        h = g * HPG + i
        stage = _wait_free(empty, i, STAGES)                                      # head i - STAGES released
        mbarrier.expect(ready.index(stage), STAGE_BYTES)
        tma.async_copy_global_to_shared(x_desc, [row0, h * P], ready.index(stage), x_bufs.index(stage))
        tma.async_copy_global_to_shared(dy_desc, [row0, h * P], ready.index(stage), dy_bufs.index(stage))
        tma.async_copy_global_to_shared(s_desc, [(gc * H + h) * P, 0], ready.index(stage), s_bufs.index(stage))
        tma.async_copy_global_to_shared(g_desc, [(gc * H + h) * P, 0], ready.index(stage), g_bufs.index(stage))


@gluon.jit
def _causal(cbt, T0: gl.constexpr, mma: gl.constexpr, length, PACKED: gl.constexpr):
    """CB^T's block [Q (s), TQ (t = T0 ..)] zeroed where t < s (packed: and where t >= length, the next sequence's
    rows), once per CTA, so the head loop applies no mask (a mask in the loop is loop-invariant: LLVM hoisted it
    out, 64 predicates a thread held across the loop)."""
    t = gl.expand_dims(T0 + gl.arange(0, cbt.shape[1], layout=gl.SliceLayout(0, mma)), 0)
    s = gl.expand_dims(gl.arange(0, cbt.shape[0], layout=gl.SliceLayout(1, mma)), 1)
    keep = t >= s
    if PACKED:
        keep = keep & (t < length)
    return gl.where(keep, cbt, 0.0)


@gluon.jit
def _mt_block(cbt, hl_smem, T0: gl.constexpr, hi_s2, lo_s2, mma: gl.constexpr, op_a: gl.constexpr):
    """Columns t = T0 .. T0+TQ-1 of M^T [s, t] = CB^T exp(min((hi_t - hi_s) + (lo_t - lo_s), 0)) for t >= s, as
    Triton rounds M (bf16), in the wgmma A-operand layout. cbt: CB^T's block [Q (s), TQ (t)] fp32, 0 where t < s
    (_causal: 0 times a decay in [0, 1] is Triton's masked 0); hl_smem: cs hi [Q] then lo [Q] over t; hi_s2 /
    lo_s2: [Q, 1] over s."""
    Q: gl.constexpr = cbt.shape[0]
    TQ: gl.constexpr = cbt.shape[1]
    # the column vectors come from shared memory after the stage wait: loaded from global memory in this layout
    # (16 registers a piece) they were hoisted to the loop top and spilled
    hi_t = gl.expand_dims(hl_smem.slice(T0, TQ).load(gl.SliceLayout(0, mma)), 0)        # [1, TQ] over t
    lo_t = gl.expand_dims(hl_smem.slice(Q + T0, TQ).load(gl.SliceLayout(0, mma)), 0)
    seg = gl.minimum((hi_t - hi_s2) + (lo_t - lo_s2), 0.0)                            # Triton's operand order
    mt = cbt * gl.exp(seg)                                                            # [s, t] fp32
    # accumulator layout -> A-operand layout of the same warps: a register shuffle
    return gl.convert_layout(mt.to(gl.bfloat16), op_a)


@gluon.jit
def _consumer(c_smem, b_smem, x_bufs, dy_bufs, s_bufs, g_bufs, dx_smem, hl_smem, bc_bar, ready, empty, dx_desc,
              dt_ptr, dtcs_ptr, A_ptr, D_ptr, dt_bias_ptr, carry_decay_ptr, carry_ptr, gcarry_decay_ptr, gcarry_ptr,
              da_part_ptr, ddt_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr, gc, b, c, row0, g, seqlen, seg_len,
              n_seg, plane, stride_dt_b, stride_dt_l, dx_ptr, length, H: gl.constexpr, HPG: gl.constexpr,
              STAGES: gl.constexpr, M_BLOCKS: gl.constexpr, HAS_CARRY: gl.constexpr, PACKED: gl.constexpr):
    """The math (8 warps): rows r = 0..127 of the chunk (as s or t), the group's HPG heads in turn; each stage is
    released to the producer warp (empty) once read. Packed: seqlen is the dtcs row length (n_table Q), dx_ptr dx
    [T, H*P] contiguous, length the slot's rows (r_ok: the rows r < length)."""
    Q: gl.constexpr = x_bufs.shape[1]                                             # 128
    P: gl.constexpr = x_bufs.shape[2]                                             # 64
    N: gl.constexpr = c_smem.shape[1]                                             # 128
    TQ: gl.constexpr = Q // 4                                                     # t columns of an M^T piece
    # wgmma accumulator layouts: warpgroup w holds rows 64 w .. 64 w + 63; m64n64k16 for the [row, p] tiles,
    # m64n32k16 for CB^T / M^T pieces (4 pieces of 32 columns: half the live temporaries of 2 x 64)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, P, 16])
    mmq: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, TQ, 16])
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    rows_l: gl.constexpr = gl.SliceLayout(1, mma)                                 # [Q] over rows: 2 a thread
    vec: gl.constexpr = gl.BlockedLayout([1], [32], [8], [0])                     # [Q] for the scans
    st_l: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [8, 1], [1, 0])        # [P, N] states, 16 B a load
    r = gl.arange(0, Q, layout=rows_l)
    zero = gl.full([Q, P], 0.0, gl.float32, layout=mma)
    pn_offs = (gl.expand_dims(gl.arange(0, P, layout=gl.SliceLayout(1, st_l)), 1) * N
               + gl.expand_dims(gl.arange(0, N, layout=gl.SliceLayout(0, st_l)), 0))   # [P, N]
    plane64 = plane.to(gl.int64)                                                  # 3 planes may pass 2^31
    hl_i = gl.arange(0, 2 * Q, layout=gl.BlockedLayout([1], [32], [8], [0]))     # [2Q]: cs hi, lo; 1 a thread
    hl_offs = (1 + hl_i // Q).to(gl.int64) * plane64 + hl_i % Q
    seg = gc // seg_len                                                           # the carries' segment
    if PACKED:
        dt_rows = dt_ptr + (row0 + r).to(gl.int64) * stride_dt_l                  # [Q] of head 0
        r_ok = r < length
        end = length - 1                                                          # cs_Q: at the slot's last row
    else:
        dt_rows = dt_ptr + b.to(gl.int64) * stride_dt_b + (c * Q + r).to(gl.int64) * stride_dt_l   # [Q] of head 0
        end = Q - 1
    ddt_ty: gl.constexpr = ddt_ptr.dtype.element_ty

    # CB^T [s, t] once for all heads (Triton recomputes C B^T per head), 4 pieces of TQ columns t, fp32 [Q, TQ]
    mbarrier.wait(bc_bar, 0)
    zq = gl.full([Q, TQ], 0.0, gl.float32, layout=mmq)
    cbt_0 = warpgroup_mma(b_smem, c_smem.slice(0, TQ).permute((1, 0)), zq, use_acc=False, is_async=True)
    cbt_1 = warpgroup_mma(b_smem, c_smem.slice(TQ, TQ).permute((1, 0)), zq, use_acc=False, is_async=True)
    cbt_2 = warpgroup_mma(b_smem, c_smem.slice(2 * TQ, TQ).permute((1, 0)), zq, use_acc=False, is_async=True)
    cbt_3 = warpgroup_mma(b_smem, c_smem.slice(3 * TQ, TQ).permute((1, 0)), zq, use_acc=False, is_async=True)
    cbt_0, cbt_1, cbt_2, cbt_3 = warpgroup_mma_wait(num_outstanding=0, deps=(cbt_0, cbt_1, cbt_2, cbt_3))
    cbt_0 = _causal(cbt_0, 0, mmq, length, PACKED)
    cbt_1 = _causal(cbt_1, TQ, mmq, length, PACKED)
    cbt_2 = _causal(cbt_2, 2 * TQ, mmq, length, PACKED)
    cbt_3 = _causal(cbt_3, 3 * TQ, mmq, length, PACKED)

    for i in range(HPG):
        h = g * HPG + i
        stage = i % STAGES
        head_chunk = gc.to(gl.int64) * H + h
        # per-head vectors and scalars: plain loads, issued before the stage is waited for
        if PACKED:
            row = dtcs_ptr + (h.to(gl.int64) * seqlen + gc * Q)                   # head h's dtcs at slot gc
        else:
            row = _dtcs_row(dtcs_ptr, b, c, h, seqlen, H, Q)                        # head h's dtcs at the chunk
        dt_s = gl.load(row + r)                                                   # [Q] over s
        hi_s = gl.load(row + plane64 + r)
        lo_s = gl.load(row + 2 * plane64 + r)
        hl = gl.load(row + hl_offs)                                               # [2Q]: cs hi, lo over t
        end_hi = gl.load(row + plane64 + end)                                     # cs_Q
        end_lo = gl.load(row + 2 * plane64 + end)
        a_h = gl.load(A_ptr + h)
        d_h = gl.load(D_ptr + h)
        if PACKED:                                                                # no rows past T
            pre = gl.load(dt_rows + h, mask=r_ok, other=0.0).to(gl.float32) + gl.load(dt_bias_ptr + h)
        else:
            pre = gl.load(dt_rows + h).to(gl.float32) + gl.load(dt_bias_ptr + h)
        scale = gl.where(pre > 20.0, 1.0, 1.0 / (1.0 + gl.exp(-gl.minimum(pre, 20.0))))   # softplus'
        da = gl.zeros([Q], gl.float32, layout=rows_l)
        for mb in gl.static_range(M_BLOCKS):      # row block mb of the da kernel wrote the columns up to its end
            mb_ok = r < (mb + 1) * (Q // M_BLOCKS)
            if PACKED:                            # (blocks past the slot's end wrote nothing)
                mb_ok = mb_ok & (mb * (Q // M_BLOCKS) < length)
            da += gl.load(da_part_ptr + ((gc * M_BLOCKS + mb) * H + h).to(gl.int64) * Q + r, mask=mb_ok, other=0.0)
        if HAS_CARRY:                             # Triton loads a carry only where its decay is not 0
            decay = gl.load(carry_decay_ptr + head_chunk)
            gdecay = gl.load(gcarry_decay_ptr + head_chunk)
        hl_smem.store(hl)                         # (the compiler's barrier orders it after the last head's reads)

        mbarrier.wait(ready.index(stage), (i // STAGES) & 1)
        s_slot = s_bufs.index(stage)
        g_slot = g_bufs.index(stage)
        x_slot = x_bufs.index(stage)
        dy_slot = dy_bufs.index(stage)
        S = s_slot.load(st_l).to(gl.float32)                                      # [P, N]
        Gs = g_slot.load(st_l).to(gl.float32)                                     # [P, N]
        if HAS_CARRY:             # the completed states, rounded to bf16 in place for the products (as Triton)
            if decay != 0.0:      # (the carries load here, not before the wait: prefetched, they spilled)
                carry = gl.load(carry_ptr + (seg * H + h).to(gl.int64) * (P * N) + pn_offs)
                S += decay * carry.to(gl.float32)
                s_slot.store(S.to(gl.bfloat16))
            if gdecay != 0.0:
                gcarry = gl.load(gcarry_ptr + ((n_seg - 1 - seg) * H + h).to(gl.int64) * (P * N) + pn_offs)
                Gs += gdecay * gcarry.to(gl.float32)
                g_slot.store(Gs.to(gl.bfloat16))
            fence_async_shared()                                                  # generic writes -> wgmma reads
        gs = gl.sum(gl.sum(Gs * S, axis=1), axis=0)                               # <G, S> fp32, before the
        # state products: S, G die before their accumulators live
        a_sc = warpgroup_mma(c_smem, s_slot.permute((1, 0)), zero, use_acc=False, is_async=True)   # C S^T [t, p]
        a_gb = warpgroup_mma(b_smem, g_slot.permute((1, 0)), zero, use_acc=False, is_async=True)   # B G^T [s, p]
        hi_s2 = gl.expand_dims(gl.convert_layout(hi_s, gl.SliceLayout(1, mmq)), 1)   # same rows: no data moves
        lo_s2 = gl.expand_dims(gl.convert_layout(lo_s, gl.SliceLayout(1, mmq)), 1)
        a_sc, a_gb = warpgroup_mma_wait(num_outstanding=0, deps=(a_sc, a_gb))

        # each accumulator is used up before the next tile is loaded (CB^T holds 64 registers a thread)
        dyf = dy_slot.load(mma).to(gl.float32)                                    # [t, p]
        z = gl.sum(dyf * a_sc, axis=1) * gl.exp(hi_s)                             # Z [Q] over t
        xf = x_slot.load(mma).to(gl.float32)                                      # [s, p]
        dd_rows = gl.sum(dyf * xf, axis=1)                                        # dy_t . x_t
        if PACKED:                                                                # the next sequence's dy
            z = gl.where(r_ok, z, 0.0)
            dd_rows = gl.where(r_ok, dd_rows, 0.0)
        to_end = gl.exp((end_hi - hi_s) + (end_lo - lo_s))                        # exp(cs_Q - cs_s)
        gb = a_gb * gl.expand_dims(to_end, 1)                                     # GB [s, p]
        v = dt_s * gl.sum(xf * gb, axis=1)                                        # V [Q] over s
        # M^T in registers piece by piece, each the A operand of a wgmma against dy's rows t: dxpre = GB + M^T dy
        # with GB as the accumulator (one [s, p] tile fewer; Triton adds GB after the product: fp32 rounding apart).
        # (Building half of M^T during the state products instead measured 1,033 us against 980: more spills.)
        mt_0 = _mt_block(cbt_0, hl_smem, 0, hi_s2, lo_s2, mmq, op_a)              # [s, t in 0..31] bf16
        a_dx = warpgroup_mma(mt_0, dy_slot.slice(0, TQ), gb, is_async=True)
        mt_1 = _mt_block(cbt_1, hl_smem, TQ, hi_s2, lo_s2, mmq, op_a)
        a_dx = warpgroup_mma(mt_1, dy_slot.slice(TQ, TQ), a_dx, is_async=True)
        mt_2 = _mt_block(cbt_2, hl_smem, 2 * TQ, hi_s2, lo_s2, mmq, op_a)
        a_dx = warpgroup_mma(mt_2, dy_slot.slice(2 * TQ, TQ), a_dx, is_async=True)
        mt_3 = _mt_block(cbt_3, hl_smem, 3 * TQ, hi_s2, lo_s2, mmq, op_a)
        a_dx = warpgroup_mma(mt_3, dy_slot.slice(3 * TQ, TQ), a_dx, is_async=True)

        # meanwhile da over the whole chunk: exclusive prefix of V, inclusive suffix of Z (Triton's cumsum - V +
        # reverse cumsum), the scans in a blocked layout across the 8 warps
        da += gl.exp(end_hi + end_lo) * gs
        v_v = gl.convert_layout(v, vec)
        z_v = gl.convert_layout(z, vec)
        scans = (gl.associative_scan(v_v, 0, _add) - v_v) + gl.associative_scan(z_v, 0, _add, reverse=True)
        da += gl.convert_layout(scans, rows_l)
        # the register A operands are deps too: kept alive until the wgmmas reading them are done
        dxpre, mt_0, mt_1, mt_2, mt_3 = warpgroup_mma_wait(num_outstanding=0,
                                                           deps=(a_dx, mt_0, mt_1, mt_2, mt_3))   # [s, p]
        # x and dy read again rather than held across the products (64 registers a thread)
        xf = x_slot.load(mma).to(gl.float32)
        dyf = dy_slot.load(mma).to(gl.float32)
        ddt = (gl.sum(xf * dxpre, axis=1) + a_h * da) * scale                     # x_s . dxpre_s + A da_s
        dx = gl.expand_dims(dt_s, 1) * dxpre + d_h * dyf                          # [s, p] fp32
        _release(empty, stage)                    # every warp's reads of the stage done (their values used above)

        # the three sums over the chunk's rows in one reduction (one trip through shared memory): ddt in fp32 (then
        # fp64), dA's terms in fp64, dD's rows in fp64, as Triton
        da_terms = dt_s.to(gl.float64) * da.to(gl.float64)
        if PACKED:
            gl.store(ddt_ptr + (row0 + r).to(gl.int64) * H + h, ddt.to(ddt_ty), mask=r_ok)   # [1, T, H]
            ddt = gl.where(r_ok, ddt, 0.0)
            da_terms = gl.where(r_ok, da_terms, 0.0)
        else:
            gl.store(ddt_ptr + (row0 + r).to(gl.int64) * H + h, ddt.to(ddt_ty))  # [B, L, H] contiguous
        sum_ddt, sum_da, sum_dd = gl.reduce((ddt, da_terms, dd_rows.to(gl.float64)), 0, _add3)
        gl.store(dbias_part_ptr + head_chunk, sum_ddt.to(gl.float64))
        gl.store(dA_part_ptr + head_chunk, sum_da)
        gl.store(dD_part_ptr + head_chunk, sum_dd)
        if PACKED:
            if length < Q:                    # the rows past the slot's sequence end are not dx's: not stored
                p = gl.arange(0, P, layout=gl.SliceLayout(0, mma))
                dx_offs = gl.expand_dims((row0 + r).to(gl.int64) * (H * P) + h * P, 1) + gl.expand_dims(p, 0)
                dx_ok = gl.expand_dims(r, 1) + gl.expand_dims(p * 0, 0) < length         # [s, p]
                gl.store(dx_ptr + dx_offs, dx.to(dx_desc.dtype), mask=dx_ok)
            else:
                _store_box(dx_desc, dx_smem, dx, row0, h * P)
        else:
            _store_box(dx_desc, dx_smem, dx, row0, h * P)
    tma.store_wait(pendings=0)


@gluon.jit
def _bwd_dx_kernel(x_desc, dy_desc, b_desc, c_desc, s_desc, g_desc, dx_desc, dt_ptr, dtcs_ptr, A_ptr, D_ptr,
                   dt_bias_ptr, carry_decay_ptr, carry_ptr, gcarry_decay_ptr, gcarry_ptr, da_part_ptr, ddt_ptr,
                   dA_part_ptr, dD_part_ptr, dbias_part_ptr, seqlen, chunks_per_row, seg_len, n_seg, plane,
                   stride_dt_b, stride_dt_l, dx_ptr, table_ptr, n_table, H: gl.constexpr, G: gl.constexpr,
                   STAGES: gl.constexpr, M_BLOCKS: gl.constexpr, HAS_CARRY: gl.constexpr, PACKED: gl.constexpr,
                   PRODUCER_REGS: gl.constexpr):
    """x_desc / dy_desc / dx_desc: [B*L, H*P] in [Q, P] boxes; b_desc / c_desc: [B*L, G*N] in [Q, N] boxes;
    s_desc / g_desc: s_in / g_out [n_chunks*H*P, N] in [P, N] boxes; dt [B, L, H] (raw; unit head stride), dtcs
    [3, B, H, L] fp32 (plane = B*H*L), A / D / dt_bias [H] fp32, carry_decay / gcarry_decay [n_chunks, H] fp32,
    carry / gcarry [n_seg, H, P, N] bf16 (unused without HAS_CARRY), da_part [n_chunks, M_BLOCKS, H, Q] fp32;
    out: ddt [B, L, H] contiguous in dt's dtype, dA / dD / dbias parts [n_chunks, H] fp64. Grid: n_chunks * G, a
    chunk's CTAs adjacent (its B, C rows stay in L2). Packed: the views' rows are [T, .], table [5, n_table] int32
    (sequence, start, length, first, last), dx_ptr dx [T, H*P], dtcs [3, 1, H, n_table Q] (seqlen = n_table Q);
    batched, dx_ptr, table_ptr and n_table are unused."""
    gl.static_assert(STAGES == 2, "the producer's ring phases assume 2 stages")
    HPG: gl.constexpr = H // G
    Q: gl.constexpr = x_desc.block_type.shape[0]
    pid = gl.program_id(0)
    gc = pid // G
    g = pid % G
    if PACKED:
        row0 = gl.load(table_ptr + n_table + gc)                                  # the slot's first row
        length = gl.load(table_ptr + 2 * n_table + gc)
        if length == 0:                                                           # a padding slot: zero sums
            for i in range(HPG):
                gl.store(dA_part_ptr + gc * H + g * HPG + i, 0.0)
                gl.store(dD_part_ptr + gc * H + g * HPG + i, 0.0)
                gl.store(dbias_part_ptr + gc * H + g * HPG + i, 0.0)
            return
        b = 0
        c = 0
    else:
        b, c, row0 = _batched_chunk(gc, chunks_per_row, seqlen, Q)                # row0: the chunk's first row
        length = Q

    # shared memory: C, B [Q, N] 32 KB each; ring [STAGES] x (x, dy [Q, P] 16 KB each; S_in, G_out [P, N] 16 KB
    # each); dx [Q, P] 16 KB; cs hi / lo of a head 1 KB: 209 KB
    c_smem = _smem_box(c_desc)
    b_smem = _smem_box(b_desc)
    x_bufs = _smem_ring(x_desc, STAGES)
    dy_bufs = _smem_ring(dy_desc, STAGES)
    s_bufs = _smem_ring(s_desc, STAGES)
    g_bufs = _smem_ring(g_desc, STAGES)
    dx_smem = _smem_box(dx_desc)
    hl_smem = gl.allocate_shared_memory(gl.float32, [2 * Q], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    bc_bar = _barrier()                               # C, B landed
    ready, empty = _ring_barriers(STAGES)             # empty: the math warps' one arrival per head
    fence_async_shared()                              # barrier inits visible to the async proxy (TMA)

    gl.warp_specialize([
        # default partition (num_warps = 8): the math
        (_consumer, (c_smem, b_smem, x_bufs, dy_bufs, s_bufs, g_bufs, dx_smem, hl_smem, bc_bar, ready, empty, dx_desc,
                     dt_ptr, dtcs_ptr, A_ptr, D_ptr, dt_bias_ptr, carry_decay_ptr, carry_ptr, gcarry_decay_ptr,
                     gcarry_ptr, da_part_ptr, ddt_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr, gc, b, c, row0, g,
                     seqlen, seg_len, n_seg, plane, stride_dt_b, stride_dt_l, dx_ptr, length, H, HPG, STAGES,
                     M_BLOCKS, HAS_CARRY, PACKED)),
        # worker, 1 warp: TMA loads
        (_producer, (x_desc, dy_desc, b_desc, c_desc, s_desc, g_desc, c_smem, b_smem, x_bufs, dy_bufs, s_bufs,
                     g_bufs, bc_bar, ready, empty, gc, row0, g, H, HPG, STAGES)),
    ], [1], [PRODUCER_REGS])


def bwd_dx_launch(x, dt, dtcs, A, B, C, D, dt_bias, table, dy, s_in, carry_decay, carry, g_out, gcarry_decay,
                  gcarry, dx, ddt, dA_part, dD_part, dbias_part, da_part, geometry: dict, dt_softplus: bool, cfg: dict,
                  dot_precision: str):
    """dx, ddt, the per-chunk dA / dD / dt_bias sums: the Triton bwd_dx_launch's signature and outputs (the op swaps
    the module), in gluon_eligible("dx")'s scope: table None (batched) or the chunk table (packed, B = 1), D and
    dt_bias given, dt_softplus; x / dy [B, L, H, P] and B / C [B, L, G, N] bf16 that read as [B*L, H*P] /
    [B*L, G*N] TMA views; dx, ddt, s_in, g_out, the carries, dtcs, da_part contiguous; dt with a unit head stride;
    cfg and dot_precision unused. -> the launched CompiledKernel."""
    assert D is not None and dt_bias is not None and dt_softplus and geometry["Q"] == Q, \
        "ssd_scan gluon dx: out of scope"
    bsz, seqlen, nheads, _ = x.shape
    packed = table is not None
    assert not packed or bsz == 1, "ssd_scan gluon dx: packed x [1, T, H, P]"
    ngroups = B.shape[2]
    rows = bsz * seqlen
    assert dt.stride(2) == 1 and ddt.is_contiguous() and dx.is_contiguous(), "ssd_scan gluon dx: dt, ddt, dx strides"
    assert all(t.is_contiguous() for t in (dtcs, s_in, g_out, da_part)), "ssd_scan gluon dx: contiguous buffers"
    x_desc = TensorDescriptor(x, [rows, nheads * P], [x.stride(1), 1], [Q, P], X_LAYOUT)
    dy_desc = TensorDescriptor(dy, [rows, nheads * P], [dy.stride(1), 1], [Q, P], X_LAYOUT)
    dx_desc = TensorDescriptor(dx, [rows, nheads * P], [nheads * P, 1], [Q, P], X_LAYOUT)
    b_desc = TensorDescriptor(B, [rows, ngroups * N], [B.stride(1), 1], [Q, N], BC_LAYOUT)
    c_desc = TensorDescriptor(C, [rows, ngroups * N], [C.stride(1), 1], [Q, N], BC_LAYOUT)
    # s_in / g_out [n_chunks, H, P, N] contiguous as [n_chunks*H*P, N]
    s_desc = TensorDescriptor(s_in, [s_in.shape[0] * nheads * P, N], [N, 1], [P, N], S_LAYOUT)
    g_desc = TensorDescriptor(g_out, [g_out.shape[0] * nheads * P, N], [N, 1], [P, N], S_LAYOUT)
    has_carry = carry is not None
    return _bwd_dx_kernel[(geometry["n_chunks"] * ngroups, )](
        x_desc, dy_desc, b_desc, c_desc, s_desc, g_desc, dx_desc, dt, dtcs, A, D, dt_bias, carry_decay,
        carry if has_carry else carry_decay, gcarry_decay, gcarry if has_carry else gcarry_decay, da_part, ddt,
        dA_part, dD_part, dbias_part, geometry["dtcs_len"], geometry["chunks_per_row"], geometry["seg_len"],
        geometry["n_seg"], dtcs.stride(0), dt.stride(0), dt.stride(1), dx, table if packed else carry_decay,
        geometry["n_table"], H=nheads, G=ngroups, STAGES=STAGES, M_BLOCKS=da_part.shape[1], HAS_CARRY=has_carry,
        PACKED=packed, PRODUCER_REGS=PRODUCER_REGS, num_warps=MATH_WARPS, maxnreg=MAXNREG)


def aot_compile_all():
    """(name, CompiledKernel) for sm_90a at Nemotron-H's shape (H=64, G=8, da's 2 row blocks): batched with and
    without the carries, packed with them: needs Triton 3.6 (the Gluon API the kernel is written for), no GPU."""
    from .common import aot_compile_gluon
    x_ty = f"tensordesc<bf16[{Q}, {P}],{X_LAYOUT!r}>"
    bc_ty = f"tensordesc<bf16[{Q}, {N}],{BC_LAYOUT!r}>"
    s_ty = f"tensordesc<bf16[{P}, {N}],{S_LAYOUT!r}>"
    types = {"x_desc": x_ty, "dy_desc": x_ty, "dx_desc": x_ty, "b_desc": bc_ty, "c_desc": bc_ty, "s_desc": s_ty,
             "g_desc": s_ty, "dt_ptr": "*bf16", "dtcs_ptr": "*fp32", "A_ptr": "*fp32", "D_ptr": "*fp32",
             "dt_bias_ptr": "*fp32", "carry_decay_ptr": "*fp32", "carry_ptr": "*bf16", "gcarry_decay_ptr": "*fp32",
             "gcarry_ptr": "*bf16", "da_part_ptr": "*fp32", "ddt_ptr": "*bf16", "dA_part_ptr": "*fp64",
             "dD_part_ptr": "*fp64", "dbias_part_ptr": "*fp64", "seqlen": "i32", "chunks_per_row": "i32",
             "seg_len": "i32", "n_seg": "i32", "plane": "i32", "stride_dt_b": "i32", "stride_dt_l": "i32",
             "dx_ptr": "*bf16", "table_ptr": "*i32", "n_table": "i32"}
    # what the JIT launcher specialises at B1 L32K with a contiguous dt (pointers 16-byte aligned; seqlen,
    # chunks_per_row, plane and dt's strides multiples of 16; seg_len and n_seg not in general)
    aligned = ("dt_ptr", "dtcs_ptr", "A_ptr", "D_ptr", "dt_bias_ptr", "carry_decay_ptr", "carry_ptr",
               "gcarry_decay_ptr", "gcarry_ptr", "da_part_ptr", "ddt_ptr", "dA_part_ptr", "dD_part_ptr",
               "dbias_part_ptr", "seqlen", "chunks_per_row", "plane", "stride_dt_b", "stride_dt_l")
    # (packed, as the bench's 16 sequences: 260 table slots, seqlen = 260 Q; plane not a multiple of 16 there)
    packed_aligned = tuple(a for a in aligned if a not in ("chunks_per_row", "plane")) + ("dx_ptr", "table_ptr")
    for has_carry, packed in ((True, False), (False, False), (True, True)):
        constexprs = {"H": 64, "G": 8, "STAGES": STAGES, "M_BLOCKS": 2, "HAS_CARRY": has_carry, "PACKED": packed,
                      "PRODUCER_REGS": PRODUCER_REGS}
        yield (f"ssd_bwd_dx_gluon carry={has_carry}" + (" packed" if packed else ""),
               aot_compile_gluon(_bwd_dx_kernel, types, constexprs, aligned=packed_aligned if packed else aligned,
                                 num_warps=MATH_WARPS, maxnreg=MAXNREG))
