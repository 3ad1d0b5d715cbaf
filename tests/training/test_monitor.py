"""Progress reporting: the model FLOPs per token behind the MFU, the MFU itself, the per-device peak, and the tqdm
progress bar of a real run (every other test passes --no-progress)."""
from types import SimpleNamespace

import pytest
import torch

from model.config import NemotronHConfig
from model.nemotron_h import NemotronH
from training import monitor
from training.monitor import Progress, flops_per_token, peak_flops, read_metrics
from training.pretrain import main

# The tiny preset (H 64, vocab 512, pattern "M*EME*-M", top-2 of 8 experts) counted by hand, per layer incl. its
# pre-norm (64):
#   M: in_proj 64 x (64 z + 128 xBC + 8 dt) = 12,800; conv 128 x 4 + bias 128 = 640; A_log, D, dt_bias 3 x 8;
#      gated norm 64; out_proj 64 x 64 = 4,096                                     -> 17,624 + 64 = 17,688
#   *: q 64 x 64, k 64 x 32, v 64 x 32, o 64 x 64 = 12,288                          -> 12,288 + 64 = 12,352
#   E (active): router 8 x 64 + bias 8 = 520; 2 of 8 experts x (up 32 x 64 + down 64 x 32) = 8,192;
#      shared expert 64 x 64 x 2 = 8,192                                           -> 16,904 + 64 = 16,968
#   -: up 64 x 96 + down 96 x 64 = 12,288                                          -> 12,288 + 64 = 12,352
# 3 M + 2 * + 2 E + 1 - = 53,064 + 24,704 + 33,936 + 12,352 = 124,056; + norm_f 64 + lm_head 512 x 64 = 32,768
# (the input embedding is a lookup: not counted)
TINY_ACTIVE = 156_888


def test_tiny_active_parameter_count_by_hand_and_from_the_modules():
    cfg = NemotronHConfig.from_preset("tiny")
    with torch.device("meta"):
        model = NemotronH(cfg)
    E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    counted = 0
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if name == "embeddings.weight":
            continue
        counted += t.numel() * k // E if ".experts." in name else t.numel()
    assert counted == TINY_ACTIVE


def test_flops_per_token_matches_a_hand_count():
    """6 x active parameters (fwd + bwd) + causal attention 6 x n_attn x Hq x D x L (2 attention layers, 4 heads of
    16, rows of L tokens)."""
    cfg = NemotronHConfig.from_preset("tiny")
    assert flops_per_token(cfg, 64) == 6 * TINY_ACTIVE + 6 * 2 * 4 * 16 * 64 == 990_480
    assert flops_per_token(cfg, 0) == 6 * TINY_ACTIVE
    assert flops_per_token(cfg, 128) - flops_per_token(cfg, 64) == 6 * 2 * 4 * 16 * 64


def test_mfu_is_achieved_flops_over_the_peak_of_all_devices(monkeypatch):
    clock = iter([100.0, 102.0, 103.0, 200.0, 201.0])
    monkeypatch.setattr(monitor, "time", SimpleNamespace(perf_counter=lambda: next(clock)))   # this module only
    p = Progress(total=10, initial=0, enabled=False, tokens_flops=1e9, peak=1e12, world_size=2)
    tps, mfu = p.rate(4000)                                          # 4,000 tokens in 2 s
    assert tps == 2000.0
    assert mfu == pytest.approx(2000.0 * 1e9 / (1e12 * 2), rel=1e-12)  # 0.1% of two 1-TFLOP/s devices
    tps, mfu = p.rate(500)                                           # the next interval: 1 s since the last call
    assert (tps, mfu) == (500.0, pytest.approx(500.0 * 1e9 / 2e12))
    no_peak = Progress(total=10, initial=0, enabled=False, tokens_flops=1e9, peak=None, world_size=1)
    assert no_peak.rate(100)[1] is None


def test_peak_flops_per_device(monkeypatch):
    assert peak_flops(torch.device("cpu")) is None
    assert peak_flops(torch.device("cpu"), 123.0) == 123e12                   # --peak-tflops wins, CPU or not
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert peak_flops(torch.device("cuda", 0)) == 989e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert peak_flops(torch.device("cuda", 0)) is None


def test_progress_bar_shows_loss_tokens_per_second_and_mfu(pretrain_argv, tmp_path, capsys):
    """A run without --no-progress draws the tqdm bar over the steps with the last step's loss, tokens/s and MFU
    (here against --peak-tflops 1 on the CPU); the logged MFU is tokens/s x FLOPs/token / peak."""
    argv = [a for a in pretrain_argv(tmp_path, "--steps", 3, "--eval-every", 0, "--peak-tflops", 1)
            if a != "--no-progress"]
    main(argv)
    err = capsys.readouterr().err
    train = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    last = train[-1]
    assert "3/3" in err, err
    assert f"loss={last['loss']:.4f}" in err, err
    assert "tok/s=" in err and "MFU=" in err, err
    for r in train:                                                  # rows of 64 tokens: 990,480 FLOPs per token
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * 990_480 / 1e12, rel=1e-9)
    assert f"MFU={100 * last['mfu']:.1f}%" in err, err
