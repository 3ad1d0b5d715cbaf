"""MoE load balancing: the aux-loss-free expert-bias update, the sequence-level auxiliary loss, load statistics.

Paper (spec §5.1): DeepSeek's aux-loss-free balancing with update rate 1e-3 plus a load-balancing loss with
coefficient 1e-4. The bias update is Megatron-Core's `get_updated_expert_bias`, once per optimizer step:
    load_e = tokens routed to expert e over the whole step (all micro-batches, all-reduced over the ranks)
    bias_e += rate * sign(mean_j load_j - load_e)
The bias (`gate.e_score_correction_bias`, an fp32 buffer) only changes which experts are selected, never the
weights, and gets no gradient. The auxiliary loss is Megatron's `sequence_load_balancing_loss_func`, per sequence s
of length L_s with p = sigmoid scores renormalised over the experts:
    loss = coeff * mean_s sum_e (E / (k L_s) * count_{s,e}) * mean_{t in s} p_{t,e}

Shape legend: T tokens, E experts, k experts per token, S sequences, Lm MoE layers.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn


def moe_layers(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(layer index, MoE mixer) of every MoE layer of a NemotronH model, in layer order."""
    return [(i, block.mixer) for i, block in enumerate(model.layers) if block.kind == "E"]


def sequence_aux_loss(scores: torch.Tensor, topk_idx: torch.Tensor, cu_seqlens: torch.Tensor | None,
                      reduction: str = "mean") -> torch.Tensor:
    """Megatron's sequence-level load-balancing loss (without the coefficient) for one MoE layer.

    scores [T, E] fp32 sigmoid router scores (differentiable); topk_idx [T, k] selected experts;
    cu_seqlens [S+1] sequence offsets (None: one sequence). Returns a scalar: the mean (or, reduction="sum", the
    sum, to be divided by a global sequence count) over sequences of
    sum_e (E / (k L_s)) count_{s,e} * mean_{t in s} p_{t,e}, with p the scores renormalised over experts.
    Per sequence it equals 1 when routing and probabilities are uniform."""
    T, E = scores.shape
    k = topk_idx.shape[1]
    probs = scores / (scores.sum(-1, keepdim=True) + 1e-20)                    # [T, E]
    if cu_seqlens is None:
        cu_seqlens = torch.tensor([0, T], device=scores.device)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()                       # [S]
    S = lengths.numel()
    seg = torch.repeat_interleave(torch.arange(S, device=scores.device), lengths, output_size=T)  # [T]
    counts = torch.zeros(S, E, device=scores.device, dtype=probs.dtype)
    counts.index_put_((seg[:, None].expand(T, k), topk_idx.long()),
                      torch.ones((), device=scores.device, dtype=probs.dtype).expand(T, k), accumulate=True)
    prob_sum = torch.zeros(S, E, device=scores.device, dtype=probs.dtype).index_add(0, seg, probs)  # [S, E]
    L = lengths.clamp(min=1).to(probs.dtype)[:, None]                          # [S, 1]
    per_seq = ((counts * (E / k) / L) * (prob_sum / L)).sum(-1)                # [S]
    return per_seq.sum() if reduction == "sum" else per_seq.mean()


class LoadBalancer:
    """Aux-loss-free balancing of every MoE layer of a model, plus per-layer load statistics.

    Call `accumulate(counts)` after every forward (counts: per MoE layer [E] tokens routed to each expert), then
    `step()` after every optimizer step: it sums the step's counts over the ranks of `group`, updates the biases
    (when enabled) and keeps the counts for `stats()`. Nothing here synchronises with the host."""

    def __init__(self, model: nn.Module, *, rate: float = 1e-3, enabled: bool = True, group=None,
                 collapse_share: float = 0.05):
        self.layers = moe_layers(model)
        self.layer_ids = [i for i, _ in self.layers]
        self.rate, self.enabled, self.group = rate, enabled, group
        self.num_experts = self.layers[0][1].gate.e_score_correction_bias.numel() if self.layers else 0
        # an expert is "collapsing" above this share of routing decisions (paper audit: 5%); never below twice
        # the uniform share, so models with few experts do not trip it
        self.collapse_share = max(collapse_share, 2.0 / self.num_experts) if self.layers else collapse_share
        device = self.layers[0][1].gate.e_score_correction_bias.device if self.layers else "cpu"
        self.step_counts = torch.zeros(len(self.layers), self.num_experts, dtype=torch.int64, device=device)
        self.last_counts = torch.zeros_like(self.step_counts)                  # [Lm, E] counts of the last step
        self.total_counts = torch.zeros_like(self.step_counts)                 # [Lm, E] since the run started
        self._reduced = False                                                   # step_counts summed over ranks

    def biases(self) -> list[torch.Tensor]:
        return [m.gate.e_score_correction_bias for _, m in self.layers]

    def accumulate(self, counts: list[torch.Tensor]) -> None:
        if len(counts) != len(self.layers):
            raise ValueError(f"expected router counts of {len(self.layers)} MoE layers, got {len(counts)}")
        if counts:
            self.step_counts += torch.stack([c.to(torch.int64) for c in counts])

    @torch.no_grad()
    def reduce(self) -> None:
        """Sums the step's counts over the ranks (once per step; step() does it when it was not called)."""
        if self.layers and not self._reduced and (
                self.group is not None or (dist.is_available() and dist.is_initialized()
                                           and dist.get_world_size() > 1)):
            dist.all_reduce(self.step_counts, op=dist.ReduceOp.SUM, group=self.group)
        self._reduced = True

    def skip(self) -> None:
        """Drops the step's counts (a skipped optimizer step)."""
        self.step_counts.zero_()
        self._reduced = False

    @torch.no_grad()
    def step(self) -> None:
        if not self.layers:
            return
        self.reduce()
        counts = self.step_counts
        if self.enabled:
            load = counts.to(torch.float32)                                    # [Lm, E]
            offset = load.mean(-1, keepdim=True) - load
            for b, delta in zip(self.biases(), torch.sign(offset) * self.rate):
                b.add_(delta.to(b.dtype))
        self.last_counts.copy_(counts)
        self.total_counts += counts
        self.step_counts.zero_()
        self._reduced = False

    STATS = ("max_over_mean", "min_over_mean", "entropy", "max_share")

    @staticmethod
    def stats_tensor(counts: torch.Tensor) -> torch.Tensor:
        """load_stats as one float64 tensor [4, Lm] on counts' device (rows in STATS order; no host sync)."""
        load = counts.to(torch.float64)
        total = load.sum(-1, keepdim=True).clamp(min=1)
        share = load / total                                                   # [Lm, E]
        mean = total / load.shape[-1]
        ent = -(share * torch.log(share.clamp(min=1e-30))).sum(-1) / math.log(load.shape[-1])
        return torch.stack([load.max(-1).values / mean[:, 0], load.min(-1).values / mean[:, 0], ent,
                            share.max(-1).values])

    @classmethod
    def load_stats(cls, counts: torch.Tensor) -> dict[str, list[float]]:
        """Per layer, from counts [Lm, E]: max/mean and min/mean load, routing entropy normalised to 1 for
        uniform load, and the largest expert's share of all routing decisions."""
        return dict(zip(cls.STATS, cls.stats_tensor(counts).tolist()))

    def stats(self) -> dict[str, list[float]]:
        """load_stats of the last step's counts (one host sync)."""
        return self.load_stats(self.last_counts) if self.layers else {}

    def collapsed(self, stats: dict[str, list[float]]) -> list[tuple[int, float]]:
        """(layer index, share) of every layer whose busiest expert exceeds collapse_share."""
        return [(i, s) for i, s in zip(self.layer_ids, stats.get("max_share", [])) if s > self.collapse_share]

    def state_dict(self) -> dict:
        return {"biases": [b.detach().cpu().clone() for b in self.biases()], "total_counts": self.total_counts.cpu()}

    def load_state_dict(self, state: dict) -> None:
        if len(state["biases"]) != len(self.layers):
            raise ValueError(f"balancer state has {len(state['biases'])} MoE layers, the model {len(self.layers)}")
        with torch.no_grad():
            for b, saved in zip(self.biases(), state["biases"]):
                b.copy_(saved.to(b.device, b.dtype))
            self.total_counts.copy_(state["total_counts"].to(self.total_counts.device))
