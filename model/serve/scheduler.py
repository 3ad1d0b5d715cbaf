"""Continuous batching: which tokens of which sequences go into the next model step.

Each step packs at most `max_num_batched_tokens` tokens, in this order:
  1. one token for every decoding sequence (oldest first);
  2. the next prefill chunk of every sequence already admitted but not fully prefilled (oldest first);
  3. new sequences from the FIFO queue, while a state slot is free, the token budget lasts and the KV pages of
     their whole prompt fit beside a reserve of `watermark_blocks` (admission by memory budget). The queue is
     strictly FIFO: a request that does not fit blocks the ones behind it, so none starves.
A decoding sequence that needs a new KV page when none is free preempts the newest running sequence (possibly
itself): its pages and state slot are freed and it goes back to the front of the queue, to be recomputed from its
tokens (prompt + generated so far) when readmitted.
An n > 1 request is admitted as a group: the first completion runs the prompt, the other n - 1 get their state
slots on admission and fork from it once the prompt is computed (fork: shared KV pages, copied Mamba state).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import cached_property

from .block_manager import BlockManager, StateSlotPool
from .sequence import FinishReason, Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """Rows of one model step. Row i feeds tokens [num_computed, num_computed + num_new_tokens[i]) of seqs[i].
    The first `num_decodes` rows are decodes (one token, non-empty cache); the rest are prefill chunks.
    A row is sampled when its chunk reaches the end of its tokens."""
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_decodes: int = 0
    block_copies: list[tuple[int, int]] = field(default_factory=list)   # (src, dst) KV pages, before the step
    preempted: list[Sequence] = field(default_factory=list)

    def __len__(self):
        return len(self.seqs)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    # Both are computed once, on first use, which must come before the step advances num_computed_tokens.
    @cached_property
    def sampled_rows(self) -> list[int]:
        D, seqs, ns = self.num_decodes, self.seqs, self.num_new_tokens
        return list(range(D)) + [i for i in range(D, len(seqs))   # a decode row is always sampled
                                 if seqs[i].num_computed_tokens + ns[i] == seqs[i].num_tokens]

    @cached_property
    def sampled_members(self) -> list[tuple[int, Sequence]]:
        """(row, sequence) of every token this step samples: a sampled row's sequence, then the completions that
        fork from it this step (they sample from the same logits row)."""
        return [(i, s) for i in self.sampled_rows for s in (self.seqs[i], *self.seqs[i].pending_forks)]


class Scheduler:
    def __init__(self, block_manager: BlockManager, slot_pool: StateSlotPool, max_num_seqs: int,
                 max_num_batched_tokens: int, watermark_blocks: int = 0):
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        self.block_manager = block_manager
        self.slot_pool = slot_pool
        self.max_num_seqs = min(max_num_seqs, slot_pool.num_slots)
        self.max_num_batched_tokens = max_num_batched_tokens
        self.watermark_blocks = watermark_blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []        # admission order (oldest first)

    # ------------------------------------------------------------------ queue
    def add(self, seq: Sequence) -> None:
        assert seq.status is SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Release everything `seq` holds (called for finished, aborted or cancelled sequences); completions still
        waiting to fork from it are finished too."""
        if seq.status is SequenceStatus.RUNNING and seq in self.running:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        self.slot_pool.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        for child in seq.pending_forks:
            self.finish(child, reason)
        seq.pending_forks = []

    def fork(self, parent: Sequence) -> list[Sequence]:
        """The prompt of `parent` is computed: its pending completions start running from it (shared pages; the
        runner has copied the Mamba state into their slots)."""
        children, parent.pending_forks = parent.pending_forks, []
        for child in children:
            parent.fork_into(child)
            self.block_manager.fork(parent, child)
            self.running.append(child)
        return children

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        self.slot_pool.free(seq)
        for child in seq.pending_forks:              # their reserved slots, until readmission
            self.slot_pool.free(child)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)

    def _num_seqs(self) -> int:
        return len(self.running) + sum(len(s.pending_forks) for s in self.running)

    # ------------------------------------------------------------------ one step
    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        scheduled: set[int] = set()

        def add_row(seq, n):
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            scheduled.add(seq.seq_id)

        # 1. decodes: one token each; make room by preempting the newest running sequences
        for seq in [s for s in self.running if s.num_uncomputed_tokens == 1 and s.num_computed_tokens > 0]:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:   # preempted while making room for an older one
                continue
            if not bm.fits_in_place(seq):                 # needs a new page or a private copy
                while not bm.can_allocate(bm.num_blocks_needed(seq, 1)):
                    victim = next(s for s in reversed(self.running) if s.seq_id not in scheduled)
                    self._preempt(victim)
                    batch.preempted.append(victim)
                    if victim is seq:
                        break
                if seq.status is not SequenceStatus.RUNNING:
                    continue
                batch.block_copies += bm.allocate(seq, 1)
            add_row(seq, 1)
            budget -= 1
        batch.num_decodes = len(batch.seqs)

        # 2. prefill chunks of admitted sequences (their pages were reserved on admission); a sequence with nothing
        #    to compute is one whose sampled token the host has not read yet (the engine's overlapped decode)
        for seq in self.running:
            if budget == 0:
                break
            if seq.seq_id in scheduled or seq.num_uncomputed_tokens == 0:
                continue
            n = min(seq.num_uncomputed_tokens, budget)
            batch.block_copies += bm.allocate(seq, n)
            add_row(seq, n)
            budget -= n

        # 3. admission, strictly FIFO (an n > 1 request needs a slot per completion)
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            group = 1 + len(seq.pending_forks)
            if self._num_seqs() + group > self.max_num_seqs or self.slot_pool.num_free < group:
                break
            whole = bm.blocks_for(seq.num_tokens)
            if not bm.can_allocate(whole + self.watermark_blocks):
                if not self.running and bm.can_allocate(whole):
                    pass   # nothing else could free pages: admit into the reserve rather than stall
                else:
                    break
            self.waiting.popleft()
            for member in (seq, *seq.pending_forks):
                self.slot_pool.allocate(member)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            bm.allocate(seq, seq.num_tokens)   # reserve the whole prompt; chunks then never wait for pages
            n = min(seq.num_tokens, budget)
            add_row(seq, n)
            budget -= n
        return batch

    def check_consistent(self) -> None:
        """Test invariant: slots and pages held are exactly those of the running sequences."""
        self.block_manager.check_consistent()
        held = [m.slot for s in self.running for m in (s, *s.pending_forks)]
        assert None not in held and len(set(held)) == len(held), f"bad slots {held}"
        assert set(held) == self.slot_pool.used, "slot pool disagrees with the running sequences"
        refs = [0] * self.block_manager.num_blocks
        for s in self.running:
            for b in s.block_table:
                refs[b] += 1
        assert refs == self.block_manager.ref_counts, "page ref counts disagree with the running sequences"
        assert all(not m.block_table and m.slot is None for s in self.waiting for m in (s, *s.pending_forks)), \
            "a waiting sequence holds cache"
