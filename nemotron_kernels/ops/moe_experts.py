"""Public op `moe_experts`: no kernel yet (issue #4), so the reference runs on every device."""
from ..reference.moe_experts import moe_experts_ref as moe_experts  # noqa: F401


def backend_report(device_type: str) -> str:
    return "reference: no kernel yet (issue #4)"
