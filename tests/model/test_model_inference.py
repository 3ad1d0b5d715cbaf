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


@pytest.mark.parametrize("fresh", [True, False])
def test_forward_step_mixes_decode_tokens_and_prefill_chunks(tiny_model_f64, fresh):
    """One forward_step with 2 decode tokens and 2 prefill chunks equals running each sequence alone."""
    model, cfg = tiny_model_f64, tiny_model_f64.config
    seqs = prompts_for(cfg, [9, 12, 7, 14], seed=5)
    cache = HybridCache.for_model(model, 4, 32, block_size=4)
    ids, cu = packed([s[:-1] for s in seqs[:2]])
    model.prefill(ids, cache, cu_seqlens=cu, slots=[0, 1])                         # decode rows: cached prompts
    first = 0 if fresh else 5                                                      # prefill rows: fresh / continued
    if not fresh:
        ids, cu = packed([s[:first] for s in seqs[2:]])
        model.prefill(ids, cache, cu_seqlens=cu, slots=[2, 3])
    lengths = [1, 1] + [len(s) - first for s in seqs[2:]]
    meta = cache.prepare(model.ops, [0, 1, 2, 3], lengths, num_decodes=2)
    assert meta.mixed and meta.fresh == fresh and meta.offsets == [0, lengths[2], lengths[2] + lengths[3]]
    step_ids = torch.cat([seqs[0][-1:], seqs[1][-1:], seqs[2][first:], seqs[3][first:]])
    last = torch.tensor(lengths).cumsum(0) - 1                                     # each sequence's last token
    logits = model.forward_step(step_ids, meta, last)
    cache.commit(meta)
    assert cache.host_seq_lens == [len(s) for s in seqs]
    decode_and_check(model, cache, seqs, logits, steps=2, tol=F64)


def test_paged_cache_with_fewer_pages_than_slots_times_length(tiny_model_f64):
    model, cfg = tiny_model_f64, tiny_model_f64.config
    cache = HybridCache.for_model(model, 3, 32, block_size=4, num_blocks=9, paged=True, scratch_slots=5)
    assert cache.max_blocks == 8 and cache.scratch_blocks == 2
    assert cache.k[1].shape[0] == 9 + 2 and cache.ssm[0].shape[0] == 3 + 5
    assert cache.scratch_rows(5) == ([3, 4, 5, 6, 7], [1, 2, 3, 4, 1], [36, 37, 38, 39, 40])
    assert cache.block_table[3:].tolist() == [[9] * 8] * 4 + [[10] * 8]            # scratch slot j -> page 9 + j // 4
    cache.set_pages(2, [7, 2, 5, 0])                                               # any pages, in token order
    cache.set_pages(0, [8, 1, 4, 6, 3])
    seqs = prompts_for(cfg, [13, 15], seed=6)
    ids, cu = packed(seqs)
    logits = model.prefill(ids, cache, cu_seqlens=cu, slots=[2, 0])
    decode_and_check(model, cache, seqs, logits, steps=3, tol=F64, slots=torch.tensor([2, 0]))
    assert not any(t[3:].any() for t in cache.ssm.values())                       # scratch states untouched
    assert not any(t[9:].any() for t in cache.k.values())                         # scratch pages untouched
    with pytest.raises(ValueError, match="paged=True lets the caller share fewer pages"):
        HybridCache.for_model(model, 3, 32, block_size=4, num_blocks=9)
    with pytest.raises(RuntimeError, match="needs paged=True"):
        HybridCache.for_model(model, 1, 8, block_size=4).set_pages(0, [1, 0])
    with pytest.raises(ValueError, match="3 padded rows need as many scratch slots; the cache has 0"):
        HybridCache.for_model(model, 1, 8, block_size=4).scratch_rows(3)


def _tiny_kv_model(seed: int = 3):
    """The tiny model with keys and values of ~1e-4 (below e4m3's smallest subnormal) and the same function."""
    from model.config import NemotronHConfig
    cfg = NemotronHConfig.from_preset("tiny")
    model = build_model(cfg, dtype=torch.float32, backend="reference", seed=seed)
    with torch.no_grad():
        for i in cfg.layer_indices("*"):
            attn = model.layers[i].mixer
            for lin, factor in ((attn.k_proj, 1e-4), (attn.v_proj, 1e-4), (attn.q_proj, 1e4), (attn.o_proj, 1e4)):
                lin.weight.mul_(factor)
    return model


def test_fp8_kv_pages_hold_k_and_v_over_their_scales():
    """Attention outputs of ~1e-4 (below e4m3's smallest subnormal, 2^-9) survive FP8 pages only through the
    k_scale / v_scale of the attention layers: pages hold k / k_scale, and decode multiplies them back."""
    model = _tiny_kv_model()
    cfg = model.config
    seqs = prompts_for(cfg, [11, 6], seed=7)
    ids, cu = packed(seqs)

    def run(kv_dtype, scale):
        for i in cfg.layer_indices("*"):
            model.layers[i].mixer.k_scale = model.layers[i].mixer.v_scale = scale
        cache = HybridCache.for_model(model, 2, 16, block_size=4, kv_dtype=kv_dtype)
        logits = [model.prefill(ids, cache, cu_seqlens=cu)]
        for _ in range(3):
            logits.append(model.decode_step(logits[-1].argmax(-1), cache))       # decode reads the pages
        return torch.stack(logits[1:]), cache

    exact, exact_cache = run(None, 1.0)
    scaled, scaled_cache = run(torch.float8_e4m3fn, 1e-4)
    unit, _ = run(torch.float8_e4m3fn, 1.0)
    for i in cfg.layer_indices("*"):
        pages, ref = scaled_cache.k[i].float() * 1e-4, exact_cache.k[i]
        assert ((pages - ref).norm() / ref.norm()).item() < 0.05                  # e4m3: 3 mantissa bits
    err_scaled = ((scaled - exact).norm() / exact.norm()).item()
    err_unit = ((unit - exact).norm() / exact.norm()).item()
    assert err_scaled < 0.03 and err_unit > 5 * err_scaled, (err_scaled, err_unit)


def test_fp8_kv_scales_computed_on_the_device():
    """kv_scales="device": each attention layer's first prefill sets its page scales (device tensors); decode reads
    the pages through them (as accurate as a checkpoint's scales), and neither decode steps nor a later prefill
    change them."""
    model = _tiny_kv_model()
    cfg = model.config
    seqs = prompts_for(cfg, [11, 6], seed=7)
    ids, cu = packed(seqs)

    def run(kv_dtype, kv_scales="layer"):
        cache = HybridCache.for_model(model, 3, 16, block_size=4, kv_dtype=kv_dtype, kv_scales=kv_scales)
        logits = [model.prefill(ids, cache, cu_seqlens=cu, slots=[0, 1])]
        for _ in range(3):
            logits.append(model.decode_step(logits[-1].argmax(-1), cache, slots=[0, 1]))
        return torch.stack(logits[1:]), cache

    exact, exact_cache = run(None)
    dynamic, cache = run(torch.float8_e4m3fn, "device")
    unit, _ = run(torch.float8_e4m3fn)                                            # the layers' 1.0: no scales
    assert cache.kv_calibrated == set(cfg.layer_indices("*"))
    first = {i: (cache.k_scale[i].clone(), cache.v_scale[i].clone()) for i in cfg.layer_indices("*")}
    for i, scales in first.items():                                               # values: the next test
        assert all(t.shape == (1,) and t.dtype == torch.float32 and 0 < t.item() < 1e-5 for t in scales)
    err_dynamic = ((dynamic - exact).norm() / exact.norm()).item()
    err_unit = ((unit - exact).norm() / exact.norm()).item()
    assert err_dynamic < 0.03 and err_unit > 5 * err_dynamic, (err_dynamic, err_unit)
    model.prefill(seqs[0][None] * 0 + 5, cache, slots=[2])                      # another prompt: scales stay
    for i in cfg.layer_indices("*"):
        assert torch.equal(cache.k_scale[i], first[i][0]) and torch.equal(cache.v_scale[i], first[i][1])


def test_fp8_kv_scales_follow_the_prefill_that_first_writes_the_layer():
    """The scales are max |k| x KV_HEADROOM / 448 of exactly the first prefill's keys (its rows of the pages)."""
    from model.cache import KV_HEADROOM
    model = _tiny_kv_model(seed=5)
    cfg = model.config
    ids = prompts_for(cfg, [9], seed=2)[0][None]
    ref = HybridCache.for_model(model, 1, 16, block_size=4)
    model.prefill(ids, ref)
    cache = HybridCache.for_model(model, 1, 16, block_size=4, kv_dtype=torch.float8_e4m3fn, kv_scales="device")
    model.prefill(ids, cache)
    for i in cfg.layer_indices("*"):
        for pages, scale in ((ref.k[i], cache.k_scale[i]), (ref.v[i], cache.v_scale[i])):
            torch.testing.assert_close(scale, (pages.abs().amax() * KV_HEADROOM / 448).reshape(1))


def test_fp8_prefill_attention_quantises_q_k_v_on_the_device(monkeypatch):
    """A cache with fp8_attention: a fresh prefill's attention runs on e4m3 q, k, v (three quantize_fp8 calls per
    attention layer, per-sequence scales) with logits within FP8's error of the exact model; training forwards (no
    cache) stay exact."""
    from model.config import NemotronHConfig
    cfg = NemotronHConfig.from_preset("tiny")
    model = build_model(cfg, dtype=torch.float32, backend="reference", seed=1)
    seqs = prompts_for(cfg, [13, 29], seed=4)
    ids, cu = packed(seqs)
    exact = model.prefill(ids, HybridCache.for_model(model, 2, 64, block_size=8), cu_seqlens=cu)
    calls = []
    quantize = model.ops.quantize_fp8
    monkeypatch.setattr(model.ops, "quantize_fp8", lambda *a, **k: calls.append(a[0].shape) or quantize(*a, **k))
    fp8 = model.prefill(ids, HybridCache.for_model(model, 2, 64, block_size=8, fp8_attention=True), cu_seqlens=cu)
    assert len(calls) == 3 * len(cfg.layer_indices("*"))
    err = ((fp8 - exact).norm() / exact.norm()).item()
    assert 0 < err < 0.05, err
    calls.clear()
    torch.testing.assert_close(model(ids[None], cu), model(ids[None], cu))       # no cache: no FP8
    assert not calls
