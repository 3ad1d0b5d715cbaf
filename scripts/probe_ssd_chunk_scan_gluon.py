"""Does the Gluon chunk_scan (stage 3 of the SSD scan) beat our Triton one on the H200?
The kernel lives in nemotron_kernels/triton/ssd_scan_chunk_scan_gluon.py (its docstring: math, design, scope); the
op runs it on Hopper with Triton 3.6 where ops/ssd_scan.py gluon_eligible holds. This script times it against the
Triton `chunk_scan_launch` (nemotron_kernels/triton/ssd_scan_chunk_scan.py) at Nemotron's shape (H=64, P=64, G=8,
N=128, chunk Q=128, bf16 x / B / C / y, with D and, at L32K, a carry across several segments).
First run (session 26, the probe's own copy, two consumer warpgroups per (chunk, group)): 422 us at B1 L32K
against Triton's 634; one warpgroup per 64-row block took 568 us and was dropped. Session 27 (the dtcs rows through
the TMA ring): 337 us, the 16 packed sequences 348 against 620 (the kernel's docstring: what else was tried).
Session 28: the persistent grid 323-326 us at 2048 tiles (the op's grid from 2 waves of tiles up).
Variants: triton (our chunk_scan_launch), gluon (one CTA a tile, persistent=False), persistent (the persistent
grid, persistent=True); the kernel's docstring has the prediction and the measurements.

    PYTHONPATH=. python3 scripts/probe_ssd_chunk_scan_gluon.py                                # H200, ~1 min
    PYTHONPATH=. python3 scripts/probe_ssd_chunk_scan_gluon.py --variants gluon,persistent    # time only these
    PYTHONPATH=. .venv-aot/bin/python scripts/probe_ssd_chunk_scan_gluon.py --aot             # CPU: sm_90a compile
GPU mode builds bench/bench_ssd_scan.py's inputs (dt softplus, dt_bias, D) at B1 L1K, B1 L4K, B4 L8K, B16 L2K (the
bench's shapes and the size rule's edge), B1 L32K, then its 16 packed
sequences (31,280 tokens: the chunk table's slots, y poisoned with NaN so every row must be written), gets the
chunk states through the op module (_plan, _chunk_states) and runs every variant once, whatever --variants says:
the one-CTA-a-tile Gluon build against ours within 1e-2 relative (the Gluon kernel adds the carry term in fp32
where ours rounds S_in + carry to bf16 first: ~2e-3), the persistent one bitwise against it; a failed check prints
where the worst element is, WRONG, and exits 1 untimed. Then it times the --variants (default all) with
triton.testing.do_bench (warmup 10, rep 100) in us (at L1K the host's launch path dominates). --aot compiles the
module's 16 variants (every one the op dispatches, one CTA a tile and persistent) and prints registers, shared memory,
setmaxnreg, spills, the PTX counts of wgmma and cp.async.bulk.tensor, and registers read before written."""
import argparse
import sys

import torch
import triton

from bench.bench_ssd_scan import _input_maker, packed_cu
from nemotron_kernels.triton import ssd_scan_chunk_scan_gluon as gluon_scan
from scripts.gluon_probe import check, rel_err, report_all, time_us, worst

Q = 128
VARIANTS = ("triton", "gluon", "persistent")
LABELS = {"triton": "ours: triton chunk_scan_launch", "gluon": "gluon, one CTA a tile (2 consumer WGs + TMA warp)",
          "persistent": "gluon, persistent grid (#SMs programs)"}


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
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}: what to time (all are checked)")
    args = parser.parse_args()
    timed = args.variants.split(",")
    assert set(timed) <= set(VARIANTS), f"--variants: {timed} not all of {VARIANTS}"
    if args.aot:
        report_all(gluon_scan.aot_compile_all(), "2 consumer WGs + 1 producer warp")
        return
    from nemotron_kernels.ops import ssd_scan as ssd_op
    from nemotron_kernels.triton import mamba_common
    scan_k = mamba_common.kernel_module("ssd_scan_chunk_scan")
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}", flush=True)
    shapes = ((1, 1024, None), (1, 4096, None), (4, 8192, None), (16, 2048, None), (1, 32768, None),
              (1, packed_cu()[-1], packed_cu()))
    for bsz, seqlen, cu in shapes:
        s = _input_maker(bsz, seqlen, torch.device("cuda"), cu)(0)  # the bench's inputs (packed: its 16 sequences)
        x, B, C, D = s["x"], s["B"].contiguous(), s["C"].contiguous(), s["D"].float().contiguous()
        print(f"  gluon_eligible: {ssd_op.gluon_eligible('chunk_scan', x, B, C, Q, cu is not None)}", flush=True)
        plan, s_in, carry_decay, carry_lp, dtcs = _stage3_inputs(s)
        geometry = plan["geometry"]
        ys = {name: torch.full_like(x, float("nan")) for name in VARIANTS}     # every row must be written

        def launch(name):
            kernels, extra = (scan_k, {}) if name == "triton" else (gluon_scan, dict(persistent=name == "persistent"))
            return lambda: kernels.chunk_scan_launch(x, dtcs, B, C, D, plan["table"], s_in, carry_decay, carry_lp,
                                                     ys[name], geometry, plan["cfg"]["chunk_scan"], plan["precision"],
                                                     **extra)

        runs = {name: launch(name) for name in VARIANTS}
        for run in runs.values():
            run()
        torch.cuda.synchronize()
        name = f"B{bsz} L{seqlen // 1024}K" if seqlen % 1024 == 0 else f"B{bsz} L{seqlen}"
        name += f" packed ({len(cu) - 1} sequences)" if cu else ""
        tiles = geometry["n_table"] * B.shape[2]
        rule = tiles >= gluon_scan.PERSISTENT_MIN_WAVES * torch.cuda.get_device_properties(0).multi_processor_count
        print(f"{name}: {geometry['n_chunks']} chunks, {geometry['n_seg']} segments "
              f"(carry {'yes' if carry_lp is not None else 'no'}), {tiles} tiles: the op's size rule takes "
              f"{'the persistent grid' if rule else 'a CTA a tile'}", flush=True)
        worst("y (gluon)", ys["gluon"], ys["triton"], 1e-2)
        check("gluon chunk_scan_launch", {"y": rel_err(ys["gluon"], ys["triton"])}, 1e-2, "chunk_scan_launch")
        differ = int((ys["persistent"].view(torch.int16) != ys["gluon"].view(torch.int16)).sum())
        if differ:
            worst("y (persistent)", ys["persistent"], ys["gluon"], 0.0)
            print(f"  gluon persistent: WRONG, {differ} of {x.numel()} elements differ from one CTA a tile "
                  "(bits)", flush=True)
            sys.exit(1)
        print("  gluon persistent: bitwise equal to one CTA a tile", flush=True)
        for variant in timed:
            time_us(LABELS[variant], runs[variant])


if __name__ == "__main__":
    main()
