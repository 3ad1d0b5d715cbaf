"""Test helpers shared by the Mamba-2 kernel tests (rmsnorm, gated_rmsnorm, causal_conv1d, ssd_state_update, ssd_scan).

The error rule of DESIGN.md (assert_error_rule, assert_state_rule) lives in nemotron_kernels.testing, shared with
nemotron_kernels.selfcheck; it is re-exported here."""
import functools
import os
import subprocess
import sys
from pathlib import Path

import torch

from nemotron_kernels.testing import assert_error_rule, assert_state_rule  # noqa: F401  (re-exported)

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64
FWD, BWD = 2.0, 3.0



# Every Mamba-2 kernel module (and the router's weight split, the MoE's relu² gradient); the AOT tests of all files
# share one compile of all of them (child processes).
AOT_MODULES = ("rmsnorm", "gated_rmsnorm_fwd", "gated_rmsnorm_bwd", "causal_conv1d_fwd", "causal_conv1d_bwd",
               "causal_conv1d_update", "ssd_state_update", "ssd_scan_chunk_state", "ssd_scan_state_passing",
               "ssd_scan_chunk_cumsum", "ssd_scan_chunk_scan", "ssd_scan_bwd_chunk_state", "ssd_scan_bwd_chunk_scan",
               "moe_router_split", "relu2_grad")


@functools.lru_cache(maxsize=1)
def _aot_all() -> tuple[int, str]:
    """Compile in up to 4 child processes at once (the cores of a CI machine), modules dealt round-robin."""
    present = [m for m in AOT_MODULES if (ROOT / "nemotron_kernels" / "triton" / f"{m}.py").exists()]
    workers = max(1, min(4, os.cpu_count() or 1, len(present)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    children = []
    for w in range(workers):
        code = ("import importlib\n"
                f"for mod in {present[w::workers]!r}:\n"
                "    m = importlib.import_module('nemotron_kernels.triton.' + mod)\n"
                "    for name, compiled in m.aot_compile_all():\n"
                "        wgmma = '| wgmma' if 'wgmma' in compiled.asm['ptx'] else ''\n"
                "        print('AOT', mod, '|', name, wgmma, flush=True)\n")
        children.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True))
    rc, out = 0, ""
    for child in children:
        stdout, stderr = child.communicate(timeout=900)
        rc = rc or child.returncode
        out += stdout + (stderr[-6000:] if child.returncode else "")
    return rc, out


def aot_lines(module: str) -> list[str]:
    """Compile every kernel configuration of the Mamba-2 kernel modules for sm_90a in a fresh process (compiled
    mode: TRITON_INTERPRET unset; shared by all test files of a session); returns `module`'s lines. A compile
    error fails the test with the child's output."""
    rc, out = _aot_all()
    assert rc == 0, out[-8000:]
    return [line for line in out.splitlines() if line.startswith(f"AOT {module} |")]
