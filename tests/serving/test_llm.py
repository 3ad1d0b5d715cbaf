"""The offline API: LLM from a checkpoint directory (BF16 or FP8, tokenizer + chat template from its files), from a
preset with random weights, and generate() over strings and token ids."""
import json

import pytest
import torch

from model.checkpoint import save_checkpoint
from model.generate import byte_level_tokenizer
from model.serve import LLM, SamplingParams, ServeTokenizer
from model.serve.fp8 import FP8MoE, save_fp8_checkpoint

TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")


def write_tokenizer(directory):
    byte_level_tokenizer().save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": TEMPLATE, "bos_token": "<s>", "eos_token": {"content": "</s>"}}))
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))


def test_llm_from_bf16_checkpoint_equals_the_model(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path)
    write_tokenizer(tmp_path)
    llm = LLM(str(tmp_path), device="cpu", dtype=torch.float64, backend="reference", max_num_seqs=4,
              max_num_batched_tokens=32, block_size=8, max_model_len=128)
    tok = llm.tokenizer
    assert tok.eos_token_ids == [2, 7]
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<s>[user] hi\n[assistant] "
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    outs = llm.generate(["from disk", [5, 6, 7]], params)
    ref = LLM(model=tiny_model, max_num_seqs=4, max_num_batched_tokens=32, block_size=8, max_model_len=128)
    assert [o.token_ids for o in outs] == [o.token_ids for o in ref.generate(["from disk", [5, 6, 7]], params)]
    assert outs[0].text == tok.decode(outs[0].token_ids) and outs[0].prompt_token_ids == tok.encode("from disk")


def test_llm_fp8_on_load_and_from_fp8_checkpoint(tiny_model, tmp_path):
    bf16_dir, fp8_dir = tmp_path / "bf16", tmp_path / "fp8"
    save_checkpoint(tiny_model, bf16_dir, dtype=torch.float32)
    write_tokenizer(bf16_dir)
    kw = dict(device="cpu", dtype=torch.float32, backend="reference", max_num_seqs=2, max_model_len=64,
              block_size=8)
    on_load = LLM(str(bf16_dir), fp8=True, **kw)
    assert isinstance(on_load.engine.model.layers[2].mixer, FP8MoE)
    save_fp8_checkpoint(on_load.engine.model, fp8_dir)
    write_tokenizer(fp8_dir)
    from_disk = LLM(str(fp8_dir), **kw)
    assert isinstance(from_disk.engine.model.layers[4].mixer, FP8MoE)
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    assert from_disk.generate("fp8", params)[0].token_ids == on_load.generate("fp8", params)[0].token_ids


def test_llm_random_weights_and_argument_errors():
    llm = LLM(preset="tiny", random_weights=True, device="cpu", max_num_seqs=2, max_model_len=64)
    out, = llm.generate("x", SamplingParams(max_tokens=3, seed=0))
    assert len(out.token_ids) == 3 and out.finished
    with pytest.raises(ValueError, match="exactly one of"):
        LLM(device="cpu")
    with pytest.raises(ValueError, match="random_weights=True"):
        LLM(preset="tiny", device="cpu")
    with pytest.raises(ValueError, match="2 SamplingParams for 1 prompts"):
        llm.generate(["a"], [SamplingParams(), SamplingParams()])
    with pytest.raises(ValueError, match="max_num_seqs"):
        LLM(preset="tiny", random_weights=True, device="cpu", max_num_seqs=0)
    with pytest.raises(ValueError, match="fewer than one sequence of max_model_len"):
        LLM(preset="tiny", random_weights=True, device="cpu", num_blocks=2, block_size=4, max_model_len=64)
    assert isinstance(llm.tokenizer, ServeTokenizer)
