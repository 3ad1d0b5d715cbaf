"""Gated group RMSNorm backward (Triton), one kernel: dy, dz and per-program partial sums of dweight.

With g = y*silu(z), r = rsqrt(mean_group(g^2) + eps), xhat = g*r, out = xhat*w:
    dxhat = dout*w;  dg = r * (dxhat - xhat * mean_group(dxhat*xhat))
    dy = dg * silu(z);  dz = dg * y * sig(z) * (1 + z*(1 - sig(z)));  dw = sum_rows dout*xhat
The statistics are recomputed from y and z (nothing saved by the forward). Each program walks row blocks
pid, pid + n_programs, ... of one group and keeps its dw partial in registers; the launcher sums the
[n_programs, D] fp32 partials (a tiny reduction)."""
import triton
import triton.language as tl

from .mamba_common import interpreting

INTERPRETED = interpreting()
LOAD_TOKEN = object()


@triton.jit
def _gated_rmsnorm_bwd_kernel(
    dout_ptr, y_ptr, z_ptr, w_ptr,            # [n_rows, D] (unit last stride); w [D]
    dy_ptr, dz_ptr, dw_partial_ptr,           # dy, dz [n_rows, D] contiguous; dw_partial [n_programs, D] fp32
    n_rows, stride_dout_row, stride_y_row, stride_z_row, dim,
    eps,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    ROWS: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    group = tl.program_id(1)
    offs_g = tl.arange(0, BLOCK_G)
    cols = group * GROUP + offs_g
    col_ok = offs_g < GROUP
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_G], dtype=tl.float32)
    n_blocks = tl.cdiv(n_rows, ROWS)
    for block in range(pid, n_blocks, n_programs):
        rows = (block * ROWS + tl.arange(0, ROWS)).to(tl.int64)
        mask = (rows < n_rows)[:, None] & col_ok[None, :]
        y = tl.load(y_ptr + rows[:, None] * stride_y_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + rows[:, None] * stride_z_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + rows[:, None] * stride_dout_row + cols[None, :], mask=mask,
                       other=0.0).to(tl.float32)
        sig = tl.sigmoid(z)
        silu = z * sig
        gated = y * silu
        rstd = 1.0 / tl.sqrt(tl.sum(gated * gated, axis=1) / GROUP + eps)     # [ROWS]
        xhat = gated * rstd[:, None]
        dxhat = dout * w[None, :]
        dw_acc += tl.sum(dout * xhat, axis=0)
        mean_dx_x = tl.sum(dxhat * xhat, axis=1) / GROUP                       # [ROWS]
        dgated = rstd[:, None] * (dxhat - xhat * mean_dx_x[:, None])
        dy = dgated * silu
        dz = dgated * y * sig * (1.0 + z * (1.0 - sig))
        out_offs = rows[:, None] * dim + cols[None, :]
        tl.store(dy_ptr + out_offs, dy.to(dy_ptr.dtype.element_ty), mask=mask)
        tl.store(dz_ptr + out_offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_partial_ptr + pid.to(tl.int64) * dim + cols, dw_acc, mask=col_ok)


def bwd_config(group_size: int) -> dict:
    block_g = triton.next_power_of_2(group_size)
    rows = max(1, min(16, 4096 // block_g))
    num_warps = 8 if rows * block_g >= 4096 else 4
    return {"BLOCK_G": block_g, "ROWS": rows, "num_warps": num_warps}


def bwd_programs(n_rows: int, n_groups: int, rows_per_block: int, sm_count: int) -> int:
    """Row programs per group: ~4 programs per SM in all, never more than there are row blocks."""
    return max(1, min(triton.cdiv(n_rows, rows_per_block), (4 * sm_count) // n_groups))


def gated_rmsnorm_bwd_launch(dout2, y2, z2, weight, dy2, dz2, group_size: int, eps: float, sm_count: int):
    """dout2, y2, z2 [n_rows, D] (unit last stride); dy2, dz2 contiguous outputs; returns dw partials
    [n_programs, D] fp32 (sum over dim 0 for dweight)."""
    import torch
    n_rows, dim = y2.shape
    if n_rows == 0:
        return torch.zeros(1, dim, device=y2.device, dtype=torch.float32)
    assert dout2.stride(1) == 1 and y2.stride(1) == 1 and z2.stride(1) == 1, \
        "gated_rmsnorm backward: dout, y, z need a unit stride on the channel dim"
    assert dy2.is_contiguous() and dz2.is_contiguous(), "gated_rmsnorm backward: dy, dz must be contiguous"
    assert weight.is_contiguous() and weight.shape == (dim,), "gated_rmsnorm backward: weight must be contiguous [D]"
    cfg = bwd_config(group_size)
    n_groups = dim // group_size
    n_programs = bwd_programs(n_rows, n_groups, cfg["ROWS"], sm_count)
    dw_partial = torch.empty(n_programs, dim, device=y2.device, dtype=torch.float32)   # every program writes its row
    _gated_rmsnorm_bwd_kernel[(n_programs, n_groups)](
        dout2, y2, z2, weight, dy2, dz2, dw_partial, n_rows, dout2.stride(0), y2.stride(0), z2.stride(0), dim, eps,
        GROUP=group_size, BLOCK_G=cfg["BLOCK_G"], ROWS=cfg["ROWS"], num_warps=cfg["num_warps"])
    return dw_partial


def aot_compile_all():
    """(name, CompiledKernel) for the configurations NemotronH runs (group 512; whole-row 4096), sm_90a."""
    from .mamba_common import aot_compile
    for dtype, group in (("bf16", 512), ("bf16", 4096), ("fp32", 512)):
        cfg = bwd_config(group)
        sig = {"dout_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "z_ptr": f"*{dtype}", "w_ptr": f"*{dtype}",
               "dy_ptr": f"*{dtype}", "dz_ptr": f"*{dtype}", "dw_partial_ptr": "*fp32", "n_rows": "i32",
               "stride_dout_row": "i64", "stride_y_row": "i64", "stride_z_row": "i64", "dim": "i32",
               "eps": "fp32"}
        consts = {"GROUP": group, "BLOCK_G": cfg["BLOCK_G"], "ROWS": cfg["ROWS"]}
        yield (f"gated_rmsnorm_bwd {dtype} group={group}",
               aot_compile(_gated_rmsnorm_bwd_kernel, sig, consts, num_warps=cfg["num_warps"], num_stages=2))
