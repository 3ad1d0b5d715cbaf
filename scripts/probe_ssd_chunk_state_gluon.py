"""Can a warp-specialised Gluon kernel beat our Triton stage 1 of the SSD scan (chunk_state) on the H200?
Our Triton `_ssd_chunk_state_kernel` (nemotron_kernels/triton/ssd_scan_chunk_state.py) takes ~321 us at B1 L32K
(Nemotron's shape: H=64 heads, P=64, G=8 groups of 8 heads, N=128, chunk Q=128, bf16 x / B, bf16 S_in). Its
traffic, x and B in and S_in out, is ~600 MB: a floor of ~145 us at the H200's bandwidth.

Math (the Triton kernel's, exactly; cs = cumulative dt A from the chunk start, stage 0's fp32 hi + lo parts), per
(segment, head), walking the segment's chunks in order with the running state S [P, N] fp32:
    S_in[chunk] = S (bf16), carry_decay[chunk] = carry            the state entering the chunk (segment start: 0)
    S <- exp(total) S + (x o to_end)^T B,   to_end_t = exp((end_hi - hi_t) + (end_lo - lo_t)) dt_t,
    carry <- exp(total) carry,              total = end_hi + end_lo (the chunk's whole sum of dt A)
and at a sequence start (the first chunk of a batch row) S and carry restart from 0. At the segment end:
seg_state = S (fp32), seg_decay = carry. The segments are the op's (ops/ssd_scan.py _plan), so the outputs compare
1:1 with chunk_state_launch's.
Scope: batched input only (no cu_seqlens), L a multiple of Q = 128, Nemotron's shape, no initial / final states.

Design (Hopper, sm_90a; triton.experimental.gluon as in Triton 3.6): one CTA per (segment, head), P = 64 whole;
gl.warp_specialize with two partitions (5 warps, padded to 8):
  - producer (a 1-warp worker, 24 registers): TMA loads of the segment's chunks, x [Q, P] (head h's columns of
    x viewed [B*L, H*P]) and B [Q, N] (group h // 8's columns of B viewed [B*L, G*N]), into a STAGES-deep ring
    (ready / empty mbarriers), so the next chunks stream in while the consumer walks the state;
  - consumer (the default partition, one warpgroup): S in the wgmma accumulator layout (fp32 [64, 128]). Per
    chunk k: S_in through shared memory and a TMA store (or, S_IN_TMA=False, plain stores from registers), the
    decay, then the async wgmma S = (x o to_end)^T B + S (M = P = 64, N = 128, K = Q = 128; the A operand xw^T is
    built in registers from the x tile, the B operand is the ring's B tile); while it runs, the consumer builds
    chunk k+1's A operand (x^T from shared memory by ldmatrix.trans, times to_end, computed one token a thread and
    moved to the accumulator's column layout) and issues chunk k+2's dtcs loads (plain loads, carried in
    registers, so their latency spans a step), then waits and frees chunk k's stage.
  Shared memory: STAGES=2 rings of x (16 KB) + B (32 KB) and one S_in tile (16 KB): 112 KB, so two CTAs fit an SM
  as the op's segments assume (chunk_state_config: programs_per_sm = 2), under maxnreg 128 (8 warps x 2 CTAs).

    PYTHONPATH=. python3 scripts/probe_ssd_chunk_state_gluon.py                                # H200
    PYTHONPATH=. .venv-aot/bin/python scripts/probe_ssd_chunk_state_gluon.py --aot             # CPU: sm_90a compile
GPU mode builds bench/bench_ssd_scan.py's inputs (dt softplus, dt_bias) at B1 L1024 then B1 L32K, stage 0's dtcs
(chunk_cumsum_launch) and the op's plan, runs our chunk_state_launch for the reference, then both Gluon variants
(S_in by TMA / by plain stores), comparing s_in, carry_decay, seg_state and seg_decay: a relative max error above
1e-2 prints WRONG and exits 1 untimed. Then it times everything with triton.testing.do_bench (warmup 10, rep 100)
in us, each row as it is measured. --aot compiles both variants and prints registers, shared memory, setmaxnreg
and the PTX counts of wgmma and cp.async.bulk.tensor."""
import argparse

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from bench.bench_ssd_scan import _input_maker
from scripts.gluon_probe import check, compile_sm90a, rel_err, report, time_us

H, P, G, N, Q = 64, 64, 8, 128, 128
STAGES = 2                      # the x / B ring: 2 x 48 KB (3 stages would leave one CTA per SM)
MAXNREG = 128                   # 8 warps (5 used) x 32 threads x 128 x 2 CTAs = 64K registers of an SM
PRODUCER_REGS = 24              # setmaxnreg target of the TMA warp


@gluon.jit
def _producer(x_desc, b_desc, x_bufs, b_bufs, ready, empty, gc0, n, h, g, STAGES: gl.constexpr):
    """One warp: chunk k = 0 .. n-1 of the segment (global chunk gc0 + k, rows (gc0 + k) Q of the [B*L, .] views:
    batched, L a multiple of Q) into stage k % STAGES: x [Q, P] of head h, B [Q, N] of group g."""
    Q: gl.constexpr = x_desc.block_type.shape[0]
    P: gl.constexpr = x_desc.block_type.shape[1]
    N: gl.constexpr = b_desc.block_type.shape[1]
    for k in range(n):
        stage = k % STAGES
        # a fresh mbarrier passes a wait on parity 1 at once: the first STAGES chunks need no release
        mbarrier.wait(empty.index(stage), ((k // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(stage), x_desc.block_type.nbytes + b_desc.block_type.nbytes)
        row = (gc0 + k) * Q
        tma.async_copy_global_to_shared(x_desc, [row, h * P], ready.index(stage), x_bufs.index(stage))
        tma.async_copy_global_to_shared(b_desc, [row, g * N], ready.index(stage), b_bufs.index(stage))


@gluon.jit
def _chunk_dtcs(dtcs_ptr, plane, gc, h, seqlen, chunks_per_row, H: gl.constexpr, Q: gl.constexpr,
                vec: gl.constexpr):
    """Stage 0's (dt, cs hi, cs lo) [Q] of head h over chunk gc (one token a thread) and cs at its last token
    (end hi, end lo): dtcs [3, B, H, L] fp32, plane = B H L. Issued two chunks ahead of use (plain loads)."""
    b = gc // chunks_per_row
    c = gc - b * chunks_per_row
    row = dtcs_ptr + ((b * H + h).to(gl.int64) * seqlen + c * Q)                 # head h's row at the chunk start
    plane64 = plane.to(gl.int64)                                                  # 3 planes may pass 2^31
    offs = gl.arange(0, Q, layout=vec)
    return (gl.load(row + offs), gl.load(row + plane64 + offs), gl.load(row + 2 * plane64 + offs),
            gl.load(row + plane64 + (Q - 1)), gl.load(row + 2 * plane64 + (Q - 1)))


@gluon.jit
def _chunk_operand(x_bufs, ready, k, dtcs, STAGES: gl.constexpr, mma: gl.constexpr, op_a: gl.constexpr):
    """Chunk k of the segment, from its dtcs (_chunk_dtcs) and its ring stage: -> (xw^T [P, Q] bf16, the wgmma A
    operand, and exp(total), the decay across the chunk). Waits for the stage; reads only x (the wgmma reads B)."""
    dt, hi, lo, end_hi, end_lo = dtcs
    # sum_{s>t} dA_s from the fp64 sums' hi + lo parts: a plain fp32 difference of two long sums cancels badly
    to_end = gl.exp((end_hi - hi) + (end_lo - lo)) * dt                           # [Q], one exp a thread
    to_end = gl.convert_layout(to_end, gl.SliceLayout(0, mma))                    # [Q] along the columns of x^T
    stage = k % STAGES
    mbarrier.wait(ready.index(stage), (k // STAGES) & 1)
    xt = x_bufs.index(stage).permute((1, 0)).load(mma).to(gl.float32)             # x^T [P, Q]
    xw = (xt * gl.expand_dims(to_end, 0)).to(gl.bfloat16)                         # rounded as the Triton kernel
    # the accumulator layout -> A-operand layout of the same warps is a register shuffle, no shared memory
    return gl.convert_layout(xw, op_a), gl.exp(end_hi + end_lo)


@gluon.jit
def _consumer(s_desc, x_bufs, b_bufs, s_smem, ready, empty, dtcs_ptr, s_in_ptr, carry_decay_ptr, seg_state_ptr,
              seg_decay_ptr, seg, gc0, n, h, seqlen, chunks_per_row, plane, H: gl.constexpr,
              STAGES: gl.constexpr, S_IN_TMA: gl.constexpr):
    """The consumer warpgroup (4 warps): the sequential walk of the segment's n chunks for head h."""
    P: gl.constexpr = s_desc.block_type.shape[0]                                  # 64: the wgmma's M
    Q: gl.constexpr = x_bufs.shape[1]                                             # 128: its K
    N: gl.constexpr = s_desc.block_type.shape[1]                                  # 128: its N
    # wgmma accumulator layout: 4 warps stacked along M (16 rows each), one m64n128k16 instruction per k-step
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, N, 16])
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    vec: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])                     # [Q]: one token a thread
    offs_p = gl.arange(0, P, layout=gl.SliceLayout(1, mma))
    offs_n = gl.arange(0, N, layout=gl.SliceLayout(0, mma))
    pn_offs = gl.expand_dims(offs_p, 1) * N + gl.expand_dims(offs_n, 0)           # into a contiguous [P, N] state

    S = gl.full([P, N], 0.0, gl.float32, layout=mma)                              # [P, N] running state
    carry = gl.to_tensor(1.0)                                                     # decay since the segment start
    last = n - 1
    xw, decay = _chunk_operand(x_bufs, ready, 0, _chunk_dtcs(dtcs_ptr, plane, gc0, h, seqlen, chunks_per_row, H, Q,
                                                             vec), STAGES, mma, op_a)
    dtcs_next = _chunk_dtcs(dtcs_ptr, plane, gc0 + gl.minimum(1, last), h, seqlen, chunks_per_row, H, Q, vec)
    for k in range(n):
        gc = gc0 + k
        first = (gc % chunks_per_row) == 0                                        # a sequence starts: restart
        S = gl.where(first, 0.0, S)
        carry = gl.where(first, 0.0, carry)
        head_chunk = gc.to(gl.int64) * H + h
        if S_IN_TMA:
            tma.store_wait(pendings=0)                                            # the last chunk's S_in has left
            s_smem.store(S.to(gl.bfloat16))
            fence_async_shared()                                                  # generic writes -> TMA reads
            tma.async_copy_shared_to_global(s_desc, [(gc * H + h) * P, 0], s_smem)
        else:
            gl.store(s_in_ptr + head_chunk * (P * N) + pn_offs, S.to(gl.bfloat16))
        gl.store(carry_decay_ptr + head_chunk, carry)
        stage = k % STAGES
        acc = warpgroup_mma(xw, b_bufs.index(stage), S * decay, is_async=True)   # [P, N] += xw^T [P, Q] B [Q, N]
        carry = carry * decay
        # meanwhile: chunk k+2's dtcs loads (their latency spans a whole step), then chunk k+1's operand (past the
        # end: chunk n-1's again, its stage not yet freed and its ready phase still complete, so the wait passes;
        # one wasted build per segment and no branch)
        dtcs_after = _chunk_dtcs(dtcs_ptr, plane, gc0 + gl.minimum(k + 2, last), h, seqlen, chunks_per_row, H, Q,
                                 vec)
        xw_next, decay = _chunk_operand(x_bufs, ready, gl.minimum(k + 1, last), dtcs_next, STAGES, mma, op_a)
        dtcs_next = dtcs_after
        # the register A operand is a dep too: kept alive until the wgmma reading it is done
        S, xw = warpgroup_mma_wait(num_outstanding=0, deps=(acc, xw))
        mbarrier.arrive(empty.index(stage), count=1)                              # x and B of chunk k are read
        xw = xw_next
    seg_head = seg.to(gl.int64) * H + h
    gl.store(seg_state_ptr + seg_head * (P * N) + pn_offs, S)                     # [P, N] fp32
    gl.store(seg_decay_ptr + seg_head, carry)
    if S_IN_TMA:
        tma.store_wait(pendings=0)


@gluon.jit
def _chunk_state_gluon_kernel(x_desc, b_desc, s_desc, dtcs_ptr, s_in_ptr, carry_decay_ptr, seg_state_ptr,
                              seg_decay_ptr, seqlen, n_chunks, chunks_per_row, seg_len, plane, H: gl.constexpr,
                              G: gl.constexpr, STAGES: gl.constexpr, S_IN_TMA: gl.constexpr,
                              PRODUCER_REGS: gl.constexpr):
    """x_desc: x [B*L, H*P] in [Q, P] boxes; b_desc: B [B*L, G*N] in [Q, N] boxes; s_desc: s_in [n_chunks*H*P, N]
    bf16 in [P, N] boxes (s_in_ptr: the same, for plain stores); dtcs [3, B, H, L] fp32 (plane = B*H*L);
    carry_decay [n_chunks, H], seg_state [n_seg, H, P, N], seg_decay [n_seg, H] fp32. Grid (n_seg, H)."""
    gl.static_assert(STAGES >= 2, "the consumer waits for chunk k+1 before it frees chunk k's stage")
    seg = gl.program_id(0)
    h = gl.program_id(1)
    g = h // (H // G)
    gc0 = seg * seg_len
    n = gl.minimum(seg_len, n_chunks - gc0)                                       # chunks of this segment

    # shared memory: ring x [STAGES, Q, P] 16 KB a stage, B [STAGES, Q, N] 32 KB a stage; S_in [P, N] 16 KB
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape, b_desc.layout)
    if S_IN_TMA:
        s_smem = gl.allocate_shared_memory(s_desc.dtype, s_desc.block_type.shape, s_desc.layout)
    else:
        s_smem = x_bufs.index(0)                                                  # never used
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)        # the producer's expect-tx arrival
        mbarrier.init(empty.index(i), count=1)        # the consumer warpgroup's release
    fence_async_shared()                              # barrier inits visible to the async proxy (TMA)

    gl.warp_specialize([
        # default partition (num_warps = 4): the state walk
        (_consumer, (s_desc, x_bufs, b_bufs, s_smem, ready, empty, dtcs_ptr, s_in_ptr, carry_decay_ptr,
                     seg_state_ptr, seg_decay_ptr, seg, gc0, n, h, seqlen, chunks_per_row, plane, H, STAGES,
                     S_IN_TMA)),
        # worker, 1 warp: TMA loads
        (_producer, (x_desc, b_desc, x_bufs, b_bufs, ready, empty, gc0, n, h, g, STAGES)),
    ], [1], [PRODUCER_REGS])


# ------------------------------------------------------------------------------------------------------- launch


def _layouts():
    """NVMMA shared layouts (128-byte swizzle) of the [Q, P] x boxes, the [Q, N] B boxes and the [P, N] S_in box."""
    return (gl.NVMMASharedLayout.get_default_for([Q, P], gl.bfloat16),
            gl.NVMMASharedLayout.get_default_for([Q, N], gl.bfloat16),
            gl.NVMMASharedLayout.get_default_for([P, N], gl.bfloat16))


def gluon_chunk_state(x, dtcs, B, s_in, carry_decay, seg_state, seg_decay, geometry: dict, s_in_tma: bool = True):
    """Stage 1 (no initial / final states) into s_in [n_chunks, H, P, N] bf16, carry_decay [n_chunks, H] fp32,
    seg_state [n_seg, H, P, N] fp32, seg_decay [n_seg, H] fp32, from x [B, L, H, P], B [B, L, G, N] bf16
    contiguous and stage 0's dtcs [3, B, H, L] fp32."""
    bsz, seqlen = x.shape[:2]
    assert x.shape[2:] == (H, P) and B.shape[2:] == (G, N) and seqlen % Q == 0 and geometry["Q"] == Q, \
        "probe: Nemotron's shape, L a multiple of 128"
    assert x.dtype == B.dtype == s_in.dtype == torch.bfloat16, "probe: bf16 x, B and S_in"
    assert all(t.is_contiguous() for t in (x, B, dtcs, s_in, carry_decay, seg_state, seg_decay))
    xl, bl, sl = _layouts()
    x_desc = TensorDescriptor.from_tensor(x.view(bsz * seqlen, H * P), [Q, P], xl)
    b_desc = TensorDescriptor.from_tensor(B.view(bsz * seqlen, G * N), [Q, N], bl)
    s_desc = TensorDescriptor.from_tensor(s_in.view(-1, N), [P, N], sl)
    _chunk_state_gluon_kernel[(geometry["n_seg"], H)](
        x_desc, b_desc, s_desc, dtcs, s_in, carry_decay, seg_state, seg_decay, seqlen, geometry["n_chunks"],
        geometry["chunks_per_row"], geometry["seg_len"], dtcs[0].numel(), H=H, G=G, STAGES=STAGES,
        S_IN_TMA=s_in_tma, PRODUCER_REGS=PRODUCER_REGS, num_warps=4, maxnreg=MAXNREG)


# ---------------------------------------------------------------------------------------------------------- AOT


def aot(s_in_tma: bool):
    """Compile for sm_90a without a GPU; print registers, shared memory and PTX instruction counts."""
    xl, bl, sl = _layouts()
    constexprs = {"H": H, "G": G, "STAGES": STAGES, "S_IN_TMA": s_in_tma, "PRODUCER_REGS": PRODUCER_REGS}
    types = {"x_desc": f"tensordesc<bf16[{Q}, {P}],{xl!r}>", "b_desc": f"tensordesc<bf16[{Q}, {N}],{bl!r}>",
             "s_desc": f"tensordesc<bf16[{P}, {N}],{sl!r}>", "dtcs_ptr": "*fp32", "s_in_ptr": "*bf16",
             "carry_decay_ptr": "*fp32", "seg_state_ptr": "*fp32", "seg_decay_ptr": "*fp32", "seqlen": "i32",
             "n_chunks": "i32", "chunks_per_row": "i32", "seg_len": "i32", "plane": "i32"}
    # what the JIT launcher specialises at B1 L32K (pointers 16-byte aligned, seqlen / n_chunks / chunks_per_row /
    # plane multiples of 16; seg_len 64 too, but not in general)
    aligned = ("dtcs_ptr", "s_in_ptr", "carry_decay_ptr", "seg_state_ptr", "seg_decay_ptr", "seqlen", "n_chunks",
               "chunks_per_row", "plane")
    ck = compile_sm90a(_chunk_state_gluon_kernel, types, constexprs, aligned=aligned, num_warps=4, maxnreg=MAXNREG)
    print(f"compiled _chunk_state_gluon_kernel S_IN_TMA={s_in_tma} for sm_90a: 4 consumer + 1 producer warps",
          flush=True)
    report(ck, f"ssd_chunk_state_tma{int(s_in_tma)}")


# ---------------------------------------------------------------------------------------------------------- GPU



def _outputs(x, B, geometry: dict):
    """Empty stage-1 outputs as _chunk_states allocates them: s_in (bf16), carry_decay, seg_state, seg_decay."""
    n_chunks, n_seg, dev = geometry["n_chunks"], geometry["n_seg"], x.device
    return (torch.empty(n_chunks, H, P, N, dtype=torch.bfloat16, device=dev),
            torch.empty(n_chunks, H, dtype=torch.float32, device=dev),
            torch.empty(n_seg, H, P, N, dtype=torch.float32, device=dev),
            torch.empty(n_seg, H, dtype=torch.float32, device=dev))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aot", action="store_true", help="compile for sm_90a without a GPU and report")
    args = parser.parse_args()
    if args.aot:
        for s_in_tma in (True, False):
            aot(s_in_tma)
        return
    from nemotron_kernels.ops import ssd_scan as ssd_op
    from nemotron_kernels.triton import mamba_common
    state_k = mamba_common.kernel_module("ssd_scan_chunk_state")
    cumsum_k = mamba_common.kernel_module("ssd_scan_chunk_cumsum")
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}", flush=True)
    names = ("s_in", "carry_decay", "seg_state", "seg_decay")
    for bsz, seqlen in ((1, 1024), (1, 32768)):
        s = _input_maker(bsz, seqlen, torch.device("cuda"))(0)      # the bench's inputs
        x, B = s["x"].contiguous(), s["B"].contiguous()
        plan = ssd_op._plan(x, B, Q, None, bsz)
        geometry = plan["geometry"]
        assert plan["state_dtype"] == torch.bfloat16
        dtcs = cumsum_k.chunk_cumsum_launch(s["dt"], s["A"].float().contiguous(), s["dt_bias"].float().contiguous(),
                                            None, geometry, True)            # stage 0, dt softplus
        ref = _outputs(x, B, geometry)

        def ours():
            state_k.chunk_state_launch(x, dtcs, B, None, None, *ref, None, None, geometry,
                                       plan["cfg"]["chunk_state"], plan["precision"])

        ours()
        torch.cuda.synchronize()
        name = f"B{bsz} L{seqlen // 1024}K" if seqlen % 1024 == 0 else f"B{bsz} L{seqlen}"
        print(f"{name}: {geometry['n_chunks']} chunks, {geometry['n_seg']} segments of {geometry['seg_len']}",
              flush=True)
        outs = {}
        for tma_store in (True, False):
            got = _outputs(x, B, geometry)
            gluon_chunk_state(x, dtcs, B, *got, geometry, tma_store)
            torch.cuda.synchronize()
            check(f"gluon S_IN_TMA={tma_store}", {nm: rel_err(a, r) for nm, a, r in zip(names, got, ref)}, 1e-2,
                  "chunk_state_launch")
            outs[tma_store] = got

        time_us("ours: triton chunk_state_launch", ours)
        for tma_store in (True, False):
            time_us(f"gluon probe S_IN_TMA={tma_store} (consumer WG + TMA warp)",
                    lambda t=tma_store: gluon_chunk_state(x, dtcs, B, *outs[t], geometry, t))


if __name__ == "__main__":
    main()
