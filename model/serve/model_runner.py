"""ModelRunner: turns a ScheduledBatch into one forward of the model over the serving cache, then samples.

One step feeds decode tokens and prefill chunks together: the embedding, the norms, the MoE / MLP layers and the
lm_head see every token of the step at once; only the stateful mixers split the tokens, decode rows through the
one-token path (causal_conv1d_update, ssd_state_update, gqa_decode over the pages) and prefill chunks through the
packed varlen path (causal_conv1d / ssd_scan with cu_seqlens, continuing from the slot state; attention over the
pages). Only the last token of a row that is sampled goes through the lm_head.

Pure decode steps replay CUDA graphs captured at a set of batch sizes (the batch is padded to the next captured
size; padded rows use a scratch state slot and a scratch KV page that no sequence owns).
"""
from __future__ import annotations

import itertools
import logging

import torch

import nemotron_kernels
from model.nemotron_h import ForwardMeta, NemotronH

from .block_manager import cdiv
from .sampler import Sampler
from .scheduler import ScheduledBatch

log = logging.getLogger("model.serve")

# ops on the decode path (named when graph capture fails: a reference fallback may read tensors on the host)
DECODE_OPS = ("rmsnorm", "causal_conv1d_update", "ssd_state_update", "gated_rmsnorm", "gqa_decode", "moe_router",
              "moe_experts")


class ServeCache:
    """The device memory of the serving cache (attribute names as the model's mixers read them).

    conv[i] [num_slots + 1, C, K-1], ssm[i] [num_slots + 1, Hm, P, N] per Mamba layer i;
    k[i], v[i] [num_blocks + 1, block_size, Hkv, D] per attention layer i.
    The last slot and the last page are scratch space for padded CUDA-graph rows; the block manager and the slot
    pool hand out only the first num_slots / num_blocks.
    """

    def __init__(self, config, num_slots: int, num_blocks: int, block_size: int, *, device, dtype: torch.dtype,
                 kv_dtype: torch.dtype | None = None, ssm_dtype: torch.dtype | None = None):
        c = config
        if ssm_dtype is None:
            ssm_dtype = torch.float64 if dtype == torch.float64 else getattr(torch, c.mamba_ssm_cache_dtype)
        self.num_slots, self.num_blocks, self.block_size = num_slots, num_blocks, block_size
        self.scratch_slot, self.scratch_block = num_slots, num_blocks
        self.conv = {i: torch.zeros(num_slots + 1, c.conv_dim, c.conv_kernel - 1, device=device, dtype=dtype)
                     for i in c.layer_indices("M")}
        self.ssm = {i: torch.zeros(num_slots + 1, c.mamba_num_heads, c.mamba_head_dim, c.ssm_state_size,
                                   device=device, dtype=ssm_dtype) for i in c.layer_indices("M")}
        kv_shape = (num_blocks + 1, block_size, c.num_key_value_heads, c.head_dim)
        kv_dtype = kv_dtype or dtype
        self.k = {i: torch.zeros(kv_shape, device=device, dtype=kv_dtype) for i in c.layer_indices("*")}
        self.v = {i: torch.zeros(kv_shape, device=device, dtype=kv_dtype) for i in c.layer_indices("*")}

    @staticmethod
    def bytes_per_slot(config, dtype: torch.dtype, ssm_dtype: torch.dtype | None = None) -> int:
        c = config
        if ssm_dtype is None:
            ssm_dtype = torch.float64 if dtype == torch.float64 else getattr(torch, c.mamba_ssm_cache_dtype)
        per_layer = (c.conv_dim * (c.conv_kernel - 1) * dtype.itemsize
                     + c.mamba_num_heads * c.mamba_head_dim * c.ssm_state_size * ssm_dtype.itemsize)
        return per_layer * len(c.layer_indices("M"))

    @staticmethod
    def bytes_per_block(config, block_size: int, kv_dtype: torch.dtype) -> int:
        c = config
        return 2 * block_size * c.num_key_value_heads * c.head_dim * kv_dtype.itemsize * len(c.layer_indices("*"))

    def reset_slots(self, slots: torch.Tensor) -> None:
        """Empty state for new sequences: slots [S] int64 on the device."""
        for t in (*self.conv.values(), *self.ssm.values()):
            t.index_fill_(0, slots, 0)

    def copy_slots(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Fork of Mamba states: src, dst [n] int64 on the device."""
        for t in (*self.conv.values(), *self.ssm.values()):
            t[dst] = t[src]

    def copy_blocks(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy-on-write of KV pages: src, dst [n] int64 on the device."""
        for t in (*self.k.values(), *self.v.values()):
            t[dst] = t[src]


class _DecodeGraph:
    """Static inputs/outputs of one captured decode step of `size` rows."""

    def __init__(self, size: int, max_blocks: int, vocab: int, device, logits_dtype):
        self.size = size
        self.input_ids = torch.zeros(size, dtype=torch.long, device=device)
        self.slots = torch.zeros(size, dtype=torch.long, device=device)
        self.block_table = torch.zeros(size, max_blocks, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(size, dtype=torch.int32, device=device)
        self.kv_write_idx = torch.zeros(size, dtype=torch.long, device=device)
        self.logits = torch.zeros(size, vocab, dtype=logits_dtype, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None


class ModelRunner:
    def __init__(self, model: NemotronH, *, num_slots: int, num_blocks: int, block_size: int, max_model_len: int,
                 kv_dtype: torch.dtype | None = None, cuda_graph_sizes: list[int] | None = None):
        self.model = model
        self.config = model.config
        self.device = model.device
        self.block_size = block_size
        self.max_blocks = cdiv(max_model_len, block_size)
        self.cache = ServeCache(model.config, num_slots, num_blocks, block_size, device=self.device,
                                dtype=model.dtype, kv_dtype=kv_dtype)
        self.sampler = Sampler(self.device)
        # page table of each slot on the device (row num_slots: the scratch slot), and what the host last wrote
        self.block_tables = torch.full((num_slots + 1, self.max_blocks), self.cache.scratch_block,
                                       dtype=torch.int32, device=self.device)
        self._host_tables: list[list[int]] = [[] for _ in range(num_slots + 1)]
        self.logits_dtype = torch.promote_types(model.dtype, torch.float32)
        self.graphs: dict[int, _DecodeGraph] = {}
        self.cuda_graph_status = "off"
        if cuda_graph_sizes:
            self._capture(sorted(set(cuda_graph_sizes)))

    # ------------------------------------------------------------------ metadata
    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the model's device without blocking the host (pinned staging on CUDA)."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _tensor(self, values, dtype) -> torch.Tensor:
        return self._to_device(torch.tensor(values, dtype=dtype))

    def _tables_of(self, seqs, slots: torch.Tensor) -> torch.Tensor:
        """[S, max_blocks] int32 page tables of the sequences (slots [S] on the device); the device rows are
        rewritten only where a sequence's pages changed since the last step."""
        for s in seqs:
            if self._host_tables[s.slot] != s.block_table:
                self.block_tables[s.slot, :len(s.block_table)] = self._tensor(s.block_table, torch.int32)
                self._host_tables[s.slot] = list(s.block_table)
        return self.block_tables[slots]

    def _kv_rows(self, seq, start: int, n: int) -> list[int]:
        bs = self.block_size
        return [seq.block_table[p // bs] * bs + p % bs for p in range(start, start + n)]

    def _decode_meta(self, seqs) -> tuple[torch.Tensor, ForwardMeta]:
        """Token ids [S] and metadata of one decode token per sequence (one host-to-device copy)."""
        bs = self.block_size
        rows = torch.tensor([[s.token_ids[s.num_computed_tokens] for s in seqs],
                             [s.slot for s in seqs],
                             [s.num_computed_tokens + 1 for s in seqs],
                             [s.block_table[s.num_computed_tokens // bs] * bs + s.num_computed_tokens % bs
                              for s in seqs]], dtype=torch.long)                  # [4, S]
        ids, slots, seq_lens, kv = self._to_device(rows)
        meta = ForwardMeta(ops=self.model.ops, cache=self.cache, decode=True, fresh=False, slots=slots,
                           block_table=self._tables_of(seqs, slots), seq_lens=seq_lens.to(torch.int32),
                           kv_write_idx=kv)
        return ids, meta

    def _prefill_meta(self, seqs, lengths) -> tuple[torch.Tensor, ForwardMeta]:
        """Packed token ids [T] and metadata of the prefill chunks (two host-to-device copies)."""
        ids, kv, offsets = [], [], [0]
        for s, n in zip(seqs, lengths):
            a = s.num_computed_tokens
            ids += s.token_ids[a:a + n]
            kv += self._kv_rows(s, a, n)
            offsets.append(offsets[-1] + n)
        per_token = self._to_device(torch.tensor([ids, kv], dtype=torch.long))    # [2, T]
        per_seq = self._to_device(torch.tensor(
            [[s.slot for s in seqs], [s.num_computed_tokens + n for s, n in zip(seqs, lengths)],
             offsets[:-1]], dtype=torch.long))                                   # [3, S]
        slots = per_seq[0]
        cu_seqlens = torch.cat([per_seq[2], per_seq[2, -1:] + lengths[-1]]).to(torch.int32)   # [S + 1]
        meta = ForwardMeta(ops=self.model.ops, cache=self.cache, decode=False,
                           fresh=all(s.num_computed_tokens == 0 for s in seqs), cu_seqlens=cu_seqlens,
                           offsets=offsets, max_seqlen=max(lengths), slots=slots,
                           block_table=self._tables_of(seqs, slots), seq_lens=per_seq[1].to(torch.int32),
                           kv_write_idx=per_token[1])
        return per_token[0], meta

    # ------------------------------------------------------------------ forward
    def _forward(self, ids: torch.Tensor, num_decode: int, dec_meta: ForwardMeta | None,
                 pre_meta: ForwardMeta | None) -> torch.Tensor:
        """ids [T] = decode tokens (one per decode row) then the packed prefill chunks -> final hidden [T, H].
        Mamba and attention mixers run twice (decode rows, prefill rows); every other layer runs once."""
        m = self.model
        any_meta = dec_meta or pre_meta
        h = m.embeddings(ids)                                                     # [T, H]
        for block in m.layers:
            x = block.norm(h, any_meta)                                           # [T, H]
            if block.kind in "M*":
                parts = []
                if dec_meta is not None:
                    parts.append(block.mixer(x[:num_decode], dec_meta))           # [S_dec, H]
                if pre_meta is not None:
                    parts.append(block.mixer(x[num_decode:][None], pre_meta)[0])  # [T_pre, H]
                y = parts[0] if len(parts) == 1 else torch.cat(parts)
            else:
                y = block.mixer(x, any_meta)
            h = h + y
        return m.norm_f(h, any_meta)

    def _copy_states_to_forks(self, parents) -> None:
        """Completions forking from a prompt start from its Mamba state (its pages are shared, not copied)."""
        src, dst = [], []
        for p in parents:
            for child in p.pending_forks:
                src.append(p.slot)
                dst.append(child.slot)
        if src:
            self.cache.copy_slots(self._tensor(src, torch.long), self._tensor(dst, torch.long))

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(h).to(self.logits_dtype)                       # [R, V]

    @torch.no_grad()
    def execute(self, batch: ScheduledBatch) -> list[int]:
        """Runs the step; returns the sampled token of each of batch.sampled_members() (one host sync)."""
        cache = self.cache
        if batch.block_copies:
            src, dst = zip(*batch.block_copies)
            cache.copy_blocks(self._tensor(src, torch.long), self._tensor(dst, torch.long))
        fresh = [s.slot for s in batch.seqs if s.num_computed_tokens == 0]
        if fresh:
            cache.reset_slots(self._tensor(fresh, torch.long))
        D = batch.num_decodes
        dec, pre = batch.seqs[:D], batch.seqs[D:]
        sampled = batch.sampled_rows()
        graph = self._graph_for(D) if not pre else None
        if graph is not None:                                                     # every decode row is sampled
            logits = self._replay(graph, dec)                                     # [D, V]
        else:
            parts, dec_meta, pre_meta = [], None, None
            if dec:
                ids, dec_meta = self._decode_meta(dec)
                parts.append(ids)
            if pre:
                ids, pre_meta = self._prefill_meta(pre, batch.num_new_tokens[D:])
                parts.append(ids)
            ids = parts[0] if len(parts) == 1 else torch.cat(parts)
            h = self._forward(ids, D, dec_meta, pre_meta)                        # [T, H]
            ends = list(itertools.accumulate(batch.num_new_tokens))
            ends = [ends[i] - 1 for i in sampled]                                 # last token of each sampled row
            logits = self._logits(h[self._tensor(ends, torch.long)])              # [R, V]
        members = batch.sampled_members()                                         # [(row, seq)]
        if len(members) > len(sampled):                                           # n > 1: forks sample too
            position = {row: k for k, row in enumerate(sampled)}
            logits = logits[self._tensor([position[row] for row, _ in members], torch.long)]
            self._copy_states_to_forks(batch.seqs[row] for row in sampled)
        seqs = [s for _, s in members]
        for s in seqs:
            if s.generator is None and s.params.seed is not None and not s.params.greedy:
                s.generator = self.sampler.generator_for(s.params)
        tokens = self.sampler(logits, [s.params for s in seqs], [s.generator for s in seqs])
        return tokens.tolist()

    # ------------------------------------------------------------------ CUDA graphs
    def _graph_for(self, n: int) -> _DecodeGraph | None:
        """The smallest captured graph with room for n decode rows."""
        size = min((g for g in self.graphs if g >= n), default=None)
        return None if size is None or n == 0 else self.graphs[size]

    def _replay(self, g: _DecodeGraph, seqs) -> torch.Tensor:
        n = len(seqs)
        ids, meta = self._decode_meta(seqs)
        g.input_ids[:n].copy_(ids)
        g.slots[:n].copy_(meta.slots)
        g.block_table[:n].copy_(meta.block_table)
        g.seq_lens[:n].copy_(meta.seq_lens)
        g.kv_write_idx[:n].copy_(meta.kv_write_idx)
        self._pad_rows(g, n)
        g.graph.replay()
        return g.logits[:n]

    def _pad_rows(self, g: _DecodeGraph, n: int) -> None:
        """Rows n.. of a padded graph batch: scratch slot, scratch page, one cached token."""
        c = self.cache
        g.input_ids[n:] = 0
        g.slots[n:] = c.scratch_slot
        g.block_table[n:] = c.scratch_block
        g.seq_lens[n:] = 1
        g.kv_write_idx[n:] = c.scratch_block * self.block_size

    def _graph_blockers(self) -> list[str]:
        if self.device.type != "cuda":
            return [f"the model is on {self.device.type}, not cuda"]
        if self.model.backend == "reference":
            return ["the model's backend is 'reference' (plain PyTorch ops that may read tensors on the host)"]
        return []

    def _capture(self, sizes: list[int]) -> None:
        blockers = self._graph_blockers()
        if blockers:
            self.cuda_graph_status = "off: " + "; ".join(blockers)
            log.warning("CUDA graphs %s", self.cuda_graph_status)
            return
        pool = torch.cuda.graph_pool_handle()
        V = self.config.vocab_size
        try:
            for size in sorted(sizes, reverse=True):                              # largest first: shared pool
                g = _DecodeGraph(size, self.max_blocks, V, self.device, self.logits_dtype)
                self._pad_rows(g, 0)
                meta = ForwardMeta(ops=self.model.ops, cache=self.cache, decode=True, fresh=False, slots=g.slots,
                                   block_table=g.block_table, seq_lens=g.seq_lens, kv_write_idx=g.kv_write_idx)
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):                                            # warm-up (lazy inits, autotune)
                        g.logits.copy_(self._logits(self._forward(g.input_ids, size, meta, None)))
                torch.cuda.current_stream().wait_stream(stream)
                g.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g.graph, pool=pool):
                    g.logits.copy_(self._logits(self._forward(g.input_ids, size, meta, None)))
                self.graphs[size] = g
        except RuntimeError as e:   # an op on the decode path syncs with the host (a reference fallback?)
            self.graphs.clear()
            torch.cuda.synchronize()
            refs = nemotron_kernels.backends("cuda")
            refs = [op for op in DECODE_OPS if refs[op].startswith("reference")]
            self.cuda_graph_status = (f"off: capture failed ({type(e).__name__}: {str(e)[:300]}); decode ops on a "
                                      f"reference path: {refs}")
            log.warning("CUDA graphs %s", self.cuda_graph_status)
            return
        torch.cuda.synchronize()
        self.cuda_graph_status = f"on: decode batch sizes {sorted(self.graphs)}"
        log.info("CUDA graphs %s", self.cuda_graph_status)
