"""Host time of the serving engine's decode steps, CPU only: the CUDA-graph path with its body stubbed (logits stay
zero, so every token is 0), B sequences of P-token prompts (default 256 x 8192), synchronous vs overlapped decode
(EngineConfig.overlap_decode), the two engines measured in turns so both see the same load on a shared machine.

Per step: wall time = up to the end of the launch of the step it runs (scheduling, inputs, sampler enqueue; for the
overlapped engine also its overlap check) + after it (reading the previous step's tokens and the per-token
bookkeeping). Nothing overlaps on the CPU; on a GPU the overlapped engine runs all of it while a step is queued: the
part before the launch while the previous step computes, the part after while the new one does.

    PYTHONPATH=. python scripts/serve_host_step.py [P] [B]
"""
import gc
import statistics
import sys
import time

import torch

import model.serve.model_runner as mr
from model.config import NemotronHConfig
from model.nemotron_h import build_model
from model.serve.engine import EngineConfig, LLMEngine
from model.serve.sampling_params import SamplingParams

torch.set_num_threads(1)   # tiny tensors: a thread pool only adds contention
P = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
B = int(sys.argv[2]) if len(sys.argv) > 2 else 256
cfg = NemotronHConfig.from_preset("tiny")
model = build_model(cfg, device="cpu", dtype=torch.float32, seed=0).eval()
mr.ModelRunner._eager = lambda self, batch, sampled: torch.zeros(len(sampled), cfg.vocab_size)
mr._DecodeGraph.run = lambda self: None
SIZES = [s for s in (1, 2, 4, 8, 16, 32, 64, 128, 256) if s < B] + [B]


def make(overlap: bool) -> LLMEngine:
    e = LLMEngine(model, None, EngineConfig(max_num_seqs=B, max_num_batched_tokens=8192, max_model_len=P + 1200,
                                            block_size=64, num_blocks=B * ((P + 1200) // 64 + 2), cuda_graphs=True,
                                            cuda_graph_sizes=SIZES, overlap_decode=overlap))
    e.runner._eager_graphs(SIZES)
    g = torch.Generator().manual_seed(0)
    for _ in range(B):
        e.add_request(torch.randint(3, cfg.vocab_size, (P,), generator=g).tolist(),
                      SamplingParams(max_tokens=1000, temperature=0, ignore_eos=True))
    while e.scheduler.waiting or any(s.num_computed_tokens < s.num_prompt_tokens for s in e.scheduler.running):
        e.step()
    marks = {}
    launch, check = e.runner.launch, e._overlap_next

    def timed_launch(batch, prev=None):
        t = launch(batch, prev)
        marks["launched"] = time.perf_counter()
        return t

    def timed_check(inflight):
        t = time.perf_counter()
        r = check(inflight)
        marks["check"] = time.perf_counter() - t
        return r
    e.runner.launch, e._overlap_next, e.marks = timed_launch, timed_check, marks
    e.step()
    e.step()                                                      # into the steady state
    return e


def measure(e: LLMEngine, n: int = 40) -> tuple[float, float, float, float]:
    rows = []
    for _ in range(n):
        e.marks.clear()
        t0 = time.perf_counter()
        e.step()
        t1 = time.perf_counter()
        rows.append((t1 - t0, e.marks["launched"] - t0, t1 - e.marks["launched"], e.marks.get("check", 0.0)))
    return tuple(statistics.mean(r[i] for r in rows) * 1e3 for i in range(4))


engines = {ov: make(ov) for ov in (False, True)}
gc.collect()
gc.freeze()                                                       # the engines' objects: out of the collector's way
res = {ov: [] for ov in engines}
for _ in range(6):
    for ov, e in engines.items():
        res[ov].append(measure(e))
for ov, rows in res.items():
    wall, before, after, check = (statistics.median(r[i] for r in rows) for i in range(4))
    print(f"{'overlapped ' if ov else 'synchronous'} B={B} P={P}: step {wall:.3f} ms = up to the end of the launch "
          f"{before:.3f} ms (overlap check {check:.3f} ms) + after it {after:.3f} ms; medians of 6 means of 40 steps "
          f"({', '.join(f'{r[0]:.2f}' for r in rows)}); overlapped steps {engines[ov].num_overlapped_steps}")
