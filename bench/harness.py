"""The benchmark harness every bench/bench_<op>.py uses (DESIGN.md rule 8).

A bench module defines `run(bench: Bench) -> None`; for each problem size it builds an input pool with
`bench.input_pool(make_set)` and calls `bench.measure(problem, pool, variants, **params)` with a list of
`Variant`s (ours and the baselines). The harness times every variant on the same rotating inputs and turns
the times into one row per variant: ms, TFLOP/s, GB/s, fractions of the H200 ceilings, and the speed-up
against every baseline of the same problem. `python -m bench` writes the rows as JSON, a markdown table and
a chart under bench/results/.

Timing on CUDA (two numbers per variant):
  ms_graph  GPU time per call: a CUDA graph holding one call per input set (cycling the pool, >= 16 calls)
            is replayed; median over replays / calls. This is the kernel-side cost, free of Python overhead.
  ms_eager  latency per eager call: CUDA events around each call, inputs rotated; median. Includes the
            Python / dispatcher / launch overhead whenever the GPU waits for the CPU (small problems).
  `ms` (used for rates and ratios) is ms_graph when the capture worked, else ms_eager.
Inputs: a pool of input sets whose total size exceeds 2 x the 60 MB L2 (at least 2 sets), so no call finds
its inputs in L2; random data, warmed up once per set before timing.
On CPU (`--cpu`, a smoke run of the benchmark code): time.perf_counter per call, median; no ceilings.

`--kernels`: each row also lists what one call runs, most time first (row["kernels"]: name, µs and launches per
call): the GPU kernels from torch.profiler over a few calls (on CPU, the torch ops' self time). It says which
stage of a multi-kernel op to work on, and what a baseline launches against ours.
"""
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

L2_BYTES = 60 * 2**20
TIMING_NOTE = ("ms = ms_graph (GPU time per call from CUDA-graph replays of calls over the rotating input pool) "
               "when capture works, else ms_eager (median of CUDA events around single eager calls, which "
               "includes Python/launch overhead when the GPU waits for the CPU); pool > 2 x L2")
CEILINGS = {  # measured on the H200 (ANCHORS.md)
    "bf16_tflops": 789.0,
    "fp8_tflops": 1429.0,
    "copy_tbps": 4.19,
}


@dataclasses.dataclass
class Variant:
    """One implementation of a problem. `fn(inputs)` runs it once on one input set from the pool.

    flops: useful floating-point operations per call (e.g. 2*M*N*K for a GEMM), 0 if not compute-bound.
    bytes: minimum bytes per call (inputs read once + outputs written once), 0 if not meaningful.
    flop_ceiling: which compute ceiling the TFLOP/s are compared with ("bf16" or "fp8").
    baseline: the other variants of the problem report their speed-up against this one.
    """
    name: str
    fn: Callable[[Any], Any]
    flops: float = 0.0
    bytes: float = 0.0
    flop_ceiling: str = "bf16"
    baseline: bool = False
    graph: bool = True  # False for calls that cannot be captured (autograd backward, host syncs): eager time only


def tensor_bytes(obj) -> int:
    """Total bytes of the tensors in a (nested) tuple / list / dict."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def cuda_times(fn, pool, reps: int, graph_replays: int, graph: bool = True, budget_ms: float = 4000.0) -> dict:
    """fn(inputs) timed over the input pool: ms_eager (median of `reps` event-timed eager calls) and ms_graph
    (median over `graph_replays` replays of a CUDA graph of >= 16 calls cycling the pool; None when capture fails);
    ms is ms_graph when there is one. A slow fn (a reference baseline: ~0.2 s a call) gets fewer reps and replays,
    about budget_ms of GPU time for each of the two (never under 5 and 3, nor over what was asked): the ssd_scan
    bench's reference rows took ~100 s each at 200 reps. Also used by the scripts/ sweeps."""
    for inputs in pool:  # warm-up: every set once (allocator, cuBLAS heuristics, lazy init)
        fn(inputs)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(pool[0])
    end.record()
    end.synchronize()
    one_ms = max(start.elapsed_time(end), 1e-3)
    reps = min(reps, max(5, int(budget_ms / one_ms)))

    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        inputs = pool[i % len(pool)]
        starts[i].record()
        fn(inputs)
        ends[i].record()
    torch.cuda.synchronize()
    ms_eager = statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))

    calls = len(pool) * -(-16 // len(pool))  # >= 16 calls, whole passes over the pool
    graph_replays = min(graph_replays, max(3, int(budget_ms / (one_ms * calls))))
    ms_graph, graph_error = None, None
    if not graph:
        return dict(ms=ms_eager, ms_graph=None, ms_eager=ms_eager, timing="cuda events (eager)",
                    graph_error="not capturable (variant says so)")
    caller_stream = torch.cuda.current_stream()
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as CUDA graph capture wants
            for inputs in pool[:2]:
                fn(inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(calls):
                fn(pool[i % len(pool)])
        graph.replay()
        torch.cuda.synchronize()
        per_call = []
        for _ in range(graph_replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            per_call.append(start.elapsed_time(end) / calls)
        ms_graph = statistics.median(per_call)
        del graph
    except Exception as e:  # capture is not possible for every op (host syncs): eager time only
        graph_error = f"{type(e).__name__}: {e}"[:200]
        # A failed capture can leave the capture stream current; later work (even torch.randn) would then
        # run "inside" the dead capture. Go back to the caller's stream.
        torch.cuda.set_stream(caller_stream)
        torch.cuda.synchronize()
    return dict(ms=ms_graph if ms_graph is not None else ms_eager, ms_graph=ms_graph, ms_eager=ms_eager,
                timing="cuda graph" if ms_graph is not None else "cuda events (eager)", graph_error=graph_error)


def kernel_breakdown(fn, pool, on_gpu: bool, calls: int = 8, top: int = 10) -> list[dict]:
    """[{name, us, count}] per call of fn, most time first: GPU kernels (self device time) when on_gpu, else torch
    ops (self CPU time), from torch.profiler over `calls` calls on rotating inputs after one warm-up call."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    fn(pool[0])
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_gpu else [ProfilerActivity.CPU]
    if on_gpu:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for i in range(calls):
            fn(pool[i % len(pool)])
        if on_gpu:
            torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        if on_gpu and e.device_type == DeviceType.CUDA and e.self_device_time_total > 0:
            rows.append(dict(name=e.key, us=e.self_device_time_total / calls, count=e.count / calls))
        elif not on_gpu and e.device_type == DeviceType.CPU and e.self_cpu_time_total > 0:
            rows.append(dict(name=e.key, us=e.self_cpu_time_total / calls, count=e.count / calls))
    return sorted(rows, key=lambda r: -r["us"])[:top]


def _cpu_times(fn, pool, reps: int) -> dict:
    for inputs in pool:
        fn(inputs)
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(pool[i % len(pool)])
        times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    return dict(ms=ms, ms_graph=None, ms_eager=ms, timing="cpu perf_counter", graph_error=None)


class Bench:
    """Collects the rows of one op's benchmark. `device` is "cuda" (timed on the GPU) or "cpu" (smoke run)."""

    def __init__(self, op: str, device: str = "cuda", quick: bool = False, kernels: bool = False):
        self.op, self.device, self.quick, self.kernels = op, torch.device(device), quick, kernels
        self.rows: list[dict] = []
        self.baseline_names: list[str] = []

    def pick(self, full, quick):
        """The full list of problem sizes, or the quick one."""
        return quick if self.quick else full

    def input_pool(self, make_set: Callable[[int], Any], min_sets: int = 2, max_sets: int = 256) -> list:
        """make_set(i) -> one input set (tensors on self.device). Builds sets until they total > 2 x L2
        (on CPU: min_sets)."""
        pool, total = [], 0
        while len(pool) < min_sets or (self.device.type == "cuda" and total <= 2 * L2_BYTES and len(pool) < max_sets):
            pool.append(make_set(len(pool)))
            total += tensor_bytes(pool[-1])
        return pool

    def measure(self, problem: str, pool: list, variants: list[Variant], **params) -> list[dict]:
        """Time every variant on `pool`; append and return one row per variant. `params` (e.g. T=64) are
        stored in each row."""
        reps = 30 if self.quick else 200
        rows = []
        for v in variants:
            if self.device.type == "cuda":
                t = cuda_times(v.fn, pool, reps, graph_replays=5 if self.quick else 20, graph=v.graph)
            else:
                t = _cpu_times(v.fn, pool, max(5, reps // 10))
            row = dict(op=self.op, problem=problem, **params, variant=v.name, baseline=v.baseline, **t,
                       pool_sets=len(pool), pool_mb=round(tensor_bytes(pool) / 2**20, 1))
            seconds = t["ms"] / 1e3
            row["tflops"] = v.flops / seconds / 1e12 if v.flops else None
            row["gbps"] = v.bytes / seconds / 1e9 if v.bytes else None
            on_gpu = self.device.type == "cuda"
            row["frac_flops"] = row["tflops"] / CEILINGS[f"{v.flop_ceiling}_tflops"] if on_gpu and v.flops else None
            row["frac_copy"] = row["gbps"] / (CEILINGS["copy_tbps"] * 1e3) if on_gpu and v.bytes else None
            if self.kernels:
                row["kernels"] = kernel_breakdown(v.fn, pool, on_gpu)
            rows.append(row)
        for b in (r for r in rows if r["baseline"]):
            if b["variant"] not in self.baseline_names:
                self.baseline_names.append(b["variant"])
            for r in rows:
                if r is not b:
                    r[f"x vs {b['variant']}"] = b["ms"] / r["ms"]
        for r in rows:
            print(_row_line(r), flush=True)
            for k in r.get("kernels", ()):
                print(f"      {k['us']:10.1f} us  {k['count']:5.1f}x  {k['name'][:110]}", flush=True)
        self.rows.extend(rows)
        return rows

    def markdown(self) -> str:
        """The rows as a markdown table; `x vs B` = B's time / this row's time (above 1: faster than B)."""
        ratio_cols = [f"x vs {b}" for b in self.baseline_names]
        head = ["problem", "variant", "ms", "ms eager", "TFLOP/s", "% peak", "GB/s", "% copy BW", *ratio_cols]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r["problem"], r["variant"] + (" (baseline)" if r["baseline"] else ""), _fmt(r["ms"], 4),
                     _fmt(r["ms_eager"], 4), _fmt(r["tflops"], 1), _pct(r["frac_flops"]), _fmt(r["gbps"], 0),
                     _pct(r["frac_copy"]), *(_fmt(r.get(c), 2) for c in ratio_cols)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def chart(self, path) -> bool:
        """Grouped bars: time per problem and variant (log scale). False when matplotlib is missing."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        problems = list(dict.fromkeys(r["problem"] for r in self.rows))
        variants = list(dict.fromkeys(r["variant"] for r in self.rows))
        ms = {(r["problem"], r["variant"]): r["ms"] for r in self.rows}
        width = 0.8 / max(1, len(variants))
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(problems) * max(1, len(variants)) / 2), 4.5))
        for i, v in enumerate(variants):
            xs = [p + (i - (len(variants) - 1) / 2) * width for p in range(len(problems))]
            ax.bar(xs, [ms.get((p, v), 0) for p in problems], width, label=v)
        ax.set_xticks(range(len(problems)), problems)
        ax.set_yscale("log")
        ax.set_ylabel("ms per call (lower is better)")
        ax.set_title(f"{self.op} on {device_name(self.device)}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return True


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def _fmt(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _row_line(r: dict) -> str:
    ratios = "  ".join(f"{k}={v:.2f}" for k, v in r.items() if k.startswith("x vs "))
    eager = f" (eager {r['ms_eager']:.4f})" if r["ms_graph"] is not None else ""
    return f"  {r['problem']:<28} {r['variant']:<40} {r['ms']:.4f} ms{eager}  {ratios}"
