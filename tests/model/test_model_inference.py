"""HybridCache inference: prefill (+ chunked prefill) then decode steps reproduce full recomputation."""
import pytest
import torch

from model.cache import HybridCache
from model.nemotron_h import build_model


def prompts_for(cfg, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, cfg.vocab_size, (n,), generator=g) for n in lengths]


def full_last_logits(model, seqs):
    return torch.stack([model(s[None])[0, -1] for s in seqs])                     # [S, V]


def packed(seqs):
    cu = torch.tensor([0] + [len(s) for s in seqs]).cumsum(0).to(torch.int32)
    return torch.cat(seqs), cu


def decode_and_check(model, cache, seqs, logits, steps, tol, slots=None):
    """Greedy decode `steps` tokens through the cache; each step's logits must equal full recomputation."""
    seqs = [s.clone() for s in seqs]
    for _ in range(steps):
        torch.testing.assert_close(logits, full_last_logits(model, seqs).to(logits.dtype), **tol)
        token = logits.argmax(-1)                                                 # [S]
        seqs = [torch.cat([s, t[None]]) for s, t in zip(seqs, token)]
        logits = model.decode_step(token, cache, slots=slots)
    torch.testing.assert_close(logits, full_last_logits(model, seqs).to(logits.dtype), **tol)


F64 = dict(rtol=1e-10, atol=1e-10)
F32 = dict(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, F64), (torch.float32, F32)])
def test_prefill_then_decode_matches_full_recompute(tiny_config, dtype, tol):
    model = build_model(tiny_config, dtype=dtype, backend="reference")
    seqs = prompts_for(tiny_config, [13, 29])       # different lengths; 29 crosses the 16-token SSD chunk
    cache = HybridCache.for_model(model, 2, 64, block_size=8)
    ids, cu = packed(seqs)
    logits = model.prefill(ids, cache, cu_seqlens=cu)                              # [2, V]
    assert logits.shape == (2, tiny_config.vocab_size) and logits.dtype == torch.promote_types(dtype, torch.float32)
    assert cache.host_seq_lens == [13, 29] and cache.seq_lens.tolist() == [13, 29]
    decode_and_check(model, cache, seqs, logits, steps=6, tol=tol)
    assert cache.host_seq_lens == [19, 35]


def test_equal_length_batch_and_packed_prefill_agree(tiny_model_f64):
    seqs = prompts_for(tiny_model_f64.config, [11, 11], seed=1)
    c1 = HybridCache.for_model(tiny_model_f64, 2, 32, block_size=4)
    c2 = HybridCache.for_model(tiny_model_f64, 2, 32, block_size=4)
    a = tiny_model_f64.prefill(torch.stack(seqs), c1)
    b = tiny_model_f64.prefill(*packed(seqs)[:1], c2, cu_seqlens=packed(seqs)[1])
    torch.testing.assert_close(a, b, **F64)
    decode_and_check(tiny_model_f64, c1, seqs, a, steps=3, tol=F64)


@pytest.mark.parametrize("layout", ["packed", "rows"])
def test_chunked_prefill_continues_the_state(tiny_model_f64, layout):
    cfg = tiny_model_f64.config
    seqs = prompts_for(cfg, [21, 21] if layout == "rows" else [9, 30], seed=2)
    cache = HybridCache.for_model(tiny_model_f64, 2, 64, block_size=8)
    cuts = [(0, 3), (3, 7), (7, None)]                                            # 3 chunks per sequence
    for a, b in cuts:
        parts = [s[a:b] for s in seqs]
        if layout == "rows":
            logits = tiny_model_f64.prefill(torch.stack(parts), cache)
        else:
            ids, cu = packed(parts)
            logits = tiny_model_f64.prefill(ids, cache, cu_seqlens=cu)
    decode_and_check(tiny_model_f64, cache, seqs, logits, steps=3, tol=F64)


def test_slots_and_reset(tiny_model_f64):
    seqs = prompts_for(tiny_model_f64.config, [7, 15], seed=3)
    cache = HybridCache.for_model(tiny_model_f64, 4, 32, block_size=8)
    ids, cu = packed(seqs)
    logits = tiny_model_f64.prefill(ids, cache, cu_seqlens=cu, slots=[3, 1])
    assert cache.host_seq_lens == [0, 15, 0, 7]
    decode_and_check(tiny_model_f64, cache, seqs, logits, steps=2, tol=F64, slots=torch.tensor([3, 1]))
    # reuse slot 3 for a new sequence; slot 1 keeps going untouched
    cache.reset([3])
    assert cache.host_seq_lens[3] == 0 and not cache.ssm[0][3].any()
    new = prompts_for(tiny_model_f64.config, [10], seed=4)[0]
    logits = tiny_model_f64.prefill(new[None], cache, slots=[3])
    torch.testing.assert_close(logits, full_last_logits(tiny_model_f64, [new]), **F64)


def test_cache_errors(tiny_model_f64):
    cache = HybridCache.for_model(tiny_model_f64, 2, 10, block_size=4)             # capacity 12 tokens per slot
    assert cache.capacity == 12
    with pytest.raises(ValueError, match="slot 0: 13 tokens exceed the cache capacity of 12"):
        tiny_model_f64.prefill(torch.zeros(1, 13, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="slots must be distinct ints in \\[0, num_slots=2\\)"):
        tiny_model_f64.prefill(torch.zeros(2, 3, dtype=torch.long), cache, slots=[1, 1])
    with pytest.raises(ValueError, match="slots: expected 2 slots"):
        tiny_model_f64.decode_step(torch.zeros(2, dtype=torch.long), cache, slots=[0])
    with pytest.raises(ValueError, match="input_ids must be \\[S\\]"):
        tiny_model_f64.decode_step(torch.zeros(2, 1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="cu_seqlens must rise strictly"):
        tiny_model_f64.prefill(torch.zeros(6, dtype=torch.long), cache, cu_seqlens=torch.tensor([0, 0, 6]))
    with pytest.raises(ValueError, match="HybridCache: block_size must be a positive int"):
        HybridCache.for_model(tiny_model_f64, 2, 10, block_size=0)
