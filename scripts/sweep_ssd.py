"""Sweep the SSD scan kernels' tiles at Nemotron-H's shape (B1 L32K, H=64, P=64, G=8, N=128, chunk 128, bf16):
    PYTHONPATH=. python3 scripts/sweep_ssd.py              # H200: each kernel's candidates, then the whole op
    PYTHONPATH=. python3 scripts/sweep_ssd.py --registers  # no GPU: registers / spills / shared memory (sm_90a AOT)
    PYTHONPATH=. python3 scripts/sweep_ssd.py --only chunk_scan   # one kernel's candidates alone
    PYTHONPATH=. python3 scripts/sweep_ssd.py --only dc db --defaults   # the default tiles alone (A/B of two trees)
    PYTHONPATH=. python3 scripts/sweep_ssd.py --only da --packed   # the bench's 16 packed sequences (packed variants)
Every main kernel ran at 1 program per SM (194-255 registers x 8 warps, 12.5% occupancy: latency bound); the
candidates below (from the --registers report, Triton 3.8) hold 2+ programs (or 16 warps) per SM, a few at the cost
of small spills (maxnreg caps); the GPU table prints the registers / spills of its own Triton's compile. The
3-stage candidates (session 13, after 3 stages gave the attention backward 1.2x) are those whose shared memory grew
with the stage count, i.e. whose loads Triton pipelines (dx and chunk_scan at 4 warps compiled the same as 2 stages).
Each candidate runs on the same inputs as the op's default tile and must match its outputs (same math, other
tiling: max |a - b| / max |b| <= 1e-2); times are triton.testing.do_bench medians (L2 flushed between runs).
The states stages are timed with their state passing (segments follow the candidate's programs_per_sm)."""
import argparse
import contextlib
import importlib
import os
import re
import subprocess
import tempfile
from unittest import mock

import torch

from nemotron_kernels.ops import ssd_scan as ssd_ops
from nemotron_kernels.triton import mamba_common

H, P, G, N, Q, L = 64, 64, 8, 128, 128, 32768
N_CHUNKS = L // Q
TOL = 1e-2

# overrides of the default tile, per kernel (the op's names: ops/ssd_scan.py kernel_configs)
CANDIDATES = {
    "chunk_state": [
        dict(BLOCK_P=32, num_warps=4, num_stages=2, programs_per_sm=2),
        dict(BLOCK_P=32, num_warps=4, num_stages=1, programs_per_sm=2),
        dict(BLOCK_P=16, num_warps=8, num_stages=2, programs_per_sm=2),
        dict(BLOCK_P=16, num_warps=4, num_stages=2, programs_per_sm=2),
        dict(BLOCK_P=64, num_warps=8, num_stages=2, programs_per_sm=1),     # the default before session 9
        dict(BLOCK_P=32, num_warps=8, num_stages=2, maxnreg=128, programs_per_sm=2),
        dict(BLOCK_P=32, num_warps=4, num_stages=3, programs_per_sm=2),
        dict(BLOCK_P=16, num_warps=4, num_stages=3, programs_per_sm=2),
        dict(num_warps=16, programs_per_sm=1),     # 124 registers, no spills: 16 warps per SM (not 2 x 4)
    ],
    "bwd_chunk_state": [
        dict(num_stages=3),     # the next chunk's dy, C one chunk ahead (2 stages: the loop waits for them at once)
        dict(BLOCK_P=64, num_warps=8, num_stages=1),
        dict(BLOCK_P=32, num_warps=4, num_stages=1, programs_per_sm=2),
        dict(BLOCK_P=16, num_warps=4, num_stages=1, programs_per_sm=3),
        dict(BLOCK_P=16, num_warps=8, num_stages=1, maxnreg=128, programs_per_sm=2),
        dict(BLOCK_P=16, num_warps=8, num_stages=2, maxnreg=128, programs_per_sm=2),
        dict(num_warps=16),                                      # 128 registers, no spills
    ],
    "chunk_scan": [
        dict(autotune=False, BLOCK_M=64, HEADS_PER_PROG=1, num_warps=8, num_stages=2, maxnreg=128),
        dict(autotune=False, BLOCK_M=64, HEADS_PER_PROG=1, num_warps=4, num_stages=2),
        dict(autotune=False, BLOCK_M=32, HEADS_PER_PROG=1, num_warps=4, num_stages=2),
        dict(autotune=False, BLOCK_M=32, HEADS_PER_PROG=1, num_warps=8, num_stages=2, maxnreg=128),
        dict(autotune=False, BLOCK_M=128, HEADS_PER_PROG=1, num_warps=8, num_stages=2),
        dict(autotune=False, BLOCK_M=64, num_warps=8, num_stages=3),
        dict(autotune=False, BLOCK_M=64, num_warps=4, num_stages=1),      # 2 programs per SM (small spills)
        # around that tile, the fastest in session 23 (640 us against 720 for the 8-warp ones)
        dict(autotune=False, BLOCK_M=64, num_warps=4, num_stages=2),
        dict(autotune=False, BLOCK_M=64, HEADS_PER_PROG=4, num_warps=4, num_stages=1),
        dict(autotune=False, BLOCK_M=64, HEADS_PER_PROG=2, num_warps=4, num_stages=1),
        dict(autotune=False, BLOCK_M=32, num_warps=4, num_stages=1),
        dict(autotune=False, BLOCK_M=32, num_warps=2, num_stages=1),
        dict(autotune=False, BLOCK_M=64, num_warps=8, num_stages=1),
        dict(autotune=False, BLOCK_M=64, num_warps=16, num_stages=2),     # 128 registers, no spills
        # mamba_ssm's shape (session 20 ncu: its 2-warp CTAs stall 0.21 cycles per instruction on barriers, ours
        # 1.00): P split over programs, few warps, several CTAs per SM
        dict(autotune=False, BLOCK_M=64, BLOCK_P=32, HEADS_PER_PROG=1, num_warps=4, num_stages=2),
        dict(autotune=False, BLOCK_M=64, BLOCK_P=32, HEADS_PER_PROG=1, num_warps=2, num_stages=2),
        dict(autotune=False, BLOCK_M=64, BLOCK_P=64, HEADS_PER_PROG=1, num_warps=2, num_stages=2),
        dict(autotune=False, BLOCK_M=64, BLOCK_P=32, num_warps=4, num_stages=2),
        dict(autotune=False, BLOCK_M=128, BLOCK_P=32, num_warps=4, num_stages=2),
        dict(autotune=False, BLOCK_M=128, BLOCK_P=32, num_warps=8, num_stages=2),
    ],
    "dx": [
        dict(num_warps=4),      # 2 programs per SM, as chunk_scan's 4-warp tile; but AOT: 1.9 KB of spills
        dict(num_warps=16, num_stages=1),
        dict(num_warps=16, num_stages=2),
        dict(num_warps=8, num_stages=1),
    ],
    "da": [   # causal column blocks of BLOCK_K up to the row block's diagonal (default 64 x 32, 4 warps)
        dict(BLOCK_M=64, BLOCK_K=16),
        dict(BLOCK_M=64, BLOCK_K=64),
        dict(BLOCK_M=64, num_warps=2),
        dict(BLOCK_M=64, num_warps=8),
        dict(BLOCK_M=128, BLOCK_K=32),
        dict(BLOCK_M=128, BLOCK_K=32, num_warps=8),
        dict(BLOCK_M=128, BLOCK_K=16),
        dict(BLOCK_M=32, BLOCK_K=32, num_warps=2),
        dict(BLOCK_M=64, num_stages=3),
        # several heads of a group per program: the chunk's table entry (packed: a dependent load before any
        # other) and its C rows loaded once for them; packed da runs 18% slower per token than batched (session 25)
        dict(HEADS_PER_PROG=2),
        dict(HEADS_PER_PROG=4),
    ],
    "dc": [   # without the da part: 64 rows take wgmma at 255 registers, no spills (16 warps: 128, no spills), 3 stages
        dict(num_stages=2),     # the default before session 23: the loop waits for the next head's loads at once
        dict(num_warps=8),
        dict(BLOCK_M=32),
        dict(BLOCK_M=128),
        dict(BLOCK_M=64, num_stages=1),
        dict(BLOCK_M=32, num_warps=8, num_stages=1, maxnreg=128),
        dict(BLOCK_M=64, num_warps=8, num_stages=1, maxnreg=128),
    ],
    "db": [   # reads dC's pair weights: default 64 rows, maxnreg 128 (125 registers, no spills, 2 per SM), 3 stages
        dict(num_stages=2),     # the default before session 23
        dict(num_warps=16, maxnreg=None),
        dict(maxnreg=None),     # 144 registers, 1 per SM
        dict(BLOCK_M=128, maxnreg=None),
        dict(BLOCK_M=128, num_warps=16, maxnreg=None),
        dict(num_warps=4, maxnreg=None),
        dict(BLOCK_M=32),
    ],
}


def programs_per_sm(regs: int, warps: int, smem: int) -> int:
    """Programs one H200 SM holds: 64K registers (per warp in 256-register units), 64 warps, 228 KB shared memory
    (1 KB reserved per program)."""
    by_regs = 65536 // (warps * -(-regs * 32 // 256) * 256)
    return max(0, min(by_regs, 64 // warps, 233472 // (smem + 1024), 32))


def tile_name(over: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in over.items()) or "default"


# ---------------------------------------------------------------------------------------------------- registers
def compiled_main(kernel: str, tile: dict):
    """The AOT sm_90a compile of `kernel`'s main (batched) variant at `tile`."""
    modules = {"chunk_state": "ssd_scan_chunk_state", "bwd_chunk_state": "ssd_scan_bwd_chunk_state",
               "chunk_scan": "ssd_scan_chunk_scan"}
    if kernel in modules:
        return next(mamba_common.kernel_module(modules[kernel]).aot_compile_all(tile))[1]
    return next(mamba_common.kernel_module("ssd_scan_bwd_chunk_scan").aot_compile_all({kernel: tile}))[1]


def registers(only: list[str] | None = None) -> None:
    """Registers / spill stack / shared memory per candidate (of the kernels in `only`, default all) from cuobjdump
    -res-usage of the AOT cubin."""
    dump = os.path.dirname(importlib.import_module("triton").__file__) + "/backends/nvidia/bin/cuobjdump"
    defaults = ssd_ops.kernel_configs(H, P, G, N, Q, N_CHUNKS, 132)
    print(f"{'kernel':16s} {'regs':>4s} {'stack':>5s} {'smem KB':>7s} {'prog/SM':>7s}  tile")
    for kernel, candidates in CANDIDATES.items():
        if only is not None and kernel not in only:
            continue
        for over in [{}] + candidates:
            tile = dict(defaults[kernel], **over)
            compiled = compiled_main(kernel, tile)
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(compiled.asm["cubin"])
                f.flush()
                out = subprocess.run([dump, "-res-usage", f.name], capture_output=True, text=True).stdout
            regs, stack = map(int, re.search(r"REG:(\d+).*?STACK:(\d+)", out, re.S).groups())
            smem = compiled.metadata.shared
            print(f"{kernel:16s} {regs:4d} {stack:5d} {smem / 1024:7.1f} "
                  f"{programs_per_sm(regs, tile['num_warps'], smem):7d}  {tile_name(over)}", flush=True)


# ---------------------------------------------------------------------------------------------------- GPU timing
@contextlib.contextmanager
def tiles(over: dict):
    """The op's tiles with `over` ({kernel: {key: value}}) merged into its defaults."""
    default = ssd_ops.kernel_configs

    def merged(*args):
        return {k: dict(v, **over.get(k, {})) for k, v in default(*args).items()}

    with mock.patch.object(ssd_ops, "kernel_configs", merged):
        yield


@contextlib.contextmanager
def recording(module, name: str, launched: list):
    """module.name (a *_launch function) appending the CompiledKernel it returns to `launched`."""
    real = getattr(module, name)

    def record(*args):
        launched.append(real(*args))
        return launched[-1]

    with mock.patch.object(module, name, record):
        yield


def full_states(local, decay, carry, geometry: dict, reverse: bool):
    """[n_chunks, H, P, N] fp32: per-chunk states counted from a segment boundary, completed with the carry."""
    if carry is None:
        return local.float()
    seg = torch.arange(geometry["n_chunks"], device=local.device) // geometry["seg_len"]
    seg = geometry["n_seg"] - 1 - seg if reverse else seg
    return local.float() + decay[:, :, None, None] * carry[seg].float()


def rel_err(outs, refs) -> float:
    return max(((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()
               for a, b in zip(outs, refs))


def problem(packed: bool) -> tuple[str, int, list[int] | None]:
    """(label, tokens, cu_seqlens): B1 L32K, or the bench's 16 packed sequences."""
    from bench.bench_ssd_scan import packed_cu
    cu = packed_cu() if packed else None
    return ("packed 16 seqs" if packed else "B1 L32K"), (cu[-1] if packed else L), cu


def sweep(only: list[str] | None = None, defaults: bool = False, packed: bool = False) -> dict:
    from triton.testing import do_bench

    from bench.bench_ssd_scan import _input_maker
    label, seqlen, cu = problem(packed)
    s = _input_maker(1, seqlen, torch.device("cuda"), cu)(0)
    x, dt, A, B, C, D, bias = (s[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias"))
    cu_t, nstates = s.get("cu_seqlens"), (1 if cu is None else len(cu) - 1)
    dy = torch.randn(x.shape, device="cuda").to(x.dtype)
    state_k = mamba_common.kernel_module("ssd_scan_chunk_state")
    bwd_state_k = mamba_common.kernel_module("ssd_scan_bwd_chunk_state")
    scan_k = mamba_common.kernel_module("ssd_scan_chunk_scan")
    bwd_k = mamba_common.kernel_module("ssd_scan_bwd_chunk_scan")

    def plan_with(over: dict) -> dict:
        with tiles(over):
            return ssd_ops._plan(x, B, Q, cu_t, nstates)

    base = plan_with({})
    geo, prec, table = base["geometry"], base["precision"], base["table"]
    n_chunks = geo["n_chunks"]
    s_in, c_decay, carry, dtcs = ssd_ops._chunk_states(x, dt, A, B, bias, None, True, base)
    g_out, g_decay, _, g_carry, _, _ = ssd_ops._state_grads(dy, dtcs, C, None, False, nstates, base)
    da_part = torch.empty(n_chunks, bwd_k.da_blocks(Q, base["cfg"]["da"]), H, Q, device="cuda")
    bwd_k.bwd_da_launch(x, dtcs, table, dy, B, C, da_part, geo, base["cfg"]["da"], prec)
    pw = torch.empty(n_chunks, G, Q, Q, dtype=x.dtype, device="cuda")    # dC's pair weights, which dB reads
    bwd_k.bwd_dbc_launch(x, dtcs, table, dy, B, s_in, c_decay, carry, pw, torch.empty_like(C), False, geo,
                         base["cfg"]["dc"], prec)

    def states(over):        # stage 1 + state passing -> (full states entering each chunk, final states)
        plan = plan_with({"chunk_state": over})
        final = torch.empty(nstates, H, P, N, device="cuda")
        return (lambda: ssd_ops._chunk_states(x, dt, A, B, bias, None, True, plan, final),
                lambda outs: (full_states(outs[0], outs[1], outs[2], plan["geometry"], False), final),
                (state_k, "chunk_state_launch"))

    def grad_states(over):   # backward stage 1 + state passing, at the candidate's segments
        geom = {k: over[k] for k in ("BLOCK_P", "programs_per_sm") if k in over}
        plan = plan_with({"chunk_state": geom, "bwd_chunk_state": over})
        return (lambda: ssd_ops._state_grads(dy, dtcs, C, None, False, nstates, plan),
                lambda outs: (full_states(outs[0], outs[1], outs[3], plan["geometry"], True),),
                (bwd_state_k, "bwd_chunk_state_launch"))

    def scan(over):
        cfg, y = dict(base["cfg"]["chunk_scan"], **over), torch.empty_like(x)
        return (lambda: scan_k.chunk_scan_launch(x, dtcs, B, C, D, table, s_in, c_decay, carry, y, geo, cfg, prec),
                lambda _: (y,), None)

    def da(over):
        cfg = dict(base["cfg"]["da"], **over)
        part = torch.zeros(n_chunks, bwd_k.da_blocks(Q, cfg), H, Q, device="cuda")   # past the diagonal: unwritten
        return (lambda: bwd_k.bwd_da_launch(x, dtcs, table, dy, B, C, part, geo, cfg, prec),
                lambda _: (part.sum(1),), None)

    def dc(over):
        cfg, dC = dict(base["cfg"]["dc"], **over), torch.empty_like(C)
        part = torch.empty_like(pw)
        return (lambda: bwd_k.bwd_dbc_launch(x, dtcs, table, dy, B, s_in, c_decay, carry, part, dC, False, geo, cfg,
                                             prec), lambda _: (dC, part), None)

    def dx(over):
        cfg = dict(base["cfg"]["dx"], **over)
        outs = (torch.empty_like(x), torch.empty(1, seqlen, H, dtype=dt.dtype, device="cuda"),
                *(torch.empty(n_chunks, H, dtype=torch.float64, device="cuda") for _ in range(3)))   # dA, dD, dbias
        return (lambda: bwd_k.bwd_dx_launch(x, dt, dtcs, A, B, C, D, bias, table, dy, s_in, c_decay, carry, g_out,
                                            g_decay, g_carry, *outs, da_part, geo, True, cfg, prec),
                lambda _: outs, None)

    def db(over):
        cfg, dB = dict(base["cfg"]["db"], **over), torch.empty_like(B)
        return (lambda: bwd_k.bwd_dbc_launch(x, dtcs, table, dy, C, g_out, g_decay, g_carry, pw, dB, True, geo,
                                             cfg, prec), lambda _: (dB,), None)

    runners = {"chunk_state": states, "bwd_chunk_state": grad_states, "chunk_scan": scan, "dx": dx, "da": da,
               "dc": dc, "db": db}
    best = {}
    for kernel, runner in runners.items():
        if only is not None and kernel not in only:
            continue
        rows, ref = [], None
        for over in [{}] + ([] if defaults else CANDIDATES[kernel]):
            fn, outputs, launch = runner(over)
            launched = []
            with recording(*launch, launched) if launch else contextlib.nullcontext():
                ret = fn()
            compiled = launched[0] if launch else ret
            outs = [o.clone() for o in outputs(ret)]
            ref = ref or outs
            err = rel_err(outs, ref)
            us = do_bench(fn, warmup=5, rep=60, return_mode="median") * 1e3
            warps = compiled.metadata.num_warps
            rows.append((us, compiled.n_regs, compiled.n_spills, compiled.metadata.shared, warps, err, over))
            del outs
        rows.sort(key=lambda r: r[0])
        print(f"\n{kernel} ({label}): default {next(r[0] for r in rows if not r[-1]):.1f} us")
        print(f"   {'us':>7s} {'regs':>4s} {'spill':>5s} {'smem KB':>7s} {'prog/SM':>7s} {'err':>8s}  tile")
        for us, regs, spills, smem, warps, err, over in rows:
            flag = "" if err <= TOL else "  MISMATCH"
            print(f"   {us:7.1f} {regs:4d} {spills:5d} {smem / 1024:7.1f} {programs_per_sm(regs, warps, smem):7d} "
                  f"{err:8.1e}  {tile_name(over)}{flag}", flush=True)
        best[kernel] = next(over for us, *_, err, over in rows if err <= TOL)
    return best


def whole_op(best: dict, packed: bool = False) -> None:
    """ssd_scan forward (with final states) and forward + backward (bench_ssd_scan's training step): default tiles
    vs the best of each kernel (the forward stage 1's segments serve the backward stage 1 too)."""
    from triton.testing import do_bench

    from bench.bench_ssd_scan import GRAD_KEYS, _input_maker, _ours, _ours_fwd_bwd, _with_grad
    label, seqlen, cu = problem(packed)
    s = _with_grad(_input_maker(1, seqlen, torch.device("cuda"), cu)(1))
    results = {}
    for name, over in (("default", {}), ("best", best)):
        with tiles(over):
            with torch.no_grad():
                y, final = (t.clone() for t in _ours(s))
                fwd = do_bench(lambda: _ours(s), warmup=10, rep=200, return_mode="median")
            grads = [g.clone() for g in _ours_fwd_bwd(s)]
            step = do_bench(lambda: _ours_fwd_bwd(s), warmup=10, rep=300, return_mode="median")
        results[name] = (fwd, step, [y, final, *grads])
    errs = [rel_err([a], [b]) for a, b in zip(results["best"][2], results["default"][2])]
    print("\nbest tiles:", {k: v for k, v in best.items() if v})
    print("errors of best vs default (y, final, " + ", ".join(f"d{k}" for k in GRAD_KEYS) + "): "
          + " ".join(f"{e:.1e}" for e in errs))
    for name, (fwd, step, _) in results.items():
        print(f"ssd_scan {label} {name:7s}: fwd {fwd:.3f} ms, fwd+bwd {step:.3f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registers", action="store_true", help="AOT register report (no GPU)")
    parser.add_argument("--only", nargs="+", metavar="KERNEL",
                        help=f"sweep these kernels alone (no whole-op comparison), of {', '.join(CANDIDATES)}; "
                             "others are named and skipped, so one command serves trees with other kernels")
    parser.add_argument("--defaults", action="store_true", help="with --only: time the default tiles alone")
    parser.add_argument("--packed", action="store_true",
                        help="the bench's 16 packed sequences (the kernels' packed variants) instead of B1 L32K")
    args = parser.parse_args()
    if args.registers:
        registers(args.only)
    elif args.only:
        unknown = [k for k in args.only if k not in CANDIDATES]
        if unknown:
            print(f"skipped, not kernels of this tree: {', '.join(unknown)} (it has {', '.join(CANDIDATES)})")
        sweep([k for k in args.only if k in CANDIDATES], args.defaults, args.packed)
    else:
        whole_op(sweep(packed=args.packed), args.packed)


if __name__ == "__main__":
    main()
