"""CUDA-graph decode: padded rows on scratch slots (CPU, graph path run eagerly), the graph guard on the CPU, and under
the `cuda` marker the engine end to end with the Triton kernels (bf16), graph replay equal to eager decode, the eager
fallback with a reason (fp32: reference decode ops), and a failed capture that leaves the process usable."""
import pytest
import torch

import nemotron_kernels
from model.config import NemotronHConfig
from model.generate import generate
from model.nemotron_h import build_model
from model.serve import EngineConfig, LLMEngine, SamplingParams
from model.serve.model_runner import capture_graph, graph_padding

PROMPTS = ["graphs", "a longer prompt for the decode batch", "x", "0123456789" * 4, "five"]


def _run(engine, params):
    ids = [engine.add_request(p, params) for p in PROMPTS]
    finals = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert engine.slot_pool.num_free == engine.slot_pool.num_slots
    return [finals[r].token_ids for r in ids]


def test_cuda_graphs_are_off_on_cpu_with_a_reason(make_engine):
    engine = make_engine(cuda_graphs=True)
    assert engine.runner.cuda_graph_status == "off: the model is on cpu, not cuda"
    assert engine.stats()["cuda_graphs"] == engine.runner.cuda_graph_status
    assert not engine.runner.graphs


def test_graph_padding():
    assert graph_padding([]) == 0 and graph_padding([1]) == 0 and graph_padding([1, 2, 4]) == 1
    assert graph_padding([1, 2, 4, 8, 16, 24, 32]) == 7 and graph_padding([2, 8]) == 5


def test_padded_decode_rows_run_on_scratch_slots_of_their_own(make_engine, run_all, tiny_model, byte_tokenizer):
    """The graph path (static inputs, padding to the next size) run eagerly on the float64 reference ops, which
    reject a slot used by two rows: outputs equal the model's generate loop; padded rows wrote only scratch space."""
    engine = make_engine(cuda_graphs=True, cuda_graph_sizes=[2, 8])
    runner, cache = engine.runner, engine.runner.cache
    assert cache.scratch_slots == 5 and cache.scratch_blocks == 2                 # block_size 4
    runner._eager_graphs([2, 8])
    replays = []
    replay = runner._replay
    runner._replay = lambda g, seqs, prev=None: replays.append((g.size, len(seqs))) or replay(g, seqs, prev)
    ids = [engine.add_request(p, SamplingParams(max_tokens=3 + i, temperature=0, ignore_eos=True))
           for i, p in enumerate(PROMPTS)]                                        # batches shrink 5 -> 1
    finals = run_all(engine)
    for rid, prompt, i in zip(ids, PROMPTS, range(len(PROMPTS))):
        expected = generate(tiny_model, [byte_tokenizer.encode(prompt)], 3 + i, stop_ids=[])[0]
        assert finals[rid].token_ids == expected, prompt
    assert {(8, 5), (8, 4), (8, 3), (2, 2), (2, 1)} <= set(replays)
    n = cache.num_slots
    assert all(t[n:n + 5].any() for t in cache.ssm.values())                      # 5 padded rows at most
    assert all(t[cache.num_blocks:].any() for t in cache.k.values())


@pytest.fixture(scope="module")
def gpu_model():
    cfg = NemotronHConfig.from_preset("tiny", max_position_embeddings=512)
    return build_model(cfg, device="cuda", dtype=torch.bfloat16, backend="auto", seed=0).eval()


def _assert_gpu_usable():
    """No capture left open, the default stream current, and the CUDA RNG out of capture mode."""
    assert not torch.cuda.is_current_stream_capturing()
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    torch.randint(0, 10, (16,), device="cuda")
    torch.cuda.synchronize()


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["auto", "fp8", "fp8-device-scales", "fp8-attention"])
def test_engine_on_gpu_end_to_end(gpu_model, byte_tokenizer, case, monkeypatch):
    """Seeded sampling twice gives the same tokens: BF16 pages; FP8 pages with the layers' scales (as a checkpoint
    sets them) or with scales computed on the device, which the decode graphs must read after the first prefill
    set them: greedy tokens with graphs equal those without; FP8 prefill attention (quantize_fp8 runs)."""
    layers = [gpu_model.layers[i].mixer for i in gpu_model.config.layer_indices("*")]
    if case == "fp8":
        for a in layers:
            a.k_scale = a.v_scale = 0.5
    calls = []
    quantize = gpu_model.ops.quantize_fp8
    monkeypatch.setattr(gpu_model.ops, "quantize_fp8", lambda *a, **k: calls.append(1) or quantize(*a, **k))

    def engine(**kw):
        return LLMEngine(gpu_model, byte_tokenizer, EngineConfig(
            max_num_seqs=8, max_num_batched_tokens=32, block_size=16, max_model_len=256, num_blocks=128,
            kv_cache_dtype="auto" if case in ("auto", "fp8-attention") else "fp8",
            fp8_attention=case == "fp8-attention", **kw))
    try:
        served = engine()
        print("CUDA graphs:", served.runner.cuda_graph_status)
        cache = served.runner.cache
        assert (cache.k_scale is not None) == (case == "fp8-device-scales")
        params = SamplingParams(max_tokens=12, temperature=0.7, top_p=0.9, seed=3, ignore_eos=True)
        seeded = _run(served, params)
        assert all(len(t) == 12 for t in seeded)
        assert _run(served, params) == seeded
        assert bool(calls) == (case == "fp8-attention")
        if case == "fp8-device-scales":
            assert cache.kv_calibrated == set(gpu_model.config.layer_indices("*"))
            assert all(0 < cache.k_scale[i].item() < 1e3 and 0 < cache.v_scale[i].item() < 1e3
                       for i in cache.kv_calibrated)
            # graphs replay at padded batch sizes (other splits, other rounding), so tokens may part late; a graph
            # reading a stale scale (1.0 against ~1e-3) would decode noise from the first token on
            greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
            graphs, eager = _run(served, greedy), _run(engine(cuda_graphs=False), greedy)
            same = sum(a == b for g, e in zip(graphs, eager) for a, b in zip(g, e)) / sum(map(len, graphs))
            assert sum(g[0] == e[0] for g, e in zip(graphs, eager)) >= len(graphs) - 1 and same >= 0.5, same
        _assert_gpu_usable()
    finally:
        for a in layers:
            a.k_scale = a.v_scale = 1.0


# the ops of a decode step that are capturable only as kernels (rmsnorm's reference is capturable too)
DECODE_OPS = ("gated_rmsnorm", "causal_conv1d_update", "ssd_state_update", "gqa_decode", "moe_router", "moe_experts")


def _reference_decode_ops() -> list[str]:
    """Decode ops without a CUDA kernel today (nemotron_kernels.backends reports them as 'reference: ...')."""
    reports = nemotron_kernels.backends("cuda")
    return [op for op in DECODE_OPS if reports[op].startswith("reference:")]


@pytest.mark.cuda
def test_bf16_decode_step_is_captured(gpu_model, byte_tokenizer):
    """With bf16 weights the graphs are on exactly when every decode op has a (capturable) kernel; while one still
    runs its reference (which reads GPU tensors on the host), decode is eager and the status names that op."""
    engine = LLMEngine(gpu_model, byte_tokenizer, EngineConfig(max_num_seqs=8, max_num_batched_tokens=32,
                                                               block_size=16, max_model_len=256, num_blocks=128))
    status = engine.runner.cuda_graph_status
    refs = _reference_decode_ops()
    if not refs:
        assert status == "on: decode batch sizes [1, 2, 4, 8]", status
        assert sorted(engine.runner.graphs) == [1, 2, 4, 8]
    else:
        assert status.startswith("off: the decode step at batch 8 is not capturable"), (refs, status)
        assert any(f"{op}_ref" in status for op in refs), (refs, status)
        assert not engine.runner.graphs


@pytest.mark.cuda
@torch.no_grad()
def test_cuda_graph_decode_matches_eager(gpu_model, byte_tokenizer):
    engine = LLMEngine(gpu_model, byte_tokenizer, EngineConfig(
        max_num_seqs=8, max_num_batched_tokens=256, block_size=16, max_model_len=256, num_blocks=128,
        cuda_graphs=True, cuda_graph_sizes=[1, 2, 4, 8]))
    runner, cache = engine.runner, engine.runner.cache
    if not runner.cuda_graph_status.startswith("on"):
        pytest.skip(f"CUDA graphs unavailable with today's decode ops: {runner.cuda_graph_status}")
    assert sorted(runner.graphs) == [1, 2, 4, 8] and cache.scratch_slots == 3
    for p in PROMPTS:
        engine.add_request(p, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    engine.step()                                         # all 5 prompts prefilled in one step
    batch = engine.scheduler.schedule()
    assert batch.num_decodes == len(batch) == 5
    for s in batch.seqs:
        cache.set_pages(s.slot, s.block_table)
    tensors = [*cache.conv.values(), *cache.ssm.values(), *cache.k.values(), *cache.v.values()]
    before = [t.clone() for t in tensors]
    graph_logits = runner._replay(runner._graph_for(5), batch.seqs).clone()            # padded to 8 rows
    graph_state = [t.clone() for t in tensors]
    for t, b in zip(tensors, before):
        t.copy_(b)
    eager_logits = runner._decode(torch.tensor(runner._decode_rows(batch.seqs), device="cuda"))
    scale = eager_logits.abs().max()
    torch.testing.assert_close(graph_logits, eager_logits, rtol=0, atol=2e-2 * scale)
    # the sequences' slots and pages end the step alike; the padded rows wrote only the scratch slots and page
    slots = [s.slot for s in batch.seqs]
    others = [s for s in range(cache.num_slots) if s not in slots]
    n_states = len(cache.conv) + len(cache.ssm)
    for i, (g, t, b) in enumerate(zip(graph_state, tensors, before)):
        rows = slots if i < n_states else slice(0, cache.num_blocks)              # sequences' slots / real pages
        torch.testing.assert_close(g[rows].float(), t[rows].float(), rtol=0,
                                   atol=2e-2 * t[rows].float().abs().max() + 1e-6)
        if i < n_states:
            assert torch.equal(g[others], b[others])                              # free slots untouched
    _assert_gpu_usable()


@pytest.mark.cuda
def test_fp32_model_decodes_eagerly_with_the_reason(byte_tokenizer):
    """fp32 weights send gqa_decode to its reference, which reads seq_lens on the host: no capture is attempted,
    decode runs eagerly, the status names the op, and the GPU stays usable."""
    cfg = NemotronHConfig.from_preset("tiny", max_position_embeddings=512)
    model = build_model(cfg, device="cuda", dtype=torch.float32, backend="auto", seed=0).eval()
    engine = LLMEngine(model, byte_tokenizer, EngineConfig(max_num_seqs=4, max_num_batched_tokens=32, block_size=16,
                                                           max_model_len=256, num_blocks=64))
    status = engine.runner.cuda_graph_status
    assert status.startswith("off: the decode step at batch 4 is not capturable") and "_ref" in status, status
    assert not engine.runner.graphs
    _assert_gpu_usable()
    tokens = _run(engine, SamplingParams(max_tokens=5, temperature=0.8, seed=1, ignore_eos=True))
    assert all(len(t) == 5 for t in tokens)


@pytest.mark.cuda
def test_a_failed_capture_leaves_the_process_usable():
    x = torch.arange(4.0, device="cuda")
    with pytest.raises(RuntimeError):
        capture_graph(lambda: (x * 2).sum().item())       # a host sync inside the capture
    _assert_gpu_usable()
    y = torch.zeros(4, device="cuda")
    graph = capture_graph(lambda: y.copy_(x * 3))
    graph.replay()
    torch.cuda.synchronize()
    assert y.tolist() == [0.0, 3.0, 6.0, 9.0]
    _assert_gpu_usable()


@pytest.mark.cuda
def test_overlapped_decode_on_gpu_equals_synchronous(gpu_model, byte_tokenizer):
    """Overlapped decode with captured graphs: the tokens come through the pinned buffers and events, the next step's
    ids through the device copy. Staggered max_tokens (rows leave the batch, the next step's rows not a prefix) give
    the same batches in both engines, so the same tokens bit for bit; a stop token ends one request with its
    overlapped row discarded: that request's tokens are equal (the others' may differ in bf16 rounding after it:
    that step's batch had one more row), and every page and slot comes back."""
    def engine(overlap):
        e = LLMEngine(gpu_model, byte_tokenizer, EngineConfig(
            max_num_seqs=8, max_num_batched_tokens=256, block_size=16, max_model_len=256, num_blocks=128,
            cuda_graphs=True, cuda_graph_sizes=[1, 2, 4, 8], overlap_decode=overlap))
        if not e.runner.cuda_graph_status.startswith("on"):
            pytest.skip(f"CUDA graphs unavailable with today's decode ops: {e.runner.cuda_graph_status}")
        return e

    def run(e, params_of):
        ids = [e.add_request(p, params_of(i)) for i, p in enumerate(PROMPTS)]
        finals = {}
        while e.has_unfinished():
            for out in e.step():
                assert out.request_id not in finals
                if out.finished:
                    finals[out.request_id] = (out.token_ids, out.finish_reason)
        assert e.block_manager.num_free_blocks == e.block_manager.num_blocks
        assert e.slot_pool.num_free == e.slot_pool.num_slots
        return [finals[r] for r in ids]

    def staggered(i):
        return SamplingParams(max_tokens=6 + 4 * i, temperature=0.8 if i % 2 else 0, seed=i, ignore_eos=True)
    sync, ovl = engine(False), engine(True)
    expected = run(sync, staggered)
    assert run(ovl, staggered) == expected and ovl.num_overlapped_steps > 10 and sync.num_overlapped_steps == 0
    stop = expected[0][0][4]                                    # greedy request 0 stops at (or before) its 5th token
    def stopping(i):                                            # noqa: E306
        return SamplingParams(max_tokens=20, temperature=0, stop_token_ids=[stop] if i == 0 else [], ignore_eos=True)
    a, b = run(sync, stopping), run(ovl, stopping)
    assert a[0] == b[0] and a[0][1] == "stop" and len(a[0][0]) <= 5
    assert [len(t) for t, _ in a] == [len(t) for t, _ in b]
    _assert_gpu_usable()
