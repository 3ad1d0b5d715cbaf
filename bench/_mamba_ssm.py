"""The one mamba_ssm loader the benches share (baselines from the pure-Triton wheel .whl/mamba_ssm-2.3.2.post1).

mamba_ssm/__init__.py imports the CUDA extension selective_scan_cuda, which the wheel lacks, so the packages
mamba_ssm, mamba_ssm.ops, mamba_ssm.ops.triton and mamba_ssm.utils are registered as bare package modules
(a real ModuleSpec with submodule_search_locations, and __path__) and only the wanted submodules are imported.
The spec matters: a later importlib.util.find_spec("mamba_ssm") (a second bench in the same process) reads
sys.modules["mamba_ssm"].__spec__ and raises "ValueError: mamba_ssm.__spec__ is None" without one."""
import importlib
import importlib.machinery
import importlib.util
import os
import sys

_PACKAGES = (("mamba_ssm", ""), ("mamba_ssm.ops", "ops"), ("mamba_ssm.ops.triton", "ops/triton"),
             ("mamba_ssm.utils", "utils"))


def _root() -> str:
    loaded = sys.modules.get("mamba_ssm")
    if loaded is not None and getattr(loaded, "__path__", None):
        return next(iter(loaded.__path__))
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mamba_ssm is not installed (carry .whl/mamba_ssm-2.3.2.post1-py3-none-any.whl)")
    return next(iter(spec.submodule_search_locations))


def load_mamba_ssm(*modules: str):
    """[mamba_ssm.ops.triton.<m> for m in modules], without executing mamba_ssm/__init__.py. Raises ImportError
    with the reason when the package is missing."""
    root = _root()
    for name, sub in _PACKAGES:
        if name in sys.modules:
            continue
        path = os.path.join(root, sub) if sub else root
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [path]
        pkg = importlib.util.module_from_spec(spec)
        pkg.__path__ = [path]
        sys.modules[name] = pkg
    return [importlib.import_module(f"mamba_ssm.ops.triton.{m}") for m in modules]
