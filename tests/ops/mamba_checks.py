"""Test helpers shared by the Mamba-2 kernel tests (gated_rmsnorm, causal_conv1d, ssd_state_update, ssd_scan).

The error rule of DESIGN.md: err(kernel) <= k * err(torch in the kernel's dtype) + floor, errors measured as the
max absolute difference to the float64 reference on the same inputs, k = 2 forward and 3 backward, and the
floor one unit in the last place of the kernel dtype at the reference's largest magnitude."""
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64
FWD, BWD = 2.0, 3.0


def assert_error_rule(name: str, kernel: torch.Tensor, ref64: torch.Tensor, ref_low: torch.Tensor, k: float,
                      eps_dtype: torch.dtype | None = None):
    """kernel and ref_low: outputs in the low precision; ref64: the float64 reference. The floor is one ulp of
    `eps_dtype` (default: kernel's dtype) at max |ref64|."""
    assert kernel.shape == ref64.shape, f"{name}: shape {tuple(kernel.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(kernel).all(), f"{name}: non-finite values"
    err = (kernel.to(F64) - ref64).abs().max().item() if kernel.numel() else 0.0
    base = (ref_low.to(F64) - ref64).abs().max().item() if kernel.numel() else 0.0
    scale = ref64.abs().max().item() if kernel.numel() else 0.0
    floor = torch.finfo(eps_dtype or kernel.dtype).eps * scale
    assert err <= k * base + floor, (f"{name}: kernel err {err:.3e} > {k} x torch-{kernel.dtype} err {base:.3e} "
                                     f"+ floor {floor:.3e} (max |ref| {scale:.3e})")


def assert_state_rule(name: str, kernel: torch.Tensor, ref64: torch.Tensor, ref_low: torch.Tensor,
                      input_dtype: torch.dtype, k: float):
    """For fp32 states computed from `input_dtype` inputs. The reference keeps them in fp32 from the upcast inputs,
    while a tensor-core kernel multiplies operands in the input dtype: its baseline is the larger of the
    same-dtype reference's error and the error of the fp64 state expressed in the input dtype."""
    assert kernel.dtype == torch.float32, f"{name}: states are float32, got {kernel.dtype}"
    rounded = ref64.to(input_dtype)
    base_low = (ref_low.to(F64) - ref64).abs().max().item() if ref64.numel() else 0.0
    base_round = (rounded.to(F64) - ref64).abs().max().item() if ref64.numel() else 0.0
    ref_like = ref_low if base_low >= base_round else rounded
    assert_error_rule(name, kernel, ref64, ref_like, k, eps_dtype=input_dtype)


@pytest.fixture
def interpret(monkeypatch):
    """Run the Triton kernels in Triton's CPU interpreter for this test (ops reload their kernel modules)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


# Every Mamba-2 kernel module; the AOT tests of all files share one compile of all of them (child processes).
AOT_MODULES = ("gated_rmsnorm_fwd", "gated_rmsnorm_bwd", "causal_conv1d_fwd", "causal_conv1d_bwd",
               "causal_conv1d_update", "ssd_state_update", "ssd_scan_chunk_state", "ssd_scan_state_passing",
               "ssd_scan_chunk_scan")


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
