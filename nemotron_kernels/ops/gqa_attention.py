"""Public op `gqa_attention`: no kernel yet (issue #5), so the reference runs on every device."""
from ..reference.gqa_attention import gqa_attention_ref as gqa_attention  # noqa: F401


def backend_report(device_type: str) -> str:
    return "reference: no kernel yet (issue #5)"
