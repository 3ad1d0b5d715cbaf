"""Does the Gluon chunk_state (stage 1 of the SSD scan) beat our Triton one on the H200, and match it bitwise?
The kernel lives in nemotron_kernels/triton/ssd_scan_chunk_state_gluon.py (its docstring: math, design, scope); the
op runs it on Hopper with Triton 3.6 where ops/ssd_scan.py gluon_eligible holds. This script times it against the
Triton `chunk_state_launch` (nemotron_kernels/triton/ssd_scan_chunk_state.py) at Nemotron's shape (H=64, P=64,
G=8, N=128, chunk Q=128, bf16 x / B / S_in), with final states as the bench's forward requests them.
First run (session 26, the probe's own copy, S_in by TMA store): 169 us at B1 L32K against Triton's 328; the
variant storing S_in from registers took 310 us and was dropped. Traffic floor (x, B in, S_in out): ~145 us.

    PYTHONPATH=. python3 scripts/probe_ssd_chunk_state_gluon.py                                # H200
    PYTHONPATH=. .venv-aot/bin/python scripts/probe_ssd_chunk_state_gluon.py --aot             # CPU: sm_90a compile
GPU mode builds bench/bench_ssd_scan.py's inputs (dt softplus, dt_bias) at B1 L1024, B1 L32K, then its 16 packed
sequences (31,280 tokens: 260 chunk-table slots, 7 of them padding), stage 0's dtcs (chunk_cumsum_launch) and the
op's plan, runs our chunk_state_launch for the reference, then the Gluon launcher, outputs NaN-filled first (an
entry one kernel leaves unwritten shows), comparing s_in (packed: the slots with rows; padding slots' S_in is never
written), carry_decay, seg_state, seg_decay, final and final_decay: a relative max error above 1e-2 (or a NaN)
prints WRONG and exits 1 untimed. Then it times both with triton.testing.do_bench (warmup 10, rep 100) in us, each
row as it is measured (at L1K the host's launch path dominates). --aot compiles the module's variants (batched with
and without final states, with initial states; packed without either, with final states as the bench, with both)
and prints registers, shared memory, setmaxnreg and the PTX counts of wgmma and cp.async.bulk.tensor."""
import argparse

import torch
import triton

from bench.bench_ssd_scan import _input_maker, packed_cu
from nemotron_kernels.triton import ssd_scan_chunk_state_gluon as gluon_state
from scripts.gluon_probe import check, rel_err, report_all, time_us

H, P, G, N, Q = 64, 64, 8, 128, 128


def _outputs(x, geometry: dict, nstates: int):
    """Stage-1 outputs as _chunk_states allocates them, NaN-filled: s_in (bf16), carry_decay, seg_state, seg_decay,
    and the final states (final, final_decay) of the batch rows or sequences."""
    n_chunks, n_seg, dev = geometry["n_chunks"], geometry["n_seg"], x.device
    nan = float("nan")
    return (torch.full((n_chunks, H, P, N), nan, dtype=torch.bfloat16, device=dev),
            torch.full((n_chunks, H), nan, dtype=torch.float32, device=dev),
            torch.full((n_seg, H, P, N), nan, dtype=torch.float32, device=dev),
            torch.full((n_seg, H), nan, dtype=torch.float32, device=dev),
            torch.full((nstates, H, P, N), nan, dtype=torch.float32, device=dev),
            torch.full((nstates, H), nan, dtype=torch.float32, device=dev))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aot", action="store_true", help="compile for sm_90a without a GPU and report")
    args = parser.parse_args()
    if args.aot:
        report_all(gluon_state.aot_compile_all(), "4 consumer + 1 producer warps")
        return
    from nemotron_kernels.ops import ssd_scan as ssd_op
    from nemotron_kernels.triton import mamba_common
    state_k = mamba_common.kernel_module("ssd_scan_chunk_state")
    cumsum_k = mamba_common.kernel_module("ssd_scan_chunk_cumsum")
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}", flush=True)
    names = ("s_in", "carry_decay", "seg_state", "seg_decay", "final", "final_decay")
    for bsz, seqlen, cu in ((1, 1024, None), (1, 32768, None), (1, packed_cu()[-1], packed_cu())):
        s = _input_maker(bsz, seqlen, torch.device("cuda"), cu)(0)  # the bench's inputs (packed: its 16 sequences)
        x, B = s["x"].contiguous(), s["B"].contiguous()
        nstates = bsz if cu is None else len(cu) - 1
        plan = ssd_op._plan(x, B, Q, s.get("cu_seqlens"), nstates)
        geometry, table = plan["geometry"], plan["table"]
        assert plan["state_dtype"] == torch.bfloat16
        print(f"  gluon_eligible: {ssd_op.gluon_eligible('chunk_state', x, B, None, Q, cu is not None)}", flush=True)
        dtcs = cumsum_k.chunk_cumsum_launch(s["dt"], s["A"].float().contiguous(), s["dt_bias"].float().contiguous(),
                                            table, geometry, True)           # stage 0, dt softplus
        ref, got = _outputs(x, geometry, nstates), _outputs(x, geometry, nstates)

        def launch(kernels, outs):
            return lambda: kernels.chunk_state_launch(x, dtcs, B, None, table, *outs, geometry,
                                                      plan["cfg"]["chunk_state"], plan["precision"])

        ours, gluon = launch(state_k, ref), launch(gluon_state, got)
        ours()
        gluon()
        torch.cuda.synchronize()
        name = f"B{bsz} L{seqlen // 1024}K" if seqlen % 1024 == 0 else f"B{bsz} L{seqlen}"
        name += f" packed ({nstates} sequences)" if cu else ""
        print(f"{name}: {geometry['n_chunks']} chunks, {geometry['n_seg']} segments of {geometry['seg_len']}",
              flush=True)
        if table is not None:          # padding slots' S_in is never written (Triton's mask): the slots with rows
            rows = table[2] > 0
            ref, got = (ref[0][rows], *ref[1:]), (got[0][rows], *got[1:])
        check("gluon chunk_state_launch", {nm: rel_err(a, r) for nm, a, r in zip(names, got, ref)}, 1e-2,
              "chunk_state_launch")                                     # (a NaN left unwritten: WRONG)
        print(f"  bitwise equal: {all(torch.equal(a, r) for a, r in zip(got, ref))}", flush=True)
        time_us("ours: triton chunk_state_launch", ours)
        time_us("gluon chunk_state_launch (consumer WG + TMA warp)", gluon)


if __name__ == "__main__":
    main()
