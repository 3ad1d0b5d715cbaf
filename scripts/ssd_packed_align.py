"""The SSD kernels' times (torch profiler, one fwd + bwd step) for B1 L32K batched against the packed variants on
the bench's 16 sequences, the same rounded up to the chunk, one 32K sequence, and one whose chunk starts are off
by 64 or 1 token: whether a packed kernel loses to its batched twin, and whether alignment is why. Session 24:
the packed da ran 26% slower per token on identical input, from dt / cs loads masked by a length loaded from the
chunk table (scalar where batched used pairs), not from alignment (bench/NOTES.md).
    PYTHONPATH=. python3 scripts/ssd_packed_align.py     # H200
    PYTHONPATH=. python3 scripts/ssd_packed_align.py --quick     # batched and the bench's packed case only (A/Bs)
    ncu --profile-from-start off ... python3 scripts/ssd_packed_align.py --ncu   # one profiled step per case"""
import collections
import sys

import torch

from bench.bench_ssd_scan import CHUNK, PACKED_LENGTHS, _input_maker, _ours_fwd_bwd, _with_grad, packed_cu


def profile(name, cu):
    seqlen = cu[-1] if cu else 32768
    s = _with_grad(_input_maker(1, seqlen, torch.device("cuda"), cu)(0))
    for _ in range(3):
        _ours_fwd_bwd(s)
    torch.cuda.synchronize()
    if "--ncu" in sys.argv:
        torch.cuda.cudart().cudaProfilerStart()
        _ours_fwd_bwd(s)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
        return
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            _ours_fwd_bwd(s)
        torch.cuda.synchronize()
    times = collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.name.startswith("_ssd"):
            times[e.name] += e.device_time / 10
    print(f"{name} ({seqlen} tokens): " + ", ".join(f"{k[5:-7]} {v:.0f}" for k, v in times.most_common()))


profile("batched", None)
profile("packed", packed_cu())
if "--quick" in sys.argv:
    sys.exit(0)
profile("packed, lengths rounded up to the chunk", packed_cu([-(-n // CHUNK) * CHUNK for n in PACKED_LENGTHS]))
profile("packed, one sequence", [0, 32768])
profile("packed, 64 then 32704 tokens (chunk starts off by 64)", [0, 64, 32768])
profile("packed, 1 then 32767 tokens (chunk starts off by 1)", [0, 1, 32768])
