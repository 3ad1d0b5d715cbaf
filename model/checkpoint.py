"""Hugging Face safetensors checkpoints in the layout of nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16 (spec §3).

On disk: `model.safetensors`, or shards + `model.safetensors.index.json`; keys `backbone.<name>` for every model
tensor except `lm_head.weight`; routed experts stored one per key:
    backbone.layers.{i}.mixer.experts.{k}.up_proj.weight   [I, H]   <->  model layers.{i}.mixer.experts.up_proj [E, I, H]
    backbone.layers.{i}.mixer.experts.{k}.down_proj.weight [H, I]   <->  model layers.{i}.mixer.experts.down_proj [E, H, I]
The router weight and e_score_correction_bias are kept in fp32 whatever the model dtype.

Loading is lazy (safe_open memory-maps; one tensor at a time goes straight to the target device and dtype) into
a model built on the meta device. Any missing key, unexpected key, shape mismatch, non-float dtype or unreadable
file raises CheckpointError naming the key and the file. Saving writes every file to a temporary name and
renames it into place.
"""
from __future__ import annotations

import json
import os
import re
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import NemotronHConfig
from .nemotron_h import NemotronH

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_EXPERTS = re.compile(r"^(layers\.\d+\.mixer\.experts)\.(up_proj|down_proj)$")
_FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16",
                torch.float64: "float64"}


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: the message names the key and the file."""


def keeps_fp32(name: str) -> bool:
    """Router tensors stay fp32 in memory and on disk."""
    return name.endswith("mixer.gate.weight") or name.endswith("mixer.gate.e_score_correction_bias")


def checkpoint_layout(model: NemotronH) -> dict[str, tuple[str, int | None, tuple[int, ...]]]:
    """{checkpoint key: (model state_dict name, expert index or None, shape on disk)} in state_dict order."""
    layout = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if name == "lm_head.weight":
            if not model.config.tie_word_embeddings:
                layout["lm_head.weight"] = (name, None, tuple(t.shape))
            continue
        m = _EXPERTS.match(name)
        if m:
            for k in range(t.shape[0]):
                layout[f"backbone.{m.group(1)}.{k}.{m.group(2)}.weight"] = (name, k, tuple(t.shape[1:]))
        else:
            layout[f"backbone.{name}"] = (name, None, tuple(t.shape))
    return layout


def _weight_map(directory: str) -> dict[str, str]:
    """{checkpoint key: file path} from the index, or from the keys of the single file."""
    index_path, single_path = os.path.join(directory, INDEX_FILE), os.path.join(directory, SINGLE_FILE)
    if os.path.exists(index_path):
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_path}: not a valid safetensors index ({type(e).__name__}: {e})") from e
        return {key: os.path.join(directory, fname) for key, fname in weight_map.items()}
    if os.path.exists(single_path):
        return {key: single_path for key in _keys_of(single_path)}
    raise CheckpointError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found")


def _open(path: str, device: str = "cpu"):
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: file listed in the checkpoint does not exist")
    try:
        return safe_open(path, framework="pt", device=device)
    except Exception as e:  # safetensors raises its own error type for corrupt / truncated headers
        raise CheckpointError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e})") from e


def _keys_of(path: str) -> list[str]:
    with _open(path) as f:
        return list(f.keys())


@torch.no_grad()
def load_checkpoint(model: NemotronH, directory: str | os.PathLike, *, device=None,
                    dtype: torch.dtype | None = None) -> NemotronH:
    """Loads `directory` into `model` (built on the meta device or materialised), in place; returns the model.
    device / dtype: where and how the parameters live (default: the model's; router tensors stay fp32)."""
    directory = os.fspath(directory)
    device = torch.device(device) if device is not None else model.device
    if device.type == "meta":
        raise ValueError("load_checkpoint: pass device= (the model is on the meta device)")
    dtype = dtype or model.dtype
    layout = checkpoint_layout(model)
    weight_map = _weight_map(directory)
    missing = [key for key in layout if key not in weight_map]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{directory}: missing key {missing[0]!r}{more}")
    for key, path in weight_map.items():
        if key not in layout:
            raise CheckpointError(f"{path}: unexpected key {key!r} (not a parameter of this model config)")

    shapes = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    state: dict[str, torch.Tensor] = {}
    by_file: dict[str, list[str]] = {}
    for key in layout:
        by_file.setdefault(weight_map[key], []).append(key)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    load_device = "cpu" if device.type == "cpu" else str(device)  # safetensors reads straight to the device
    for path, keys in by_file.items():
        with _open(path, load_device) as f:
            for key in keys:
                name, expert, shape = layout[key]
                target_dtype = torch.float32 if keeps_fp32(name) else dtype
                try:
                    piece = f.get_slice(key)
                    disk_shape, disk_dtype = tuple(piece.get_shape()), piece.get_dtype()
                except Exception as e:
                    raise CheckpointError(f"{path}: cannot read key {key!r} ({type(e).__name__}: {e})") from e
                if disk_shape != shape:
                    raise CheckpointError(f"{path}: key {key!r} has shape {list(disk_shape)}, "
                                          f"the model expects {list(shape)}")
                if disk_dtype not in _FLOAT_DTYPES:
                    raise CheckpointError(f"{path}: key {key!r} has dtype {disk_dtype}, expected one of "
                                          f"{sorted(_FLOAT_DTYPES)}")
                try:
                    t = f.get_tensor(key)
                except Exception as e:
                    raise CheckpointError(f"{path}: cannot read key {key!r} ({type(e).__name__}: {e})") from e
                if expert is None:
                    state[name] = t.to(device=device, dtype=target_dtype)
                else:
                    if name not in state:
                        state[name] = torch.empty(shapes[name], device=device, dtype=target_dtype)
                    state[name][expert].copy_(t)
    if model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["embeddings.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    return model


def load_model(directory: str | os.PathLike, *, device="cpu", dtype: torch.dtype | None = None,
               backend: str = "auto") -> NemotronH:
    """config.json + weights of `directory` -> NemotronH on `device`. dtype: default the config's `dtype`
    (`torch_dtype`), else bfloat16."""
    directory = os.fspath(directory)
    config = NemotronHConfig.from_hf_config(directory)
    if dtype is None:
        with open(os.path.join(directory, "config.json")) as f:
            hf = json.load(f)
        name = hf.get("dtype") or hf.get("torch_dtype") or "bfloat16"
        dtype = {v: k for k, v in _DTYPE_NAMES.items()}.get(name, torch.bfloat16)
    with torch.device("meta"):
        model = NemotronH(config, backend=backend, dtype=dtype)
    return load_checkpoint(model, directory, device=device, dtype=dtype)


def _write_atomic(path: str, write) -> None:
    """write(tmp_path) into a temporary file next to `path`, then rename it to `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_json(path: str, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    _write_atomic(path, write)


@torch.no_grad()
def save_checkpoint(model: NemotronH, directory: str | os.PathLike, *, max_shard_bytes: int = 5 * 2**30,
                    dtype: torch.dtype | None = None) -> list[str]:
    """Writes config.json and the weights of `model` in the HF layout (sharded with an index when larger than
    max_shard_bytes). dtype: storage dtype (default the model's; router tensors stay fp32). Stale weight files of
    an earlier save in `directory` are removed. Returns the weight file names."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    dtype = dtype or model.dtype
    state = model.state_dict()
    layout = checkpoint_layout(model)

    def disk_dtype(name):
        return torch.float32 if keeps_fp32(name) else dtype

    sizes = {key: torch.Size(shape).numel() * disk_dtype(name).itemsize for key, (name, _, shape) in layout.items()}
    shards, current, current_bytes = [], [], 0
    for key in layout:
        if current and current_bytes + sizes[key] > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(key)
        current_bytes += sizes[key]
    shards.append(current)
    names = ([SINGLE_FILE] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])

    for fname, keys in zip(names, shards):
        tensors = {}
        for key in keys:
            name, expert, _ = layout[key]
            t = state[name] if expert is None else state[name][expert]
            tensors[key] = t.to(device="cpu", dtype=disk_dtype(name), copy=True).contiguous()  # own storage per key
        _write_atomic(os.path.join(directory, fname),
                      lambda tmp, tensors=tensors: save_file(tensors, tmp, metadata={"format": "pt"}))
        del tensors
    if len(shards) > 1:
        weight_map = {key: fname for fname, keys in zip(names, shards) for key in keys}
        _write_json(os.path.join(directory, INDEX_FILE),
                    {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map})
    _write_json(os.path.join(directory, "config.json"), model.config.to_hf_config(dtype=_DTYPE_NAMES.get(dtype)))
    stale = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$|^model\.safetensors\.index\.json$")
    keep = set(names) | ({INDEX_FILE} if len(shards) > 1 else set())
    for fname in os.listdir(directory):
        if stale.match(fname) and fname not in keep:
            os.remove(os.path.join(directory, fname))
    return names
