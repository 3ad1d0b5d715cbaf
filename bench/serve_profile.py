"""`BENCH_SERVE_PROFILE=1 python -m bench serve`: where an engine step's time goes, per precision.

For each precision: one prefill step (a warm-up prefill first) and a few decode steps at B1 (and the other batches
of BENCH_SERVE_PROFILE_BATCHES, default "1,64", that the run measures) under torch.profiler (CPU + CUDA), summarised
by training/profile.py's summarize_trace with the serving category table below: GPU busy vs idle (the GPU waiting
for the host) per step, GPU time by category (overlapping kernels counted once), kernels and host syncs per step,
the top kernels and the top names of what is left uncategorised. The summaries are printed and stored in the
benchmark's JSON rows (row["profile"]); BENCH_SERVE_PROFILE_TRACES=DIR also keeps the chrome traces there (.json.gz).

Attribution. Kernels are classified by their own names and the host ops and annotations that launched them. The
profiled steps run with labels the engine does not have otherwise (record_function around the Mamba in/out
projections, the attention projections and the rest of each mixer, the shared expert's FP8 linears, the norms, the
lm_head, sampling, FP8 activation quantisation, and the MoE's one-group grouped GEMMs: the shared expert). Our MoE
and router kernels are then known by their own names, before generic host context (the MoE module, GEMM ops): eager
calls bypass the custom ops (_kernel_op.py), so the MoE module is all the context they have, and an unmatched graph
replay has none.

CUDA graphs. Decode is profiled twice: (1) as the engine runs it (graph replays: the honest busy / idle split and
wall time), (2) with the same captured graph bodies run eagerly (_DecodeGraph.run: the same function on the same
buffers, so the same kernels in the same order), where every kernel has its launching op. CUPTI reports the kernels
inside a replay one by one, but they all hang under one cudaGraphLaunch; so each replay's kernels are matched,
position by position and name by name, to the eager run's body and take over its host context. The header says how
many replays matched; an unmatched replay is classified by kernel names only.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from collections import defaultdict

import torch
from torch.autograd.profiler import record_function

import model.serve.fp8 as fp8_module
import nemotron_kernels.ops.moe_experts as moe_module
from training.profile import (
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
    # GEMM / GEMV kernels also run the shared expert
    ("sampling", ("serve/sampling",)),
    ("lm_head", ("serve/lm_head",)),
    ("fp8 activation quantise (projections)", ("serve/fp8_quantize",)),
    ("moe shared expert", (SHARED,)),
    # our MoE and router kernels by their own names, before any host context ("serve/moe", a GEMM op) claims them
    ("router (fp32 gate, top-k)", ("moe_router", "nk::router::")),
    ("moe permute / unpermute / quantise", ("moe_permute", "moe_unpermute", "quantize_fp8", "quantize_rows_fp8",
                                            "rank_in_chunk", "expert_offsets_kernel", "assign_rows", "gather_rows",
                                            "unpermute", "zero_fill_kernel", "permute_one_chunk")),
    # groupproblemshape: the CUTLASS grouped GEMM, whose (often mangled) name has no "grouped_gemm" in it
    ("moe routed experts (grouped GEMM / GEMV)", ("grouped_gemm", "grouped_gemv", "moe_experts", "build_group_args",
                                                  "zero_empty_groups", "grouped_mm", "groupproblemshape")),
    # host context, then generic kernel names
    ("mamba in_proj", ("serve/mamba.in_proj",)),
    ("mamba out_proj", ("serve/mamba.out_proj",)),
    ("ssd scan / state update", ("ssd_scan", "ssd_state_update", "_ssd_", "chunk_scan", "chunk_state",
                                 "state_passing")),
    ("conv1d", ("conv1d",)),
    ("gated rmsnorm", ("gated_rmsnorm",)),
    ("attention q/k/v/o projections", ("serve/attention.proj",)),
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
    gemms = moe_module.grouped_gemm_nt, moe_module.grouped_gemm_fp8_nt

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
    moe_module.grouped_gemm_nt, moe_module.grouped_gemm_fp8_nt = shared(gemms[0], 1), shared(gemms[1], 2)
    for g in runner.graphs.values():
        g.run = body(g)
    try:
        yield
    finally:
        for g in runner.graphs.values():
            g.__dict__.pop("run", None)
        runner.sampler, fp8_module.quantize_rows = sampler, quantize
        moe_module.grouped_gemm_nt, moe_module.grouped_gemm_fp8_nt = gemms
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


def attach_graph_labels(graph_trace: dict, eager_trace: dict) -> dict:
    """The kernels of each graph replay in graph_trace get args["labels"] = the host context of the kernel at the
    same position of one eager graph body in eager_trace, when the replay's kernel names equal the body's.
    Returns {"replays", "matched", "kernels_per_replay"}."""
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
    matched = 0
    for kernels in replays.values():
        kernels.sort(key=lambda e: e["ts"])
        if [e["name"] for e in kernels] == names:
            matched += 1
            for e, ctx in zip(kernels, context):
                e.setdefault("args", {})["labels"] = ctx
    return {"replays": len(replays), "matched": matched, "kernels_per_replay": len(names)}


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
                    f"from it), the rest classified by kernel name only")
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

