"""The training loop shared by pretraining and SFT.

One optimizer step:
  1. LR from the WSD schedule; `grad_accum` packed micro-batches; labelled tokens and sequences counted once
     (all-reduced on device, no host sync): every micro-batch's loss is its token-loss sum / the step's global
     token count, plus aux_loss_coeff x its sequence aux-loss sum / the step's global sequence count;
  2. forward (model hidden states -> chunked fp32 cross-entropy; per MoE layer the router counts, and scores for the
     sequence-level aux loss), backward; router counts accumulated for the load balancer;
  3. gradient clipping by the global norm;
  4. ONE host sync per step: [loss, aux, grad norm, expert-load stats] -> a non-finite value skips the step
     (reported; the run stops after `max_bad_steps` in a row), otherwise optimizer step + aux-loss-free bias update
     (launched without waiting: the next step's data and forward are queued behind it);
  5. metrics (JSONL + progress bar), periodic validation and checkpoints.
The batches' cu_seqlens reach the model with their host copy (no device read-back), host->device copies come from
pinned memory. `--profile N` (profile.py) records the last N steps of a run with torch.profiler.
Parallelism order (parallel.py): expert parallelism -> activation checkpointing -> FSDP2 (blocks, then the root).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.autograd.profiler import record_function

from model.checkpoint import CheckpointError, load_checkpoint
from model.nemotron_h import MoEAux

from . import checkpoint as ckpt
from .balance import LoadBalancer, moe_layers, sequence_aux_loss
from .data import PackedBatch
from .loss import chunked_cross_entropy
from .monitor import MetricsLog, Progress, flops_per_token, peak_flops, plot_run
from .optim import WSDSchedule, build_optimizer
from .parallel import DistInfo, all_reduce_sum, clip_grad_norm_, parallelize
from .profile import StepProfiler

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


class TrainingHalted(RuntimeError):
    """The run cannot continue (e.g. non-finite losses several steps in a row)."""


@dataclass
class TrainConfig:
    # optimisation (paper: AdamW 0.9/0.95, wd 0.1, WSD peak 1e-3 -> 1e-5 over the last 20%)
    steps: int = 300
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 30
    decay_fraction: float = 0.2
    decay_shape: str = "cosine"
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    grad_accum: int = 1
    loss_chunk_rows: int | None = None        # rows per cross-entropy chunk (default: ~1 GiB of fp32 logits)
    # MoE load balancing (paper: bias update rate 1e-3, sequence-level aux loss 1e-4)
    balance: bool = True
    bias_update_rate: float = 1e-3
    aux_loss_coeff: float = 1e-4
    collapse_share: float = 0.05              # warn when an expert gets more than this share of routing decisions
    # precision / parallelism
    dtype: str = "float32"                    # compute dtype; "bfloat16" = FSDP2 mixed precision, fp32 masters
    ep_size: int = 1                          # expert-parallel ranks (divides the world size)
    activation_checkpointing: bool = False    # recompute each block in backward (less memory)
    # run control
    out_dir: str = "runs/train"
    log_every: int = 1
    eval_every: int = 50                      # 0: only at the end
    save_every: int = 0                       # 0: only at the end
    keep_last: int = 2
    resume: str | None = None                 # checkpoint / checkpoints root / run dir; "auto": out_dir if present
    stop_at_step: int | None = None           # end this run early (the schedule still spans `steps`)
    max_bad_steps: int = 3                    # stop after this many non-finite steps in a row
    progress: bool = True
    plots: bool = True
    peak_tflops: float | None = None          # MFU denominator per device (default: known GPUs, none on CPU)
    profile: int = 0                          # torch.profiler over the last N steps of this run (0: off)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be >= 1, got {self.max_bad_steps}")
        if self.profile < 0:
            raise ValueError(f"profile must be >= 0 steps, got {self.profile}")
        self.betas = tuple(self.betas)


class CausalLMLoss(nn.Module):
    """The root module of training: model hidden states -> token-loss sum (chunked fp32 cross-entropy) and the
    summed sequence-level aux loss of the MoE layers. Being the FSDP2 root, its forward unshards the embeddings,
    final norm and lm_head."""

    def __init__(self, model: nn.Module, chunk_rows: int | None = None):
        super().__init__()
        self.model, self.chunk_rows = model, chunk_rows

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor,
                with_aux_loss: bool = True, offsets: list[int] | None = None):
        """input_ids, labels [1, T]; cu_seqlens [S+1] (offsets: the same on the host, saves a device read-back) ->
        (token-loss sum fp32, sequence aux loss summed over the sequences and MoE layers fp32, router counts per
        MoE layer [E] int32)."""
        # The MoE layers append their router counts / scores to the ForwardMeta they are called with. FSDP2 hands
        # each block a rebuilt copy of its arguments when they hold grad-requiring tensors (the scores of earlier
        # layers), so the lists of MoEAux miss later entries: a forward hook reads each layer's own entry instead.
        layers = moe_layers(self.model)
        routed: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

        def record(module, args, output):
            meta = args[1]
            routed[module.layer_idx] = (meta.router_counts[-1], meta.router_scores[-1], meta.router_ids[-1])

        handles = [moe.register_forward_hook(record) for _, moe in layers]
        try:
            hidden = self.model.hidden_states(input_ids, cu_seqlens, MoEAux(), offsets=offsets)  # [1, T, H]
        finally:
            for h in handles:
                h.remove()
        with record_function("train/cross_entropy"):
            loss_sum = chunked_cross_entropy(hidden, self.model.lm_head.weight, labels, self.chunk_rows)
        aux_loss = torch.zeros((), device=loss_sum.device, dtype=torch.float32)
        if with_aux_loss:
            with record_function("train/aux_loss"):
                for i, _ in layers:
                    _, scores, idx = routed[i]                                           # [T, E] fp32, [T, k]
                    aux_loss = aux_loss + sequence_aux_loss(scores, idx, cu_seqlens, reduction="sum")
        return loss_sum, aux_loss, [routed[i][0] for i, _ in layers]


class Trainer:
    """Runs `cfg.steps` optimizer steps of `model` on `train_data` (an iterator of PackedBatch with
    state_dict / load_state_dict), evaluating on `val_batches`. Resumes from cfg.resume when given."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, info: DistInfo, train_data, val_batches: list[PackedBatch],
                 *, tokenizer_dir: str | None = None, attn_len: int | None = None,
                 unigram_entropy: float | None = None, run_config: dict | None = None, log=None):
        self.cfg, self.model, self.info, self.train_data = cfg, model, info, train_data
        self.val_batches, self.tokenizer_dir, self.unigram_entropy = val_batches, tokenizer_dir, unigram_entropy
        self.run_config = run_config or {}
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        self.log = log or (lambda msg: print(msg, flush=True) if info.is_main else None)
        self.start_step, self.bad_steps, self.tokens_seen = 0, 0, 0

        resume_dir = self._resume_dir()
        if resume_dir is not None:  # weights before parallelize: every rank loads the whole model, FSDP shards it
            load_checkpoint(model, resume_dir, device=info.device, dtype=model.dtype)
        dtype = DTYPES[cfg.dtype]
        self.module = CausalLMLoss(model, cfg.loss_chunk_rows)
        self.par = parallelize(self.module, model, info, ep_size=cfg.ep_size,
                               param_dtype=dtype if dtype != model.dtype else None,
                               activation_checkpointing=cfg.activation_checkpointing)
        self.optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.schedule = WSDSchedule(cfg.lr, cfg.min_lr, cfg.steps, cfg.warmup_steps, cfg.decay_fraction,
                                    cfg.decay_shape)
        self.balancer = LoadBalancer(model, rate=cfg.bias_update_rate, enabled=cfg.balance,
                                     collapse_share=cfg.collapse_share)
        self.flops_per_token = flops_per_token(model.config, attn_len or 0)
        if resume_dir is not None:
            self._load_state(resume_dir)
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl", enabled=info.is_main,
                                  resume_step=self.start_step if resume_dir is not None else None)
        self._collapsed_layers: set[int] = set()

    # ------------------------------------------------------------------------------------ resume
    def _resume_dir(self) -> Path | None:
        if self.cfg.resume is None:
            if (self.ckpt_root / ckpt.LATEST).is_file():
                raise ValueError(f"{self.out_dir} already holds checkpoints of a run; pass --resume to continue it "
                                 f"or choose another --out")
            return None
        if self.cfg.resume == "auto":
            if not (self.ckpt_root / ckpt.LATEST).is_file():
                self.log(f"no checkpoint under {self.ckpt_root}: starting a new run")
                return None
            path = self.ckpt_root
        else:
            path = Path(self.cfg.resume)
        directory = ckpt.resolve_checkpoint(path)
        manifest = ckpt.verify_checkpoint(directory)
        if (manifest["world_size"], manifest["ep_size"]) != (self.info.world_size, self.cfg.ep_size):
            raise CheckpointError(f"{directory}: saved by {manifest['world_size']} ranks with expert-parallel size "
                                  f"{manifest['ep_size']}; resume with the same layout (this run: "
                                  f"{self.info.world_size} ranks, ep {self.cfg.ep_size})")
        return directory

    def _load_state(self, directory: Path) -> None:
        state = ckpt.load_pt(directory / ckpt.TRAIN_STATE)
        mine = ckpt.load_pt(directory / ckpt.rank_file(self.info.rank))
        try:
            ckpt.load_optimizer_state_local(self.optimizer, mine["optimizer"])
            self.balancer.load_state_dict(state["balancer"])
            self.train_data.load_state_dict(mine["data"])
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{directory}: checkpoint does not fit this run ({type(e).__name__}: {e})") from e
        ckpt.set_rng_state(mine["rng"])
        self.start_step, self.bad_steps = int(state["step"]), int(state["bad_steps"])
        self.tokens_seen = int(state["tokens_seen"])
        self.log(f"resumed from {directory} at step {self.start_step}")

    def save(self, step: int) -> Path:
        train_state = {"step": step, "bad_steps": self.bad_steps, "tokens_seen": self.tokens_seen,
                       "schedule": dataclasses.asdict(self.schedule), "balancer": self.balancer.state_dict(),
                       "train_config": dataclasses.asdict(self.cfg), "run_config": self.run_config}
        return ckpt.save_training_checkpoint(self.ckpt_root, step, model=self.model, par=self.par,
                                             optimizer=self.optimizer, train_state=train_state,
                                             rank_state={"data": self.train_data.state_dict()},
                                             tokenizer_dir=self.tokenizer_dir, keep_last=self.cfg.keep_last)

    # ------------------------------------------------------------------------------------ steps
    def _device_batches(self) -> tuple[list[PackedBatch], list[list[int]]]:
        """The step's micro-batches on the device, and their cu_seqlens as host lists."""
        host = [next(self.train_data) for _ in range(self.cfg.grad_accum)]
        return [b.to(self.info.device) for b in host], [b.cu_seqlens.tolist() for b in host]

    def train_step(self, step: int) -> dict:
        """One optimizer step (0-based index `step`); returns its metrics (host floats)."""
        cfg, dev = self.cfg, self.info.device
        lr = self.schedule.apply(self.optimizer, step)
        with record_function("train/data"):
            batches, offsets = self._device_batches()
            counts = torch.tensor([float(sum(b.num_tokens for b in batches)),
                                   float(sum(b.cu_seqlens.numel() - 1 for b in batches))])
            counts = counts.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else counts.to(dev)
        n_tokens, n_seqs = all_reduce_sum(counts, self.par).clamp(min=1.0).unbind()  # labelled tokens, sequences
        loss_total = torch.zeros((), device=dev)
        aux_total = torch.zeros((), device=dev)
        self.module.train()
        for i, (b, offs) in enumerate(zip(batches, offsets)):
            if self.par.fsdp:
                self.module.set_requires_gradient_sync(i == len(batches) - 1)
            loss_sum, aux_loss, counts = self.module(b.input_ids, b.labels, b.cu_seqlens,
                                                     with_aux_loss=cfg.aux_loss_coeff > 0, offsets=offs)
            (loss_sum / n_tokens + cfg.aux_loss_coeff * aux_loss / n_seqs).backward()
            loss_total += loss_sum.detach() / n_tokens
            aux_total += aux_loss.detach() / n_seqs
            self.balancer.accumulate(counts)
        self.par.sync_replicated_grads()
        with record_function("train/clip_grad_norm"):
            grad_norm = clip_grad_norm_(self.params, cfg.grad_clip, self.par)
        sums = all_reduce_sum(torch.stack([loss_total, aux_total]), self.par)
        with record_function("train/balancer"):
            self.balancer.reduce()                              # the step's expert loads, summed over the ranks
            stats = self.balancer.stats_tensor(self.balancer.step_counts) if self.balancer.layers else None
        with record_function("train/host_sync"):               # the step's one host sync
            parts = [sums.double(), grad_norm[None].double()] + ([stats.flatten()] if stats is not None else [])
            values = torch.cat(parts).tolist()
        loss, aux, gnorm = values[:3]
        tokens = sum(b.input_ids.numel() for b in batches) * self.info.world_size
        ok = math.isfinite(loss) and math.isfinite(gnorm)
        if ok:
            self.optimizer.step()
            with record_function("train/balancer"):
                self.balancer.step()
            self.bad_steps = 0
        else:
            self.balancer.skip()
            self.bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.tokens_seen += tokens
        rec = {"step": step + 1, "loss": loss, "aux_loss": aux, "grad_norm": gnorm, "lr": lr, "tokens": tokens,
               "skipped": not ok}
        if ok and stats is not None:                            # load stats of this step (= balancer.stats())
            n = stats.shape[1]
            rec["_balance"] = {k: values[3 + j * n:3 + (j + 1) * n] for j, k in enumerate(LoadBalancer.STATS)}
        return rec

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss (nats per labelled token) over all val batches and ranks."""
        self.module.eval()
        dev = self.info.device
        total = torch.zeros(2, device=dev, dtype=torch.float64)
        for b in self.val_batches:
            b = b.to(dev)
            loss_sum, _, _ = self.module(b.input_ids, b.labels, b.cu_seqlens, with_aux_loss=False)
            total += torch.stack([loss_sum.double(), torch.tensor(float(b.num_tokens), device=dev,
                                                                  dtype=torch.float64)])
        total = all_reduce_sum(total, self.par)
        self.module.train()
        return float(total[0] / total[1].clamp(min=1))

    # ------------------------------------------------------------------------------------ run
    def run(self) -> dict:
        """Trains from start_step to cfg.steps (or stop_at_step); returns a summary."""
        cfg = self.cfg
        end = min(cfg.steps, cfg.stop_at_step) if cfg.stop_at_step is not None else cfg.steps
        progress = Progress(end, self.start_step, cfg.progress and self.info.is_main, self.flops_per_token,
                            peak_flops(self.info.device, cfg.peak_tflops), self.info.world_size, self.info.is_main)
        last_val = None
        profiler = None
        if cfg.profile and self.info.is_main:
            if end - self.start_step < cfg.profile + 1:
                raise ValueError(f"--profile {cfg.profile} records the last {cfg.profile} steps of a run after at "
                                 f"least one warm-up step; this run has {end - self.start_step} steps")
            profiler = StepProfiler(cfg.profile, end - cfg.profile, self.out_dir, self.info.device, self.model,
                                    log=progress.write)
        interval_tokens, t_start = 0, time.perf_counter()
        try:
            for step in range(self.start_step, end):
                if profiler is not None:
                    profiler.begin(step)
                rec = self.train_step(step)
                balance = rec.pop("_balance", None)
                interval_tokens += rec["tokens"]
                done = step + 1
                if rec["skipped"]:
                    progress.write(f"step {done}: non-finite loss {rec['loss']} / grad norm {rec['grad_norm']}; "
                                   f"step skipped ({self.bad_steps} in a row)")
                    self.metrics.write({"kind": "skip", "step": done, "loss": _json_float(rec["loss"]),
                                        "grad_norm": _json_float(rec["grad_norm"])})
                    if self.bad_steps >= cfg.max_bad_steps:
                        raise TrainingHalted(f"training stopped at step {done}: the loss or gradient norm was not "
                                             f"finite for {self.bad_steps} steps in a row (NaN/inf); lower the "
                                             f"learning rate or resume from an earlier checkpoint")
                if done % cfg.log_every == 0 or done == end:
                    tps, mfu = progress.rate(interval_tokens)
                    interval_tokens = 0
                    rec.update(tokens_per_s=tps, mfu=mfu, tokens_seen=self.tokens_seen,
                               elapsed_s=time.perf_counter() - t_start)
                    rec.update(self._balance_record(progress, balance))
                    if not rec["skipped"]:
                        self.metrics.write({"kind": "train", **{k: v for k, v in rec.items() if k != "skipped"}})
                    postfix = {"loss": f"{rec['loss']:.4f}", "tok/s": f"{tps:,.0f}"}
                    if mfu is not None:
                        postfix["MFU"] = f"{100 * mfu:.1f}%"
                    progress.update(cfg.log_every if done % cfg.log_every == 0 else done % cfg.log_every, postfix)
                if profiler is not None:
                    profiler.tokens_per_step = rec["tokens"]
                    profiler.end(step)
                if (cfg.eval_every and done % cfg.eval_every == 0) or done == end:
                    last_val = self.evaluate()
                    self.metrics.write({"kind": "val", "step": done, "val_loss": last_val,
                                        "unigram_entropy": self.unigram_entropy})
                    progress.write(f"step {done}: validation loss {last_val:.4f}"
                                   + (f" (unigram entropy {self.unigram_entropy:.4f})" if self.unigram_entropy else ""))
                if (cfg.save_every and done % cfg.save_every == 0) or done == end:
                    path = self.save(done)
                    progress.write(f"step {done}: checkpoint {path}")
        finally:
            progress.close()
        plots = []
        if cfg.plots and self.info.is_main:
            share = (self.balancer.total_counts.double()
                     / self.balancer.total_counts.sum(-1, keepdim=True).clamp(min=1)).cpu().numpy()
            plots = plot_run(self.out_dir / "metrics.jsonl", self.out_dir,
                             expert_share=share if self.balancer.layers else None, layer_ids=self.balancer.layer_ids)
        return {"steps": end, "val_loss": last_val, "out_dir": str(self.out_dir), "plots": [str(p) for p in plots],
                "balance": self.balancer.stats()}

    def _balance_record(self, progress: Progress, stats: dict | None = None) -> dict:
        """Load statistics of the last optimizer step (`stats`: the step's own, read with its host sync)."""
        if not self.balancer.layers:
            return {}
        stats = stats if stats is not None else self.balancer.stats()
        collapsed = dict(self.balancer.collapsed(stats))
        for layer, share in collapsed.items():
            if layer not in self._collapsed_layers:
                progress.write(f"warning: routing collapse in MoE layer {layer}: one expert receives "
                               f"{100 * share:.1f}% of the routing decisions (threshold "
                               f"{100 * self.balancer.collapse_share:.1f}%)")
        self._collapsed_layers = set(collapsed)
        return {f"moe_{k}": v for k, v in stats.items()}


def _json_float(x: float):
    return x if math.isfinite(x) else str(x)
