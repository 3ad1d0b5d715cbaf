"""Named run presets: a model configuration plus the batch, sequence length and schedule that suit it.

  tiny                     CPU in minutes: model preset "tiny" (8 layers, H=64, 8 experts), 4 rows x 128 tokens
  small                    model preset "small" (12 layers, H=384, 16 experts) on one GPU
  1b                       ~1.05B total / 0.31B active of the Nano architecture (23 layers, 64 experts top-6,
                           131K vocab) for one H200 in BF16
  nemotron3-nano-30b-a3b   the full 31.6B / 3.2B-active model, paper hyper-parameters (multi-GPU, FSDP2 + EP)
Each field can be overridden from the command line.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from model.config import NemotronHConfig


@dataclass
class RunPreset:
    model: NemotronHConfig
    seq_len: int
    batch_rows: int                 # rows per rank per micro-batch
    steps: int
    lr: float
    min_lr: float
    warmup_steps: int
    tokenizer_vocab: int            # vocab of the BPE trained on the corpus (<= model vocab)
    dtype: str = "float32"
    grad_accum: int = 1
    eval_every: int = 50
    eval_batches: int = 4


def _nano_1b() -> NemotronHConfig:
    return NemotronHConfig(
        vocab_size=131072, hidden_size=1024, pattern="MEMEM*EMEMEM*EMEMEM*EME", num_attention_heads=8,
        num_key_value_heads=2, head_dim=128, mamba_num_heads=32, mamba_head_dim=64, ssm_state_size=128, n_groups=8,
        chunk_size=128, n_routed_experts=64, num_experts_per_tok=6, moe_intermediate_size=512,
        moe_shared_expert_intermediate_size=1024, routed_scaling_factor=2.5, max_position_embeddings=65536)


def run_preset(name: str) -> RunPreset:
    if name == "tiny":
        return RunPreset(NemotronHConfig.from_preset("tiny"), seq_len=128, batch_rows=4, steps=300, lr=3e-3,
                         min_lr=3e-5, warmup_steps=20, tokenizer_vocab=512, eval_every=50, eval_batches=4)
    if name == "small":
        return RunPreset(NemotronHConfig.from_preset("small"), seq_len=1024, batch_rows=16, steps=2000, lr=2e-3,
                         min_lr=2e-5, warmup_steps=100, tokenizer_vocab=512, dtype="bfloat16", eval_every=200)
    if name == "1b":
        # 8 x 4K rows per step: at 4 rows the step was host-bound (5,000 launches in 176 ms against 139 ms of GPU
        # work) and 22 ms of it per-step costs over all 1.05 B parameters (AdamW, casts, clip; bench/NOTES.md)
        return RunPreset(_nano_1b(), seq_len=4096, batch_rows=8, steps=1000, lr=1e-3, min_lr=1e-5, warmup_steps=50,
                         tokenizer_vocab=32768, dtype="bfloat16", eval_every=200)
    if name == "nemotron3-nano-30b-a3b":
        return RunPreset(NemotronHConfig.from_preset("nemotron3-nano-30b-a3b"), seq_len=8192, batch_rows=1,
                         steps=10000, lr=1e-3, min_lr=1e-5, warmup_steps=333, tokenizer_vocab=32768,
                         dtype="bfloat16", eval_every=500)
    raise ValueError(f"unknown preset {name!r}; known presets: {PRESETS}")


PRESETS = ("tiny", "small", "1b", "nemotron3-nano-30b-a3b")


def replace_model(preset: RunPreset, **overrides) -> RunPreset:
    return dataclasses.replace(preset, model=dataclasses.replace(preset.model, **overrides)) if overrides else preset
