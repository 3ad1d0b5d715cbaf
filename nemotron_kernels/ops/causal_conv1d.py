"""Public ops `causal_conv1d`, `causal_conv1d_update`: no kernel yet (issue #3), the reference runs everywhere."""
from ..reference.causal_conv1d import causal_conv1d_ref as causal_conv1d  # noqa: F401
from ..reference.causal_conv1d import causal_conv1d_update_ref as causal_conv1d_update  # noqa: F401


def backend_report(device_type: str) -> str:
    return "reference: no kernel yet (issue #3)"
