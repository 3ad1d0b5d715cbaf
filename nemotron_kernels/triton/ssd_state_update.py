"""One Mamba-2 decode step for a batch of state slots (Triton), in place:
    dt = softplus(dt + dt_bias) (or dt + dt_bias);  S = exp(dt A) S + dt outer(x, B[g]);  y = S C[g] + D x
Head h reads group g = h // (H // G). A program owns BLOCK_P rows (head dims) x N state columns of one
(batch row, head): it streams that [BLOCK_P, N] block of the state once in and once out (fp32 math, stored in
the state's dtype), so the kernel runs at the HBM bandwidth of the state traffic. Slot offsets are int64."""
import triton
import triton.language as tl

from .common import cdiv, next_power_of_2
from .mamba_common import interpreting

INTERPRETED = interpreting()
LOAD_TOKEN = object()


@triton.jit
def _ssd_state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dt_bias_ptr, slot_idx_ptr, y_ptr,
    headdim, dstate, heads_per_group,
    stride_state_s, stride_state_h, stride_state_p,       # state [S_slots, H, P, N], unit N stride
    stride_x_b, stride_x_h,                               # x [B, H, P], unit P stride
    stride_dt_b,                                          # dt [B, H], unit H stride
    stride_B_b, stride_B_g,                               # B [B, G, N], unit N stride
    stride_C_b, stride_C_g,                               # C [B, G, N], unit N stride
    stride_y_b, stride_y_h,                               # y [B, H, P], unit P stride
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, HAS_SLOTS: tl.constexpr,
):
    pid_p = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    g = h // heads_per_group
    if HAS_SLOTS:
        slot = tl.load(slot_idx_ptr + b).to(tl.int64)
    else:
        slot = b
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    p_ok = offs_p < headdim
    n_ok = offs_n < dstate
    mask = p_ok[:, None] & n_ok[None, :]

    state_ptrs = state_ptr + slot * stride_state_s + h * stride_state_h + offs_p[:, None] * stride_state_p \
        + offs_n[None, :]
    s = tl.load(state_ptrs, mask=mask, other=0.0).to(tl.float32)                      # [BLOCK_P, BLOCK_N]

    dt = tl.load(dt_ptr + b * stride_dt_b + h).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + h).to(tl.float32)
    if DT_SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    decay = tl.exp(dt * tl.load(A_ptr + h).to(tl.float32))
    x = tl.load(x_ptr + b * stride_x_b + h * stride_x_h + offs_p, mask=p_ok, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * stride_B_b + g * stride_B_g + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * stride_C_b + g * stride_C_g + offs_n, mask=n_ok, other=0.0).to(tl.float32)

    s = s * decay + (dt * x)[:, None] * Bv[None, :]
    tl.store(state_ptrs, s.to(state_ptr.dtype.element_ty), mask=mask)
    y = tl.sum(s * Cv[None, :], axis=1)                                                 # [BLOCK_P]
    if HAS_D:
        y += tl.load(D_ptr + h).to(tl.float32) * x
    tl.store(y_ptr + b * stride_y_b + h * stride_y_h + offs_p, y.to(y_ptr.dtype.element_ty), mask=p_ok)


def update_config(batch: int, heads: int, headdim: int, dstate: int, sm_count: int) -> dict:
    """BLOCK_P rows of the state per program: 16 rows (8 KB of fp32 state at N = 128) keeps ~64K programs in flight
    at batch 256; small batches take 8 rows so at least ~2 programs run per SM."""
    block_n = next_power_of_2(dstate)
    block_p = min(next_power_of_2(headdim), max(1, 2048 // block_n), 16)
    while block_p > 4 and batch * heads * cdiv(headdim, block_p) < 2 * sm_count:
        block_p //= 2
    num_warps = 4 if block_p * block_n >= 1024 else 2
    return {"BLOCK_P": block_p, "BLOCK_N": block_n, "num_warps": num_warps}


def ssd_state_update_launch(state, x, dt, A, B, C, D, dt_bias, dt_softplus: bool, slot_idx, y, sm_count: int):
    """state [S_slots, H, P, N] (in place); x [B, H, P]; dt [B, H]; A [H]; B, C [B, G, N]; D, dt_bias [H] | None;
    slot_idx [B] | None; writes y [B, H, P]."""
    bsz, heads, headdim = x.shape
    ngroups, dstate = B.shape[1], B.shape[2]
    if bsz == 0:
        return
    assert state.stride(3) == 1, "ssd_state_update: state needs a unit stride on N"
    assert x.stride(2) == 1 and y.stride(2) == 1, "ssd_state_update: x and y need a unit stride on P"
    assert dt.stride(1) == 1, "ssd_state_update: dt needs a unit stride on H"
    assert B.stride(2) == 1 and C.stride(2) == 1, "ssd_state_update: B and C need a unit stride on N"
    for name, t in (("A", A), ("D", D), ("dt_bias", dt_bias), ("slot_idx", slot_idx)):
        assert t is None or t.is_contiguous(), f"ssd_state_update: {name} must be contiguous"
    cfg = update_config(bsz, heads, headdim, dstate, sm_count)
    grid = (cdiv(headdim, cfg["BLOCK_P"]), heads, bsz)
    _ssd_state_update_kernel[grid](
        state, x, dt, A, B, C, D if D is not None else A, dt_bias if dt_bias is not None else A,
        slot_idx if slot_idx is not None else A, y,
        headdim, dstate, heads // ngroups,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), x.stride(1), dt.stride(0),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1), y.stride(0), y.stride(1),
        BLOCK_P=cfg["BLOCK_P"], BLOCK_N=cfg["BLOCK_N"], HAS_D=D is not None, HAS_DT_BIAS=dt_bias is not None,
        DT_SOFTPLUS=dt_softplus, HAS_SLOTS=slot_idx is not None, num_warps=cfg["num_warps"])


def aot_compile_all():
    """(name, CompiledKernel) for NemotronH's decode step (P = 64, N = 128, bf16 inputs, fp32 / bf16 state), sm_90a."""
    from .mamba_common import aot_compile
    for state_dtype in ("fp32", "bf16"):
        for batch in (1, 256):
            cfg = update_config(batch, 64, 64, 128, 132)
            sig = {"state_ptr": f"*{state_dtype}", "x_ptr": "*bf16", "dt_ptr": "*bf16", "A_ptr": "*fp32",
                   "B_ptr": "*bf16", "C_ptr": "*bf16", "D_ptr": "*fp32", "dt_bias_ptr": "*fp32", "slot_idx_ptr": "*i32",
                   "y_ptr": "*bf16", "headdim": "i32", "dstate": "i32", "heads_per_group": "i32",
                   "stride_state_s": "i64", "stride_state_h": "i32", "stride_state_p": "i32", "stride_x_b": "i32",
                   "stride_x_h": "i32", "stride_dt_b": "i32", "stride_B_b": "i32", "stride_B_g": "i32",
                   "stride_C_b": "i32", "stride_C_g": "i32", "stride_y_b": "i32", "stride_y_h": "i32"}
            consts = {"BLOCK_P": cfg["BLOCK_P"], "BLOCK_N": cfg["BLOCK_N"], "HAS_D": True, "HAS_DT_BIAS": True,
                      "DT_SOFTPLUS": True, "HAS_SLOTS": True}
            yield (f"ssd_state_update state={state_dtype} BLOCK_P={cfg['BLOCK_P']}",
                   aot_compile(_ssd_state_update_kernel, sig, consts, num_warps=cfg["num_warps"], num_stages=1,
                               aligned=("headdim", "dstate")))
