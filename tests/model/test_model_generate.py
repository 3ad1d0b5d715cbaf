"""Generation: greedy against full recomputation, stop ids, the samplers, the byte-level tokenizer and the CLI."""
import pytest
import torch

from model.checkpoint import save_checkpoint
from model.generate import byte_level_tokenizer, generate, main, sample
from model.nemotron_h import build_model


def test_greedy_matches_recomputation(tiny_model_f64):
    prompts = [[5, 6, 7, 8, 9, 10, 11], [300, 301, 302]]
    got = generate(tiny_model_f64, prompts, 8, stop_ids=[])
    for prompt, new in zip(prompts, got):
        seq = list(prompt)
        for _ in range(8):
            seq.append(int(tiny_model_f64(torch.tensor([seq]))[0, -1].argmax()))
        assert new == seq[len(prompt):]


def test_stop_ids_end_each_sequence(tiny_model_f64):
    prompts = [[5, 6, 7], [40, 41, 42, 43]]
    free = generate(tiny_model_f64, prompts, 6, stop_ids=[])
    j = next(j for j in range(1, 6) if free[0][j] not in free[0][:j])
    stop = free[0][j]
    got = generate(tiny_model_f64, prompts, 6, stop_ids=[stop])
    assert got[0] == free[0][:j + 1]                              # the stop token is kept, then the row ends
    cut = free[1].index(stop) + 1 if stop in free[1] else 6
    assert got[1] == free[1][:cut]
    assert generate(tiny_model_f64, prompts, 0) == [[], []]
    with pytest.raises(ValueError, match="every prompt needs at least one token"):
        generate(tiny_model_f64, [[1], []], 4)


def test_sampling_is_seeded(tiny_model_f64):
    prompts = [[5, 6, 7]]
    a = generate(tiny_model_f64, prompts, 10, temperature=1.0, seed=7, stop_ids=[])
    assert a == generate(tiny_model_f64, prompts, 10, temperature=1.0, seed=7, stop_ids=[])
    assert a != generate(tiny_model_f64, prompts, 10, temperature=1.0, seed=8, stop_ids=[])
    greedy = generate(tiny_model_f64, prompts, 10, stop_ids=[])
    assert generate(tiny_model_f64, prompts, 10, temperature=1.0, top_k=1, stop_ids=[]) == greedy
    assert generate(tiny_model_f64, prompts, 10, temperature=1.0, top_p=1e-9, stop_ids=[]) == greedy


def draw(logits, n=20000, **kw):
    g = torch.Generator().manual_seed(0)
    tokens = sample(logits.expand(n, -1), generator=g, **kw)
    return torch.bincount(tokens, minlength=logits.shape[-1]).double() / n


def test_sampler_distributions():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    torch.testing.assert_close(draw(logits, temperature=1.0), torch.tensor([0.4, 0.3, 0.2, 0.1]).double(),
                               rtol=0, atol=0.015)
    torch.testing.assert_close(draw(logits, temperature=1.0, top_k=2), torch.tensor([4 / 7, 3 / 7, 0, 0]).double(),
                               rtol=0, atol=0.015)
    # top_p 0.65: the smallest prefix reaching 0.65 is {0.4, 0.3}
    torch.testing.assert_close(draw(logits, temperature=1.0, top_p=0.65), torch.tensor([4 / 7, 3 / 7, 0, 0]).double(),
                               rtol=0, atol=0.015)
    sharp = draw(logits, temperature=0.25)                        # p^4 renormalised
    p4 = torch.tensor([0.4, 0.3, 0.2, 0.1]).double() ** 4
    torch.testing.assert_close(sharp, p4 / p4.sum(), rtol=0, atol=0.015)
    assert sample(logits, temperature=0.0).tolist() == [0]


def test_byte_level_tokenizer_roundtrip():
    tok = byte_level_tokenizer()
    assert tok.get_vocab_size() == 259
    text = "Nemotron 3 Nano: héllo wörld ✓ 🤖\n\ttabs"
    ids = tok.encode(text).ids
    assert len(ids) == len(text.encode()) and all(3 <= i < 259 for i in ids)
    assert ids[0] == 3 + ord("N")
    assert tok.decode(ids) == text


def test_cli_random_weights(capsys):
    assert main(["--preset", "tiny", "--random-weights", "--prompt", "Hello", "--max-new-tokens", "5",
                 "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("Hello") and "random weights" in out.err


def test_cli_checkpoint(tiny_config, tmp_path, capsys):
    model = build_model(tiny_config, seed=5)
    save_checkpoint(model, tmp_path)
    assert main(["--checkpoint", str(tmp_path), "--prompt", "Hi", "--no-progress", "--device", "cpu"]) == 2
    assert "tokenizer.json not found" in capsys.readouterr().err
    tok = byte_level_tokenizer()
    tok.save(str(tmp_path / "tokenizer.json"))
    assert main(["--checkpoint", str(tmp_path), "--prompt", "Hi", "--max-new-tokens", "6", "--no-progress",
                 "--device", "cpu", "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out
    new = generate(model, [tok.encode("Hi").ids], 6)[0]
    assert printed == "Hi" + tok.decode(new) + "\n"


def test_cli_needs_random_weights_with_a_preset(capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--prompt", "x"])
    assert "--preset needs --random-weights" in capsys.readouterr().err
