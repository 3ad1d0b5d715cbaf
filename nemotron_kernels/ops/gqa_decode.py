"""Public op `gqa_decode`: no kernel yet (issue #5), so the reference runs on every device."""
from ..reference.gqa_decode import gqa_decode_ref as gqa_decode  # noqa: F401


def backend_report(device_type: str) -> str:
    return "reference: no kernel yet (issue #5)"
