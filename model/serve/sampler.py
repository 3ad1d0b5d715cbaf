"""Token sampling on the device: temperature, top-k, top-p, per-request seeds. No host sync: the caller reads the
sampled tokens once per step.

Sampling is the exponential race (Gumbel-max in another form): token = argmax(p_i / q_i) with q_i ~ Exp(1), which
draws token i with probability p_i. A request with a seed has its own torch.Generator, advanced only by its own
draws, so its tokens do not depend on which other requests share the batch.
"""
from __future__ import annotations

import torch

from .sampling_params import SamplingParams


def _to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list on `device` without blocking the host (pinned staging buffer on CUDA)."""
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class Sampler:
    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._unseeded = None   # engine-wide generator for requests without a seed, made on first use

    def generator_for(self, params: SamplingParams) -> torch.Generator | None:
        """The request's own random stream when it has a seed, else None (the shared stream)."""
        if params.seed is None or params.greedy:
            return None
        return torch.Generator(device=self.device).manual_seed(params.seed)

    def __call__(self, logits: torch.Tensor, params: list[SamplingParams],
                 generators: list[torch.Generator | None]) -> torch.Tensor:
        """logits [R, V] (fp32/fp64) of the rows to sample -> tokens [R] int64 on the device."""
        R, V = logits.shape
        if R == 0:
            return torch.empty(0, dtype=torch.long, device=logits.device)
        greedy_tokens = logits.argmax(dim=-1)                                    # [R]
        if all(p.greedy for p in params):
            return greedy_tokens
        logits = logits.float() if logits.dtype not in (torch.float32, torch.float64) else logits
        temps = _to_device([p.temperature if not p.greedy else 1.0 for p in params], logits.dtype, self.device)
        scaled = logits / temps[:, None]                                         # [R, V]
        if any(p.top_p < 1.0 for p in params):
            scaled = self._mask_top_k_top_p(scaled, params)
        elif any(p.uses_top_k for p in params):
            scaled = self._mask_top_k(scaled, params)
        probs = torch.softmax(scaled, dim=-1)                                    # [R, V]
        noise = self._exponential(probs, params, generators)                     # [R, V]
        sampled = (probs / noise).argmax(dim=-1)                                 # [R]
        greedy = _to_device([p.greedy for p in params], torch.bool, self.device)
        return torch.where(greedy, greedy_tokens, sampled)

    def _exponential(self, probs, params, generators):
        noise = torch.empty_like(probs)
        if any(g is None and not p.greedy for p, g in zip(params, generators)):
            if self._unseeded is None:
                self._unseeded = torch.Generator(device=self.device)
                self._unseeded.seed()
            noise.exponential_(generator=self._unseeded)
        for i, g in enumerate(generators):
            if g is not None:
                noise[i].exponential_(generator=g)
        return noise.clamp_(min=torch.finfo(noise.dtype).tiny)                  # q > 0

    def _mask_top_k(self, scaled, params):
        R, V = scaled.shape
        ks = [min(p.top_k, V) if p.uses_top_k else V for p in params]
        kmax = max(ks)
        kth = scaled.topk(kmax, dim=-1).values                                   # [R, kmax] descending
        k_idx = _to_device([k - 1 for k in ks], torch.long, self.device)
        cutoff = kth.gather(1, k_idx[:, None])                                   # [R, 1] k-th largest
        return scaled.masked_fill(scaled < cutoff, float("-inf"))

    def _mask_top_k_top_p(self, scaled, params):
        R, V = scaled.shape
        sorted_logits, order = scaled.sort(dim=-1, descending=True)              # [R, V]
        ks = _to_device([min(p.top_k, V) if p.uses_top_k else V for p in params], torch.long, self.device)
        ps = _to_device([float(p.top_p) for p in params], scaled.dtype, self.device)
        rank = torch.arange(V, device=scaled.device)
        drop = rank[None, :] >= ks[:, None]                                      # beyond top-k
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs                      # mass of the tokens ahead
        drop = before >= ps[:, None]                                             # the top token always stays
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        return torch.empty_like(scaled).scatter_(1, order, sorted_logits)
