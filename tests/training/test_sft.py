"""SFT: chat JSONL, the chat template, assistant-only loss, reasoning on/off, packing, the CLI."""
import itertools
import json

import pytest
import torch

from model.checkpoint import CheckpointError
from model.serve.tokenizer import ServeTokenizer
from training.chat import (SFTBatches, chat_renderer, drop_reasoning, load_chat_jsonl, pack_conversations,
                           tokenize_conversation, tokenize_conversations)
from training.data import IGNORE_INDEX, load_tokenizer
from training.monitor import read_metrics
from training.pretrain import build_trainer as build_pretrain
from training.sft import build_trainer as build_sft
from training.sft import main as sft_main

CONV = [{"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "<think>2 plus 3 is 5.</think>It is 5."},
        {"role": "user", "content": "Doubled?"},
        {"role": "assistant", "content": "10", "reasoning_content": "5 times 2"}]


def decode(tok, ids):
    return tok.tokenizer.decode(ids, skip_special_tokens=False)


def test_loss_only_on_assistant_tokens(tiny_data):
    tok = tiny_data.tokenizer
    ids, trained = tokenize_conversation(CONV, tok, chat_renderer(tok))
    assert ids[0] == tok.bos_id and not trained[0]
    text = decode(tok, ids[1:])
    assert text == ("<|im_start|>system\nYou add numbers.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                    "<|im_start|>assistant\n<think>2 plus 3 is 5.</think>It is 5.<|im_end|>\n"
                    "<|im_start|>user\nDoubled?<|im_end|>\n"
                    "<|im_start|>assistant\n<think>5 times 2</think>10<|im_end|>\n")
    trained_text = decode(tok, [t for t, f in zip(ids, trained) if f])
    assert trained_text == "<think>2 plus 3 is 5.</think>It is 5.<|im_end|>\n<think>5 times 2</think>10<|im_end|>\n"
    # the packed labels count exactly the assistant tokens
    batch = pack_conversations([(ids, trained)], seq_len=len(ids) + 5, pad_id=tok.pad_id)
    labels = batch.labels[0]
    assert decode(tok, labels[labels != IGNORE_INDEX].tolist()) == trained_text
    assert batch.num_tokens == sum(trained)


def test_reasoning_off_empties_traces(tiny_data):
    tok = tiny_data.tokenizer
    off = drop_reasoning(CONV)
    assert off[2]["content"] == "<think></think>It is 5." and off[4]["reasoning_content"] == ""
    assert CONV[2]["content"].startswith("<think>2 plus")            # the input is not modified
    all_off = tokenize_conversations([CONV] * 4, tok, reasoning_off_fraction=1.0)
    none_off = tokenize_conversations([CONV] * 4, tok, reasoning_off_fraction=0.0)
    assert all("<think></think>It is 5." in decode(tok, ids) for ids, _ in all_off)
    assert all("<think>2 plus 3 is 5.</think>" in decode(tok, ids) for ids, _ in none_off)
    some = tokenize_conversations([CONV] * 200, tok, reasoning_off_fraction=0.1, seed=3)
    n_off = sum("<think></think>It is 5." in decode(tok, ids) for ids, _ in some)
    assert 8 <= n_off <= 35                                           # ~10% of the samples
    assert some == tokenize_conversations([CONV] * 200, tok, reasoning_off_fraction=0.1, seed=3)


def test_tokenizer_chat_template_is_used(tiny_data, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_data.directory / name).read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}"
                               "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    ids, trained = tokenize_conversation(CONV[1:3], tok, chat_renderer(tok))
    assert decode(tok, ids[1:]) == "[user] What is 2 + 3?</s>[assistant] <think>2 plus 3 is 5.</think>It is 5.</s>"
    assert decode(tok, [t for t, f in zip(ids, trained) if f]) == "<think>2 plus 3 is 5.</think>It is 5.</s>"


def test_template_that_drops_old_reasoning_trains_the_last_turn(tiny_data):
    """Reasoning templates show the trace of the last assistant turn only: earlier turns change as the
    conversation grows, so the last assistant turn is trained, on the conversation as the template renders it."""
    tok = tiny_data.tokenizer
    template = ServeTokenizer(tok.tokenizer, chat_template=(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'].split('</think>')[-1] }}"
        "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"))
    ids, trained = tokenize_conversation(CONV, tok, template)
    assert "<|im_start|>assistant\nIt is 5.<|im_end|>" in decode(tok, ids)          # old trace dropped
    assert decode(tok, [t for t, f in zip(ids, trained) if f]) == "<think>5 times 2</think>10<|im_end|>\n"


def test_template_that_hides_the_prompt_is_rejected(tiny_data):
    # renders only the last message: not even the prompt of the last turn is a prefix of the conversation
    template = ServeTokenizer(tiny_data.tokenizer.tokenizer,
                              chat_template="{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}")
    with pytest.raises(ValueError, match="not prefix-stable"):
        tokenize_conversation(CONV, tiny_data.tokenizer, template)


def test_packing_keeps_conversations_apart_and_pads_rows():
    a = ([1, 10, 11, 12], [False, False, True, True])
    b = ([1, 20, 21], [False, True, True])
    c = ([1, 30, 31, 32, 33], [False, False, False, True, True])
    batch = pack_conversations([a, b, c], seq_len=8, pad_id=0)
    assert batch.input_ids.tolist() == [[1, 10, 11, 12, 1, 20, 21, 0, 1, 30, 31, 32, 33, 0, 0, 0]]
    X = IGNORE_INDEX
    assert batch.labels.tolist() == [[X, 11, 12, X, 20, 21, X, X, X, X, 32, 33, X, X, X, X]]
    assert batch.cu_seqlens.tolist() == [0, 4, 7, 8, 13, 16]
    assert batch.num_tokens == 6


def test_sft_batches_have_a_fixed_shape_and_resume(tiny_data):
    samples = tokenize_conversations([CONV, CONV[:3], CONV[1:3]] * 5, tiny_data.tokenizer)
    longest = max(len(ids) for ids, _ in samples)
    batches = SFTBatches(samples, seq_len=longest + 10, batch_rows=2, pad_id=0, seed=1, log=lambda m: None)
    for _ in range(6):
        b = next(batches)
        assert b.input_ids.shape == (1, 2 * (longest + 10)) and b.num_tokens > 0
    state = batches.state_dict()
    expected = next(batches)
    again = SFTBatches(samples, seq_len=longest + 10, batch_rows=2, pad_id=0, seed=1, log=lambda m: None)
    again.load_state_dict(state)
    assert torch.equal(next(again).input_ids, expected.input_ids)
    # overlong conversations: truncated by default, or dropped
    short = SFTBatches(samples, seq_len=30, batch_rows=1, pad_id=0, log=lambda m: None)
    assert max(len(ids) for ids, _ in short.samples) == 30
    with pytest.raises(ValueError, match="usable conversations"):
        SFTBatches(samples, seq_len=12, batch_rows=1, pad_id=0, overlong="drop", log=lambda m: None)
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        SFTBatches(samples, seq_len=1, batch_rows=1, pad_id=0)


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_jsonl_lines_are_reported_by_line_number(tmp_path):
    good = json.dumps({"messages": CONV})
    path = write_jsonl(tmp_path / "chat.jsonl", [good, "", '{"messages": [oops', good,
                                                  json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
                                                  json.dumps({"messages": [{"role": "robot", "content": "x"}]})])
    with pytest.raises(ValueError, match=r"chat\.jsonl:3: malformed JSON"):
        load_chat_jsonl(path)
    reported = []
    convs = load_chat_jsonl(path, on_error="skip", log=reported.append)
    assert len(convs) == 2
    assert [r.split(": ")[0].rsplit(":", 1)[1] for r in reported] == ["3", "5", "6"]
    assert "no assistant message" in reported[1] and "role" in reported[2]
    with pytest.raises(ValueError, match="does not exist"):
        load_chat_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="no usable conversations"):
        load_chat_jsonl(write_jsonl(tmp_path / "bad.jsonl", ["{}"]), on_error="skip", log=lambda m: None)


@pytest.fixture(scope="module")
def pretrained(pretrain_argv, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained")
    build_pretrain(pretrain_argv(out, "--steps", 2)).run()
    return out / "checkpoints" / "step_00000002"


def test_sft_cli_end_to_end(pretrained, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", [json.dumps({"messages": CONV})] * 12)
    out = tmp_path / "sft"
    summary = sft_main(["--data", str(data), "--init", str(pretrained), "--out", str(out), "--steps", "3",
                        "--seq-len", "96", "--batch-rows", "2", "--no-progress", "--no-plots", "--device", "cpu"])
    train = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert len(train) == 3 and all(r["lr"] <= 5e-5 for r in train) and train[0]["lr"] > 0
    assert summary["val_loss"] is not None and summary["val_loss"] == summary["val_loss"]
    assert (out / "checkpoints" / "step_00000003" / "tokenizer_config.json").is_file()


def test_sft_paper_defaults(pretrained, tmp_path):
    """Paper SFT (spec 5.2): LR 5e-5 after a linear warmup (800 of 13,000 steps there; 6% of the run here), the
    sequence-level MoE balance loss at coefficient 1e-4, the aux-loss-free bias update (rate 1e-3) still on."""
    data = write_jsonl(tmp_path / "chat.jsonl", [json.dumps({"messages": CONV})] * 4)
    trainer = build_sft(["--data", str(data), "--init", str(pretrained), "--out", str(tmp_path / "sft"),
                         "--seq-len", "96", "--batch-rows", "2", "--no-progress", "--no-plots", "--device", "cpu"])
    cfg, schedule = trainer.cfg, trainer.schedule
    assert (cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup_steps) == (200, 5e-5, 5e-7, 12)   # ceil(0.06 x 200)
    assert cfg.aux_loss_coeff == 1e-4
    assert cfg.balance and cfg.bias_update_rate == 1e-3
    lrs = [schedule.lr(i) for i in range(200)]
    assert lrs[0] == pytest.approx(5e-5 / 12) and all(a < b for a, b in itertools.pairwise(lrs[:12]))
    assert lrs[11] == 5e-5 and max(lrs) == 5e-5 and lrs[100] == 5e-5
    assert lrs[-1] == pytest.approx(5e-7)
    short = build_sft(["--data", str(data), "--init", str(pretrained), "--out", str(tmp_path / "short"),
                       "--steps", "10", "--device", "cpu", "--no-progress"])
    assert short.cfg.warmup_steps == 1 and short.cfg.lr == 5e-5                        # at least one warmup step


def test_sft_bad_input(pretrained, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", [json.dumps({"messages": CONV})] * 4)
    base = ["--out", str(tmp_path / "o"), "--steps", "1", "--no-progress", "--no-plots", "--device", "cpu"]
    with pytest.raises(ValueError, match="does not exist"):
        sft_main(["--data", str(tmp_path / "nope.jsonl"), "--init", str(pretrained), *base])
    with pytest.raises(ValueError, match="no tokenizer"):
        sft_main(["--data", str(data), "--init", str(tmp_path / "no-checkpoint"), *base])
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        sft_main(["--data", str(data), "--init", str(pretrained), "--seq-len", "1", *base])
    bad = write_jsonl(tmp_path / "bad.jsonl", [json.dumps({"messages": CONV}), "not json"])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        sft_main(["--data", str(bad), "--init", str(pretrained), *base])
    (pretrained.parent / "broken").mkdir(exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        (pretrained.parent / "broken" / name).write_bytes((pretrained / name).read_bytes())
    with pytest.raises(CheckpointError, match="model.safetensors"):
        sft_main(["--data", str(data), "--init", str(pretrained.parent / "broken"), *base])
