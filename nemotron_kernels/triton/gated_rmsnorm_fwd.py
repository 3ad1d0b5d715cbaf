"""Gated group RMSNorm forward (Triton): out = rmsnorm_per_group(y * silu(z)) * weight, fp32 inside.

One program normalises ROWS rows of one channel group: a [ROWS, BLOCK_G] tile of y and z, the group's
mean square reduced in registers, one store. Row offsets are int64 (safe past 2^31 elements)."""
import triton
import triton.language as tl

from .common import cdiv, next_power_of_2
from .mamba_common import interpreting

INTERPRETED = interpreting()
LOAD_TOKEN = object()


@triton.jit
def _gated_rmsnorm_fwd_kernel(
    y_ptr, z_ptr, w_ptr, out_ptr,             # y, z, out [n_rows, D] (last stride 1); w [D]
    n_rows, stride_y_row, stride_z_row, stride_out_row,
    eps,
    GROUP: tl.constexpr,                      # channels per norm group
    BLOCK_G: tl.constexpr,                    # next power of two >= GROUP
    ROWS: tl.constexpr,                       # rows per program
):
    pid_row = tl.program_id(0)
    group = tl.program_id(1)
    rows = (pid_row * ROWS + tl.arange(0, ROWS)).to(tl.int64)         # [ROWS]
    offs_g = tl.arange(0, BLOCK_G)                                      # [BLOCK_G]
    cols = group * GROUP + offs_g
    col_ok = offs_g < GROUP
    mask = (rows < n_rows)[:, None] & col_ok[None, :]

    y = tl.load(y_ptr + rows[:, None] * stride_y_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + rows[:, None] * stride_z_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)

    gated = y * (z * tl.sigmoid(z))                                     # [ROWS, BLOCK_G]
    rstd = 1.0 / tl.sqrt(tl.sum(gated * gated, axis=1) / GROUP + eps)   # [ROWS]
    out = gated * rstd[:, None] * w[None, :]
    tl.store(out_ptr + rows[:, None] * stride_out_row + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def fwd_config(group_size: int) -> dict:
    """Tile of one launch: ~4K elements per program (16 B vector loads on every thread)."""
    block_g = next_power_of_2(group_size)
    rows = max(1, min(16, 4096 // block_g))
    num_warps = 8 if rows * block_g >= 4096 else 4
    return {"BLOCK_G": block_g, "ROWS": rows, "num_warps": num_warps}


def gated_rmsnorm_fwd_launch(y2, z2, weight, out2, group_size: int, eps: float) -> None:
    """y2, z2, out2 [n_rows, D] with unit last stride; weight [D] contiguous; writes out2."""
    n_rows, dim = y2.shape
    if n_rows == 0:
        return
    assert y2.stride(1) == 1 and z2.stride(1) == 1 and out2.stride(1) == 1, \
        "gated_rmsnorm: y, z and out need a unit stride on the channel dim"
    assert weight.is_contiguous() and weight.shape == (dim,), "gated_rmsnorm: weight must be contiguous [D]"
    assert dim % group_size == 0, "gated_rmsnorm: D must be a multiple of group_size"
    assert group_size <= 65536, "gated_rmsnorm: group_size above 65536 is not supported by the kernel"
    cfg = fwd_config(group_size)
    grid = (cdiv(n_rows, cfg["ROWS"]), dim // group_size)
    _gated_rmsnorm_fwd_kernel[grid](
        y2, z2, weight, out2, n_rows, y2.stride(0), z2.stride(0), out2.stride(0), eps,
        GROUP=group_size, BLOCK_G=cfg["BLOCK_G"], ROWS=cfg["ROWS"], num_warps=cfg["num_warps"])


def aot_compile_all():
    """(name, CompiledKernel) for the configurations NemotronH runs (group 512; whole-row 4096), sm_90a."""
    from .mamba_common import aot_compile
    for dtype, group in (("bf16", 512), ("bf16", 4096), ("fp32", 512)):
        cfg = fwd_config(group)
        sig = {"y_ptr": f"*{dtype}", "z_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "out_ptr": f"*{dtype}",
               "n_rows": "i32", "stride_y_row": "i64", "stride_z_row": "i64", "stride_out_row": "i64",
               "eps": "fp32"}
        consts = {"GROUP": group, "BLOCK_G": cfg["BLOCK_G"], "ROWS": cfg["ROWS"]}
        yield (f"gated_rmsnorm_fwd {dtype} group={group}",
               aot_compile(_gated_rmsnorm_fwd_kernel, sig, consts, num_warps=cfg["num_warps"], num_stages=1))
