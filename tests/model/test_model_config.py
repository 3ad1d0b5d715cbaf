"""NemotronHConfig: presets, parameter counts (spec §1.3), validation messages, Hugging Face config.json mapping."""
import dataclasses
import json
import math

import pytest
import torch

from model.config import PRESETS, NemotronHConfig
from model.nemotron_h import NemotronH


def test_nano_preset_matches_spec():
    cfg = NemotronHConfig.from_preset("nemotron3-nano-30b-a3b")
    assert cfg.num_layers == 52 and cfg.pattern.count("M") == 23 and cfg.pattern.count("E") == 23
    assert cfg.layer_indices("*") == [5, 12, 19, 26, 33, 42]
    assert (cfg.d_inner, cfg.conv_dim, cfg.in_proj_dim) == (4096, 6144, 10304)
    assert (cfg.hidden_size, cfg.vocab_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == \
        (2688, 131072, 32, 2, 128)
    assert (cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size,
            cfg.moe_shared_expert_intermediate_size, cfg.routed_scaling_factor) == (128, 6, 1856, 3712, 2.5)
    assert cfg.time_step_limit == (0.0, math.inf) and not cfg.tie_word_embeddings


def test_nano_parameter_counts():
    cfg = NemotronHConfig.from_preset("nemotron3-nano-30b-a3b")
    assert cfg.num_params() == 31_577_940_288                                   # spec §1.3 total
    assert cfg.num_params(active=True, include_embedding=False) == 3_227_754_816  # "3.228 B" active
    assert round(cfg.num_params(active=True) / 1e9, 2) == 3.58                   # incl. the input embedding
    with torch.device("meta"):
        model = NemotronH(cfg, dtype=torch.bfloat16)
    counted = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    assert counted == 31_577_940_288


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_count(name):
    cfg = NemotronHConfig.from_preset(name)
    with torch.device("meta"):
        model = NemotronH(cfg)
    assert sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()) == cfg.num_params()


def test_tiny_preset_covers_every_block_type(tiny_config):
    assert set(tiny_config.pattern) == {"M", "*", "E", "-"}
    assert tiny_config.n_groups > 1 and tiny_config.num_experts_per_tok > 1
    assert tiny_config.num_attention_heads > tiny_config.num_key_value_heads


def test_unknown_preset_lists_known():
    with pytest.raises(ValueError, match="unknown preset 'nope'.*tiny"):
        NemotronHConfig.from_preset("nope")


@pytest.mark.parametrize("field, value, message", [
    ("pattern", "MEX*", "pattern: unknown layer characters \\['X'\\]"),
    ("pattern", "", "pattern: must be a non-empty string"),
    ("hidden_size", 0, "hidden_size: must be a positive int"),
    ("vocab_size", 2.5, "vocab_size: must be a positive int"),
    ("num_key_value_heads", 3, "num_key_value_heads: must divide num_attention_heads=4"),
    ("head_dim", -1, "head_dim: must be a positive int"),
    ("n_groups", 3, "n_groups: must divide mamba_num_heads=8"),
    ("conv_kernel", 1, "conv_kernel: must be >= 2"),
    ("chunk_size", 0, "chunk_size: must be a positive int"),
    ("num_experts_per_tok", 9, "num_experts_per_tok: must be <= n_routed_experts=8"),
    ("n_group", 3, "n_group: must divide n_routed_experts=8"),
    ("topk_group", 2, "topk_group: must be <= n_group=1"),
    ("routed_scaling_factor", 0.0, "routed_scaling_factor: must be a positive number"),
    ("norm_topk_prob", False, "norm_topk_prob: only True is supported"),
    ("time_step_min", 0.5, "time_step_min: must be <= time_step_max"),
    ("time_step_limit", (0.1, 0.01), "time_step_limit: must be a pair"),
    ("layer_norm_epsilon", 0.0, "layer_norm_epsilon: must be a positive finite number"),
    ("eos_token_id", 600, "eos_token_id: must be < vocab_size=512"),
    ("pad_token_id", -1, "pad_token_id: must be None or a non-negative int"),
    ("intermediate_size", 0, "intermediate_size: must be a positive int"),
    ("mamba_ssm_cache_dtype", "int8", "mamba_ssm_cache_dtype: must be one of"),
])
def test_validation_names_the_field(tiny_config, field, value, message):
    with pytest.raises(ValueError, match=f"NemotronHConfig.{message}"):
        dataclasses.replace(tiny_config, **{field: value})


def test_hf_config_roundtrip_and_transformers_loads_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    for name in ("nemotron3-nano-30b-a3b", "tiny"):
        cfg = NemotronHConfig.from_preset(name)
        d = cfg.to_hf_config()
        (tmp_path / "config.json").write_text(json.dumps(d))  # strict JSON: no Infinity in it
        json.loads((tmp_path / "config.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
        hf = transformers.AutoConfig.from_pretrained(tmp_path)
        assert isinstance(hf, transformers.NemotronHConfig)
        assert hf.hybrid_override_pattern == cfg.pattern and hf.num_hidden_layers == cfg.num_layers
        assert tuple(hf.time_step_limit) == (0.0, math.inf)
        assert (hf.mamba_num_heads, hf.n_groups, hf.n_routed_experts, hf.num_key_value_heads) == \
            (cfg.mamba_num_heads, cfg.n_groups, cfg.n_routed_experts, cfg.num_key_value_heads)
        assert NemotronHConfig.from_hf_config(tmp_path) == cfg              # directory
        assert NemotronHConfig.from_hf_config(hf.to_dict()) == cfg          # what transformers writes back
        hf.save_pretrained(tmp_path / "re")                                  # transformers' own JSON (tagged inf)
        assert NemotronHConfig.from_hf_config(tmp_path / "re" / "config.json") == cfg


def test_hf_config_legacy_forms(tiny_config):
    d = tiny_config.to_hf_config()
    del d["layers_block_type"]                                # remote-code configs: only the pattern string
    d["time_step_limit"] = [0.0, 1e30]
    d["mamba_n_groups"] = d.pop("n_groups")                   # legacy key name
    assert NemotronHConfig.from_hf_config(d) == tiny_config
    d = tiny_config.to_hf_config()
    d["layers_block_type"] = ["mamba" if t == "linear_attention" else "attention" if t == "full_attention" else t
                              for t in d["layers_block_type"]]   # legacy block names
    del d["hybrid_override_pattern"]
    assert NemotronHConfig.from_hf_config(d).pattern == tiny_config.pattern


@pytest.mark.parametrize("key, value, message", [
    ("attention_bias", True, "key 'attention_bias': only False is supported"),
    ("moe_latent_size", 64, "key 'moe_latent_size': only None is supported"),
    ("num_nextn_predict_layers", 1, "key 'num_nextn_predict_layers': only 0 is supported"),
    ("mlp_hidden_act", "silu", "key 'mlp_hidden_act': only 'relu2' is supported"),
    ("model_type", "llama", "key 'model_type': expected 'nemotron_h'"),
    ("num_hidden_layers", 3, "key 'num_hidden_layers': disagrees"),
    ("layers_block_type", ["linear_attention", "bogus"], "key 'layers_block_type': must be a list"),
    ("num_key_value_heads", 3, "NemotronHConfig.num_key_value_heads: must divide"),
])
def test_hf_config_rejects_what_the_model_lacks(tiny_config, key, value, message):
    d = tiny_config.to_hf_config()
    d[key] = value
    with pytest.raises(ValueError, match=message):
        NemotronHConfig.from_hf_config(d)


def test_hf_config_missing_required_key(tiny_config, tmp_path):
    d = tiny_config.to_hf_config()
    del d["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"config.json: missing required key 'hidden_size'"):
        NemotronHConfig.from_hf_config(tmp_path)


def test_info_cli(capsys, tmp_path, tiny_config):
    from model.__main__ import main
    assert main(["--preset", "nemotron3-nano-30b-a3b"]) == 0
    assert "31,577,940,288 total, 3,227,754,816 active" in capsys.readouterr().out
    (tmp_path / "config.json").write_text(json.dumps(tiny_config.to_hf_config()))
    assert main(["--checkpoint", str(tmp_path)]) == 0
    assert f"{tiny_config.num_params():,} total" in capsys.readouterr().out
