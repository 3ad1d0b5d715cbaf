"""Shared test setup: `cuda`-marked tests skip with a reason when no GPU is visible; `slow` tests run only with
SLOW=1. The GPU is queried here, at collection time, never at package import time."""
import os

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
