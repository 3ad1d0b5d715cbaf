"""GQA flash-attention forward for Hopper in Gluon (FlashAttention-3 style): the BF16/FP16 forward on sm_90.

H200, B4 S8K 32/2 heads D=128 causal bf16: 671 TFLOP/s against 533 for our Triton forward and 557 for cuDNN
(bench/NOTES.md session 26; the probe it grew from, with an FP8 mode: git show 132c2e6:scripts/probe_attn_gluon.py).

One CTA per (128-row query block, batch * query head), the longest (last) query blocks launched first;
gl.warp_specialize with three partitions (12 warps launched, 9 used):
  - consumer warpgroup 0 (the default partition, 4 warps): query rows 0..63 of the block,
  - consumer warpgroup 1 (a 4-warp worker, 240 registers): query rows 64..127,
  - producer (a 1-warp worker, 24 registers): TMA loads of Q once, then K and V tiles (128 keys x D) into a
    2-stage shared-memory ring guarded by ready / empty mbarriers (empty counts one arrival per warpgroup).
Each consumer: S = Q K^T by wgmma, online softmax in base 2, P in registers as the A operand of O += P V. Key
blocks run from the last (causal: the diagonal, the only masked one) down to 0; S_i is issued before
O += P_{i-1} V_{i-1}, so softmax(S_i) overlaps that wgmma, and an mbarrier "turn" makes the two warpgroups issue
their wgmmas alternately (ping-pong), so one's softmax overlaps the other's MMAs. Epilogue: O / l through shared
memory (the group's Q half, no longer read) and a TMA store; lse = (m + log2 l) * ln 2 stored from registers.

Shapes: q [B, S, Hq, D], k / v [B, S, Hkv, D] (Sq == Sk, S % 128 == 0, D = 128, fp16 / bf16), read through 2-D
TMA descriptors over [B*S, H*D]; o [B, S, Hq, D] contiguous, lse [B, Hq, S] fp32 (natural log): the outputs of
gqa_attention_fwd.py's Triton forward, so its backward consumes them. `gluon_eligible` says which inputs run here.

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
from .gqa_attention_common import LOG2E

HEAD_DIM = 128                              # the wgmma instr_shape N = 128 (S = Q K^T's and O's columns)
BLOCK_M, BLOCK_N, STAGES = 128, 128, 2      # query rows per CTA (two warpgroups of 64), keys per tile, K/V ring
WG_M = BLOCK_M // 2                         # query rows per consumer warpgroup
NUM_WARPS = 4                               # the default partition: consumer warpgroup 0
MAXNREG = 168                               # 12 warps x 32 threads x 168 <= 64K registers at launch
WORKER_REGS = (240, 24)                     # setmaxnreg targets: consumer warpgroup 1, producer


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, bars, q_row, q_col, kv_row, kv_col, n_blocks,
              BLOCK_N: gl.constexpr, STAGES: gl.constexpr, RAGGED: gl.constexpr):
    """One warp: Q once (two [64, D] halves, one per consumer warpgroup), then for i = 0 .. n_blocks-1 key block
    j = n_blocks-1-i (the diagonal first, as the consumers want it) as K_i and V_i into stage i % STAGES. K and V
    have their own barriers, so a consumer can start S = Q K^T while V is still in flight. RAGGED: n_blocks = 0
    (a block past its sequence's end) loads nothing, as its consumers wait for nothing."""
    if not RAGGED or n_blocks > 0:
        _produce(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, bars, q_row, q_col, kv_row, kv_col, n_blocks,
                 BLOCK_N, STAGES)


@gluon.jit
def _produce(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, bars, q_row, q_col, kv_row, kv_col, n_blocks,
             BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    q_bar, k_ready, k_empty, v_ready, v_empty, turn = bars
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, q_col], q_bar, q_smem.index(0))
    tma.async_copy_global_to_shared(q_desc, [q_row + q_desc.block_type.shape[0], q_col], q_bar, q_smem.index(1))
    for i in range(n_blocks):
        stage = i % STAGES
        # a fresh mbarrier counts its (virtual) previous phase as complete: waiting on parity 1 passes at once,
        # so the first STAGES tiles need no release
        phase = (i // STAGES) & 1
        key_row = kv_row + (n_blocks - 1 - i) * BLOCK_N
        mbarrier.wait(k_empty.index(stage), phase ^ 1)
        mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [key_row, kv_col], k_ready.index(stage), k_bufs.index(stage))
        mbarrier.wait(v_empty.index(stage), phase ^ 1)
        mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [key_row, kv_col], v_ready.index(stage), v_bufs.index(stage))


@gluon.jit
def _wait_turn(turn, t, WG: gl.constexpr):
    """Ping-pong (FA3): WG 0 issues its t-th batch of wgmmas after WG 1 issued its (t-1)-th, WG 1 its t-th after
    WG 0's t-th. turn[w] completes a phase when the other group passes the turn to w; WG 0 starts (parity 1 on a
    fresh barrier passes at once)."""
    mbarrier.wait(turn.index(WG), (t & 1) ^ (1 - WG))


@gluon.jit
def _pass_turn(turn, WG: gl.constexpr):
    mbarrier.arrive(turn.index(1 - WG), count=1)


@gluon.jit
def _softmax(s, m_i, l_i, qk_scale, key0, row0, MASK: gl.constexpr, mma: gl.constexpr,
             DTYPE: gl.constexpr, key_end=0, BOUND: gl.constexpr = False):
    """Online softmax of one score tile s [64, BLOCK_N] fp32 in base 2 (x = s * qk_scale, qk_scale = softmax
    scale * log2 e). m_i, l_i [64]: running max (scaled) and sum. MASK: keys key0.. past rows row0.. -> -inf;
    BOUND: keys key0.. from key_end on (past a ragged sequence's end: the next one's) -> -inf.
    -> (P [64, BLOCK_N] in DTYPE (the inputs') as the A operand of the P V wgmma, alpha [64] (the factor for O's
    older terms), m_new, l_new). l sums the fp32 P, not the rounded P of the wgmma (as FA3)."""
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
    # accumulator layout -> A-operand layout of the same warps: a register shuffle, no shared memory (k_width 2:
    # two 16-bit values per 32-bit register)
    p_op = gl.convert_layout(p.to(DTYPE), gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2))
    return p_op, alpha, m_new, l_new


@gluon.jit
def _consumer(q_desc, k_desc, o_desc, q_smem, k_bufs, v_bufs, bars, lse_row, q_row, q_col, q_pos0, n_blocks,
              qk_scale, seq_len, o_ptr, WG: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              CAUSAL: gl.constexpr, RAGGED: gl.constexpr, O_STRIDE: gl.constexpr):
    """A consumer warpgroup (4 warps): query rows WG*64 .. WG*64+63 of the CTA's block (positions q_pos0 + ..,
    rows q_row + .. of the [B*S, Hq*D] views). Iteration i consumes ring slot i % STAGES (key block n_blocks-1-i)
    and issues S_i = Q K_i^T before O += P_{i-1} V_{i-1}; O is rescaled by alpha_i once that wgmma is done.
    lse_row: this block's first lse element. RAGGED (seq_len, o_ptr, O_STRIDE = Hq*D: see the kernel): n_blocks = 0
    does nothing; rows from seq_len on are computed (from the next sequence's Q or TMA's zeros; row-local) but never
    stored."""
    if not RAGGED or n_blocks > 0:
        _consume(q_desc, k_desc, o_desc, q_smem, k_bufs, v_bufs, bars, lse_row, q_row, q_col, q_pos0, n_blocks,
                 qk_scale, seq_len, o_ptr, WG, BLOCK_N, STAGES, CAUSAL, RAGGED, O_STRIDE)


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
             CAUSAL: gl.constexpr, RAGGED: gl.constexpr, O_STRIDE: gl.constexpr):
    q_bar, k_ready, k_empty, v_ready, v_empty, turn = bars
    WG_M: gl.constexpr = q_desc.block_type.shape[0]
    HEAD_D: gl.constexpr = q_desc.block_type.shape[1]
    DTYPE: gl.constexpr = k_desc.dtype
    # wgmma accumulator layout: 4 warps stacked along M (16 rows each), m64n128k16 instructions
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 128, 16])
    row_layout: gl.constexpr = gl.SliceLayout(1, mma)
    q = q_smem.index(WG)                                                          # [64, D] this group's rows
    row0 = q_pos0 + WG * WG_M                                                     # its first query position
    s_zero = gl.full([WG_M, BLOCK_N], 0.0, gl.float32, layout=mma)
    acc = gl.full([WG_M, HEAD_D], 0.0, gl.float32, layout=mma)                    # O [64, D], fp32
    m_i = gl.full([WG_M], -float("inf"), gl.float32, layout=row_layout)
    l_i = gl.full([WG_M], 0.0, gl.float32, layout=row_layout)
    mbarrier.wait(q_bar, 0)

    # i = 0: the last key block (causal: the diagonal, masked); O is still zero, so no P V yet
    _wait_turn(turn, 0, WG)
    mbarrier.wait(k_ready.index(0), 0)
    s = warpgroup_mma(q, k_bufs.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    _pass_turn(turn, WG)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s, ))                         # S_0 [64, BLOCK_N]
    mbarrier.arrive(k_empty.index(0), count=1)                                    # K_0 read: may be refilled
    # RAGGED, causal: a row before seq_len sees keys <= itself < seq_len only, so the diagonal mask also bounds the
    # keys; full: the last key block (this one) is bounded explicitly
    p_op, alpha, m_i, l_i = _softmax(s, m_i, l_i, qk_scale, (n_blocks - 1) * BLOCK_N, row0, CAUSAL, mma, DTYPE,
                                     seq_len, RAGGED and not CAUSAL)

    for i in range(1, n_blocks):                                                  # unmasked key blocks
        stage = i % STAGES
        phase = (i // STAGES) & 1
        prev = (i - 1) % STAGES
        prev_phase = ((i - 1) // STAGES) & 1
        _wait_turn(turn, i, WG)
        mbarrier.wait(k_ready.index(stage), phase)
        s = warpgroup_mma(q, k_bufs.index(stage).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(prev), prev_phase)
        acc = warpgroup_mma(p_op, v_bufs.index(prev), acc, is_async=True)        # O += P_{i-1} V_{i-1}
        _pass_turn(turn, WG)
        s = warpgroup_mma_wait(num_outstanding=1, deps=(s, ))                     # S_i done (issued first)
        mbarrier.arrive(k_empty.index(stage), count=1)
        p_op, alpha, m_i, l_i = _softmax(s, m_i, l_i, qk_scale, (n_blocks - 1 - i) * BLOCK_N, row0, False, mma,
                                         DTYPE)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))                 # P_{i-1} V_{i-1} done
        mbarrier.arrive(v_empty.index(prev), count=1)
        acc = acc * gl.expand_dims(alpha, 1)                                      # O to the new running max

    # the last P V
    last = (n_blocks - 1) % STAGES
    last_phase = ((n_blocks - 1) // STAGES) & 1
    _wait_turn(turn, n_blocks, WG)
    mbarrier.wait(v_ready.index(last), last_phase)
    acc = warpgroup_mma(p_op, v_bufs.index(last), acc, is_async=True)
    _pass_turn(turn, WG)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    mbarrier.arrive(v_empty.index(last), count=1)

    # lse [64] (natural log, the Triton forward's convention; every row saw a key, so l > 0); rows replicated
    # across a quad's lanes store the same value
    lse = (m_i + gl.log2(l_i)) * 0.6931471805599453                             # * ln 2
    if RAGGED:                                                                    # rows before seq_len only
        offs = gl.arange(0, WG_M, layout=row_layout)
        gl.store(lse_row + WG * WG_M + offs, lse, mask=row0 + offs < seq_len)
    else:
        gl.store(lse_row + WG * WG_M + gl.arange(0, WG_M, layout=row_layout), lse)
    # O = acc / l through this group's Q buffer (its last reader, the S wgmma, has completed)
    o = (acc / gl.expand_dims(l_i, 1)).to(o_desc.dtype)                           # [64, D]
    o_buf = q_smem.index(WG)
    o_buf.store(o)
    if RAGGED and row0 + WG_M > seq_len:                                         # the sequence ends in these rows
        _store_rows(o_buf, o_ptr, q_row + WG * WG_M, q_col, seq_len - row0, O_STRIDE)
    else:
        fence_async_shared()                                                      # generic writes -> TMA reads
        tma.async_copy_shared_to_global(o_desc, [q_row + WG * WG_M, q_col], o_buf)
        tma.store_wait(pendings=0)


@gluon.jit
def _gqa_attn_fwd_gluon_kernel(q_desc, k_desc, v_desc, o_desc, lse_ptr, seqlen, qk_scale, o_ptr, cu_seqlens,
                               HQ: gl.constexpr, HKV: gl.constexpr, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr,
                               BLOCK_N: gl.constexpr, STAGES: gl.constexpr, WORKER_REG_0: gl.constexpr,
                               WORKER_REG_1: gl.constexpr, RAGGED: gl.constexpr, VARLEN: gl.constexpr):
    """q_desc / o_desc: [B*S, HQ*D] in [64, D] boxes; k_desc / v_desc: [B*S, HKV*D] in [BLOCK_N, D] boxes;
    lse_ptr: fp32 [B, HQ, S] contiguous. Grid (cdiv(S, BLOCK_M), B * HQ).
    RAGGED (S need not be a multiple of BLOCK_M): the last block of a sequence masks keys / stores by rows;
    o_ptr: o's data ([B*S, HQ*D] contiguous; None unless RAGGED). VARLEN (RAGGED too): B = 1 and cu_seqlens
    [num_seqs + 1] splits the S = T packed rows into sequences; lse [1, HQ, T]; grid (cdiv(max_seqlen, BLOCK_M),
    num_seqs * HQ), blocks past their sequence's end do nothing."""
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

    # shared memory: Q [2, 64, D] (reused for O), K and V rings [STAGES, BLOCK_N, D]: 32 + 64 + 64 KB (16-bit)
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)      # the producer's expect-tx arrival
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)      # one arrival per consumer warpgroup
        mbarrier.init(v_empty.index(i), count=2)
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
                     qk_scale, seq_len, o_ptr, WG0, BLOCK_N, STAGES, CAUSAL, RAGGED, O_STRIDE)),
        # worker, 4 warps: consumer of rows 64..127
        (_consumer, (q_desc, k_desc, o_desc, q_smem, k_bufs, v_bufs, bars, lse_row, q_row, q_col, q_pos0, n_blocks,
                     qk_scale, seq_len, o_ptr, WG1, BLOCK_N, STAGES, CAUSAL, RAGGED, O_STRIDE)),
        # worker, 1 warp: TMA loads
        (_producer, (q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, bars, q_row, q_col, kv_row, kv_col, n_blocks,
                     BLOCK_N, STAGES, RAGGED)),
    ], [4, 1], [WORKER_REG_0, WORKER_REG_1])


# ------------------------------------------------------------------------------------------------------- host


def inputs_ineligible_reason(q, k, v, cu_seqlens, max_seqlen=None) -> str | None:
    """Why the Gluon attention kernels (this forward and gqa_attention_bwd_gluon) cannot take these q [B, Sq, Hq, D],
    k / v [B, Sk, Hkv, D] (None: they can): the platform (common.gluon_platform), fp16 / bf16 alike, Sq == Sk,
    D = 128, not empty; varlen (cu_seqlens [num_seqs + 1] int32 / int64 on q's device): B = 1 and max_seqlen given
    (q and k packed alike, as gqa_attention_fwd's check_qkv asks). Any S: blocks past a sequence's end are masked."""
    ok, why = gluon_platform(q.device)
    if not ok:
        return why
    if not q.device == k.device == v.device:
        return f"devices differ (q {q.device}, k {k.device}, v {v.device})"
    if not q.dtype == k.dtype == v.dtype or q.dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {q.dtype} (fp16 / bf16 only)"
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


def gluon_ineligible_reason(q, k, v, causal, cu_seqlens, descales, max_seqlen=None) -> str | None:
    """Why the Gluon forward cannot run these inputs (None: it can): inputs_ineligible_reason, then no descales
    (each None or a tensor) and the grid's limit. causal is either."""
    why = inputs_ineligible_reason(q, k, v, cu_seqlens, max_seqlen)
    if why is not None:
        return why
    if any(d is not None for d in descales):
        return "descales"
    seqs = _grid_rows(q, cu_seqlens, max_seqlen)[1]
    if seqs * q.shape[2] > 65535:
        return f"{'num_seqs' if cu_seqlens is not None else 'B'} * Hq = {seqs * q.shape[2]} > 65535 (the grid's " \
               "second dimension)"
    return None


def gluon_eligible(q, k, v, causal, cu_seqlens, descales, max_seqlen=None) -> bool:
    """Whether gqa_attention_fwd runs these inputs with the Gluon kernel (see gluon_ineligible_reason)."""
    return gluon_ineligible_reason(q, k, v, causal, cu_seqlens, descales, max_seqlen) is None


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
    dtype = gl.bfloat16 if t.dtype == torch.bfloat16 else gl.float16
    layout = gl.NVMMASharedLayout.get_default_for([rows_per_box, d], dtype)
    return TensorDescriptor(t, [bsz * seqlen, heads * d], [t.stride(1), 1], [rows_per_box, d], layout)


def gqa_attention_fwd_gluon(q, k, v, causal: bool, softmax_scale: float, o, lse, cu_seqlens=None, max_seqlen=None):
    """q [B, S, Hq, D], k / v [B, S, Hkv, D] (gluon_eligible), o [B, S, Hq, D] (q's dtype) and lse [B, Hq, S]
    fp32, both fresh contiguous -> (o, lse) written (lse in natural log). cu_seqlens [num_seqs + 1], max_seqlen:
    packed sequences (B = 1); rows of no sequence (none when cu_seqlens[-1] = S, as gqa_attention checks) stay
    unwritten."""
    bsz, seqlen, hq, _ = q.shape
    hkv = k.shape[2]
    assert o.shape == q.shape and o.dtype == q.dtype and o.is_contiguous(), "o: contiguous, q's shape and dtype"
    assert lse.shape == (bsz, hq, seqlen) and lse.dtype == torch.float32 and lse.is_contiguous(), \
        "lse: contiguous fp32 [B, Hq, S]"
    rows, seqs = _grid_rows(q, cu_seqlens, max_seqlen)
    if rows == 0:
        return o, lse
    ragged = cu_seqlens is not None or seqlen % BLOCK_M != 0
    q, k, v = (_rows_view(t) for t in (q, k, v))
    q_desc, o_desc = _descriptor(q, WG_M), _descriptor(o, WG_M)
    k_desc, v_desc = _descriptor(k, BLOCK_N), _descriptor(v, BLOCK_N)
    _gqa_attn_fwd_gluon_kernel[(cdiv(rows, BLOCK_M), seqs * hq)](
        q_desc, k_desc, v_desc, o_desc, lse, seqlen, float(softmax_scale) * LOG2E, o if ragged else None,
        cu_seqlens, HQ=hq, HKV=hkv, CAUSAL=bool(causal), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, STAGES=STAGES,
        WORKER_REG_0=WORKER_REGS[0], WORKER_REG_1=WORKER_REGS[1], RAGGED=ragged, VARLEN=cu_seqlens is not None,
        num_warps=NUM_WARPS, maxnreg=MAXNREG)
    return o, lse


# -------------------------------------------------------------------------------------------------------- AOT


def aot_compile_all():
    """Compile for sm_90a every variant the dispatch launches at Nemotron's heads (32 / 2): bf16 and fp16, causal
    and full; S % 128 == 0 batched, then ragged (varlen with int32 cu_seqlens, and batched with any S). Yields
    (name, CompiledKernel)."""
    for dtype, name in ((gl.bfloat16, "bf16"), (gl.float16, "fp16")):
        def desc(rows):
            layout = gl.NVMMASharedLayout.get_default_for([rows, HEAD_DIM], dtype)
            return f"tensordesc<{name}[{rows}, {HEAD_DIM}],{layout!r}>"

        types = {"q_desc": desc(WG_M), "o_desc": desc(WG_M), "k_desc": desc(BLOCK_N), "v_desc": desc(BLOCK_N),
                 "lse_ptr": "*fp32", "seqlen": "i32", "qk_scale": "fp32", "o_ptr": f"*{name}", "cu_seqlens": "*i32"}
        for ragged, varlen in ((False, False), (True, True), (True, False)):
            for causal in (True, False):
                constexprs = dict(HQ=32, HKV=2, CAUSAL=causal, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, STAGES=STAGES,
                                  WORKER_REG_0=WORKER_REGS[0], WORKER_REG_1=WORKER_REGS[1], RAGGED=ragged,
                                  VARLEN=varlen)
                if not ragged:
                    constexprs["o_ptr"] = None
                if not varlen:
                    constexprs["cu_seqlens"] = None
                # ragged: any S (varlen: T)
                aligned = ("lse_ptr", ) + (("o_ptr", ) if ragged else ("seqlen", )) + (("cu_seqlens", ) * varlen)
                ck = aot_compile_gluon(_gqa_attn_fwd_gluon_kernel, types, constexprs, aligned=aligned,
                                       num_warps=NUM_WARPS, maxnreg=MAXNREG)
                mode = " varlen" if varlen else " ragged" if ragged else ""
                yield f"gqa_attn_fwd_gluon {name} D{HEAD_DIM} G16 causal={causal}{mode}", ck
