"""rmsnorm at Nemotron 3 Nano's shape: D = 2688 (the hidden size), bf16, rows = tokens; the forward (prefill 32K
tokens, decode 1 / 256 rows) and the backward (32K tokens).

ours:      the Triton kernels (one forward, which also writes rstd; one backward + a tiny dweight reduction).
baselines: the reference (plain torch, eager: ~6 kernels forward, ~10 backward).
Bytes (the memory floor): fwd reads x and writes out; bwd reads dout and x and writes dx (weight, rstd and
dweight are negligible)."""
import torch

from nemotron_kernels.ops.rmsnorm import rmsnorm, rmsnorm_bwd, rmsnorm_fwd
from nemotron_kernels.reference.rmsnorm import rmsnorm_ref

from .harness import Bench, Variant

D, EPS = 2688, 1e-5
ROWS = (32768, 256, 1)


def _maker(rows: int, device: torch.device):
    def make(i: int) -> dict:
        g = torch.Generator(device="cpu").manual_seed(i)

        def randn(*shape):
            return torch.randn(*shape, generator=g).bfloat16().to(device)

        s = dict(x=randn(rows, D), weight=randn(D), dout=randn(rows, D))
        s["rstd"] = rmsnorm_fwd(s["x"], s["weight"], EPS)[1] if device.type == "cuda" else None
        return s
    return make


def run(bench: Bench) -> None:
    on_gpu = bench.device.type == "cuda"
    for rows in (bench.pick(ROWS, quick=(32768, 1)) if on_gpu else (64,)):
        pool = bench.input_pool(_maker(rows, bench.device))
        first = pool[0]
        out, ref = rmsnorm(first["x"], first["weight"], EPS), rmsnorm_ref(first["x"], first["weight"], EPS)
        err = (out.float() - ref.float()).abs().max().item()
        tol = 4 * torch.finfo(out.dtype).eps * max(ref.float().abs().max().item(), 1.0)
        assert err <= tol, f"ours differs from the reference by {err} (> {tol:.3g}): not timing it"
        fwd_bytes = 2 * rows * D * 2
        bench.measure(f"fwd rows={rows}", pool, [
            Variant("ours: triton fwd", lambda s: rmsnorm(s["x"], s["weight"], EPS), bytes=fwd_bytes),
            Variant("reference (torch)", lambda s: rmsnorm_ref(s["x"], s["weight"], EPS), bytes=fwd_bytes,
                    baseline=True),
        ], rows=rows, D=D, kind="fwd")
        if rows < 256 or not on_gpu:
            continue

        def ref_bwd(s):
            leaves = [s[k].detach().requires_grad_() for k in ("x", "weight")]
            return torch.autograd.grad(rmsnorm_ref(*leaves, EPS), leaves, s["dout"])

        bwd_bytes = 3 * rows * D * 2
        bench.measure(f"bwd rows={rows}", pool, [
            Variant("ours: triton bwd", lambda s: rmsnorm_bwd(s["dout"], s["x"], s["weight"], s["rstd"]),
                    bytes=bwd_bytes),
            Variant("reference (torch autograd)", ref_bwd, bytes=bwd_bytes, baseline=True),
        ], rows=rows, D=D, kind="bwd")
