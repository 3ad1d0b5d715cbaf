"""Gated group RMSNorm backward (Triton), one kernel: dy, dz and per-program partial sums of dweight.

With g = y*silu(z), r = rsqrt(mean_group(g^2) + eps), xhat = g*r, out = xhat*w:
    dxhat = dout*w;  dg = r * (dxhat - xhat * mean_group(dxhat*xhat))
    dy = dg * silu(z);  dz = dg * y * sig(z) * (1 + z*(1 - sig(z)));  dw = sum_rows dout*xhat
The statistics are recomputed from y and z (nothing saved by the forward). A program owns a tile of GROUPS
whole groups (NemotronH: all 8 groups of a row, one contiguous 8 KB row of each input) and walks rows
pid, pid + n_programs, ...: it loads the next row while it computes the current one (three rows' loads in
flight per program), and it accumulates dout*xhat elementwise in a [GROUPS, BLOCK_G] register tile, reduced
over rows by the launcher's sum of the [n_programs, D] fp32 partials (a tiny reduction)."""
import triton
import triton.language as tl

from .common import cdiv, next_power_of_2
from .mamba_common import interpreting

INTERPRETED = interpreting()
LOAD_TOKEN = object()


@triton.jit
def _gated_rmsnorm_bwd_kernel(
    dout_ptr, y_ptr, z_ptr, w_ptr,            # [n_rows, D] (unit last stride); w [D]
    dy_ptr, dz_ptr, dw_partial_ptr,           # dy, dz [n_rows, D] contiguous; dw_partial [n_programs, D] fp32
    n_rows, stride_dout_row, stride_y_row, stride_z_row, dim, n_groups,
    eps,
    GROUP: tl.constexpr,                      # channels per norm group
    BLOCK_G: tl.constexpr,                    # next power of two >= GROUP
    GROUPS: tl.constexpr,                     # groups per tile (a power of two)
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    offs_n = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)                  # [GROUPS] group indices
    offs_g = tl.arange(0, BLOCK_G)
    cols = offs_n[:, None] * GROUP + offs_g[None, :]                           # [GROUPS, BLOCK_G]
    col_ok = (offs_n < n_groups)[:, None] & (offs_g < GROUP)[None, :]
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([GROUPS, BLOCK_G], dtype=tl.float32)                     # reduced over rows at the end
    row = pid.to(tl.int64)
    ok = col_ok & (row < n_rows)
    y_next = tl.load(y_ptr + row * stride_y_row + cols, mask=ok, other=0.0)
    z_next = tl.load(z_ptr + row * stride_z_row + cols, mask=ok, other=0.0)
    dout_next = tl.load(dout_ptr + row * stride_dout_row + cols, mask=ok, other=0.0)
    for row in range(pid.to(tl.int64), n_rows, n_programs):                   # int64 row offsets
        y = y_next.to(tl.float32)
        z = z_next.to(tl.float32)
        dout = dout_next.to(tl.float32)
        # the next row's loads fly while this row is computed
        nxt = row + n_programs
        ok = col_ok & (nxt < n_rows)
        y_next = tl.load(y_ptr + nxt * stride_y_row + cols, mask=ok, other=0.0)
        z_next = tl.load(z_ptr + nxt * stride_z_row + cols, mask=ok, other=0.0)
        dout_next = tl.load(dout_ptr + nxt * stride_dout_row + cols, mask=ok, other=0.0)
        sig = tl.sigmoid(z)
        silu = z * sig
        gated = y * silu
        rstd = 1.0 / tl.sqrt(tl.sum(gated * gated, axis=1) / GROUP + eps)     # [GROUPS]
        xhat = gated * rstd[:, None]
        dxhat = dout * w
        dw_acc += dout * xhat
        mean_dx_x = tl.sum(dxhat * xhat, axis=1) / GROUP                       # [GROUPS]
        dgated = rstd[:, None] * (dxhat - xhat * mean_dx_x[:, None])
        dy = dgated * silu
        dz = dgated * y * sig * (1.0 + z * (1.0 - sig))
        out_offs = row * dim + cols
        tl.store(dy_ptr + out_offs, dy.to(dy_ptr.dtype.element_ty), mask=col_ok)
        tl.store(dz_ptr + out_offs, dz.to(dz_ptr.dtype.element_ty), mask=col_ok)
    tl.store(dw_partial_ptr + pid.to(tl.int64) * dim + cols, dw_acc, mask=col_ok)


BWD_TILE = 4096              # elements per row tile: NemotronH's whole 4096-channel row
BWD_PROGRAMS_PER_SM = 1      # one 16-warp program per SM (121 registers a thread at D = 4096: one fits)


def bwd_config(group_size: int, n_groups: int) -> dict:
    """Tile of GROUPS whole groups (up to BWD_TILE elements, 8 per thread at 16 warps: 16-byte bf16 loads)."""
    block_g = next_power_of_2(group_size)
    groups = max(1, min(next_power_of_2(n_groups), BWD_TILE // block_g))
    num_warps = max(1, min(16, groups * block_g // 256))
    return {"BLOCK_G": block_g, "GROUPS": groups, "num_warps": num_warps}


def bwd_programs(n_rows: int, n_col_tiles: int, sm_count: int) -> int:
    """Row programs per column tile: ~BWD_PROGRAMS_PER_SM per SM in all, never more than there are rows."""
    return max(1, min(n_rows, (BWD_PROGRAMS_PER_SM * sm_count) // n_col_tiles))


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
    n_groups = dim // group_size
    cfg = bwd_config(group_size, n_groups)
    n_col_tiles = cdiv(n_groups, cfg["GROUPS"])
    n_programs = bwd_programs(n_rows, n_col_tiles, sm_count)
    dw_partial = torch.empty(n_programs, dim, device=y2.device, dtype=torch.float32)   # every program writes its row
    _gated_rmsnorm_bwd_kernel[(n_programs, n_col_tiles)](
        dout2, y2, z2, weight, dy2, dz2, dw_partial, n_rows, dout2.stride(0), y2.stride(0), z2.stride(0), dim,
        n_groups, eps, GROUP=group_size, BLOCK_G=cfg["BLOCK_G"], GROUPS=cfg["GROUPS"], num_warps=cfg["num_warps"],
        num_stages=1)
    return dw_partial


def aot_compile_all():
    """(name, CompiledKernel) for the configurations NemotronH runs (group 512; whole-row 4096), sm_90a."""
    from .mamba_common import aot_compile
    for dtype, group in (("bf16", 512), ("bf16", 4096), ("fp32", 512)):
        cfg = bwd_config(group, 4096 // group)
        sig = {"dout_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "z_ptr": f"*{dtype}", "w_ptr": f"*{dtype}",
               "dy_ptr": f"*{dtype}", "dz_ptr": f"*{dtype}", "dw_partial_ptr": "*fp32", "n_rows": "i32",
               "stride_dout_row": "i64", "stride_y_row": "i64", "stride_z_row": "i64", "dim": "i32",
               "n_groups": "i32", "eps": "fp32"}
        consts = {"GROUP": group, "BLOCK_G": cfg["BLOCK_G"], "GROUPS": cfg["GROUPS"]}
        yield (f"gated_rmsnorm_bwd {dtype} group={group}",
               aot_compile(_gated_rmsnorm_bwd_kernel, sig, consts, num_warps=cfg["num_warps"], num_stages=1,
                           aligned=("dim",)))
