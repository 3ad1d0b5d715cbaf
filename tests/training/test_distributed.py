"""torch.distributed: 2 gloo processes (torchrun) on CPU with FSDP2 + expert parallelism against 1 process, and the
same on 2 GPUs with NCCL (`cuda`, skipped below 2 GPUs)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from model.checkpoint import load_model
from training import checkpoint as ckpt
from training.monitor import read_metrics
from training.presets import run_preset
from training.pretrain import build_trainer

REPO = Path(__file__).resolve().parents[2]


def torchrun(argv, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")   # loopback: no dependence on the host name resolving
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), "-m", "training.pretrain", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def losses(out):
    records = read_metrics(Path(out) / "metrics.jsonl")
    return ([r["loss"] for r in records if r["kind"] == "train"],
            [r["val_loss"] for r in records if r["kind"] == "val"])


def common(pretrain_argv, out, steps):
    return pretrain_argv(out, "--steps", steps, "--eval-every", 0, "--warmup-steps", 1, "--seq-len", 64)


def test_two_process_fsdp2_expert_parallel_matches_one_process(pretrain_argv, tmp_path):
    """Same global batch (1 x 4 rows vs 2 x 2 rows), same init: the 2-rank run (dense weights sharded by FSDP2,
    the 8 experts of each MoE layer split 4 + 4 with all-to-all token exchange, router counts all-reduced for the
    bias update) follows the 1-process loss curve within fp32 rounding, and its checkpoint gathers the whole model."""
    one = build_trainer(common(pretrain_argv, tmp_path / "one", 4) + ["--batch-rows", "4"])
    one.run()
    torchrun(common(pretrain_argv, tmp_path / "two", 4) + ["--batch-rows", "2", "--ep-size", "2"])
    (train1, val1), (train2, val2) = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(train1) == len(train2) == 4
    torch.testing.assert_close(torch.tensor(train2), torch.tensor(train1), rtol=2e-6, atol=0)
    torch.testing.assert_close(torch.tensor(val2), torch.tensor(val1), rtol=2e-6, atol=0)
    gathered = load_model(ckpt.resolve_checkpoint(tmp_path / "two"), dtype=torch.float32, backend="reference")
    lr_steps = run_preset("tiny").lr * 4       # peak lr x steps: what AdamW can move one element
    for (name, a), b in zip(one.model.state_dict().items(), gathered.state_dict().values()):
        assert b.shape == a.shape, name
        # AdamW divides each gradient element by its own RMS, so an element whose gradient is at rounding level
        # (a rarely seen token's embedding) steps by up to lr either way once the two runs' summation orders
        # differ: a few such elements may differ by up to lr x steps (seen: 1 of 32,768 by 4.5e-5 on a 2-core
        # CI machine); the rest must agree to fp32 rounding. A wrong or misplaced shard differs everywhere.
        diff = (b - a).abs()
        off = diff > 1e-5 + 1e-4 * a.abs()
        assert off.float().mean().item() <= 1e-3, f"{name}: {int(off.sum())} of {a.numel()} elements differ"
        assert diff.max().item() <= lr_steps, f"{name}: max difference {diff.max().item():.3e}"
    manifest = ckpt.verify_checkpoint(ckpt.resolve_checkpoint(tmp_path / "two"))
    assert (manifest["world_size"], manifest["ep_size"]) == (2, 2)
    assert {"rank_00000.pt", "rank_00001.pt"} <= set(manifest["files"])


@pytest.mark.slow
def test_two_process_run_resumes(pretrain_argv, tmp_path):
    """A 2-rank FSDP2 + EP run with activation checkpointing, stopped after 3 of 6 steps and resumed (per-rank
    optimizer shards, data positions), ends where the 1-process run ends."""
    one = build_trainer(common(pretrain_argv, tmp_path / "one", 6) + ["--batch-rows", "4"])
    one.run()
    argv = common(pretrain_argv, tmp_path / "two", 6) + ["--batch-rows", "2", "--ep-size", "2",
                                                         "--activation-checkpointing"]
    torchrun(argv + ["--stop-at-step", "3"])
    proc = torchrun(argv + ["--resume"])
    assert "resumed from" in proc.stdout
    (train1, val1), (train2, val2) = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(train2) == 6
    torch.testing.assert_close(torch.tensor(train2), torch.tensor(train1), rtol=2e-6, atol=0)
    torch.testing.assert_close(torch.tensor(val2[-1:]), torch.tensor(val1), rtol=2e-6, atol=0)


def test_bf16_fsdp2_keeps_fp32_masters_and_router(pretrain_argv, tmp_path):
    """--dtype bfloat16 (one process: FSDP2 on a one-rank group): parameters stay fp32 masters, the MoE router
    weights stay whole fp32 tensors outside FSDP, and the loss follows the fp32 run within BF16 rounding."""
    ref = build_trainer(common(pretrain_argv, tmp_path / "fp32", 3))
    ref.run()
    try:
        trainer = build_trainer(common(pretrain_argv, tmp_path / "bf16", 3) + ["--dtype", "bfloat16"])
        routers = {id(p) for p in trainer.par.replicated_params}
        assert len(routers) == 2
        for name, p in trainer.model.named_parameters():
            assert p.dtype == torch.float32, name
            assert isinstance(p, DTensor) != (id(p) in routers), name
        trainer.run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "bf16")[0]), torch.tensor(losses(tmp_path / "fp32")[0]),
                               rtol=2e-3, atol=0)


@pytest.mark.cuda
def test_two_gpus_nccl_fsdp2_expert_parallel_match_one_gpu(pretrain_argv, tmp_path):
    """The 2-rank run of test_two_process_fsdp2_expert_parallel_matches_one_process on two GPUs: NCCL collectives
    (all-to-all token exchange, FSDP2 all-gather / reduce-scatter, the router counts' all-reduce) and the project's
    kernels. Within 1e-3 of the 1-GPU losses: the kernels' reductions may order sums differently per rank count,
    while a token sent to a wrong rank or expert moves the first step's loss by far more."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs (the nvidia-h200-x2 machine)")
    try:
        build_trainer(common(pretrain_argv, tmp_path / "one", 4) + ["--batch-rows", "4", "--device", "cuda"]).run()
    finally:
        if dist.is_initialized():     # a one-rank group, if the run made one
            dist.destroy_process_group()
    torchrun(common(pretrain_argv, tmp_path / "two", 4) + ["--batch-rows", "2", "--ep-size", "2", "--device", "cuda"])
    (train1, val1), (train2, val2) = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(train1) == len(train2) == 4
    torch.testing.assert_close(torch.tensor(train2), torch.tensor(train1), rtol=1e-3, atol=0)
    torch.testing.assert_close(torch.tensor(val2), torch.tensor(val1), rtol=1e-3, atol=0)
    manifest = ckpt.verify_checkpoint(ckpt.resolve_checkpoint(tmp_path / "two"))
    assert (manifest["world_size"], manifest["ep_size"]) == (2, 2)
