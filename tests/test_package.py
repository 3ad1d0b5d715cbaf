"""The package surface: every public op is exported, backends() explains each one, ops_for() is strict."""
import pytest
import torch

import nemotron_kernels as nk
from nemotron_kernels import reference


def test_every_op_exported_with_a_reference():
    for op in nk.OPS:
        assert callable(getattr(nk, op)), op
        assert callable(getattr(reference, f"{op}_ref")), op


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_backends_report_every_op_with_a_reason(device):
    report = nk.backends(device)
    assert set(report) == set(nk.OPS)
    for op, how in report.items():
        impl, _, why = how.partition(": ")
        assert impl in {"cuda", "triton", "cpu", "reference"}, (op, how)
        assert why, f"{op}: backends() must say why ({how!r})"
    if device == "cuda" and not torch.cuda.is_available():
        assert not any(how.startswith("cuda:") for how in report.values())


def test_ops_for():
    refs = nk.ops_for("reference")
    assert refs.moe_router is reference.moe_router_ref
    assert nk.ops_for("auto").moe_router is nk.moe_router
    with pytest.raises(ValueError, match="backend must be one of"):
        nk.ops_for("fast")


def test_extension_loaded_and_build_note():
    from nemotron_kernels import _ext
    assert _ext._C is not None, _ext.LOAD_ERROR
    assert "built" in _ext.BUILD_NOTE.lower() or "cuda" in _ext.BUILD_NOTE.lower()
