"""LLMEngine (requests in, one model step at a time, outputs out) and the offline API `LLM(...).generate(...)`."""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field

import torch

from model.config import NemotronHConfig
from model.nemotron_h import NemotronH

from .block_manager import BlockManager, StateSlotPool, cdiv
from .model_runner import ModelRunner, ServeCache
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .sequence import FinishReason, Sequence
from .tokenizer import IncrementalDetokenizer, ServeTokenizer

log = logging.getLogger("model.serve")

_KV_DTYPES = {"auto": None, "fp8": torch.float8_e4m3fn, "bfloat16": torch.bfloat16, "float16": torch.float16,
              "float32": torch.float32, "float64": torch.float64}


@dataclass
class EngineConfig:
    """Serving limits. Unset sizes are derived: max_model_len from the model config; num_blocks from
    kv_cache_memory_gb, else (GPU) gpu_memory_utilization of the device after weights, states and a profiled
    forward, else (CPU) enough pages for max_num_seqs full-length sequences."""
    max_num_seqs: int = 64                   # state slots = sequences running at once
    max_num_batched_tokens: int = 2048       # tokens per step (decode tokens + prefill chunks)
    max_model_len: int | None = None         # context: prompt + generated tokens
    block_size: int = 64                     # tokens per KV page
    num_blocks: int | None = None            # KV pages
    kv_cache_memory_gb: float | None = None
    gpu_memory_utilization: float = 0.90
    kv_cache_dtype: str = "auto"             # "auto" (model dtype) | "fp8" (e4m3, unit scales) | a float dtype name
    watermark: float = 0.01                  # fraction of pages kept free when admitting new sequences
    cuda_graphs: bool | None = None          # None: on when the model is on a GPU
    cuda_graph_sizes: list[int] | None = None  # default 1, 2, 4, 8, 16, 24, ... up to max_num_seqs

    def __post_init__(self):
        def positive(name):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"EngineConfig.{name} must be a positive int, got {v!r}")

        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size", "num_blocks"):
            positive(name)
        if self.kv_cache_dtype not in _KV_DTYPES:
            raise ValueError(f"EngineConfig.kv_cache_dtype must be one of {sorted(_KV_DTYPES)}, "
                             f"got {self.kv_cache_dtype!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"EngineConfig.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if not 0 <= self.watermark < 1:
            raise ValueError(f"EngineConfig.watermark must be in [0, 1), got {self.watermark}")

    def graph_sizes(self) -> list[int]:
        if self.cuda_graph_sizes is not None:
            return sorted({s for s in self.cuda_graph_sizes if 1 <= s <= self.max_num_seqs})
        sizes = [s for s in (1, 2, 4, 8) if s < self.max_num_seqs]
        sizes += list(range(16, self.max_num_seqs, 8))
        return sorted(set(sizes + [self.max_num_seqs]))


@dataclass
class RequestOutput:
    """What one step produced for one request. token_ids / text: everything generated so far."""
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    new_token_ids: list[int]
    text: str = ""
    new_text: str = ""
    finished: bool = False
    finish_reason: str | None = None
    num_preemptions: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


@dataclass
class _TextState:
    detok: IncrementalDetokenizer
    stops: list[str]
    text: str = ""            # generated text (cut at a stop string)
    sent: int = 0             # characters already returned as new_text
    holdback: int = field(init=False)

    def __post_init__(self):
        self.holdback = max((len(s) for s in self.stops), default=1) - 1


class LLMEngine:
    """Continuous-batching engine over one model. Not thread-safe: one caller adds, aborts and steps."""

    def __init__(self, model: NemotronH, tokenizer: ServeTokenizer | None = None,
                 config: EngineConfig | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config = config or EngineConfig()
        mcfg: NemotronHConfig = model.config
        self.max_model_len = config.max_model_len or mcfg.max_position_embeddings
        self.eos_token_ids = set(mcfg.eos_token_ids) | set(tokenizer.eos_token_ids if tokenizer else ())
        kv_dtype = _KV_DTYPES[config.kv_cache_dtype] or model.dtype
        num_slots = config.max_num_seqs
        num_blocks = config.num_blocks or self._auto_num_blocks(kv_dtype, num_slots)
        need = cdiv(self.max_model_len, config.block_size)
        if num_blocks < need:
            raise ValueError(f"the KV cache has {num_blocks} pages of {config.block_size} tokens, fewer than one "
                             f"sequence of max_model_len={self.max_model_len} needs ({need}); lower max_model_len "
                             f"or give the cache more memory")
        use_graphs = config.cuda_graphs if config.cuda_graphs is not None else model.device.type == "cuda"
        self.block_manager = BlockManager(num_blocks, config.block_size)
        self.slot_pool = StateSlotPool(num_slots)
        self.scheduler = Scheduler(self.block_manager, self.slot_pool, num_slots, config.max_num_batched_tokens,
                                   watermark_blocks=int(config.watermark * num_blocks))
        self.runner = ModelRunner(model, num_slots=num_slots, num_blocks=num_blocks, block_size=config.block_size,
                                  max_model_len=self.max_model_len, kv_dtype=kv_dtype,
                                  cuda_graph_sizes=config.graph_sizes() if use_graphs else None)
        self.requests: dict[str, Sequence] = {}
        self._text: dict[str, _TextState] = {}
        self._ids = itertools.count()
        log.info("engine: %d state slots, %d KV pages x %d tokens (%s), max_model_len %d, CUDA graphs %s",
                 num_slots, num_blocks, config.block_size, kv_dtype, self.max_model_len,
                 self.runner.cuda_graph_status)

    # ------------------------------------------------------------------ sizing
    def _auto_num_blocks(self, kv_dtype: torch.dtype, num_slots: int) -> int:
        cfg, mcfg, model = self.config, self.model.config, self.model
        per_block = max(1, ServeCache.bytes_per_block(mcfg, cfg.block_size, kv_dtype))
        if cfg.kv_cache_memory_gb is not None:
            return max(1, int(cfg.kv_cache_memory_gb * 2**30 // per_block))
        if model.device.type != "cuda":
            return num_slots * cdiv(self.max_model_len, cfg.block_size)
        # GPU: what is left after weights, the state slots and the activations of the largest step
        per_slot = ServeCache.bytes_per_slot(mcfg, model.dtype)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(model.device)
        with torch.no_grad():
            ids = torch.zeros(1, cfg.max_num_batched_tokens, dtype=torch.long, device=model.device)
            model.hidden_states(ids)
        peak = torch.cuda.max_memory_allocated(model.device)
        total = torch.cuda.get_device_properties(model.device).total_memory
        budget = total * cfg.gpu_memory_utilization - peak - (num_slots + 1) * per_slot
        if budget < per_block:
            raise ValueError(f"no GPU memory left for the KV cache: {total / 2**30:.1f} GiB x "
                             f"{cfg.gpu_memory_utilization} - peak {peak / 2**30:.1f} GiB (weights + activations) - "
                             f"{num_slots + 1} state slots x {per_slot / 2**20:.0f} MiB; lower max_num_seqs or "
                             f"max_num_batched_tokens")
        return int(budget // per_block)

    # ------------------------------------------------------------------ requests
    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, *, add_special_tokens: bool = True) -> str:
        """Queues a request; returns its id. Bad input raises ValueError with a message for the client."""
        params = params or SamplingParams()
        request_id = str(next(self._ids)) if request_id is None else request_id
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        prompt_ids = self.check_request(prompt, params, add_special_tokens=add_special_tokens)
        seq = Sequence(request_id, prompt_ids, params)
        self.requests[request_id] = seq
        if self.tokenizer is not None:
            self._text[request_id] = _TextState(IncrementalDetokenizer(self.tokenizer, prompt_ids), params.stop)
        self.scheduler.add(seq)
        return request_id

    def check_request(self, prompt: str | list[int], params: SamplingParams, *,
                      add_special_tokens: bool = True) -> list[int]:
        """Validates a request without touching the engine's state (safe while a step runs); returns the prompt's
        token ids. Raises ValueError with a message for the client."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass the prompt as token ids")
            prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        else:
            prompt_ids = list(prompt)
        vocab = self.model.config.vocab_size
        if not prompt_ids:
            raise ValueError("the prompt is empty (it must have at least one token)")
        if any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab for t in prompt_ids):
            raise ValueError(f"prompt token ids must be ints in [0, {vocab})")
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context is {self.max_model_len} tokens "
                             f"(prompt + at least one generated token must fit)")
        params.check_vocab(vocab)
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this engine has none (use stop_token_ids)")
        return prompt_ids

    def abort(self, request_id: str) -> bool:
        """Cancels a request and frees its KV pages and state slot. False if it is unknown or already done."""
        seq = self.requests.pop(request_id, None)
        self._text.pop(request_id, None)
        if seq is None or seq.is_finished:
            return False
        self.scheduler.finish(seq, FinishReason.ABORT)
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def stats(self) -> dict:
        return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "free_blocks": self.block_manager.num_free_blocks, "num_blocks": self.block_manager.num_blocks,
                "free_slots": self.slot_pool.num_free, "num_slots": self.slot_pool.num_slots,
                "cuda_graphs": self.runner.cuda_graph_status}

    # ------------------------------------------------------------------ one step
    def step(self) -> list[RequestOutput]:
        """Schedules and runs one model step; returns an output for every request that got a token."""
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        sampled = batch.sampled_rows()
        tokens = self.runner.execute(batch)
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
        outputs = []
        for row, token in zip(sampled, tokens):
            seq = batch.seqs[row]
            seq.append_token(token)
            outputs.append(self._after_token(seq, token))
        return outputs

    def _after_token(self, seq: Sequence, token: int) -> RequestOutput:
        p = seq.params
        reason = None
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            reason = FinishReason.STOP
        elif seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = FinishReason.LENGTH
        text, new_text = "", ""
        ts = self._text.get(seq.request_id)
        if ts is not None:
            if reason is not FinishReason.STOP:          # a stop token's own text is dropped
                searched = max(0, len(ts.text) - ts.holdback)
                ts.text += ts.detok.add([token])
                hits = [i for i in (ts.text.find(s, searched) for s in ts.stops) if i >= 0]
                if hits:                                 # cut before the first stop string
                    ts.text = ts.text[:min(hits)]
                    reason = FinishReason.STOP
            if reason is not None and len(ts.text) == len(ts.detok.text):   # finished, not at a stop string
                ts.text += ts.detok.flush()
            # while running, hold back a tail that may be the start of a stop string
            upto = len(ts.text) if reason is not None else max(ts.sent, len(ts.text) - ts.holdback)
            text, new_text = ts.text[:upto], ts.text[ts.sent:upto]
            ts.sent = upto
        if reason is not None:
            self.scheduler.finish(seq, reason)
            self.requests.pop(seq.request_id, None)
            self._text.pop(seq.request_id, None)
        return RequestOutput(seq.request_id, seq.prompt_token_ids, seq.output_token_ids, [token], text=text,
                             new_text=new_text, finished=reason is not None,
                             finish_reason=reason.value if reason else None, num_preemptions=seq.num_preemptions)


class LLM:
    """Offline generation:

        llm = LLM("/path/to/checkpoint")                                   # or LLM(preset="tiny", random_weights=True)
        outs = llm.generate(["Hello", "The capital of"], SamplingParams(max_tokens=32, temperature=0))
    """

    def __init__(self, checkpoint: str | None = None, *, preset: str | None = None,
                 config: NemotronHConfig | None = None, random_weights: bool = False, model: NemotronH | None = None,
                 tokenizer: ServeTokenizer | None = None, device=None, dtype: torch.dtype | None = None,
                 backend: str = "auto", fp8: bool = False, seed: int = 0, engine_config: EngineConfig | None = None,
                 **engine_kw):
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, tokenizer = load_for_serving(checkpoint, preset=preset, config=config, random_weights=random_weights,
                                            model=model, tokenizer=tokenizer, device=device, dtype=dtype,
                                            backend=backend, fp8=fp8, seed=seed)
        if engine_config is None:
            engine_config = EngineConfig(**engine_kw)
        elif engine_kw:
            raise ValueError("pass engine settings either as engine_config or as keywords, not both")
        self.engine = LLMEngine(model, tokenizer, engine_config)

    @property
    def tokenizer(self) -> ServeTokenizer | None:
        return self.engine.tokenizer

    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None,
                 progress: bool = False) -> list[RequestOutput]:
        """prompts: a string, a list of strings, a list of token ids, or a list of token-id lists. params: one for
        all prompts or one per prompt. Returns the final RequestOutput of each prompt, in order."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = params or SamplingParams()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        engine = self.engine
        ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params)]
        final: dict[str, RequestOutput] = {}
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(ids), desc="requests", unit="req")
        try:
            while len(final) < len(ids):
                if not engine.has_unfinished():
                    raise RuntimeError("engine stopped with requests unfinished")
                for out in engine.step():
                    if out.finished:
                        final[out.request_id] = out
                        if bar is not None:
                            bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            for rid in ids:
                if rid not in final:
                    engine.abort(rid)
        return [final[rid] for rid in ids]


def load_for_serving(checkpoint: str | None = None, *, preset: str | None = None,
                     config: NemotronHConfig | None = None, random_weights: bool = False,
                     model: NemotronH | None = None, tokenizer: ServeTokenizer | None = None, device=None,
                     dtype: torch.dtype | None = None, backend: str = "auto", fp8: bool = False,
                     seed: int = 0) -> tuple[NemotronH, ServeTokenizer | None]:
    """(model, tokenizer) from a checkpoint directory (BF16, or ModelOpt-style FP8), a preset or a config (random
    weights), or a given model. fp8: quantise the experts and Mamba projections on load (spec §4.4).
    dtype default: bfloat16 on GPU, float32 on CPU (a BF16 checkpoint's own dtype when loading one)."""
    from model.checkpoint import load_model
    from model.nemotron_h import build_model

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sources = sum(x is not None for x in (checkpoint, preset, config, model))
    if sources != 1:
        raise ValueError("give exactly one of checkpoint, preset, config or model")
    if model is None and checkpoint is None and not random_weights:
        raise ValueError("a preset or config without a checkpoint needs random_weights=True")
    if model is None:
        if checkpoint is not None and not random_weights:
            from .fp8 import is_fp8_checkpoint, load_fp8_checkpoint
            if is_fp8_checkpoint(checkpoint):     # ModelOpt-style FP8: already quantised
                model = load_fp8_checkpoint(checkpoint, device=device, dtype=dtype or torch.bfloat16,
                                            backend=backend)
                fp8 = False
            else:
                model = load_model(checkpoint, device=device, dtype=dtype, backend=backend)
            if tokenizer is None:
                tokenizer = ServeTokenizer.from_checkpoint(checkpoint, model.config.eos_token_ids)
        else:
            if checkpoint is not None:
                config = NemotronHConfig.from_hf_config(checkpoint)
            elif preset is not None:
                config = NemotronHConfig.from_preset(preset)
            dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
            model = build_model(config, device=device, dtype=dtype, backend=backend, seed=seed)
    if tokenizer is None and model.config.vocab_size >= 259:
        tokenizer = ServeTokenizer.byte_level()
    if fp8:
        from .fp8 import quantize_model_fp8
        quantize_model_fp8(model)
    return model, tokenizer
