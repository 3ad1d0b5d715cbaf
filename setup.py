"""Builds nemotron_kernels._C from csrc/ with torch's cpp_extension (pybind11 + ninja).

Environment switches:
  NEMOTRON_SKIP_CUDA=1        build the C++ CPU part only
  NEMOTRON_CUDA_ARCHS="90a"   semicolon-separated SM list (default sm_90a, Hopper)
  MAX_JOBS                    parallel compile jobs (default: from free memory, ~3.5 GB per CUTLASS TU)
"""
import glob
import os
import shutil

# torch guesses CUDA_HOME from `which nvcc`; /usr/local/bin/nvcc is often a wrapper script, which makes
# the guess /usr/local and the link fail (-lcudart). Prefer the real toolkit folder when it exists.
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def _say(msg: str) -> None:
    print(f"[nemotron-kernels] {msg}", flush=True)


def _cuda_decision() -> tuple[bool, str]:
    if os.environ.get("NEMOTRON_SKIP_CUDA", "0") == "1":
        return False, "NEMOTRON_SKIP_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if CUDA_HOME is None or shutil.which(os.path.join(CUDA_HOME, "bin", "nvcc")) is None:
        return False, "nvcc not found (set CUDA_HOME)"
    return True, f"torch {torch.__version__} (CUDA {torch.version.cuda}), nvcc at {CUDA_HOME}"


def _max_jobs() -> None:
    if "MAX_JOBS" in os.environ:
        return
    try:
        with open("/proc/meminfo") as f:
            avail_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
        by_mem = max(1, int(avail_kb / 1e6 // 3.5))
    except (OSError, StopIteration):
        by_mem = 1
    os.environ["MAX_JOBS"] = str(max(1, min(os.cpu_count() or 1, by_mem)))


def _arch_flags() -> list[str]:
    archs = [a.strip() for a in os.environ.get("NEMOTRON_CUDA_ARCHS", "90a").split(";") if a.strip()]
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def _cutlass_includes() -> list[str]:
    try:
        import cutlass_library
    except ImportError:
        _say("nvidia-cutlass not installed: CUTLASS/CuTe headers unavailable (pip install --no-deps nvidia-cutlass)")
        return []
    src = cutlass_library.source_path
    return [os.path.join(src, "include"), os.path.join(src, "tools", "util", "include")]


class Build(BuildExtension):
    """Pins the build folder so an unchanged tree rebuilds incrementally (pip -e uses a fresh temp dir)."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(ROOT, "build", "temp")


with_cuda, why = _cuda_decision()
_max_jobs()
cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
cuda_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
build_note = f"CUDA kernels built for sm_{os.environ.get('NEMOTRON_CUDA_ARCHS', '90a')}: {why}" if with_cuda else (
    f"built without CUDA ({why})")
_say(build_note + f"; MAX_JOBS={os.environ['MAX_JOBS']}")

# The note travels with the package so backends() can say how this copy was built.
with open(os.path.join(ROOT, "nemotron_kernels", "_build_info.py"), "w") as f:
    f.write(f"# written by setup.py at build time\nBUILD_NOTE = {build_note!r}\nWITH_CUDA = {with_cuda!r}\n")

cxx_flags = ["-O3", "-std=c++20"]
include_dirs = [os.path.join(ROOT, "csrc")]
if with_cuda:
    cxx_flags.append("-DNEMOTRON_WITH_CUDA")
    ext = CUDAExtension(
        "nemotron_kernels._C",
        cpp_sources + cuda_sources,
        include_dirs=include_dirs + _cutlass_includes(),
        extra_compile_args={
            "cxx": cxx_flags,
            # -DNDEBUG: torch does not pass it, and CUTLASS device asserts then serialise wgmma.
            "nvcc": ["-O3", "-std=c++20", "-DNDEBUG", "-DNEMOTRON_WITH_CUDA", "--expt-relaxed-constexpr",
                     "--expt-extended-lambda", "-lineinfo",
                     "-diag-suppress=2908",  # CUTLASS's sm100 headers: implicit capture of `this` (C++20 noise)
                     *_arch_flags()],
        },
    )
else:
    ext = CppExtension("nemotron_kernels._C", cpp_sources, include_dirs=include_dirs,
                       extra_compile_args={"cxx": cxx_flags})

setup(ext_modules=[ext], cmdclass={"build_ext": Build})
