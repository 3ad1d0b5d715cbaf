"""The router weight's exact bf16 x 3 split (ops/moe_router.split_bf16x3) in one launch: on the GPU the torch
expressions are eight small kernels (casts, subtractions, a cat), about 12 µs of a 110 µs router at T = 16384.
Each program splits BLOCK elements of the fp32 weight [E * Hd] into lo, mid, hi rows of out [3E, Hd] bf16.
Casts round to nearest even, as torch's, so the pieces are bitwise torch's."""
import torch
import triton
import triton.language as tl

from .common import cdiv, interpreting

INTERPRETED = interpreting()
LOAD_TOKEN = object()
BLOCK = 1024


@triton.jit
def _split_bf16x3_kernel(w_ptr, out_ptr, n, BLOCK: tl.constexpr):     # w [n] fp32; out [3, n] bf16 (lo, mid, hi)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    w = tl.load(w_ptr + offs, mask=ok, other=0.0)
    hi = w.to(tl.bfloat16)
    rest = w - hi.to(tl.float32)                                        # exact in fp32
    mid = rest.to(tl.bfloat16)
    lo = (rest - mid.to(tl.float32)).to(tl.bfloat16)                    # <= 8 significant bits left: exact
    tl.store(out_ptr + offs, lo, mask=ok)
    tl.store(out_ptr + n + offs, mid, mask=ok)
    tl.store(out_ptr + 2 * n + offs, hi, mask=ok)


def split_bf16x3(weight: torch.Tensor) -> torch.Tensor:
    """weight [E, Hd] fp32 contiguous -> [3E, Hd] bf16 (lo; mid; hi)."""
    E, hidden = weight.shape
    out = torch.empty(3 * E, hidden, dtype=torch.bfloat16, device=weight.device)
    n = weight.numel()
    if n:
        _split_bf16x3_kernel[(cdiv(n, BLOCK),)](weight, out, n, BLOCK=BLOCK)
    return out


def aot_compile_all():
    """(name, CompiledKernel) of the split for sm_90a (CI compiles it without a GPU)."""
    from .mamba_common import aot_compile
    yield "split_bf16x3", aot_compile(_split_bf16x3_kernel, {"w_ptr": "*fp32", "out_ptr": "*bf16", "n": "i32"},
                                      {"BLOCK": BLOCK})
