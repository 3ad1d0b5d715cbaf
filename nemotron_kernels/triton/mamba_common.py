"""Shared plumbing of the Mamba-2 Triton kernels (gated_rmsnorm, causal_conv1d, ssd_state_update, ssd_scan):
interpreter detection, loading a kernel module in the current Triton mode, dispatch decisions, and the
ahead-of-time sm_90a compile used by CI.

Triton decides at *decoration* time whether `@triton.jit` builds a compiled kernel or a CPU-interpreted one
(TRITON_INTERPRET=1). `kernel_module(name)` imports a kernel module and re-imports it when the mode changed
since it was loaded, so one process can run interpreted kernels (tests on CPU tensors) and compiled ones.
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
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError as e:
        return False, f"triton not importable ({e})"
    return True, f"triton {triton.__version__}"


def kernel_module(name: str):
    """Import nemotron_kernels.triton.<name> in the current Triton mode: reload it if it was defined under the
    other mode, or if a module it takes jit helpers from (its DEPENDS) was reloaded since (DEP_TOKENS holds the
    LOAD_TOKEN of each dependency it imported)."""
    mod = importlib.import_module(f"{_PACKAGE}.{name}")
    deps = [kernel_module(dep) for dep in getattr(mod, "DEPENDS", ())]
    tokens = getattr(mod, "DEP_TOKENS", {})
    if mod.INTERPRETED != interpreting() or any(tokens.get(d.__name__) is not d.LOAD_TOKEN for d in deps):
        mod = importlib.reload(mod)
    return mod


def dep_tokens(*modules) -> dict:
    """DEP_TOKENS of a kernel module that imports jit helpers from `modules` (see kernel_module)."""
    return {m.__name__: m.LOAD_TOKEN for m in modules}


def use_triton(*tensors: torch.Tensor, dot_kernel: bool = False) -> bool:
    """Whether the public op runs its Triton kernel for these (non-None) tensors.

    CUDA tensors in fp16/bf16/fp32 -> Triton. CPU tensors -> Triton only under TRITON_INTERPRET=1, in fp16/fp32
    (and bf16 for kernels without tl.dot: the interpreter mis-computes bf16 tl.dot). float64 -> reference."""
    ts = [t for t in tensors if isinstance(t, torch.Tensor)]
    if not ts or not triton_status()[0]:
        return False
    first = ts[0]
    if any(t.is_floating_point() and t.dtype == torch.float64 for t in ts):
        return False
    if first.device.type == "cuda":
        return first.dtype in (torch.float16, torch.bfloat16, torch.float32)
    if first.device.type == "cpu" and interpreting():
        allowed = (torch.float16, torch.float32) if dot_kernel else (torch.float16, torch.bfloat16, torch.float32)
        return first.dtype in allowed
    return False


def backend_report(device_type: str, op: str, dot_kernel: bool = False) -> str:
    """The `backend_report` line of a Mamba-2 op: which implementation runs for tensors on `device_type`, and why."""
    ok, why = triton_status()
    if device_type == "cuda":
        if ok:
            return f"triton: {op} kernels ({why}); float64 -> reference"
        return f"reference: {why}"
    if device_type == "cpu" and ok and interpreting():
        dtypes = "fp16/fp32" if dot_kernel else "fp16/bf16/fp32"
        return f"triton: Triton's CPU interpreter (TRITON_INTERPRET=1) for {dtypes} CPU tensors; others -> reference"
    return f"reference: no Triton kernels on {device_type} (set TRITON_INTERPRET=1 to interpret them)"


@functools.lru_cache(maxsize=8)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (132 on the H200); 16 for CPU tensors (interpreter)."""
    if device.type != "cuda":
        return 16
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot `input_precision`: exact "ieee" for fp32 inputs (no TF32 rounding), "tf32" otherwise (unused for
    16-bit inputs, whose products are exact on tensor cores)."""
    return "ieee" if dtype == torch.float32 else "tf32"


TL_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
                  torch.int32: "i32", torch.int64: "i64"}


def aot_compile(kernel, signature: dict, constexprs: dict, num_warps: int = 4, num_stages: int = 2,
                arch: int = 90, unaligned: tuple = (), aligned: tuple = ()):
    """Compile `kernel` (a triton.jit function) for sm_<arch>a without a GPU; returns the CompiledKernel.

    signature: {arg: "*bf16" | "*fp32" | "i32" | "i64" | "fp32" ...} for every runtime argument;
    constexprs: {arg: value}. Pointers are declared 16-byte aligned and `stride_*` ints divisible by 16 (except
    those named in `unaligned`), like the other ints named in `aligned`: the specialisation the JIT launcher gets
    at NemotronH shapes (e.g. x's row stride 10304 inside in_proj's output, 6144 channels). Must run with
    TRITON_INTERPRET unset."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = kernel
    if not hasattr(fn, "arg_names") or not hasattr(fn, "src"):
        raise TypeError(f"aot_compile needs a compiled-mode triton.jit kernel, got {type(kernel).__name__} "
                        "(is TRITON_INTERPRET set?)")
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
                          options={"num_warps": num_warps, "num_stages": num_stages})
