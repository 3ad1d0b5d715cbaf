"""Does the Gluon chunk_scan (stage 3 of the SSD scan) beat our Triton one on the H200?
The kernel lives in nemotron_kernels/triton/ssd_scan_chunk_scan_gluon.py (its docstring: math, design, scope); the
op runs it on Hopper with Triton 3.6 where ops/ssd_scan.py gluon_eligible holds. This script times it against the
Triton `chunk_scan_launch` (nemotron_kernels/triton/ssd_scan_chunk_scan.py) at Nemotron's shape (H=64, P=64, G=8,
N=128, chunk Q=128, bf16 x / B / C / y, with D and, at L32K, a carry across several segments).
First run (session 26, the probe's own copy, two consumer warpgroups per (chunk, group)): 422 us at B1 L32K
against Triton's 634; one warpgroup per 64-row block took 568 us and was dropped. Session 27 (the dtcs rows through
the TMA ring): 337 us, the 16 packed sequences 348 against 620 (the kernel's docstring: what else was tried).

    PYTHONPATH=. python3 scripts/probe_ssd_chunk_scan_gluon.py                                # H200
    PYTHONPATH=. .venv-aot/bin/python scripts/probe_ssd_chunk_scan_gluon.py --aot             # CPU: sm_90a compile
GPU mode builds bench/bench_ssd_scan.py's inputs (dt softplus, dt_bias, D) at B1 L1024, B1 L32K, then its 16 packed
sequences (31,280 tokens: the chunk table's slots, y poisoned with NaN so every row must be written), gets the
chunk states through the op module (_plan, _chunk_states), runs our chunk_scan_launch for the reference y, then
the Gluon launcher: relative max error above 1e-2 prints WRONG and exits 1 untimed (the Gluon kernel adds the
carry term in fp32 where ours rounds S_in + carry to bf16 first: ~2e-3). Then it times both with
triton.testing.do_bench (warmup 10, rep 100) in us (at L1K the host's launch path dominates). --aot compiles the
module's variants (every one the op dispatches) and prints registers, shared memory, setmaxnreg and the PTX counts
of wgmma and cp.async.bulk.tensor."""
import argparse

import torch
import triton

from bench.bench_ssd_scan import _input_maker, packed_cu
from nemotron_kernels.triton import ssd_scan_chunk_scan_gluon as gluon_scan
from scripts.gluon_probe import check, rel_err, report, time_us

Q = 128


def _stage3_inputs(s: dict):
    """What ssd_scan_fwd hands stage 3: the plan and stages 0-2's outputs (dt_softplus, no initial states)."""
    from nemotron_kernels.ops import ssd_scan as ssd_op
    x, B, cu = s["x"], s["B"], s.get("cu_seqlens")
    plan = ssd_op._plan(x, B, Q, cu, x.shape[0] if cu is None else cu.numel() - 1)
    s_in, carry_decay, carry_lp, dtcs = ssd_op._chunk_states(x, s["dt"], s["A"].float().contiguous(), B,
                                                             s["dt_bias"].float().contiguous(), None, True, plan)
    return plan, s_in, carry_decay, carry_lp, dtcs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aot", action="store_true", help="compile for sm_90a without a GPU and report")
    args = parser.parse_args()
    if args.aot:
        for name, ck in gluon_scan.aot_compile_all():
            print(f"compiled {name} for sm_90a: 2 consumer WGs + 1 producer warp", flush=True)
            report(ck, name.replace(" ", "_").replace("=", ""))
        return
    from nemotron_kernels.ops import ssd_scan as ssd_op
    from nemotron_kernels.triton import mamba_common
    scan_k = mamba_common.kernel_module("ssd_scan_chunk_scan")
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}", flush=True)
    for bsz, seqlen, cu in ((1, 1024, None), (1, 32768, None), (1, packed_cu()[-1], packed_cu())):
        s = _input_maker(bsz, seqlen, torch.device("cuda"), cu)(0)  # the bench's inputs (packed: its 16 sequences)
        x, B, C, D = s["x"], s["B"].contiguous(), s["C"].contiguous(), s["D"].float().contiguous()
        print(f"  gluon_eligible: {ssd_op.gluon_eligible('chunk_scan', x, B, C, Q, cu is not None)}", flush=True)
        plan, s_in, carry_decay, carry_lp, dtcs = _stage3_inputs(s)
        geometry = plan["geometry"]
        y_ref, y = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))   # every row must be written

        def launch(kernels, out):
            return lambda: kernels.chunk_scan_launch(x, dtcs, B, C, D, plan["table"], s_in, carry_decay, carry_lp,
                                                     out, geometry, plan["cfg"]["chunk_scan"], plan["precision"])

        ours, gluon = launch(scan_k, y_ref), launch(gluon_scan, y)
        ours()
        gluon()
        torch.cuda.synchronize()
        name = f"B{bsz} L{seqlen // 1024}K" if seqlen % 1024 == 0 else f"B{bsz} L{seqlen}"
        name += f" packed ({len(cu) - 1} sequences)" if cu else ""
        print(f"{name}: {geometry['n_chunks']} chunks, {geometry['n_seg']} segments "
              f"(carry {'yes' if carry_lp is not None else 'no'})", flush=True)
        check("gluon chunk_scan_launch", {"y": rel_err(y, y_ref)}, 1e-2, "chunk_scan_launch")
        time_us("ours: triton chunk_scan_launch", ours)
        time_us("gluon chunk_scan_launch (2 consumer WGs + TMA warp)", gluon)


if __name__ == "__main__":
    main()
