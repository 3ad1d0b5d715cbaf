"""The squared-ReLU derivative through its output (ops/grouped_gemm.relu2_grad), one elementwise pass:
    d pre = dout * 2 sqrt(out),   out = relu(pre)^2   (so the forward keeps out, never pre)
fp32 math with an IEEE square root, rounded once to dout's dtype: bitwise reference/grouped_gemm.relu2_grad_ref.
Why a pass and not the NN GEMM's epilogue: fused there (h as CUTLASS's source operand), the GEMM took 2377 µs at
T = 16384; the plain GEMM and this pass, 2018-2053 µs (bench/NOTES.md, session 19). Offsets are int64 (M * I
passes 2^31 at 1.2M rows)."""
import torch
import triton
import triton.language as tl

from .common import cdiv, interpreting

INTERPRETED = interpreting()
LOAD_TOKEN = object()
BLOCK = 4096
NUM_WARPS = 8


@triton.jit
def _relu2_grad_kernel(dout_ptr, out_ptr, dpre_ptr, n, BLOCK: tl.constexpr):   # dout, out, dpre [n], contiguous
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    g = tl.load(dout_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    h = tl.load(out_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(dpre_ptr + offs, (g * tl.sqrt_rn(h) * 2.0).to(dpre_ptr.dtype.element_ty), mask=ok)


def relu2_grad_launch(dout: torch.Tensor, out: torch.Tensor, dpre: torch.Tensor) -> None:
    """dout, out, dpre: one shape and dtype, contiguous."""
    n = dout.numel()
    if n:
        _relu2_grad_kernel[(cdiv(n, BLOCK),)](dout, out, dpre, n, BLOCK=BLOCK, num_warps=NUM_WARPS)


def aot_compile_all():
    """(name, CompiledKernel) for sm_90a (CI compiles them without a GPU)."""
    from .mamba_common import aot_compile
    for dtype in ("bf16", "fp16", "fp32"):
        sig = {"dout_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "dpre_ptr": f"*{dtype}", "n": "i32"}
        yield f"relu2_grad {dtype}", aot_compile(_relu2_grad_kernel, sig, {"BLOCK": BLOCK}, num_warps=NUM_WARPS)
