"""End-to-end serving: the full Nemotron 3 Nano config with random weights on one GPU, our engine (BF16, then
selective FP8) beside transformers' NemotronHForCausalLM on the same weight tensors (shared, not copied).

Figures (issue #6):
  prefill 8K        one 8192-token prompt, tokens/s (one engine step: max_num_batched_tokens = 8192)
  decode B@8K       ms per engine step with B = 1, 64, 256 sequences of 8K context each decoding one token
                    (wall time between the returns of consecutive engine.step calls, the GPU synchronised once
                    before them: scheduling + graph replay / forward + sampling + the one host sync; with
                    overlapped decode a call launches the next step before it reads the last, so this is the
                    step time the GPU and the host together sustain)
  serve 256x8K/1K   256 concurrent requests of 8K random prompt tokens, 1K output tokens each: output tokens/s
Each is printed against its floors: weight streaming (bytes of weights the step touches / 4.19 TB/s; routed
experts touched = E(1 - (1 - k/E)^tokens) per MoE layer for uniform routing) plus the cache (KV pages read,
Mamba states read + written), and compute (useful flops / 789 TFLOP/s bf16, FP8 GEMMs / 1429); rows keep both
ratios: x_over_floor (weights + cache) and x_over_weight_floor (the weights alone, #6's definition: it leaves out
the KV pages read and the Mamba states read and written, ~15% more bytes at B64 and ~60% at B256 with 8K contexts).

transformers: prefill = one forward with logits_to_keep=1; decode = one cached forward step at batch B, its cache
made by prefilling one 8K row and repeating its tensors B times (the B decode tokens differ, so the rows route to
different experts). Its 256x8K/1K throughput is estimated from those two measurements
(static batching: 256 prefills + 1024 decode steps) and labelled so.

`python -m bench serve --cpu` smoke-runs all of it with the tiny preset on the CPU (small sizes).
To fit one device call, parts can be picked by environment: BENCH_SERVE_BATCHES=1,64 (decode batches),
BENCH_SERVE_PRECISIONS=bf16 (or fp8, or both; fp8kv: selective FP8 plus e4m3 KV pages with device-computed
scales and FP8 prefill attention), BENCH_SERVE_HF=0 (no transformers baseline),
BENCH_SERVE_THROUGHPUT=0 (no 256-request run). BENCH_SERVE_OVERLAP=0 turns overlapped decode off (1 or unset:
the engine's default, on with CUDA graphs); =ab times each decode batch both ways in turn on the same
sequences (rows "ours <precision> sync" and "... overlapped"): an A/B of EngineConfig.overlap_decode in one run.

BENCH_SERVE_PROFILE=1: also profile (torch.profiler, CPU + CUDA) one prefill step and a few decode steps at each
batch of BENCH_SERVE_PROFILE_BATCHES (default 1,64; those the run measures) per precision, print where the time goes
(GPU busy / idle, GPU time by category, kernels and host syncs per step, the idle time gap by gap with its
causes) and store it in the rows ("profile"); decode twice: as served (CUDA graphs) and with the graph bodies run
eagerly. See bench/serve_profile.py.
"""
from __future__ import annotations

import gc
import os
import statistics
import time

import torch

from model.config import NemotronHConfig
from model.nemotron_h import MoE, build_model
from model.serve import EngineConfig, LLMEngine, SamplingParams
from model.serve.fp8 import FP8MoE, fp8_plan, quantize_model_fp8

from .harness import CEILINGS, Bench

HF = "transformers NemotronHForCausalLM"


class Sizes:
    def __init__(self, on_gpu: bool, quick: bool):
        if on_gpu:
            self.preset, self.prefill, self.ctx, self.batches = "nemotron3-nano-30b-a3b", 8192, 8192, (1, 64, 256)
            self.serve_n, self.serve_in, self.serve_out = 256, 8192, 1024
            self.steps, self.reps = (10, 2) if quick else (30, 5)
        else:
            self.preset, self.prefill, self.ctx, self.batches = "tiny", 64, 64, (1, 4)
            self.serve_n, self.serve_in, self.serve_out = 8, 32, 8
            self.steps, self.reps = 3, 2
        if quick and on_gpu:
            self.serve_n, self.serve_out = 64, 256
        if os.environ.get("BENCH_SERVE_BATCHES"):
            self.batches = tuple(int(b) for b in os.environ["BENCH_SERVE_BATCHES"].split(","))
        self.precisions = tuple(os.environ.get("BENCH_SERVE_PRECISIONS", "bf16,fp8").split(","))
        self.hf = os.environ.get("BENCH_SERVE_HF", "1") != "0"
        self.throughput = os.environ.get("BENCH_SERVE_THROUGHPUT", "1") != "0"
        overlap = os.environ.get("BENCH_SERVE_OVERLAP", "")
        self.overlap_ab = overlap == "ab"
        self.overlap = {"0": False, "1": True}.get(overlap)
        self.profile = os.environ.get("BENCH_SERVE_PROFILE", "0") not in ("", "0")
        wanted = os.environ.get("BENCH_SERVE_PROFILE_BATCHES", "1,64")
        self.profile_batches = tuple(b for b in (int(x) for x in wanted.split(",") if x) if b in self.batches)
        self.profile_steps = 5 if on_gpu else 2
        # decode steps a sequence takes beyond the timed ones: profiling (warm-up + steps, twice) and the eager
        # step that counts the experts touched
        self.extra_steps = 2 * (self.profile_steps + 1) + 2 if self.profile else 0


# ---------------------------------------------------------------------- floors
def _weight_bytes(cfg: NemotronHConfig, tokens: int, fp8: bool, touched: float | None = None) -> float:
    """Bytes of weights one forward over `tokens` tokens reads (bf16 = 2 B, fp8 parts 1 B, router fp32).
    touched: routed experts per MoE layer, measured; default: the expectation under uniform routing."""
    H, E, k = cfg.hidden_size, cfg.n_routed_experts, cfg.num_experts_per_tok
    plan = fp8_plan(cfg)
    fp8_mamba = set(plan["mamba"]) if fp8 else set()
    expert = 2 * H * cfg.moe_intermediate_size
    if touched is None:
        touched = E * (1 - (1 - k / E) ** tokens)
    total = 2.0 * cfg.vocab_size * H + 2 * H                                             # lm_head + norm_f
    for i, c in enumerate(cfg.pattern):
        total += 2 * H                                                                   # pre-norm
        if c == "M":
            proj = H * cfg.in_proj_dim + cfg.d_inner * H
            rest = cfg.conv_dim * (cfg.conv_kernel + 1) + 3 * cfg.mamba_num_heads + cfg.d_inner
            total += proj * (1 if i in fp8_mamba else 2) + 2 * rest
        elif c == "*":
            total += 2 * H * cfg.head_dim * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)
        elif c == "E":
            wb = 1 if fp8 else 2
            total += 4 * E * (H + 1) + wb * (touched * expert + 2 * H * cfg.moe_shared_expert_intermediate_size)
        elif c == "-":
            total += 2 * 2 * H * cfg.intermediate_size
    return total


def _cache_bytes(cfg: NemotronHConfig, seqs: int, ctx: int, kv_bytes: int = 2) -> float:
    """Per decode step: KV pages read (every cached token of every sequence) + Mamba states read and written."""
    kv = seqs * ctx * 2 * cfg.num_key_value_heads * cfg.head_dim * kv_bytes * len(cfg.layer_indices("*"))
    state = seqs * len(cfg.layer_indices("M")) * (
        cfg.mamba_num_heads * cfg.mamba_head_dim * cfg.ssm_state_size * 4 + cfg.conv_dim * (cfg.conv_kernel - 1) * 2)
    return kv + 2 * state


def _flops(cfg: NemotronHConfig, new_tokens: int, ctx_before: int, seqs: int = 1) -> tuple[float, float]:
    """(GEMM flops, attention + scan flops) of feeding `new_tokens` tokens to each of `seqs` sequences that hold
    `ctx_before` cached tokens."""
    active = cfg.num_params(active=True, include_embedding=False)
    gemm = 2.0 * active * new_tokens * seqs
    n_att = len(cfg.layer_indices("*"))
    keys = ctx_before * new_tokens + new_tokens * (new_tokens + 1) / 2                   # causal
    att = 4.0 * keys * cfg.num_attention_heads * cfg.head_dim * n_att * seqs
    scan = 6.0 * cfg.mamba_num_heads * cfg.mamba_head_dim * cfg.ssm_state_size * len(cfg.layer_indices("M"))
    return gemm, att + scan * new_tokens * seqs


def _floors(cfg, new_tokens, ctx_before, seqs, fp8: bool, with_cache: bool, touched: float | None = None,
            kv_bytes: int = 2) -> dict:
    gemm, other = _flops(cfg, new_tokens, ctx_before, seqs)
    weights = _weight_bytes(cfg, new_tokens * seqs, fp8, touched)
    cache = _cache_bytes(cfg, seqs, ctx_before + new_tokens, kv_bytes) if with_cache else 0.0
    gemm_tflops = CEILINGS["fp8_tflops"] if fp8 else CEILINGS["bf16_tflops"]
    return dict(bytes=weights + cache, weight_bytes=weights, flops=gemm + other,
                floor_weights_ms=weights / (CEILINGS["copy_tbps"] * 1e12) * 1e3,
                floor_bytes_ms=(weights + cache) / (CEILINGS["copy_tbps"] * 1e12) * 1e3,
                floor_compute_ms=(gemm / gemm_tflops + other / CEILINGS["bf16_tflops"]) / 1e12 * 1e3)


def _row(bench, problem, variant, ms, floors, baseline=False, **extra) -> dict:
    on_gpu = bench.device.type == "cuda"
    s = ms / 1e3
    row = dict(op=bench.op, problem=problem, variant=variant, baseline=baseline, ms=ms, ms_graph=None, ms_eager=ms,
               timing="wall clock per step (torch.cuda.synchronize)" if on_gpu else "cpu perf_counter",
               graph_error=None, tflops=floors["flops"] / s / 1e12, gbps=floors["bytes"] / s / 1e9,
               frac_flops=(floors["floor_compute_ms"] / ms) if on_gpu else None,
               frac_copy=(floors["floor_bytes_ms"] / ms) if on_gpu else None,
               floor_weights_ms=floors["floor_weights_ms"], floor_bytes_ms=floors["floor_bytes_ms"],
               floor_compute_ms=floors["floor_compute_ms"], **extra)
    row["x_over_floor"] = ms / max(floors["floor_bytes_ms"], floors["floor_compute_ms"])
    # #6's "weight-streaming floor": the weights touched alone (no KV pages, no states), against compute
    row["x_over_weight_floor"] = ms / max(floors["floor_weights_ms"], floors["floor_compute_ms"])
    base = next((r for r in bench.rows if r["problem"] == problem and r["baseline"]), None)
    if base is not None and not baseline:
        row[f"x vs {base['variant']}"] = base["ms"] / ms
        if base["variant"] not in bench.baseline_names:
            bench.baseline_names.append(base["variant"])
    bench.rows.append(row)
    ratios = "  ".join(f"{k}={v:.2f}" for k, v in row.items() if k.startswith("x vs "))
    tok = f"  {extra['tokens_per_s']:,.0f} tok/s" if "tokens_per_s" in extra else ""
    print(f"  {problem:<18} {variant:<44} {ms:9.3f} ms{tok}  floor {row['floor_bytes_ms']:.3f} ms (weights "
          f"{row['floor_weights_ms']:.3f}) / compute {row['floor_compute_ms']:.3f} ms  = {row['x_over_floor']:.2f}x "
          f"({row['x_over_weight_floor']:.2f}x the weights alone)  {ratios}", flush=True)
    return row


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_prompt(gen, n, vocab):
    return torch.randint(3, vocab, (n,), generator=gen).tolist()


# ---------------------------------------------------------------------- transformers baseline
def _hf_model(model):
    """transformers' NemotronHForCausalLM whose parameters ARE our model's tensors (names: ours with `model.`)."""
    import transformers
    hf_cfg = transformers.NemotronHConfig(**model.config.to_hf_config(dtype="bfloat16"))
    with torch.device("meta"):
        hf = transformers.NemotronHForCausalLM(hf_cfg)
    state = {("lm_head.weight" if n == "lm_head.weight" else f"model.{n}"): t for n, t in model.state_dict().items()}
    hf.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*hf.named_parameters(), *hf.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"transformers model has tensors without weights: {left[:4]}")
    return hf.eval()


def _repeat_rows(obj, B):
    """Tensors with a leading batch dim of 1 -> repeated B times along it, inside lists / tuples / dicts."""
    if isinstance(obj, torch.Tensor):
        return obj.repeat_interleave(B, dim=0) if obj.dim() and obj.shape[0] == 1 else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_repeat_rows(x, B) for x in obj)
    if isinstance(obj, dict):
        return {k: _repeat_rows(v, B) for k, v in obj.items()}
    return obj


def _repeat_cache(cache, B):
    """A transformers cache of one row -> B identical rows, whatever its layer classes (5.x caches differ by
    version): every batch-1 tensor attribute of the cache and of its layers is repeated."""
    for holder in [cache, *getattr(cache, "layers", [])]:
        for name, value in list(vars(holder).items()):
            setattr(holder, name, _repeat_rows(value, B))


def _hf_forward(hf, ids, cache=None):
    out = hf(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out, getattr(out, "past_key_values", None) or getattr(out, "cache", None)


@torch.no_grad()
def _bench_hf(bench, model, sz, gen) -> dict:
    cfg, dev = model.config, model.device
    hf = _hf_model(model)
    results = {}
    ids = torch.tensor([_random_prompt(gen, sz.prefill, cfg.vocab_size)], device=dev)
    times = []
    for _ in range(sz.reps):
        _sync(dev)
        t0 = time.perf_counter()
        _hf_forward(hf, ids)
        _sync(dev)
        times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    results["prefill"] = ms
    _row(bench, f"prefill {sz.prefill}", HF, ms, _floors(cfg, sz.prefill, 0, 1, False, False), baseline=True,
         tokens_per_s=sz.prefill / ms * 1e3)
    ctx_ids = torch.tensor([_random_prompt(gen, sz.ctx, cfg.vocab_size)], device=dev)
    for B in sz.batches:
        try:
            _, cache = _hf_forward(hf, ctx_ids)
            if B > 1:
                _repeat_cache(cache, B)
            times = []
            for _ in range(sz.steps):
                step_ids = torch.randint(3, cfg.vocab_size, (B, 1), generator=gen).to(dev)
                _sync(dev)
                t0 = time.perf_counter()
                _, cache = _hf_forward(hf, step_ids, cache)
                _sync(dev)
                times.append((time.perf_counter() - t0) * 1e3)
            ms = statistics.median(times)
            results[B] = ms
            _row(bench, f"decode B{B}@{sz.ctx}", HF, ms, _floors(cfg, 1, sz.ctx, B, False, True), baseline=True)
        except Exception as e:   # a transformers version without this cache API: say so, keep going
            print(f"  decode B{B}@{sz.ctx}: transformers baseline skipped ({type(e).__name__}: {e})", flush=True)
        cache = None
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    B = sz.serve_n
    if B in results and "prefill" in results:
        total_s = (B * results["prefill"] + sz.serve_out * results[B]) / 1e3
        print(f"  serve {B}x{sz.serve_in}/{sz.serve_out}: {HF} estimated {B * sz.serve_out / total_s:,.0f} output "
              f"tok/s (static batching from the measured prefill and B{B} decode step)", flush=True)
        results["serve_tok_s"] = B * sz.serve_out / total_s
    del hf
    return results


# ---------------------------------------------------------------------- our engine
def _decode_tokens(sz, B: int) -> int:
    """max_tokens of the decode batch: B sequences prefill one chunk per step while those admitted first already
    decode (a token per step, so a chunk holds fewer prompt tokens), and all B must still run for the timed (twice with
    BENCH_SERVE_OVERLAP=ab) and profiled steps after that."""
    return 2 * B + sz.steps * (2 if sz.overlap_ab else 1) + 4 + sz.extra_steps


def _engine(model, sz, kv="auto", fp8_attention: bool = False) -> LLMEngine:
    on_gpu = model.device.type == "cuda"
    max_len = max(sz.prefill, sz.ctx + _decode_tokens(sz, max(sz.batches)) + 4, sz.serve_in + sz.serve_out) + 64
    return LLMEngine(model, None, EngineConfig(
        max_num_seqs=max(max(sz.batches), sz.serve_n), max_num_batched_tokens=max(sz.prefill, 256),
        max_model_len=max_len, block_size=64 if on_gpu else 16, kv_cache_dtype=kv, fp8_attention=fp8_attention,
        num_blocks=None if on_gpu else 4096, overlap_decode=sz.overlap))


def _time_steps(engine, steps: int, dev) -> tuple[float, int]:
    """Median ms between consecutive engine.step returns over `steps` decode steps (one GPU sync before them), and
    how many of them overlapped."""
    times, overlapped = [], engine.num_overlapped_steps
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
        t1 = time.perf_counter()
        times.append((t1 - t0) * 1e3)
        t0 = t1
    return statistics.median(times), engine.num_overlapped_steps - overlapped


def _drain(engine):
    for rid in list(engine.requests):
        engine.abort(rid)


@torch.no_grad()
def _experts_touched(engine: LLMEngine, model) -> float:
    """Routed experts per MoE layer that one engine step touches, averaged over the layers: measured on an eager
    step (graphs set aside, the router re-run in a hook), because random weights route far from uniformly."""
    touched = []

    def hook(moe, args, out):
        x, meta = args
        _, _, counts = meta.ops.moe_router(x.reshape(-1, x.shape[-1]), moe.gate.weight,
                                           moe.gate.e_score_correction_bias, moe.top_k, moe.scale, moe.n_group,
                                           moe.topk_group)
        touched.append(int((counts > 0).sum()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (MoE, FP8MoE))]
    graphs, engine.runner.graphs = engine.runner.graphs, {}
    try:
        engine.step()
    finally:
        engine.runner.graphs = graphs
        for h in handles:
            h.remove()
    return statistics.mean(touched)


def _bench_ours(bench, model, sz, gen, label: str, hf: dict, profiles: dict | None = None) -> None:
    """label bf16, fp8 (selective FP8 weights) or fp8kv (also e4m3 KV pages, scales computed on the device, and FP8
    prefill attention)."""
    cfg, dev = model.config, model.device
    fp8, kv8 = label != "bf16", label == "fp8kv"
    kv_bytes = 1 if kv8 else 2
    engine = _engine(model, sz, "fp8" if kv8 else "auto", fp8_attention=kv8)
    print(f"  [{label}] engine: {engine.stats()}", flush=True)
    greedy = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    # prefill: one prompt, one step
    times = []
    for _ in range(sz.reps + 1):
        engine.add_request(_random_prompt(gen, sz.prefill, cfg.vocab_size), greedy)
        _sync(dev)
        t0 = time.perf_counter()
        while engine.has_unfinished():
            engine.step()
        times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times[1:])                                                    # first: warm-up
    row = _row(bench, f"prefill {sz.prefill}", f"ours {label}", ms, _floors(cfg, sz.prefill, 0, 1, fp8, False),
               tokens_per_s=sz.prefill / ms * 1e3)
    if sz.profile:
        from .serve_profile import profile_prefill
        prompts = [_random_prompt(gen, sz.prefill, cfg.vocab_size) for _ in range(2)]
        row["profile"] = profile_prefill(engine, prompts, greedy, label, dev)
        profiles.setdefault(f"prefill {sz.prefill}", {})[label] = row["profile"]
    # decode at batch B, context ctx
    for B in sz.batches:
        params = SamplingParams(max_tokens=_decode_tokens(sz, B), temperature=0, ignore_eos=True)
        for _ in range(B):
            engine.add_request(_random_prompt(gen, sz.ctx, cfg.vocab_size), params)
        while engine.scheduler.waiting or any(s.num_computed_tokens < s.num_prompt_tokens
                                              for s in engine.scheduler.running):
            engine.step()                                                                 # prefill all B
        # the timed steps must decode all B at once (a short max_tokens once let the first sequences finish
        # while the last still prefilled: "B64" ran ~20 rows)
        assert len(engine.scheduler.running) == B, (len(engine.scheduler.running), B)
        timed = {}
        for overlap in ((False, True) if sz.overlap_ab else (sz.overlap,)):
            engine.config.overlap_decode = overlap
            timed[overlap] = _time_steps(engine, sz.steps, dev)
        profile = None
        if sz.profile and B in sz.profile_batches:
            from .serve_profile import profile_decode
            profile = profile_decode(engine, B, sz.profile_steps, label, dev, f"decode B{B}@{sz.ctx}")
            profiles.setdefault(f"decode B{B}@{sz.ctx}", {})[label] = profile.get("graphs") or profile["eager"]
        touched = _experts_touched(engine, model)
        _drain(engine)
        uniform = _floors(cfg, 1, sz.ctx, B, fp8, True, kv_bytes=kv_bytes)
        for overlap, (ms, overlapped) in timed.items():
            engine.config.overlap_decode = overlap
            variant = f"ours {label}" + (f" {'overlapped' if overlap else 'sync'}" if sz.overlap_ab else "")
            row = _row(bench, f"decode B{B}@{sz.ctx}", variant, ms,
                       _floors(cfg, 1, sz.ctx, B, fp8, True, touched, kv_bytes),
                       cuda_graphs=engine.runner.cuda_graph_status,
                       overlap_decode=engine.overlap_decode, overlapped_steps=overlapped, timed_steps=sz.steps,
                       experts_touched=touched, floor_bytes_ms_uniform_routing=uniform["floor_bytes_ms"])
            print(f"    overlapped decode {'on' if engine.overlap_decode else 'off'}: {overlapped} of {sz.steps} "
                  f"timed steps overlapped", flush=True)
        engine.config.overlap_decode = sz.overlap
        if profile is not None:
            row["profile"] = profile
        print(f"    routed experts touched per MoE layer: {touched:.1f} of {cfg.n_routed_experts} (uniform routing: "
              f"{cfg.n_routed_experts * (1 - (1 - cfg.num_experts_per_tok / cfg.n_routed_experts) ** B):.1f}); "
              f"floor with uniform routing {uniform['floor_bytes_ms']:.3f} ms", flush=True)
    if not sz.throughput:
        return
    # throughput: N concurrent requests, in -> out
    N, n_in, n_out = sz.serve_n, sz.serve_in, sz.serve_out
    params = SamplingParams(max_tokens=n_out, temperature=0.8, top_p=0.95, seed=0, ignore_eos=True)

    def submit(max_tokens: int) -> None:
        for i in range(N):
            engine.add_request(_random_prompt(gen, n_in, cfg.vocab_size),
                               SamplingParams(**{**params.__dict__, "seed": i, "max_tokens": max_tokens}))

    # warm-up, untimed: the same ramp of steps. Its mixed steps (d decodes beside a chunk of 8K - d prompt tokens,
    # then the prompt's last d tokens, d = 0 .. N - 1) give the eager kernels new sizes (suspected: Triton compiling
    # per size class; scripts/serve_warm_ab.py counts it). The first precision's timed run paid them: ramp steps
    # 410 ms cold against 128-137 ms warm (H200, 128 x 8K; bench/NOTES.md, session 7). N requests with N + 4
    # output tokens walk the same step sizes: each still decodes while the last ones prefill.
    submit(min(n_out, N + 4))
    while engine.has_unfinished():
        engine.step()
    submit(n_out)
    _sync(dev)
    t0 = time.perf_counter()
    steps = produced = 0
    while engine.has_unfinished():
        produced += len(engine.step())
        steps += 1
    seconds = time.perf_counter() - t0
    assert produced == N * n_out, (produced, N * n_out)
    tok_s = N * n_out / seconds
    floors = _floors(cfg, 1, n_in + n_out // 2, N, fp8, True, kv_bytes=kv_bytes)
    row = _row(bench, f"serve {N}x{n_in}/{n_out}", f"ours {label}", seconds * 1e3 / steps, floors,
               tokens_per_s=tok_s, steps=steps, total_s=seconds)
    if "serve_tok_s" in hf:
        row[f"x vs {HF} (estimated)"] = tok_s / hf["serve_tok_s"]
    print(f"  serve {N}x{n_in}/{n_out} [{label}]: {tok_s:,.0f} output tok/s over {seconds:.1f} s, {steps} steps",
          flush=True)
    del engine
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def run(bench: Bench) -> None:
    on_gpu = bench.device.type == "cuda"
    if on_gpu:
        # engines of both precisions come and go beside a 63 GB model: without expandable segments the freed KV
        # caches fragment the pool (FP8 engine after a profiled BF16 one: OOM with 55 GiB reserved but unused)
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    sz = Sizes(on_gpu, bench.quick)
    cfg = NemotronHConfig.from_preset(sz.preset)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    gen = torch.Generator().manual_seed(0)
    print(f"  building {sz.preset} ({cfg.num_params() / 1e9:.2f} B parameters) with random weights, {dtype}",
          flush=True)
    model = build_model(cfg, device=bench.device, dtype=dtype, backend="auto", seed=0).eval()
    hf, profiles = {}, {}
    if sz.hf:
        try:
            hf = _bench_hf(bench, model, sz, gen)
        except ImportError as e:
            print(f"  transformers baseline skipped: {e}", flush=True)
    if "bf16" in sz.precisions:
        _bench_ours(bench, model, sz, gen, "bf16", hf=hf, profiles=profiles)
    fp8_labels = [p for p in ("fp8", "fp8kv") if p in sz.precisions]
    if fp8_labels:
        quantize_model_fp8(model)
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
    for label in fp8_labels:
        _bench_ours(bench, model, sz, gen, label, hf=hf, profiles=profiles)
    serve = {r["variant"]: r for r in bench.rows
             if r["problem"].startswith("serve") and r["variant"].startswith("ours")}
    for label in fp8_labels:
        if "ours bf16" in serve and f"ours {label}" in serve:
            print(f"  {label} / bf16 output throughput at {sz.serve_n} concurrent: "
                  f"{serve[f'ours {label}']['tokens_per_s'] / serve['ours bf16']['tokens_per_s']:.2f}x "
                  f"(target >= 1.6)", flush=True)
    if profiles:
        from .serve_profile import categories_table
        for phase, by_label in profiles.items():
            how = "as served (CUDA graphs where captured)" if on_gpu else "CPU: host op self time"
            print(f"  profile summary, {phase}, ms/step by category, {how}:\n{categories_table(by_label)}", flush=True)
