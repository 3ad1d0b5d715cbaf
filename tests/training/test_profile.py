"""--profile N: the profiler's files, and the per-category summary (CPU run here; the CUDA path on a synthetic trace)."""
import gzip
import json

import pytest

from training.pretrain import main
from training.profile import IDLE, OTHER, classify, format_summary, summarize_trace


def test_profile_writes_table_summary_and_trace(pretrain_argv, tmp_path, capsys):
    main(pretrain_argv(tmp_path, "--steps", 3, "--profile", 1, "--eval-every", 0, "--eval-batches", 1))
    out = capsys.readouterr().out
    assert "profile: 1 step(s) on cpu" in out and f'top names of "{OTHER}"' in out
    table = (tmp_path / "profile.txt").read_text()
    assert "Self CPU" in table and len(table.splitlines()) > 10
    summary = json.loads((tmp_path / "profile_summary.json").read_text())
    assert summary["steps"] == 1 and summary["device"] == "cpu"
    cats = summary["categories_ms_per_step"]
    for c in ("optimizer (adamw, zero_grad, balancer)", "matmul / linear", "loss (chunked cross-entropy)",
              IDLE["cpu"]):
        assert cats.get(c, 0) > 0, (c, cats)
    assert all(v >= 0 for v in cats.values())
    assert sum(cats.values()) == pytest.approx(summary["wall_ms_per_step"], rel=0.02)
    trace = json.loads(gzip.decompress((tmp_path / "trace.json.gz").read_bytes()))
    assert any(e.get("name", "").startswith("ProfilerStep#") for e in trace["traceEvents"])
    # the profiled steps are ordinary steps: all three were logged
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3]


def test_profile_needs_a_warm_up_step(pretrain_argv, tmp_path):
    with pytest.raises(ValueError, match="--profile 2 records the last 2 steps"):
        main(pretrain_argv(tmp_path, "--steps", 2, "--profile", 2))


def _x(name, cat, ts, dur, tid=1, pid=1, **args):
    return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur, "pid": pid, "tid": tid, "args": args}


def test_cuda_summary_splits_busy_time_exclusively_and_names_syncs():
    """Two steps of 100 us on a synthetic CUDA trace: kernels classified by their launching ops (an aten::mm
    inside the cross-entropy is the loss, a cutlass kernel under grouped_gemm is MoE), overlapping kernels counted
    once, the rest of the step idle, and the host sync found with its caller."""
    ev = []
    for s, t0 in enumerate((0.0, 100.0)):
        ev += [_x(f"ProfilerStep#{s + 5}", "user_annotation", t0, 100),
               _x("train/cross_entropy", "user_annotation", t0 + 1, 10),
               _x("aten::mm", "cpu_op", t0 + 2, 5),
               _x("cudaLaunchKernel", "cuda_runtime", t0 + 3, 1, correlation=10 * s + 1),
               _x("nemotron_kernels::grouped_gemm_nt", "cpu_op", t0 + 12, 5),
               _x("cudaLaunchKernel", "cuda_runtime", t0 + 13, 1, correlation=10 * s + 2),
               _x("aten::add", "cpu_op", t0 + 18, 2),
               _x("cudaLaunchKernel", "cuda_runtime", t0 + 18.5, 1, correlation=10 * s + 3),
               _x("train/host_sync", "user_annotation", t0 + 20, 70),
               _x("aten::_local_scalar_dense", "cpu_op", t0 + 21, 68),
               _x("cudaStreamSynchronize", "cuda_runtime", t0 + 22, 60),
               # device: 30 us of CE GEMM, 20 us of MoE overlapping it by 10 us, 5 us of elementwise
               _x("nvjet_tst_128x256", "kernel", t0 + 10, 30, pid=0, tid=7, correlation=10 * s + 1),
               _x("void cutlass::device_kernel<GemmUniversal>", "kernel", t0 + 30, 20, pid=0, tid=8,
                  correlation=10 * s + 2),
               _x("vectorized_elementwise_kernel<add>", "kernel", t0 + 60, 5, pid=0, tid=7,
                  correlation=10 * s + 3)]
    s = summarize_trace({"traceEvents": ev}, "cuda")
    assert s["steps"] == 2 and s["wall_ms_per_step"] == pytest.approx(0.1)
    cats = s["categories_ms_per_step"]
    assert cats["loss (chunked cross-entropy)"] == pytest.approx(0.030)
    assert cats["moe experts (grouped gemm, permute)"] == pytest.approx(0.010)       # 10 us beyond the overlap
    assert cats[OTHER] == pytest.approx(0.005)
    assert cats[IDLE["cuda"]] == pytest.approx(0.055)
    assert sum(cats.values()) == pytest.approx(s["wall_ms_per_step"])
    assert s["device_busy_ms_per_step"] == pytest.approx(0.045) and s["kernels_per_step"] == 3
    assert s["other_top"][0][0].startswith("aten::add | vectorized_elementwise_kernel")
    assert s["host_syncs"]["calls_per_step"] == 1
    assert s["host_syncs"]["by_caller"][0][0] == ("cudaStreamSynchronize < aten::_local_scalar_dense < "
                                                  "train/host_sync")
    text = format_summary(s)
    assert "GPU busy 0.0 ms (45.0%)" in text and "host syncs 1.0/step" in text


@pytest.mark.parametrize("names, category", [
    (["_ssd_bwd_dx_kernel"], "ssd_scan (mamba)"),
    (["void cutlass::Kernel2<x>", "aten::mm", "autograd::engine::evaluate_function: MmBackward0"], "matmul / linear"),
    (["gather_rows_kernel", "nemotron_kernels::moe_unpermute"], "moe experts (grouped gemm, permute)"),
    (["multi_tensor_apply_kernel", "aten::_foreach_mul_", "Optimizer.step#AdamW.step"],
     "optimizer (adamw, zero_grad, balancer)"),
    (["ncclDevKernel_AllGather_RING_LL", "FSDP::all_gather"], "fsdp (param casts, all-gather, reduce-scatter)"),
    (["_attn_bwd_preprocess_kernel"], "attention"),
    (["some_new_kernel", "aten::foo"], OTHER),
])
def test_classify(names, category):
    assert classify(names) == category
