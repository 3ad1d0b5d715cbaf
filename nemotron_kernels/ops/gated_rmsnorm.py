"""Public op `gated_rmsnorm`: no kernel yet (issue #3), so the reference runs on every device."""
from ..reference.gated_rmsnorm import gated_rmsnorm_ref as gated_rmsnorm  # noqa: F401


def backend_report(device_type: str) -> str:
    return "reference: no kernel yet (issue #3)"
