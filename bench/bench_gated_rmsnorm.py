"""gated_rmsnorm at Nemotron 3 Nano's shape: D = 4096 (8 groups of 512), bf16, rows = tokens; the forward
(prefill 32K tokens, decode 1 / 256 rows) and the backward (32K tokens).

ours:      the Triton kernels (one forward, one backward + a tiny dweight reduction).
baselines: mamba_ssm 2.3.2 `rmsnorm_fn` (layernorm_gated, Triton; norm_before_gate=False, group_size=512) when
           the wheel is carried, and the reference (plain torch, eager).
Bytes (the memory floor; target: within 1.5x): fwd reads y and z and writes out; bwd reads dout, y, z and writes
dy, dz (weight and dweight are negligible)."""
import torch

from nemotron_kernels.ops.gated_rmsnorm import gated_rmsnorm, gated_rmsnorm_bwd
from nemotron_kernels.reference.gated_rmsnorm import gated_rmsnorm_ref

from ._mamba_ssm import load_mamba_ssm
from .harness import Bench, Variant

D, GROUP, EPS = 4096, 512, 1e-5
ROWS = (32768, 256, 1)


def _maker(rows: int, device: torch.device):
    def make(i: int) -> dict:
        g = torch.Generator(device="cpu").manual_seed(i)

        def randn(*shape):
            return torch.randn(*shape, generator=g).bfloat16().to(device)

        return dict(y=randn(rows, D), z=randn(rows, D), weight=randn(D), dout=randn(rows, D))
    return make


def run(bench: Bench) -> None:
    on_gpu = bench.device.type == "cuda"
    try:
        (lng,) = load_mamba_ssm("layernorm_gated")
    except Exception as e:  # noqa: BLE001  (the baseline is optional; say why it is missing)
        lng = None
        print(f"  [gated_rmsnorm] mamba_ssm baseline unavailable: {type(e).__name__}: {e}")
    for rows in (bench.pick(ROWS, quick=(32768, 1)) if on_gpu else (64,)):
        pool = bench.input_pool(_maker(rows, bench.device))
        first = pool[0]
        out = gated_rmsnorm(first["y"], first["z"], first["weight"], GROUP, EPS)
        ref = gated_rmsnorm_ref(first["y"], first["z"], first["weight"], GROUP, EPS)
        err = (out.float() - ref.float()).abs().max().item()
        # both round to the output dtype: a few ulps at the largest |ref| (one bf16 ulp at 8..16 is 0.0625)
        tol = 4 * torch.finfo(out.dtype).eps * max(ref.float().abs().max().item(), 1.0)
        assert err <= tol, f"ours differs from the reference by {err} (> {tol:.3g}): not timing it"
        fwd_bytes = 3 * rows * D * 2
        variants = [Variant("ours: triton fwd", lambda s: gated_rmsnorm(s["y"], s["z"], s["weight"], GROUP, EPS),
                            bytes=fwd_bytes)]
        if lng is not None and on_gpu:
            variants.append(Variant("mamba_ssm 2.3.2 rmsnorm_fn (gated)", lambda s: lng.rmsnorm_fn(
                s["y"], s["weight"], None, z=s["z"], eps=EPS, group_size=GROUP, norm_before_gate=False),
                bytes=fwd_bytes, baseline=True))
        variants.append(Variant("reference (torch)", lambda s: gated_rmsnorm_ref(s["y"], s["z"], s["weight"], GROUP,
                                                                                  EPS), bytes=fwd_bytes, baseline=True))
        bench.measure(f"fwd rows={rows}", pool, variants, rows=rows, D=D, group=GROUP, kind="fwd")
        if rows < 256:
            continue

        def ref_bwd(s):
            leaves = [s[k].detach().requires_grad_() for k in ("y", "z", "weight")]
            return torch.autograd.grad(gated_rmsnorm_ref(*leaves, GROUP, EPS), leaves, s["dout"])

        bwd_bytes = 5 * rows * D * 2
        bench.measure(f"bwd rows={rows}", pool, [
            Variant("ours: triton bwd", lambda s: gated_rmsnorm_bwd(s["dout"], s["y"], s["z"], s["weight"], GROUP, EPS),
                    bytes=bwd_bytes),
            Variant("reference (torch autograd)", ref_bwd, bytes=bwd_bytes, baseline=True),
        ], rows=rows, D=D, group=GROUP, kind="bwd")
