"""The large run presets, built on the meta device (shapes only, no memory): parameter counts, total and active per
token, counted from the modules themselves and checked against the spec and the presets' docstring."""
import pytest
import torch

from model.nemotron_h import NemotronH
from training.presets import PRESETS, run_preset


def counts_from_modules(model: NemotronH) -> tuple[int, int]:
    """(total, active per token) from the built modules. Active: the parameters a token passes through, i.e. only
    k of the E routed experts of each MoE layer and no input embedding (a lookup), but the lm_head; router
    correction biases included, as in NemotronHConfig.num_params."""
    cfg = model.config
    E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    total = active = 0
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert t.is_meta, name
        total += t.numel()
        if name == "embeddings.weight":
            continue
        if ".mixer.experts." in name:
            assert t.shape[0] == E, name                                   # [E, ...]: one slice per expert
            active += t.numel() // E * k
        else:
            active += t.numel()
    return total, active


@pytest.mark.parametrize("name, total, active", [
    # spec 1.3: 31,577,940,288 total; 3.228 B active (incl. lm_head, excl. input embedding) -> paper 31.6B / 3.2B
    ("nemotron3-nano-30b-a3b", 31_577_940_288, 3_227_754_816),
    # presets.py: "~1.05B total / 0.31B active of the Nano architecture"
    ("1b", 1_053_480_512, 311_088_704),
])
def test_large_presets_build_on_meta_with_their_parameter_counts(name, total, active):
    preset = run_preset(name)
    cfg = preset.model
    with torch.device("meta"):
        model = NemotronH(cfg, dtype=torch.bfloat16)
    assert counts_from_modules(model) == (total, active)
    assert cfg.num_params() == total and cfg.num_params(active=True, include_embedding=False) == active
    if name == "nemotron3-nano-30b-a3b":
        assert round(total / 1e9, 1) == 31.6 and round(active / 1e9, 1) == 3.2
        assert round(cfg.num_params(active=True) / 1e9, 2) == 3.58                # "3.6B including embeddings"
        # paper pretraining: sequence length 8192, peak LR 1e-3 -> min 1e-5, BF16
        assert (preset.seq_len, preset.lr, preset.min_lr, preset.dtype) == (8192, 1e-3, 1e-5, "bfloat16")
    else:
        assert round(total / 1e9, 2) == 1.05 and round(active / 1e9, 2) == 0.31
        assert (cfg.vocab_size, cfg.num_layers, cfg.n_routed_experts, cfg.num_experts_per_tok) == (131072, 23, 64, 6)


def test_every_preset_name_builds():
    for name in PRESETS:
        assert run_preset(name).model.num_layers > 0
    with pytest.raises(ValueError, match="known presets"):
        run_preset("2b")
