"""What the Gluon probes (probe_attn_bwd_gluon.py, probe_ssd_*_gluon.py) share:
their ahead-of-time build for the H200 (sm_90a) on a machine without a GPU, what to read from it, and the error
check and timing rows of their GPU runs:
    ck = compile_sm90a(kernel, types, constexprs, aligned=(...), num_warps=4, maxnreg=168)
    report(ck, "attn")      # registers, setmaxnreg, shared memory, wgmma / TMA counts, ptxas, SASS, uninit reads
Run the AOT build from the repository root with the GPU machine's Triton (`.venv-aot`, Triton 3.6): its compile
is the one that matters. PROBE_DUMP=dir keeps the ttgir, llir and PTX."""
import contextlib
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton

from nemotron_kernels.triton.common import aot_compile_gluon, live_in_registers


@contextlib.contextmanager
def gluon_off():
    """NK_GLUON=0 inside (gluon_platform reads it per call): the ops run our Triton kernels, the probes' baseline."""
    before = os.environ.get("NK_GLUON")
    os.environ["NK_GLUON"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["NK_GLUON"]
        else:
            os.environ["NK_GLUON"] = before


compile_sm90a = aot_compile_gluon      # the library's AOT build of a Gluon kernel (sm_90a, no GPU)


def report(ck, dump_name: str) -> list[int]:
    """Print what the compile shows: the launch register cap, the setmaxnreg targets, the partitions' requested
    registers, the PTX counts of wgmma / TMA / mbarrier / bar.sync, ptxas' registers and spills, the SASS's highest
    register, the registers read before written on some path (common.live_in_registers); with PROBE_DUMP=dir,
    write dir/<dump_name>.{ttgir,llir,ptx}. -> those registers."""
    ptx = ck.asm["ptx"]
    print(f"  shared memory {ck.metadata.shared} B, {ck.metadata.num_warps} warps (triton {triton.__version__})")
    m = re.search(r"\.maxnreg\s+(\d+)", ptx)
    print(f"  .maxnreg: {m.group(1) if m else 'none'}")
    setmax = re.findall(r"setmaxnreg\.(inc|dec)\.sync\.aligned\.u32\s+(\d+)", ptx)
    print(f"  setmaxnreg in PTX: {'yes' if setmax else 'no'} {sorted(set(setmax))}")
    ttgir = ck.asm.get("ttgir", "")
    for key in ("requestedRegisters", "actualRegisters", "partitionNumWarps", "warpGroupStartIds"):
        mm = re.search(key + r"\s*=\s*array<i32:([^>]*)>", ttgir)
        if mm:
            print(f"  ttgir {key}: [{mm.group(1).strip()}]")

    def count(pattern):
        return len(re.findall(pattern, ptx))

    print(f"  wgmma.mma_async: {count(r'wgmma[.]mma_async')}, cp.async.bulk.tensor: "
          f"{count(r'cp[.]async[.]bulk[.]tensor')}, mbarrier.arrive: {count(r'mbarrier[.]arrive')}, "
          f"bar.sync / barrier.sync: {count(r'(?:bar|barrier)[.]sync')}")
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        path, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(path, "w") as f:
            f.write(ptx)
        res = subprocess.run([os.path.join(bindir, "ptxas"), "-v", "--gpu-name", "sm_90a", path, "-o", cubin],
                             capture_output=True, text=True)
        for line in (res.stdout + res.stderr).splitlines():
            if "registers" in line or "spill" in line or "error" in line.lower() or "warning" in line.lower():
                print("  ptxas:", line.strip())
        sass = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", cubin], capture_output=True, text=True)
        regs = [int(r) for r in re.findall(r"\bR(\d+)\b", sass.stdout)]
        if regs:                                                                  # what the partitions really touch
            print(f"  SASS: highest register R{max(regs)}, HGMMA {sass.stdout.count('HGMMA')} (16-bit wgmma), "
                  f"QGMMA {sass.stdout.count('QGMMA')} (8-bit), SHFL {sass.stdout.count('SHFL')}")
    uninit = live_in_registers(ck.asm["cubin"])
    print(f"  registers read before written on some path: {', '.join(f'R{r}' for r in uninit) or 'none'}"
          + ("  <- garbage if that path runs (common.live_in_registers)" if uninit else ""))
    out = os.environ.get("PROBE_DUMP")
    if out:
        os.makedirs(out, exist_ok=True)
        for key in ("ttgir", "llir", "ptx"):
            with open(os.path.join(out, f"{dump_name}.{key}"), "w") as f:
                f.write(ck.asm[key])
    return uninit


def rel_err(a, b) -> float:
    """max |a - b| / max |b| over the whole tensors (0 when both are all zero)."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-20)).item()


def check(label: str, errs: dict, tol: float, against: str) -> None:
    """Print a variant's relative max errors ({name: rel_err}) against the reference; any above tol (or NaN):
    WRONG, and exit 1 before anything is timed."""
    text = ", ".join(f"{name} {e:.1e}" for name, e in errs.items())
    if not all(e <= tol for e in errs.values()):
        print(f"  {label}: WRONG, differs from {against} (relative max: {text})", flush=True)
        sys.exit(1)
    print(f"  {label}: matches {against} (relative max: {text})", flush=True)


def time_us(label: str, fn) -> float:
    """One timing row: fn's time by triton.testing.do_bench (warmup 10, rep 100), printed in us; -> ms."""
    ms = triton.testing.do_bench(fn, warmup=10, rep=100)
    print(f"  {label:52s} {ms * 1e3:8.1f} us", flush=True)
    return ms


def worst(name: str, a, ref, tol: float, chunk: int = 128) -> None:
    """Where a differs most from ref (index into ref's shape; for [B, L, ...] tensors also the chunk and row of
    `chunk` rows), and its NaN count: printed when the error passes tol, before check() exits on a WRONG, so a
    first GPU run can be debugged from its log."""
    if rel_err(a, ref) <= tol:
        return
    diff = (a.double() - ref.double()).abs().nan_to_num(float("inf"))
    idx = [int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)]
    where = f" (chunk {idx[1] // chunk}, row {idx[1] % chunk})" if a.dim() >= 3 else ""
    print(f"    {name}: worst at {idx}{where}: {a[tuple(idx)].item():.4g} vs {ref[tuple(idx)].item():.4g}, "
          f"{int(a.isnan().sum())} NaN of {a.numel()}", flush=True)


def report_all(variants, layout: str) -> None:
    """--aot: report() each (name, CompiledKernel) of a module's aot_compile_all(); layout names its partitions."""
    for name, ck in variants:
        print(f"compiled {name} for sm_90a: {layout}", flush=True)
        report(ck, name.replace(" ", "_").replace("=", ""))
