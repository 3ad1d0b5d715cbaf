"""The engine end to end on the tiny model (float64, CPU): equal to the model's own generate loop, independent of
batching, chunking and preemption, and releasing every page and slot."""
import pytest
import torch

from model.generate import generate
from model.serve import SamplingParams
from model.serve.model_runner import _kv_rows
from model.serve.sampler import Sampler

PROMPTS = ["Hello world, this is a test", "The Mamba layer keeps a state that", "abc", "x",
           "Attention is all you need, or is it? Hybrid models say", "0123456789" * 3]


def engine_generate(engine, prompts, params):
    ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params)]
    return ids


def test_greedy_matches_model_generate(make_engine, run_all, tiny_model, byte_tokenizer):
    engine = make_engine(max_num_batched_tokens=16)          # forces chunked prefill mixed with decode
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    ids = [engine.add_request(p, params) for p in PROMPTS]
    finals = run_all(engine)
    for rid, prompt in zip(ids, PROMPTS):
        expected = generate(tiny_model, [byte_tokenizer.encode(prompt)], 10, stop_ids=[])[0]
        assert finals[rid].token_ids == expected, prompt
        assert finals[rid].finish_reason == "length"


def test_seeded_sampling_matches_model_generate(make_engine, run_all, tiny_model, byte_tokenizer):
    engine = make_engine()
    prompt = PROMPTS[1]
    rid = engine.add_request(prompt, SamplingParams(max_tokens=12, temperature=0.9, seed=1234, ignore_eos=True))
    out = run_all(engine)[rid]
    expected = generate(tiny_model, [byte_tokenizer.encode(prompt)], 12, temperature=0.9, seed=1234, stop_ids=[])[0]
    assert out.token_ids == expected


def _seeded_params(i):
    return SamplingParams(max_tokens=12, temperature=1.0, top_k=[0, 50, 5][i % 3], top_p=[1.0, 0.9][i % 2],
                          seed=100 + i, ignore_eos=True)


@pytest.mark.parametrize("setup", [
    dict(max_num_batched_tokens=7),                               # tiny chunks
    dict(max_num_seqs=2),                                         # few slots: queueing
    dict(num_blocks=20, max_model_len=80),                        # few pages: preemption by recompute
])
def test_outputs_do_not_depend_on_batching(make_engine, run_all, setup):
    params = [_seeded_params(i) for i in range(len(PROMPTS))]
    alone = []
    for p, sp in zip(PROMPTS, params):
        engine = make_engine(max_model_len=80)
        rid = engine.add_request(p, sp)
        alone.append(run_all(engine)[rid].token_ids)
    engine = make_engine(**setup)
    ids = [engine.add_request(p, sp) for p, sp in zip(PROMPTS, params)]
    finals = run_all(engine)
    assert [finals[r].token_ids for r in ids] == alone
    if "num_blocks" in setup:
        assert any(finals[r].num_preemptions for r in ids), "the setup should have forced a preemption"


def test_each_output_keeps_the_tokens_of_its_step(make_engine, byte_tokenizer):
    # outputs read the sequence's tokens when asked (no copies per step); an early output must not grow later
    engine = make_engine()
    prompt = byte_tokenizer.encode("snapshots")
    engine.add_request(prompt, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    outs = [o for _ in range(8) for o in engine.step()]
    assert [len(o.token_ids) for o in outs] == [1, 2, 3, 4, 5]
    assert [o.token_ids[-1] for o in outs] == [o.new_token_ids[0] for o in outs]
    assert all(o.prompt_token_ids == prompt and o.num_prompt_tokens == len(prompt) for o in outs)
    assert outs[-1].finished and not any(o.finished for o in outs[:-1])


def test_stop_token_ids_eos_and_context_limit(make_engine, run_all):
    engine = make_engine()
    greedy = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    rid = engine.add_request("stop here", greedy)
    ref = run_all(engine)[rid].token_ids
    # stop at the 3rd generated token: it is kept in token_ids
    rid = engine.add_request("stop here", SamplingParams(max_tokens=8, temperature=0, stop_token_ids=[ref[2]]))
    out = run_all(engine)[rid]
    assert out.finish_reason == "stop" and out.token_ids == ref[:ref.index(ref[2]) + 1]
    # the model's eos ids stop too, unless ignore_eos
    engine.eos_token_ids = {ref[1]}
    rid = engine.add_request("stop here", SamplingParams(max_tokens=8, temperature=0))
    out = run_all(engine)[rid]
    assert out.finish_reason == "stop" and out.token_ids[-1] == ref[1]
    # the context (max_model_len) caps generation with finish_reason "length"
    engine = make_engine(max_model_len=16)
    prompt = "0123456789abc"                                      # 13 tokens
    rid = engine.add_request(prompt, SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))
    out = run_all(engine)[rid]
    assert out.finish_reason == "length" and len(out.token_ids) == 16 - 13


def test_stop_strings_cut_the_text_and_stream_consistently(make_engine, run_all, byte_tokenizer):
    engine = make_engine()
    # a byte-level model continuing with text we force: find the greedy text, then stop on a piece of it
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    rid = engine.add_request("Stop strings", params)
    full = run_all(engine)[rid]
    text = full.text
    assert text == byte_tokenizer.decode(full.token_ids)
    # a two-character piece of the text that first occurs at position cut >= 1
    cut = next((i for i in range(1, len(text) - 1) if text.find(text[i:i + 2]) == i), None)
    assert cut is not None, f"no usable stop string in {text!r}"
    stop = text[cut:cut + 2]
    rid = engine.add_request("Stop strings", SamplingParams(max_tokens=24, temperature=0, ignore_eos=True,
                                                           stop=[stop, "never-matches"]))
    streamed = ""
    final = None
    while engine.has_unfinished():
        for out in engine.step():
            streamed += out.new_text
            if out.finished:
                final = out
    assert final.finish_reason == "stop"
    assert final.text == text[:cut] and streamed == final.text


def test_abort_releases_cache_and_many_aborts_do_not_leak(make_engine, run_all):
    engine = make_engine(max_num_seqs=4, max_num_batched_tokens=8)
    for round_ in range(20):
        ids = [engine.add_request(p, SamplingParams(max_tokens=30, temperature=0)) for p in PROMPTS]
        for _ in range(round_ % 4 + 1):
            engine.step()
        for rid in ids[::2]:
            engine.abort(rid)
        engine.scheduler.check_consistent()
        for rid in ids[1::2]:
            engine.abort(rid)
        assert not engine.has_unfinished()
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
        assert engine.slot_pool.num_free == engine.slot_pool.num_slots
    assert not engine.abort("unknown")
    rid = engine.add_request("after aborts", SamplingParams(max_tokens=3, temperature=0))
    assert len(run_all(engine)[rid].token_ids) == 3


@pytest.mark.parametrize("prompt, params, message", [
    ("", SamplingParams(), "prompt is empty"),
    ([1, 2, 600], SamplingParams(), r"token ids must be ints in \[0, 512\)"),
    ("y" * 300, SamplingParams(), "the context is 256 tokens"),
    ("ok", SamplingParams(stop_token_ids=[512]), "outside the vocabulary"),
])
def test_bad_requests_raise_value_error(make_engine, prompt, params, message):
    engine = make_engine()
    with pytest.raises(ValueError, match=message):
        engine.add_request(prompt, params)
    assert not engine.has_unfinished()


def test_duplicate_id_and_stop_strings_without_tokenizer(make_engine):
    engine = make_engine()
    engine.add_request([5, 6], SamplingParams(), request_id="x")
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request([5, 6], SamplingParams(), request_id="x")
    engine = make_engine(tokenizer=None)
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        engine.add_request([5, 6], SamplingParams(stop=["a"]))
    with pytest.raises(ValueError, match="no tokenizer"):
        engine.add_request("text", SamplingParams())


def test_sampler_filters_and_distribution():
    torch.manual_seed(0)
    sampler = Sampler("cpu")
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]] * 4, dtype=torch.float64)
    params = [SamplingParams(temperature=0), SamplingParams(top_k=1), SamplingParams(top_p=1e-6),
              SamplingParams(top_k=2, seed=3)]
    gens = [sampler.generator_for(p) for p in params]
    for _ in range(20):
        tok = sampler(logits, params, gens).tolist()
        assert tok[:3] == [0, 0, 0] and tok[3] in (0, 1)
    # frequencies of plain temperature-1 sampling follow the softmax
    n = 20000
    rows = logits[:1].expand(n, 5)
    counts = torch.bincount(sampler(rows, [SamplingParams()] * n, [None] * n), minlength=5)
    expected = torch.softmax(logits[0], -1) * n
    assert torch.all((counts - expected).abs() < 5 * expected.sqrt() + 5), (counts, expected)
    # top-p keeps the smallest prefix reaching p: {0, 1} hold 0.48 + 0.18 mass at p = 0.6
    p = SamplingParams(top_p=0.6, seed=1)
    g = sampler.generator_for(p)
    seen = {sampler(logits[:1], [p], [g]).item() for _ in range(300)}
    assert seen == {0, 1}


def test_n_completions_fork_from_one_prefill(make_engine, run_all):
    prompt = "one prompt, four completions"
    params = SamplingParams(max_tokens=10, temperature=1.0, top_k=50, seed=77, n=4, ignore_eos=True)
    engine = make_engine(max_num_batched_tokens=8)               # the prompt takes several chunks
    rid = engine.add_request(prompt, params)
    saw_sharing, outs = False, {}
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id == rid
            if out.finished:
                outs[out.index] = out
        saw_sharing |= max(engine.block_manager.ref_counts) == 4   # prompt pages shared by all four
        engine.scheduler.check_consistent()
    assert saw_sharing and sorted(outs) == [0, 1, 2, 3]
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert engine.slot_pool.num_free == engine.slot_pool.num_slots and not engine.requests
    # each completion equals an independent request with seed + index (its prefill computed separately)
    alone = make_engine()
    ids = [alone.add_request(prompt, params.for_completion(i)) for i in range(4)]
    finals = run_all(alone)
    assert [outs[i].token_ids for i in range(4)] == [finals[r].token_ids for r in ids]
    assert len({tuple(o.token_ids) for o in outs.values()}) > 1


def test_n_completions_under_preemption_and_abort(make_engine, run_all):
    params = SamplingParams(max_tokens=12, temperature=0.7, seed=5, n=3, ignore_eos=True)
    engine = make_engine(num_blocks=20, max_model_len=80, max_num_seqs=6)
    ids = [engine.add_request(p, params) for p in PROMPTS[:3]]
    finals = {}
    preempted = 0
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finals[out.request_id, out.index] = out.token_ids
                preempted += out.num_preemptions
        engine.scheduler.check_consistent()
    assert preempted > 0
    alone = make_engine(max_model_len=80)
    for rid, p in zip(ids, PROMPTS[:3]):
        for i in range(3):
            r = alone.add_request(p, params.for_completion(i))
            assert run_all(alone)[r].token_ids == finals[rid, i]
    # an n > 1 request cancelled before its forks: the slots reserved for them come back
    engine = make_engine(max_num_batched_tokens=4, max_num_seqs=4)
    rid = engine.add_request("a prompt longer than one chunk", SamplingParams(max_tokens=5, n=3))
    engine.step()
    assert engine.slot_pool.num_free == 1
    assert engine.abort(rid) and not engine.abort(rid)
    assert engine.slot_pool.num_free == 4 and engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    with pytest.raises(ValueError, match="exceed max_num_seqs"):
        engine.add_request("x", SamplingParams(n=5))


@pytest.mark.parametrize("block_size", [1, 4, 16, 64])
def test_kv_rows_are_the_per_token_page_rows(block_size):
    """The page-at-a-time KV rows of a chunk equal the per-token formula, for chunks that start and end mid-page,
    span one page or many, and single decode tokens."""
    g = torch.Generator().manual_seed(block_size)
    pages = torch.randperm(4096, generator=g)[:64].tolist()
    capacity = 64 * block_size
    for start, n in [(0, 1), (0, capacity), (block_size - 1, 2), (3, 1), (5, 37), (capacity - 7, 7)]:
        want = [pages[p // block_size] * block_size + p % block_size for p in range(start, start + n)]
        assert _kv_rows(pages, block_size, start, n).tolist() == want, (start, n)


def test_fp8_kv_cache_scales(make_engine, tiny_model, run_all):
    """kv_cache_scales="auto" computes FP8 page scales on the device unless a layer has a checkpoint's scales;
    "device" always does; the first prefill sets them and requests complete."""
    attention = [tiny_model.layers[i].mixer for i in tiny_model.config.layer_indices("*")]
    engine = make_engine(kv_cache_dtype="fp8")
    cache = engine.runner.cache
    assert cache.k_scale is not None and not cache.kv_calibrated                  # random weights: no scales
    rid = engine.add_request("fp8 pages", SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    assert len(run_all(engine)[rid].token_ids) == 4
    assert cache.kv_calibrated == set(tiny_model.config.layer_indices("*"))
    assert all(cache.k_scale[i].item() != 1.0 for i in cache.kv_calibrated)
    attention[0].k_scale = 0.5                                                    # as an FP8 checkpoint sets it
    try:
        assert make_engine(kv_cache_dtype="fp8").runner.cache.k_scale is None
        assert make_engine(kv_cache_dtype="fp8", kv_cache_scales="device").runner.cache.k_scale is not None
    finally:
        attention[0].k_scale = 1.0
    assert make_engine().runner.cache.k_scale is None                             # pages in the model's dtype
    with pytest.raises(ValueError, match="kv_cache_scales must be"):
        make_engine(kv_cache_scales="dynamic")


def test_fp8_attention_prefill(make_engine, tiny_model, run_all, monkeypatch):
    """fp8_attention=True: the engine's cache attends its fresh prefills in FP8 (quantize_fp8 runs: 3 calls per
    attention layer and prefill), the model is left as it was (another engine on it stays BF16)."""
    calls = []
    quantize = tiny_model.ops.quantize_fp8
    monkeypatch.setattr(tiny_model.ops, "quantize_fp8", lambda *a, **k: calls.append(1) or quantize(*a, **k))
    engine = make_engine(fp8_attention=True)
    assert engine.runner.cache.fp8_attention and not make_engine().runner.cache.fp8_attention
    rid = engine.add_request("fp8 attention", SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    assert len(run_all(engine)[rid].token_ids) == 4
    assert len(calls) == 3 * len(tiny_model.config.layer_indices("*"))            # one prefill step
