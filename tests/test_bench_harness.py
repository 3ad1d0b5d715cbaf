"""The benchmark harness on the CPU: rows, baselines' ratios, and the per-call breakdown of `--kernels`."""
import torch

from bench.harness import Bench, Variant


def test_rows_ratios_and_kernel_breakdown():
    bench = Bench("demo", "cpu", quick=True, kernels=True)
    pool = [dict(a=torch.randn(64, 64), b=torch.randn(64, 64)) for _ in range(2)]
    rows = bench.measure("64x64", pool, [Variant("mm", lambda s: s["a"] @ s["b"], flops=2 * 64**3),
                                         Variant("mm + add", lambda s: s["a"] @ s["b"] + s["a"], baseline=True)],
                         N=64)
    mm, mm_add = rows
    assert mm["N"] == 64 and mm["tflops"] > 0 and "x vs mm + add" in mm and "x vs mm + add" not in mm_add
    names = [k["name"] for k in mm["kernels"]]
    assert "aten::mm" in names and "aten::add" not in names, names
    add = next(k for k in mm_add["kernels"] if k["name"] == "aten::add")
    assert add["count"] == 1 and add["us"] > 0
    plain = Bench("demo", "cpu", quick=True).measure("64x64", pool, [Variant("mm", lambda s: s["a"] @ s["b"])])
    assert "kernels" not in plain[0]                                   # only with --kernels
