"""Host cost of one Triton launch on this machine: JITFunction's path (bind, specialise, cache key, launch) against
the compiled kernel's own launcher called directly, for a kernel with 12 tensors, 12 ints and 4 constexprs (about
an ssd_scan stage's signature). The difference is what a per-op launch cache could save per launch.
    PYTHONPATH=. python3 scripts/triton_launch_cost.py        # GPU"""
import time

import torch
import triton
import triton.language as tl
from triton import knobs


@triton.jit
def _k(p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11,
       C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr):
    tl.store(p0 + tl.program_id(0), i0 + i11 + C0)


def main():
    ps = [torch.zeros(1024, device="cuda") for _ in range(12)]
    ints = [1024 + 16 * i for i in range(12)]
    args = (*ps, *ints)
    kw = dict(C0=1, C1=2, C2=3, C3=4)
    compiled = _k[(1,)](*args, **kw)
    torch.cuda.synchronize()
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        _k[(1,)](*args, **kw)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    stream = torch.cuda.current_stream().cuda_stream
    full = (*args, 1, 2, 3, 4)
    t2 = time.perf_counter()
    for _ in range(n):
        compiled.run(1, 1, 1, stream, compiled.function, compiled.packed_metadata, None,
                     knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *full)
    t3 = time.perf_counter()
    torch.cuda.synchronize()
    print(f"triton {triton.__version__}: JITFunction launch {(t1 - t0) / n * 1e6:.1f} us, "
          f"compiled.run direct {(t3 - t2) / n * 1e6:.1f} us (12 tensors, 12 ints, 4 constexprs)")


if __name__ == "__main__":
    main()
