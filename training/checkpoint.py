"""Training checkpoints: the model in the Hugging Face layout plus everything the loop needs to continue exactly.

    <out>/checkpoints/
      latest                       name of the newest complete checkpoint (replaced atomically)
      step_00000100/
        config.json, model.safetensors        the model (model.checkpoint, fp32 masters): loadable by
                                              model.checkpoint.load_model, model.generate and transformers
        tokenizer.json, tokenizer_config.json
        train_state.pt             step, schedule, load-balancer biases and counts, run config (rank 0)
        rank_00000.pt ...          per rank: optimizer state (local shards), data position, RNG states
        manifest.json              size (and sha256 up to 1 GiB) of every file; written last

A checkpoint is written into `.step_00000100.tmp/` and renamed into place only when complete, so a crash
mid-save leaves the previous checkpoint (and `latest`) untouched. Loading checks the manifest first: a missing,
truncated or altered file raises CheckpointError naming it.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from model.checkpoint import CheckpointError, save_checkpoint

from .parallel import Parallelism, full_state_dict

LATEST = "latest"
MANIFEST = "manifest.json"
TRAIN_STATE = "train_state.pt"
_HASH_LIMIT = 1 << 30


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


# ---------------------------------------------------------------------------------------------- RNG + optimizer
def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _local_tensors(obj):
    from torch.distributed.tensor import DTensor
    if isinstance(obj, DTensor):
        return obj.to_local().detach().cpu().clone()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _local_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_local_tensors(v) for v in obj)
    return obj


def optimizer_state_local(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with every DTensor replaced by this rank's local shard (on CPU)."""
    return _local_tensors(optimizer.state_dict())


def load_optimizer_state_local(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of optimizer_state_local: local shards go back into DTensors shaped like their parameters."""
    from torch.distributed.tensor import DTensor

    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved_groups = state["param_groups"]
    if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError("optimizer state does not match the model's parameter groups (different model config?)")
    new_state = {}
    for idx, s in state["state"].items():
        p = params[int(idx)]
        entry = {}
        for key, v in s.items():
            if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.dim() > 0:
                v = DTensor.from_local(v.to(p.device), p.device_mesh, p.placements, run_check=False,
                                       shape=p.shape, stride=p.stride())
            elif isinstance(v, torch.Tensor) and v.dim() > 0 and tuple(v.shape) != tuple(p.shape):
                raise ValueError(f"optimizer state {key!r} of parameter {idx} has shape {tuple(v.shape)}, the "
                                 f"parameter {tuple(p.shape)}")
            entry[key] = v
        new_state[idx] = entry
    optimizer.load_state_dict({"state": new_state, "param_groups": saved_groups})


# ---------------------------------------------------------------------------------------------- save
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _barrier(par: Parallelism) -> None:
    if par.fsdp and par.info.world_size > 1:
        dist.barrier()


def save_training_checkpoint(root: str | os.PathLike, step: int, *, model, par: Parallelism, optimizer,
                             train_state: dict, rank_state: dict, tokenizer_dir: str | os.PathLike | None = None,
                             keep_last: int = 0) -> Path:
    """Writes checkpoint `step` under root (collective: every rank calls it). train_state goes to rank 0's
    train_state.pt; rank_state (data position, ...) plus the optimizer shard and RNG states to each rank's file.
    keep_last > 0 deletes all but the newest keep_last checkpoints. Returns the checkpoint directory."""
    root = Path(root)
    final, tmp = root / step_dir_name(step), root / f".{step_dir_name(step)}.tmp"
    main = par.info.is_main
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier(par)
    state = full_state_dict(model, par) if par.fsdp else None
    if main:
        if par.fsdp:  # whole tensors gathered on rank 0: save them through a meta-built model of the same config
            from model.nemotron_h import NemotronH
            with torch.device("meta"):
                host = NemotronH(model.config, backend="reference", dtype=state["embeddings.weight"].dtype)
            host.load_state_dict(state, assign=True)
            host.tie_weights()
            save_checkpoint(host, tmp)
            del host, state
        else:
            save_checkpoint(model, tmp)
        if tokenizer_dir is not None:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                src = Path(tokenizer_dir) / name
                if src.is_file():
                    shutil.copyfile(src, tmp / name)
        torch.save(train_state, tmp / TRAIN_STATE)
    torch.save({"optimizer": optimizer_state_local(optimizer), "rng": rng_state(), **rank_state},
               tmp / rank_file(par.info.rank))
    _barrier(par)
    if main:
        files = {}
        for f in sorted(tmp.iterdir()):
            size = f.stat().st_size
            files[f.name] = {"size": size, **({"sha256": _sha256(f)} if size <= _HASH_LIMIT else {})}
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        manifest = {"step": step, "world_size": par.info.world_size, "ep_size": par.ep_size, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        latest_tmp = root / f".{LATEST}.tmp"
        latest_tmp.write_text(final.name + "\n")
        os.replace(latest_tmp, root / LATEST)
        _fsync_dir(root)
        if keep_last > 0:
            done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
            for old in done[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier(par)
    return final


# ---------------------------------------------------------------------------------------------- load
def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a checkpoints root (its `latest`), or a run directory holding checkpoints/."""
    path = Path(path)
    for root in (path, path / "checkpoints"):
        if (root / LATEST).is_file():
            name = (root / LATEST).read_text().strip()
            if not (root / name).is_dir():
                raise CheckpointError(f"{root / LATEST} names {name!r}, which does not exist")
            return root / name
    if (path / MANIFEST).is_file() or (path / TRAIN_STATE).is_file():
        return path
    raise CheckpointError(f"{path}: not a training checkpoint (no {MANIFEST}) and no {LATEST} file found")


def verify_checkpoint(directory: Path) -> dict:
    """Checks every file against the manifest; returns the manifest. Raises CheckpointError naming the file."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: missing; the checkpoint is incomplete (interrupted save?)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{manifest_path}: corrupt manifest ({type(e).__name__}: {e})") from e
    for name, meta in files.items():
        f = directory / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing from the checkpoint")
        if f.stat().st_size != meta["size"]:
            raise CheckpointError(f"{f}: corrupt checkpoint file (size {f.stat().st_size}, manifest {meta['size']})")
        if "sha256" in meta and _sha256(f) != meta["sha256"]:
            raise CheckpointError(f"{f}: corrupt checkpoint file (sha256 differs from the manifest)")
    return manifest


def load_pt(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors of a damaged file
        raise CheckpointError(f"{path}: cannot read checkpoint file ({type(e).__name__}: {e})") from e
