"""Shared pieces of the GQA attention / decode Triton kernels: dispatch decisions, head packing and the
ahead-of-time (sm_90a) compile helper the CI test uses; the mode / module plumbing is triton/common.py's.

Head packing: the Hq // Hkv query heads that share a kv head are packed into the rows of one tile, so a program
loads each K/V tile once for the whole group. Row m of a tile holds position `m // PACK` (of the tile's
positions) and head `m % PACK` (of the tile's head chunk); a tile covers BLOCK_M // PACK positions.
"""
import torch

from . import common
# the ops' and kernel modules' entry points
from .common import aot_compile, interpreting, kernel_module, triton_status  # noqa: F401

LOG2E = 1.4426950408889634   # exp(x) = exp2(x * LOG2E): kernels prescale the softmax scale by it
LN2 = 0.6931471805599453


def use_triton(t: torch.Tensor, fp8: bool = False) -> bool:
    """Whether a public attention op runs its Triton kernel for inputs like `t`: CUDA fp16/bf16, or CPU fp16/fp32
    under TRITON_INTERPRET=1 (the interpreter mis-computes bf16 tl.dot; fp32 runs exact "ieee" dots there, which
    on a GPU would be slow FMA loops, so CUDA fp32 takes the reference). fp8: also e4m3 (CUDA and interpreter)."""
    if not triton_status()[0]:
        return False
    allowed = (torch.float8_e4m3fn,) if fp8 else ()
    if t.device.type == "cuda":
        return t.dtype in (torch.float16, torch.bfloat16) + allowed
    if t.device.type == "cpu" and interpreting():
        return t.dtype in (torch.float16, torch.float32) + allowed
    return False


def backend_report(device_type: str, what: str) -> str:
    """The `backend_report` line of an attention op for tensors on `device_type`."""
    ok, why = triton_status()
    if device_type == "cuda":
        return f"triton: {what} ({why}); fp32 and float64 -> reference" if ok else f"reference: {why}"
    if device_type == "cpu" and ok and interpreting():
        return ("triton: Triton's CPU interpreter (TRITON_INTERPRET=1) for fp16/fp32 (and fp8 e4m3) CPU tensors; "
                "others -> reference")
    return f"reference: no Triton kernels on {device_type} (TRITON_INTERPRET=1 interprets them for fp16/fp32)"


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (132 on the H200); 4 for CPU tensors (interpreter)."""
    return common.sm_count(device, cpu=4)


def pack_heads(group: int, block_m: int) -> tuple[int, int]:
    """(PACK = query heads per tile, number of head chunks per kv head) for a group of `group` query heads."""
    pack = min(group, block_m)
    return pack, -(-group // pack)


def dot_precision(dtype: torch.dtype):
    """`input_precision` for tl.dot: exact fp32 ("ieee") for fp32 inputs, the default (None) for 16-bit ones."""
    return "ieee" if dtype == torch.float32 else None


def triton_dtype_name(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
            torch.float8_e4m3fn: "fp8e4nv", torch.int32: "i32", torch.int64: "i64"}[dtype]


def descale_arg(descale, rows: int, hkv: int, device):
    """A descale (None or an fp32-able tensor of 1 or [rows or 1, Hkv] elements; rows: sequences, or the decode
    batch) -> (fp32 tensor | None, stride over rows, stride over kv heads); broadcast dimensions get stride 0."""
    if descale is None:
        return None, 0, 0
    assert descale.device == device, f"descale on {descale.device}, q on {device}"
    t = descale.to(torch.float32)
    if t.numel() == 1:
        return t.reshape(1), 0, 0
    assert t.dim() == 2 and t.shape[0] in (1, rows) and t.shape[1] == hkv, \
        f"descale must have 1 or [{rows} or 1, Hkv={hkv}] elements, got {tuple(t.shape)}"
    return t, (t.stride(0) if t.shape[0] > 1 else 0), t.stride(1)
