"""Cache bookkeeping on the host: ref-counted KV pages of the attention layers and the pool of Mamba state slots.

The tensors themselves live in the model runner's cache; these classes only hand out ids. A KV page holds
`block_size` consecutive tokens of one sequence in every attention layer; pages may be shared by sequences forked
from one prompt (n > 1 completions) and are copied before a sharer writes into them (copy-on-write). A state slot
holds the conv window and the SSM state of one sequence in every Mamba layer; it cannot be shared, only copied.
"""
from __future__ import annotations

from collections import deque

from .sequence import Sequence


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    """Ref-counted KV pages. Invariants: a page is in the free list iff its ref count is 0; every id in a
    sequence's block_table holds one reference."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"BlockManager needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self.free_ids: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids)

    def blocks_for(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    def _write_range(self, seq: Sequence, num_new_tokens: int) -> tuple[int, int]:
        first = seq.num_computed_tokens // self.block_size
        last = cdiv(seq.num_computed_tokens + num_new_tokens, self.block_size)  # exclusive
        return first, last

    def num_blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Fresh pages that writing the next `num_new_tokens` tokens of `seq` takes (new pages + private copies of
        shared pages in the written range)."""
        first, last = self._write_range(seq, num_new_tokens)
        shared = sum(1 for b in seq.block_table[first:last] if self.ref_counts[b] > 1)
        return max(0, last - len(seq.block_table)) + shared

    def fits_in_place(self, seq: Sequence) -> bool:
        """The next token of `seq` lands in its partly written page, which no other sequence shares: writing it takes
        no page (num_blocks_needed(seq, 1) == 0, allocate(seq, 1) does nothing). Most decode steps."""
        pos = seq.num_computed_tokens
        return pos % self.block_size != 0 and self.ref_counts[seq.block_table[pos // self.block_size]] == 1

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= len(self.free_ids)

    def _take(self) -> int:
        block = self.free_ids.popleft()
        assert self.ref_counts[block] == 0, f"free page {block} has references"
        self.ref_counts[block] = 1
        return block

    def _release(self, block: int) -> None:
        assert self.ref_counts[block] > 0, f"page {block} released more often than taken"
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self.free_ids.append(block)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> list[tuple[int, int]]:
        """Give `seq` the pages to write tokens [num_computed, num_computed + num_new_tokens). Returns the page
        copies (src, dst) the runner must do before the step (copy-on-write of shared, partly written pages)."""
        need = self.num_blocks_needed(seq, num_new_tokens)
        if need > len(self.free_ids):
            raise RuntimeError(f"out of KV pages: {seq} needs {need}, {len(self.free_ids)} free")
        first, last = self._write_range(seq, num_new_tokens)
        copies = []
        for i in range(first, min(last, len(seq.block_table))):
            old = seq.block_table[i]
            if self.ref_counts[old] > 1:
                new = self._take()
                if i * self.block_size < seq.num_computed_tokens:  # holds cached tokens: copy them
                    copies.append((old, new))
                self._release(old)
                seq.block_table[i] = new
        while len(seq.block_table) < last:
            seq.block_table.append(self._take())
        return copies

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """`child` shares all of `parent`'s pages (the child's table must be empty)."""
        assert not child.block_table, "fork into a sequence that already holds pages"
        for b in parent.block_table:
            self.ref_counts[b] += 1
        child.block_table = list(parent.block_table)

    def free(self, seq: Sequence) -> None:
        for b in reversed(seq.block_table):
            self._release(b)
        seq.block_table = []

    def check_consistent(self) -> None:
        """Debug/test invariant: the free list is exactly the zero-ref pages, without duplicates."""
        free = set(self.free_ids)
        assert len(free) == len(self.free_ids), "duplicate ids in the free list"
        zero = {b for b, r in enumerate(self.ref_counts) if r == 0}
        assert free == zero, f"free list {sorted(free)[:8]}... != zero-ref pages {sorted(zero)[:8]}..."


class StateSlotPool:
    """Slots of the Mamba conv + SSM state pools: one per RUNNING sequence, taken on admission, returned on
    finish, abort or preemption."""

    def __init__(self, num_slots: int):
        if num_slots < 1:
            raise ValueError(f"StateSlotPool needs num_slots >= 1, got {num_slots}")
        self.num_slots = num_slots
        self.free_ids: deque[int] = deque(range(num_slots))
        self.used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self.free_ids)

    def allocate(self, seq: Sequence) -> int:
        assert seq.slot is None, f"{seq} already holds a state slot"
        if not self.free_ids:
            raise RuntimeError("out of Mamba state slots")
        slot = self.free_ids.popleft()
        self.used.add(slot)
        seq.slot = slot
        return slot

    def free(self, seq: Sequence) -> None:
        if seq.slot is None:
            return
        self.used.remove(seq.slot)
        self.free_ids.append(seq.slot)
        seq.slot = None
