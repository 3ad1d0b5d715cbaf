"""Shared fixtures of the serving tests: one tiny random-weight model in float64 on the CPU (float64 makes the
logits independent of batch composition and chunking to ~1e-15, so outputs can be compared token for token)."""
import gc

import pytest
import torch

from model.config import NemotronHConfig
from model.nemotron_h import build_model
from model.serve import EngineConfig, LLMEngine, ServeTokenizer


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # tiny shapes: intra-op threads only add contention on small CI machines
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _free_gpu_memory(request):
    """After each `cuda` test: collect what it left unreachable (an engine's runner and its decode graphs form a
    cycle) and hand the cached blocks back, so the next engine sizes its KV cache from memory truly in use."""
    yield
    if request.node.get_closest_marker("cuda") is not None and torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


@pytest.fixture(scope="session")
def tiny_model():
    config = NemotronHConfig.from_preset("tiny", max_position_embeddings=512)
    return build_model(config, device="cpu", dtype=torch.float64, backend="reference", seed=0).eval()


@pytest.fixture(scope="session")
def byte_tokenizer():
    return ServeTokenizer.byte_level()


@pytest.fixture
def make_engine(tiny_model, byte_tokenizer):
    def make(**kw):
        kw.setdefault("max_num_seqs", 8)
        kw.setdefault("max_num_batched_tokens", 64)
        kw.setdefault("block_size", 4)
        kw.setdefault("max_model_len", 256)
        tokenizer = kw.pop("tokenizer", byte_tokenizer)
        eager_graphs = kw.pop("eager_graphs", False)   # the CUDA-graph decode path, run eagerly (no capture on CPU)
        if eager_graphs:
            kw.setdefault("cuda_graph_sizes", [1, 2, 4, 8, 16, 24, 32])
            kw["cuda_graphs"] = True
        engine = LLMEngine(tiny_model, tokenizer, EngineConfig(**kw))
        if eager_graphs:
            engine.runner._eager_graphs(engine.config.graph_sizes())
        return engine
    return make


def run_to_completion(engine, max_steps=10_000):
    """Steps until idle; returns {request_id: final RequestOutput} and checks the cache is fully released."""
    finals = {}
    for _ in range(max_steps):
        if not engine.has_unfinished():
            break
        for out in engine.step():
            assert out.request_id not in finals, f"output after finish for {out.request_id}"
            if out.finished:
                finals[out.request_id] = out
        engine.scheduler.check_consistent()
    assert not engine.has_unfinished(), "engine did not finish"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert engine.slot_pool.num_free == engine.slot_pool.num_slots
    return finals


@pytest.fixture
def run_all():
    return run_to_completion
