"""Selective FP8 (spec §4.4): which layers, the reference (dequantised) path on CPU, a ModelOpt-style checkpoint
round trip, serving an FP8 model; the GPU GEMM path against the reference under the `cuda` marker."""
import pytest
import torch

from model.config import NemotronHConfig
from model.nemotron_h import build_model
from model.serve import EngineConfig, LLMEngine, SamplingParams
from model.serve.fp8 import (
    FP8,
    FP8Linear,
    FP8MoE,
    fp8_plan,
    load_fp8_checkpoint,
    quantize_model_fp8,
    quantize_rows,
    quantize_tensor,
    save_fp8_checkpoint,
)
from nemotron_kernels.testing import assert_error_rule


def test_plan_keeps_the_mamba_layers_before_attention_in_bf16():
    plan = fp8_plan(NemotronHConfig.from_preset("nemotron3-nano-30b-a3b"))
    assert plan["mamba_bf16"] == [4, 11, 18, 25, 32, 41]
    assert len(plan["mamba"]) == 23 - 6 and len(plan["moe"]) == 23


def test_quantize_tensor_roundtrip():
    w = torch.randn(48, 32) * 3
    q, s = quantize_tensor(w)
    assert q.dtype == FP8 and s.shape == ()
    rel = ((q.float() * s - w).norm() / w.norm()).item()
    assert rel < 0.05                       # e4m3: 3 mantissa bits
    assert (q.float() * s).abs().max() <= w.abs().max() * (1 + 1e-6)


def test_fp8_linear_reference_path():
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 24, bias=False)
    f = FP8Linear.from_linear(lin)
    x = torch.randn(5, 3, 32)
    y = f(x)
    assert y.shape == (5, 3, 24) and y.dtype == torch.float32
    # by hand: per-row dynamic activation scale, per-tensor weight scale
    x2 = x.reshape(-1, 32)
    sa = x2.abs().amax(-1, keepdim=True) / 448
    xq = (x2 / sa).to(FP8).float() * sa
    expected = xq @ (f.weight.float() * f.weight_scale).t()
    torch.testing.assert_close(y.reshape(-1, 24), expected)
    rel = ((y - lin(x)).norm() / lin(x).norm()).item()
    assert rel < 0.08


@pytest.fixture(scope="module")
def fp32_tiny():
    cfg = NemotronHConfig.from_preset("tiny", max_position_embeddings=256)
    return cfg


def test_quantized_model_is_close_and_selective(fp32_tiny):
    ref = build_model(fp32_tiny, dtype=torch.float32, backend="reference", seed=1).eval()
    q = build_model(fp32_tiny, dtype=torch.float32, backend="reference", seed=1).eval()
    plan = quantize_model_fp8(q)
    # tiny pattern "M*EME*-M": Mamba 0 feeds attention 1 and Mamba 3 feeds attention 5 -> both stay BF16
    assert plan == {"mamba": [7], "mamba_bf16": [0, 3], "moe": [2, 4]}
    assert isinstance(q.layers[7].mixer.in_proj, FP8Linear) and not isinstance(q.layers[0].mixer.in_proj, FP8Linear)
    assert isinstance(q.layers[2].mixer, FP8MoE) and q.layers[2].mixer.gate.weight.dtype == torch.float32
    assert q.layers[1].mixer.q_proj.weight.dtype == torch.float32          # attention untouched
    ids = torch.randint(3, 259, (2, 24))
    with torch.no_grad():
        a, b = ref(ids), q(ids)
    rel = ((a - b).norm() / a.norm()).item()
    assert 0 < rel < 0.1, rel


def test_fp8_checkpoint_roundtrip_and_serving(fp32_tiny, tmp_path, byte_tokenizer, run_all):
    q = build_model(fp32_tiny, dtype=torch.float32, backend="reference", seed=2).eval()
    quantize_model_fp8(q)
    q.layers[2].mixer.up_input_scale = torch.tensor(0.01)                   # a static activation scale too
    q.layers[5].mixer.k_scale, q.layers[5].mixer.v_scale = 0.25, 0.5         # FP8 KV-cache scales
    save_fp8_checkpoint(q, tmp_path)
    loaded = load_fp8_checkpoint(tmp_path, device="cpu", dtype=torch.float32, backend="reference").eval()
    assert isinstance(loaded.layers[4].mixer, FP8MoE) and isinstance(loaded.layers[7].mixer.out_proj, FP8Linear)
    assert loaded.layers[2].mixer.up_input_scale.item() == pytest.approx(0.01)
    assert (loaded.layers[5].mixer.k_scale, loaded.layers[5].mixer.v_scale) == (0.25, 0.5)
    assert (loaded.layers[1].mixer.k_scale, loaded.layers[1].mixer.v_scale) == (1.0, 1.0)
    ids = torch.randint(3, 259, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), q(ids), rtol=0, atol=0)
    engine = LLMEngine(loaded, byte_tokenizer, EngineConfig(max_num_seqs=4, max_num_batched_tokens=16, block_size=4,
                                                            max_model_len=128, kv_cache_dtype="fp8"))
    assert engine.runner.cache.k[1].dtype == FP8
    rids = [engine.add_request(p, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
            for p in ("fp8 serving", "a second prompt, longer than one chunk")]
    finals = run_all(engine)
    assert all(len(finals[r].token_ids) == 6 for r in rids)


@pytest.mark.cuda
def test_gpu_fp8_gemms_match_the_reference_path():
    """Each FP8 module on its own inputs (captured from a forward of the model), GPU GEMMs against the dequantised
    reference path. Whole-model logits are no measure: the routed experts' paths differ by design (below) and
    random-weight layers amplify that from layer to layer with no bound to state."""
    torch.manual_seed(0)
    cfg = NemotronHConfig.from_preset("tiny", hidden_size=128, mamba_num_heads=16, mamba_head_dim=8,
                                      moe_intermediate_size=64, moe_shared_expert_intermediate_size=128)
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16, seed=0).eval()
    quantize_model_fp8(model)
    fp8 = [m for m in model.modules() if isinstance(m, (FP8Linear, FP8MoE))]
    assert {m.path for m in fp8} == {"torch._scaled_mm", "moe_experts_fp8 (CUTLASS)"}
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.setdefault(m, args)) for m in fp8]
    ids = torch.randint(3, 259, (2, 40), device="cuda")
    with torch.no_grad():
        assert torch.isfinite(model(ids).float()).all()
        for h in hooks:
            h.remove()
        # an FP8MoE whose shared expert is fused into moe_experts_fp8 never calls that expert's FP8Linears
        fused = {s for m in fp8 if isinstance(m, FP8MoE) and m._shared_fused() for s in (m.shared_up, m.shared_down)}
        assert fused and set(inputs) == set(fp8) - fused
        for m, args in inputs.items():
            gpu = m(*args)
            for r in (m, *((m.shared_up, m.shared_down) if isinstance(m, FP8MoE) else ())):
                r.force_reference = True
            ref = m(*args)
            if isinstance(m, FP8Linear):
                # the same e4m3 operands and scales on both paths (fp8 products are exact, both accumulate in
                # fp32, both round to bf16 once): the DESIGN 2x rule against float64 on those operands
                xq, sa = quantize_rows(args[0].reshape(-1, m.in_features), m.input_scale)
                ref64 = (xq.double() * sa.double()) @ (m.weight.double() * m.weight_scale.double()).t()
                assert_error_rule("FP8Linear", gpu.reshape(ref64.shape), ref64, ref.reshape(ref64.shape), k=2)
            else:
                # the GPU path quantises the routed experts' hidden activations h = relu(up x)^2 to e4m3 before
                # the down GEMM (the reference keeps them in fp32): round to nearest with 3 mantissa bits moves
                # each element of h by at most 2^-4 of itself, so |dh| <= 2^-4 |h| and the down GEMM's output
                # (routed + shared, the shared part alike on both paths up to bf16) moves by about that fraction;
                # plus bf16 rounding of the outputs (2^-8). A wrong or missing scale is O(1).
                rel = ((gpu.float() - ref.float()).norm() / ref.float().norm()).item()
                assert rel < 2**-4 + 2**-8, rel


def test_dynamic_row_quantisation_is_the_kernels_reference():
    """quantize_rows (dynamic) is nemotron_kernels' quantize_fp8_rowwise (one fused kernel on a GPU, bitwise its
    reference), with the scale as the [M, 1] column torch._scaled_mm takes; a zero row gets scale 1."""
    from nemotron_kernels.reference.grouped_gemm import quantize_fp8_rowwise_ref
    x = torch.randn(7, 48, dtype=torch.bfloat16) * 3
    x[2] = 0
    q, s = quantize_rows(x)
    q_ref, s_ref = quantize_fp8_rowwise_ref(x)
    assert q.dtype == FP8 and s.shape == (7, 1) and s.dtype == torch.float32 and s.is_contiguous()
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)) and torch.equal(s[:, 0], s_ref)
    assert s[2, 0] == 1 and (q[2].float() == 0).all()
    static = torch.tensor(0.02)
    q, s = quantize_rows(x, static)
    assert s.shape == (7, 1) and (s == 0.02).all()
    torch.testing.assert_close(q.float(), (x.float() / 0.02).clamp(-448, 448).to(FP8).float())


def test_shared_expert_joins_the_routed_fp8_pipeline_only_with_dynamic_scales(fp32_tiny):
    """On a GPU the shared expert runs inside moe_experts_fp8 unless a checkpoint gave it static input scales,
    which only its FP8Linears apply."""
    q = build_model(fp32_tiny, dtype=torch.float32, backend="reference", seed=3).eval()
    quantize_model_fp8(q)
    moe = q.layers[2].mixer
    assert moe._shared_fused()
    assert not any(k.rsplit(".", 1)[-1].startswith("_") for k in moe.state_dict())  # derived: not in checkpoints
    moe.shared_down.input_scale = torch.tensor(0.5)
    assert not moe._shared_fused()


@pytest.mark.cuda
def test_gpu_fp8_engine_captures_its_decode_graphs(byte_tokenizer):
    """The FP8 decode step (fused row quantisation before torch._scaled_mm, the shared expert inside
    moe_experts_fp8) is capturable, and greedy decoding through the graphs matches eager decoding."""
    cfg = NemotronHConfig.from_preset("tiny", hidden_size=128, mamba_num_heads=16, mamba_head_dim=8,
                                      moe_intermediate_size=64, moe_shared_expert_intermediate_size=128,
                                      max_position_embeddings=256)
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16, seed=0).eval()
    quantize_model_fp8(model)
    assert all(m._shared_fused() for m in model.modules() if isinstance(m, FP8MoE))
    tokens = {}
    for graphs in (True, False):
        engine = LLMEngine(model, byte_tokenizer, EngineConfig(max_num_seqs=4, max_num_batched_tokens=64,
                                                               block_size=16, max_model_len=128, num_blocks=64,
                                                               cuda_graphs=graphs, cuda_graph_sizes=[4]))
        if graphs:
            assert engine.runner.cuda_graph_status == "on: decode batch sizes [4]", engine.runner.cuda_graph_status
        rids = [engine.add_request(p, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
                for p in ("fp8 graphs", "four sequences", "decode", "at once")]
        finals = {}
        while engine.has_unfinished():
            finals.update({o.request_id: o for o in engine.step() if o.finished})
        tokens[graphs] = [finals[r].token_ids for r in rids]
    assert all(len(t) == 6 for t in tokens[True])
    # the first decode step (the prefill before it is eager in both) runs the same kernels on the same 4 rows:
    # the same greedy tokens (later steps may part at a near-tie, as any two numerically different runs may)
    assert [t[:2] for t in tokens[True]] == [t[:2] for t in tokens[False]], tokens


def test_derived_scales_follow_a_state_dict_load(fp32_tiny):
    """The per-channel scale copies the GPU GEMMs take are re-derived when a state dict brings new scales."""
    q = build_model(fp32_tiny, dtype=torch.float32, backend="reference", seed=3).eval()
    quantize_model_fp8(q)
    moe = q.layers[2].mixer
    state = {k: v.clone() for k, v in moe.state_dict().items()}
    state["up_scale"] = state["up_scale"] * 2
    state["shared_up.weight_scale"] = state["shared_up.weight_scale"] * 3
    moe.load_state_dict(state)
    E, I, _ = moe.up.shape
    assert torch.equal(moe._up_scale_b, state["up_scale"][:, None].expand(E, I))
    assert torch.equal(moe.shared_up._scale_b, state["shared_up.weight_scale"].expand(1, moe.shared_up.out_features))
