"""Public op `ssd_state_update`: no kernel yet (issue #3), so the reference runs on every device."""
from ..reference.ssd_state_update import ssd_state_update_ref as ssd_state_update  # noqa: F401


def backend_report(device_type: str) -> str:
    return "reference: no kernel yet (issue #3)"
