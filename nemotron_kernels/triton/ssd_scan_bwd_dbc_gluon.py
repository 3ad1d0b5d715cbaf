"""SSD scan backward, dC and dB on Hopper (Gluon, sm_90a): the outputs of Triton's two bwd_dbc_launch calls from one
warp-specialised kernel.

Math (the Triton kernel's, _ssd_bwd_dbc_kernel in ssd_scan_bwd_chunk_scan.py), per (chunk, group g of HPG = H / G
heads); cs = stage 0's cumulative dt A from the chunk start (fp32 hi + lo), t, s rows of the chunk, for each head h:
    S = S_in + carry_decay carry[seg],  G = G_out + gcarry_decay gcarry[n_seg-1-seg]   fp32 [P, N], rounded to bf16
    Pw[t, s] = bf16( sum_h [s <= t] ((dy_t . x_s) exp(min((hi_t - hi_s) + (lo_t - lo_s), 0))) dt_s )   fp32 sum
    dC_t = sum_h bf16(exp(hi_t) dy_t) S   +  Pw[t, :] B                  (one fp32 wgmma chain: heads in turn, then Pw)
    dB_s = sum_h bf16(x_s (exp(cs_Q - cs_s) dt_s)) G  +  Pw[:, s]^T C     (the same order)
Triton writes dC and Pw to pw [n_chunks, G, Q, Q], then dB reads it back (67 MB each way at B1 L32K); here Pw never
leaves the SM and ssd_scan_bwd allocates no pw. Differences from Triton: none in the arithmetic (the same fp32
products, sums in the same order, each output's wgmma K order ascending, the same masks): on the H200 dC and dB came
out bitwise equal at B1 L1K and B1 L32K (scripts/probe_ssd_bwd_dbc_gluon.py, session 27).
Scope (ops/ssd_scan.py gluon_eligible "dbc"; else Triton's two launches): batched (no cu_seqlens) with L a multiple
of Q = 128; P = 64, N = 128, bf16 x / dy / B / C / states (so dB, dC bf16); any H, G; with or without the carries
across segments (initial states and final-state gradients change only the values of the states it reads); and at
least GLUON_DBC_MIN_WAVES waves of CTAs (below, Triton's launches were faster).

Design: one CTA per (chunk, group) doing both (Triton: 2 + 2 programs of 64 rows, each reading its (chunk, group)'s
x, dy / x, states and B / C again, dC writing Pw for dB), gl.warp_specialize, 9 warps (padded to 12):
  - 8 math warps (the default partition, 240 registers: 2 warpgroups over the chunk's 128 rows),
  - a 1-warp TMA producer (24 registers): B, C [Q, N] once, then 2 HPG ring iterations (2 stages, ready / empty
    mbarriers, one math-side arrival each): iteration i < HPG brings head i's x, dy [Q, P] and S_in [P, N],
    iteration HPG + i head i's x again and G_out (into S_in's slot).
Two passes over the heads, not one: dC's and dB's accumulators [128, 128] fp32 and the pair weights' sum [128, 128]
fp32 are 64 registers a thread each; all three live across the heads (192 of 240) left too little for the rest.
  pass 1 (dC): per head the state wgmma (A = exp(hi_t) dy in registers, B = S from the ring), the pair products
    dy x^T in 4 wgmma pieces of 32 columns s (2 in flight) and their decayed, masked sum into Pw (4 x 16 registers).
    After the heads: Pw to bf16, stored transposed [s, t] to shared memory for pass 2, and the A operand of 4 wgmmas
    against B [32 s, N] onto dC's accumulator; dC through B's buffer (free by then) and a TMA store.
  pass 2 (dB): per head bf16(scale_s x_s) in registers times G; after the heads Pw^T (shared) times C; dB through
    C's buffer. x is read twice per (chunk, head): the second read is an L2 hit where the first is still there.
Shared memory: ring 2 x 48 KB, B, C 64 KB, Pw^T 32 KB, the head's dt / cs 2 KB: 198,908 B (AOT), one CTA per SM;
math warps at 240 registers, no spills; the exps' masks rebuilt in the head loop (_opaque).

H200 (session 27, the probe): B1 L32K 622.9 us against Triton's 1,041.3 (1.67x). The prediction was 430-480 us
(traffic 1.37-1.63 GB: a floor of 326-390 us at 4.19 TB/s, the wgmmas (~150 us) and the pair weights' exps (~65 us)
under it, ~10% for the serial tail): missed by ~30%, not yet profiled. B1 L1K (64 CTAs: half the SMs idle, and the
host's launch cost with 8 TMA descriptors) 109.3 us against 83.1: slower, hence the size rule (ops/ssd_scan.py
GLUON_DBC_MIN_WAVES: one wave; the library's build, probe --lengths: L2K 138.9 / 136.1, L4K 130.7 / 160.6, L8K
179.8 / 292.6, L32K 626.0 / 1,050.9).
Imported only where gluon_eligible holds (never interpreted: Gluon has no interpreter), so not via kernel_module."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .ssd_scan_gluon_common import (BC_LAYOUT, S_LAYOUT, X_LAYOUT, N, P, Q, _barrier, _batched_chunk, _dtcs_row,
                                    _load_boxes, _release, _ring_barriers, _smem_box, _smem_ring, _wait_free)

STAGES = 2                      # the ring (x, dy, S_in or G: 48 KB a stage)
MATH_WARPS = 8                  # two warpgroups over the chunk's 128 rows (the default partition)
PRODUCER_REGS = 24              # setmaxnreg target of the TMA warp
MAXNREG = 168                   # 12 warps x 32 threads x 168 <= 64K registers at launch (math warps: 240)
# the Pw^T box's NVMMA shared layout (the others: ssd_scan_gluon_common), built once here (~6 us of host time)
PW_LAYOUT = gl.NVMMASharedLayout.get_default_for([Q, Q], gl.bfloat16)     # Pw^T [s, t]


@gluon.jit
def _producer(x_desc, dy_desc, b_desc, c_desc, s_desc, g_desc, b_smem, c_smem, x_bufs, dy_bufs, s_bufs, bc_bar,
              ready, empty, gc, row0, g, H: gl.constexpr, HPG: gl.constexpr, STAGES: gl.constexpr):
    """One warp: B, C rows [Q, N] of the chunk (group g) once (bc_bar), then iteration i into stage i % STAGES
    (ready): i < HPG head i's x, dy [Q, P] (columns h P of the [B*L, H*P] views) and S_in [P, N] (rows (gc H + h) P
    of the [n_chunks*H*P, N] view); i >= HPG head i - HPG's x and G_out (into the S slot)."""
    P: gl.constexpr = x_desc.block_type.shape[1]
    _load_boxes(b_desc, c_desc, row0, g, bc_bar, b_smem, c_smem)
    DC_BYTES: gl.constexpr = x_desc.block_type.nbytes + dy_desc.block_type.nbytes + s_desc.block_type.nbytes
    DB_BYTES: gl.constexpr = x_desc.block_type.nbytes + g_desc.block_type.nbytes
    for i in range(2 * HPG):
        stage = _wait_free(empty, i, STAGES)                                      # iteration i - STAGES released
        if i < HPG:
            h = g * HPG + i
            mbarrier.expect(ready.index(stage), DC_BYTES)
            tma.async_copy_global_to_shared(x_desc, [row0, h * P], ready.index(stage), x_bufs.index(stage))
            tma.async_copy_global_to_shared(dy_desc, [row0, h * P], ready.index(stage), dy_bufs.index(stage))
            tma.async_copy_global_to_shared(s_desc, [(gc * H + h) * P, 0], ready.index(stage), s_bufs.index(stage))
        else:
            h = g * HPG + i - HPG
            mbarrier.expect(ready.index(stage), DB_BYTES)
            tma.async_copy_global_to_shared(x_desc, [row0, h * P], ready.index(stage), x_bufs.index(stage))
            tma.async_copy_global_to_shared(g_desc, [(gc * H + h) * P, 0], ready.index(stage), s_bufs.index(stage))


@gluon.jit
def _opaque(v):
    """v through an asm move with side effects: masks built from it stay in the head loop (a loop-invariant mask
    is hoisted by LLVM and held as predicates across the loop: 64 a thread in the dx kernel)."""
    return gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [v], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _pair_piece(pw, rk, hl_smem, S0: gl.constexpr, hi_t2, lo_t2, t2, mmq: gl.constexpr):
    """Pw's columns s = S0 .. S0+TQ-1 [Q (t), TQ] plus one head's terms: rk = dy_t . x_s (wgmma, fp32), hl_smem the
    head's dt [Q], cs hi [Q], cs lo [Q] over s; hi_t2 / lo_t2 / t2: [Q, 1] over t. Triton's expression and order:
    Pw + where(s <= t, (rk exp(min(diff, 0))) dt_s, 0)."""
    Q: gl.constexpr = pw.shape[0]
    TQ: gl.constexpr = pw.shape[1]
    col: gl.constexpr = gl.SliceLayout(0, mmq)
    dt_s = gl.expand_dims(hl_smem.slice(S0, TQ).load(col), 0)                      # [1, TQ] over s
    hi_s = gl.expand_dims(hl_smem.slice(Q + S0, TQ).load(col), 0)
    lo_s = gl.expand_dims(hl_smem.slice(2 * Q + S0, TQ).load(col), 0)
    s2 = gl.expand_dims(S0 + gl.arange(0, TQ, layout=col), 0)
    diff = (hi_t2 - hi_s) + (lo_t2 - lo_s)                                         # cs_t - cs_s, Triton's order
    return pw + gl.where(s2 <= t2, rk * gl.exp(gl.minimum(diff, 0.0)) * dt_s, 0.0)


@gluon.jit
def _complete_state(slot, decay_ptr, carry_ptr, head_chunk, carry_row, st_l: gl.constexpr,
                    HAS_CARRY: gl.constexpr):
    """The ring's state [P, N] completed with its carry where the decay is not 0 (Triton: _chunk_state_full), written
    back in bf16 for the wgmma (Triton rounds the fp32 sum to bf16 for its dot)."""
    if HAS_CARRY:
        decay = gl.load(decay_ptr + head_chunk)
        if decay != 0.0:
            P: gl.constexpr = slot.shape[0]
            N: gl.constexpr = slot.shape[1]
            pn = (gl.expand_dims(gl.arange(0, P, layout=gl.SliceLayout(1, st_l)), 1) * N
                  + gl.expand_dims(gl.arange(0, N, layout=gl.SliceLayout(0, st_l)), 0))   # [P, N]
            st = slot.load(st_l).to(gl.float32)
            st += decay * gl.load(carry_ptr + carry_row * (P * N) + pn).to(gl.float32)
            slot.store(st.to(gl.bfloat16))
        fence_async_shared()                                                      # generic writes -> wgmma reads
        gl.thread_barrier()                                                       # every row before either WG reads


@gluon.jit
def _consumer(b_smem, c_smem, x_bufs, dy_bufs, s_bufs, pwt_smem, hl_smem, bc_bar, ready, empty, dc_desc, db_desc,
              dtcs_ptr, carry_decay_ptr, carry_ptr, gcarry_decay_ptr, gcarry_ptr, gc, b, c, row0, g, seqlen, seg_len,
              n_seg, plane, H: gl.constexpr, HPG: gl.constexpr, STAGES: gl.constexpr, HAS_CARRY: gl.constexpr):
    """The math (8 warps, rows 0..127 of the chunk as t or s): pass 1 dC, pass 2 dB (the module's docstring);
    every ring iteration released to the producer (empty) once read."""
    Q: gl.constexpr = x_bufs.shape[1]                                             # 128
    P: gl.constexpr = x_bufs.shape[2]                                             # 64
    N: gl.constexpr = b_smem.shape[1]                                             # 128
    TQ: gl.constexpr = Q // 4                                                     # s columns of a Pw piece
    # wgmma accumulator layouts, warpgroup w holding rows 64 w .. 64 w + 63: [Q, P] for the x / dy tiles scaled in
    # registers, [Q, N] for dC, dB, [Q, TQ] for the pieces of dy x^T and Pw
    mma64: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, P, 16])
    mma128: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, N, 16])
    mmq: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, TQ, 16])
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma128, k_width=2)
    rows64: gl.constexpr = gl.SliceLayout(1, mma64)                               # [Q] over rows, 2 a thread
    rowsq: gl.constexpr = gl.SliceLayout(1, mmq)
    st_l: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [8, 1], [1, 0])        # [P, N] states, 16 B a load
    r = gl.arange(0, Q, layout=rows64)
    plane64 = plane.to(gl.int64)                                                  # 3 planes may pass 2^31
    hl_i = gl.arange(0, 4 * Q, layout=gl.BlockedLayout([2], [32], [8], [0]))     # dt, cs hi, cs lo (+ pad)
    hl_offs = (hl_i // Q).to(gl.int64) * plane64 + hl_i % Q
    hl_ok = hl_i < 3 * Q
    seg = gc // seg_len                                                           # the carries' segment
    zq = gl.full([Q, TQ], 0.0, gl.float32, layout=mmq)
    acc = gl.full([Q, N], 0.0, gl.float32, layout=mma128)
    pw_0 = zq
    pw_1 = zq
    pw_2 = zq
    pw_3 = zq

    # pass 1, dC: iteration i = head i of the group
    for i in range(HPG):
        h = g * HPG + i
        stage = i % STAGES
        head_chunk = gc.to(gl.int64) * H + h
        row = _dtcs_row(dtcs_ptr, b, c, h, seqlen, H, Q)                            # head h's dtcs at the chunk
        hl = gl.load(row + hl_offs, mask=hl_ok, other=0.0)                        # [4Q] over s
        hi_t = gl.load(row + plane64 + r)                                         # [Q] over t
        lo_t = gl.load(row + 2 * plane64 + r)
        hl_smem.store(hl)                     # (the compiler's barrier orders it after the last head's reads)
        t2 = gl.expand_dims(gl.convert_layout(_opaque(r), rowsq), 1)              # same rows: no data moves
        hi_t2 = gl.expand_dims(gl.convert_layout(hi_t, rowsq), 1)
        lo_t2 = gl.expand_dims(gl.convert_layout(lo_t, rowsq), 1)
        exp_t = gl.expand_dims(gl.exp(hi_t), 1)                                   # Triton: exp(hi_t) alone

        mbarrier.wait(ready.index(stage), (i // STAGES) & 1)
        x_slot = x_bufs.index(stage)
        dy_slot = dy_bufs.index(stage)
        s_slot = s_bufs.index(stage)
        _complete_state(s_slot, carry_decay_ptr, carry_ptr, head_chunk, (seg * H + h).to(gl.int64), st_l, HAS_CARRY)
        # state term first: dy scaled in registers (fp32 product, bf16 as Triton) is the A operand against S
        rs = (dy_slot.load(mma64).to(gl.float32) * exp_t).to(gl.bfloat16)       # [t, p]
        rs = gl.convert_layout(rs, op_a)
        acc = warpgroup_mma(rs, s_slot, acc, is_async=True)                       # [t, n] += rs S
        # the pair products dy x^T [t, s] in pieces of TQ columns, two in flight
        rk_0 = warpgroup_mma(dy_slot, x_slot.slice(0, TQ).permute((1, 0)), zq, use_acc=False, is_async=True)
        rk_1 = warpgroup_mma(dy_slot, x_slot.slice(TQ, TQ).permute((1, 0)), zq, use_acc=False, is_async=True)
        acc, rs, rk_0 = warpgroup_mma_wait(num_outstanding=1, deps=(acc, rs, rk_0))
        pw_0 = _pair_piece(pw_0, rk_0, hl_smem, 0, hi_t2, lo_t2, t2, mmq)
        rk_2 = warpgroup_mma(dy_slot, x_slot.slice(2 * TQ, TQ).permute((1, 0)), zq, use_acc=False, is_async=True)
        rk_1 = warpgroup_mma_wait(num_outstanding=1, deps=(rk_1, ))
        pw_1 = _pair_piece(pw_1, rk_1, hl_smem, TQ, hi_t2, lo_t2, t2, mmq)
        rk_3 = warpgroup_mma(dy_slot, x_slot.slice(3 * TQ, TQ).permute((1, 0)), zq, use_acc=False, is_async=True)
        rk_2 = warpgroup_mma_wait(num_outstanding=1, deps=(rk_2, ))
        pw_2 = _pair_piece(pw_2, rk_2, hl_smem, 2 * TQ, hi_t2, lo_t2, t2, mmq)
        rk_3 = warpgroup_mma_wait(num_outstanding=0, deps=(rk_3, ))
        _release(empty, stage)                    # both warpgroups' wgmmas and loads of the stage are done
        pw_3 = _pair_piece(pw_3, rk_3, hl_smem, 3 * TQ, hi_t2, lo_t2, t2, mmq)

    # dC's pair term: Pw in bf16 (Triton rounds the fp32 sum once), the A operand of 4 wgmmas of K = TQ against B's
    # rows s (K ascending, as Triton's one dot); stored transposed [s, t] for pass 2's A operand
    pb_0 = pw_0.to(gl.bfloat16)
    pb_1 = pw_1.to(gl.bfloat16)
    pb_2 = pw_2.to(gl.bfloat16)
    pb_3 = pw_3.to(gl.bfloat16)
    pwt_smem.slice(0, TQ).store(gl.permute(pb_0, (1, 0)))
    pwt_smem.slice(TQ, TQ).store(gl.permute(pb_1, (1, 0)))
    pwt_smem.slice(2 * TQ, TQ).store(gl.permute(pb_2, (1, 0)))
    pwt_smem.slice(3 * TQ, TQ).store(gl.permute(pb_3, (1, 0)))
    fence_async_shared()                                                          # generic writes -> wgmma reads
    pa_0 = gl.convert_layout(pb_0, op_a)
    pa_1 = gl.convert_layout(pb_1, op_a)
    pa_2 = gl.convert_layout(pb_2, op_a)
    pa_3 = gl.convert_layout(pb_3, op_a)
    mbarrier.wait(bc_bar, 0)
    acc = warpgroup_mma(pa_0, b_smem.slice(0, TQ), acc, is_async=True)
    acc = warpgroup_mma(pa_1, b_smem.slice(TQ, TQ), acc, is_async=True)
    acc = warpgroup_mma(pa_2, b_smem.slice(2 * TQ, TQ), acc, is_async=True)
    acc = warpgroup_mma(pa_3, b_smem.slice(3 * TQ, TQ), acc, is_async=True)
    acc, pa_0, pa_1, pa_2, pa_3 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, pa_0, pa_1, pa_2, pa_3))
    gl.thread_barrier()                       # both warpgroups are done reading B: its buffer takes dC
    b_smem.store(acc.to(gl.bfloat16))
    fence_async_shared()                                                          # generic writes -> TMA reads
    gl.thread_barrier()
    tma.async_copy_shared_to_global(dc_desc, [row0, g * N], b_smem)               # (waited for at the end)

    # pass 2, dB: iteration HPG + i = head i again (x) with G_out
    acc = gl.full([Q, N], 0.0, gl.float32, layout=mma128)
    for i in range(HPG, 2 * HPG):
        h = g * HPG + i - HPG
        stage = i % STAGES
        head_chunk = gc.to(gl.int64) * H + h
        row = _dtcs_row(dtcs_ptr, b, c, h, seqlen, H, Q)
        dt_s = gl.load(row + r)                                                   # [Q] over s
        hi_s = gl.load(row + plane64 + r)
        lo_s = gl.load(row + 2 * plane64 + r)
        end_hi = gl.load(row + plane64 + (Q - 1))                                 # cs_Q
        end_lo = gl.load(row + 2 * plane64 + (Q - 1))
        scale = gl.expand_dims(gl.exp((end_hi - hi_s) + (end_lo - lo_s)) * dt_s, 1)   # exp(cs_Q - cs_s) dt_s

        mbarrier.wait(ready.index(stage), (i // STAGES) & 1)
        x_slot = x_bufs.index(stage)
        g_slot = s_bufs.index(stage)
        _complete_state(g_slot, gcarry_decay_ptr, gcarry_ptr, head_chunk, ((n_seg - 1 - seg) * H + h).to(gl.int64),
                        st_l, HAS_CARRY)
        xs = (x_slot.load(mma64).to(gl.float32) * scale).to(gl.bfloat16)         # [s, p]
        xs = gl.convert_layout(xs, op_a)
        acc = warpgroup_mma(xs, g_slot, acc, is_async=True)                       # [s, n] += xs G
        acc, xs = warpgroup_mma_wait(num_outstanding=0, deps=(acc, xs))
        _release(empty, stage)

    # dB's pair term: Pw^T [s, t] (pass 1's stores, fenced; every thread past the barriers of pass 2) times C's rows t
    acc = warpgroup_mma(pwt_smem, c_smem, acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    gl.thread_barrier()                       # both warpgroups are done reading C: its buffer takes dB
    c_smem.store(acc.to(gl.bfloat16))
    fence_async_shared()
    gl.thread_barrier()
    tma.async_copy_shared_to_global(db_desc, [row0, g * N], c_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _bwd_dbc_kernel(x_desc, dy_desc, b_desc, c_desc, s_desc, g_desc, dc_desc, db_desc, dtcs_ptr, carry_decay_ptr,
                    carry_ptr, gcarry_decay_ptr, gcarry_ptr, seqlen, chunks_per_row, seg_len, n_seg, plane,
                    H: gl.constexpr, G: gl.constexpr, STAGES: gl.constexpr, HAS_CARRY: gl.constexpr,
                    PRODUCER_REGS: gl.constexpr):
    """x_desc / dy_desc: [B*L, H*P] in [Q, P] boxes; b_desc / c_desc / dc_desc / db_desc: [B*L, G*N] in [Q, N]
    boxes; s_desc / g_desc: s_in / g_out [n_chunks*H*P, N] in [P, N] boxes; dtcs [3, B, H, L] fp32 (plane =
    B*H*L); carry_decay / gcarry_decay [n_chunks, H] fp32, carry / gcarry [n_seg, H, P, N] bf16 (unused without
    HAS_CARRY). Grid: n_chunks * G, a chunk's CTAs adjacent."""
    HPG: gl.constexpr = H // G
    Q: gl.constexpr = x_desc.block_type.shape[0]
    pid = gl.program_id(0)
    gc = pid // G
    g = pid % G
    b, c, row0 = _batched_chunk(gc, chunks_per_row, seqlen, Q)                    # row0: the chunk's first row

    # shared memory: B, C [Q, N] 32 KB each (then dC, dB); ring [STAGES] x (x, dy [Q, P], S_in or G [P, N]: 16 KB
    # each); Pw^T [Q, Q] 32 KB; a head's dt / cs hi / cs lo 2 KB: ~194 KB
    b_smem = _smem_box(b_desc)
    c_smem = _smem_box(c_desc)
    x_bufs = _smem_ring(x_desc, STAGES)
    dy_bufs = _smem_ring(dy_desc, STAGES)
    s_bufs = _smem_ring(s_desc, STAGES)
    pwt_smem = gl.allocate_shared_memory(gl.bfloat16, [Q, Q], PW_LAYOUT)
    hl_smem = gl.allocate_shared_memory(gl.float32, [4 * Q], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    bc_bar = _barrier()                               # B, C landed
    ready, empty = _ring_barriers(STAGES)             # empty: the math warps' one arrival per iteration
    fence_async_shared()                              # barrier inits visible to the async proxy (TMA)

    gl.warp_specialize([
        (_consumer, (b_smem, c_smem, x_bufs, dy_bufs, s_bufs, pwt_smem, hl_smem, bc_bar, ready, empty, dc_desc,
                     db_desc, dtcs_ptr, carry_decay_ptr, carry_ptr, gcarry_decay_ptr, gcarry_ptr, gc, b, c, row0, g,
                     seqlen, seg_len, n_seg, plane, H, HPG, STAGES, HAS_CARRY)),
        (_producer, (x_desc, dy_desc, b_desc, c_desc, s_desc, g_desc, b_smem, c_smem, x_bufs, dy_bufs, s_bufs,
                     bc_bar, ready, empty, gc, row0, g, H, HPG, STAGES)),
    ], [1], [PRODUCER_REGS])


def bwd_dc_db_launch(x, dtcs, dy, B, C, s_in, carry_decay, carry, g_out, gcarry_decay, gcarry, dC, dB,
                     geometry: dict):
    """dC and dB (the Triton bwd_dbc_launch's two calls, without pw) in gluon_eligible("dbc")'s scope: x / dy
    [B, L, H, P] and B / C [B, L, G, N] bf16 that read as [B*L, H*P] / [B*L, G*N] TMA views; dC, dB [B, L, G, N]
    bf16, s_in, g_out [n_chunks, H, P, N], the carries [n_seg, H, P, N] (None with one segment) and dtcs contiguous.
    -> the launched CompiledKernel."""
    bsz, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    assert geometry["Q"] == Q and headdim == P and dstate == N and seqlen % Q == 0, "ssd_scan gluon dB/dC: out of scope"
    assert dC.is_contiguous() and dB.is_contiguous(), "ssd_scan gluon dB/dC: dC, dB contiguous"
    assert all(t.is_contiguous() for t in (dtcs, s_in, g_out)), "ssd_scan gluon dB/dC: contiguous states, dtcs"
    rows = bsz * seqlen
    # descriptors per call (they hold the tensors' addresses); their layouts are the module's
    x_desc = TensorDescriptor(x, [rows, nheads * P], [x.stride(1), 1], [Q, P], X_LAYOUT)
    dy_desc = TensorDescriptor(dy, [rows, nheads * P], [dy.stride(1), 1], [Q, P], X_LAYOUT)
    b_desc = TensorDescriptor(B, [rows, ngroups * N], [B.stride(1), 1], [Q, N], BC_LAYOUT)
    c_desc = TensorDescriptor(C, [rows, ngroups * N], [C.stride(1), 1], [Q, N], BC_LAYOUT)
    dc_desc = TensorDescriptor(dC, [rows, ngroups * N], [ngroups * N, 1], [Q, N], BC_LAYOUT)
    db_desc = TensorDescriptor(dB, [rows, ngroups * N], [ngroups * N, 1], [Q, N], BC_LAYOUT)
    # s_in / g_out [n_chunks, H, P, N] contiguous as [n_chunks*H*P, N]
    s_desc = TensorDescriptor(s_in, [s_in.shape[0] * nheads * P, N], [N, 1], [P, N], S_LAYOUT)
    g_desc = TensorDescriptor(g_out, [g_out.shape[0] * nheads * P, N], [N, 1], [P, N], S_LAYOUT)
    has_carry = carry is not None
    return _bwd_dbc_kernel[(geometry["n_chunks"] * ngroups, )](
        x_desc, dy_desc, b_desc, c_desc, s_desc, g_desc, dc_desc, db_desc, dtcs, carry_decay,
        carry if has_carry else carry_decay, gcarry_decay, gcarry if has_carry else gcarry_decay, seqlen,
        geometry["chunks_per_row"], geometry["seg_len"], geometry["n_seg"], dtcs.stride(0), H=nheads, G=ngroups,
        STAGES=STAGES, HAS_CARRY=has_carry, PRODUCER_REGS=PRODUCER_REGS, num_warps=MATH_WARPS, maxnreg=MAXNREG)


def aot_compile_all():
    """(name, CompiledKernel) for sm_90a at Nemotron-H's shape (H=64, G=8), with and without the carries: needs
    Triton 3.6 (the Gluon API the kernel is written for), no GPU."""
    from .common import aot_compile_gluon
    x_ty = f"tensordesc<bf16[{Q}, {P}],{X_LAYOUT!r}>"
    bc_ty = f"tensordesc<bf16[{Q}, {N}],{BC_LAYOUT!r}>"
    s_ty = f"tensordesc<bf16[{P}, {N}],{S_LAYOUT!r}>"
    types = {"x_desc": x_ty, "dy_desc": x_ty, "b_desc": bc_ty, "c_desc": bc_ty, "dc_desc": bc_ty, "db_desc": bc_ty,
             "s_desc": s_ty, "g_desc": s_ty, "dtcs_ptr": "*fp32", "carry_decay_ptr": "*fp32", "carry_ptr": "*bf16",
             "gcarry_decay_ptr": "*fp32", "gcarry_ptr": "*bf16", "seqlen": "i32", "chunks_per_row": "i32",
             "seg_len": "i32", "n_seg": "i32", "plane": "i32"}
    # what the JIT launcher specialises at B1 L32K (pointers 16-byte aligned; seqlen, chunks_per_row, plane
    # multiples of 16; seg_len and n_seg not in general)
    aligned = ("dtcs_ptr", "carry_decay_ptr", "carry_ptr", "gcarry_decay_ptr", "gcarry_ptr", "seqlen",
               "chunks_per_row", "plane")
    for has_carry in (True, False):
        constexprs = {"H": 64, "G": 8, "STAGES": STAGES, "HAS_CARRY": has_carry, "PRODUCER_REGS": PRODUCER_REGS}
        yield (f"ssd_bwd_dbc_gluon carry={has_carry}",
               aot_compile_gluon(_bwd_dbc_kernel, types, constexprs, aligned=aligned, num_warps=MATH_WARPS,
                                 maxnreg=MAXNREG))
