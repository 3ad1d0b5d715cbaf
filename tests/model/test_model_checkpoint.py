"""HF-layout safetensors checkpoints: round trips (single file, sharded, bf16) and named errors on bad input."""
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from model.config import NemotronHConfig
from model.nemotron_h import NemotronH, build_model


@pytest.fixture
def saved(tiny_config, tmp_path):
    model = build_model(tiny_config, seed=1)
    save_checkpoint(model, tmp_path)
    return model, tmp_path


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_layout_matches_the_nano_checkpoint(saved):
    model, d = saved
    cfg = model.config
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors"]
    with safe_open(d / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("backbone.layers.2.mixer.gate.weight").get_dtype() == "F32"
        assert f.get_slice("backbone.layers.0.mixer.conv1d.weight").get_shape() == [cfg.conv_dim, 1, cfg.conv_kernel]
    E, I, H = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.hidden_size
    expected = {"backbone.embeddings.weight", "backbone.norm_f.weight", "lm_head.weight"}
    for i, c in enumerate(cfg.pattern):
        p = f"backbone.layers.{i}."
        expected.add(p + "norm.weight")
        expected |= {p + "mixer." + n for n in {
            "M": ["in_proj.weight", "conv1d.weight", "conv1d.bias", "A_log", "D", "dt_bias", "norm.weight",
                  "out_proj.weight"],
            "*": ["q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"],
            "E": ["gate.weight", "gate.e_score_correction_bias", "shared_experts.up_proj.weight",
                  "shared_experts.down_proj.weight"]
                 + [f"experts.{k}.{w}_proj.weight" for k in range(E) for w in ("up", "down")],
            "-": ["up_proj.weight", "down_proj.weight"]}[c]}
    assert keys == expected
    tensors = load_file(d / "model.safetensors")
    assert tensors["backbone.layers.2.mixer.experts.5.up_proj.weight"].shape == (I, H)
    torch.testing.assert_close(tensors["backbone.layers.2.mixer.experts.5.down_proj.weight"],
                               model.layers[2].mixer.experts.down_proj[5], rtol=0, atol=0)


def test_roundtrip_single_file(saved):
    model, d = saved
    loaded = load_model(d, backend="reference")
    assert loaded.config == model.config and loaded.dtype == torch.float32
    assert_same_model(model, loaded)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_roundtrip_sharded_bf16_and_stale_files(tiny_config, tmp_path):
    model = build_model(tiny_config, dtype=torch.bfloat16, seed=2)
    save_checkpoint(model, tmp_path)                                 # single file first ...
    names = save_checkpoint(model, tmp_path, max_shard_bytes=60_000)  # ... then shards: the single file goes
    assert len(names) > 2 and all(n.startswith("model-0") for n in names)
    files = sorted(os.listdir(tmp_path))
    assert files == sorted(names + ["config.json", "model.safetensors.index.json"]), files  # no temp files left
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(names)
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for n in names for t in load_file(tmp_path / n).values())
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = load_model(tmp_path)                                      # dtype from config.json
    assert loaded.layers[2].mixer.gate.weight.dtype == torch.float32
    assert loaded.layers[0].mixer.in_proj.weight.dtype == torch.bfloat16
    assert_same_model(model, loaded)
    save_checkpoint(model, tmp_path)                                   # back to one file: shards and index go
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_load_into_meta_model_with_dtype_conversion(saved):
    model, d = saved
    with torch.device("meta"):
        target = NemotronH(model.config, dtype=torch.float64)
    with pytest.raises(ValueError, match="pass device="):
        load_checkpoint(target, d)
    load_checkpoint(target, d, device="cpu", dtype=torch.float64)
    assert target.embeddings.weight.dtype == torch.float64 and target.layers[2].mixer.gate.weight.dtype == torch.float32
    torch.testing.assert_close(target.embeddings.weight, model.embeddings.weight.double(), rtol=0, atol=0)


def test_tied_embeddings_roundtrip(tmp_path):
    model = build_model(NemotronHConfig.from_preset("tiny", tie_word_embeddings=True))
    save_checkpoint(model, tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    loaded = load_model(tmp_path, dtype=torch.float32)
    assert loaded.lm_head.weight is loaded.embeddings.weight
    assert_same_model(model, loaded)


def rewrite(path, edit):
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


KEY = "backbone.layers.0.mixer.in_proj.weight"


@pytest.mark.parametrize("case, edit, message", [
    ("missing", lambda t: t.pop(KEY), f"missing key '{KEY}'"),
    ("missing expert", lambda t: t.pop("backbone.layers.2.mixer.experts.7.up_proj.weight"),
     "missing key 'backbone.layers.2.mixer.experts.7.up_proj.weight'"),
    ("unexpected", lambda t: t.update({"backbone.layers.0.mixer.extra.weight": torch.zeros(2)}),
     "model.safetensors: unexpected key 'backbone.layers.0.mixer.extra.weight'"),
    ("extra expert", lambda t: t.update({"backbone.layers.2.mixer.experts.8.up_proj.weight": torch.zeros(32, 64)}),
     "model.safetensors: unexpected key 'backbone.layers.2.mixer.experts.8.up_proj.weight'"),
    ("shape", lambda t: t.update({KEY: t[KEY][:-1].clone()}),
     f"model.safetensors: key '{KEY}' has shape \\[199, 64\\], the model expects \\[200, 64\\]"),
    ("dtype", lambda t: t.update({KEY: t[KEY].to(torch.int32)}),
     f"model.safetensors: key '{KEY}' has dtype I32"),
])
def test_bad_checkpoints_name_the_key_and_file(saved, case, edit, message):
    _, d = saved
    rewrite(d / "model.safetensors", edit)
    with pytest.raises(CheckpointError, match=message):
        load_model(d)


def test_truncated_file_names_the_file(saved):
    _, d = saved
    path = d / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read safetensors file"):
        load_model(d)
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read safetensors file"):
        load_model(d)


def test_sharded_errors_name_the_file(tiny_config, tmp_path):
    names = save_checkpoint(build_model(tiny_config), tmp_path, max_shard_bytes=60_000)
    os.remove(tmp_path / names[1])
    with pytest.raises(CheckpointError, match=f"{names[1]}: file listed in the checkpoint does not exist"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: not a valid safetensors index"):
        load_model(tmp_path)


def test_index_pointing_at_the_wrong_shard(tiny_config, tmp_path):
    names = save_checkpoint(build_model(tiny_config), tmp_path, max_shard_bytes=60_000)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    key = next(k for k, v in index["weight_map"].items() if v == names[0])
    index["weight_map"][key] = names[1]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"{names[1]}: cannot read key '{key}'"):
        load_model(tmp_path)


def test_no_weights(tmp_path, tiny_config):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config.to_hf_config()))
    with pytest.raises(CheckpointError, match="neither model.safetensors nor model.safetensors.index.json"):
        load_model(tmp_path)
