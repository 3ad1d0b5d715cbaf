"""Overlapped decode (EngineConfig.overlap_decode) on the CPU, the CUDA-graph path run eagerly (ModelRunner._eager_graphs):
an engine that launches each decode step before it reads the last one's tokens against one that does not, on the
same workloads and the same step() calls. Outputs are equal (tokens, text, finish reasons; each exactly once, in
order), the scheduler admits, chunks and preempts at the same calls, no step computes a token past a length limit,
and every page and state slot comes back. Each workload asserts it exercised what it is about (overlapped steps,
rows of stopped sequences discarded, preemption, aborts of sequences in flight)."""
from collections import defaultdict

import pytest
import torch

from model.serve import SamplingParams

PROMPTS = ["Hello world, this is a test", "The Mamba layer keeps a state that", "abc", "x",
           "Attention is all you need, or is it? Hybrid models say", "0123456789" * 3]


def graph_engine(make_engine, overlap: bool, **kw):
    engine = make_engine(eager_graphs=True, overlap_decode=overlap, **kw)
    assert engine.overlap_decode is overlap and engine.runner.graphs
    return engine


class Run:
    """One engine stepped until idle, with `events[k](engine)` run before step call k; records what it did."""

    def __init__(self, engine, events=None):
        self.engine = engine
        self.streams = defaultdict(list)      # (request, index) -> [(new ids, new text, finished, reason)]
        self.finals = {}
        self.calls = []                       # per step() call: prefill rows, preempted, decode rows
        self.discards = 0                     # overlapped rows of sequences that stopped in the step before
        self.in_flight_aborts = 0
        self.in_flight = []                   # per step() call: a step was in flight when it began
        self._wrap()
        events = dict(events or {})
        k = 0
        while engine.has_unfinished() or any(i >= k for i in events):
            if k in events:
                events[k](self)
            self.in_flight.append(engine._inflight is not None)
            for out in engine.step():
                key = (out.request_id, out.index)
                assert key not in self.finals, f"output after the final one for {key}"
                self.streams[key].append((out.new_token_ids, out.new_text, out.finished, out.finish_reason))
                assert out.token_ids[-1] == out.new_token_ids[0]
                if out.finished:
                    self.finals[key] = (out.token_ids, out.text, out.finish_reason)
            engine.scheduler.check_consistent()
            inflight = engine._inflight
            if inflight is not None:
                self.discards += sum(s.is_finished for s in inflight.seqs)
            k += 1
            assert k < 2000, "engine did not finish"
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
        assert engine.slot_pool.num_free == engine.slot_pool.num_slots
        assert not engine.requests and not engine._text

    def _wrap(self):
        engine = self.engine
        schedule, launch = engine.scheduler.schedule, engine.runner.launch

        def recording_schedule():
            b = schedule()
            key = lambda s: (s.request_id, s.index)                                     # noqa: E731
            self.calls.append(dict(
                prefill=[(key(s), s.num_computed_tokens, n) for s, n in
                         zip(b.seqs[b.num_decodes:], b.num_new_tokens[b.num_decodes:])],
                preempted=[key(s) for s in b.preempted],
                decode={key(s) for s in b.seqs[:b.num_decodes]}))
            return b

        def checked_launch(batch, prev=None):
            for s in batch.seqs:   # the token this row samples is within the limits
                assert s.num_output_tokens < s.params.max_tokens and s.num_tokens < engine.max_model_len, s
            return launch(batch, prev)

        engine.scheduler.schedule = recording_schedule
        engine.runner.launch = checked_launch

    def abort(self, rid):
        engine = self.engine
        inflight = engine._inflight
        self.in_flight_aborts += inflight is not None and any(s.request_id == rid for s in inflight.seqs)
        assert engine.abort(rid)


def compare(make_engine, requests, events=None, engine_kw=None, eos=None, aborted=()):
    """Runs `requests` [(id, prompt, params)] on a synchronous and an overlapped engine; returns both Runs after
    checking they agree (an aborted request: the overlapped stream may lack the synchronous one's last output, the
    one still in flight when it was aborted)."""
    runs = []
    for overlap in (False, True):
        engine = graph_engine(make_engine, overlap, **(engine_kw or {}))
        if eos is not None:
            engine.eos_token_ids = set(eos)
        for rid, prompt, params in requests:
            engine.add_request(prompt, params, rid)
        runs.append(Run(engine, events))
    sync, ovl = runs
    assert sync.engine.num_overlapped_steps == 0
    assert ovl.engine.num_overlapped_steps > 0, "nothing was overlapped"
    assert sorted(sync.streams) == sorted(ovl.streams)
    for key, stream in sync.streams.items():
        if key[0] in aborted:
            got = ovl.streams[key]
            assert got == stream[:len(got)] and len(got) >= len(stream) - 1, key
        else:
            assert ovl.streams[key] == stream, key
    assert ovl.finals == sync.finals
    assert len(ovl.calls) >= len(sync.calls)
    for k, (a, b) in enumerate(zip(sync.calls, ovl.calls)):   # same admissions, chunks and preemptions per call
        assert a["prefill"] == b["prefill"] and a["preempted"] == b["preempted"], k
        assert a["decode"] <= b["decode"], k                   # plus rows of stopped sequences (discarded)
    return sync, ovl


def reqs(params_of, prompts=PROMPTS):
    return [(f"r{i}", p, params_of(i)) for i, p in enumerate(prompts)]


@pytest.mark.parametrize("sampling", ["greedy", "seeded"])
def test_overlap_equals_sync_greedy_and_seeded(make_engine, sampling):
    """Staggered max_tokens: sequences leave the batch at different steps (the next step's rows are not a prefix
    of the running one's)."""
    def params(i):
        if sampling == "greedy":
            return SamplingParams(max_tokens=6 + 3 * (i % 3), temperature=0, ignore_eos=True)
        return SamplingParams(max_tokens=6 + 3 * (i % 3), temperature=0.9, top_k=[0, 40][i % 2],
                              top_p=[1.0, 0.9][i % 2], seed=100 + i, ignore_eos=True)
    sync, ovl = compare(make_engine, reqs(params))
    assert {r for _, _, r in sync.finals.values()} == {"length"}


def test_eos_and_stop_token_mid_stream_discard_the_overlapped_row(make_engine):
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    ref = compare(make_engine, reqs(lambda i: greedy))[0].finals
    toks = {k[0]: t for k, (t, _, _) in ref.items()}
    eos = toks["r0"][3]                                      # r0 stops at its 4th token (others maybe too)
    stop_tok = toks["r1"][5]

    def params(i):
        return SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[stop_tok] if i == 1 else [])
    sync, ovl = compare(make_engine, reqs(params), eos=[eos])
    reasons = {k[0]: r for k, (_, _, r) in sync.finals.items()}
    assert reasons["r0"] == "stop" and reasons["r1"] == "stop" and "length" in reasons.values()
    assert sync.finals["r0", 0][0][-1] == eos
    assert ovl.discards > 0, "no overlapped row of a stopped sequence"


def test_stop_strings_mid_stream(make_engine):
    greedy = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    ref = compare(make_engine, reqs(lambda i: greedy))[0].finals
    stops = {}
    for i in (0, 4):
        text = ref[f"r{i}", 0][1]
        cut = next(c for c in range(3, len(text) - 1) if text.find(text[c:c + 2]) == c)
        stops[i] = text[cut:cut + 2]

    def params(i):
        return SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop=[stops[i]] if i in stops else [])
    sync, ovl = compare(make_engine, reqs(params))
    for i in stops:
        tokens, text, reason = sync.finals[f"r{i}", 0]
        assert reason == "stop" and stops[i] not in text and len(tokens) < 20
    assert ovl.discards > 0


def test_max_tokens_and_context_limit(make_engine):
    """max_tokens of 1, 2, 3 ... and a context (max_model_len 24) that ends the longer prompts first."""
    def params(i):
        return SamplingParams(max_tokens=[1, 2, 3, 5, 30, 30][i], temperature=0, ignore_eos=True)
    prompts = ["abc", "x", "a b", "five.", "0123456789abcdef", "0123456789"]
    sync, _ = compare(make_engine, reqs(params, prompts), engine_kw=dict(max_model_len=24))
    reasons = {k[0]: (len(t), r) for k, (t, _, r) in sync.finals.items()}
    assert reasons["r0"] == (1, "length") and reasons["r3"] == (5, "length")
    assert reasons["r4"] == (24 - 16, "length") and reasons["r5"] == (24 - 10, "length")


def test_admissions_during_decode(make_engine):
    """Requests (one with n = 2) arrive while others decode: the engine reads the step in flight, admits them at
    the same call as without overlap (chunked prefill beside the decodes), then overlaps again."""
    sampled = SamplingParams(max_tokens=10, temperature=0.8, top_k=20, seed=7, ignore_eos=True)
    late = [("late0", "arrives later", sampled), ("late1", "x", SamplingParams(max_tokens=4, temperature=0)),
            ("late2", "two completions of one prompt", SamplingParams(max_tokens=6, temperature=0.7, seed=3, n=2,
                                                                    ignore_eos=True))]

    def add(rid, prompt, params):
        return lambda run: run.engine.add_request(prompt, params, rid)
    events = {9: add(*late[0]), 12: add(*late[1]), 15: add(*late[2])}
    sync, ovl = compare(make_engine, reqs(lambda i: SamplingParams(max_tokens=14, temperature=0, ignore_eos=True),
                                          PROMPTS[:3]),
                        events=events, engine_kw=dict(max_num_batched_tokens=12))
    assert ("late2", 1) in sync.finals
    for k in events:
        assert ovl.in_flight[k] and ovl.calls[k - 1]["decode"] and not ovl.calls[k - 1]["prefill"], k
    first_prefill = [k for k, c in enumerate(ovl.calls) if any(r[0][0] == "late0" for r in c["prefill"])][0]
    assert first_prefill == 9


def test_preemption_under_a_small_kv_budget(make_engine):
    params = [SamplingParams(max_tokens=16, temperature=1.0, seed=50 + i, top_k=30, ignore_eos=True)
              for i in range(len(PROMPTS))]
    sync, ovl = compare(make_engine, reqs(lambda i: params[i]), engine_kw=dict(num_blocks=24, max_model_len=80))
    assert any(c["preempted"] for c in sync.calls), "the setup should force a preemption"


def test_aborts_of_requests_in_flight(make_engine):
    def params(i):
        return SamplingParams(max_tokens=20, temperature=0.8, seed=i, ignore_eos=True)

    def abort(rid):
        return lambda run: run.abort(rid)

    def abort_all_then_add(run):
        for rid in list(run.engine.requests):
            run.abort(rid)
        assert not run.engine.has_unfinished()
        run.engine.add_request("after the aborts", params(9), "after")
    events = {5: abort("r1"), 8: abort("r4"), 9: abort("r2"), 12: abort_all_then_add}
    sync, ovl = compare(make_engine, reqs(params), events=events, aborted={"r0", "r1", "r2", "r3", "r4", "r5"})
    assert ovl.in_flight_aborts >= 5 and ("after", 0) in ovl.finals
    assert not any(k[0] in {"r1", "r2", "r4"} for k in sync.finals)


def test_the_switch(make_engine):
    """None: on exactly when the runner has decode graphs; False: a graph engine that never leaves a step running."""
    assert not make_engine().overlap_decode and make_engine().stats()["overlap_decode"] is False
    engine = make_engine(eager_graphs=True)
    assert engine.config.overlap_decode is None and engine.overlap_decode
    sync = graph_engine(make_engine, False)
    sync.add_request("abc", SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    while sync.has_unfinished():
        assert len(sync.step()) == 1 and sync._inflight is None
    assert not make_engine(overlap_decode=True).overlap_decode      # no decode graphs: nothing can overlap
    with pytest.raises(ValueError, match="overlap_decode"):
        make_engine(overlap_decode="yes")


def test_a_failed_overlapped_launch_leaves_no_placeholder(make_engine):
    """The next step's launch fails after its sequences got placeholders: the step raises, and every sequence has
    the tokens it had before the call (no placeholder left in its history)."""
    engine = graph_engine(make_engine, True)
    for p in PROMPTS[:3]:
        engine.add_request(p, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    while engine._inflight is None or engine.scheduler.waiting:
        engine.step()
    seqs = list(engine.scheduler.running)
    before = [list(s.token_ids) for s in seqs]

    def fail(*args, **kwargs):
        raise RuntimeError("launch failed")
    engine.runner.launch = fail
    with pytest.raises(RuntimeError, match="launch failed"):
        engine.step()
    assert [list(s.token_ids) for s in seqs] == before and engine._inflight is None


def test_step_tokens_refuse_a_reused_host_buffer(make_engine):
    """Two host buffers: a step's tokens read after two later launches would be another step's; that read raises."""
    from model.serve.model_runner import StepTokens
    runner = make_engine().runner
    steps = [StepTokens(runner, [], torch.tensor([i, i + 1]), graph=False) for i in range(3)]
    assert steps[1].tolist() == [1, 2] and steps[2].tolist() == [2, 3]
    with pytest.raises(RuntimeError, match="reused"):
        steps[0].tolist()
