"""`BENCH_SERVE_PROFILE=1 python -m bench serve`: where an engine step's time goes, per precision.

For each precision: one prefill step (a warm-up prefill first) and a few decode steps at B1 (and the other batches
of BENCH_SERVE_PROFILE_BATCHES, default "1,64", that the run measures) under torch.profiler (CPU + CUDA), summarised
by training/profile.py's summarize_trace with the serving category table below: GPU busy vs idle (the GPU waiting
for the host) per step, GPU time by category (overlapping kernels counted once), kernels and host syncs per step,
the top kernels and the top names of what is left uncategorised. The summaries are printed and stored in the
benchmark's JSON rows (row["profile"]); BENCH_SERVE_PROFILE_TRACES=DIR also keeps the chrome traces there (.json.gz).

Idle gaps (CUDA; row["profile"]["idle_gaps"]). The idle time of the summary, gap by gap: the intervals of each
step where no kernel, memcpy or memset runs on any stream, by length (under 20 µs: launch-bound stretches), by
cause, and the longest ones with the kernels around them. A gap's cause: QUEUED when the kernel after it had been
launched before it began (the GPU's own latency, not the host's); else SYNCED when a synchronize call (.item(),
.cpu(), an event or stream sync) was blocked as the GPU went idle; else the allocator / host-issued copies / graph
launch / module load when their runtime calls take a quarter of it or more; else HOST (Python, op dispatch, launch
calls). For the host's gaps the report sums the self time of each host op, annotation and runtime call inside
them: what the host was doing while the GPU waited.

Attribution. Kernels are classified by their own names and the host ops and annotations that launched them. The
profiled steps run with labels the engine does not have otherwise (record_function around the Mamba in/out
projections, the attention projections and the rest of each mixer, the shared expert's FP8 linears, the norms, the
lm_head, sampling, FP8 activation quantisation, and the MoE's one-group grouped GEMMs: the shared expert). Our MoE
and router kernels are then known by their own names, before generic host context (the MoE module, GEMM ops): eager
calls bypass the custom ops (_kernel_op.py), so the MoE module is all the context they have, and an unmatched graph
replay has none. The labels of the shared expert and of the Mamba and attention projections come before those names:
the same GEMV kernels run them (weights-only FP8, single-row BF16). At decode sizes moe_experts runs the shared expert
inside moe_decode_gemv's and moe_decode_down's launches, with the routed experts: it then counts as "moe routed
experts".

CUDA graphs. Decode is profiled twice: (1) as the engine runs it (graph replays: the honest busy / idle split and
wall time), (2) with the same captured graph bodies run eagerly (_DecodeGraph.run: the same function on the same
buffers, so the same kernels in the same order), where every kernel has its launching op. CUPTI reports the kernels
inside a replay one by one, but they all hang under one cudaGraphLaunch; so each replay's kernels are matched,
position by position and name by name, to the eager run's body and take over its host context. The header says how
many replays matched; an unmatched replay is classified by kernel names only.
"""
from __future__ import annotations

import bisect
import contextlib
import difflib
import gzip
import itertools
import json
import os
import re
import tempfile
from collections import defaultdict
from typing import NamedTuple

import torch
from torch.autograd.profiler import record_function

import model.serve.fp8 as fp8_module
import nemotron_kernels.ops.moe_experts as moe_module
from training.profile import (
    _host_tree,
    _launches,
    device_events,
    format_summary,
    label_modules,
    summarize_trace,
)

GRAPH_BODY = "serve/graph_body"
SHARED = "serve/shared_expert"

# (category, lower-case substrings of kernel / op / annotation names); the first category (in this order) with a
# key in any of the names wins. The serve/... names are the labels put on for profiling (see label_of).
SERVE_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    # labels that say more than the kernel's name: the FP8 quantise kernel also serves the projections, the grouped
    # GEMM / GEMV kernels also run the shared expert and the projections (W8 and single-row GEMVs)
    ("sampling", ("serve/sampling",)),
    ("lm_head", ("serve/lm_head",)),
    ("fp8 activation quantise (projections)", ("serve/fp8_quantize",)),
    ("moe shared expert", (SHARED,)),
    ("mamba in_proj", ("serve/mamba.in_proj",)),
    ("mamba out_proj", ("serve/mamba.out_proj",)),
    ("attention q/k/v/o projections", ("serve/attention.proj",)),
    # our MoE and router kernels by their own names, before any host context ("serve/moe", a GEMM op) claims them
    # MoeRouterFn: the router's own host op, so its fp32 cast and cuBLAS logits GEMM count here, not as "moe other"
    ("router (fp32 gate, top-k)", ("moe_router", "nk::router::", "moerouterfn")),
    ("moe permute / unpermute / quantise", ("moe_permute", "moe_unpermute", "quantize_fp8", "quantize_rows_fp8",
                                            "rank_in_chunk", "expert_offsets_kernel", "assign_rows", "gather_rows",
                                            "scatter_rows", "unpermute", "zero_fill_kernel", "permute_one_chunk")),
    # groupproblemshape: the CUTLASS grouped GEMM, whose (often mangled) name has no "grouped_gemm" in it;
    # moe_decode_gemv / moe_decode_down: at decode they run the shared expert too, in the same launch (no label can
    # split it)
    ("moe routed experts (grouped GEMM / GEMV)", ("grouped_gemm", "grouped_gemv", "moe_experts", "build_group_args",
                                                  "zero_empty_groups", "grouped_mm", "groupproblemshape",
                                                  "moe_decode_gemv", "moe_decode_down")),
    # host context, then generic kernel names
    ("ssd scan / state update", ("ssd_scan", "ssd_state_update", "_ssd_", "chunk_scan", "chunk_state",
                                 "state_passing")),
    ("conv1d", ("conv1d",)),
    ("gated rmsnorm", ("gated_rmsnorm",)),
    ("attention / decode attention (+ KV page writes)", ("gqa_attention", "gqa_decode", "gqa_attn", "_attn_",
                                                         "flash", "serve/attention")),
    ("rmsnorm", ("rmsnorm", "rms_norm")),
    ("mamba other (dt, A, splits, state copies)", ("serve/mamba",)),
    ("moe other (casts, adds)", ("serve/moe",)),
    ("embedding", ("embedding",)),
    ("other GEMMs", ("aten::mm", "aten::addmm", "aten::linear", "_scaled_mm", "gemm", "nvjet", "cutlass", "cublas",
                     "xmma", "wgmma")),
    ("memcpy / memset", ("memcpy", "memset")),
]


def label_of(name: str, m) -> str | None:
    """The profiling label of a module of NemotronH (None: no label of its own)."""
    kind = type(m).__name__
    leaf = name.rsplit(".", 1)[-1]
    if kind == "RMSNorm":
        return "rmsnorm"
    if kind == "Mamba2Mixer":
        return "serve/mamba"
    if leaf in ("in_proj", "out_proj"):
        return f"serve/mamba.{leaf}"
    if kind == "Attention":
        return "serve/attention"
    if leaf in ("q_proj", "k_proj", "v_proj", "o_proj"):
        return "serve/attention.proj"
    if kind in ("MoE", "FP8MoE"):
        return "serve/moe"
    if leaf in ("shared_experts", "shared_up", "shared_down"):
        return SHARED
    if leaf == "lm_head":
        return "serve/lm_head"
    return None


class _LabelledSampler:
    def __init__(self, sampler):
        self._sampler = sampler

    def __call__(self, *args, **kw):
        with record_function("serve/sampling"):
            return self._sampler(*args, **kw)

    def __getattr__(self, name):
        return getattr(self._sampler, name)


@contextlib.contextmanager
def labels(engine):
    """The profiling labels on the engine's model, sampler, FP8 activation quantisation and decode-graph bodies."""
    runner = engine.runner
    handles = label_modules(runner.model, label_of)
    sampler, quantize = runner.sampler, fp8_module.quantize_rows
    gemms = moe_module.grouped_gemm_nt, moe_module.grouped_gemm_fp8_nt, moe_module.grouped_gemm_w8_nt

    def quantize_rows(*args, **kw):
        with record_function("serve/fp8_quantize"):
            return quantize(*args, **kw)

    def shared(gemm, b_arg):
        """gemm with its one-group calls (b of shape [1, N, K]: the shared expert inside moe_experts /
        moe_experts_fp8) under the shared-expert label: the same kernels run the routed experts."""
        def call(*args):
            if args[b_arg].shape[0] != 1:
                return gemm(*args)
            with record_function(SHARED):
                return gemm(*args)
        return call

    def body(g):
        run = g.run

        def labelled():
            with record_function(GRAPH_BODY):
                run()
        return labelled

    runner.sampler, fp8_module.quantize_rows = _LabelledSampler(sampler), quantize_rows
    moe_module.grouped_gemm_nt, moe_module.grouped_gemm_fp8_nt, moe_module.grouped_gemm_w8_nt = \
        shared(gemms[0], 1), shared(gemms[1], 2), shared(gemms[2], 1)
    for g in runner.graphs.values():
        g.run = body(g)
    try:
        yield
    finally:
        for g in runner.graphs.values():
            g.__dict__.pop("run", None)
        runner.sampler, fp8_module.quantize_rows = sampler, quantize
        moe_module.grouped_gemm_nt, moe_module.grouped_gemm_fp8_nt, moe_module.grouped_gemm_w8_nt = gemms
        for h in handles:
            h.remove()


@contextlib.contextmanager
def graphs_eager(engine):
    """Decode graphs replayed as their eager bodies (the captured function on the same static buffers)."""
    graphs = {size: g.graph for size, g in engine.runner.graphs.items()}
    for g in engine.runner.graphs.values():
        g.graph = None
    try:
        yield
    finally:
        for size, g in engine.runner.graphs.items():
            g.graph = graphs[size]


def record(step, n: int, device: torch.device) -> dict:
    """The chrome trace (as a dict) of step(k) for k = 0..n: step 0 is the profiler's warm-up, 1..n are recorded
    (ProfilerStep# annotations). Each step should end with the GPU idle (an engine step does: it reads its sampled
    tokens back), except with overlapped decode, where a step returns with the next one running: its kernels then
    fall into the next profiled step, so per-step GPU busy time stays right but the last step's is cut off."""
    from torch.profiler import ProfilerActivity, profile, schedule
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=n, repeat=1))
    if cuda:
        torch.cuda.synchronize(device)
    prof.start()
    try:
        for k in range(n + 1):
            step(k)                                    # an engine step ends in its host sync: all kernels done
            prof.step()
    finally:
        prof.stop()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            return json.load(f)


# A replay whose kernel names differ from the eager body's in a few places (the H200's BF16 B1 decode: 544 kernels
# in the graph, 550 in the eager body) is aligned run by run when this share of the longer list lines up.
ALIGN_MIN_SHARE = 0.9


def attach_graph_labels(graph_trace: dict, eager_trace: dict) -> dict:
    """The kernels of each graph replay in graph_trace get args["labels"] = the host context of the kernel at the
    same position of one eager graph body in eager_trace: kernel for kernel when the replay's kernel names equal the
    body's ("matched"), else along the runs of equal names when they cover ALIGN_MIN_SHARE of the longer list
    ("aligned"; kernels outside those runs keep their names only). Returns {"replays", "matched", "aligned",
    "kernels_per_replay"}."""
    _, dev, chains = device_events(eager_trace)
    body = sorted(((e, c) for e, c in zip(dev, chains) if e.get("cat", "").lower() == "kernel" and GRAPH_BODY in c),
                  key=lambda ec: ec[0]["ts"])
    steps = sum(e.get("name", "").startswith("ProfilerStep#") for e in eager_trace.get("traceEvents", [])
                if e.get("ph") == "X" and e.get("cat", "").lower() not in ("gpu_user_annotation",))
    if steps and len(body) % steps == 0:
        body = body[len(body) - len(body) // steps:]                     # the last step's body
    names = [e["name"] for e, _ in body]
    context = [[n for n in c[1:] if not n.startswith("ProfilerStep#")] for _, c in body]
    _, gdev, gchains = device_events(graph_trace)
    replays = defaultdict(list)
    for e, c in zip(gdev, gchains):
        if e.get("cat", "").lower() == "kernel" and c and "graphlaunch" in c[0].lower():
            replays[e.get("args", {}).get("correlation")].append(e)
    matched = aligned = 0
    for kernels in replays.values():
        kernels.sort(key=lambda e: e["ts"])
        got = [e["name"] for e in kernels]
        if got == names:
            matched += 1
            pairs = list(zip(kernels, context))
        else:
            runs = difflib.SequenceMatcher(None, got, names, autojunk=False).get_matching_blocks()
            if sum(r.size for r in runs) < ALIGN_MIN_SHARE * max(len(got), len(names)):
                continue
            aligned += 1
            pairs = [(kernels[r.a + i], context[r.b + i]) for r in runs for i in range(r.size)]
        for e, ctx in pairs:
            e.setdefault("args", {})["labels"] = ctx
    return {"replays": len(replays), "matched": matched, "aligned": aligned, "kernels_per_replay": len(names)}


# --- idle gaps: where, and behind which host work, the GPU waits ---------------------------------------------------

class Span(NamedTuple):
    """One interval of a profiled timeline, in µs. kind: "gpu" (a kernel, memcpy or memset, any stream), "call" (a
    CUDA runtime / driver call), "op" (a host op or record_function annotation) or "step" (a ProfilerStep#
    annotation: a window to find gaps in, and a host op too). thread: the host thread (ops nest within theirs).
    For "gpu": context = the host chain that launched it, innermost first; launched = when its launch call
    returned (None: unknown)."""
    start: float
    end: float
    name: str
    kind: str
    thread: object = 0
    context: tuple = ()
    launched: float | None = None


QUEUED = "GPU-side (next kernel already launched)"
SYNCED = "after a host sync (queue ran dry)"
HOST = "host between launches (Python, dispatch)"
# host calls that block until the GPU is done (torch's .item() and blocking copies end in a stream sync), and how
# far before a gap one may return and still be its cause (GPU times are mapped onto the host clock: skew assumed)
WAITS, WAIT_SLACK_US = ("synchronize",), 5.0
# for gaps whose next kernel the host had not launched yet and that no wait preceded: the cause whose runtime calls
# (lower-case substrings) take the most, and at least 1/4, of the gap
GAP_CAUSES: list[tuple[str, tuple[str, ...]]] = [
    ("allocator (cudaMalloc / cudaFree)", ("cudamalloc", "cudafree", "cumemalloc", "cumemfree", "cumemcreate",
                                           "cumemmap", "cumemunmap", "cumemrelease", "cudahostalloc")),
    ("host-issued copies (cudaMemcpy / cudaMemset)", ("memcpy", "memset")),
    ("CUDA graph launch / capture", ("graphlaunch", "capture", "graphinstantiate", "graphupload")),
    ("module load (a kernel's first launch)", ("moduleload", "libraryload", "getfunction")),
]
GAP_EDGES_US = (3.0, 20.0, 100.0, 1000.0)             # gaps by length; under 20 µs: launch-bound stretches
SHORT_US = 20.0


def _cause(gap: dict) -> str:
    if gap["launched"] is not None and gap["launched"] <= gap["start"]:
        return QUEUED
    if gap["waited"]:
        return SYNCED
    calls = {n.lower(): us for n, us in gap["calls"].items()}
    us, cause = max((sum(t for n, t in calls.items() if any(k in n for k in keys)), c) for c, keys in GAP_CAUSES)
    return cause if us >= gap["us"] / 4 else HOST


def idle_gaps(spans: list[Span]) -> list[dict]:
    """The intervals of the step windows where no GPU span runs (all streams together), in time order: {"start",
    "end", "us", "before", "after" (the kernels' names; None at a step's start / end), "launch" (the host chain
    that launched "after"), "launched" (when), "calls" {runtime / driver call: µs inside the gap}, "host" {host
    op, annotation or call: its self time inside the gap, µs}, "waited" (the blocking call, see WAITS, that was
    running when the GPU went idle, or None), "cause"}. The cause: QUEUED when "after" was launched before the gap
    began; SYNCED when "waited"; else the GAP_CAUSES rule; else HOST."""
    gpu = sorted((s for s in spans if s.kind == "gpu"), key=lambda s: s.start)
    host = [s for s in spans if s.kind != "gpu"]
    gaps = []

    def gap(start, end, before, after):
        gaps.append({"start": start, "end": end, "us": end - start, "before": before and before.name,
                     "after": after and after.name, "launch": list(after.context) if after else [],
                     "launched": after and after.launched, "calls": defaultdict(float), "host": defaultdict(float),
                     "waited": None})

    for lo, hi in sorted((s.start, s.end) for s in host if s.kind == "step"):
        cursor, prev = lo, None
        for k in gpu:
            if k.start >= hi:
                break
            if k.end <= lo:
                continue
            if k.start > cursor:
                gap(cursor, k.start, prev, k)
            if k.end > cursor:
                cursor, prev = min(k.end, hi), k
        if cursor < hi:
            gap(cursor, hi, prev, None)
    # host time inside each gap: a span's overlap, less its children's (self time)
    parent = _host_tree([{"ts": s.start, "dur": s.end - s.start, "tid": s.thread} for s in host])
    starts, ends = [g["start"] for g in gaps], [g["end"] for g in gaps]
    for i, s in enumerate(host):
        j = bisect.bisect_right(ends, s.start)
        while j < len(gaps) and gaps[j]["start"] < s.end:
            g = gaps[j]
            us = min(s.end, g["end"]) - max(s.start, g["start"])
            g["host"][s.name] += us
            if parent[i] is not None:
                g["host"][host[parent[i]].name] -= us
            if s.kind == "call":
                g["calls"][s.name] += us
            j += 1
        if s.kind == "call" and any(k in s.name.lower() for k in WAITS):
            j = bisect.bisect_right(starts, s.start)                   # the first gap to begin after the call
            if j < len(gaps) and gaps[j]["start"] <= s.end + WAIT_SLACK_US:
                gaps[j]["waited"] = s.name
    for g in gaps:
        g["calls"], g["host"] = (dict(sorted(((n, t) for n, t in d.items() if t > 0.01), key=lambda nt: -nt[1]))
                                 for d in (g["calls"], g["host"]))
        g["cause"] = _cause(g)
    return gaps


def _short(name: str | None, width: int = 40) -> str:
    """A kernel's name without return type, namespaces, template and argument lists (mangled names: cut)."""
    if name is None:
        return "-"
    n = name.removeprefix("void ").replace("(anonymous namespace)::", "")
    n = re.split(r"[<(]", n, maxsplit=1)[0] or n
    return n.rsplit("::", 1)[-1][:width]


def _host_name(name: str) -> str:
    return "ProfilerStep (engine, outside any op)" if name.startswith("ProfilerStep#") else name


def trace_spans(trace: dict) -> list[Span]:
    """The Spans of a chrome trace (torch.profiler's export_chrome_trace): host events of the threads that launch
    GPU work (all host events when none does)."""
    host, dev, chains = device_events(trace)
    launch = _launches(host)                                             # correlation id -> index into host
    launched = [host[launch[c]] if (c := e.get("args", {}).get("correlation")) in launch else None for e in dev]
    threads = {(e.get("pid"), e.get("tid")) for e in launched if e is not None}
    spans = [Span(e["ts"], e["ts"] + e.get("dur", 0), e.get("name", "?"), "gpu", context=tuple(c),
                  launched=None if ev is None else ev["ts"] + ev.get("dur", 0))
             for e, c, ev in zip(dev, chains, launched)]
    for e in host:
        if threads and (e.get("pid"), e.get("tid")) not in threads:
            continue
        kind = "step" if e.get("name", "").startswith("ProfilerStep#") else \
            "call" if e.get("cat", "").lower() in ("cuda_runtime", "cuda_driver") else "op"
        spans.append(Span(e["ts"], e["ts"] + e.get("dur", 0), e.get("name", "?"), kind, (e.get("pid"), e.get("tid"))))
    return spans


def gap_report(spans: list[Span], top: int = 12) -> dict:
    """Per step (ms, gaps): idle time by gap length, by cause, the host's self time inside the gaps it caused (not
    QUEUED), and the top gaps by length with the kernels around them and the host work inside them."""
    gaps = idle_gaps(spans)
    n = max(1, sum(s.kind == "step" for s in spans))
    edges = (0.0,) + GAP_EDGES_US + (float("inf"),)
    by_length = []
    for lo, hi in itertools.pairwise(edges):
        sel = [g["us"] for g in gaps if lo <= g["us"] < hi]
        label = f"{lo:g}-{hi:g} µs" if hi < float("inf") else f">= {lo:g} µs"
        by_length.append([label, len(sel) / n, sum(sel) / n / 1e3])
    causes, host = defaultdict(lambda: [0, 0.0]), defaultdict(float)
    for g in gaps:
        causes[g["cause"]][0] += 1
        causes[g["cause"]][1] += g["us"]
        if g["cause"] != QUEUED:
            for name, us in g["host"].items():
                host[_host_name(name)] += us
    short = [g["us"] for g in gaps if g["us"] < SHORT_US]
    return {
        "steps": n, "gaps_per_step": len(gaps) / n, "ms_per_step": sum(g["us"] for g in gaps) / n / 1e3,
        "short_us": SHORT_US, "short_per_step": [len(short) / n, sum(short) / n / 1e3],
        "long_per_step": [(len(gaps) - len(short)) / n, (sum(g["us"] for g in gaps) - sum(short)) / n / 1e3],
        "by_length": by_length,
        "by_cause": [[c, k / n, us / n / 1e3] for c, (k, us) in sorted(causes.items(), key=lambda kv: -kv[1][1])],
        "host_top": [[name, us / n / 1e3] for name, us in sorted(host.items(), key=lambda kv: -kv[1])[:top]],
        "top": [{"us": g["us"], "before": _short(g["before"]), "after": _short(g["after"]), "cause": g["cause"],
                 "launch": " < ".join(x for x in g["launch"][:4] if not x.startswith("ProfilerStep#")) or "-",
                 "host": [[_host_name(h), us] for h, us in list(g["host"].items())[:3]]}
                for g in sorted(gaps, key=lambda g: -g["us"])[:top]]}


def format_gaps(r: dict) -> str:
    (ns, ms_s), (nl, ms_l) = r["short_per_step"], r["long_per_step"]
    head = (f"idle gaps: {r['ms_per_step']:.2f} ms/step in {r['gaps_per_step']:,.0f} gaps/step; under "
            f"{r['short_us']:g} µs {ns:,.0f} gaps {ms_s:.2f} ms (launch-bound stretches, GPU latency), longer "
            f"{nl:,.0f} gaps {ms_l:.2f} ms")
    lines = [head, f"  {'by length':48s} {'gaps/step':>10s} {'ms/step':>9s}"]
    lines += [f"  {label:48s} {k:10,.1f} {ms:9.3f}" for label, k, ms in r["by_length"] if k]
    lines.append(f"  {'by cause':48s} {'gaps/step':>10s} {'ms/step':>9s}")
    lines += [f"  {c[:48]:48s} {k:10,.1f} {ms:9.3f}" for c, k, ms in r["by_cause"]]
    if r["host_top"]:
        lines.append("host self time inside the gaps the host caused (ms/step):")
        lines += [f"  {ms:8.3f}  {name[:100]}" for name, ms in r["host_top"]]
    if r["top"]:
        lines.append("longest gaps (µs: kernel before -> kernel after | cause | launched by | host inside, µs):")
        lines += [f"  {g['us']:9.1f}  {g['before']} -> {g['after']} | {g['cause'].split(' (')[0]} | {g['launch']} | "
                  + ", ".join(f"{h} {us:.1f}" for h, us in g["host"]) for g in r["top"]]
    return "\n".join(lines)


def _keep(trace: dict, name: str) -> str | None:
    folder = os.environ.get("BENCH_SERVE_PROFILE_TRACES")
    if not folder:
        return None
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.json.gz")
    with gzip.open(path, "wt", compresslevel=6) as f:
        json.dump(trace, f)
    return path


def _summary(trace: dict, device: torch.device, title: str, tokens: int, **extra) -> dict:
    s = summarize_trace(trace, device.type, top=12, categories=SERVE_CATEGORIES)
    s.update(title=title, tokens_per_step=tokens, **extra)
    text = format_summary(s)
    if device.type == "cuda":
        s["idle_gaps"] = gap_report(trace_spans(trace))
        text += "\n" + format_gaps(s["idle_gaps"])
    print("\n".join("    " + line for line in text.splitlines()), flush=True)
    return s


def _tag(label: str, what: str) -> str:
    return f"serve-profile-{label}-{what}".replace(" ", "").replace("@", "at")


def profile_prefill(engine, prompts, params, label: str, device: torch.device) -> dict:
    """One prefill step of prompts[1] after a warm-up prefill of prompts[0] (one prompt per step: the engine's
    max_num_batched_tokens is the prompt length)."""
    def step(k):
        engine.add_request(prompts[k], params)
        while engine.has_unfinished():
            engine.step()

    with labels(engine):
        trace = record(step, 1, device)
    kept = _keep(trace, _tag(label, f"prefill{len(prompts[1])}"))
    return _summary(trace, device, f"[{label}] profile: prefill {len(prompts[1])} (one engine step, eager)",
                    len(prompts[1]), trace_file=kept)


def profile_decode(engine, B: int, n: int, label: str, device: torch.device, what: str) -> dict:
    """n decode steps of the engine's B running sequences as the engine runs them (CUDA graphs when captured),
    then n more with the graph bodies run eagerly; {"graphs": summary, "eager": summary} (no "graphs" when the
    engine has no graphs)."""
    out = {}
    with labels(engine):
        has_graphs = any(g.graph is not None for g in engine.runner.graphs.values())
        graph_trace = record(lambda k: engine.step(), n, device) if has_graphs else None
        with graphs_eager(engine):
            eager_trace = record(lambda k: engine.step(), n, device)
    how = "graph bodies run eagerly" if engine.runner.graphs else "eager (no CUDA graphs: " \
        f"{engine.runner.cuda_graph_status})"
    if graph_trace is not None:
        match = attach_graph_labels(graph_trace, eager_trace)
        if match["replays"] == 0:
            note = ("the profiler saw no kernels inside the graph replays: categories below are of the launch "
                    "gaps only; see the eager profile")
        else:
            note = (f"kernels inside {match['replays']} graph replays of {match['kernels_per_replay']} kernels: "
                    f"{match['matched']} matched kernel for kernel to the eager graph body (host context taken "
                    f"from it), {match['aligned']} aligned to it along equal names, the rest classified by kernel "
                    f"name only")
        kept = _keep(graph_trace, _tag(label, f"{what}-graphs"))
        out["graphs"] = _summary(graph_trace, device, f"[{label}] profile: {what}, CUDA graphs on (as served); "
                                 f"{note}", B, graph_match=match, trace_file=kept)
    kept = _keep(eager_trace, _tag(label, f"{what}-eager"))
    if device.type == "cuda":
        how += " (GPU time per kernel as in the graphs; idle time inflated by launches)"
    out["eager"] = _summary(eager_trace, device, f"[{label}] profile: {what}, {how}", B, trace_file=kept)
    return out


def categories_table(summaries: dict[str, dict]) -> str:
    """Side-by-side ms/step per category of several summaries (e.g. bf16 vs fp8 of one phase)."""
    cols = list(summaries)
    cats = list(dict.fromkeys(c for s in summaries.values() for c in s["categories_ms_per_step"]))
    lines = [f"    {'category':48s} " + " ".join(f"{c:>12s}" for c in cols)]
    for cat in cats:
        lines.append(f"    {cat:48s} " + " ".join(f"{summaries[c]['categories_ms_per_step'].get(cat, 0.0):12.3f}"
                                                  for c in cols))
    lines.append(f"    {'wall':48s} " + " ".join(f"{summaries[c]['wall_ms_per_step']:12.3f}" for c in cols))
    return "\n".join(lines)

