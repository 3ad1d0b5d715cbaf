"""Correctness self-check of every op that has a kernel on this machine, against its float64 reference.

    python -m nemotron_kernels.selfcheck [--device cuda|cpu]

Rule (DESIGN.md, nemotron_kernels.testing): err(op) <= 2 * err(reference run in the op's dtype) + floor (one ulp
of the op's dtype at max |reference|, at least 1e-5 of it), errors measured against the
reference in float64 on the same inputs. Ops that run their reference on this machine are listed, not checked.
"""
import argparse
import sys

import torch

import nemotron_kernels as nk
from nemotron_kernels import reference as ref
from nemotron_kernels.testing import error_bound


def _inputs(op: str, device: str, dtype: torch.dtype, g: torch.Generator) -> tuple[tuple, dict]:
    """Small random inputs in the op's contract (see reference docstrings). Returns (args, kwargs)."""
    def r(*shape, dt=dtype, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float32) * scale).to(device=device, dtype=dt)

    if op == "moe_router":
        return (r(77, 256), r(128, 256, dt=torch.float32, scale=0.05), r(128, dt=torch.float32, scale=0.01)), dict(
            top_k=6, routed_scaling_factor=2.5)
    if op == "ssd_scan":
        B, L, H, P, G, N = 2, 100, 8, 16, 2, 32
        dt = r(B, L, H, dt=torch.float32) - 2.0
        return (r(B, L, H, P), dt.to(dtype), -torch.rand(H, generator=g).to(device) - 0.5, r(B, L, G, N), r(B, L, G, N)), dict(
            D=r(H, dt=torch.float32), dt_bias=r(H, dt=torch.float32, scale=0.1), dt_softplus=True, chunk_size=32)
    if op == "causal_conv1d":
        return (r(2, 37, 64), r(64, 4, scale=0.5), r(64, scale=0.1)), {}
    if op == "rmsnorm":
        return (r(3, 5, 256), r(256)), {}
    if op == "gated_rmsnorm":
        return (r(3, 5, 256), r(3, 5, 256), r(256)), dict(group_size=64)
    if op == "gqa_attention":
        return (r(2, 70, 8, 64), r(2, 70, 2, 64), r(2, 70, 2, 64)), dict(causal=True)
    return None


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def check(device: str) -> int:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    report = nk.backends(device)
    failures = 0
    print(f"self-check on {device} ({dtype}); reference in float64")
    for op, how in report.items():
        impl = how.split(":", 1)[0]
        g = torch.Generator().manual_seed(0)
        built = _inputs(op, device, dtype, g)
        if impl == "reference" or built is None:
            print(f"  {op:22s} -- {how}")
            continue
        args, kwargs = built
        fn, ref_fn = getattr(nk, op), getattr(ref, f"{op}_ref")
        out, low = fn(*args, **kwargs), ref_fn(*args, **kwargs)
        exact = ref_fn(*[a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args], **kwargs)
        outs, lows, exacts = [t if isinstance(t, tuple) else (t,) for t in (out, low, exact)]
        ok, worst = True, 0.0
        for o, lo, ex in zip(outs, lows, exacts):
            if not o.is_floating_point():  # indices must match the reference run in the op's dtype exactly
                ok &= torch.equal(o.cpu(), lo.cpu())
                continue
            e_op, e_ref = _err(o, ex), _err(lo, ex)
            worst = max(worst, e_op)
            # the tests' rule (nemotron_kernels.testing: + one ulp of the op's dtype at max|ref|, e.g. bf16 SSD states)
            bound = max(error_bound(ex, lo, 2.0, o.dtype), 2 * e_ref + 1e-5 * max(1.0, ex.abs().max().item()))
            ok &= e_op <= bound
        failures += not ok
        print(f"  {op:22s} {'PASS' if ok else 'FAIL'}  max err {worst:.2e}  [{how}]")
    print("self-check:", "all kernels agree with their references" if failures == 0 else f"{failures} FAILED")
    return failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    print("backends:")
    for op, how in nk.backends(args.device).items():
        print(f"  {op:22s} {how}")
    sys.exit(1 if check(args.device) else 0)


if __name__ == "__main__":
    main()
