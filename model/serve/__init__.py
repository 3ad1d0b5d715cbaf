"""Serving engine for NemotronH: continuous batching over the hybrid cache (paged KV + Mamba state slots),
chunked prefill, preemption by recompute, on-device sampling, CUDA graphs for decode, selective FP8, an offline
API and an OpenAI-compatible HTTP server (`python -m model.serve`).

    from model.serve import LLM, SamplingParams
    llm = LLM(preset="tiny", random_weights=True, device="cpu")
    print(llm.generate("Hello", SamplingParams(max_tokens=16, temperature=0))[0].text)

Parts (nano-vllm's decomposition): SamplingParams, Sequence, BlockManager + StateSlotPool, Scheduler, ModelRunner
(+ Sampler), LLMEngine / LLM, server (aiohttp).
"""
from .engine import EngineConfig, LLMEngine, RequestOutput
from .llm import LLM, load_for_serving
from .sampling_params import SamplingParams
from .tokenizer import ServeTokenizer

__all__ = ["LLM", "LLMEngine", "EngineConfig", "RequestOutput", "SamplingParams", "ServeTokenizer",
           "load_for_serving"]
