"""NemotronH configuration: one dataclass, named presets, and the Hugging Face config.json mapping.

The layer pattern is a string with one character per layer (spec §1.1):
  M = Mamba-2 mixer, * = GQA attention, E = sparse MoE, - = dense squared-ReLU MLP.
Every field is checked in `__post_init__`; a bad value raises ValueError naming the field.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass

LAYER_CHARS = {"M": "mamba", "*": "attention", "E": "moe", "-": "mlp"}
# transformers >= 5.3 writes `layers_block_type`; older configs carry `hybrid_override_pattern`.
_HF_BLOCK_TYPE = {"M": "linear_attention", "*": "full_attention", "E": "moe", "-": "mlp"}
_HF_BLOCK_CHAR = {v: k for k, v in _HF_BLOCK_TYPE.items()} | {"mamba": "M", "attention": "*"}

NANO_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"


@dataclass
class NemotronHConfig:
    # model shape
    vocab_size: int = 131072
    hidden_size: int = 2688
    pattern: str = NANO_PATTERN
    # attention (*): GQA, no positional encoding, no bias
    num_attention_heads: int = 32
    num_key_value_heads: int = 2
    head_dim: int = 128
    # Mamba-2 (M): d_inner = mamba_num_heads * mamba_head_dim
    mamba_num_heads: int = 64
    mamba_head_dim: int = 64
    ssm_state_size: int = 128
    n_groups: int = 8
    conv_kernel: int = 4
    chunk_size: int = 128
    use_conv_bias: bool = True
    time_step_min: float = 1e-3     # dt init range (log-uniform) and floor; init only
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_limit: tuple[float, float] = (0.0, math.inf)  # clamp of softplus(dt + dt_bias); (0, inf) = none
    mamba_ssm_cache_dtype: str = "float32"
    # MoE (E): sigmoid router with selection-only correction bias, non-gated relu^2 experts + one shared expert
    n_routed_experts: int = 128
    num_experts_per_tok: int = 6
    moe_intermediate_size: int = 1856
    moe_shared_expert_intermediate_size: int = 3712
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    # dense MLP (-), unused by Nano
    intermediate_size: int = 1856
    # norms, init, embeddings, tokens
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0
    max_position_embeddings: int = 262144

    def __post_init__(self):
        self.time_step_limit = tuple(float(v) for v in self.time_step_limit)
        if isinstance(self.eos_token_id, tuple):
            self.eos_token_id = list(self.eos_token_id)
        self.validate()

    # ---------------------------------------------------------------- derived sizes
    @property
    def num_layers(self) -> int:
        return len(self.pattern)

    @property
    def d_inner(self) -> int:  # Mamba inner width
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def conv_dim(self) -> int:  # channels of the causal conv: x | B | C
        return self.d_inner + 2 * self.n_groups * self.ssm_state_size

    @property
    def in_proj_dim(self) -> int:  # z | xBC | dt
        return self.d_inner + self.conv_dim + self.mamba_num_heads

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    def layer_indices(self, char: str) -> list[int]:
        return [i for i, c in enumerate(self.pattern) if c == char]

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        def fail(name, why):
            raise ValueError(f"NemotronHConfig.{name}: {why} (got {getattr(self, name)!r})")

        def positive_int(name):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                fail(name, "must be a positive int")

        def non_negative_int(name):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                fail(name, "must be None or a non-negative int")

        if not isinstance(self.pattern, str) or not self.pattern:
            fail("pattern", "must be a non-empty string of layer characters M, *, E, -")
        bad = sorted(set(self.pattern) - set(LAYER_CHARS))
        if bad:
            fail("pattern", f"unknown layer characters {bad}; allowed: M (Mamba-2), * (attention), E (MoE), - (MLP)")
        for name in ("vocab_size", "hidden_size", "max_position_embeddings"):
            positive_int(name)
        for name in ("bos_token_id", "pad_token_id"):
            non_negative_int(name)
        for tok in self.eos_token_ids:
            if not isinstance(tok, int) or isinstance(tok, bool) or tok < 0:
                fail("eos_token_id", "must be None, a non-negative int or a list of them")
        for name in ("bos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if v is not None and v >= self.vocab_size:
                fail(name, f"must be < vocab_size={self.vocab_size}")
        if any(t >= self.vocab_size for t in self.eos_token_ids):
            fail("eos_token_id", f"must be < vocab_size={self.vocab_size}")
        for name in ("layer_norm_epsilon", "initializer_range"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                fail(name, "must be a positive finite number")
        if "*" in self.pattern:
            for name in ("num_attention_heads", "num_key_value_heads", "head_dim"):
                positive_int(name)
            if self.num_attention_heads % self.num_key_value_heads:
                fail("num_key_value_heads", f"must divide num_attention_heads={self.num_attention_heads}")
        if "M" in self.pattern:
            for name in ("mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "conv_kernel",
                         "chunk_size"):
                positive_int(name)
            if self.mamba_num_heads % self.n_groups:
                fail("n_groups", f"must divide mamba_num_heads={self.mamba_num_heads}")
            if self.conv_kernel < 2:
                fail("conv_kernel", "must be >= 2 (the decode cache keeps conv_kernel - 1 inputs)")
            for name in ("time_step_min", "time_step_max", "time_step_floor"):
                v = getattr(self, name)
                if not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                    fail(name, "must be a positive finite number")
            if self.time_step_min > self.time_step_max:
                fail("time_step_min", f"must be <= time_step_max={self.time_step_max}")
            lo, hi = self.time_step_limit if len(self.time_step_limit) == 2 else (None, None)
            if lo is None or not (0.0 <= lo < hi):
                fail("time_step_limit", "must be a pair (lo, hi) with 0 <= lo < hi (use (0, inf) for no clamp)")
            if self.mamba_ssm_cache_dtype not in ("float32", "float64", "bfloat16", "float16"):
                fail("mamba_ssm_cache_dtype", "must be one of float32, float64, bfloat16, float16")
        if "E" in self.pattern:
            for name in ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size",
                         "moe_shared_expert_intermediate_size", "n_group", "topk_group"):
                positive_int(name)
            if self.num_experts_per_tok > self.n_routed_experts:
                fail("num_experts_per_tok", f"must be <= n_routed_experts={self.n_routed_experts}")
            if self.n_routed_experts % self.n_group:
                fail("n_group", f"must divide n_routed_experts={self.n_routed_experts}")
            if self.topk_group > self.n_group:
                fail("topk_group", f"must be <= n_group={self.n_group}")
            if self.n_group > 1 and self.n_routed_experts // self.n_group < 2:
                fail("n_group", "group-limited routing scores each group by its top-2 experts; "
                                "needs >= 2 experts per group")
            if self.num_experts_per_tok > self.topk_group * (self.n_routed_experts // self.n_group):
                fail("num_experts_per_tok", "must be <= topk_group * experts per group")
            if not isinstance(self.routed_scaling_factor, (int, float)) or not self.routed_scaling_factor > 0:
                fail("routed_scaling_factor", "must be a positive number")
            if self.norm_topk_prob is not True:
                fail("norm_topk_prob", "only True is supported (moe_router always renormalises the top-k weights)")
        if "-" in self.pattern:
            positive_int("intermediate_size")

    # ---------------------------------------------------------------- parameter counts
    def num_params(self, active: bool = False, include_embedding: bool = True) -> int:
        """Parameters (+ the router correction-bias buffers), analytically.
        active=True counts only num_experts_per_tok routed experts per MoE layer (per-token active parameters)."""
        H = self.hidden_size
        per = {
            "M": H * self.in_proj_dim + self.conv_dim * self.conv_kernel + (self.conv_dim if self.use_conv_bias else 0)
                 + 3 * self.mamba_num_heads + self.d_inner + self.d_inner * H,
            "*": H * self.head_dim * (self.num_attention_heads + 2 * self.num_key_value_heads)
                 + self.num_attention_heads * self.head_dim * H,
            "E": self.n_routed_experts * (H + 1)
                 + (self.num_experts_per_tok if active else self.n_routed_experts) * 2 * H * self.moe_intermediate_size
                 + 2 * H * self.moe_shared_expert_intermediate_size,
            "-": 2 * H * self.intermediate_size,
        }
        total = sum(per[c] + H for c in self.pattern) + H  # + pre-norms, norm_f
        total += self.vocab_size * H  # lm_head (a tied head is the embedding: counted once, here)
        if include_embedding and not self.tie_word_embeddings:
            total += self.vocab_size * H
        return total

    # ---------------------------------------------------------------- presets
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "NemotronHConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    # ---------------------------------------------------------------- Hugging Face config.json
    @classmethod
    def from_hf_config(cls, source: str | os.PathLike | dict) -> "NemotronHConfig":
        """From a transformers `NemotronHConfig` dict, a config.json path or a checkpoint directory.
        Reads both `layers_block_type` (transformers >= 5.3) and `hybrid_override_pattern` (remote code), and the
        legacy `mamba_*` key names. Features this model does not implement raise ValueError naming the key."""
        where = "config dict"
        if not isinstance(source, dict):
            path = os.fspath(source)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            where = path
            try:
                with open(path) as f:
                    source = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"cannot read Hugging Face config {path}: {e}") from e
        hf = dict(source)

        def fail(key, why):
            raise ValueError(f"{where}: key {key!r}: {why} (got {hf.get(key)!r})")

        if hf.get("model_type", "nemotron_h") != "nemotron_h":
            fail("model_type", "expected 'nemotron_h'")
        for legacy, key in (("mamba_n_groups", "n_groups"), ("mamba_d_conv", "conv_kernel"),
                            ("mamba_dt_min", "time_step_min"), ("mamba_dt_max", "time_step_max"),
                            ("mamba_dt_limit", "time_step_limit"), ("mamba_dt_init_floor", "time_step_floor"),
                            ("mamba_conv_bias", "use_conv_bias"), ("mamba_chunk_size", "chunk_size")):
            if legacy in hf and key not in hf:
                hf[key] = hf[legacy]

        if hf.get("layers_block_type") is not None:
            types = hf["layers_block_type"]
            if not isinstance(types, list) or any(t not in _HF_BLOCK_CHAR for t in types):
                fail("layers_block_type", f"must be a list of {sorted(_HF_BLOCK_CHAR)}")
            pattern = "".join(_HF_BLOCK_CHAR[t] for t in types)
        elif hf.get("hybrid_override_pattern") is not None:
            pattern = hf["hybrid_override_pattern"]
        else:
            raise ValueError(f"{where}: needs 'layers_block_type' or 'hybrid_override_pattern'")
        if "num_hidden_layers" in hf and hf["num_hidden_layers"] not in (None, len(pattern)):
            fail("num_hidden_layers", f"disagrees with the {len(pattern)} layers of the layer pattern")

        # features of the transformers config that this model does not implement
        unsupported = {"attention_bias": False, "mamba_proj_bias": False, "use_bias": False, "mlp_bias": False,
                       "moe_latent_size": None, "sliding_window": None, "mamba_hidden_act": "silu",
                       "mlp_hidden_act": "relu2", "num_nextn_predict_layers": 0}
        for key, supported in unsupported.items():
            if hf.get(key, supported) != supported:
                fail(key, f"only {supported!r} is supported by this model")

        limit = tuple(_decode_float(v) for v in hf.get("time_step_limit", (0.0, math.inf)))
        if len(limit) == 2 and limit[1] >= 1e30:  # some exports write a huge number for "no upper limit"
            limit = (limit[0], math.inf)
        kw = {"pattern": pattern, "time_step_limit": limit}
        if hf.get("num_key_value_heads", 0) is None:  # transformers: None means one KV head per query head
            kw["num_key_value_heads"] = hf.get("num_attention_heads")
        if hf.get("head_dim", 0) is None and hf.get("num_attention_heads"):
            kw["head_dim"] = hf["hidden_size"] // hf["num_attention_heads"]
        defaults = _HF_DEFAULTS
        for f in dataclasses.fields(cls):
            if f.name in kw:
                continue
            if f.name in hf:
                kw[f.name] = hf[f.name]
            elif f.name in defaults:
                kw[f.name] = defaults[f.name]
            else:
                raise ValueError(f"{where}: missing required key {f.name!r}")
        try:
            return cls(**kw)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e

    def to_hf_config(self, dtype: str | None = "bfloat16") -> dict:
        """A config.json dict that transformers (>= 5.3, `NemotronHConfig`) loads. Writes both
        `layers_block_type` and the legacy `hybrid_override_pattern`. `time_step_limit` is written only when it is
        not the default (0, inf), as plain floats (strict JSON has no infinity)."""
        d = {
            "architectures": ["NemotronHForCausalLM"],
            "model_type": "nemotron_h",
            "layers_block_type": [_HF_BLOCK_TYPE[c] for c in self.pattern],
            "hybrid_override_pattern": self.pattern,
            "num_hidden_layers": self.num_layers,
            "expand": 2,  # informational (Nano's value); transformers derives d_inner from the Mamba heads
            "attention_bias": False, "mamba_proj_bias": False, "use_bias": False, "mlp_bias": False,
            "mamba_hidden_act": "silu", "mlp_hidden_act": "relu2", "n_shared_experts": 1,
            "residual_in_fp32": False, "num_nextn_predict_layers": 0, "moe_latent_size": None,
            "use_cache": True,
        }
        for f in dataclasses.fields(self):
            if f.name in ("pattern", "time_step_limit"):
                continue
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        if self.time_step_limit != (0.0, math.inf):
            d["time_step_limit"] = list(self.time_step_limit)
        if dtype is not None:
            d["dtype"] = dtype
        return d


def _decode_float(v) -> float:
    """JSON float forms seen in config.json files: numbers, "Infinity"/"inf" strings, and transformers' tagged
    {"__float__": "Infinity"}."""
    if isinstance(v, dict) and "__float__" in v:
        v = v["__float__"]
    return float(v)


# transformers' defaults for keys an older config.json may omit (shape keys have none: they are required)
_HF_DEFAULTS = {
    "use_conv_bias": True, "chunk_size": 128, "time_step_min": 1e-3, "time_step_max": 0.1,
    "time_step_floor": 1e-4, "mamba_ssm_cache_dtype": "float32", "n_group": 1, "topk_group": 1,
    "routed_scaling_factor": 1.0, "norm_topk_prob": True, "intermediate_size": 21504, "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02, "rescale_prenorm_residual": True, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_position_embeddings": 4096, "conv_kernel": 4,
    "n_groups": 8, "num_experts_per_tok": 2, "n_routed_experts": 8,
}

PRESETS: dict[str, NemotronHConfig] = {
    # spec §1.1: nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16 (31.58 B parameters, 3.23 B active)
    "nemotron3-nano-30b-a3b": NemotronHConfig(),
    # tests and demos: every block type, grouped Mamba heads, GQA, top-2 of 8 experts; vocab covers the
    # 259-token byte-level demo tokenizer (model/generate.py)
    "tiny": NemotronHConfig(
        vocab_size=512, hidden_size=64, pattern="M*EME*-M", num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, mamba_num_heads=8, mamba_head_dim=8, ssm_state_size=16, n_groups=2, chunk_size=16,
        n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=64,
        routed_scaling_factor=2.5, intermediate_size=96, max_position_embeddings=4096),
    # a small Nano-shaped model (same ratios, 1/8 width) for single-GPU training and serving experiments
    "small": NemotronHConfig(
        vocab_size=512, hidden_size=384, pattern="MEM*EMEM*EME", num_attention_heads=8, num_key_value_heads=2,
        head_dim=48, mamba_num_heads=12, mamba_head_dim=64, ssm_state_size=64, n_groups=4, chunk_size=64,
        n_routed_experts=16, num_experts_per_tok=4, moe_intermediate_size=256, moe_shared_expert_intermediate_size=512,
        routed_scaling_factor=2.5, intermediate_size=1024, max_position_embeddings=65536),
}
