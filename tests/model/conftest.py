"""Shared setup of the model tests: the repository root on sys.path (model/ is used from a checkout), one CPU
thread (the tiny models are latency-bound; extra threads only contend), and small helpers."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(1)


@pytest.fixture
def tiny_config():
    from model.config import NemotronHConfig
    return NemotronHConfig.from_preset("tiny")


@pytest.fixture
def tiny_model_f64(tiny_config):
    from model.nemotron_h import build_model
    return build_model(tiny_config, dtype=torch.float64, backend="reference", seed=0)
