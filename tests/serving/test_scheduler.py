"""Scheduler behaviour without a model: a fake step advances the sequences as the engine would."""
import random

from model.serve.block_manager import BlockManager, StateSlotPool
from model.serve.sampling_params import SamplingParams
from model.serve.scheduler import Scheduler
from model.serve.sequence import FinishReason, Sequence, SequenceStatus


def make(num_blocks=64, block_size=4, slots=4, budget=16, watermark=0):
    return Scheduler(BlockManager(num_blocks, block_size), StateSlotPool(slots), slots, budget, watermark)


def new_seq(rid, n_prompt, max_tokens=4):
    return Sequence(rid, list(range(1, n_prompt + 1)), SamplingParams(max_tokens=max_tokens))


def fake_step(sched):
    """Schedule, 'run' (advance computed tokens, append a token to sampled rows), finish at max_tokens."""
    batch = sched.schedule()
    sampled = batch.sampled_rows
    for s, n in zip(batch.seqs, batch.num_new_tokens):
        assert s.status is SequenceStatus.RUNNING and s.slot is not None
        assert len(s.block_table) * sched.block_manager.block_size >= s.num_computed_tokens + n
        s.num_computed_tokens += n
    for i in sampled:
        s = batch.seqs[i]
        s.append_token(7)
        if s.num_output_tokens >= s.params.max_tokens:
            sched.finish(s, FinishReason.LENGTH)
    sched.check_consistent()
    return batch


def test_decode_first_then_chunked_prefill_within_budget():
    sched = make(budget=8)
    a = new_seq("a", 3)
    sched.add(a)
    b1 = fake_step(sched)                          # a prefilled whole (3 tokens) and sampled
    assert b1.seqs == [a] and b1.num_new_tokens == [3] and a.num_output_tokens == 1
    b = new_seq("b", 20)
    sched.add(b)
    b2 = fake_step(sched)
    assert b2.seqs == [a, b] and b2.num_new_tokens == [1, 7] and b2.num_decodes == 1   # a decodes, b's chunk
    assert b.num_output_tokens == 0 and b.num_computed_tokens == 7
    b3 = fake_step(sched)
    assert b3.num_new_tokens == [1, 7]
    b4 = fake_step(sched)
    assert b4.seqs == [a, b] and b4.num_new_tokens == [1, 6] and b.num_output_tokens == 1   # b's last chunk sampled


def test_fifo_admission_limited_by_slots_and_budget():
    sched = make(slots=2, budget=100)
    seqs = [new_seq(str(i), 5, max_tokens=2) for i in range(5)]
    for s in seqs:
        sched.add(s)
    b = fake_step(sched)
    assert [s.request_id for s in b.seqs] == ["0", "1"]           # two slots
    admitted = ["0", "1"]
    while sched.has_unfinished():
        assert len(sched.running) <= 2
        for s in fake_step(sched).seqs:
            if s.request_id not in admitted:
                admitted.append(s.request_id)
    assert admitted == ["0", "1", "2", "3", "4"]                  # admitted in arrival order


def test_head_of_line_request_is_not_overtaken():
    # the head request needs more pages than are free; a small one behind it must wait (FIFO, no starvation)
    sched = make(num_blocks=10, block_size=4, slots=4, budget=64)
    big_running = new_seq("run", 24, max_tokens=3)                 # 6 pages
    sched.add(big_running)
    fake_step(sched)
    head, small = new_seq("head", 20), new_seq("small", 2)        # 5 pages (only 4 free), 1 page
    sched.add(head)
    sched.add(small)
    b = fake_step(sched)
    assert head.status is SequenceStatus.WAITING and small.status is SequenceStatus.WAITING
    assert b.seqs == [big_running]
    while big_running.status is not SequenceStatus.FINISHED:
        fake_step(sched)
    b = fake_step(sched)
    assert [s.request_id for s in b.seqs][:2] == ["head", "small"]


def test_preemption_by_recompute_when_pages_run_out():
    # 3 sequences of 4 prompt tokens (1 page each) decode into a pool of 5 pages: someone must be preempted
    sched = make(num_blocks=5, block_size=4, slots=3, budget=64)
    seqs = [new_seq(str(i), 4, max_tokens=6) for i in range(3)]
    for s in seqs:
        sched.add(s)
    preempted = []
    for _ in range(200):
        if not sched.has_unfinished():
            break
        b = fake_step(sched)
        preempted += b.preempted
    assert not sched.has_unfinished()
    assert preempted, "expected a preemption"
    victim = preempted[0]
    assert victim is seqs[-1]                                      # the newest sequence goes first
    assert all(s.status is SequenceStatus.FINISHED and s.num_output_tokens == 6 for s in seqs)
    assert victim.num_preemptions >= 1
    assert sched.block_manager.num_free_blocks == 5 and sched.slot_pool.num_free == 3


def test_preempted_sequence_recomputes_prompt_and_outputs():
    sched = make(num_blocks=3, block_size=4, slots=2, budget=64)
    a, b = new_seq("a", 4, max_tokens=8), new_seq("b", 4, max_tokens=8)
    sched.add(a)
    sched.add(b)
    fake_step(sched)                                               # both prefilled: 2 pages used, 1 free
    batches = [fake_step(sched) for _ in range(2)]
    pre = [s for bt in batches for s in bt.preempted]
    assert pre == [b]
    assert b.status is SequenceStatus.WAITING and b.num_computed_tokens == 0 and b.slot is None
    tokens_at_preemption = b.num_tokens
    while b.status is SequenceStatus.WAITING:
        fake_step(sched)
    # readmitted: the first chunk feeds prompt + generated tokens again
    assert b.num_computed_tokens == tokens_at_preemption


def test_abort_frees_everything_in_every_state():
    sched = make(slots=2, budget=5)
    a, b, c = new_seq("a", 12), new_seq("b", 3), new_seq("c", 3)
    for s in (a, b, c):
        sched.add(s)
    fake_step(sched)              # a mid-prefill (5 of 12), b admitted? (budget used up by a)
    sched.finish(a, FinishReason.ABORT)
    sched.finish(c, FinishReason.ABORT)
    sched.check_consistent()
    while sched.has_unfinished():
        fake_step(sched)
    assert a.finish_reason is FinishReason.ABORT and b.finish_reason is FinishReason.LENGTH
    assert sched.block_manager.num_free_blocks == 64 and sched.slot_pool.num_free == 2


def test_random_workload_invariants():
    rng = random.Random(1)
    sched = make(num_blocks=24, block_size=4, slots=5, budget=12, watermark=1)
    seqs = []
    for step in range(400):
        if rng.random() < 0.3:
            s = new_seq(str(step), rng.randint(1, 30), max_tokens=rng.randint(1, 12))
            seqs.append(s)
            sched.add(s)
        if rng.random() < 0.05:
            live = [s for s in seqs if not s.is_finished]
            if live:
                sched.finish(rng.choice(live), FinishReason.ABORT)
        b = fake_step(sched)
        assert b.num_tokens <= 12
        assert len({s.seq_id for s in b.seqs}) == len(b.seqs)
    while sched.has_unfinished():
        fake_step(sched)
    assert all(s.is_finished for s in seqs)
    assert sched.block_manager.num_free_blocks == 24 and sched.slot_pool.num_free == 5


def test_n_gt_1_request_is_admitted_as_a_group_and_forks():
    sched = make(slots=4, budget=64)
    parent = new_seq("p", 6, max_tokens=3)
    parent.pending_forks = [Sequence("p", parent.prompt_token_ids, SamplingParams(max_tokens=3), index=i)
                            for i in (1, 2)]
    other = new_seq("o", 3)
    sched.add(new_seq("first", 3, max_tokens=20))
    fake_step(sched)                                 # 1 slot taken: the group of 3 fits in the other 3
    sched.add(parent)
    sched.add(other)
    b = fake_step(sched)
    assert parent in b.seqs and other not in b.seqs  # no 5th slot: `other` waits (FIFO behind the group)
    assert [c.slot is not None for c in parent.pending_forks] == [True, True]
    children = sched.fork(parent)                    # what the engine does once the prompt is computed
    assert all(c.block_table == parent.block_table and c.num_computed_tokens == 6 for c in children)
    assert all(sched.block_manager.ref_counts[b] == 3 for b in parent.block_table)
    while sched.has_unfinished():
        fake_step(sched)
    assert sched.slot_pool.num_free == 4 and sched.block_manager.num_free_blocks == 64
