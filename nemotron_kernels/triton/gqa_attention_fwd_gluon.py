"""GQA flash-attention forward for Hopper in Gluon (FlashAttention-3 style): the BF16/FP16 and FP8 e4m3 forward on
sm_90.

H200, 32/2 heads D=128 causal bf16 (session 27, the dispatch's knobs): 620 TFLOP/s at B4 S8K, 637 at B1 S32K,
1.10x / 1.08x cuDNN SDPA (table below; the probe it grew from, with an FP8 mode: git show
132c2e6:scripts/probe_attn_gluon.py).

Per 128-row query block of a (batch, query head), the longest (last) query blocks first; the batched kernel runs
one CTA per block, the persistent one (the dispatch's for batched inputs, below) walks blocks on one CTA per SM;
gl.warp_specialize with three partitions (12 warps launched, 9 used):
  - consumer warpgroup 0 (the default partition, 4 warps): query rows 0..63 of the block,
  - consumer warpgroup 1 (a 4-warp worker, 240 registers): query rows 64..127,
  - producer (a 1-warp worker, 24 registers): TMA loads of Q once, then K and V tiles (128 keys x D) into a
    STAGES-deep shared-memory ring guarded by ready / empty mbarriers (empty counts one arrival per warpgroup).
Each consumer: S = Q K^T by wgmma, online softmax in base 2, P in registers as the A operand of O += P V. Key
blocks run from the last (causal: the diagonal, the only masked one) down to 0; S_i is issued before
O += P_{i-1} V_{i-1}, so softmax(S_i) overlaps that wgmma, and an mbarrier "turn" makes the two warpgroups issue
their wgmmas alternately (ping-pong), so one's softmax overlaps the other's MMAs. Epilogue: O / l through shared
memory (the group's Q half, no longer read) and a TMA store; lse = (m + log2 l) * ln 2 stored from registers.

Shapes: q [B, S, Hq, D], k / v [B, S, Hkv, D] (Sq == Sk, D = 128, fp16 / bf16; RAGGED: any S), read through 2-D
TMA descriptors over [B*S, H*D]; o [B, S, Hq, D] contiguous, lse [B, Hq, S] fp32 (natural log): the outputs of
gqa_attention_fwd.py's Triton forward, so its backward consumes them. `gluon_eligible` says which inputs run here.

SASS (Triton 3.6 AOT, sm_90a, batched causal bf16, stages 2), the steady-state loop of one consumer warpgroup, per
key block (per thread: 64 of the 64x128 scores): 459 instructions, 16 HGMMA 64x128x16 (8 for S, 8 for P V),
66 MUFU.EX2, 66 FFMA (s * scale - m), 66 FMUL (O *= alpha), 68 FADD + 68 FMNMX (row sums / maxima), 32 F2FP (P to
bf16; the accumulator -> A-operand relayout needs no SHFL), 8 SHFL.BFLY, 3 mbarrier waits + 3 arrives, 4 BAR.SYNC (the
group's, before each single-thread arrive), 2 WARPGROUP.DEPBAR. Per 128x128 block (both groups) per SM:
tensor 2 x 2 x 64x128x128 MAC / 2048 MAC/clk = 2048 clk; MUFU 2 x 128 x 66 / 16 per clk = 1056 clk (52 %);
issue 2 x 459 = 918 of 2048 slots per SMSP (45 %): tensor-bound, not MUFU-bound. Ping-pong: a group's S is done
512 clk after its turn; its softmax is ~750-850 clk on its SMSP (64 FMNMX + 2 shuffle rounds, 64 MUFU at 8 clk a
warp instruction, then sums and packing), + 64 FMUL rescale once its P V is done; it must issue again when the other
group's 1024 clk of wgmmas drain, 1536 clk after its S: ~600 clk of slack, so the steady state keeps the tensor
cores busy and an FMA-pipe exp2 would shorten a path with slack (it lost: FP8 below). Measured (session 26, one CTA a
block) 616 TFLOP/s = 78 % of the 789 measured bf16 ceiling: the loss sits outside the loop, per tile (one 164 KB
CTA an SM, 8192 tiles, ~62 an SM at B4 S8K, ~32.5 blocks = ~38 us each): CTA launch and barrier init, Q and K_0's
TMA latency, the first S and WG 0's first softmax before any P V, the last P V and the epilogue (O store,
store_wait) with the tensor cores idle: ~2-3 us a tile, 5-8 % at B4 S8K, ~2 % at B1 S32K (4x longer tiles).
Knobs (VARIANTS, timed by scripts/sweep_attn_fwd_gluon.py; bitwise equal outputs): persistent
(_gqa_attn_fwd_gluon_persistent_kernel: grid = #SMs over a static longest-first snake schedule; the producer
streams the next tile's Q and K/V during the current tile's last P V and epilogue; at stages 2 O goes through its
own buffer, 196,984 B, at 3 through Q, 229,800 B) and stages (the K/V ring: 164,160 / 229,760 B batched, 229,776 B
ragged at 3). Dispatch: persistent with stages 3 for batched inputs (S % 128 == 0, no cu_seqlens), stages 3 for
ragged / varlen (their kernel only). H200, causal bf16, TFLOP/s (x cuDNN SDPA, same run), session 27:
    persistent, stages | B4 S8K          | B1 S32K         | mean
    0, 2 (until s. 27) | 608.8 (1.084x)  | 604.6 (1.024x)  | 606.7
    0, 3               | 604.3 (1.076x)  | 645.4 (1.093x)  | 624.9
    1, 2               | 589.3 (1.049x)  | 624.7 (1.058x)  | 607.0
    1, 3 (dispatch)    | 620.3 (1.105x)  | 636.9 (1.078x)  | 628.6
    cuDNN SDPA         | 561.6           | 590.7           |

FP8 (gqa_attention_fwd_gluon_fp8; constexpr FP8 of both kernels, after the probe of 132c2e6): q / k e4m3
[B, S, H, D], V^T e4m3 [B, Hkv, D, S] with the keys of each 32 reordered (_vt_fp8, one copy of V on the host side,
counted in the dispatch's time), descales per (batch, kv head) as an fp32 [B, Hkv, 3] table (descale_table: per
tensor ones broadcast, out_scale folded into v's) read once per tile (q * k folded into the tile's qk_scale, v in
the epilogue), bf16 O through its own buffer (115,040 B at stages 2), lse as the bf16 path. In the dispatch
(gluon_eligible) for batched inputs with S % 128 == 0, causal or not, on the persistent kernel with FP8_STAGES = 2.
H200, causal, 32/2 heads, per-tensor descales, V^T untimed, TFLOP/s (session 27 sweep; p: persistent, s: stages):
B4 S8K p1 s2 796.9 (1.47x cuDNN bf16 541.3), p1 s3 773.8, p0 630-631, our Triton FP8 691.4; B1 S32K p1 s2 817.4
(1.38x cuDNN 592.7), p1 s3 815.6, p0 663-668, Triton FP8 741.5. Both wgmmas e4m3 m64n128k32 (QGMMA); P quantised
with scale 1.
P crosses the loop packed: _softmax turns each A register's 4 keys into one int32 (two cvt.e4m3x2 in an asm) and
_p_operand unpacks it by shifts LLVM folds away; P carried as 64 e4m3 values instead cost 110 PRMT + 32 SHF a
block (the probe's loop: 650 instructions, now 456). Session 27's first H200 run gave NaN (B1 S256, the first
variant): ptxas read two registers uninitialised while packing the diagonal tile's P, in every FP8 variant but one;
that tile now packs by prmt (PACK_E4M3_PRMT), and tests/ops check the compile (common.live_in_registers).
FP8 loop per warp and key block (Triton 3.6 SASS): 456 instructions, 66 MUFU.EX2, 8 QGMMA. Per 128x128 block per
SM: tensor 1024 clk (4096 e4m3 MAC/clk), MUFU 2 x 128 x 66 / 16 = 1056 clk, issue 2 warps x 456 = 912 slots per
SMSP: MUFU-bound on paper. Yet exp2 partly on the FMA pipe (EXP_EMU 16 / 32: a cubic, 8 FMA / ALU instructions per
MUFU.EX2 saved) measured 3-8% slower than all-MUFU on the H200 (sessions 27 and 28; bf16 lost too) and was
removed (git show ef9e7d1:nemotron_kernels/triton/gqa_attention_fwd_gluon.py). Every FP8 variant passed the sweep's
checks (o and lse against fp32 on the dequantised inputs) on the H200 in session 27. The per-tile descales (for the
dispatch) left the persistent loop as it was (463 instructions causal; AOT) and added 8 to the kernel.

Gluon kernels are never interpreted (gluon.jit always compiles), so this module is imported plainly, never through
common.kernel_module (no INTERPRETED / LOAD_TOKEN), and only for CUDA tensors (gqa_attention_fwd's dispatch).
"""
import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .common import aot_compile_gluon, cdiv, gluon_platform
from .gqa_attention_common import LOG2E, sm_count

HEAD_DIM = 128                              # the wgmma instr_shape N = 128 (S = Q K^T's and O's columns)
BLOCK_M, BLOCK_N, STAGES = 128, 128, 3      # query rows per CTA (two warpgroups of 64), keys per tile, K/V ring
WG_M = BLOCK_M // 2                         # query rows per consumer warpgroup
NUM_WARPS = 4                               # the default partition: consumer warpgroup 0
MAXNREG = 168                               # 12 warps x 32 threads x 168 <= 64K registers at launch
WORKER_REGS = (240, 24)                     # setmaxnreg targets: consumer warpgroup 1, producer


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, bars, q_row, q_col, kv_row, kv_col, n_blocks,
              BLOCK_N: gl.constexpr, STAGES: gl.constexpr, RAGGED: gl.constexpr, vt_row=0, FP8: gl.constexpr = False):
    """One warp: Q once (two [64, D] halves, one per consumer warpgroup), then for i = 0 .. n_blocks-1 key block
    j = n_blocks-1-i (the diagonal first, as the consumers want it) as K_i and V_i into stage i % STAGES. K and V
    have their own barriers, so a consumer can start S = Q K^T while V is still in flight. RAGGED: n_blocks = 0
    (a block past its sequence's end) loads nothing, as its consumers wait for nothing. FP8: V_i is the [D, BLOCK_N]
    tile of V^T ([B*HKV*D, S], _vt_fp8) at rows vt_row.., the block's keys as columns."""
    if not RAGGED or n_blocks > 0:
        _produce(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, bars, q_row, q_col, kv_row, kv_col, n_blocks,
                 BLOCK_N, STAGES, vt_row, FP8)


@gluon.jit
def _produce(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, bars, q_row, q_col, kv_row, kv_col, n_blocks,
             BLOCK_N: gl.constexpr, STAGES: gl.constexpr, vt_row=0, FP8: gl.constexpr = False):
    q_bar, k_ready, k_empty, v_ready, v_empty, turn = bars
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, q_col], q_bar, q_smem.index(0))
    tma.async_copy_global_to_shared(q_desc, [q_row + q_desc.block_type.shape[0], q_col], q_bar, q_smem.index(1))
    _produce_kv(k_desc, v_desc, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, kv_row, kv_col, n_blocks,
                BLOCK_N, STAGES, vt_row, FP8)


@gluon.jit
def _produce_kv(k_desc, v_desc, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, kv_row, kv_col, n_blocks,
                BLOCK_N: gl.constexpr, STAGES: gl.constexpr, vt_row=0, FP8: gl.constexpr = False, g=0, next_q=None):
    """The K/V ring of the forward's producers and the Gluon backward's dq producer: for i = 0 .. n_blocks-1 the
    key block j = n_blocks-1-i (rows kv_row + j BLOCK_N..) as K_i and V_i into stage (g + i) % STAGES, each on its
    own ready barrier once the consumers released the stage (its empty barrier); g: the ring's count of earlier
    tiles (the persistent producer's). next_q (the persistent producer's (q_desc, q_smem, q_bar, q_free, q_row,
    q_col, k)): tile k's two Q halves, half 0 before K_0 and half 1 between K_0 and V_0 (_load_q_half)."""
    for i in range(n_blocks):
        stage = (g + i) % STAGES
        # a fresh mbarrier counts its (virtual) previous phase as complete: waiting on parity 1 passes at once,
        # so the first STAGES tiles need no release
        phase = ((g + i) // STAGES) & 1
        key_row = kv_row + (n_blocks - 1 - i) * BLOCK_N
        if next_q is not None:
            if i == 0:
                _load_q_half(next_q, 0)
        mbarrier.wait(k_empty.index(stage), phase ^ 1)
        mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [key_row, kv_col], k_ready.index(stage), k_bufs.index(stage))
        if next_q is not None:
            if i == 0:
                _load_q_half(next_q, 1)
        mbarrier.wait(v_empty.index(stage), phase ^ 1)
        mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
        _load_v(v_desc, v_bufs.index(stage), v_ready.index(stage), key_row, kv_row, kv_col, vt_row, FP8)


@gluon.jit
def _load_q_half(next_q, w: gl.constexpr):
    """The persistent producer's Q half w of tile k, once group w released its buffer (q_free[w]: the group's last
    S of tile k-1 done; parity 1 on a fresh barrier passes at once for k = 0)."""
    q_desc, q_smem, q_bar, q_free, q_row, q_col, k = next_q
    mbarrier.wait(q_free.index(w), (k & 1) ^ 1)
    mbarrier.expect(q_bar.index(w), q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row + w * q_desc.block_type.shape[0], q_col], q_bar.index(w),
                                    q_smem.index(w))


@gluon.jit
def _load_v(v_desc, buf, bar, key_row, kv_row, kv_col, vt_row, FP8: gl.constexpr):
    """The TMA load of one V tile: V [BLOCK_N, D] at rows key_row.. (16-bit), or FP8 V^T [D, BLOCK_N] at rows
    vt_row.. (this batch's kv head's), columns key_row - kv_row.. (the block's keys within the sequence)."""
    if FP8:
        tma.async_copy_global_to_shared(v_desc, [vt_row, key_row - kv_row], bar, buf)
    else:
        tma.async_copy_global_to_shared(v_desc, [key_row, kv_col], bar, buf)


@gluon.jit
def _wait_turn(turn, t, WG: gl.constexpr):
    """Ping-pong (FA3): WG 0 issues its t-th batch of wgmmas after WG 1 issued its (t-1)-th, WG 1 its t-th after
    WG 0's t-th. turn[w] completes a phase when the other group passes the turn to w; WG 0 starts (parity 1 on a
    fresh barrier passes at once)."""
    mbarrier.wait(turn.index(WG), (t & 1) ^ (1 - WG))


@gluon.jit
def _pass_turn(turn, WG: gl.constexpr):
    mbarrier.arrive(turn.index(1 - WG), count=1)


# FP8's P: keys 4j .. 4j+3 ($1 .. $4, fp32) -> e4m3 bytes 0 .. 3 of one int32 (cvt puts its first source in the
# high byte). PACK_E4M3 joins the two 16-bit pairs by a vector mov (F2FP.MERGE_C in SASS, no PRMT). In the diagonal
# tile, where masked keys make pairs of equal 16-bit halves, ptxas 12.8 (Triton 3.6) reuses such a half through
# MERGE_C before computing it: registers read uninitialised (common.live_in_registers: R154 / R155), garbage bytes
# for keys that should weigh 0, 0x7F / 0xFF among them e4m3 NaN (session 27's FP8 NaN). PACK_E4M3_PRMT, for that
# tile, widens the pairs and joins them by prmt (+1 PRMT a register; the loop keeps PACK_E4M3).
PACK_E4M3 = gl.constexpr("{ .reg .b16 lo, hi; cvt.rn.satfinite.e4m3x2.f32 lo, $2, $1; "
                         "cvt.rn.satfinite.e4m3x2.f32 hi, $4, $3; mov.b32 $0, {lo, hi}; }")
PACK_E4M3_PRMT = gl.constexpr("{ .reg .b16 lo, hi; .reg .b32 l, h; cvt.rn.satfinite.e4m3x2.f32 lo, $2, $1; "
                              "cvt.rn.satfinite.e4m3x2.f32 hi, $4, $3; cvt.u32.u16 l, lo; cvt.u32.u16 h, hi; "
                              "prmt.b32 $0, l, h, 0x5410; }")


@gluon.jit
def _softmax(s, m_i, l_i, qk_scale, key0, row0, MASK: gl.constexpr, mma: gl.constexpr,
             DTYPE: gl.constexpr, key_end=0, BOUND: gl.constexpr = False, FP8: gl.constexpr = False):
    """Online softmax of one score tile s [64, BLOCK_N] fp32 in base 2 (x = s * qk_scale, qk_scale = softmax
    scale * log2 e). m_i, l_i [64]: running max (scaled) and sum. MASK: keys key0.. past rows row0.. -> -inf;
    BOUND: keys key0.. from key_end on (past a ragged sequence's end: the next one's) -> -inf.
    -> (P [64, BLOCK_N] in DTYPE (the inputs') as the A operand of the P V wgmma, alpha [64] (the factor for O's
    older terms), m_new, l_new). l sums the fp32 P, not the rounded P of the wgmma (as FA3).
    FP8 (DTYPE e4m3): P quantised with scale 1 (P <= 1) and its keys reordered within each 32 (see below), returned
    packed, 4 e4m3 to an int32 [64, BLOCK_N / 4] (_p_operand unpacks it for the wgmma)."""
    WG_M: gl.constexpr = s.shape[0]
    BLOCK_N: gl.constexpr = s.shape[1]
    if MASK:
        # every row keeps at least its own key (Sq == Sk): no all--inf row
        rows = row0 + gl.arange(0, WG_M, layout=gl.SliceLayout(1, mma))
        cols = key0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
        s = gl.where(gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1), s, -float("inf"))
    if BOUND:
        # the tile holds the sequence's last key (key0 < key_end): no all--inf row either
        cols = key0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
        s = gl.where(gl.expand_dims(cols < key_end, 0), s, -float("inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)                        # [64]
    alpha = gl.exp2(m_i - m_new)                                                  # [64]; 0 when m_i = -inf
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))                          # [64, BLOCK_N]
    l_new = l_i * alpha + gl.sum(p, axis=1)
    if FP8:
        # 8-bit A wants keys 4c..4c+3 (+16) of each 32 in lane c % 4 (k_width 4), the accumulator holds 2c, 2c+1
        # (+8, +16, +24): rather than move bytes across lanes, reorder the keys (as FA3): P'[:, 32g+16h+4c+2e+p] =
        # P[:, 32g+16h+8e+2c+p], a relabelling of registers (assert_trivial); V^T's keys come in the same order
        # (_vt_fp8), so P' V' = P V
        # (in fp32, then one asm per A register: two cvt.e4m3x2 and a 16-bit pair move, where .to(e4m3) went through
        # single bytes: 3 PRMT + 2 SHF more per register in the loop's SASS)
        pr = gl.reshape(p, [WG_M, BLOCK_N // 32, 2, 2, 4, 2])                       # [row, g, h, e, c, p]
        pr = gl.reshape(gl.permute(pr, (0, 1, 2, 4, 3, 5)), [WG_M, BLOCK_N])       # [row, (g, h, c, e, p)]
        pr = gl.convert_layout(pr, gl.DotOperandLayout(operand_index=0, parent=mma, k_width=4),
                               assert_trivial=True)
        # the 4 keys of each A register (4j .. 4j+3 of P', consecutive registers of a thread) -> one int32: the
        # loop carries P as 16 packed registers, not 64 bytes (_p_operand unpacks it for the wgmma)
        even, odd = gl.split(gl.reshape(pr, [WG_M, BLOCK_N // 4, 2, 2]))        # key 4j + 2a + b: b = 0, 1
        k0, k2 = gl.split(even)
        k1, k3 = gl.split(odd)
        p_op = gl.inline_asm_elementwise(PACK_E4M3_PRMT if MASK else PACK_E4M3, "=r,r,r,r,r", [k0, k1, k2, k3],
                                         dtype=gl.int32, is_pure=True, pack=1)
    else:
        # accumulator layout -> A-operand layout of the same warps: a register shuffle, no shared memory (k_width
        # 2: two 16-bit values per 32-bit register)
        p_op = gl.convert_layout(p.to(DTYPE), gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2))
    return p_op, alpha, m_new, l_new


@gluon.jit
def _consumer(q_desc, k_desc, o_desc, q_smem, k_bufs, v_bufs, bars, lse_row, q_row, q_col, q_pos0, n_blocks,
              qk_scale, seq_len, o_ptr, WG: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              CAUSAL: gl.constexpr, RAGGED: gl.constexpr, O_STRIDE: gl.constexpr, o_smem=None, descale_row=None,
              FP8: gl.constexpr = False):
    """A consumer warpgroup (4 warps): query rows WG*64 .. WG*64+63 of the CTA's block (positions q_pos0 + ..,
    rows q_row + .. of the [B*S, Hq*D] views). Iteration i consumes ring slot i % STAGES (key block n_blocks-1-i)
    and issues S_i = Q K_i^T before O += P_{i-1} V_{i-1}; O is rescaled by alpha_i once that wgmma is done.
    lse_row: this block's first lse element. RAGGED (seq_len, o_ptr, O_STRIDE = Hq*D: see the kernel): n_blocks = 0
    does nothing; rows from seq_len on are computed (from the next sequence's Q or TMA's zeros; row-local) but never
    stored. FP8 (e4m3 Q / K / V^T, bf16 O; not RAGGED): O goes out through o_smem (bf16 [2, 64, D]), scaled by
    v_descale (descale_row[2]: the tile's (batch, kv head) row of the descale table)."""
    if not RAGGED or n_blocks > 0:
        _consume(q_desc, k_desc, o_desc, q_smem, k_bufs, v_bufs, bars, lse_row, q_row, q_col, q_pos0, n_blocks,
                 qk_scale, seq_len, o_ptr, WG, BLOCK_N, STAGES, CAUSAL, RAGGED, O_STRIDE, o_smem, descale_row, FP8)


@gluon.jit
def _store_rows(buf, ptr, row, col, n_rows, ROW_STRIDE: gl.constexpr):
    """Rows 0 .. n_rows-1 of buf [R, 128] 16-bit (shared memory this 4-warp group wrote) to rows row.. of ptr's
    [*, ROW_STRIDE] matrix from column col, by masked 16-byte register stores: a TMA store of the whole box would
    also write rows n_rows.. (the next packed sequence's; n_rows <= 0 stores nothing)."""
    R: gl.constexpr = buf.shape[0]
    gl.static_assert(buf.shape[1] == 128 and buf.dtype.primitive_bitwidth == 16, "a [R, 128] 16-bit tile")
    # 8 elements (16 bytes) a thread, 16 threads a row, 4 warps: 8 rows a pass
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [4, 1], [1, 0])
    gl.thread_barrier()                                                           # the group's writes to buf
    vals = buf.load(layout)                                                       # [R, 128]
    rows = gl.arange(0, R, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, 128, layout=gl.SliceLayout(0, layout))
    offs = gl.expand_dims((row + rows).to(gl.int64) * ROW_STRIDE, 1) + gl.expand_dims(col + cols, 0)
    mask = gl.expand_dims(rows < n_rows, 1) & gl.expand_dims(cols < 128, 0)
    gl.store(ptr + offs, vals, mask=mask)


@gluon.jit
def _consume(q_desc, k_desc, o_desc, q_smem, k_bufs, v_bufs, bars, lse_row, q_row, q_col, q_pos0, n_blocks,
             qk_scale, seq_len, o_ptr, WG: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
             CAUSAL: gl.constexpr, RAGGED: gl.constexpr, O_STRIDE: gl.constexpr, o_smem=None, descale_row=None,
             FP8: gl.constexpr = False):
    q_bar, k_ready, k_empty, v_ready, v_empty, turn = bars
    WG_M: gl.constexpr = q_desc.block_type.shape[0]
    INSTR_K: gl.constexpr = 32 if FP8 else 16                                    # 32 bytes of K per wgmma
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, 128, INSTR_K])
    row_layout: gl.constexpr = gl.SliceLayout(1, mma)
    row0 = q_pos0 + WG * WG_M                                                     # its first query position
    mbarrier.wait(q_bar, 0)
    acc, m_i, l_i = _attend(q_smem.index(WG), k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, turn, q_bar,
                            n_blocks, 0, 0, qk_scale, row0, seq_len, k_desc.dtype, WG, BLOCK_N, STAGES, CAUSAL,
                            RAGGED, False, FP8)

    # lse [64] (natural log, the Triton forward's convention; every row saw a key, so l > 0); rows replicated
    # across a quad's lanes store the same value
    lse = (m_i + gl.log2(l_i)) * 0.6931471805599453                             # * ln 2
    if RAGGED:                                                                    # rows before seq_len only
        offs = gl.arange(0, WG_M, layout=row_layout)
        gl.store(lse_row + WG * WG_M + offs, lse, mask=row0 + offs < seq_len)
    else:
        gl.store(lse_row + WG * WG_M + gl.arange(0, WG_M, layout=row_layout), lse)
    if FP8:
        # O = acc * v_descale / l through its own bf16 buffer (Q's is 8-bit)
        o = (acc * gl.expand_dims(gl.load(descale_row + 2) / l_i, 1)).to(o_desc.dtype)
        o_buf = o_smem.index(WG)
    else:
        # O = acc / l through this group's Q buffer (its last reader, the S wgmma, has completed)
        o = (acc / gl.expand_dims(l_i, 1)).to(o_desc.dtype)                       # [64, D]
        o_buf = q_smem.index(WG)
    o_buf.store(o)
    if RAGGED and row0 + WG_M > seq_len:                                         # the sequence ends in these rows
        _store_rows(o_buf, o_ptr, q_row + WG * WG_M, q_col, seq_len - row0, O_STRIDE)
    else:
        fence_async_shared()                                                      # generic writes -> TMA reads
        tma.async_copy_shared_to_global(o_desc, [q_row + WG * WG_M, q_col], o_buf)
        tma.store_wait(pendings=0)


@gluon.jit
def _p_operand(p_op, mma: gl.constexpr, FP8: gl.constexpr):
    """The A operand of O += P V from _softmax's P: as is (16-bit), or FP8's packed int32 [64, BLOCK_N / 4] (4 e4m3
    keys a register) as the e4m3 [64, BLOCK_N] tensor of the DotOperand layout (k_width 4), byte k of register j
    being key 4j + k (shifts and truncations LLVM folds back into the registers)."""
    if FP8:
        b0 = p_op.to(gl.int8).to(gl.float8e4nv, bitcast=True)
        b1 = (p_op >> 8).to(gl.int8).to(gl.float8e4nv, bitcast=True)
        b2 = (p_op >> 16).to(gl.int8).to(gl.float8e4nv, bitcast=True)
        b3 = (p_op >> 24).to(gl.int8).to(gl.float8e4nv, bitcast=True)
        p4 = gl.permute(gl.join(gl.join(b0, b1), gl.join(b2, b3)), (0, 1, 3, 2))  # [row, j, a, b]: key 4j + 2a + b
        p8 = gl.reshape(p4, [p_op.shape[0], 4 * p_op.shape[1]])
        return gl.convert_layout(p8, gl.DotOperandLayout(operand_index=0, parent=mma, k_width=4), assert_trivial=True)
    else:
        return p_op


@gluon.jit
def _v_operand(v_bufs, stage, FP8: gl.constexpr):
    """The B operand [BLOCK_N, D] of O += P V from ring slot `stage`: 16-bit V [BLOCK_N, D] as stored (N-major, which
    16-bit wgmma allows); FP8 V^T [D, BLOCK_N] viewed transposed, K-major as 8-bit wgmma requires."""
    if FP8:
        return v_bufs.index(stage).permute((1, 0))
    else:
        return v_bufs.index(stage)


@gluon.jit
def _attend(q, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, turn, q_free, n_blocks, g0, t0, qk_scale, row0,
            seq_len, DTYPE: gl.constexpr, WG: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
            CAUSAL: gl.constexpr, RAGGED: gl.constexpr, FREE_Q: gl.constexpr, FP8: gl.constexpr = False):
    """One consumer warpgroup's key blocks of one query tile: q [64, D] (shared, landed) against key blocks
    n_blocks-1 .. 0, the i-th in ring slot (g0 + i) % STAGES (g0: the ring's count of blocks before this tile, 0
    unless persistent), its wgmma batches the turns t0 .. t0 + n_blocks (t0: turns taken before, ditto). Iteration
    i issues S_i = Q K_i^T before O += P_{i-1} V_{i-1}; O is rescaled by alpha_i once that wgmma is done.
    FREE_Q: arrive on q_free once the last S (q's last reader) has completed. -> (acc [64, D] fp32 (O * l),
    m_i, l_i [64]). FP8: e4m3 wgmmas (m64n128k32; V^T tiles used through a permute, K-major as 8-bit wgmma
    requires), P in e4m3 (_softmax)."""
    HEAD_D: gl.constexpr = q.shape[1]
    WG_M: gl.constexpr = q.shape[0]
    # wgmma accumulator layout: 4 warps stacked along M (16 rows each), m64n128k16 instructions (k32 for 8-bit)
    INSTR_K: gl.constexpr = 32 if FP8 else 16
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, 128, INSTR_K])
    row_layout: gl.constexpr = gl.SliceLayout(1, mma)
    s_zero = gl.full([WG_M, BLOCK_N], 0.0, gl.float32, layout=mma)
    acc = gl.full([WG_M, HEAD_D], 0.0, gl.float32, layout=mma)                    # O [64, D], fp32
    m_i = gl.full([WG_M], -float("inf"), gl.float32, layout=row_layout)
    l_i = gl.full([WG_M], 0.0, gl.float32, layout=row_layout)

    # i = 0: the last key block (causal: the diagonal, masked); O is still zero, so no P V yet
    first = g0 % STAGES
    _wait_turn(turn, t0, WG)
    mbarrier.wait(k_ready.index(first), (g0 // STAGES) & 1)
    s = warpgroup_mma(q, k_bufs.index(first).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    _pass_turn(turn, WG)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s, ))                         # S_0 [64, BLOCK_N]
    mbarrier.arrive(k_empty.index(first), count=1)                                # K_0 read: may be refilled
    if FREE_Q:
        if n_blocks == 1:
            mbarrier.arrive(q_free, count=1)
    # RAGGED, causal: a row before seq_len sees keys <= itself < seq_len only, so the diagonal mask also bounds the
    # keys; full: the last key block (this one) is bounded explicitly
    p_op, alpha, m_i, l_i = _softmax(s, m_i, l_i, qk_scale, (n_blocks - 1) * BLOCK_N, row0, CAUSAL, mma, DTYPE,
                                     seq_len, RAGGED and not CAUSAL, FP8)

    for i in range(1, n_blocks):                                                  # unmasked key blocks
        stage = (g0 + i) % STAGES
        phase = ((g0 + i) // STAGES) & 1
        prev = (g0 + i - 1) % STAGES
        prev_phase = ((g0 + i - 1) // STAGES) & 1
        _wait_turn(turn, t0 + i, WG)
        mbarrier.wait(k_ready.index(stage), phase)
        s = warpgroup_mma(q, k_bufs.index(stage).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(prev), prev_phase)
        acc = warpgroup_mma(_p_operand(p_op, mma, FP8), _v_operand(v_bufs, prev, FP8), acc,
                            is_async=True)                                        # O += P_{i-1} V_{i-1}
        _pass_turn(turn, WG)
        s = warpgroup_mma_wait(num_outstanding=1, deps=(s, ))                     # S_i done (issued first)
        mbarrier.arrive(k_empty.index(stage), count=1)
        if FREE_Q:
            if i == n_blocks - 1:
                mbarrier.arrive(q_free, count=1)
        p_op, alpha, m_i, l_i = _softmax(s, m_i, l_i, qk_scale, (n_blocks - 1 - i) * BLOCK_N, row0, False, mma,
                                         DTYPE, 0, False, FP8)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))                 # P_{i-1} V_{i-1} done
        mbarrier.arrive(v_empty.index(prev), count=1)
        acc = acc * gl.expand_dims(alpha, 1)                                      # O to the new running max

    # the last P V
    last = (g0 + n_blocks - 1) % STAGES
    last_phase = ((g0 + n_blocks - 1) // STAGES) & 1
    _wait_turn(turn, t0 + n_blocks, WG)
    mbarrier.wait(v_ready.index(last), last_phase)
    acc = warpgroup_mma(_p_operand(p_op, mma, FP8), _v_operand(v_bufs, last, FP8), acc, is_async=True)
    _pass_turn(turn, WG)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    mbarrier.arrive(v_empty.index(last), count=1)
    return acc, m_i, l_i


@gluon.jit
def _kv_rings(k_desc, v_desc, STAGES: gl.constexpr):
    """The K and V rings, [STAGES] + each descriptor's box, and their ready / empty mbarriers [STAGES, 1],
    initialised (the fence is the caller's). -> (k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty)"""
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)      # the producer's expect-tx arrival
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)      # one arrival per consumer warpgroup
        mbarrier.init(v_empty.index(i), count=2)
    return k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty


@gluon.jit
def _gqa_attn_fwd_gluon_kernel(q_desc, k_desc, v_desc, o_desc, lse_ptr, seqlen, qk_scale, o_ptr, cu_seqlens,
                               descale_ptr, HQ: gl.constexpr, HKV: gl.constexpr, CAUSAL: gl.constexpr,
                               BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                               WORKER_REG_0: gl.constexpr, WORKER_REG_1: gl.constexpr, RAGGED: gl.constexpr,
                               VARLEN: gl.constexpr, FP8: gl.constexpr):
    """q_desc / o_desc: [B*S, HQ*D] in [64, D] boxes; k_desc / v_desc: [B*S, HKV*D] in [BLOCK_N, D] boxes;
    lse_ptr: fp32 [B, HQ, S] contiguous. Grid (cdiv(S, BLOCK_M), B * HQ).
    RAGGED (S need not be a multiple of BLOCK_M): the last block of a sequence masks keys / stores by rows;
    o_ptr: o's data ([B*S, HQ*D] contiguous; None unless RAGGED). VARLEN (RAGGED too): B = 1 and cu_seqlens
    [num_seqs + 1] splits the S = T packed rows into sequences; lse [1, HQ, T]; grid (cdiv(max_seqlen, BLOCK_M),
    num_seqs * HQ), blocks past their sequence's end do nothing.
    FP8 (not RAGGED; here for the sweep only, the dispatch runs FP8 on the persistent kernel): q / k e4m3, v_desc
    over V^T [B*HKV*D, S] e4m3 (_vt_fp8) in [D, BLOCK_N] boxes, o bf16; descale_ptr -> fp32 [B, HKV, 3]
    (q_descale, k_descale, v_descale of each (batch, kv head), descale_table): S is scaled by q_descale * k_descale
    (folded into qk_scale), O by v_descale."""
    gl.static_assert(BLOCK_M == BLOCK_N, "the causal bounds assume square blocks")
    gl.static_assert(2 * q_desc.block_type.shape[0] == BLOCK_M, "two consumer warpgroups of BLOCK_M / 2 rows")
    gl.static_assert(RAGGED or not VARLEN, "varlen is ragged")
    HEAD_D: gl.constexpr = q_desc.block_type.shape[1]
    pid_m = gl.num_programs(0) - 1 - gl.program_id(0)                             # longest blocks first
    bh = gl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    q_pos0 = pid_m * BLOCK_M                                                      # the block's first position
    if VARLEN:                                        # sequence b: packed rows cu[b] .. cu[b+1]-1
        seq0 = gl.load(cu_seqlens + b).to(gl.int32)
        seq_len = gl.load(cu_seqlens + b + 1).to(gl.int32) - seq0
        lse_row = lse_ptr + h.to(gl.int64) * seqlen + seq0 + q_pos0               # lse [1, HQ, T]
    else:
        seq0 = b * seqlen
        seq_len = seqlen
        lse_row = lse_ptr + bh.to(gl.int64) * seqlen + q_pos0
    q_row = seq0 + q_pos0                                                         # its row in the [B*S, .] views
    q_col = h * HEAD_D
    kv_row = seq0
    kv_col = (h // (HQ // HKV)) * HEAD_D                                          # GQA: kv head h // group
    if CAUSAL:
        n_blocks = pid_m + 1                                                      # key blocks 0 .. pid_m
    elif RAGGED:
        n_blocks = gl.cdiv(seq_len, BLOCK_N)
    else:
        n_blocks = seqlen // BLOCK_N
    if RAGGED:
        n_blocks = gl.where(q_pos0 < seq_len, n_blocks, 0)                       # 0: past the sequence's end
    if FP8:
        gl.static_assert(not RAGGED, "FP8: S % BLOCK_M == 0, batched")
        gl.static_assert(q_desc.dtype == gl.float8e4nv and o_desc.dtype == gl.bfloat16, "FP8: e4m3 in, bf16 out")
        kv_bh = b * HKV + h // (HQ // HKV)                                        # (batch, kv head)
        descale_row = descale_ptr + kv_bh * 3
        qk_scale = qk_scale * gl.load(descale_row) * gl.load(descale_row + 1)    # S = Q K^T q_descale k_descale
        vt_row = kv_bh * HEAD_D                                                   # its rows of V^T
    else:
        descale_row: gl.constexpr = None              # (a constexpr: no partition capture)
        vt_row = 0

    # shared memory, 16-bit: Q [2, 64, D] 32 KB (reused for O), K and V rings [STAGES, BLOCK_N, D] 32 KB a stage
    # each (32 + 64 + 64 KB at 2 stages, 32 + 96 + 96 at 3); FP8: Q 16 KB, the K and V^T ([STAGES, D, BLOCK_N])
    # rings 16 KB a stage each, and O [2, 64, D] bf16 32 KB of its own
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)                     # before the rings': the init order shows in the SASS
    k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty = _kv_rings(k_desc, v_desc, STAGES)
    if FP8:                                           # after the rings: the allocation order sets the offsets
        o_smem = gl.allocate_shared_memory(o_desc.dtype, [2] + o_desc.block_type.shape, o_desc.layout)
    else:
        o_smem: gl.constexpr = None                   # O goes through Q (a constexpr: no partition capture)
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)
    fence_async_shared()                              # barrier inits visible to the async proxy (TMA)
    bars = (q_bar, k_ready, k_empty, v_ready, v_empty, turn)

    WG0: gl.constexpr = 0
    WG1: gl.constexpr = 1
    O_STRIDE: gl.constexpr = HQ * HEAD_D
    gl.warp_specialize([
        # default partition (num_warps = 4): consumer of rows 0..63
        (_consumer, (q_desc, k_desc, o_desc, q_smem, k_bufs, v_bufs, bars, lse_row, q_row, q_col, q_pos0, n_blocks,
                     qk_scale, seq_len, o_ptr, WG0, BLOCK_N, STAGES, CAUSAL, RAGGED, O_STRIDE, o_smem, descale_row,
                     FP8)),
        # worker, 4 warps: consumer of rows 64..127
        (_consumer, (q_desc, k_desc, o_desc, q_smem, k_bufs, v_bufs, bars, lse_row, q_row, q_col, q_pos0, n_blocks,
                     qk_scale, seq_len, o_ptr, WG1, BLOCK_N, STAGES, CAUSAL, RAGGED, O_STRIDE, o_smem, descale_row,
                     FP8)),
        # worker, 1 warp: TMA loads
        (_producer, (q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, bars, q_row, q_col, kv_row, kv_col, n_blocks,
                     BLOCK_N, STAGES, RAGGED, vt_row, FP8)),
    ], [4, 1], [WORKER_REG_0, WORKER_REG_1])


# ------------------------------------------------------------------------------ persistent (the batched dispatch)


@gluon.jit
def _tile_count(pid, n_progs, num_tiles):
    """How many tiles program pid of n_progs walks (see _tile): one a wave, the last wave partial."""
    waves = num_tiles // n_progs
    last_pos = pid + (waves % 2) * (n_progs - 1 - 2 * pid)
    return waves + (last_pos < num_tiles % n_progs).to(gl.int32)


@gluon.jit
def _tile(k, pid, n_progs, n_mblocks, num_bh, seqlen, HQ: gl.constexpr, HKV: gl.constexpr, HEAD_D: gl.constexpr,
          BLOCK_M: gl.constexpr, CAUSAL: gl.constexpr):
    """Program pid's k-th tile of the static schedule: tiles t = 0 .. n_mblocks * num_bh - 1 longest first (query
    block n_mblocks - 1 - t // num_bh of (batch * head) t % num_bh), dealt in waves of n_progs, snaking (even waves
    to programs 0 .. n_progs-1, odd waves back), so the programs' sums of key blocks stay within a block or so.
    -> (q_row, q_col, kv_row, kv_col, q_pos0, n_blocks, lse_off, kv_bh): as the batched kernel computes them
    (kv_bh = b * HKV + kv head: FP8's rows of V^T and of the descale table)."""
    t = k * n_progs + pid + (k % 2) * (n_progs - 1 - 2 * pid)
    pid_m = n_mblocks - 1 - t // num_bh
    bh = t % num_bh
    b = bh // HQ
    h = bh % HQ
    q_pos0 = pid_m * BLOCK_M
    if CAUSAL:
        n_blocks = pid_m + 1
    else:
        n_blocks = n_mblocks
    lse_off = bh.to(gl.int64) * seqlen + q_pos0
    kv_h = h // (HQ // HKV)
    return (b * seqlen + q_pos0, h * HEAD_D, b * seqlen, kv_h * HEAD_D, q_pos0, n_blocks, lse_off, b * HKV + kv_h)


@gluon.jit
def _producer_persistent(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, bars, q_free, pid, n_progs, seqlen,
                         num_bh, HQ: gl.constexpr, HKV: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                         STAGES: gl.constexpr, CAUSAL: gl.constexpr, FP8: gl.constexpr = False):
    """The TMA warp over this program's tiles. The ring's count g and Q's tile count k run on across tiles (their
    barriers' phases continue, never reset). Tile k's Q half w waits for q_free[w] (group w's last S of tile k-1
    done; parity 1 on a fresh barrier passes at once for k = 0); its first K goes between the two halves, so group
    0's first S of the next tile needs nothing of group 1."""
    q_bar, k_ready, k_empty, v_ready, v_empty, turn = bars
    HEAD_D: gl.constexpr = q_desc.block_type.shape[1]
    n_mblocks = seqlen // BLOCK_M
    g = 0
    for k in range(_tile_count(pid, n_progs, n_mblocks * num_bh)):
        q_row, q_col, kv_row, kv_col, q_pos0, n_blocks, lse_off, kv_bh = _tile(k, pid, n_progs, n_mblocks, num_bh,
                                                                                seqlen, HQ, HKV, HEAD_D, BLOCK_M,
                                                                                CAUSAL)
        vt_row = kv_bh * HEAD_D                                                   # FP8: its rows of V^T
        _produce_kv(k_desc, v_desc, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, kv_row, kv_col, n_blocks,
                    BLOCK_N, STAGES, vt_row, FP8, g, (q_desc, q_smem, q_bar, q_free, q_row, q_col, k))
        g += n_blocks


@gluon.jit
def _consumer_persistent(q_desc, k_desc, o_desc, q_smem, o_smem, k_bufs, v_bufs, bars, q_free, lse_ptr, qk_scale,
                         pid, n_progs, seqlen, num_bh, WG: gl.constexpr, HQ: gl.constexpr, HKV: gl.constexpr,
                         BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
                         O_OWN: gl.constexpr, descale_ptr=None, FP8: gl.constexpr = False):
    """Consumer warpgroup WG over this program's tiles (_tile); the ring count g and the turn count tc run on
    across tiles (a tile takes n_blocks + 1 turns). O_OWN: O goes through its own buffer, Q's half is freed once
    the tile's last S is done (the producer loads the next Q during the last P V and the epilogue), and a tile's
    O store is waited for only before the next tile writes the buffer; else O goes through Q's half, freed once
    the store has read it. FP8 (O_OWN): S scaled by the tile's q_descale * k_descale, O by its v_descale (the
    tile's (batch, kv head) row of the descale table [B, HKV, 3])."""
    q_bar, k_ready, k_empty, v_ready, v_empty, turn = bars
    WG_M: gl.constexpr = q_desc.block_type.shape[0]
    HEAD_D: gl.constexpr = q_desc.block_type.shape[1]
    INSTR_K: gl.constexpr = 32 if FP8 else 16
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, 128, INSTR_K])
    row_layout: gl.constexpr = gl.SliceLayout(1, mma)
    q = q_smem.index(WG)
    o_buf = o_smem.index(WG)
    n_mblocks = seqlen // BLOCK_M
    g = 0
    tc = 0
    for k in range(_tile_count(pid, n_progs, n_mblocks * num_bh)):
        q_row, q_col, kv_row, kv_col, q_pos0, n_blocks, lse_off, kv_bh = _tile(k, pid, n_progs, n_mblocks, num_bh,
                                                                                seqlen, HQ, HKV, HEAD_D, BLOCK_M,
                                                                                CAUSAL)
        row0 = q_pos0 + WG * WG_M
        if FP8:                                       # loaded before the wait for Q, which hides their latency
            descale_row = descale_ptr + kv_bh * 3
            tile_scale = qk_scale * gl.load(descale_row) * gl.load(descale_row + 1)   # * q_descale k_descale
            o_scale = gl.load(descale_row + 2)                                          # v_descale
        else:
            tile_scale = qk_scale
        mbarrier.wait(q_bar.index(WG), k & 1)
        acc, m_i, l_i = _attend(q, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, turn, q_free.index(WG),
                                n_blocks, g, tc, tile_scale, row0, seqlen, k_desc.dtype, WG, BLOCK_N, STAGES, CAUSAL,
                                False, O_OWN, FP8)
        g += n_blocks
        tc += n_blocks + 1
        lse = (m_i + gl.log2(l_i)) * 0.6931471805599453                         # natural log
        gl.store(lse_ptr + lse_off + WG * WG_M + gl.arange(0, WG_M, layout=row_layout), lse)
        if FP8:
            o = (acc * gl.expand_dims(o_scale / l_i, 1)).to(o_desc.dtype)
        else:
            o = (acc / gl.expand_dims(l_i, 1)).to(o_desc.dtype)                   # [64, D]
        if O_OWN:
            tma.store_wait(pendings=0)                # the last tile's O store has read o_buf (+ a group barrier)
        o_buf.store(o)
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [q_row + WG * WG_M, q_col], o_buf)
        if not O_OWN:
            tma.store_wait(pendings=0)
            mbarrier.arrive(q_free.index(WG), count=1)                           # Q's half (= o_buf) read
    if O_OWN:
        tma.store_wait(pendings=0)


@gluon.jit
def _gqa_attn_fwd_gluon_persistent_kernel(q_desc, k_desc, v_desc, o_desc, lse_ptr, seqlen, qk_scale, num_bh,
                                          descale_ptr, HQ: gl.constexpr, HKV: gl.constexpr, CAUSAL: gl.constexpr,
                                          BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                                          WORKER_REG_0: gl.constexpr, WORKER_REG_1: gl.constexpr,
                                          FP8: gl.constexpr):
    """The batched kernel (S % BLOCK_M == 0, not ragged) on a persistent grid (min(#SMs, tiles), ) walking the
    static longest-first schedule of _tile; num_bh = B * HQ. The same partitions and per-tile work (_attend), but
    no launch / prologue / epilogue per tile on the critical path: the producer streams the next tile's Q and K/V
    while the consumers finish the current one. Shared memory: STAGES = 2 adds an O buffer (32 + 128 + 32 KB);
    STAGES = 3 has no room for one (32 + 192 KB), so O goes through Q as in the batched kernel. FP8 (see the batched
    kernel; the descales are read per tile): always its own bf16 O buffer (Q 16 + K 32 / 48 + V^T 32 / 48 + O 32
    KB at 2 / 3 stages)."""
    gl.static_assert(BLOCK_M == BLOCK_N, "the causal bounds assume square blocks")
    gl.static_assert(2 * q_desc.block_type.shape[0] == BLOCK_M, "two consumer warpgroups of BLOCK_M / 2 rows")
    O_OWN: gl.constexpr = STAGES == 2 or FP8
    if FP8:
        gl.static_assert(q_desc.dtype == gl.float8e4nv and o_desc.dtype == gl.bfloat16, "FP8: e4m3 in, bf16 out")
    pid = gl.program_id(0)
    n_progs = gl.num_programs(0)
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    # the allocation order sets the offsets, the init order shows in the SASS: q_bar, q_free before the rings'
    # barriers, O after the rings, and the rings' inits first
    q_bar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())    # Q half w landed
    q_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())   # Q half w free
    k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty = _kv_rings(k_desc, v_desc, STAGES)
    if O_OWN:
        o_smem = gl.allocate_shared_memory(o_desc.dtype, [2] + o_desc.block_type.shape, o_desc.layout)
    else:
        o_smem = q_smem
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_bar.index(i), count=1)
        mbarrier.init(q_free.index(i), count=1)     # its consumer group's one arrival
        mbarrier.init(turn.index(i), count=1)
    fence_async_shared()
    bars = (q_bar, k_ready, k_empty, v_ready, v_empty, turn)

    WG0: gl.constexpr = 0
    WG1: gl.constexpr = 1
    gl.warp_specialize([
        (_consumer_persistent, (q_desc, k_desc, o_desc, q_smem, o_smem, k_bufs, v_bufs, bars, q_free, lse_ptr,
                                qk_scale, pid, n_progs, seqlen, num_bh, WG0, HQ, HKV, BLOCK_M, BLOCK_N, STAGES,
                                CAUSAL, O_OWN, descale_ptr, FP8)),
        (_consumer_persistent, (q_desc, k_desc, o_desc, q_smem, o_smem, k_bufs, v_bufs, bars, q_free, lse_ptr,
                                qk_scale, pid, n_progs, seqlen, num_bh, WG1, HQ, HKV, BLOCK_M, BLOCK_N, STAGES,
                                CAUSAL, O_OWN, descale_ptr, FP8)),
        (_producer_persistent, (q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, bars, q_free, pid, n_progs, seqlen,
                                num_bh, HQ, HKV, BLOCK_M, BLOCK_N, STAGES, CAUSAL, FP8)),
    ], [4, 1], [WORKER_REG_0, WORKER_REG_1])


# ------------------------------------------------------------------------------------------------------- host
FP8 = torch.float8_e4m3fn
FP8_STAGES = 2          # the FP8 dispatch's K/V ring (persistent): the sweep's best (module docstring)
_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, FP8: gl.float8e4nv}


def inputs_ineligible_reason(q, k, v, cu_seqlens, max_seqlen=None,
                             dtypes=(torch.float16, torch.bfloat16)) -> str | None:
    """Why the Gluon attention kernels (this forward and gqa_attention_bwd_gluon) cannot take these q [B, Sq, Hq, D],
    k / v [B, Sk, Hkv, D] (None: they can): the platform (common.gluon_platform), one of `dtypes` (the forward adds
    FP8 e4m3), Sq == Sk, D = 128, not empty; varlen (cu_seqlens [num_seqs + 1] int32 / int64 on q's device): B = 1
    and max_seqlen given (q and k packed alike, as gqa_attention_fwd's check_qkv asks). Any S: blocks past a
    sequence's end are masked."""
    ok, why = gluon_platform(q.device)
    if not ok:
        return why
    if not q.device == k.device == v.device:
        return f"devices differ (q {q.device}, k {k.device}, v {v.device})"
    if not q.dtype == k.dtype == v.dtype or q.dtype not in dtypes:
        return f"dtype {q.dtype} ({' / '.join(str(t)[6:] for t in dtypes)} only)"
    if q.shape[1] != k.shape[1]:
        return f"Sq {q.shape[1]} != Sk {k.shape[1]}"
    if q.numel() == 0 or k.numel() == 0:
        return "empty input"
    if q.shape[3] != HEAD_DIM:
        return f"D {q.shape[3]} != {HEAD_DIM}"
    if cu_seqlens is not None:
        if q.shape[0] != 1:
            return f"varlen with B = {q.shape[0]} (packed sequences need B = 1)"
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            return f"cu_seqlens {cu_seqlens.dtype} {tuple(cu_seqlens.shape)} (1-D int32 / int64, 2+ offsets)"
        if cu_seqlens.device != q.device:
            return f"cu_seqlens on {cu_seqlens.device}, q on {q.device}"
        if max_seqlen is None:
            return "varlen without max_seqlen"
    return None


def _grid_rows(q, cu_seqlens, max_seqlen) -> tuple[int, int]:
    """(positions a sequence may hold, sequences): (S, B), or with cu_seqlens (max_seqlen, num_seqs)."""
    if cu_seqlens is None:
        return q.shape[1], q.shape[0]
    return max_seqlen, cu_seqlens.numel() - 1


def gluon_ineligible_reason(q, k, v, causal, cu_seqlens, descales, max_seqlen=None,
                            out_scale: float = 1.0) -> str | None:
    """Why the Gluon forward cannot run these inputs (None: it can): inputs_ineligible_reason (fp16 / bf16 / FP8
    e4m3), then for FP8 _fp8_ineligible_reason, for 16-bit inputs no descales (each None or a tensor), out_scale 1
    and, for ragged inputs (one CTA per block), the grid's limit. causal is either."""
    why = inputs_ineligible_reason(q, k, v, cu_seqlens, max_seqlen, (torch.float16, torch.bfloat16, FP8))
    if why is not None:
        return why
    if q.dtype == FP8:
        return _fp8_ineligible_reason(q, k, cu_seqlens, descales)
    if any(d is not None for d in descales):
        return "descales (16-bit inputs)"
    if out_scale != 1.0:
        return f"out_scale {out_scale} (16-bit inputs)"
    seqs = _grid_rows(q, cu_seqlens, max_seqlen)[1]
    if _ragged(q, cu_seqlens) and seqs * q.shape[2] > 65535:
        return f"{'num_seqs' if cu_seqlens is not None else 'B'} * Hq = {seqs * q.shape[2]} > 65535 (the grid's " \
               "second dimension)"
    return None


def gluon_eligible(q, k, v, causal, cu_seqlens, descales, max_seqlen=None, out_scale: float = 1.0) -> bool:
    """Whether gqa_attention_fwd runs these inputs with the Gluon kernel (see gluon_ineligible_reason)."""
    return gluon_ineligible_reason(q, k, v, causal, cu_seqlens, descales, max_seqlen, out_scale) is None


def _fp8_ineligible_reason(q8, k8, cu_seqlens, descales) -> str | None:
    """The FP8 kernel's scope past inputs_ineligible_reason: batched (no cu_seqlens), S % 128 == 0 (the persistent
    kernel's whole blocks), Hq % Hkv == 0, descales (q, k, v) each None or a float tensor of one element or
    [B or 1, Hkv] on q's device (descale_table)."""
    bsz, seqlen, hq, _ = q8.shape
    hkv = k8.shape[2]
    if cu_seqlens is not None:
        return "FP8 varlen (the FP8 kernel runs batched inputs only)"
    if seqlen % BLOCK_M:
        return f"FP8 with S {seqlen} % {BLOCK_M} != 0 (the FP8 kernel runs whole blocks only)"
    if hq % hkv:
        return f"Hq {hq} not a multiple of Hkv {hkv}"
    for name, d in zip(("q_descale", "k_descale", "v_descale"), descales):
        if d is None:
            continue
        if not isinstance(d, torch.Tensor) or not d.is_floating_point() or d.device != q8.device:
            return f"{name}: not a float tensor on q's device"
        if d.numel() != 1 and (d.dim() != 2 or d.shape[0] not in (1, bsz) or d.shape[1] != hkv):
            return f"{name} shape {tuple(d.shape)} (1 element or [B={bsz} or 1, Hkv={hkv}])"
    return None


def _ragged(q, cu_seqlens) -> bool:
    """Whether the inputs need the RAGGED kernel (packed sequences, or S not a multiple of BLOCK_M); else batched,
    which the dispatch runs on the persistent kernel."""
    return cu_seqlens is not None or q.shape[1] % BLOCK_M != 0


def _rows_view(t: torch.Tensor) -> torch.Tensor:
    """t [B, S, H, D] itself when TMA can read it as [B*S, H*D] rows (D contiguous, heads packed, batches S rows
    apart, rows not overlapping, 16-byte aligned base and row stride), else a contiguous copy (a fresh, aligned
    allocation: a contiguous tensor at an unaligned offset would be its own .contiguous())."""
    bsz, seqlen, heads, d = t.shape
    ok = (t.stride(3) == 1 and t.stride(2) == d and t.stride(1) >= heads * d
          and (bsz == 1 or t.stride(0) == seqlen * t.stride(1))
          and (t.stride(1) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0)
    return t if ok else t.clone(memory_format=torch.contiguous_format)


def _descriptor(t: torch.Tensor, rows_per_box: int) -> TensorDescriptor:
    """A 2-D TMA descriptor over t [B, S, H, D] (a rows view, see _rows_view) as [B*S, H*D] in [rows, D] boxes."""
    bsz, seqlen, heads, d = t.shape
    layout = gl.NVMMASharedLayout.get_default_for([rows_per_box, d], _GL_DTYPES[t.dtype])
    return TensorDescriptor(t, [bsz * seqlen, heads * d], [t.stride(1), 1], [rows_per_box, d], layout)


def gqa_attention_fwd_gluon(q, k, v, causal: bool, softmax_scale: float, o, lse, cu_seqlens=None, max_seqlen=None,
                            descales=(None, None, None), out_scale: float = 1.0, persistent: bool | None = None,
                            stages: int = STAGES):
    """q [B, S, Hq, D], k / v [B, S, Hkv, D] (gluon_eligible), o [B, S, Hq, D] (q's dtype; bf16 for FP8) and lse
    [B, Hq, S] fp32, both fresh contiguous -> (o, lse) written (lse in natural log). cu_seqlens [num_seqs + 1],
    max_seqlen: packed sequences (B = 1); rows of no sequence (none when cu_seqlens[-1] = S, as gqa_attention
    checks) stay unwritten. FP8 e4m3 q / k / v (batched, S % 128 == 0): descales (q, k, v; see descale_table) and
    out_scale scale the dequantised inputs and the output; V^T is built here (_vt_fp8, one copy of V), then
    gqa_attention_fwd_gluon_fp8 runs with its dispatch knobs. persistent / stages: the 16-bit tuning knobs
    (VARIANTS; the dispatch passes neither): persistent runs the batched case (S % 128 == 0, no cu_seqlens) only,
    None = persistent exactly then."""
    bsz, seqlen, hq, _ = q.shape
    hkv = k.shape[2]
    if q.dtype == FP8:
        assert cu_seqlens is None, "FP8: batched inputs only"
        table = descale_table(descales, bsz, hkv, q.device, out_scale)
        return gqa_attention_fwd_gluon_fp8(q, k, _vt_fp8(v), table, causal, softmax_scale, o, lse)
    assert o.shape == q.shape and o.dtype == q.dtype and o.is_contiguous(), "o: contiguous, q's shape and dtype"
    assert lse.shape == (bsz, hq, seqlen) and lse.dtype == torch.float32 and lse.is_contiguous(), \
        "lse: contiguous fp32 [B, Hq, S]"
    rows, seqs = _grid_rows(q, cu_seqlens, max_seqlen)
    if rows == 0:
        return o, lse
    ragged = _ragged(q, cu_seqlens)
    if persistent is None:
        persistent = not ragged
    q, k, v = (_rows_view(t) for t in (q, k, v))
    q_desc, o_desc = _descriptor(q, WG_M), _descriptor(o, WG_M)
    k_desc, v_desc = _descriptor(k, BLOCK_N), _descriptor(v, BLOCK_N)
    if persistent:
        assert not ragged, "persistent: batched, S % 128 == 0"
        tiles = (seqlen // BLOCK_M) * bsz * hq
        sms = sm_count(q.device)
        _gqa_attn_fwd_gluon_persistent_kernel[(min(tiles, sms), )](
            q_desc, k_desc, v_desc, o_desc, lse, seqlen, float(softmax_scale) * LOG2E, bsz * hq, None, HQ=hq,
            HKV=hkv, CAUSAL=bool(causal), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, STAGES=stages,
            WORKER_REG_0=WORKER_REGS[0], WORKER_REG_1=WORKER_REGS[1], FP8=False, num_warps=NUM_WARPS, maxnreg=MAXNREG)
        return o, lse
    _gqa_attn_fwd_gluon_kernel[(cdiv(rows, BLOCK_M), seqs * hq)](
        q_desc, k_desc, v_desc, o_desc, lse, seqlen, float(softmax_scale) * LOG2E, o if ragged else None,
        cu_seqlens, None, HQ=hq, HKV=hkv, CAUSAL=bool(causal), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, STAGES=stages,
        WORKER_REG_0=WORKER_REGS[0], WORKER_REG_1=WORKER_REGS[1], RAGGED=ragged, VARLEN=cu_seqlens is not None,
        FP8=False, num_warps=NUM_WARPS, maxnreg=MAXNREG)
    return o, lse


# ------------------------------------------------------------------------------------------------------ FP8 host


def _vt_fp8(v8: torch.Tensor) -> torch.Tensor:
    """v8 [B, S, HKV, D] e4m3 (S % 32 == 0, any strides) -> V^T [B, HKV, D, S] contiguous e4m3, the keys of each
    group of 32 in the order of the kernel's P' (_softmax): column 32g+16h+4c+2e+p holds key 32g+16h+8e+2c+p. One
    copy (torch, on v8's device): v8's keys split as (g, h, e, c, p), permuted to (g, h, c, e, p)."""
    bsz, seqlen, hkv, d = v8.shape
    assert v8.dtype == FP8 and seqlen % 32 == 0, "_vt_fp8: e4m3 [B, S, HKV, D], S % 32 == 0"
    vt = torch.empty(bsz, hkv, d, seqlen, dtype=FP8, device=v8.device)
    keys = v8.view(bsz, seqlen // 32, 2, 2, 4, 2, hkv, d)                           # [b, g, h, e, c, p, kv, d]
    vt.view(bsz, hkv, d, seqlen // 32, 2, 4, 2, 2).copy_(keys.permute(0, 6, 7, 1, 2, 4, 3, 5))
    return vt


def descale_table(descales, bsz: int, hkv: int, device, out_scale: float = 1.0) -> torch.Tensor:
    """descales (q_descale, k_descale, v_descale), each None (1), a one-element tensor (per tensor) or [B or 1, Hkv]
    (per (batch, kv head)) -> fp32 [B, Hkv, 3] contiguous on `device`: row (b, kv head) holds that (batch, kv head)'s
    three descales, v's times out_scale. The FP8 kernels read one row per tile."""
    cols = []
    for d in descales:
        if d is None:
            d = torch.ones((), dtype=torch.float32, device=device)
        d = d.to(torch.float32)
        cols.append((d.reshape(()) if d.numel() == 1 else d).expand(bsz, hkv))
    if out_scale != 1.0:
        cols[2] = cols[2] * out_scale
    return torch.stack(cols, dim=-1)


def gqa_attention_fwd_gluon_fp8(q8, k8, vt8, descales, causal: bool, softmax_scale: float, o, lse,
                                persistent: bool = True, stages: int = FP8_STAGES):
    """The FP8 e4m3 forward (gqa_attention_fwd_gluon calls it with the default knobs; the sweep with each):
    q8 [B, S, Hq, D], k8 [B, S, Hkv, D] e4m3 (rows views, _rows_view), vt8 = _vt_fp8(v8) [B, Hkv, D, S] contiguous,
    descales fp32 [B, Hkv, 3] contiguous (descale_table), S % 128 == 0, D = 128, no varlen; o [B, S, Hq, D] bf16 and
    lse [B, Hq, S] fp32, fresh contiguous -> (o, lse) of the dequantised inputs (q8 * q_descale, ...), o times
    v's column (v_descale * out_scale). P is quantised to e4m3 with scale 1. persistent / stages: the knobs."""
    bsz, seqlen, hq, d = q8.shape
    hkv = k8.shape[2]
    assert q8.dtype == k8.dtype == vt8.dtype == FP8, "q8 / k8 / vt8: float8_e4m3fn"
    assert vt8.is_contiguous(), "vt8: contiguous"
    assert d == HEAD_DIM and k8.shape == (bsz, seqlen, hkv, d) and hq % hkv == 0, "q8 / k8: [B, S, H, 128]"
    assert vt8.shape == (bsz, hkv, d, seqlen), "vt8: [B, Hkv, D, S] (_vt_fp8)"
    assert seqlen % BLOCK_M == 0 and seqlen > 0, "S % 128 == 0"
    assert descales.dtype == torch.float32 and descales.shape == (bsz, hkv, 3) and descales.is_contiguous() and \
        descales.device == q8.device, "descales: contiguous fp32 [B, Hkv, 3] on q8's device (descale_table)"
    assert o.shape == q8.shape and o.dtype == torch.bfloat16 and o.is_contiguous(), "o: contiguous bf16"
    assert lse.shape == (bsz, hq, seqlen) and lse.dtype == torch.float32 and lse.is_contiguous(), \
        "lse: contiguous fp32 [B, Hq, S]"
    q8, k8 = _rows_view(q8), _rows_view(k8)
    q_desc, k_desc, o_desc = _descriptor(q8, WG_M), _descriptor(k8, BLOCK_N), _descriptor(o, WG_M)
    v_desc = TensorDescriptor(vt8, [bsz * hkv * d, seqlen], [seqlen, 1], [d, BLOCK_N],
                              gl.NVMMASharedLayout.get_default_for([d, BLOCK_N], gl.float8e4nv))
    qk_scale = float(softmax_scale) * LOG2E                                       # * q_descale k_descale inside
    if persistent:
        tiles = (seqlen // BLOCK_M) * bsz * hq
        sms = sm_count(q8.device)
        _gqa_attn_fwd_gluon_persistent_kernel[(min(tiles, sms), )](
            q_desc, k_desc, v_desc, o_desc, lse, seqlen, qk_scale, bsz * hq, descales, HQ=hq, HKV=hkv,
            CAUSAL=bool(causal), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, STAGES=stages, WORKER_REG_0=WORKER_REGS[0],
            WORKER_REG_1=WORKER_REGS[1], FP8=True, num_warps=NUM_WARPS, maxnreg=MAXNREG)
        return o, lse
    _gqa_attn_fwd_gluon_kernel[(seqlen // BLOCK_M, bsz * hq)](
        q_desc, k_desc, v_desc, o_desc, lse, seqlen, qk_scale, None, None, descales, HQ=hq, HKV=hkv,
        CAUSAL=bool(causal), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, STAGES=stages, WORKER_REG_0=WORKER_REGS[0],
        WORKER_REG_1=WORKER_REGS[1], RAGGED=False, VARLEN=False, FP8=True, num_warps=NUM_WARPS, maxnreg=MAXNREG)
    return o, lse


# -------------------------------------------------------------------------------------------------------- AOT


def aot_compile_all():
    """Compile for sm_90a every variant the dispatch launches at Nemotron's heads (32 / 2): bf16 and fp16, causal
    and full; S % 128 == 0 batched (the persistent kernel), then ragged (varlen with int32 cu_seqlens, and batched
    with any S), all at STAGES; FP8 (batched, persistent, FP8_STAGES), causal and full. Yields (name,
    CompiledKernel)."""
    for causal in (True, False):
        yield (f"gqa_attn_fwd_gluon fp8 D{HEAD_DIM} G16 causal={causal} persistent stages={FP8_STAGES}",
               aot_compile_variant(True, FP8_STAGES, causal, fp8=True))
    for dtype, name in ((gl.bfloat16, "bf16"), (gl.float16, "fp16")):
        for causal in (True, False):
            yield (f"gqa_attn_fwd_gluon {name} D{HEAD_DIM} G16 causal={causal} persistent",
                   aot_compile_variant(True, STAGES, causal, dtype))
        qd, kd = _desc_type(dtype, [WG_M, HEAD_DIM]), _desc_type(dtype, [BLOCK_N, HEAD_DIM])
        types = {"q_desc": qd, "o_desc": qd, "k_desc": kd, "v_desc": kd, "lse_ptr": "*fp32", "seqlen": "i32",
                 "qk_scale": "fp32", "o_ptr": f"*{name}", "cu_seqlens": "*i32"}
        for varlen in (True, False):
            for causal in (True, False):
                constexprs = dict(HQ=32, HKV=2, CAUSAL=causal, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, STAGES=STAGES,
                                  WORKER_REG_0=WORKER_REGS[0], WORKER_REG_1=WORKER_REGS[1], RAGGED=True,
                                  VARLEN=varlen, descale_ptr=None, FP8=False)
                if not varlen:
                    constexprs["cu_seqlens"] = None
                # any S (varlen: T)
                aligned = ("lse_ptr", "o_ptr") + (("cu_seqlens", ) * varlen)
                ck = aot_compile_gluon(_gqa_attn_fwd_gluon_kernel, types, constexprs, aligned=aligned,
                                       num_warps=NUM_WARPS, maxnreg=MAXNREG)
                mode = "varlen" if varlen else "ragged"
                yield f"gqa_attn_fwd_gluon {name} D{HEAD_DIM} G16 causal={causal} {mode}", ck


# (persistent, stages) the tuning sweep (scripts/sweep_attn_fwd_gluon.py) times; the dispatch's: (True, STAGES), FP8
# (True, FP8_STAGES)
VARIANTS = ((False, 2), (False, 3), (True, 2), (True, 3))


def _desc_type(dtype, box) -> str:
    """The Triton type string of a TMA descriptor of `box` with the default NVMMA shared layout."""
    name = {gl.bfloat16: "bf16", gl.float16: "fp16", gl.float8e4nv: "fp8e4nv"}[dtype]
    return f"tensordesc<{name}[{box[0]}, {box[1]}],{gl.NVMMASharedLayout.get_default_for(box, dtype)!r}>"


def aot_compile_variant(persistent: bool, stages: int, causal: bool = True, dtype=gl.bfloat16, fp8: bool = False):
    """Compile for sm_90a the batched kernel (S % 128 == 0) at Nemotron's heads in one knob setting (fp8: e4m3
    inputs, V^T, bf16 out; dtype ignored). -> the CompiledKernel."""
    if fp8:
        types = {"q_desc": _desc_type(gl.float8e4nv, [WG_M, HEAD_DIM]),
                 "k_desc": _desc_type(gl.float8e4nv, [BLOCK_N, HEAD_DIM]),
                 "v_desc": _desc_type(gl.float8e4nv, [HEAD_DIM, BLOCK_N]),
                 "o_desc": _desc_type(gl.bfloat16, [WG_M, HEAD_DIM]), "descale_ptr": "*fp32"}
    else:
        qd, kd = _desc_type(dtype, [WG_M, HEAD_DIM]), _desc_type(dtype, [BLOCK_N, HEAD_DIM])
        types = {"q_desc": qd, "o_desc": qd, "k_desc": kd, "v_desc": kd}
    types.update({"lse_ptr": "*fp32", "seqlen": "i32", "qk_scale": "fp32", "num_bh": "i32"})
    constexprs = dict(HQ=32, HKV=2, CAUSAL=causal, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, STAGES=stages,
                      WORKER_REG_0=WORKER_REGS[0], WORKER_REG_1=WORKER_REGS[1], FP8=fp8)
    if not fp8:
        constexprs["descale_ptr"] = None
    if persistent:
        kernel = _gqa_attn_fwd_gluon_persistent_kernel
    else:
        kernel = _gqa_attn_fwd_gluon_kernel
        constexprs.update(o_ptr=None, cu_seqlens=None, RAGGED=False, VARLEN=False)
    aligned = ("lse_ptr", "seqlen") + (("num_bh", ) if persistent else ()) + (("descale_ptr", ) if fp8 else ())
    return aot_compile_gluon(kernel, types, constexprs, aligned=aligned, num_warps=NUM_WARPS, maxnreg=MAXNREG)


def aot_compile_variants(causal: bool = True, dtype=gl.bfloat16):
    """Compile for sm_90a the batched kernel (S % 128 == 0) at Nemotron's heads in every VARIANTS knob setting.
    Yields (name, CompiledKernel)."""
    name = "bf16" if dtype == gl.bfloat16 else "fp16"
    for persistent, stages in VARIANTS:
        yield (f"gqa_attn_fwd_gluon {name} causal={causal} persistent={persistent} stages={stages}",
               aot_compile_variant(persistent, stages, causal, dtype))


def aot_compile_fp8_variants(causal: bool = True):
    """The FP8 variants the sweep times: every VARIANTS knob setting. Yields (name, CompiledKernel)."""
    for persistent, stages in VARIANTS:
        yield (f"gqa_attn_fwd_gluon fp8 causal={causal} persistent={persistent} stages={stages}",
               aot_compile_variant(persistent, stages, causal, fp8=True))
