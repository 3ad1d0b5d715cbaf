"""Public op `ssd_scan`: no kernel yet (issue #3), so the reference runs on every device."""
from ..reference.ssd_scan import ssd_scan_ref as ssd_scan  # noqa: F401


def backend_report(device_type: str) -> str:
    return "reference: no kernel yet (issue #3)"
