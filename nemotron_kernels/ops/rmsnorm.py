"""Public op `rmsnorm`: plain PyTorch on purpose (one elementwise+reduction, which torch.compile fuses);
no hand-written kernel is planned."""
from ..reference.rmsnorm import rmsnorm_ref as rmsnorm  # noqa: F401


def backend_report(device_type: str) -> str:
    return "reference: plain PyTorch by design (torch.compile fuses it)"
