"""Shared test setup: `cuda`-marked tests skip with a reason when no GPU is visible; `slow` tests run only with
SLOW=1. The GPU is queried here, at collection time, never at package import time."""
import os
import subprocess
import sys

import pytest
import torch

# Triton's interpreter mode is process-wide in practice: triton.language's own @jit builtins (tl.sigmoid, ...)
# are defined in the mode of Triton's first import, and an interpreted kernel cannot call compiled ones. Without
# a GPU Triton can only ever interpret, so import it in interpreter mode before any test does; tests still
# choose per test whether ops dispatch CPU tensors to Triton (TRITON_INTERPRET=1) or to the references.
if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401
    except ImportError:
        pass
    del os.environ["TRITON_INTERPRET"]


@pytest.fixture
def interpret(monkeypatch):
    """Run Triton kernels in Triton's CPU interpreter for this test (ops reload their kernel modules in that mode)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


@pytest.fixture
def assert_reads_only_written(monkeypatch):
    """check(run), run() -> {name: tensor}: runs it, then again with every floating torch.empty / torch.empty_like
    filled with NaN (for the rest of the test), and requires equal results. An op whose kernels read an element that
    no kernel wrote then returns NaNs, where fresh (zeroed) CPU memory would hide it."""
    def check(run):
        want = run()
        empty, empty_like = torch.empty, torch.empty_like

        def nan(t):
            return t.fill_(float("nan")) if t.is_floating_point() else t
        monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: nan(empty(*args, **kwargs)))
        monkeypatch.setattr(torch, "empty_like", lambda *args, **kwargs: nan(empty_like(*args, **kwargs)))
        got = run()
        for name in want:
            assert torch.equal(got[name], want[name]), f"{name}: differs when scratch memory starts as NaN"
    return check


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none visible); run scripts/device_check.sh on the H200")
    not_slow = pytest.mark.skip(reason="slow test; set SLOW=1 to run it")
    has_gpu = torch.cuda.is_available()
    for item in items:
        # get_closest_marker, not `in item.keywords`: a parametrize id like "cuda" is a keyword too
        if item.get_closest_marker("cuda") and not has_gpu:
            item.add_marker(no_gpu)
        if item.get_closest_marker("slow") and os.environ.get("SLOW") != "1":
            item.add_marker(not_slow)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """`isolated` tests run in a child pytest: on the H200's torch 2.11 a ValueError raised by our extension's
    argument checks crashes the process (bench/NOTES.md, 2026-11-29), which must fail one test, not the run."""
    if not pyfuncitem.get_closest_marker("isolated") or os.environ.get("NK_ISOLATED") == "1":
        return None
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid],
                           env={**os.environ, "NK_ISOLATED": "1"}, cwd=pyfuncitem.config.rootpath,
                           capture_output=True, text=True)
    if child.returncode != 0:
        how = f"killed by signal {-child.returncode}" if child.returncode < 0 else f"exit {child.returncode}"
        pytest.fail(f"isolated run failed ({how}):\n{child.stdout[-4000:]}\n{child.stderr[-4000:]}", pytrace=False)
    return True
