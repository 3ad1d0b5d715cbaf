import random

import pytest

from model.serve.block_manager import BlockManager, StateSlotPool
from model.serve.sampling_params import SamplingParams
from model.serve.sequence import Sequence


def seq(n_tokens=1):
    return Sequence("r", list(range(n_tokens)), SamplingParams())


def test_allocate_and_free_pages():
    bm = BlockManager(num_blocks=8, block_size=4)
    s = seq(10)
    assert bm.num_blocks_needed(s, 10) == 3
    assert bm.allocate(s, 10) == []
    assert len(s.block_table) == 3 and bm.num_free_blocks == 5
    s.num_computed_tokens = 10
    assert bm.num_blocks_needed(s, 2) == 0          # tokens 10, 11 fit in the third page
    assert bm.num_blocks_needed(s, 3) == 1
    bm.allocate(s, 3)
    assert len(s.block_table) == 4
    bm.free(s)
    assert s.block_table == [] and bm.num_free_blocks == 8
    bm.check_consistent()


def test_out_of_pages_raises_and_changes_nothing():
    bm = BlockManager(num_blocks=2, block_size=4)
    s = seq(9)
    assert not bm.can_allocate(bm.num_blocks_needed(s, 9))
    with pytest.raises(RuntimeError, match="out of KV pages"):
        bm.allocate(s, 9)
    assert s.block_table == [] and bm.num_free_blocks == 2


def test_fork_shares_pages_and_copies_on_write():
    bm = BlockManager(num_blocks=8, block_size=4)
    parent, child = seq(6), seq(6)
    bm.allocate(parent, 6)
    parent.num_computed_tokens = child.num_computed_tokens = 6
    bm.fork(parent, child)
    assert child.block_table == parent.block_table
    assert [bm.ref_counts[b] for b in parent.block_table] == [2, 2]
    # the child writes token 6 into the shared, half-filled second page: it gets a private copy
    assert bm.num_blocks_needed(child, 1) == 1 and not bm.fits_in_place(child)
    copies = bm.allocate(child, 1)
    assert copies == [(parent.block_table[1], child.block_table[1])]
    assert child.block_table[0] == parent.block_table[0] and child.block_table[1] != parent.block_table[1]
    assert bm.ref_counts[parent.block_table[0]] == 2 and bm.ref_counts[parent.block_table[1]] == 1
    # the parent now owns its second page alone: no copy
    assert bm.fits_in_place(parent) and bm.fits_in_place(child)
    assert bm.allocate(parent, 1) == []
    bm.free(parent)
    assert bm.ref_counts[child.block_table[0]] == 1
    bm.free(child)
    assert bm.num_free_blocks == 8
    bm.check_consistent()


def test_random_alloc_fork_free_keeps_invariants():
    rng = random.Random(0)
    bm = BlockManager(num_blocks=32, block_size=4)
    live = []
    for _ in range(500):
        op = rng.random()
        if op < 0.4:
            s = seq(rng.randint(1, 12))
            if bm.can_allocate(bm.num_blocks_needed(s, s.num_tokens)):
                bm.allocate(s, s.num_tokens)
                s.num_computed_tokens = s.num_tokens
                live.append(s)
        elif op < 0.6 and live:
            p = rng.choice(live)
            c = seq(p.num_tokens)
            c.num_computed_tokens = p.num_computed_tokens
            bm.fork(p, c)
            live.append(c)
        elif op < 0.8 and live:
            s = rng.choice(live)
            if bm.fits_in_place(s):                 # the scheduler's decode fast path skips allocate
                assert bm.num_blocks_needed(s, 1) == 0
            n = rng.randint(1, 5)
            if bm.can_allocate(bm.num_blocks_needed(s, n)):
                bm.allocate(s, n)
                s.token_ids += [0] * n
                s.num_computed_tokens += n
        elif live:
            s = live.pop(rng.randrange(len(live)))
            bm.free(s)
        bm.check_consistent()
        refs = [0] * bm.num_blocks
        for s in live:
            for b in s.block_table:
                refs[b] += 1
        assert refs == bm.ref_counts
    for s in live:
        bm.free(s)
    assert bm.num_free_blocks == bm.num_blocks


def test_state_slot_pool():
    pool = StateSlotPool(2)
    a, b, c = seq(), seq(), seq()
    assert {pool.allocate(a), pool.allocate(b)} == {0, 1}
    with pytest.raises(RuntimeError, match="out of Mamba state slots"):
        pool.allocate(c)
    slot_a = a.slot
    pool.free(a)
    assert a.slot is None and pool.allocate(c) == slot_a
    pool.free(b)
    pool.free(c)
    pool.free(c)   # freeing a sequence without a slot is a no-op
    assert pool.num_free == 2 and not pool.used
