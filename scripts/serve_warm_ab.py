"""Throughput of the serving engine three times in one process, overlapped decode off / on / off (GPU, BF16, the
full config with random weights): N requests of 8K random prompt tokens, n_out output tokens each, on one engine.
Each run's wall time is split into ramp steps (requests still waiting: prefill chunks beside decodes) and pure
decode steps, so a one-time cost of the first run (kernels compiled for the ramp's sizes) shows apart from what
overlapped decode changes; each run also counts the kernels Triton compiled during it (new entries of its cache
folder) and lists its slowest steps.   python scripts/serve_warm_ab.py [N=128] [n_out=256]"""
import os
import pathlib
import sys
import time

import torch

from model.config import NemotronHConfig
from model.nemotron_h import build_model
from model.serve import EngineConfig, LLMEngine, SamplingParams


def triton_cache_entries() -> int:
    folder = pathlib.Path(os.environ.get("TRITON_CACHE_DIR", pathlib.Path.home() / ".triton" / "cache"))
    return sum(1 for _ in folder.glob("*/__grp__*.json")) if folder.is_dir() else 0


def main(n: int = 128, n_out: int = 256, n_in: int = 8192) -> None:
    torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    cfg = NemotronHConfig.from_preset("nemotron3-nano-30b-a3b")
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16, backend="auto", seed=0).eval()
    engine = LLMEngine(model, None, EngineConfig(max_num_seqs=256, max_num_batched_tokens=n_in,
                                                 max_model_len=n_in + 1100, block_size=64))   # as bench serve
    gen = torch.Generator().manual_seed(0)
    for overlap in (False, True, False):
        engine.config.overlap_decode = overlap
        for i in range(n):
            engine.add_request(torch.randint(0, cfg.vocab_size, (n_in,), generator=gen).tolist(),
                               SamplingParams(max_tokens=n_out, temperature=0.8, top_p=0.95, seed=i, ignore_eos=True))
        torch.cuda.synchronize()
        secs, steps, overlapped = {"ramp": 0.0, "decode": 0.0}, {"ramp": 0, "decode": 0}, engine.num_overlapped_steps
        compiled, slowest = triton_cache_entries(), []
        t0 = time.perf_counter()
        while engine.has_unfinished():
            kind = "ramp" if engine.scheduler.waiting else "decode"
            t = time.perf_counter()
            engine.step()
            dt = time.perf_counter() - t
            secs[kind] += dt
            steps[kind] += 1
            slowest = sorted(slowest + [(dt, kind, steps[kind])], reverse=True)[:5]
        total = time.perf_counter() - t0
        parts = "; ".join(f"{k} {steps[k]} steps {secs[k]:.1f} s ({secs[k] / max(steps[k], 1) * 1e3:.1f} ms)"
                          for k in secs)
        print(f"overlap={overlap}: {n * n_out / total:,.0f} output tok/s, {total:.1f} s; {parts}; "
              f"{engine.num_overlapped_steps - overlapped} steps overlapped; Triton compiled "
              f"{triton_cache_entries() - compiled} kernels; slowest steps: "
              + ", ".join(f"{kind} #{i} {dt * 1e3:.0f} ms" for dt, kind, i in slowest), flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
