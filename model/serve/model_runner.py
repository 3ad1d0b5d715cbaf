"""ModelRunner: turns a ScheduledBatch into one `model.forward_step` over a paged HybridCache, then samples.

A step feeds the decode tokens and the prefill chunks of its sequences together (the model splits them only inside
its stateful mixers); the step's metadata reaches the device in one host-to-device copy, and only the last token
of each sampled row goes through the lm_head.

Pure decode steps replay CUDA graphs captured at a set of batch sizes. A batch is padded to the next captured size;
each padded row runs in a scratch state slot and a scratch KV row of its own (the cache's scratch space), so it
aliases neither a sequence's state nor another padded row. Capture is attempted only for a capturable decode step:
the step first runs eagerly with host synchronisations turned into errors (a reference op that reads GPU tensors on
the host cannot be captured); if it is not capturable, decode stays eager and `cuda_graph_status` says why. A
capture that fails anyway is cleaned up (`capture_graph`), so later GPU work is unaffected.

`launch` returns a step's sampled tokens still on the device (`StepTokens`); they reach the host through a pinned
buffer and a CUDA event recorded right after the sampler, so the host can launch the next decode step before it
reads them (the engine's overlapped decode: that step's token ids are copied on the device from these).
"""
from __future__ import annotations

import array
import itertools
import logging
import traceback
from pathlib import Path

import torch

from model.cache import HybridCache
from model.nemotron_h import ForwardMeta, NemotronH

from .sampler import Sampler
from .scheduler import ScheduledBatch

log = logging.getLogger("model.serve")


def graph_padding(sizes) -> int:
    """The most padded rows a decode batch gets when it runs in the smallest captured size that holds it."""
    pad, prev = 0, 0
    for size in sorted(set(sizes)):
        pad, prev = max(pad, size - prev - 1), size
    return pad


def capture_graph(fn, *, pool=None, stream: torch.cuda.Stream | None = None) -> torch.cuda.CUDAGraph:
    """fn() captured into a CUDA graph on `stream` (default: a new side stream) of the current device, its memory
    from `pool` (default: a new one); fn must not draw random numbers. A failed capture leaves the process as it
    was: the capture is ended, the caller's current stream is restored (torch.cuda.graph leaves its capture stream
    current when ending the capture fails), the caching allocator stops routing to the graph's pool (also skipped
    then), and the default CUDA generator, which every capture registers, gets back its state from before the
    capture (left in capture mode, the next random op anywhere fails: "Offset increment outside graph capture
    encountered unexpectedly")."""
    device = torch.cuda.current_device()                  # initialises CUDA (and default_generators) first
    generator = torch.cuda.default_generators[device]
    rng_state = generator.clone_state()
    caller_stream = torch.cuda.current_stream()
    stream = stream or torch.cuda.Stream()
    pool = pool or torch.cuda.graph_pool_handle()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, pool=pool, stream=stream):
            fn()
    except BaseException:
        with torch.cuda.stream(stream):
            if torch.cuda.is_current_stream_capturing():
                try:
                    graph.capture_end()
                except RuntimeError:
                    pass                                  # an invalidated capture ends with an error
        torch.cuda.set_stream(caller_stream)
        end_pool = getattr(torch._C, "_cuda_endAllocateToPool", None)
        if end_pool is not None:
            try:
                end_pool(device, pool)
            except RuntimeError:
                pass                                      # capture_end got that far itself
        generator.graphsafe_set_state(rng_state)
        for _ in range(2):                                # a launch error left behind surfaces (and clears) here
            try:
                torch.cuda.synchronize()
                break
            except RuntimeError:
                continue
        raise
    return graph


def _longs(values) -> torch.Tensor:
    """An int64 host tensor of a sequence of ints (through an array: torch.tensor of a long list is ~3x slower)."""
    values = array.array("q", values)
    return torch.frombuffer(values, dtype=torch.long) if values else torch.zeros(0, dtype=torch.long)


def _kv_row(block_table: list[int], block_size: int, pos: int) -> int:
    """The flat KV-page row of token position pos of a sequence with these pages (a decode token's)."""
    return block_table[pos // block_size] * block_size + pos % block_size


def _kv_rows(block_table: list[int], block_size: int, start: int, n: int) -> torch.Tensor:
    """Flat KV-page rows [n] int64 (host) of token positions start .. start+n-1 of a sequence with these pages: each
    page touched spans its block_size rows in one broadcast add, then the chunk's n are cut out. An 8K prefill chunk
    at 64-token pages takes 32 us of host time on the CPU machine (a Python range per page: 204 us, one step per
    token: 1.13 ms). Decode tokens take _kv_row instead (a tensor costs ~20 us)."""
    first, offset = divmod(start, block_size)
    pages = _longs(block_table[first:(start + n - 1) // block_size + 1])                # [pages touched]
    return (pages[:, None] * block_size + torch.arange(block_size)).view(-1)[offset:offset + n]


def _describe(e: BaseException) -> str:
    """'<Error>: <first line> in <function> (<file>:<line>)', naming the outermost reference op in the traceback,
    else the innermost frame of the library or the model."""
    frames = traceback.extract_tb(e.__traceback__)
    refs = [f for f in frames if f.name.endswith("_ref")]
    ours = [f for f in frames if "nemotron_kernels" in f.filename or "model" in Path(f.filename).parts]
    frame = refs[0] if refs else (ours or frames or [None])[-1]
    where = "" if frame is None else f" in {frame.name} ({'/'.join(Path(frame.filename).parts[-2:])}:{frame.lineno})"
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:240] if text else ''}{where}"


class StepTokens:
    """The tokens one step sampled, one per sampled member (`seqs`, in order): `tokens` [R] int64 on the device, and
    their copy on its way to the host (CUDA: into one of the runner's two pinned buffers, non-blocking, with an
    event recorded after it; CPU: the same copy, synchronous). `tolist()` waits for that event only, not for the
    stream, which may already hold the next step. Read it before two more steps are launched (two buffers)."""

    def __init__(self, runner: ModelRunner, seqs: list, tokens: torch.Tensor, graph: bool):
        self.seqs, self.tokens, self.graph = seqs, tokens, graph    # graph: a pure decode step on the graph path
        k = self._k = runner._next_host
        runner._next_host = 1 - k
        runner._host_owner[k] = self
        self._owners = runner._host_owner
        self._host = runner._host_tokens[k][:len(tokens)]
        self._host.copy_(tokens, non_blocking=True)
        self._event = runner._host_events[k]                          # reused: its buffer's owner reads it first
        if self._event is not None:
            self._event.record()

    def tolist(self) -> list[int]:
        if self._owners[self._k] is not self:
            raise RuntimeError("StepTokens read after its host buffer was reused (two later steps were launched)")
        if self._event is not None:
            self._event.synchronize()
        return self._host.tolist()


class _DecodeGraph:
    """One decode step of `size` rows over static tensors: replayed as a CUDA graph once captured, else run eagerly.
    buf [4, size] int64 rows: token ids, state slots, cached lengths after the step, flat KV rows written."""

    def __init__(self, runner: ModelRunner, size: int):
        self.runner, self.size = runner, size
        self.buf = torch.zeros(4, size, dtype=torch.long, device=runner.device)
        self.logits = torch.zeros(size, runner.config.vocab_size, dtype=runner.logits_dtype, device=runner.device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def run(self) -> None:
        self.logits.copy_(self.runner._decode(self.buf))

    def replay(self) -> None:
        if self.graph is None:
            self.run()
        else:
            self.graph.replay()


class ModelRunner:
    def __init__(self, model: NemotronH, *, num_slots: int, num_blocks: int, block_size: int, max_model_len: int,
                 kv_dtype: torch.dtype | None = None, kv_scales: str = "layer", fp8_attention: bool = False,
                 cuda_graph_sizes: list[int] | None = None):
        self.model = model
        self.config = model.config
        self.device = model.device
        self.block_size = block_size
        sizes = sorted(set(cuda_graph_sizes or []))
        if sizes and not 1 <= sizes[0] <= sizes[-1] <= num_slots:
            raise ValueError(f"cuda_graph_sizes must lie in [1, num_slots={num_slots}], got {sizes}")
        self.cache = HybridCache(model.config, num_slots, max_model_len, block_size=block_size, num_blocks=num_blocks,
                                 paged=True, scratch_slots=graph_padding(sizes), device=self.device,
                                 dtype=model.dtype, kv_dtype=kv_dtype, kv_scales=kv_scales,
                                 fp8_attention=fp8_attention)
        self.max_blocks = self.cache.max_blocks
        self.sampler = Sampler(self.device)
        self.logits_dtype = torch.promote_types(model.dtype, torch.float32)
        self.graphs: dict[int, _DecodeGraph] = {}
        self.cuda_graph_status = "off"
        # host buffers of the sampled tokens (StepTokens): two, as one step's tokens may still be unread when the
        # next step is launched; pinned on CUDA so the copy does not block the host
        pin = self.device.type == "cuda"
        self._host_tokens = [torch.empty(num_slots, dtype=torch.long, pin_memory=pin) for _ in range(2)]
        self._host_events = [torch.cuda.Event() if pin else None for _ in range(2)]
        self._host_owner: list[StepTokens | None] = [None, None]     # the step whose tokens each buffer holds
        self._next_host = 0
        if sizes:
            self._capture(sizes)

    # ------------------------------------------------------------------ host -> device
    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the model's device without blocking the host (pinned staging on CUDA)."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _tensor(self, values) -> torch.Tensor:
        return self._to_device(_longs(values))

    # ------------------------------------------------------------------ one step
    def _decode_rows(self, seqs) -> list[list[int]]:
        """[token ids, slots, cached lengths after the step, KV rows written] of one decode token per sequence."""
        bs = self.block_size
        return [[s.token_ids[s.num_computed_tokens] for s in seqs], [s.slot for s in seqs],
                [s.num_computed_tokens + 1 for s in seqs],
                [_kv_row(s.block_table, bs, s.num_computed_tokens) for s in seqs]]

    def _decode(self, buf: torch.Tensor) -> torch.Tensor:
        """buf [4, S] int64 on the device (as _decode_rows) -> logits [S, V]; what a decode graph captures."""
        ids, slots, seq_lens, kv = buf
        meta = ForwardMeta(ops=self.model.ops, cache=self.cache, decode=True, fresh=False, slots=slots,
                           block_table=self.cache.block_table[slots], seq_lens=seq_lens.to(torch.int32),
                           kv_write_idx=kv)
        return self.model.forward_step(ids, meta)

    def _eager(self, batch: ScheduledBatch, sampled: list[int]) -> torch.Tensor:
        """Logits [R, V] of the sampled rows after one eager step: decode tokens, then the packed prefill chunks."""
        D, bs = batch.num_decodes, self.block_size
        ids, slots, lens, cu = [], [], [], [0]
        kv_dec, kv_pre = [], []                       # KV rows: the decodes' as ints, each prefill chunk's as a tensor
        for i, (s, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            a = s.num_computed_tokens
            ids += s.token_ids[a:a + n]
            slots.append(s.slot)
            lens.append(a + n)
            if i < D:
                kv_dec.append(_kv_row(s.block_table, bs, a))
            else:
                kv_pre.append(_kv_rows(s.block_table, bs, a, n))
                cu.append(cu[-1] + n)
        ends = list(itertools.accumulate(batch.num_new_tokens))
        rows = [ends[i] - 1 for i in sampled]                                     # last token of each sampled row
        T, S = len(ids), len(slots)
        flat = self._to_device(torch.cat([_longs(ids + kv_dec), *kv_pre, _longs(slots + lens + cu + rows)]))
        ids_d, kv_d, slots_d, lens_d, cu_d, rows_d = flat.split([T, T, S, S, len(cu), len(rows)])
        pre = batch.seqs[D:]
        meta = ForwardMeta(ops=self.model.ops, cache=self.cache, slots=slots_d,
                           block_table=self.cache.block_table[slots_d], seq_lens=lens_d.to(torch.int32),
                           kv_write_idx=kv_d, decode=not pre, num_decodes=D if pre else 0,
                           fresh=bool(pre) and all(s.num_computed_tokens == 0 for s in pre))
        if pre:
            meta.cu_seqlens, meta.offsets = cu_d.to(torch.int32), cu
            meta.max_seqlen = max(batch.num_new_tokens[D:])
        return self.model.forward_step(ids_d, meta, rows_d)

    def _replay(self, g: _DecodeGraph, seqs, prev: StepTokens | None = None) -> torch.Tensor:
        """Logits [n, V] of a decode step of n <= g.size sequences; rows n.. run on the scratch space. prev: the
        step that sampled every row's input token, not yet read on the host (the host's token ids are placeholders):
        the ids are copied from its device tokens."""
        n = len(seqs)
        ids, slots, lens, kv = self._decode_rows(seqs)
        pad_slots, pad_lens, pad_kv = self.cache.scratch_rows(g.size - n)
        host = _longs(ids + [0] * (g.size - n) + slots + pad_slots + lens + pad_lens + kv + pad_kv).view(4, g.size)
        g.buf.copy_(host.pin_memory() if self.device.type == "cuda" else host, non_blocking=True)
        if prev is not None:
            g.buf[0, :n].copy_(self._tokens_of(prev, seqs))
        g.replay()
        return g.logits[:n]

    def _tokens_of(self, prev: StepTokens, seqs) -> torch.Tensor:
        """[n] device tokens that `prev` sampled for `seqs` (each one of prev.seqs)."""
        n = len(seqs)
        if prev.seqs[:n] == seqs:                          # the usual case: the same rows, some dropped at the end
            return prev.tokens[:n]
        row = {s.seq_id: i for i, s in enumerate(prev.seqs)}
        return prev.tokens.index_select(0, self._tensor([row[s.seq_id] for s in seqs]))

    def _copy_states_to_forks(self, parents) -> None:
        """Completions forking from a prompt start from its Mamba state (its pages are shared, not copied)."""
        src, dst = [], []
        for p in parents:
            for child in p.pending_forks:
                src.append(p.slot)
                dst.append(child.slot)
        if src:
            self.cache.copy_states(self._tensor(src), self._tensor(dst))

    def execute(self, batch: ScheduledBatch) -> list[int]:
        """Runs the step; returns the sampled token of each of batch.sampled_members (one host sync)."""
        return self.launch(batch).tolist()

    @torch.no_grad()
    def launch(self, batch: ScheduledBatch, prev: StepTokens | None = None) -> StepTokens:
        """Launches the step up to its sampled tokens, without waiting for them. prev: see _replay (a pure decode
        step on the graph path only)."""
        cache = self.cache
        if batch.block_copies:
            src, dst = zip(*batch.block_copies)
            cache.copy_pages(self._tensor(src), self._tensor(dst))
        fresh = [s.slot for s in batch.seqs[batch.num_decodes:] if s.num_computed_tokens == 0]   # decodes have a cache
        if fresh:
            cache.clear_states(self._tensor(fresh))
        for s in batch.seqs:
            cache.set_pages(s.slot, s.block_table)
        sampled = batch.sampled_rows
        graph = self._graph_for(batch.num_decodes) if batch.num_decodes == len(batch) else None
        if prev is not None and graph is None:
            raise ValueError("token ids from the previous step's device tokens need a decode step on the graph path")
        if graph is not None:                                                     # every decode row is sampled
            logits = self._replay(graph, batch.seqs, prev)                        # [D, V]
        else:
            logits = self._eager(batch, sampled)                                  # [R, V]
        members = batch.sampled_members                                           # [(row, seq)]
        if len(members) > len(sampled):                                           # n > 1: forks sample too
            position = {row: k for k, row in enumerate(sampled)}
            logits = logits[self._tensor([position[row] for row, _ in members])]
            self._copy_states_to_forks(batch.seqs[row] for row in sampled)
        seqs = [s for _, s in members]
        for s in seqs:
            if s.generator is None and s.params.seed is not None and not s.params.greedy:
                s.generator = self.sampler.generator_for(s.params)
        tokens = self.sampler(logits, [s.params for s in seqs], [s.generator for s in seqs])
        return StepTokens(self, seqs, tokens, graph=graph is not None and len(seqs) == len(batch))

    # ------------------------------------------------------------------ CUDA graphs
    def _graph_for(self, n: int) -> _DecodeGraph | None:
        """The smallest graph with room for n decode rows."""
        size = min((g for g in self.graphs if g >= n), default=None)
        return None if size is None or n == 0 else self.graphs[size]

    def _eager_graphs(self, sizes: list[int]) -> None:
        """Padded decode batches without capture (the graph path's static inputs and scratch rows, run eagerly):
        a test hook for machines without CUDA. The cache must have the scratch slots (cuda_graph_sizes)."""
        if graph_padding(sizes) > self.cache.scratch_slots:
            raise ValueError(f"sizes {sizes} pad up to {graph_padding(sizes)} rows; the cache has "
                             f"{self.cache.scratch_slots} scratch slots")
        self.graphs = {size: _DecodeGraph(self, size) for size in sorted(set(sizes))}

    def _graph_blockers(self) -> list[str]:
        if self.device.type != "cuda":
            return [f"the model is on {self.device.type}, not cuda"]
        if self.model.backend == "reference":
            return ["the model's backend is 'reference' (plain PyTorch ops that read tensors on the host)"]
        return []

    def _graphs_off(self, why: str) -> None:
        self.graphs = {}
        self.cuda_graph_status = "off: " + why
        log.warning("CUDA graphs %s; decode runs eagerly", self.cuda_graph_status)

    def _capture_inputs(self, size: int) -> torch.Tensor:
        """buf of a capture: distinct real slots 0..size-1 (nothing runs yet; emptied after the capture) writing
        distinct KV rows; every row attends to one cached token."""
        rows = self.cache.num_blocks * self.block_size
        return torch.tensor([[0] * size, list(range(size)), [1] * size, [j % rows for j in range(size)]],
                            dtype=torch.long)

    def _probe(self, step, stream: torch.cuda.Stream) -> str | None:
        """Why `step` cannot be captured, or None: it runs eagerly on `stream`, once to compile and autotune the
        kernels, then once more with host synchronisations turned into errors."""
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream):
                step()
                mode = torch.cuda.get_sync_debug_mode()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    step()
                finally:
                    torch.cuda.set_sync_debug_mode(mode)
        except Exception as e:  # noqa: BLE001 -- any failure keeps decode eager, with the reason
            return _describe(e)
        finally:
            torch.cuda.current_stream().wait_stream(stream)
        return None

    @torch.no_grad()
    def _capture(self, sizes: list[int]) -> None:
        blockers = self._graph_blockers()
        if blockers:
            self._graphs_off("; ".join(blockers))
            return
        with torch.cuda.device(self.device):
            stream, pool = torch.cuda.Stream(), torch.cuda.graph_pool_handle()
            graphs = {}
            try:
                for size in sorted(sizes, reverse=True):                          # largest first: shared pool
                    g = _DecodeGraph(self, size)
                    g.buf.copy_(self._capture_inputs(size))
                    why = self._probe(g.run, stream)
                    if why is not None:
                        self._graphs_off(f"the decode step at batch {size} is not capturable: {why}")
                        return
                    g.graph = capture_graph(g.run, pool=pool, stream=stream)
                    graphs[size] = g
            except Exception as e:  # noqa: BLE001 -- any failure keeps decode eager, with the reason
                during = f" (raised while handling {_describe(e.__context__)})" if e.__context__ is not None else ""
                self._graphs_off(f"capture failed: {_describe(e)}{during}")
                return
            finally:
                torch.cuda.synchronize()
                self.cache.clear_states(torch.arange(max(sizes), device=self.device))
        self.graphs = graphs
        self.cuda_graph_status = f"on: decode batch sizes {sorted(graphs)}"
        log.info("CUDA graphs %s", self.cuda_graph_status)
