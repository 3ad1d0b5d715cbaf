"""OpenAI-compatible server for a NemotronH model.

    python -m model.serve --checkpoint DIR [--fp8] [--port 8000]
    python -m model.serve --random-weights --preset nemotron3-nano-30b-a3b [--fp8] [--port 8000]
    python -m model.serve --random-weights --preset tiny --device cpu          # demo, byte-level tokenizer
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import torch


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m model.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="HF-layout checkpoint directory (config.json, safetensors, tokenizer)")
    p.add_argument("--random-weights", action="store_true",
                   help="random weights (from --preset, or from the checkpoint's config.json) instead of loading")
    p.add_argument("--preset", help="config preset for --random-weights, e.g. nemotron3-nano-30b-a3b or tiny")
    p.add_argument("--fp8", action="store_true", help="selective FP8 (spec 4.4): experts + Mamba projections")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="name in /v1/models (default: checkpoint folder or preset)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32", "float64"], default=None)
    p.add_argument("--backend", choices=["auto", "reference", "kernels"], default="auto")
    p.add_argument("--seed", type=int, default=0, help="random-weight seed")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="tokens per step (prefill chunk + decodes); default 8192 on cuda, 2048 on cpu")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--num-blocks", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.90)
    p.add_argument("--kv-cache-dtype", default="auto", help="auto | fp8")
    p.add_argument("--kv-cache-scales", default="auto", choices=("auto", "layer", "device"),
                   help="FP8 pages' scales: the checkpoint's (layer), computed on the device from the first prefill "
                        "(device), or layer where the checkpoint has them (auto)")
    p.add_argument("--fp8-attention", action="store_true", help="prefill attention in FP8 e4m3")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--no-overlap-decode", action="store_true",
                   help="read each decode step's tokens before launching the next (default: overlap with CUDA graphs)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if (args.checkpoint is None) == (args.preset is None):
        p.error("give --checkpoint DIR, or --random-weights --preset NAME")
    if args.preset is not None and not args.random_weights:
        p.error("--preset needs --random-weights")
    return args


def main(argv=None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from aiohttp import web  # noqa: F401  (fail early and clearly if aiohttp is missing)

    from .engine import EngineConfig, LLMEngine
    from .llm import load_for_serving
    from .server import create_app, start_server

    engine_config = EngineConfig(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens or (8192 if args.device.startswith("cuda") else 2048),
        max_model_len=args.max_model_len, block_size=args.block_size, num_blocks=args.num_blocks,
        gpu_memory_utilization=args.gpu_memory_utilization, kv_cache_dtype=args.kv_cache_dtype,
        kv_cache_scales=args.kv_cache_scales, fp8_attention=args.fp8_attention,
        cuda_graphs=False if args.no_cuda_graphs else None, overlap_decode=False if args.no_overlap_decode else None)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, tokenizer = load_for_serving(args.checkpoint, preset=args.preset, random_weights=args.random_weights,
                                        device=args.device, dtype=dtype, backend=args.backend, fp8=args.fp8,
                                        seed=args.seed)
    engine = LLMEngine(model, tokenizer, engine_config)
    name = args.model_name or (os.path.basename(os.path.normpath(args.checkpoint)) if args.checkpoint
                               else args.preset)
    app = create_app(engine, name)

    async def serve():
        runner, port = await start_server(app, args.host, args.port)
        logging.getLogger("model.serve").info("serving %r on http://%s:%d (%s)", name, args.host, port,
                                              engine.stats())
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
