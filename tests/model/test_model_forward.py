"""NemotronH forward: packed documents, causality, backends, router aux outputs, init (spec §7), dtypes, grads."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from model.config import NemotronHConfig
from model.nemotron_h import NemotronH, build_model


def ids_for(cfg, *shape, seed=0):
    return torch.randint(3, cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def test_packed_documents_do_not_interact(tiny_model_f64):
    cfg = tiny_model_f64.config
    docs = [ids_for(cfg, n, seed=n) for n in (5, 23, 17)]  # 23 > chunk_size 16; lengths not chunk multiples
    cu = torch.tensor([0, 5, 28, 45], dtype=torch.int32)
    packed = tiny_model_f64(torch.cat(docs)[None], cu)[0]                       # [45, V]
    for doc, a, b in zip(docs, cu[:-1], cu[1:]):
        alone = tiny_model_f64(doc[None])[0]
        torch.testing.assert_close(packed[a:b], alone, rtol=0, atol=1e-12)


def test_causal(tiny_model_f64):
    ids = ids_for(tiny_model_f64.config, 2, 30)
    changed = ids.clone()
    changed[:, 20:] = ids_for(tiny_model_f64.config, 2, 10, seed=9)
    a, b = tiny_model_f64(ids), tiny_model_f64(changed)
    torch.testing.assert_close(a[:, :20], b[:, :20], rtol=0, atol=1e-12)
    assert (a[:, 20:] - b[:, 20:]).abs().max() > 1e-3


def test_backends_agree(tiny_config):
    ids = ids_for(tiny_config, 2, 19)
    ref = build_model(tiny_config, backend="reference")
    auto = build_model(tiny_config, backend="auto")
    torch.testing.assert_close(auto(ids), ref(ids), rtol=1e-4, atol=1e-5)


def test_router_aux(tiny_model_f64):
    cfg = tiny_model_f64.config
    ids = ids_for(cfg, 2, 11)
    logits, aux = tiny_model_f64(ids, return_aux=True)
    torch.testing.assert_close(logits, tiny_model_f64(ids), rtol=0, atol=0)
    n_moe = cfg.pattern.count("E")
    assert len(aux.counts) == len(aux.scores) == n_moe
    for counts, scores in zip(aux.counts, aux.scores):
        assert counts.shape == (cfg.n_routed_experts,) and counts.dtype == torch.int32
        assert int(counts.sum()) == 22 * cfg.num_experts_per_tok
        assert scores.shape == (22, cfg.n_routed_experts) and scores.requires_grad
        assert ((scores > 0) & (scores < 1)).all()


def test_init_weights_follow_spec(tiny_config):
    cfg = dataclasses.replace(tiny_config, mamba_num_heads=16, time_step_min=1e-3, time_step_max=0.1,
                              time_step_floor=1e-2)
    model = build_model(cfg, seed=3)
    std = cfg.initializer_range
    for block in model.layers:
        m = block.mixer
        torch.testing.assert_close(block.norm.weight, torch.ones_like(block.norm.weight))
        if block.kind == "M":
            torch.testing.assert_close(m.A_log, torch.log(torch.arange(1.0, 17.0)))
            torch.testing.assert_close(m.D, torch.ones(16))
            dt = F.softplus(m.dt_bias)
            assert (dt >= 1e-2 * (1 - 1e-5)).all() and (dt <= 0.1 * (1 + 1e-5)).all() and dt.std() > 0
            bound = 1 / math.sqrt(cfg.d_inner) / math.sqrt(cfg.num_layers)
            assert m.out_proj.weight.abs().max() <= bound and m.out_proj.weight.abs().max() > 0.8 * bound
            assert abs(m.in_proj.weight.std().item() - std) < 0.1 * std
            assert not m.conv1d.bias.any()
        elif block.kind == "E":
            assert m.gate.weight.dtype == torch.float32 and not m.gate.e_score_correction_bias.any()
            assert abs(m.experts.up_proj.std().item() - std) < 0.1 * std
    # reproducible from the seed, different across seeds
    torch.testing.assert_close(build_model(cfg, seed=3).state_dict(), model.state_dict(), rtol=0, atol=0)
    assert not torch.equal(build_model(cfg, seed=4).embeddings.weight, model.embeddings.weight)


def test_correction_bias_is_a_buffer_and_router_stays_fp32(tiny_config):
    model = build_model(tiny_config, dtype=torch.bfloat16)
    names = {n for n, _ in model.named_parameters()}
    buffers = {n for n, _ in model.named_buffers()}
    assert "layers.2.mixer.gate.e_score_correction_bias" in buffers
    assert not any("e_score_correction_bias" in n for n in names)
    for n, p in model.named_parameters():
        assert p.dtype == (torch.float32 if n.endswith("gate.weight") else torch.bfloat16), n
    ids = ids_for(tiny_config, 2, 9)
    logits = model(ids)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    fp32 = build_model(tiny_config)
    fp32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})  # the same (bf16-exact) weights
    expected = fp32(ids)
    assert (logits.float() - expected).norm() < 0.02 * expected.norm()  # bf16 activations: ~0.7% measured


def test_meta_construction():
    cfg = NemotronHConfig.from_preset("tiny")
    with torch.device("meta"):
        model = NemotronH(cfg)
    assert all(p.is_meta for p in model.parameters())
    with pytest.raises(RuntimeError, match="to_empty"):
        model.init_weights()


def test_gradients_reach_every_parameter(tiny_config):
    model = build_model(tiny_config, dtype=torch.float64, backend="reference")
    ids = ids_for(tiny_config, 1, 20)
    cu = torch.tensor([0, 7, 20], dtype=torch.int32)
    logits, aux = model(ids, cu, return_aux=True)
    loss = F.cross_entropy(logits[0, :-1], ids[0, 1:]) + sum(s.mean() for s in aux.scores)
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


def test_tied_embeddings():
    cfg = NemotronHConfig.from_preset("tiny", tie_word_embeddings=True)
    model = build_model(cfg)
    assert model.lm_head.weight is model.embeddings.weight
    assert sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()) == cfg.num_params()


def test_time_step_limit_clamps(tiny_config):
    ids = ids_for(tiny_config, 1, 18)
    base = build_model(tiny_config, dtype=torch.float64)(ids)
    wide = build_model(dataclasses.replace(tiny_config, time_step_limit=(0.0, 1e9)), dtype=torch.float64)(ids)
    torch.testing.assert_close(wide, base, rtol=1e-12, atol=1e-12)   # the clamp path, nothing clamped
    tight = build_model(dataclasses.replace(tiny_config, time_step_limit=(0.0, 1e-4)), dtype=torch.float64)(ids)
    assert (tight - base).abs().max() > 1e-6


def test_bad_inputs(tiny_model_f64):
    with pytest.raises(ValueError, match="input_ids must be \\[B, L\\]"):
        tiny_model_f64(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="with cu_seqlens, input_ids must be \\[1, T\\]"):
        tiny_model_f64(torch.zeros(2, 5, dtype=torch.long), torch.tensor([0, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match="cu_seqlens must rise from 0 to T=5"):
        tiny_model_f64(torch.zeros(1, 5, dtype=torch.long), torch.tensor([0, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match="backend must be one of"):
        tiny_model_f64.set_backend("fast")


def test_mamba_A_is_kept_until_A_log_changes(tiny_config):
    """For frozen weights A = -exp(A_log) is computed once and reused until A_log changes in place or is replaced;
    trainable weights recompute it on every call (a fused AdamW step changes A_log without a new version)."""
    model = build_model(tiny_config, dtype=torch.float32, backend="reference", seed=0).eval()
    mixer = next(b.mixer for b in model.layers if b.kind == "M")
    opt = torch.optim.AdamW([mixer.A_log], lr=0.1, fused=True)
    with torch.no_grad():
        before = mixer._A()
    mixer._A().sum().backward()
    opt.step()
    with torch.no_grad():                                              # evaluation between training steps
        assert not torch.equal(mixer._A(), before) and torch.equal(mixer._A(), -torch.exp(mixer.A_log))
        assert mixer._A().requires_grad is False
    fresh = mixer._A()
    assert fresh.requires_grad and fresh is not mixer._A()

    model.requires_grad_(False)                                        # frozen, as the serving engine holds it
    first = mixer._A()
    assert mixer._A() is first
    with torch.no_grad():
        mixer.A_log.add_(0.5)                                          # in place: a new version
    changed = mixer._A()
    assert changed is not first and torch.equal(changed, -torch.exp(mixer.A_log))
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)  # new storage
    assert mixer._A() is not changed and torch.equal(mixer._A(), changed)
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    with torch.inference_mode():                                       # made under inference_mode: not kept,
        assert mixer._A() is not mixer._A()                            # as it could not enter a later graph
    dt = torch.ones_like(mixer.A_log, requires_grad=True)             # e.g. adapters on the frozen weights
    (dt * mixer._A()).sum().backward()
    assert torch.equal(dt.grad, changed)
    with torch.inference_mode():                                       # a model loaded under inference_mode
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
        assert mixer.A_log.is_inference() and torch.equal(mixer._A(), changed)


def test_fused_qkv_is_the_three_projections(tiny_config):
    """Attention.fuse_qkv (serving): one GEMM over one weight tensor, the three Parameters views of its rows (same
    state dict, no copy); the same logits (float64); a weight replaced afterwards unfuses instead of going stale;
    only plain Linears fuse."""
    model = build_model(tiny_config, dtype=torch.float64, backend="reference", seed=0)
    ids = ids_for(tiny_config, 2, 19)
    want, state = model(ids), {k: v.clone() for k, v in model.state_dict().items()}
    attn = [b.mixer for b in model.layers if hasattr(b.mixer, "fuse_qkv")]
    assert attn and all(m.fuse_qkv() for m in attn) and not any(m.fuse_qkv() for m in attn)
    m = attn[0]
    assert m.q_proj.weight.data_ptr() == m.qkv_weight.data_ptr() and m.qkv_weight.shape[0] == (
        m.q_proj.out_features + m.k_proj.out_features + m.v_proj.out_features)
    assert model.state_dict().keys() == state.keys() and "qkv_weight" not in str(list(model.state_dict()))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    torch.testing.assert_close(model(ids), want, rtol=0, atol=1e-12)
    with torch.no_grad():                                                # load_state_dict copies into the views
        m.v_proj.weight.mul_(2.0)
    assert m.qkv_weight is not None and torch.equal(m.qkv_weight[-m.v_proj.out_features:], m.v_proj.weight)
    changed = model(ids)
    m.k_proj.weight = torch.nn.Parameter(m.k_proj.weight.detach().clone())   # no longer in the fused tensor
    torch.testing.assert_close(model(ids), changed, rtol=0, atol=1e-12)
    assert m.qkv_weight is None
    m.q_proj = torch.nn.Identity()                                       # not a plain Linear: left alone
    assert not m.fuse_qkv()
