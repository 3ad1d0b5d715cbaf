"""Plumbing shared by every Triton kernel module: interpreter detection, Triton's availability, loading a kernel
module in the current Triton mode, and the multiprocessor count.

Triton decides at *decoration* time whether `@triton.jit` builds a compiled kernel or a CPU-interpreted one
(TRITON_INTERPRET=1). `kernel_module(name)` imports a kernel module and re-imports it when the mode changed since
it was loaded, so one process can run interpreted kernels (tests on CPU tensors) and compiled ones.
The domain modules (mamba_common, gqa_attention_common) add dispatch rules and backend reports; aot_compile
(sm_90a without a GPU) serves every kernel module's aot_compile_all. gluon_platform gates the Hopper Gluon kernels
(*_gluon.py, never interpreted, imported plainly), aot_compile_gluon compiles them, live_in_registers checks a
compile for registers read before they are written.
"""
import functools
import importlib
import os

import torch

_PACKAGE = "nemotron_kernels.triton"


def interpreting() -> bool:
    """True when TRITON_INTERPRET asks for Triton's CPU interpreter (read now, not at import)."""
    try:
        from triton import knobs
        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@functools.lru_cache(maxsize=1)
def triton_status() -> tuple[bool, str]:
    """(importable, why) for Triton."""
    try:
        import triton
        import triton.language  # noqa: F401
    except ImportError as e:  # CPU-only installs may lack it
        return False, f"triton not importable ({e})"
    return True, f"triton {triton.__version__}"


_checked: dict[tuple[str, str], object] = {}     # modules checked under _checked_mode (reloads happen only here)
_checked_mode: list = [None]


def kernel_module(name: str, package: str = _PACKAGE):
    """Import <package>.<name> (default: nemotron_kernels.triton) in the current Triton mode: reload it if it was
    defined under the other mode, or if a module it takes jit helpers from (its DEPENDS, in the same package) was
    reloaded since (DEP_TOKENS holds the LOAD_TOKEN of each dependency it imported). Launchers call this on every
    op call, so a module once checked is returned from a dict until the mode changes (~1 us instead of ~6)."""
    mode = interpreting()
    if mode != _checked_mode[0]:
        _checked.clear()
        _checked_mode[0] = mode
    mod = _checked.get((package, name))
    if mod is None:
        mod = importlib.import_module(f"{package}.{name}")
        deps = [kernel_module(dep, package) for dep in getattr(mod, "DEPENDS", ())]
        tokens = getattr(mod, "DEP_TOKENS", {})
        if mod.INTERPRETED != mode or any(tokens.get(d.__name__) is not d.LOAD_TOKEN for d in deps):
            mod = importlib.reload(mod)
        _checked[(package, name)] = mod
    return mod


def dep_tokens(*modules) -> dict:
    """DEP_TOKENS of a kernel module that imports jit helpers from `modules` (see kernel_module)."""
    return {m.__name__: m.LOAD_TOKEN for m in modules}


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host-side grids and plans. Not triton.cdiv: in Triton 3.6 (the H200's) and 3.8 it is a
    ConstexprFunction, about 5 us per host call, and a plan that loops over it (ssd_scan's segments: ~190 calls,
    0.55 ms on this project's CI CPU) runs per layer of a prefill while the GPU waits (bench/NOTES.md, session 11)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The least power of 2 >= n (1 for n <= 1), for host-side tile sizes; not triton.next_power_of_2, a
    ConstexprFunction like triton.cdiv (above)."""
    return 1 << max(n - 1, 0).bit_length()


@functools.lru_cache(maxsize=8)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device, cpu: int) -> int:
    """Streaming multiprocessors of `device` (132 on the H200); `cpu` for CPU tensors (the interpreter)."""
    if device.type != "cuda":
        return cpu
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


GLUON_TRITON = "3.6."    # the Gluon API is experimental: the Triton release the Hopper Gluon kernels were verified on


@functools.lru_cache(maxsize=8)
def _capability(index: int) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(index))


def _triton_version() -> str:
    import triton
    return triton.__version__


def gluon_platform(device: torch.device) -> tuple[bool, str]:
    """(whether the Hopper Gluon kernels (*_gluon.py) may run on `device`, why (not)): NK_GLUON not "0" (read per
    call), a CUDA device of compute capability 9.0, Triton 3.6, compiled Triton (Gluon has no interpreter). Each
    op adds its kernels' scope on top."""
    if os.environ.get("NK_GLUON") == "0":
        return False, "off (NK_GLUON=0)"
    if device.type != "cuda":
        return False, f"{device.type} tensors"
    cap = _capability(device.index if device.index is not None else torch.cuda.current_device())
    if cap != (9, 0):
        return False, f"compute capability {cap[0]}.{cap[1]}, not Hopper's 9.0"
    version = _triton_version()
    if not version.startswith(GLUON_TRITON):
        return False, f"triton {version}: the experimental Gluon kernels are verified with triton 3.6 only"
    if interpreting():
        return False, "Triton's interpreter (TRITON_INTERPRET=1)"
    return True, f"Hopper, triton {version}"


def aot_compile_gluon(fn, types: dict, constexprs: dict, aligned=(), **options):
    """fn (a gluon.jit kernel) compiled for sm_90a without a GPU, with Triton 3.6's Gluon: `types` the Triton type
    of each runtime argument ("*fp32", "i32", "tensordesc<...>"), `aligned` the arguments the JIT launcher finds
    divisible by 16, `options` num_warps / maxnreg. -> the CompiledKernel. Must run with TRITON_INTERPRET unset."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = {name: ("constexpr" if name in constexprs else types[name]) for name in fn.arg_names}
    attrs = {(fn.arg_names.index(a), ): [["tt.divisibility", 16]] for a in aligned}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_stages": 1, **options})


def live_in_registers(cubin: bytes) -> list[int]:
    """The general registers a compiled kernel reads before writing them on some path from its entry (live at its
    first instruction in nvdisasm's life ranges, Triton's nvdisasm). Such a read takes garbage when its path runs:
    ptxas 12.8 (Triton 3.6) produced one in the FP8 attention forward's straight-line code (gqa_attention_fwd_gluon
    PACK_E4M3). The analysis ignores which paths can run: a read behind a loop that never runs zero times is listed
    too (the Gluon dk/dv and SSD dx kernels, correct on the H200, list a few)."""
    import re
    import subprocess
    import tempfile

    import triton
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        lines = subprocess.run([nvdisasm, "-plr", f.name], capture_output=True, text=True, check=True).stdout
    lines = lines.splitlines()
    # the header "// |   # 0 1 2 ... |" numbers the GPR columns; a register's mark stands under its last digit
    head = next(i for i, line in enumerate(lines) if re.search(r"// \|\s+# 0 1 2 ", line))
    start = lines[head].index("// |") + 4
    gprs = lines[head][start:lines[head].index("|", start)]
    columns = {int(m.group()): start + m.end() - 1 for m in re.finditer(r"\d+", gprs)}
    entry = next(line for line in lines[head:] if re.search(r"/\*0000\*/\s+\w", line))
    # ':' live across, 'v' last use, 'x' use and redefinition: read before the kernel wrote it ('^' = written)
    return [reg for reg, col in columns.items() if col < len(entry) and entry[col] in ":vx"]


def aot_compile(kernel, signature: dict, constexprs: dict, num_warps: int = 4, num_stages: int = 2,
                arch: int = 90, unaligned: tuple = (), aligned: tuple = (), maxnreg: int | None = None):
    """Compile `kernel` (a triton.jit function, or an Autotuner / Heuristics around one) for sm_<arch>a without a
    GPU; returns the CompiledKernel (.asm["ptx"], .asm["cubin"]).
    maxnreg: ptxas' cap on registers per thread (None: ptxas chooses, up to 255).

    signature: {arg: "*bf16" | "*fp32" | "i32" | "i64" | "fp32" ...} for every runtime argument;
    constexprs: {arg: value}. Pointers are declared 16-byte aligned and `stride_*` ints divisible by 16 (except
    those named in `unaligned`), like the other ints named in `aligned`: the specialisation the JIT launcher gets
    at NemotronH shapes (e.g. x's row stride 10304 inside in_proj's output, 6144 channels). Must run with
    TRITON_INTERPRET unset."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = kernel
    while not isinstance(fn, triton.runtime.JITFunction):   # unwrap Autotuner / Heuristics
        if not hasattr(fn, "fn"):
            raise TypeError(f"aot_compile needs a compiled-mode triton.jit kernel, got {type(kernel).__name__} "
                            "(is TRITON_INTERPRET set?)")
        fn = fn.fn
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        if name not in signature:
            raise KeyError(f"aot_compile: no type for argument {name!r} of {fn.__name__}")
        sig[name] = signature[name]
        if signature[name].startswith("*") or name in aligned or (name.startswith("stride_") and name not in unaligned):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages, "maxnreg": maxnreg})
