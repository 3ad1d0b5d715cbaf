"""Does the Gluon dx kernel of the SSD backward beat our Triton one (`_ssd_bwd_dx_kernel`) on the H200, and match it?
The kernel lives in nemotron_kernels/triton/ssd_scan_bwd_dx_gluon.py (its docstring: math, design, scope); the op
runs it on Hopper with Triton 3.6 where ops/ssd_scan.py gluon_eligible("dx") holds. This script checks and times it
against the Triton `bwd_dx_launch` (nemotron_kernels/triton/ssd_scan_bwd_chunk_scan.py) at Nemotron's shape (H=64,
P=64, G=8 groups of 8 heads, N=128, chunk Q=128, bf16 x / dy / B / C / states, D, dt_bias, dt softplus, a carry
across the op's segments: 4 at both L1K and L32K on the H200). Traffic (x, dy, S_in, G in, dx out: 268 MB each at
B1 L32K; B, C, dtcs, da parts ~190 MB): ~1.5 GB, a floor of ~360 us at the H200's 4.19 TB/s.
First run (session 26, the probe's own copy of three variants): dx and ddt bitwise equal to ours, the fp64 partial
sums within 1e-7; B1 L32K: warp-specialised (a TMA producer warp) 980 us against ours 1,455; the same building half
of M^T during the state products 1,033; the math warps issuing their own TMA loads 1,013. L1K: 149 against 115
(host launch cost). The first is the library kernel; the other two were dropped.

    PYTHONPATH=. python3 scripts/probe_ssd_bwd_dx_gluon.py                                # H200
    PYTHONPATH=. .venv-aot/bin/python scripts/probe_ssd_bwd_dx_gluon.py --aot             # CPU: sm_90a compile
GPU mode builds bench/bench_ssd_scan.py's inputs (and its fwd+bwd dy) at B1 L1024, B1 L32K, then its 16 packed
sequences (31,280 tokens), runs the op's backward stages up to dx as ssd_scan_bwd does (_plan, _chunk_states,
_state_grads, bwd_da_launch), our bwd_dx_launch for the reference outputs, then the Gluon launcher (outputs
poisoned with NaN first). A relative max error (max |a - b| / max |b|) above 1e-2 for dx, ddt (bf16: one rounding
step is 3.9e-3) or above 1e-3 for dA_part, dD_part, dbias_part (fp64 sums of fp32 terms; only the order of fp32
sums differs) prints where the worst element
is, then WRONG, and exits 1 untimed. Then it times both with triton.testing.do_bench (warmup 10, rep 100) in us
(each launch builds its TMA descriptors, as in the op). --aot compiles the module's builds (with and without the
carries) and prints registers, spills, shared memory, setmaxnreg and the PTX counts of wgmma and TMA."""
import argparse

import torch
import triton

from bench.bench_ssd_scan import _input_maker, packed_cu
from nemotron_kernels.triton import ssd_scan_bwd_dx_gluon as gluon_dx
from scripts.gluon_probe import check, rel_err, report_all, time_us, worst

H, Q = 64, 128                  # Nemotron's heads, the chunk
BF16_TOL, SUM_TOL = 1e-2, 1e-3  # relative max error: bf16 outputs, fp64 partial sums


def bwd_inputs(bsz: int, seqlen: int, cu=None):
    """Every input of the dx launch (and of dB / dC: probe_ssd_bwd_dbc_gluon.py), as ssd_scan_bwd builds them for
    the bench's fwd+bwd (dt softplus, dt_bias, D, no initial states, no final-state gradient; dy as
    bench_ssd_scan._with_grad draws it); cu: packed (B = 1)."""
    from nemotron_kernels.ops import ssd_scan as ssd_op
    from nemotron_kernels.triton import mamba_common
    bwd_scan_k = mamba_common.kernel_module("ssd_scan_bwd_chunk_scan")
    dev = torch.device("cuda")
    s = _input_maker(bsz, seqlen, dev, cu)(0)                                     # the bench's inputs
    cu_t = s.get("cu_seqlens")
    nstates = bsz if cu is None else len(cu) - 1
    gen = torch.Generator(device="cpu").manual_seed(seqlen)
    dy = torch.randn(s["x"].shape, generator=gen).to(device=dev, dtype=s["x"].dtype)
    x, dt, B, C = s["x"].contiguous(), s["dt"].contiguous(), s["B"].contiguous(), s["C"].contiguous()
    A32, D32, bias32 = (s[k].float().contiguous() for k in ("A", "D", "dt_bias"))
    plan = ssd_op._plan(x, B, Q, cu_t, nstates)
    geometry = plan["geometry"]
    s_in, carry_decay, carry_lp, dtcs = ssd_op._chunk_states(x, dt, A32, B, bias32, None, True, plan)
    g_out, gcarry_decay, _, gcarry_lp, _, _ = ssd_op._state_grads(dy, dtcs, C, None, False, nstates, plan)
    cfg = plan["cfg"]
    da_part = torch.empty(geometry["n_chunks"], bwd_scan_k.da_blocks(Q, cfg["da"]), H, Q, dtype=torch.float32,
                          device=dev)
    bwd_scan_k.bwd_da_launch(x, dtcs, plan["table"], dy, B, C, da_part, geometry, cfg["da"], plan["precision"])
    return dict(x=x, dt=dt, dtcs=dtcs, A=A32, B=B, C=C, D=D32, dt_bias=bias32, dy=dy, s_in=s_in,
                carry_decay=carry_decay, carry=carry_lp, g_out=g_out, gcarry_decay=gcarry_decay, gcarry=gcarry_lp,
                da_part=da_part, plan=plan)


def _outputs(d: dict):
    """dx, ddt, parts [3, n_chunks, H] fp64 (dA, dD, dt_bias) as ssd_scan_bwd allocates them, poisoned (NaN)."""
    x, dt = d["x"], d["dt"]
    n_chunks = d["plan"]["geometry"]["n_chunks"]
    dx = torch.full_like(x, float("nan"))
    ddt = torch.full(dt.shape, float("nan"), dtype=dt.dtype, device=dt.device)
    parts = torch.full((3, n_chunks, H), float("nan"), dtype=torch.float64, device=x.device)
    return dx, ddt, parts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aot", action="store_true", help="compile for sm_90a without a GPU and report")
    args = parser.parse_args()
    if args.aot:
        report_all(gluon_dx.aot_compile_all(), "8 math warps + 1 TMA warp")
        return
    from nemotron_kernels.ops import ssd_scan as ssd_op
    from nemotron_kernels.triton import mamba_common
    bwd_scan_k = mamba_common.kernel_module("ssd_scan_bwd_chunk_scan")
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}", flush=True)
    for bsz, seqlen, cu in ((1, 1024, None), (1, 32768, None), (1, packed_cu()[-1], packed_cu())):
        d = bwd_inputs(bsz, seqlen, cu)
        plan = d["plan"]
        geometry = plan["geometry"]
        ref, got = _outputs(d), _outputs(d)
        ok = ssd_op.gluon_eligible("dx", d["x"], d["B"], d["C"], Q, cu is not None, None, d["dy"], d["D"],
                                   d["dt_bias"], True)
        print(f"  gluon_eligible dx: {ok}", flush=True)

        def launch(kernels, outs):
            dx, ddt, parts = outs
            return lambda: kernels.bwd_dx_launch(d["x"], d["dt"], d["dtcs"], d["A"], d["B"], d["C"], d["D"],
                                                 d["dt_bias"], plan["table"], d["dy"], d["s_in"], d["carry_decay"],
                                                 d["carry"],
                                                 d["g_out"], d["gcarry_decay"], d["gcarry"], dx, ddt, parts[0],
                                                 parts[1], parts[2], d["da_part"], geometry, True, plan["cfg"]["dx"],
                                                 plan["precision"])

        ours, gluon = launch(bwd_scan_k, ref), launch(gluon_dx, got)      # ours: the Triton launcher, always
        ours()
        gluon()
        torch.cuda.synchronize()
        name = f"B{bsz} L{seqlen // 1024}K" if seqlen % 1024 == 0 else f"B{bsz} L{seqlen}"
        name += f" packed ({len(cu) - 1} sequences)" if cu else ""
        print(f"{name}: {geometry['n_chunks']} chunks, {geometry['n_seg']} segments "
              f"(carry {'yes' if d['carry'] is not None else 'no'}), da blocks {d['da_part'].shape[1]}", flush=True)
        worst("dx", got[0], ref[0], BF16_TOL)
        worst("ddt", got[1], ref[1], BF16_TOL)
        check("gluon bwd_dx_launch dx, ddt (bf16)", {"dx": rel_err(got[0], ref[0]), "ddt": rel_err(got[1], ref[1])},
              BF16_TOL, "bwd_dx_launch")
        names = ("dA_part", "dD_part", "dbias_part")
        for k, nm in enumerate(names):
            worst(nm, got[2][k], ref[2][k], SUM_TOL)
        errs = {nm: rel_err(got[2][k], ref[2][k]) for k, nm in enumerate(names)}
        check("gluon bwd_dx_launch partial sums (fp64)", errs, SUM_TOL, "bwd_dx_launch")
        print(f"  bitwise equal: dx {torch.equal(got[0], ref[0])}, ddt {torch.equal(got[1], ref[1])}", flush=True)
        time_us("ours: triton bwd_dx_launch", ours)
        time_us("gluon bwd_dx_launch (8 math warps + TMA warp)", gluon)


if __name__ == "__main__":
    main()
