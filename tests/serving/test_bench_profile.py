"""BENCH_SERVE_PROFILE=1 (bench/serve_profile.py): the CPU smoke run end to end, and on synthetic CUDA traces what a
CPU cannot show: kernels inside CUDA-graph replays taking over the host context of the eager graph body, our MoE
kernels known by their names under generic host context (the projections by their labels), and the one-group grouped
GEMMs of the MoE counted as the shared expert; the idle-gap report on synthetic timelines."""
import json
from types import SimpleNamespace

import pytest
import torch

import nemotron_kernels.ops.moe_experts as moe_module
from bench.serve_profile import (
    GAP_CAUSES,
    GRAPH_BODY,
    HOST,
    QUEUED,
    SERVE_CATEGORIES,
    SHARED,
    SYNCED,
    Span,
    _summary,
    attach_graph_labels,
    format_gaps,
    gap_report,
    idle_gaps,
    label_of,
    labels,
    trace_spans,
)
from model.config import NemotronHConfig
from model.nemotron_h import build_model
from model.serve.fp8 import quantize_model_fp8
from training.profile import IDLE, OTHER, format_summary, summarize_trace


def test_cpu_smoke_run_prints_and_stores_the_breakdown(tmp_path, monkeypatch, capsys):
    from bench.__main__ import main
    for k, v in {"BENCH_SERVE_PROFILE": "1", "BENCH_SERVE_HF": "0", "BENCH_SERVE_THROUGHPUT": "0",
                 "BENCH_SERVE_BATCHES": "1", "BENCH_SERVE_PRECISIONS": "bf16,fp8",
                 "BENCH_SERVE_PROFILE_TRACES": str(tmp_path / "traces")}.items():
        monkeypatch.setenv(k, v)
    assert main(["serve", "--cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[fp8] profile: decode B1@64, eager (no CUDA graphs" in out
    assert "profile summary, decode B1@64, ms/step by category" in out
    doc = json.loads(next(tmp_path.glob("serve-*.json")).read_text())
    rows = {(r["problem"], r["variant"]): r for r in doc["rows"]}
    for label in ("bf16", "fp8"):
        pre = rows[("prefill 64", f"ours {label}")]["profile"]
        dec = rows[("decode B1@64", f"ours {label}")]["profile"]
        assert "graphs" not in dec                                   # no CUDA graphs on the CPU
        for s, tokens in ((pre, 64), (dec["eager"], 1)):
            cats = s["categories_ms_per_step"]
            assert s["device"] == "cpu" and s["tokens_per_step"] == tokens
            assert sum(cats.values()) == pytest.approx(s["wall_ms_per_step"], rel=0.02)
            for c in ("mamba in_proj", "mamba out_proj", "attention q/k/v/o projections", "sampling", "lm_head",
                      "rmsnorm", IDLE["cpu"]):
                assert cats.get(c, 0) > 0, (label, c, cats)
            assert s["trace_file"] and (tmp_path / "traces").is_dir()
    fp8_prefill = rows[("prefill 64", "ours fp8")]["profile"]["categories_ms_per_step"]
    fp8_decode = rows[("decode B1@64", "ours fp8")]["profile"]["eager"]["categories_ms_per_step"]
    assert fp8_prefill["fp8 activation quantise (projections)"] > 0 and fp8_decode["moe shared expert"] > 0
    # one row: the FP8 projections are weights-only (FP8Linear.WEIGHTS_ONLY_ROWS), nothing to quantise
    assert fp8_decode.get("fp8 activation quantise (projections)", 0) == 0


def test_every_projection_of_the_model_gets_a_label():
    cfg = NemotronHConfig.from_preset("tiny")
    model = build_model(cfg, seed=0)
    quantize_model_fp8(model)
    labels = {name: label_of(name, m) for name, m in model.named_modules()}
    assert labels["layers.7.mixer.in_proj"] == "serve/mamba.in_proj"              # FP8Linear
    assert labels["layers.0.mixer.out_proj"] == "serve/mamba.out_proj"            # BF16 Linear
    assert labels["layers.1.mixer.q_proj"] == "serve/attention.proj"
    assert labels["layers.2.mixer"] == "serve/moe" and labels["layers.2.mixer.shared_up"] == SHARED
    assert labels["lm_head"] == "serve/lm_head" and labels["norm_f"] == "rmsnorm"
    assert labels["layers.0.mixer"] == "serve/mamba"


def _x(name, cat, ts, dur, tid=1, pid=1, **args):
    return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur, "pid": pid, "tid": tid, "args": args}


BODY = [("nvjet_tst_64x8", ["aten::mm", "aten::linear", "serve/mamba.in_proj", "serve/mamba"]),
        ("_ssd_state_update_kernel", ["nemotron_kernels::ssd_state_update", "serve/mamba"]),
        ("vectorized_elementwise_kernel<add>", ["aten::add"])]


def _eager_trace(steps=2):
    """`steps` eager decode steps of 100 us, each running the graph body (BODY) under serve/graph_body."""
    ev, corr = [], 0
    for s in range(steps):
        t0 = 1000.0 * s
        ev += [_x(f"ProfilerStep#{s + 1}", "user_annotation", t0, 100), _x(GRAPH_BODY, "user_annotation", t0 + 1, 60)]
        for j, (kernel, ops) in enumerate(BODY):
            corr += 1
            t = t0 + 2 + 15 * j
            ev += [_x(op, "user_annotation" if op.startswith("serve/") else "cpu_op", t + 0.1 * d, 10 - d)
                   for d, op in enumerate(reversed(ops))]
            ev += [_x("cudaLaunchKernel", "cuda_runtime", t + 5, 1, correlation=corr),
                   _x(kernel, "kernel", t + 20, 8, pid=0, tid=7, correlation=corr)]
    return {"traceEvents": ev}


def _graph_trace(names_per_replay):
    """One step of 100 us per replay: one cudaGraphLaunch whose kernels take 10 us each."""
    ev = []
    for s, names in enumerate(names_per_replay):
        t0, corr = 1000.0 * s, 100 + s
        ev += [_x(f"ProfilerStep#{s + 1}", "user_annotation", t0, 100),
               _x("cudaGraphLaunch", "cuda_runtime", t0 + 5, 3, correlation=corr)]
        ev += [_x(n, "kernel", t0 + 10 + 10 * j, 10, pid=0, tid=7, correlation=corr) for j, n in enumerate(names)]
    return {"traceEvents": ev}


def test_graph_replay_kernels_take_the_host_context_of_the_eager_body():
    names = [k for k, _ in BODY]
    graph = _graph_trace([names, names[:2] + ["some_other_kernel"]])
    match = attach_graph_labels(graph, _eager_trace())
    assert match == {"replays": 2, "matched": 1, "aligned": 0, "kernels_per_replay": 3}  # 2 of 3: too few to align
    s = summarize_trace(graph, "cuda", categories=SERVE_CATEGORIES)
    cats = s["categories_ms_per_step"]
    # replay 1 (matched): in_proj GEMM 10 us, state update 10 us, add 10 us (other); replay 2 (names only): the
    # nvjet GEMM is just a GEMM, the state update is known by its kernel name, the other kernel is other
    assert cats["mamba in_proj"] == pytest.approx(0.010 / 2)
    assert cats["other GEMMs"] == pytest.approx(0.010 / 2)
    assert cats["ssd scan / state update"] == pytest.approx(0.020 / 2)
    assert cats[OTHER] == pytest.approx(0.020 / 2)
    assert cats[IDLE["cuda"]] == pytest.approx(0.070)
    assert s["kernels_per_step"] == 3 and s["device_busy_ms_per_step"] == pytest.approx(0.030)
    assert s["kernels_top"][0][1] == pytest.approx(0.010)
    assert "top kernels by GPU time" in format_summary(s)


def test_a_replay_that_differs_in_a_few_kernels_is_aligned_along_equal_names():
    """The eager body launches a kernel the graph does not (and the graph one the body does not): the other
    kernels still take the body's host context, position by position along the runs of equal names."""
    body = [(f"kernel_{j}", [f"op_{j}", "serve/mamba"]) for j in range(20)]
    ev, corr = [_x("ProfilerStep#1", "user_annotation", 0, 1000), _x(GRAPH_BODY, "user_annotation", 1, 900)], 0
    for j, (kernel, ops) in enumerate(body):
        t = 2 + 40 * j
        ev += [_x(op, "user_annotation" if op.startswith("serve/") else "cpu_op", t + 0.1 * d, 10 - d)
               for d, op in enumerate(reversed(ops))]
        ev += [_x("cudaLaunchKernel", "cuda_runtime", t + 5, 1, correlation=j + 1),
               _x(kernel, "kernel", t + 20, 8, pid=0, tid=7, correlation=j + 1)]
    names = [k for k, _ in body]
    graph = _graph_trace([names[:7] + names[8:15] + ["graph_only"] + names[15:]])     # kernel_7 missing, one extra
    match = attach_graph_labels(graph, {"traceEvents": ev})
    assert match == {"replays": 1, "matched": 0, "aligned": 1, "kernels_per_replay": 20}
    got = {e["name"]: e["args"].get("labels") for e in graph["traceEvents"] if e.get("cat") == "kernel"}
    assert got["graph_only"] is None and "kernel_7" not in got
    for j in set(range(20)) - {7}:                          # each kernel takes its own op's context, none shifted
        assert f"op_{j}" in got[f"kernel_{j}"] and "serve/mamba" in got[f"kernel_{j}"], (j, got[f"kernel_{j}"])


def test_graph_replays_the_profiler_cannot_see_into_are_reported_as_such():
    graph = _graph_trace([[]])
    assert attach_graph_labels(graph, _eager_trace())["replays"] == 0


# names as the H200's profiler reports them (the CUTLASS grouped GEMM mangled, without "grouped_gemm" in it)
CUTLASS = ("_ZN7cutlass13device_kernelINS_4gemm6kernel13GemmUniversalINS1_17GroupProblemShapeIN4cute5tupleIJiiiEEEEENS1_"
           "10collective13CollectiveMmaINS1_46MainloopSm90TmaGmmaWarpSpecializedPingpongE")
GEMV = "void nk::moe::(anonymous namespace)::grouped_gemv_nt_kernel<__nv_bfloat16, 4>(...)"
DECODE = "void nk::moe::(anonymous namespace)::moe_decode_gemv_kernel<__nv_bfloat16, true, 2>(nk::moe::MoeDecodeGemvParams)"
ARGS = "void nk::moe::sm90::build_group_args_kernel<128>(nk::moe::GroupedGemmParams, nk::moe::sm90::GroupArrays<128>)"
QUANT = "void nk::moe::(anonymous namespace)::quantize_rows_fp8_kernel<__nv_bfloat16>(...)"
GATHER = "void nk::moe::(anonymous namespace)::gather_rows_kernel<uint4>(...)"
SCATTER = "void nk::moe::(anonymous namespace)::scatter_rows_kernel<uint4>(...)"
DOWN = "void nk::moe::(anonymous namespace)::moe_decode_down_kernel<__nv_bfloat16, 4>(nk::moe::MoeDecodeDownParams)"
ROUTER = "void nk::router::(anonymous namespace)::moe_router_kernel<4>(nk::router::RouterArgs, long, int, bool)"
ROUTED, PERMUTE = "moe routed experts (grouped GEMM / GEMV)", "moe permute / unpermute / quantise"


def _launches(kernels):
    """One step of 1000 us: each (kernel, host ops innermost first) launched in turn, 10 us each on the GPU."""
    ev = [_x("ProfilerStep#1", "user_annotation", 0, 1000)]
    for j, (kernel, ops) in enumerate(kernels):
        t = 2 + 20 * j
        ev += [_x(op, "user_annotation" if op.startswith("serve/") else "cpu_op", t + 0.1 * d, 10 - d)
               for d, op in enumerate(reversed(ops))]
        ev += [_x("cudaLaunchKernelExC", "cuda_runtime", t + 5, 1, correlation=j + 1),
               _x(kernel, "kernel", 500 + 10 * j, 10, pid=0, tid=7, correlation=j + 1)]
    return {"traceEvents": ev}


def test_our_moe_kernels_are_known_by_name_under_generic_host_context():
    # eager: our ops bypass the dispatcher, so a MoE kernel's host context is the MoE module (or a wrong one)
    trace = _launches([(ARGS, ["serve/moe"]), (CUTLASS, ["serve/moe"]), (CUTLASS, ["aten::mm", "serve/moe"]),
                       (GEMV, ["serve/mamba.in_proj"]), (GATHER, ["serve/moe"]), (QUANT, ["serve/moe"]),
                       (ROUTER, ["serve/moe"]), (CUTLASS, [SHARED, "serve/moe"]),
                       (QUANT, ["serve/fp8_quantize", "serve/mamba.in_proj", "serve/mamba"]),
                       ("nvjet_tst_64x8", ["aten::mm", "serve/moe"]),
                       ("gemv2T_kernel_val", ["aten::mm", "MoeRouterFn", "serve/moe"]),     # the fp32 logits
                       ("unrolled_elementwise_kernel", ["aten::copy_", "MoeRouterFn", "serve/moe"]),  # x.float()
                       (DECODE, ["serve/moe"]), (DOWN, ["serve/moe"]),             # routed + shared at decode
                       (SCATTER, ["serve/moe"])])                                  # the permute past one chunk
    cats = summarize_trace(trace, "cuda", categories=SERVE_CATEGORIES)["categories_ms_per_step"]
    assert cats[ROUTED] == pytest.approx(0.050) and cats[PERMUTE] == pytest.approx(0.030)
    assert cats["router (fp32 gate, top-k)"] == pytest.approx(0.030)
    assert cats["moe shared expert"] == pytest.approx(0.010)                      # its label beats the name
    assert cats["fp8 activation quantise (projections)"] == pytest.approx(0.010)  # the same quantise kernel
    assert cats["moe other (casts, adds)"] == pytest.approx(0.010)                # a generic GEMM: host context
    assert cats["mamba in_proj"] == pytest.approx(0.010)                          # W8 / single-row GEMV: label
    assert "other GEMMs" not in cats


def test_unmatched_graph_replays_still_know_our_moe_kernels():
    graph = _graph_trace([[CUTLASS, GEMV, ROUTER, "nvjet_tst_64x8"]])
    assert attach_graph_labels(graph, _eager_trace())["matched"] == 0
    cats = summarize_trace(graph, "cuda", categories=SERVE_CATEGORIES)["categories_ms_per_step"]
    assert cats[ROUTED] == pytest.approx(0.020) and cats["router (fp32 gate, top-k)"] == pytest.approx(0.010)
    assert cats["other GEMMs"] == pytest.approx(0.010)                            # the nvjet GEMM only


def test_one_group_grouped_gemms_run_as_the_shared_expert(monkeypatch):
    def gemm(*args):                                   # stands for the kernel entry: its ops get the caller's labels
        return torch.ones(1)
    monkeypatch.setattr(moe_module, "grouped_gemm_nt", gemm)
    monkeypatch.setattr(moe_module, "grouped_gemm_fp8_nt", gemm)
    monkeypatch.setattr(moe_module, "grouped_gemm_w8_nt", gemm)
    engine = SimpleNamespace(runner=SimpleNamespace(model=torch.nn.Linear(2, 2), sampler=None, graphs={}))
    a, offsets = torch.zeros(4, 8), torch.zeros(2, dtype=torch.int32)
    with labels(engine), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        moe_module.grouped_gemm_nt(a, torch.zeros(8, 16, 8), offsets, True)            # routed: 8 experts
        moe_module.grouped_gemm_nt(a, torch.zeros(1, 16, 8), offsets, True)            # shared: one group
        moe_module.grouped_gemm_fp8_nt(a, a[:, 0], torch.zeros(1, 16, 8), torch.zeros(1, 16), offsets, False)
        moe_module.grouped_gemm_w8_nt(a, torch.zeros(8, 16, 8), torch.zeros(8, 16), offsets, True)   # routed
        moe_module.grouped_gemm_w8_nt(a, torch.zeros(1, 16, 8), torch.zeros(1, 16), offsets, True)   # shared
    assert sum(e.name == SHARED for e in prof.events()) == 3
    for name in ("grouped_gemm_nt", "grouped_gemm_fp8_nt", "grouped_gemm_w8_nt"):
        assert getattr(moe_module, name) is gemm                                                 # put back


def test_cpu_smoke_run_overlap_ab_times_both_ways(tmp_path, monkeypatch):
    """BENCH_SERVE_OVERLAP=ab: each decode batch timed synchronous, then overlapped, on the same sequences."""
    from bench.__main__ import main
    for k, v in {"BENCH_SERVE_OVERLAP": "ab", "BENCH_SERVE_HF": "0", "BENCH_SERVE_THROUGHPUT": "0",
                 "BENCH_SERVE_BATCHES": "1,4", "BENCH_SERVE_PRECISIONS": "bf16"}.items():
        monkeypatch.setenv(k, v)
    assert main(["serve", "--cpu", "--out", str(tmp_path)]) == 0
    doc = json.loads(next(tmp_path.glob("serve-*.json")).read_text())
    decode = [(r["problem"], r["variant"], r["overlap_decode"]) for r in doc["rows"] if r["problem"].startswith("decode")]
    # no CUDA graphs on the CPU: the overlapped rows ask for overlap, and the engine reports it cannot
    assert decode == [("decode B1@64", "ours bf16 sync", False), ("decode B1@64", "ours bf16 overlapped", False),
                      ("decode B4@64", "ours bf16 sync", False), ("decode B4@64", "ours bf16 overlapped", False)]
    assert all(r["ms"] > 0 and r["timed_steps"] == 3 for r in doc["rows"] if r["problem"].startswith("decode"))


def test_cpu_smoke_run_beside_transformers_with_every_precision(tmp_path, monkeypatch):
    """The transformers baseline (on by default) runs beside ours on the same weights: its prefill and decode rows,
    our rows' ratios to it, and the fp8kv precision (FP8 KV pages with device scales, FP8 prefill attention), whose
    floors count 1-byte KV; every row keeps both floor ratios."""
    pytest.importorskip("transformers")
    from bench.__main__ import main
    for k, v in {"BENCH_SERVE_THROUGHPUT": "0", "BENCH_SERVE_BATCHES": "4",
                 "BENCH_SERVE_PRECISIONS": "bf16,fp8kv"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("BENCH_SERVE_HF", raising=False)
    assert main(["serve", "--cpu", "--out", str(tmp_path)]) == 0
    doc = json.loads(next(tmp_path.glob("serve-*.json")).read_text())
    rows = {(r["problem"], r["variant"]): r for r in doc["rows"]}
    hf = "transformers NemotronHForCausalLM"
    for problem in ("prefill 64", "decode B4@64"):
        assert rows[(problem, hf)]["baseline"] and rows[(problem, hf)]["ms"] > 0
        for label in ("bf16", "fp8kv"):
            row = rows[(problem, f"ours {label}")]
            assert row[f"x vs {hf}"] > 0 and row["x_over_weight_floor"] >= row["x_over_floor"] > 0
    bf16, fp8kv = rows[("decode B4@64", "ours bf16")], rows[("decode B4@64", "ours fp8kv")]
    assert fp8kv["floor_bytes_ms"] - fp8kv["floor_weights_ms"] < bf16["floor_bytes_ms"] - bf16["floor_weights_ms"]


STEP = "ProfilerStep#1"


def _gpu(name, start, end, launched, *context):
    return Span(start, end, name, "gpu", context=context, launched=launched)


def _timeline():
    """One step of 1000 us: six gaps, one of each cause (µs)."""
    host = lambda name, kind, start, end: Span(start, end, name, kind, thread=1)
    moe = ("cudaLaunchKernel", "aten::copy_", "serve/moe", STEP)
    return [host(STEP, "step", 0, 1000), host("cudaLaunchKernel", "call", 5, 8),
            _gpu("void at::native::vectorized_elementwise_kernel<4, add>(int)", 10, 100, 8),
            _gpu("kernel_b", 102, 200, 30),                      # launched long before: [100, 102] is the GPU's
            _gpu("nvjet_tst_128x256", 150, 260, 40),             # another stream, over kernel_b
            host("serve/moe", "op", 200, 420), host("aten::empty", "op", 250, 350),
            host("cudaMalloc", "call", 260, 340),                # [260, 420]: the allocator (80 of 160 us)
            host("aten::copy_", "op", 400, 415), host("cudaLaunchKernel", "call", 405, 410),
            _gpu("void nk::moe::(anonymous namespace)::gather_rows_kernel<uint4>(int)", 420, 430, 410, *moe),
            host("aten::mul", "op", 430, 437), host("cudaLaunchKernel", "call", 432, 436),
            _gpu("kernel_d", 440, 500, 436),                     # [430, 440]: launch-bound
            host("cudaStreamSynchronize", "call", 445, 510),     # [500, 700]: after the sync
            host("aten::add", "op", 600, 695), host("cudaLaunchKernel", "call", 685, 690),
            _gpu("kernel_e", 700, 710, 690)]                     # [710, 1000]: the step's end


def test_idle_gaps_have_their_kernels_cause_and_host_work():
    gaps = idle_gaps(_timeline())
    assert [(g["start"], g["end"], g["cause"]) for g in gaps] == [
        (0, 10, HOST), (100, 102, QUEUED), (260, 420, GAP_CAUSES[0][0]), (430, 440, HOST), (500, 700, SYNCED),
        (710, 1000, HOST)]
    alloc = gaps[2]
    assert alloc["before"] == "nvjet_tst_128x256" and alloc["after"].startswith("void nk::moe::")
    assert alloc["launch"] == ["cudaLaunchKernel", "aten::copy_", "serve/moe", STEP] and alloc["launched"] == 410
    assert alloc["calls"] == {"cudaMalloc": 80, "cudaLaunchKernel": 5}
    # self time inside the gap: serve/moe's 160 us less aten::empty's 90 and aten::copy_'s 15; the step's is 0
    assert alloc["host"] == {"cudaMalloc": 80, "serve/moe": 55, "aten::empty": 10, "aten::copy_": 10,
                             "cudaLaunchKernel": 5}
    assert gaps[3]["host"] == {"cudaLaunchKernel": 4, "aten::mul": 3, STEP: 3}
    assert gaps[0]["before"] is None and gaps[-1]["after"] is None and gaps[-1]["launch"] == []



def test_a_gap_follows_a_sync_that_was_blocked_as_the_gpu_went_idle():
    call = lambda name, start, end: Span(start, end, name, "call", thread=1)
    gaps = idle_gaps([Span(0, 300, STEP, "step", thread=1), _gpu("a", 0, 100, 5), _gpu("b", 150, 200, 140),
                      _gpu("c", 250, 260, 245),
                      call("cudaEventSynchronize", 50, 98),         # returns 2 us "before" the GPU idles: skew
                      call("cudaStreamSynchronize", 210, 212)])     # the GPU already idle: it waits for nothing
    assert [(g["start"], g["cause"], g["waited"]) for g in gaps] == [
        (100, SYNCED, "cudaEventSynchronize"), (200, HOST, None), (260, HOST, None)]

def test_gap_report_sums_per_step_and_names_the_longest():
    r = gap_report(_timeline() + [Span(2000, 2100, "ProfilerStep#2", "step", thread=1)], top=3)
    assert r["steps"] == 2 and r["gaps_per_step"] == 3.5 and r["ms_per_step"] == pytest.approx(0.772 / 2)
    assert r["short_per_step"] == [1.5, pytest.approx(0.022 / 2)]           # 10, 2 and 10 us
    assert r["long_per_step"] == [2.0, pytest.approx(0.750 / 2)]            # 160, 200, 290 and the empty step's 100
    assert [b[1] for b in r["by_length"]] == [0.5, 1.0, 0.0, 2.0, 0.0]
    causes = {c: (k, ms) for c, k, ms in r["by_cause"]}
    assert causes[HOST] == (2.0, pytest.approx(0.410 / 2)) and causes[QUEUED] == (0.5, pytest.approx(0.001))
    host = dict(r["host_top"])
    assert host["ProfilerStep (engine, outside any op)"] == pytest.approx((7 + 3 + 290 + 100 + 95) / 2e3)
    assert host["cudaMalloc"] == pytest.approx(0.040)
    assert [(g["us"], g["before"], g["after"]) for g in r["top"]] == [
        (290, "kernel_e", "-"), (200, "kernel_d", "kernel_e"), (160, "nvjet_tst_128x256", "gather_rows_kernel")]
    text = format_gaps(r)
    assert "idle gaps: 0.39 ms/step in 4 gaps/step; under 20 µs 2 gaps 0.01 ms" in text
    assert "160.0  nvjet_tst_128x256 -> gather_rows_kernel | allocator | cudaLaunchKernel < aten::copy_ < " \
           "serve/moe | cudaMalloc 80.0, serve/moe 55.0, aten::empty 10.0" in text


def test_gap_report_of_a_chrome_trace_adds_up_to_the_idle_time(capsys):
    for trace in (_launches([(GEMV, ["aten::mm"]), (ROUTER, ["serve/moe"])]), _eager_trace(), _graph_trace([
            [k for k, _ in BODY]] * 2)):
        s = summarize_trace(trace, "cuda", categories=SERVE_CATEGORIES)
        r = gap_report(trace_spans(trace))
        assert r["ms_per_step"] == pytest.approx(s["categories_ms_per_step"][IDLE["cuda"]])
    # the eager body: kernels of 8 us every 15 us, each launched 14 us before it starts: 7 us gaps the GPU's own;
    # the host's: 22 us before the first (serve/mamba's Python before its launch) and 40 us after the last
    r = gap_report(trace_spans(_eager_trace()))
    causes = {c: (k, ms) for c, k, ms in r["by_cause"]}
    assert causes == {QUEUED: (2.0, pytest.approx(0.014)), HOST: (2.0, pytest.approx(0.062))}
    host = dict(r["host_top"])
    assert host["serve/mamba"] > 0 and host[GRAPH_BODY] > 0 and "aten::add" not in host
    # a cudaMalloc inside a launching op, and the trace's own "PyTorch Profiler" span on no launching thread
    trace = _launches([(GEMV, ["aten::mm"])])
    trace["traceEvents"] += [_x("cudaMalloc", "cuda_runtime", 520, 60), _x("PyTorch Profiler (0)", "Trace", 0, 2000,
                                                                            pid="Spans", tid="PyTorch Profiler"),
                             _x(GATHER, "kernel", 600, 10, pid=0, tid=7, correlation=99),
                             _x("cudaLaunchKernel", "cuda_runtime", 585, 2, correlation=99)]
    r = gap_report(trace_spans(trace))
    assert [(g["us"], g["cause"]) for g in r["top"]] == [(500, HOST), (390, HOST), (90, GAP_CAUSES[0][0])]
    assert all("PyTorch Profiler" not in h for h, _ in r["host_top"])
    s = _summary(trace, torch.device("cuda"), "synthetic", 1)
    assert s["idle_gaps"]["gaps_per_step"] == 3
    assert "allocator | cudaLaunchKernel | cudaMalloc 60.0" in capsys.readouterr().out
