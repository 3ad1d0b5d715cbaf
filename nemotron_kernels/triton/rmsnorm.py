"""RMSNorm forward and backward (Triton): out = round(x * rstd) * w, rstd = rsqrt(mean(x^2) + eps), fp32 inside.

The rounding points are the reference's (reference/rmsnorm.py): the normalised row is rounded to x's dtype, then
multiplied by the weight in x's dtype. Forward: one program per ROWS rows of whole [D] rows; it also writes
rstd [n_rows] fp32 for the backward. Backward, with n = x * rstd and g = dout * w:
    dx = rstd * (g - n * mean(g * n)),   dw = sum_rows dout * round(n)
one program per SM walks row blocks pid, pid + n_programs, ... (loading the next block while it computes one) and
keeps its dw partial in registers; the launcher sums the [n_programs, D] fp32 partials. Row offsets are int64.
With a residual r (the previous mixer's output), the forward first forms h = round(x + r) (torch's add: the fp32
sum rounded to x's dtype), stores h and norms it: the model's residual adds ride on its norms (one kernel, not two).

Why a kernel at all: in plain torch the forward is ~6 elementwise/reduction kernels and the backward ~10; the model
runs a norm before every one of its 52 mixers, so un-fused norms cost hundreds of launches per decode step and per
training step."""
import torch
import triton
import triton.language as tl

from .common import cdiv, next_power_of_2
from .mamba_common import interpreting

INTERPRETED = interpreting()
LOAD_TOKEN = object()


@triton.jit
def _rmsnorm_fwd_kernel(
    x_ptr, r_ptr, w_ptr, out_ptr, h_ptr, rstd_ptr,  # x, r, out, h [n_rows, D] (last stride 1); w [D]; rstd [n_rows]
    n_rows, dim, stride_x_row, stride_r_row, stride_out_row, stride_h_row,
    eps,
    BLOCK_D: tl.constexpr,                    # next power of two >= D
    ROWS: tl.constexpr,                       # rows per program
    HAS_RESIDUAL: tl.constexpr,               # h = x + r (rounded to x's dtype, as torch's add) is normed and stored
):
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)   # [ROWS]
    cols = tl.arange(0, BLOCK_D)                                          # [BLOCK_D]
    col_ok = cols < dim
    row_ok = rows < n_rows
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + rows[:, None] * stride_r_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        h = (x + r).to(out_ptr.dtype.element_ty)
        tl.store(h_ptr + rows[:, None] * stride_h_row + cols[None, :], h, mask=mask)
        x = h.to(tl.float32)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(out_ptr.dtype.element_ty).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / dim + eps)             # [ROWS]
    normed = (x * rstd[:, None]).to(out_ptr.dtype.element_ty).to(tl.float32)
    out = normed * w[None, :]
    tl.store(out_ptr + rows[:, None] * stride_out_row + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _rmsnorm_bwd_kernel(
    dout_ptr, x_ptr, w_ptr, rstd_ptr,         # dout, x [n_rows, D] (last stride 1); w [D]; rstd [n_rows]
    dx_ptr, dw_partial_ptr,                   # dx [n_rows, D] contiguous; dw_partial [n_programs, D] fp32
    n_rows, dim, stride_dout_row, stride_x_row,
    BLOCK_D: tl.constexpr,
    ROWS: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(dx_ptr.dtype.element_ty).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    rows = (pid * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    mask = (rows < n_rows)[:, None] & col_ok[None, :]
    x_next = tl.load(x_ptr + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0)
    dout_next = tl.load(dout_ptr + rows[:, None] * stride_dout_row + cols[None, :], mask=mask, other=0.0)
    rstd_next = tl.load(rstd_ptr + rows, mask=rows < n_rows, other=0.0)
    for block in range(pid, tl.cdiv(n_rows, ROWS), n_programs):
        rows = (block * ROWS + tl.arange(0, ROWS)).to(tl.int64)
        mask = (rows < n_rows)[:, None] & col_ok[None, :]
        x = x_next.to(tl.float32)
        dout = dout_next.to(tl.float32)
        rstd = rstd_next
        # the next block's loads fly while this one is computed (one program per SM: nothing else hides them)
        nxt = ((block + n_programs) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
        nxt_mask = (nxt < n_rows)[:, None] & col_ok[None, :]
        x_next = tl.load(x_ptr + nxt[:, None] * stride_x_row + cols[None, :], mask=nxt_mask, other=0.0)
        dout_next = tl.load(dout_ptr + nxt[:, None] * stride_dout_row + cols[None, :], mask=nxt_mask, other=0.0)
        rstd_next = tl.load(rstd_ptr + nxt, mask=nxt < n_rows, other=0.0)
        n = x * rstd[:, None]
        dw_acc += tl.sum(dout * n.to(dx_ptr.dtype.element_ty).to(tl.float32), axis=0)
        g = dout * w[None, :]
        dx = rstd[:, None] * (g - n * (tl.sum(g * n, axis=1) / dim)[:, None])
        tl.store(dx_ptr + rows[:, None] * dim + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_partial_ptr + pid * dim + cols, dw_acc, mask=col_ok)


def config(dim: int) -> dict:
    """~4K elements per program (16-byte loads on every thread); whole rows."""
    block_d = next_power_of_2(dim)
    rows = max(1, min(16, 4096 // block_d))
    return {"BLOCK_D": block_d, "ROWS": rows, "num_warps": 8 if rows * block_d >= 4096 else 4}


def bwd_config(dim: int) -> dict:
    """The forward's tile with 8 elements per thread (up to 16 warps): the backward runs one program per SM, so
    its warps and the prefetched block are all the memory parallelism it has (8 warps and no prefetch: 41% of
    copy bandwidth on the H200, bench/NOTES.md 2026-11-29 session 4)."""
    cfg = config(dim)
    return {**cfg, "num_warps": max(1, min(16, cfg["ROWS"] * cfg["BLOCK_D"] // 256))}


def rmsnorm_fwd_launch(x2, weight, out2, rstd, eps: float, r2=None, h2=None) -> None:
    """x2, out2 [n_rows, D] with unit last stride; weight [D] contiguous; writes out2 and rstd [n_rows] fp32. With
    r2, h2 (like x2): h2 = x2 + r2 is written and normed instead of x2 (the residual add fused)."""
    n_rows, dim = x2.shape
    if n_rows == 0:
        return
    has_residual = r2 is not None
    r2, h2 = (r2, h2) if has_residual else (x2, out2)
    assert all(t.stride(1) == 1 for t in (x2, out2, r2, h2)), "rmsnorm: x, residual, out need a unit last stride"
    assert weight.is_contiguous() and weight.shape == (dim,), "rmsnorm: weight must be contiguous [D]"
    assert dim <= 65536, "rmsnorm: D above 65536 is not supported by the kernel"
    cfg = config(dim)
    _rmsnorm_fwd_kernel[(cdiv(n_rows, cfg["ROWS"]),)](
        x2, r2, weight, out2, h2, rstd, n_rows, dim, x2.stride(0), r2.stride(0), out2.stride(0), h2.stride(0), eps,
        BLOCK_D=cfg["BLOCK_D"], ROWS=cfg["ROWS"], HAS_RESIDUAL=has_residual, num_warps=cfg["num_warps"])


def rmsnorm_bwd_launch(dout2, x2, weight, rstd, dx2, sm_count: int):
    """dout2, x2 [n_rows, D] (unit last stride), dx2 [n_rows, D] contiguous -> dw partials [n_programs, D] fp32."""
    n_rows, dim = x2.shape
    cfg = bwd_config(dim)
    n_programs = max(1, min(sm_count, cdiv(n_rows, cfg["ROWS"])))
    if n_rows == 0:
        return torch.zeros((1, dim), dtype=torch.float32, device=x2.device)
    # no memset: there are at most as many programs as row blocks, and each writes its whole row
    dw_partial = torch.empty((n_programs, dim), dtype=torch.float32, device=x2.device)
    assert dout2.stride(1) == 1 and x2.stride(1) == 1 and dx2.is_contiguous(), "rmsnorm: unit last strides"
    _rmsnorm_bwd_kernel[(n_programs,)](
        dout2, x2, weight, rstd, dx2, dw_partial, n_rows, dim, dout2.stride(0), x2.stride(0),
        BLOCK_D=cfg["BLOCK_D"], ROWS=cfg["ROWS"], num_warps=cfg["num_warps"], num_stages=1)
    return dw_partial


def aot_compile_all():
    """(name, CompiledKernel) for NemotronH's hidden size 2688 (and 1024, the 1b training preset), bf16, sm_90a."""
    from .mamba_common import aot_compile
    for dtype, dim in (("bf16", 2688), ("bf16", 1024), ("fp32", 2688)):
        cfg = config(dim)
        consts = {"BLOCK_D": cfg["BLOCK_D"], "ROWS": cfg["ROWS"]}
        fwd = {"x_ptr": f"*{dtype}", "r_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "out_ptr": f"*{dtype}",
               "h_ptr": f"*{dtype}", "rstd_ptr": "*fp32", "n_rows": "i32", "dim": "i32", "stride_x_row": "i64",
               "stride_r_row": "i64", "stride_out_row": "i64", "stride_h_row": "i64", "eps": "fp32"}
        for residual in (False, True):
            yield (f"rmsnorm_fwd {dtype} D={dim} residual={residual}",
                   aot_compile(_rmsnorm_fwd_kernel, fwd, {**consts, "HAS_RESIDUAL": residual},
                               num_warps=cfg["num_warps"], num_stages=1))
        bwd = {"dout_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "rstd_ptr": "*fp32",
               "dx_ptr": f"*{dtype}", "dw_partial_ptr": "*fp32", "n_rows": "i32", "dim": "i32",
               "stride_dout_row": "i64", "stride_x_row": "i64"}
        yield (f"rmsnorm_bwd {dtype} D={dim}",
               aot_compile(_rmsnorm_bwd_kernel, bwd, consts, num_warps=bwd_config(dim)["num_warps"], num_stages=1))
