"""Visible progress: metrics as JSONL, a tqdm progress bar (loss, tokens/s, MFU), PNG plots at the end of a run.

MFU counts the model FLOPs of the active parameters (nanoGPT / PaLM convention, fwd + bwd = 3 x fwd):
    flops/token = 6 * N_active + 6 * n_attn_layers * Hq * D * L
N_active: parameters a token passes through (the k routed experts, not all E), excluding the input embedding
(a lookup) and including the lm_head; the second term is causal attention over rows of L tokens. The Mamba scan
and the router/softmax arithmetic are not counted.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

# bf16 dense peak per GPU (vendor datasheets): the MFU denominator unless --peak-tflops says otherwise
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def flops_per_token(config, seq_len: int) -> float:
    n_active = config.num_params(active=True, include_embedding=False)
    attn = 6 * config.pattern.count("*") * config.num_attention_heads * config.head_dim * seq_len
    return 6.0 * n_active + attn


def peak_flops(device, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device for the MFU; None (MFU not reported) for CPUs and unknown GPUs."""
    if override_tflops:
        return override_tflops * 1e12
    if getattr(device, "type", str(device)) != "cuda":
        return None
    import torch
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


class MetricsLog:
    """One JSON object per line. On resume from step s, records of steps after s are dropped first (they belong
    to the interrupted continuation), so the file always tells one consistent story."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True, resume_step: int | None = None):
        self.path, self.enabled = Path(path), enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", -1) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class Progress:
    """tqdm bar over optimizer steps with loss, tokens/s and MFU (rank 0 only)."""

    def __init__(self, total: int, initial: int, enabled: bool, tokens_flops: float, peak: float | None,
                 world_size: int, is_main: bool = True):
        self.bar, self.is_main = None, is_main
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        self.flops_per_token, self.peak, self.world_size = tokens_flops, peak, world_size
        self.t0, self.tokens = time.perf_counter(), 0

    def rate(self, tokens: int) -> tuple[float, float | None]:
        """(tokens/s, MFU) since the last call, over all ranks."""
        now = time.perf_counter()
        dt, self.t0 = max(now - self.t0, 1e-9), now
        tps = tokens / dt
        mfu = tps * self.flops_per_token / (self.peak * self.world_size) if self.peak else None
        return tps, mfu

    def update(self, n: int, postfix: dict) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(postfix, refresh=False)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        elif self.is_main:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plot_run(metrics_path: str | os.PathLike, out_dir: str | os.PathLike, expert_share=None,
             layer_ids=None) -> list[Path]:
    """Writes loss_lr.png (train / validation loss and LR per step) and, for MoE models, expert_load.png
    (max/mean load per MoE layer over the run, and the load share of every expert per layer over the run).
    expert_share: [Lm, E] fractions of routing decisions (rows sum to 1). Returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train" and r.get("loss") is not None
             and math.isfinite(r["loss"])]
    val = [r for r in records if r.get("kind") == "val"]
    written = []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, label="train loss")
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", ms=3, label="validation loss")
    if val and val[-1].get("unigram_entropy"):
        ax.axhline(val[-1]["unigram_entropy"], color="grey", ls="--", lw=0.8, label="unigram entropy")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:red", lw=0.8, label="LR")
    ax2.set_ylabel("learning rate", color="tab:red")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="best", fontsize=8)
    fig.tight_layout()
    path = out_dir / "loss_lr.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    balance = [r for r in train if r.get("moe_max_over_mean")]
    if balance or expert_share is not None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        if balance:
            ids = layer_ids or list(range(len(balance[0]["moe_max_over_mean"])))
            for j, layer in enumerate(ids):
                axes[0].plot([r["step"] for r in balance], [r["moe_max_over_mean"][j] for r in balance], lw=0.8,
                             label=f"layer {layer}")
            axes[0].axhline(1.0, color="grey", ls="--", lw=0.8)
            axes[0].set_xlabel("step")
            axes[0].set_ylabel("max / mean expert load")
            axes[0].legend(fontsize=7)
        if expert_share is not None:
            im = axes[1].imshow(expert_share, aspect="auto", cmap="viridis")
            axes[1].set_xlabel("expert")
            axes[1].set_ylabel("MoE layer")
            if layer_ids:
                axes[1].set_yticks(range(len(layer_ids)), [str(i) for i in layer_ids])
            axes[1].set_title("share of routing decisions (whole run)")
            fig.colorbar(im, ax=axes[1])
        fig.tight_layout()
        path = out_dir / "expert_load.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
