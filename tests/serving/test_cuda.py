"""The engine on the GPU (marker `cuda`): end to end with kernels, CUDA-graph decode equal to eager decode, and the
graph guard on the CPU."""
import pytest
import torch

from model.config import NemotronHConfig
from model.nemotron_h import build_model
from model.serve import EngineConfig, LLMEngine, SamplingParams

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
    assert not engine.runner.graphs


@pytest.fixture(scope="module")
def gpu_model():
    cfg = NemotronHConfig.from_preset("tiny", max_position_embeddings=512)
    return build_model(cfg, device="cuda", dtype=torch.bfloat16, backend="auto", seed=0).eval()


@pytest.mark.cuda
def test_engine_on_gpu_end_to_end(gpu_model, byte_tokenizer):
    engine = LLMEngine(gpu_model, byte_tokenizer, EngineConfig(max_num_seqs=8, max_num_batched_tokens=32,
                                                               block_size=16, max_model_len=256))
    print("CUDA graphs:", engine.runner.cuda_graph_status)
    seeded = _run(engine, SamplingParams(max_tokens=12, temperature=0.7, top_p=0.9, seed=3, ignore_eos=True))
    assert all(len(t) == 12 for t in seeded)
    assert _run(engine, SamplingParams(max_tokens=12, temperature=0.7, top_p=0.9, seed=3, ignore_eos=True)) == seeded


@pytest.mark.cuda
@torch.no_grad()
def test_cuda_graph_decode_matches_eager(gpu_model, byte_tokenizer):
    engine = LLMEngine(gpu_model, byte_tokenizer, EngineConfig(
        max_num_seqs=8, max_num_batched_tokens=256, block_size=16, max_model_len=256, cuda_graphs=True,
        cuda_graph_sizes=[1, 2, 4, 8]))
    runner = engine.runner
    if not runner.cuda_graph_status.startswith("on"):
        pytest.skip(f"CUDA graphs unavailable with today's decode ops: {runner.cuda_graph_status}")
    assert sorted(runner.graphs) == [1, 2, 4, 8]
    for p in PROMPTS:
        engine.add_request(p, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    engine.step()                                         # all 5 prompts prefilled in one step
    batch = engine.scheduler.schedule()
    assert batch.num_decodes == len(batch) == 5
    cache = runner.cache
    tensors = [*cache.conv.values(), *cache.ssm.values(), *cache.k.values(), *cache.v.values()]
    before = [t.clone() for t in tensors]
    graph_logits = runner._replay(runner._graph_for(5), batch.seqs).clone()            # padded to 8 rows
    graph_state = [t.clone() for t in tensors]
    for t, b in zip(tensors, before):
        t.copy_(b)
    ids, meta = runner._decode_meta(batch.seqs)
    eager_logits = runner._logits(runner._forward(ids, 5, meta, None))
    scale = eager_logits.abs().max()
    torch.testing.assert_close(graph_logits, eager_logits, rtol=0, atol=2e-2 * scale)
    # the real slots and pages end the step alike; padded rows only touched the scratch slot and page
    slots = [s.slot for s in batch.seqs]
    n_states = len(cache.conv) + len(cache.ssm)
    for i, (g, t) in enumerate(zip(graph_state, tensors)):
        g, t = (g[slots], t[slots]) if i < n_states else (g[:-1], t[:-1])
        torch.testing.assert_close(g.float(), t.float(), rtol=0, atol=2e-2 * t.float().abs().max() + 1e-6)
