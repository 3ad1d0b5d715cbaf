"""`--profile N`: torch.profiler over the last N optimizer steps of a run (the steps before are warm-up, the one
just before the window the profiler's own warm-up), written into the run's output directory:

  profile.txt            key_averages() table, top 40 rows by self device (CUDA) time, or by self CPU time on CPU
  profile_summary.json   time per step by category (also printed), the top names of "other", host syncs
  trace.json.gz          the chrome trace (chrome://tracing, ui.perfetto.dev), kept only when small

Categories come from the chrome trace: on CUDA every kernel / memcpy / memset is classified by its own name and
the names of the host ops and annotations that launched it (the first matching category below wins), and the
GPU's busy time is split exclusively (overlapping kernels count once), so the categories plus "idle" (the GPU
waiting for the host: launch overhead, Python, syncs) add up to the step's wall time. On CPU each host op's self
time is classified the same way and the rest of the step (Python outside any torch op) is "host python".
Unknown names go to "other"; its top names are printed so the rules below can be refined.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import torch

# (category, lower-case substrings of kernel / op / annotation names); first match over the category order wins.
# The train/... names are record_function labels of trainer.py; rmsnorm labels come from label_norms().
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("optimizer (adamw, zero_grad, balancer)", ("optimizer.step", "optimizer.zero_grad", "adam", "train/balancer")),
    ("grad clip", ("train/clip_grad_norm",)),
    ("fsdp (param casts, all-gather, reduce-scatter)", ("fsdp", "postbackward", "prebackward", "nccl", "c10d",
                                                        "all_gather", "reduce_scatter", "allreduce", "all_reduce",
                                                        "all_to_all")),
    ("loss (chunked cross-entropy)", ("chunkedcrossentropy", "train/cross_entropy")),
    ("aux loss (sequence balance)", ("train/aux_loss",)),
    ("moe experts (grouped gemm, permute)", ("moeexperts", "moe_experts", "grouped_gemm", "moe_permute",
                                             "moe_unpermute", "grouped_mm")),
    ("router", ("router",)),
    ("ssd_scan (mamba)", ("ssd_scan", "ssdscan", "_ssd_", "chunk_scan", "chunk_state", "state_passing")),
    ("conv1d", ("conv1d",)),
    ("attention", ("gqa_attention", "gqaattention", "gqa_attn", "_attn_", "attention", "flash")),
    ("norm (rmsnorm, gated rmsnorm)", ("rmsnorm", "rms_norm", "layer_norm")),
    ("matmul / linear", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "gemm", "nvjet",
                         "xmma", "cublas", "cutlass", "wgmma")),
    ("data / memcpy / memset", ("train/data", "memcpy", "memset")),
]
OTHER = "elementwise / other"
IDLE = {"cuda": "idle (GPU waiting for the host)", "cpu": "host python (outside torch ops)"}
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
MAX_TRACE_GZ = 15 << 20          # bytes: the device machine returns files up to 16 MiB


def classify(names: list[str], categories: list[tuple[str, tuple[str, ...]]] | None = None) -> str:
    """The first category (in table order) with a key that is a substring of any of the names (lower-cased)."""
    low = [n.lower() for n in names]
    for category, keys in (CATEGORIES if categories is None else categories):
        if any(k in n for n in low for k in keys):
            return category
    return OTHER


def _host_tree(events: list[dict]) -> dict[int, int | None]:
    """Parent (an index into events, or None) of every host event, by time nesting within its thread."""
    parent: dict[int, int | None] = {}
    by_thread = defaultdict(list)
    for i, e in enumerate(events):
        by_thread[(e.get("pid"), e.get("tid"))].append(i)
    for idx in by_thread.values():
        idx.sort(key=lambda i: (events[i]["ts"], -events[i].get("dur", 0)))
        stack: list[int] = []
        for i in idx:
            ts = events[i]["ts"]
            while stack and events[stack[-1]]["ts"] + events[stack[-1]].get("dur", 0) <= ts:
                stack.pop()
            parent[i] = stack[-1] if stack else None
            stack.append(i)
    return parent


def _launches(host: list[dict]) -> dict:
    """correlation id -> index of the host runtime / driver call that launched it (cudaLaunchKernel, ...)."""
    launch = {}
    for i, e in enumerate(host):
        corr = e.get("args", {}).get("correlation")
        if corr is not None and e.get("cat", "").lower() in ("cuda_runtime", "cuda_driver"):
            launch[corr] = i
    return launch


def device_events(trace: dict) -> tuple[list[dict], list[dict], list[list[str]]]:
    """(host events, device events, launch chain of each device event) of a chrome trace: the chain names the host
    events that launched it, innermost first (cudaLaunchKernel < the op < the annotations around it < ...); a kernel
    whose launch is not in the trace gets []. Extra names for a device event may be put in its args["labels"]
    (e.g. the host context of the eager twin of a CUDA-graph kernel): they come right after its own name."""
    xs = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "ts" in e]
    dev = [e for e in xs if e.get("cat", "").lower() in DEVICE_CATS]
    host = [e for e in xs if e.get("cat", "").lower() not in DEVICE_CATS + ("gpu_user_annotation",)]
    parent = _host_tree(host)
    launch = _launches(host)
    chains = []
    for e in dev:
        i, names = launch.get(e.get("args", {}).get("correlation")), []
        while i is not None:
            names.append(host[i]["name"])
            i = parent[i]
        chains.append(names)
    return host, dev, chains


def summarize_trace(trace: dict, device: str, top: int = 10,
                    categories: list[tuple[str, tuple[str, ...]]] | None = None) -> dict:
    """Per-step time by category from a chrome trace (torch.profiler's export_chrome_trace) of profiled steps
    marked by ProfilerStep#k annotations. device: "cuda" (classify kernels) or "cpu" (classify host self time).
    categories: the (name, keys) table, first match wins (default: CATEGORIES, the training loop's)."""
    categories = CATEGORIES if categories is None else categories
    xs = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "ts" in e]
    dev = [e for e in xs if e.get("cat", "").lower() in DEVICE_CATS]
    host = [e for e in xs if e.get("cat", "").lower() not in DEVICE_CATS + ("gpu_user_annotation",)]
    steps = [e for e in host if e.get("name", "").startswith("ProfilerStep#")]
    if not steps:
        raise ValueError("the trace holds no ProfilerStep# annotations")
    lo, hi = min(e["ts"] for e in steps), max(e["ts"] + e["dur"] for e in steps)
    n_steps = len(steps)
    wall = sum(e["dur"] for e in steps)                                     # µs
    parent = _host_tree(host)

    def chain(i: int | None) -> list[str]:
        names = []
        while i is not None:
            names.append(host[i]["name"])
            i = parent[i]
        return names

    cats: dict[str, float] = defaultdict(float)
    other: dict[str, float] = defaultdict(float)
    out: dict = {"device": device, "steps": n_steps}
    if device == "cuda":
        launch = _launches(host)
        cursor, busy = lo, 0.0
        kernels: dict[str, float] = defaultdict(float)
        for e in sorted(dev, key=lambda e: e["ts"]):
            start, end = max(e["ts"], cursor, lo), min(e["ts"] + e.get("dur", 0), hi)
            if end <= start:
                continue
            cursor = end
            busy += end - start
            src = launch.get(e.get("args", {}).get("correlation"))
            names = [e["name"]] + list(e.get("args", {}).get("labels", ())) + chain(src)
            cat = classify(names, categories)
            cats[cat] += end - start
            kernels[e["name"][:120]] += end - start
            if cat == OTHER:
                op = next((n for n in names[1:] if not n.startswith(("cuda", "cu"))), "?")
                other[f"{op} | {e['name'][:90]}"] += end - start
        cats[IDLE[device]] = wall - busy
        out["device_busy_ms_per_step"] = busy / n_steps / 1e3
        out["kernels_per_step"] = sum(lo <= e["ts"] < hi for e in dev) / n_steps
        out["kernels_top"] = [[k, v / n_steps / 1e3] for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:top]]
        syncs = [i for i, e in enumerate(host) if "synchronize" in e.get("name", "").lower()
                 and e.get("cat", "").lower() in ("cuda_runtime", "cuda_driver") and lo <= e["ts"] < hi]
        callers: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for i in syncs:
            key = " < ".join(n for n in chain(i)[:5] if not n.startswith("ProfilerStep#"))
            callers[key][0] += 1
            callers[key][1] += host[i].get("dur", 0)
        out["host_syncs"] = {
            "calls_per_step": len(syncs) / n_steps,
            "ms_per_step": sum(host[i].get("dur", 0) for i in syncs) / n_steps / 1e3,
            "by_caller": [[k, c / n_steps, t / n_steps / 1e3]
                          for k, (c, t) in sorted(callers.items(), key=lambda kv: -kv[1][1])[:top]]}
    else:
        children = defaultdict(float)
        for i, p in parent.items():
            if p is not None:
                children[p] += host[i].get("dur", 0)
        for i, e in enumerate(host):
            names = chain(i)
            if not names[-1].startswith("ProfilerStep#"):
                continue                                                     # outside the profiled steps
            self_t = max(0.0, e.get("dur", 0) - children[i])
            cat = IDLE[device] if len(names) == 1 else classify(names, categories)
            cats[cat] += self_t
            if cat == OTHER:
                other[e["name"]] += self_t
    out["wall_ms_per_step"] = wall / n_steps / 1e3
    order = [c for c, _ in categories] + [OTHER, IDLE[device]]
    out["categories_ms_per_step"] = {c: cats[c] / n_steps / 1e3 for c in order if c in cats}
    out["other_top"] = [[k, v / n_steps / 1e3] for k, v in sorted(other.items(), key=lambda kv: -kv[1])[:top]]
    return out


def format_summary(s: dict) -> str:
    wall = s["wall_ms_per_step"]
    head = f"profile: {s['steps']} step(s) on {s['device']}, {wall:.1f} ms/step wall"
    if "device_busy_ms_per_step" in s:
        busy = s["device_busy_ms_per_step"]
        hs = s["host_syncs"]
        head += (f", GPU busy {busy:.1f} ms ({100 * busy / max(wall, 1e-9):.1f}%), "
                 f"{s['kernels_per_step']:.0f} kernels/step, host syncs {hs['calls_per_step']:.1f}/step "
                 f"({hs['ms_per_step']:.1f} ms blocked)")
    if s.get("tokens_per_step"):
        head += f", {s['tokens_per_step'] / (wall / 1e3):,.0f} tok/s"
    if s.get("title"):
        head = f"{s['title']}\n{head}"
    lines = [head, f"  {'category':48s} {'ms/step':>9s} {'share':>7s}"]
    for c, ms in sorted(s["categories_ms_per_step"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {c:48s} {ms:9.2f} {100 * ms / max(wall, 1e-9):6.1f}%")
    total = sum(s["categories_ms_per_step"].values())
    lines.append(f"  {'total':48s} {total:9.2f} {100 * total / max(wall, 1e-9):6.1f}%")
    if s["other_top"]:
        lines.append(f'top names of "{OTHER}" (ms/step):')
        lines += [f"  {ms:8.2f}  {name}" for name, ms in s["other_top"]]
    if s.get("kernels_top"):
        lines.append("top kernels by GPU time (ms/step):")
        lines += [f"  {ms:8.3f}  {name}" for name, ms in s["kernels_top"]]
    for caller, calls, ms in s.get("host_syncs", {}).get("by_caller", []):
        if caller == s["host_syncs"]["by_caller"][0][0]:
            lines.append("host syncs by caller (calls/step, ms/step blocked):")
        lines.append(f"  {calls:5.1f} {ms:8.2f}  {caller}")
    return "\n".join(lines)


class StepProfiler:
    """Profiles optimizer steps [first, first + n) (0-based); step first - 1 is the profiler's warm-up.
    The trainer calls begin(step) before a step and end(step) after it (before evaluation / checkpoints)."""

    def __init__(self, n: int, first: int, out_dir: str | os.PathLike, device: torch.device, model=None,
                 tokens_per_step: int | None = None, log=print):
        self.n, self.first, self.out_dir, self.log = n, first, Path(out_dir), log
        self.cuda = device.type == "cuda"
        self.model, self.tokens_per_step = model, tokens_per_step
        self.prof, self.hooks, self.summary = None, [], None

    def _sync(self) -> None:
        if self.cuda:
            with torch.autograd.profiler.record_function("profile/window_sync"):   # shows as this profiler's own
                torch.cuda.synchronize()

    def begin(self, step: int) -> None:
        if step != self.first - 1:
            return
        from torch.profiler import ProfilerActivity, profile, schedule
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.prof = profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=self.n, repeat=1))
        self.hooks = label_norms(self.model) if self.model is not None else []
        self._sync()
        self.prof.start()

    def end(self, step: int) -> None:
        if self.prof is None or not self.first - 1 <= step < self.first + self.n:
            return
        if step in (self.first - 1, self.first + self.n - 1):
            self._sync()                      # the window starts with an idle GPU and ends with all its kernels
        self.prof.step()
        if step == self.first + self.n - 1:
            self.prof.stop()
            for h in self.hooks:
                h.remove()
            self.summary = self.write()
            self.prof = None

    def write(self) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        avgs = self.prof.key_averages()
        key = "self_cpu_time_total"
        if self.cuda:
            key = "self_device_time_total" if avgs and hasattr(avgs[0], "self_device_time_total") \
                else "self_cuda_time_total"
        table = avgs.table(sort_by=key, row_limit=40, max_name_column_width=90)
        (self.out_dir / "profile.txt").write_text(table + "\n")
        raw = self.out_dir / "trace.json"
        self.prof.export_chrome_trace(str(raw))
        with open(raw) as f:
            trace = json.load(f)
        summary = summarize_trace(trace, "cuda" if self.cuda else "cpu")
        summary["tokens_per_step"] = self.tokens_per_step
        gz = self.out_dir / "trace.json.gz"
        with open(raw, "rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()
        summary["trace"] = gz.name if gz.stat().st_size <= MAX_TRACE_GZ else None
        if summary["trace"] is None:
            self.log(f"trace.json.gz is {gz.stat().st_size / 2**20:.0f} MiB (> {MAX_TRACE_GZ >> 20} MiB): not kept; "
                     f"profile fewer steps for a trace")
            gz.unlink()
        (self.out_dir / "profile_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        self.log(format_summary(summary))
        self.log(f"profile: {self.out_dir / 'profile.txt'}, {self.out_dir / 'profile_summary.json'}"
                 + (f", {gz}" if summary["trace"] else ""))
        return summary


def label_modules(model, label_of) -> list:
    """record_function(label_of(qualified name, module)) around the forward of every module for which it returns a
    label (not None), so the kernels of plain PyTorch ops inside it can be told apart; returns the hook handles."""
    from torch.autograd.profiler import record_function

    def pre(mod, args):
        mod.__dict__.setdefault("_profile_rf", []).append(record_function(mod._profile_label))
        mod._profile_rf[-1].__enter__()

    def post(mod, args, output):
        stack = mod.__dict__.get("_profile_rf")
        if stack:
            stack.pop().__exit__(None, None, None)

    handles = []
    for name, m in model.named_modules():
        label = label_of(name, m)
        if label is None:
            continue
        m._profile_label = label
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return handles


def label_norms(model) -> list:
    """record_function("rmsnorm") around the forward of every RMSNorm module (the norms are plain PyTorch ops
    that would otherwise be anonymous elementwise kernels); returns the hook handles."""
    return label_modules(model, lambda name, m: "rmsnorm" if type(m).__name__ == "RMSNorm" else None)
