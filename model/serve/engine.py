"""LLMEngine: requests in, one model step at a time, outputs out (the offline API is in llm.py)."""
from __future__ import annotations

import gc
import itertools
import logging
from dataclasses import dataclass, field

import torch

from model.cache import HybridCache
from model.nemotron_h import NemotronH

from .block_manager import BlockManager, StateSlotPool, cdiv
from .gemv import fuse_attention_qkv, use_gemv_for_single_rows
from .model_runner import ModelRunner, StepTokens, graph_padding
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
    kv_cache_dtype: str = "auto"             # "auto" (model dtype) | a float dtype name | "fp8": e4m3 pages
    kv_cache_scales: str = "auto"            # fp8 pages' scales: "layer" (each attention layer's k_scale / v_scale,
                                             # an FP8 checkpoint's), "device" (computed on the device from the first
                                             # prefill), "auto" (layer where the checkpoint gave scales, else device)
    fp8_attention: bool = False              # prefill attention in FP8 e4m3 (q, k, v quantised on the device)
    watermark: float = 0.01                  # fraction of pages kept free when admitting new sequences
    cuda_graphs: bool | None = None          # None: on when the model is on a GPU
    cuda_graph_sizes: list[int] | None = None  # default 1, 2, 4, 8, 16, 24, ... up to max_num_seqs
    overlap_decode: bool | None = None       # launch a decode step before reading the last one's tokens (only
                                             # steps on the CUDA-graph path): None / True on with decode graphs

    def __post_init__(self):
        def positive(name):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"EngineConfig.{name} must be a positive int, got {v!r}")

        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size", "num_blocks"):
            positive(name)
        if self.overlap_decode not in (None, True, False):
            raise ValueError(f"EngineConfig.overlap_decode must be None, True or False, got {self.overlap_decode!r}")
        if self.kv_cache_dtype not in _KV_DTYPES:
            raise ValueError(f"EngineConfig.kv_cache_dtype must be one of {sorted(_KV_DTYPES)}, "
                             f"got {self.kv_cache_dtype!r}")
        if self.kv_cache_scales not in ("auto", "layer", "device"):
            raise ValueError(f"EngineConfig.kv_cache_scales must be 'auto', 'layer' or 'device', "
                             f"got {self.kv_cache_scales!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"EngineConfig.gpu_memory_utilization must be in (0, 1], "
                             f"got {self.gpu_memory_utilization}")
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
    """What one step produced for one request. token_ids / text: everything generated so far.

    prompt_token_ids and token_ids are read from the sequence when asked for (its tokens only ever grow), not
    copied per step: at 256 sequences of 8K tokens the copies cost the host ≈ 25 ms a step."""
    request_id: str
    seq: Sequence = field(repr=False)
    num_tokens: int               # of the sequence (prompt + generated) when this output was made
    new_token_ids: list[int]
    text: str = ""
    new_text: str = ""
    finished: bool = False
    finish_reason: str | None = None
    num_preemptions: int = 0
    index: int = 0            # which completion of an n > 1 request

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.seq.prompt_token_ids

    @property
    def token_ids(self) -> list[int]:
        return self.seq.token_ids[self.seq.num_prompt_tokens:self.num_tokens]

    @property
    def num_prompt_tokens(self) -> int:
        return self.seq.num_prompt_tokens


@dataclass
class _TextState:
    detok: IncrementalDetokenizer
    stops: list[str]
    text: str = ""            # generated text (cut at a stop string)
    sent: int = 0             # characters already returned as new_text
    holdback: int = field(init=False)

    def __post_init__(self):
        self.holdback = max((len(s) for s in self.stops), default=1) - 1


_PLACEHOLDER = 0   # the token id a sequence holds while its sampled token is on the device (overlapped decode)


class LLMEngine:
    """Continuous-batching engine over one model. Not thread-safe: one caller adds, aborts and steps. The engine
    owns the model from then on: it is put in eval mode with its weights frozen (requires_grad False).

    Overlapped decode (`EngineConfig.overlap_decode`): a pure decode step on the CUDA-graph path is left running
    when step() returns; its tokens are read by the next step(), and returned then. When that next step is again a
    pure decode of the same sequences (no waiting requests, no page copies or preemption, a captured size), it is
    launched first, its token ids copied on the device from the running step's sampled tokens, and the host reads
    and processes the running step's tokens while the GPU computes the next. Sequences that reach their length limit
    in the running step are left out of the next; one that stops there (end of sequence, stop token or string)
    has its row of the next step discarded. Anything else reads the running step first and runs as without overlap.
    Greedy and seeded sampling give the same outputs (tokens, text, finish reasons) as without overlap, one step()
    later at most. Unseeded sampling draws from one shared generator, and the discarded rows shift its draws; in
    bf16 a step's extra rows may also change a kernel's tiling and so its rounding."""

    def __init__(self, model: NemotronH, tokenizer: ServeTokenizer | None = None,
                 config: EngineConfig | None = None):
        self.model = model.eval().requires_grad_(False)  # frozen: no autograd state; layers may keep constants
        if model.device.type == "cuda":
            use_gemv_for_single_rows(model)              # B1 out_proj / o_proj: one GEMV, not cuBLAS split-K + reduce
        fuse_attention_qkv(model)                        # q, k, v in one GEMM: two launches fewer per attention layer
        self.tokenizer = tokenizer
        self.config = config = config or EngineConfig()
        mcfg = model.config
        self.max_model_len = config.max_model_len or mcfg.max_position_embeddings
        self.eos_token_ids = set(mcfg.eos_token_ids) | set(tokenizer.eos_token_ids if tokenizer else ())
        kv_dtype = _KV_DTYPES[config.kv_cache_dtype] or model.dtype
        attention = [model.layers[i].mixer for i in mcfg.layer_indices("*")]
        kv_scales = config.kv_cache_scales
        if kv_scales == "auto":
            kv_scales = "layer" if any((a.k_scale, a.v_scale) != (1.0, 1.0) for a in attention) else "device"
        num_slots = config.max_num_seqs
        use_graphs = config.cuda_graphs if config.cuda_graphs is not None else model.device.type == "cuda"
        graph_sizes = config.graph_sizes() if use_graphs else None
        num_scratch = graph_padding(graph_sizes or [])
        num_blocks = config.num_blocks or self._auto_num_blocks(kv_dtype, num_slots, num_scratch)
        need = cdiv(self.max_model_len, config.block_size)
        if num_blocks < need:
            raise ValueError(f"the KV cache has {num_blocks} pages of {config.block_size} tokens, fewer than one "
                             f"sequence of max_model_len={self.max_model_len} needs ({need}); lower max_model_len "
                             f"or give the cache more memory")
        self.block_manager = BlockManager(num_blocks, config.block_size)
        self.slot_pool = StateSlotPool(num_slots)
        self.scheduler = Scheduler(self.block_manager, self.slot_pool, num_slots, config.max_num_batched_tokens,
                                   watermark_blocks=int(config.watermark * num_blocks))
        self.runner = ModelRunner(model, num_slots=num_slots, num_blocks=num_blocks, block_size=config.block_size,
                                  max_model_len=self.max_model_len, kv_dtype=kv_dtype, kv_scales=kv_scales,
                                  fp8_attention=config.fp8_attention, cuda_graph_sizes=graph_sizes)
        self.requests: dict[str, list[Sequence]] = {}   # request id -> its completions (n of them)
        self._text: dict[int, _TextState] = {}          # seq_id -> detokenizer state
        self._ids = itertools.count()
        self._inflight: StepTokens | None = None        # a launched decode step whose tokens are not read yet
        self.num_overlapped_steps = 0                   # steps launched before the previous step's tokens were read
        log.info("engine: %d state slots, %d KV pages x %d tokens (%s), max_model_len %d, CUDA graphs %s",
                 num_slots, num_blocks, config.block_size, kv_dtype, self.max_model_len,
                 self.runner.cuda_graph_status)

    # ------------------------------------------------------------------ sizing
    def _auto_num_blocks(self, kv_dtype: torch.dtype, num_slots: int, num_scratch: int) -> int:
        """KV pages for the configured memory, beside num_slots + num_scratch state slots (scratch: padded
        CUDA-graph rows)."""
        cfg, mcfg, model = self.config, self.model.config, self.model
        per_block = max(1, HybridCache.bytes_per_block(mcfg, cfg.block_size, kv_dtype))
        if cfg.kv_cache_memory_gb is not None:
            return max(1, int(cfg.kv_cache_memory_gb * 2**30 // per_block))
        if model.device.type != "cuda":
            return num_slots * cdiv(self.max_model_len, cfg.block_size)
        # GPU: what is left after weights, the state slots and the activations of the largest step. The peak is
        # what this process holds during the profiled step: everything allocated when it starts (the weights, and
        # any other live tensors: they are not ours to give the cache) plus the step's activations. Unreachable
        # objects (an engine freed in a reference cycle: runner <-> its decode graphs) are collected first, so only
        # memory truly in use counts, and the peak is reset so an earlier, larger step does not.
        per_slot = HybridCache.bytes_per_slot(mcfg, model.dtype)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(model.device)
        in_use = torch.cuda.memory_allocated(model.device)
        with torch.no_grad():
            ids = torch.zeros(1, cfg.max_num_batched_tokens, dtype=torch.long, device=model.device)
            model.hidden_states(ids)
        peak = torch.cuda.max_memory_allocated(model.device)
        total = torch.cuda.get_device_properties(model.device).total_memory
        num_states = num_slots + num_scratch
        budget = total * cfg.gpu_memory_utilization - peak - num_states * per_slot
        if budget < per_block:
            storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                        for t in itertools.chain(model.parameters(), model.buffers()) if t.device == model.device}
            weights = sum(storages.values())
            gib = 2**30
            raise ValueError(f"no GPU memory left for the KV cache: {total / gib:.1f} GiB x "
                             f"{cfg.gpu_memory_utilization} - peak {peak / gib:.1f} GiB (weights {weights / gib:.1f} "
                             f"GiB + other live tensors of this process {(in_use - weights) / gib:.1f} GiB + "
                             f"activations {(peak - in_use) / gib:.1f} GiB) - {num_states} state slots x "
                             f"{per_slot / 2**20:.0f} MiB; free other GPU tensors, or lower max_num_seqs or "
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
        members = [Sequence(request_id, prompt_ids, params.for_completion(i), index=i) for i in range(params.n)]
        members[0].pending_forks = members[1:]
        self.requests[request_id] = members
        if self.tokenizer is not None:
            for m in members:
                self._text[m.seq_id] = _TextState(IncrementalDetokenizer(self.tokenizer, prompt_ids), params.stop)
        self.scheduler.add(members[0])
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
        if params.n > self.config.max_num_seqs:
            raise ValueError(f"n={params.n} completions exceed max_num_seqs={self.config.max_num_seqs}")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this engine has none (use stop_token_ids)")
        return prompt_ids

    def abort(self, request_id: str) -> bool:
        """Cancels a request (all its completions) and frees their KV pages and state slots. False if it is
        unknown or already done."""
        members = self.requests.pop(request_id, None)
        if members is None:
            return False
        for m in members:
            self._text.pop(m.seq_id, None)
            if not m.is_finished:
                self.scheduler.finish(m, FinishReason.ABORT)
        return True

    def has_unfinished(self) -> bool:
        # a sequence of a step in flight stays running until its token is read; steps in flight of finished
        # sequences only have rows to discard
        return self.scheduler.has_unfinished()

    @property
    def overlap_decode(self) -> bool:
        """Whether decode steps overlap: only steps on the CUDA-graph path do, so never without decode graphs."""
        return self.config.overlap_decode is not False and bool(self.runner.graphs)

    def stats(self) -> dict:
        return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "free_blocks": self.block_manager.num_free_blocks, "num_blocks": self.block_manager.num_blocks,
                "free_slots": self.slot_pool.num_free, "num_slots": self.slot_pool.num_slots,
                "cuda_graphs": self.runner.cuda_graph_status, "overlap_decode": self.overlap_decode,
                "overlapped_steps": self.num_overlapped_steps}

    # ------------------------------------------------------------------ one step
    def step(self) -> list[RequestOutput]:
        """Schedules and runs one model step; returns an output for every request that got a token. With overlapped
        decode a decode step's outputs come with the next call (this one may return none, the next one more)."""
        inflight, self._inflight = self._inflight, None
        try:
            if inflight is not None:
                nxt = self._overlap_next(inflight)
                if nxt is not None:                     # launch the next step, then read this one
                    for seq in nxt:
                        seq.append_token(_PLACEHOLDER)
                    try:
                        batch = self.scheduler.schedule()
                        if (batch.seqs != nxt or batch.num_decodes != len(nxt) or batch.block_copies
                                or batch.preempted):
                            raise RuntimeError(f"overlapped decode: the scheduler did not decode the expected "
                                               f"{len(nxt)} sequences: {batch}")
                        self._inflight = self._launch(batch, prev=inflight)
                    except BaseException:
                        for seq in nxt:                 # no launched step will fill them
                            seq.token_ids.pop()
                        raise
                    self.num_overlapped_steps += 1
                    return self._read(inflight, placeholders=nxt)
                outputs = self._read(inflight)
            else:
                outputs = []
            batch = self.scheduler.schedule()
            if not batch.seqs:
                return outputs
            launched = self._launch(batch)
            if launched.graph and self.overlap_decode:  # read it with the next step
                self._inflight = launched
                return outputs
            return outputs + self._read(launched)
        except BaseException:
            self._inflight = None                       # a failed step: the caller aborts its requests
            raise

    def _launch(self, batch, prev: StepTokens | None = None) -> StepTokens:
        launched = self.runner.launch(batch, prev)      # takes batch.sampled_members before the advance below
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
        for row in batch.sampled_rows:
            if batch.seqs[row].pending_forks:          # prompt done: the other completions start from it
                self.scheduler.fork(batch.seqs[row])
        return launched

    def _read(self, launched: StepTokens, placeholders: list[Sequence] = ()) -> list[RequestOutput]:
        """Reads a launched step's tokens and processes them. `placeholders` (members of the step, in its order)
        hold a placeholder for their token, as the next step is launched already; the other members get it appended.
        Members finished since the launch (aborted, or stopped by the step before: this row was overlapped) are
        skipped."""
        outputs, j = [], 0
        for seq, token in zip(launched.seqs, launched.tolist()):
            if j < len(placeholders) and seq is placeholders[j]:
                seq.token_ids[-1] = token
                j += 1
            elif seq.is_finished:
                continue
            else:
                seq.append_token(token)
            outputs.append(self._after_token(seq, token))
        assert j == len(placeholders), "placeholders left unfilled"
        return outputs

    def _overlap_next(self, inflight: StepTokens) -> list[Sequence] | None:
        """The sequences of the next step when it can be launched before `inflight`'s tokens are read, else None.
        It can when every running sequence is one of inflight's (its token unread: nothing to compute), nothing
        waits, and the next step decodes those not ended by their length limit on a captured graph size, with no
        page copies and without preemption (pages for all of them fit) -- exactly the step the scheduler will make
        once the placeholders are in, plus the rows of sequences that turn out to have stopped (discarded)."""
        sch, bm = self.scheduler, self.block_manager
        if not (inflight.graph and self.overlap_decode) or sch.waiting:
            return None
        nxt, new_pages = [], 0
        bs, refs, max_len = bm.block_size, bm.ref_counts, self.max_model_len
        for s in sch.running:                           # one pass: this runs before the launch, B times a step
            n = len(s.token_ids)
            if s.num_computed_tokens != n:
                return None                             # not in flight: it has tokens to compute
            if n - s.num_prompt_tokens + 1 >= s.params.max_tokens or n + 1 >= max_len:
                continue                                # its token in flight is its last (length)
            i, table = n // bs, s.block_table         # the page the placeholder's KV goes to
            if i < len(table):
                if refs[table[i]] != 1:
                    return None                         # shared: a private copy first
            else:
                new_pages += 1
            nxt.append(s)
        if not nxt or len(nxt) > sch.max_num_batched_tokens or self.runner._graph_for(len(nxt)) is None:
            return None
        return nxt if new_pages <= bm.num_free_blocks else None

    def _after_token(self, seq: Sequence, token: int) -> RequestOutput:
        p = seq.params
        reason = None
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            reason = FinishReason.STOP
        elif seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = FinishReason.LENGTH
        text, new_text = "", ""
        ts = self._text.get(seq.seq_id)
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
            self._text.pop(seq.seq_id, None)
            if all(m.is_finished for m in self.requests.get(seq.request_id, ())):
                self.requests.pop(seq.request_id, None)
        return RequestOutput(seq.request_id, seq, seq.num_tokens, [token], text=text,
                             new_text=new_text, finished=reason is not None,
                             finish_reason=reason.value if reason else None, num_preemptions=seq.num_preemptions,
                             index=seq.index)
