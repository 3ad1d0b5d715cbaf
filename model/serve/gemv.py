"""Single-row BF16 projections through nemotron_kernels' grouped GEMV (one group), for decode at batch 1.

At one row cuBLAS runs the Mamba out_proj and the attention o_proj (K 4096 -> N 2688) as a split-K GEMM plus a
reduction kernel: 11.8 us a call in the B1 decode profile, where our GEMV, which splits K inside one kernel, takes
8.5 us on the same operands (H200, bench/NOTES.md session 12: `BENCH_SERVE_PROFILE=1 python -m bench serve` and
scripts/sweep_gemv_split.py). in_proj (K < N) and lm_head measured no faster, so only these two are swapped.
Other row counts, devices and dtypes go through F.linear as before.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.nemotron_h import Linear, NemotronH
from nemotron_kernels.ops.grouped_gemm import grouped_gemm, one_group_offsets, use_kernel


class GemvLinear(nn.Module):
    """A bias-free linear (weight [N, K]) whose single-row calls on a GPU run the one-group grouped GEMV."""

    def __init__(self, linear: Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight           # the same Parameter: state-dict keys and storage are unchanged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)                                      # [M, K]
        w = self.weight
        if x2.shape[0] == 1 and use_kernel(x2, w) and x2.data_ptr() % 16 == 0:  # bf16 on the GPU, TMA-aligned
            y = grouped_gemm(x2, w.unsqueeze(0), one_group_offsets(1, x2.device))  # [1, N]
            return y.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, w)


def fuse_attention_qkv(model: NemotronH) -> int:
    """Each attention layer's q, k and v projections as one GEMM (Attention.fuse_qkv); returns how many layers were
    fused (0 on a second call, or for projections FP8 serving has replaced)."""
    return sum(block.mixer.fuse_qkv() for block in model.layers if hasattr(block.mixer, "fuse_qkv"))


def use_gemv_for_single_rows(model: NemotronH) -> int:
    """Swaps each Mamba out_proj and attention o_proj that is still a plain Linear (FP8Linear keeps its own
    weights-only path) with sizes the kernel takes (multiples of 8) for a GemvLinear, in place; returns how many
    were swapped (0 on a second call)."""
    swapped = 0
    for block in model.layers:
        mixer = block.mixer
        for name in ("out_proj", "o_proj"):
            linear = getattr(mixer, name, None)
            if type(linear) is Linear and linear.in_features % 8 == 0 and linear.out_features % 8 == 0:
                setattr(mixer, name, GemvLinear(linear))
                swapped += 1
    return swapped
