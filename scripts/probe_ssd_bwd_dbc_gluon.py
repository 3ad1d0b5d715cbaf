"""Does the Gluon dC + dB kernel of the SSD backward beat our two Triton launches of `_ssd_bwd_dbc_kernel`
(bwd_dbc_launch, dC then dB) on the H200, and match them? And from what length on (the dispatch's cutoff)?
The kernel lives in nemotron_kernels/triton/ssd_scan_bwd_dbc_gluon.py (its docstring: math, design, scope); the op
runs it on Hopper with Triton 3.6 where ops/ssd_scan.py gluon_eligible("dbc") holds, which includes a size rule:
at least GLUON_DBC_MIN_WAVES (1) wave of CTAs, n_chunks G >= 132 SMs (B1 L >= 2176 at G = 8), set by this
script's --lengths run (session 27, us, Gluon against ours: L1K 109.3 / 83.1, L2K 138.9 / 136.1, L4K 130.7 / 160.6,
L8K 179.8 / 292.6, L32K 626.0 / 1,050.9).
First run (session 27, the probe's own copy of the kernel, now the library's): dC and dB bitwise equal to ours at
B1 L1K and B1 L32K; B1 L32K 622.9 us against ours 1,041.3 (the prediction, 430-480 us, missed by ~30%); B1 L1K
(64 CTAs) 109.3 against 83.1: slower (host launch cost, half the SMs idle).

    PYTHONPATH=. python3 scripts/probe_ssd_bwd_dbc_gluon.py --lengths 1024,2048,4096,8192,32768   # H200
    PYTHONPATH=. .venv-aot/bin/python scripts/probe_ssd_bwd_dbc_gluon.py --aot                     # CPU: sm_90a
GPU mode builds bench/bench_ssd_scan.py's inputs (and a dy as the dx probe draws it) at B1 and each of --lengths
(default 1024,32768), runs the op's backward stages up to dB / dC as ssd_scan_bwd does (_plan, _chunk_states,
_state_grads), our two bwd_dbc_launch calls for the reference, then the Gluon launcher (outputs poisoned with NaN
first). It prints the CTAs and whether gluon_eligible("dbc") takes the length. A relative max error (max |a - b| /
max |b|) above 1e-2 for dC or dB (bf16: one rounding step is 3.9e-3; expected 0) prints where the worst element
is, then WRONG, and exits 1 untimed. It prints whether each is bitwise equal, then times ours (both launches) and
the Gluon kernel with triton.testing.do_bench (warmup 10, rep 100) in us (each Gluon launch builds its TMA
descriptors, as in the op). --aot compiles the module's builds (with and without the carries) and prints
registers, spills, shared memory, setmaxnreg and the PTX counts of wgmma and TMA."""
import argparse

import torch
import triton

from nemotron_kernels.triton import ssd_scan_bwd_dbc_gluon as gluon_dbc
from scripts.gluon_probe import check, rel_err, report_all, time_us, worst
from scripts.probe_ssd_bwd_dx_gluon import bwd_inputs

Q = 128                         # the chunk
BF16_TOL = 1e-2                 # relative max error of dC, dB (bf16)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aot", action="store_true", help="compile for sm_90a without a GPU and report")
    parser.add_argument("--lengths", default="1024,32768", help="comma-separated L at B1 (multiples of 128)")
    args = parser.parse_args()
    if args.aot:
        report_all(gluon_dbc.aot_compile_all(), "8 math warps + 1 TMA warp")
        return
    from nemotron_kernels.ops import ssd_scan as ssd_op
    from nemotron_kernels.triton import mamba_common
    bwd_scan_k = mamba_common.kernel_module("ssd_scan_bwd_chunk_scan")
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}", flush=True)
    bsz = 1
    for seqlen in (int(n) for n in args.lengths.split(",")):
        d = bwd_inputs(bsz, seqlen)
        plan = d["plan"]
        geometry, cfg = plan["geometry"], plan["cfg"]
        x, B, C = d["x"], d["B"], d["C"]
        pw = torch.empty(geometry["n_chunks"], B.shape[2], Q, Q, dtype=x.dtype, device=x.device)
        ref = [torch.full_like(C, float("nan")), torch.full_like(B, float("nan"))]       # dC, dB
        got = [torch.full_like(C, float("nan")), torch.full_like(B, float("nan"))]

        def ours():             # ssd_scan_bwd's two launches: dC (writes pw), then dB (reads it)
            bwd_scan_k.bwd_dbc_launch(x, d["dtcs"], None, d["dy"], B, d["s_in"], d["carry_decay"], d["carry"], pw,
                                      ref[0], False, geometry, cfg["dc"], plan["precision"])
            bwd_scan_k.bwd_dbc_launch(x, d["dtcs"], None, d["dy"], C, d["g_out"], d["gcarry_decay"], d["gcarry"],
                                      pw, ref[1], True, geometry, cfg["db"], plan["precision"])

        def gluon():
            gluon_dbc.bwd_dc_db_launch(x, d["dtcs"], d["dy"], B, C, d["s_in"], d["carry_decay"], d["carry"],
                                       d["g_out"], d["gcarry_decay"], d["gcarry"], got[0], got[1], geometry)

        ours()
        gluon()
        torch.cuda.synchronize()
        name = f"B{bsz} L{seqlen // 1024}K" if seqlen % 1024 == 0 else f"B{bsz} L{seqlen}"
        print(f"{name}: {geometry['n_chunks']} chunks, {geometry['n_seg']} segments (carry "
              f"{'yes' if d['carry'] is not None else 'no'}), {geometry['n_chunks'] * B.shape[2]} CTAs", flush=True)
        print(f"  gluon_eligible dbc: {ssd_op.gluon_eligible('dbc', x, B, C, Q, False, None, d['dy'])}", flush=True)
        worst("dC", got[0], ref[0], BF16_TOL)
        worst("dB", got[1], ref[1], BF16_TOL)
        check("gluon dB/dC (bf16)", {"dC": rel_err(got[0], ref[0]), "dB": rel_err(got[1], ref[1])}, BF16_TOL,
              "bwd_dbc_launch x 2")
        print(f"  bitwise equal: dC {torch.equal(got[0], ref[0])}, dB {torch.equal(got[1], ref[1])}", flush=True)
        time_us("ours: triton bwd_dbc_launch dC + dB", ours)
        time_us("gluon dB/dC (8 math warps + TMA warp)", gluon)


if __name__ == "__main__":
    main()
