"""Do small ssd_scan calls lose on the Gluon path? Each Gluon launch builds TMA descriptors on the host (~6 us
each), and the probes showed the Gluon stages slower than Triton's at B1 L1K (chunk_state 129 against 43 us, dB/dC
109 against 83). This times the whole op, eager as the model calls it, forward and forward + backward, at B1 and
L = 1K .. 32K with NK_GLUON=0 (Triton only) and NK_GLUON=1 (Gluon where gluon_eligible holds), bench_ssd_scan's
inputs (Nemotron's H 64, P 64, G 8, N 128, bf16, D, dt_bias, softplus, final states). Two clocks per row:
triton.testing.do_bench (median ms of events around back-to-back calls: the GPU's time, host gaps included when the
host is slower) and the host's own time per call (perf_counter over 20 calls, no sync between them).
A size cutoff in gluon_eligible (ops/ssd_scan.py) is worth adding where the NK_GLUON=1 column loses. Session 27
found both paths host-bound up to L8K (0.4-0.9 ms a forward); where the host's time goes per op:
scripts/launcher_host_time.py --cuda --profile.

    PYTHONPATH=. python3 scripts/probe_ssd_host_cost.py [--lengths 1024,2048,4096,8192,32768]      # H200"""
import argparse
import os
import time

import torch
import triton

from bench.bench_ssd_scan import _input_maker, _ours

GRAD_KEYS = ("x", "dt", "A", "B", "C", "D", "dt_bias")


def _fwd_bwd(s: dict, dy: torch.Tensor):
    y, _ = _ours(s)
    return torch.autograd.grad(y, [s[k] for k in GRAD_KEYS], dy)


def _host_ms(fn, calls: int = 20) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()                                     # before the sync: the host's issue time only
    torch.cuda.synchronize()
    return (t1 - t0) * 1e3 / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,2048,4096,8192,32768")
    args = parser.parse_args()
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}; ms: GPU (do_bench) / host issue per call")
    print(f"{'B1 L':>8} {'pass':>8} {'NK_GLUON=0':>20} {'NK_GLUON=1':>20}  gluon/triton")
    for L in (int(v) for v in args.lengths.split(",")):
        s = _input_maker(1, L, dev)(0)
        for k in GRAD_KEYS:
            s[k].requires_grad_(True)
        dy = torch.randn_like(s["x"])
        row = {}
        for name, fn in (("fwd", lambda: _ours(s)), ("fwd+bwd", lambda: _fwd_bwd(s, dy))):
            for flag in ("0", "1"):
                os.environ["NK_GLUON"] = flag
                fn()                                             # compile / first-call costs outside the clocks
                row[name, flag] = (triton.testing.do_bench(fn, warmup=10, rep=100), _host_ms(fn))
            (g0, h0), (g1, h1) = row[name, "0"], row[name, "1"]
            print(f"{L:>8} {name:>8} {g0:>9.3f} / {h0:>7.3f}  {g1:>9.3f} / {h1:>7.3f}  {g1 / g0:>6.2f}x", flush=True)
    os.environ.pop("NK_GLUON")


if __name__ == "__main__":
    main()
