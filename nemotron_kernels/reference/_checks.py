"""Argument checks shared by the references. Every failure names the argument: TypeError for a wrong
type or dtype, ValueError for a wrong rank, shape or value. The checks may read small index tensors
(cu_seqlens, slot_idx, block_table) on the host; references are allowed to synchronise."""
from collections.abc import Sequence

import torch

INT_DTYPES = (torch.int32, torch.int64)


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """promote_types(dtype, float32) for float dtypes: float64 if any input is float64, else float32 (bf16,
    fp16, fp32 and fp8 all compute in float32). Written out because torch refuses to promote fp8."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def check_tensor(name: str, t, dims: str | None = None, rank: int | None = None) -> None:
    """`t` must be a torch.Tensor (TypeError) of `rank` dimensions (ValueError); `dims` names them, e.g. "[B, L, H]"."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if rank is not None and t.dim() != rank:
        dims_txt = f" {dims}" if dims else ""
        raise ValueError(f"{name} must be {rank}-D{dims_txt}, got shape {tuple(t.shape)}")


def check_float(name: str, t, dims: str | None = None, rank: int | None = None) -> None:
    """Like check_tensor, and the dtype must be floating point (TypeError)."""
    check_tensor(name, t, dims, rank)
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")


def check_int(name: str, t, dims: str | None = None, rank: int | None = None,
              dtypes: tuple[torch.dtype, ...] = INT_DTYPES) -> None:
    """Like check_tensor, and the dtype must be one of `dtypes` (int32/int64 by default; TypeError)."""
    check_tensor(name, t, dims, rank)
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int], dims: str) -> None:
    """`t.shape` must equal `expected` exactly; `dims` names the dimensions for the message."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {dims} = {tuple(expected)}, got {tuple(t.shape)}")


def check_optional_float(name: str, t, expected: Sequence[int], dims: str) -> None:
    """An optional float tensor (None passes) of exactly the `expected` shape."""
    if t is not None:
        check_float(name, t, dims, len(expected))
        check_shape(name, t, expected, dims)


def check_same_device(**tensors) -> None:
    """All given tensors (None skipped) on one device; the message names the first one that is not."""
    named = [(n, t) for n, t in tensors.items() if isinstance(t, torch.Tensor)]
    first_name, first = named[0]
    for n, t in named[1:]:
        if t.device != first.device:
            raise ValueError(f"{n} is on {t.device} but {first_name} is on {first.device}; put them on one device")


def check_positive_int(name: str, value, minimum: int = 1) -> None:
    """A Python int (bools rejected) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    """value % divisor == 0, e.g. the query heads over the kv heads."""
    if divisor <= 0 or value % divisor != 0:
        raise ValueError(f"{name} ({value}) must be a multiple of {divisor_name} ({divisor})")


def check_cu_seqlens_shape(cu_seqlens, batch: int, name: str = "cu_seqlens") -> int:
    """cu_seqlens [S+1] int32/int64 with S >= 1, and the batch dimension must be 1; its values are not read (no
    host sync: what kernel paths check). Returns S."""
    check_int(name, cu_seqlens, "[S+1]", 1)
    if cu_seqlens.numel() < 2:
        raise ValueError(f"{name} must hold at least 2 offsets [S+1], got {cu_seqlens.numel()}")
    if batch != 1:
        raise ValueError(f"with {name}, the batch dimension must be 1 (sequences are packed along it), got {batch}")
    return cu_seqlens.numel() - 1


def check_cu_seqlens(cu_seqlens, total: int, batch: int, name: str = "cu_seqlens") -> list[int]:
    """cu_seqlens [S+1] int32/int64: starts at 0, non-decreasing, ends at `total` (the packed length),
    and the batch dimension must be 1. Returns the offsets as Python ints."""
    check_cu_seqlens_shape(cu_seqlens, batch, name)
    offsets = [int(v) for v in cu_seqlens.tolist()]
    if offsets[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {offsets[0]}")
    if any(b < a for a, b in zip(offsets[:-1], offsets[1:])):
        raise ValueError(f"{name} must be non-decreasing, got {offsets}")
    if offsets[-1] != total:
        raise ValueError(f"{name}[-1] ({offsets[-1]}) must equal the packed length {total}")
    return offsets


def check_index(name: str, idx, length: int, upper: int, upper_name: str, unique: bool = True) -> list[int]:
    """idx [length] int32/int64 with values in [0, upper) (and distinct when `unique`). Returns them as ints."""
    check_int(name, idx, f"[{length}]", 1)
    check_shape(name, idx, (length,), "[B]")
    values = [int(v) for v in idx.tolist()]
    bad = [v for v in values if not 0 <= v < upper]
    if bad:
        raise ValueError(f"{name} values must lie in [0, {upper_name}={upper}), got {bad[:8]}")
    if unique and len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a slot (two rows would update one state), got {values}")
    return values


def check_descale(name: str, descale, batch: int, heads: int, alt_batch: int | None = None) -> None:
    """A dequantisation scale: None, a Python number, a one-element tensor, or a float tensor [batch, heads]
    (or [alt_batch, heads], e.g. one row per packed sequence)."""
    if descale is None or isinstance(descale, (int, float)) and not isinstance(descale, bool):
        return
    check_float(name, descale)
    if descale.numel() == 1:
        return
    rows = {batch} if alt_batch is None else {batch, alt_batch}
    if descale.dim() != 2 or descale.shape[0] not in rows or descale.shape[1] != heads:
        allowed = " or ".join(f"({r}, {heads})" for r in sorted(rows))
        raise ValueError(f"{name} must be a scalar or have shape [B, Hkv] = {allowed}, got {tuple(descale.shape)}")
