"""Shared test setup: `cuda`-marked tests skip with a reason when no GPU is visible; `slow` tests run only with
SLOW=1. The GPU is queried here, at collection time, never at package import time."""
import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none visible); run scripts/device_check.sh on the H200")
    not_slow = pytest.mark.skip(reason="slow test; set SLOW=1 to run it")
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "cuda" in item.keywords and not has_gpu:
            item.add_marker(no_gpu)
        if "slow" in item.keywords and os.environ.get("SLOW") != "1":
            item.add_marker(not_slow)
