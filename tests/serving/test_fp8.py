"""Selective FP8 (spec §4.4): which layers, the reference (dequantised) path on CPU, a ModelOpt-style checkpoint
round trip, a checkpoint written in ModelOpt's own export layout, serving an FP8 model with FP8 KV pages; the GPU
GEMM path against the reference under the `cuda` marker."""
import json

import pytest
import torch
from safetensors.torch import save_file

from model.config import NemotronHConfig
from model.nemotron_h import build_model
from model.serve import EngineConfig, LLMEngine, SamplingParams
from model.serve.fp8 import (
    FP8,
    FP8Linear,
    FP8MoE,
    fp8_plan,
    is_fp8_checkpoint,
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
    x = torch.randn(5, 4, 32)
    y = f(x)
    assert y.shape == (5, 4, 24) and y.dtype == torch.float32
    # by hand: per-row dynamic activation scale, per-tensor weight scale
    x2 = x.reshape(-1, 32)
    sa = x2.abs().amax(-1, keepdim=True) / 448
    xq = (x2 / sa).to(FP8).float() * sa
    w = f.weight.float() * f.weight_scale
    torch.testing.assert_close(y.reshape(-1, 24), xq @ w.t())
    rel = ((y - lin(x)).norm() / lin(x).norm()).item()
    assert rel < 0.08
    # one row (decode at batch 1) is not quantised: weights-only; two rows are
    assert FP8Linear.WEIGHTS_ONLY_ROWS == 1
    torch.testing.assert_close(f(x[:1, :1]), x[:1, :1] @ w.t())
    torch.testing.assert_close(f(x[0, :2]), xq[:2] @ w.t())


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
    # serving with FP8 KV pages: greedy tokens equal those of the model's own prefill / decode_step over an FP8
    # HybridCache with the same k_scale / v_scale. In float64 a sequence's logits do not depend on what it is
    # batched with, so the only thing that must match is where each prompt's prefill was cut into chunks (a
    # continuation chunk reads the earlier chunks' k / v back from the e4m3 pages).
    served = load_fp8_checkpoint(tmp_path, device="cpu", dtype=torch.float64, backend="reference").eval()
    prompts = ("fp8 serving", "a second prompt, longer than one chunk")
    ids = [byte_tokenizer.encode(p) for p in prompts]
    assert len(ids[1]) > 32
    # the comparison can see the pages: e4m3 pages change the second prompt's greedy tokens (from the 6th on)
    assert fp8_kv_greedy(served, ids[1], 8, chunk=64) != fp8_kv_greedy(served, ids[1], 8, chunk=64, kv_dtype=None)
    for budget, batch in ((64, prompts), (16, prompts[1:])):   # both prompts prefilled whole; one in 16-token chunks
        engine = LLMEngine(served, byte_tokenizer, EngineConfig(max_num_seqs=4, max_num_batched_tokens=budget,
                                                                block_size=4, max_model_len=128, kv_cache_dtype="fp8"))
        assert engine.runner.cache.k[1].dtype == FP8 and engine.runner.cache.k[5].dtype == FP8
        rids = [engine.add_request(p, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)) for p in batch]
        finals = run_all(engine)
        for rid, p in zip(rids, batch):
            expected = fp8_kv_greedy(served, byte_tokenizer.encode(p), 8, chunk=budget)
            assert finals[rid].token_ids == expected, (budget, p)


def fp8_kv_greedy(model, prompt: list[int], n: int, chunk: int, kv_dtype=FP8) -> list[int]:
    """Greedy continuation through model.prefill (in chunks of `chunk` tokens) and model.decode_step over a
    HybridCache whose k / v pages are e4m3 (scaled by the attention layers' k_scale / v_scale); kv_dtype None:
    pages in the model's dtype."""
    from model.cache import HybridCache
    cache = HybridCache.for_model(model, 1, len(prompt) + n, block_size=4, kv_dtype=kv_dtype)
    for a in range(0, len(prompt), chunk):
        logits = model.prefill(torch.tensor([prompt[a:a + chunk]]), cache)
    tokens = []
    for _ in range(n):
        tokens.append(int(logits.argmax(-1)))
        logits = model.decode_step(torch.tensor(tokens[-1:]), cache)
    return tokens


def modelopt_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ModelOpt's per-tensor FP8 weight export, written out here: weight_scale = amax / 448 (an fp32 scalar of shape
    []), weight = e4m3(w / weight_scale)."""
    scale = w.abs().amax().float().clamp(min=1e-12) / 448.0
    return (w.float() / scale).clamp(-448, 448).to(FP8), scale


def write_modelopt_export(model, directory, input_scales: dict, kv_scales: dict) -> dict:
    """`model` (unquantised, BF16-exact values) as ModelOpt's unified HF export of the Nano FP8 release lays it out
    (spec 4.4; tensor names and shapes as third-party loaders of the real files read them): `backbone.` keys,
    routed experts one by one, BF16 tensors except the fp32 router; every quantised linear X of the selective plan
    as X.weight F8_E4M3 + X.weight_scale F32 [] + X.input_scale F32 [1] (static activation scale; one per routed
    expert); mixer.k_proj.k_scale / mixer.v_proj.v_scale F32 [1] on the attention layers; two shards with
    model.safetensors.index.json; config.json with quantization_config and hf_quant_config.json. Returns the
    tensors written."""
    cfg, plan = model.config, fp8_plan(model.config)
    quantised = [f"layers.{i}.mixer.{p}" for i in plan["mamba"] for p in ("in_proj", "out_proj")]
    quantised += [f"layers.{i}.mixer.shared_experts.{p}" for i in plan["moe"] for p in ("up_proj", "down_proj")]
    tensors = {}
    for name, t in model.state_dict().items():
        dtype = torch.float32 if ".gate." in name else torch.bfloat16
        if name == "lm_head.weight":
            tensors[name] = t.to(dtype)
        elif ".experts." in name and ".shared_experts." not in name:         # [E, ...] -> one key per expert
            prefix, proj = name.rsplit(".", 1)
            for e in range(t.shape[0]):
                key = f"backbone.{prefix}.{e}.{proj}"
                if int(name.split(".")[1]) in plan["moe"]:
                    tensors[key + ".weight"], tensors[key + ".weight_scale"] = modelopt_fp8(t[e])
                    tensors[key + ".input_scale"] = torch.tensor([input_scales[f"{prefix}.{e}.{proj}"]])
                else:
                    tensors[key + ".weight"] = t[e].to(dtype)
        elif name.removesuffix(".weight") in quantised:
            key = "backbone." + name.removesuffix(".weight")
            tensors[key + ".weight"], tensors[key + ".weight_scale"] = modelopt_fp8(t)
            tensors[key + ".input_scale"] = torch.tensor([input_scales[name.removesuffix(".weight")]])
        else:
            tensors["backbone." + name] = t.to(dtype)
    for i, (k_scale, v_scale) in kv_scales.items():
        tensors[f"backbone.layers.{i}.mixer.k_proj.k_scale"] = torch.tensor([k_scale])
        tensors[f"backbone.layers.{i}.mixer.v_proj.v_scale"] = torch.tensor([v_scale])
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[:len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for fname, names in shards.items():
        save_file({k: tensors[k].contiguous() for k in names}, str(directory / fname), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": {k: fname for fname, names in shards.items() for k in names}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    quant = {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8",
             "exclude_modules": ["lm_head", *(f"backbone.layers.{i}.mixer" for i in plan["mamba_bf16"]),
                                 *(f"backbone.layers.{i}.mixer" for i in cfg.layer_indices("*")),
                                 *(f"backbone.layers.{i}.mixer.conv1d" for i in cfg.layer_indices("M"))]}
    config = cfg.to_hf_config(dtype="bfloat16") | {
        "quantization_config": {"quant_method": "modelopt", **quant}}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt", "version": "0.37.0"}, "quantization": quant}, indent=2))
    return tensors


def test_loads_a_checkpoint_in_modelopts_export_layout(fp32_tiny, tmp_path):
    """A fixture written in ModelOpt's own key layout (not by save_fp8_checkpoint) loads into the FP8 modules of
    the selective plan with its exact e4m3 weights and scales, per-expert static input scales folded to their max,
    the KV scales on the attention layers; its logits equal those of the same model quantised in memory with the
    same static scales, and stay close to the unquantised model."""
    ref = build_model(fp32_tiny, dtype=torch.float32, backend="reference", seed=4).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if ".gate." not in name:
                p.copy_(p.bfloat16().float())                               # BF16 on disk holds them exactly
    plan = fp8_plan(fp32_tiny)
    E = fp32_tiny.n_routed_experts
    # static activation scales, amax / 448 as ModelOpt calibrates them, on a calibration batch
    amax, moe_x = {}, {}
    hooks = [m.register_forward_pre_hook(
        lambda m, args, name=name: amax.__setitem__(name, args[0].abs().max().item()))
        for name, m in ref.named_modules() if name.endswith(("in_proj", "out_proj"))]
    hooks += [ref.layers[i].mixer.register_forward_pre_hook(
        lambda m, args, i=i: moe_x.__setitem__(i, args[0].reshape(-1, args[0].shape[-1]))) for i in plan["moe"]]
    with torch.no_grad():
        ref(torch.randint(3, 259, (2, 24)))
    for h in hooks:
        h.remove()
    input_scales = {name: a / 448 for name, a in amax.items()}
    for i in plan["moe"]:              # the experts' inputs: x, and relu(up x)^2 before each down projection
        moe, x = ref.layers[i].mixer, moe_x[i]
        prefix = f"layers.{i}.mixer"
        hidden = torch.square(torch.relu(x @ moe.shared_experts.up_proj.weight.t()))
        input_scales[f"{prefix}.shared_experts.up_proj"] = x.abs().max().item() / 448
        input_scales[f"{prefix}.shared_experts.down_proj"] = hidden.abs().max().item() / 448
        for e in range(E):             # one scale per routed expert (they differ; the loader keeps their max)
            hidden = torch.square(torch.relu(x @ moe.experts.up_proj[e].t()))
            input_scales[f"{prefix}.experts.{e}.up_proj"] = x.abs().max().item() / 448 * (1 + e / 8)
            input_scales[f"{prefix}.experts.{e}.down_proj"] = hidden.abs().max().item() / 448
    kv = {1: (0.03125, 0.046875), 5: (0.0625, 0.015625)}                   # exact in fp32
    tensors = write_modelopt_export(ref, tmp_path, input_scales, kv)
    assert is_fp8_checkpoint(tmp_path) and tensors["backbone.layers.7.mixer.in_proj.weight_scale"].shape == ()

    loaded = load_fp8_checkpoint(tmp_path, device="cpu", dtype=torch.float32, backend="reference").eval()
    for i in plan["mamba"]:
        for proj in ("in_proj", "out_proj"):
            m, key = getattr(loaded.layers[i].mixer, proj), f"backbone.layers.{i}.mixer.{proj}"
            assert isinstance(m, FP8Linear)
            assert torch.equal(m.weight.view(torch.uint8), tensors[key + ".weight"].view(torch.uint8))
            assert m.weight_scale.item() == tensors[key + ".weight_scale"].item()
            assert m.input_scale.item() == tensors[key + ".input_scale"].item()
    for i in plan["mamba_bf16"]:
        assert not isinstance(loaded.layers[i].mixer.in_proj, FP8Linear)
        assert torch.equal(loaded.layers[i].mixer.in_proj.weight, ref.layers[i].mixer.in_proj.weight)
    for i in plan["moe"]:
        moe, key = loaded.layers[i].mixer, f"backbone.layers.{i}.mixer.experts"
        assert isinstance(moe, FP8MoE) and moe.gate.weight.dtype == torch.float32
        assert torch.equal(moe.gate.weight, ref.layers[i].mixer.gate.weight)
        assert torch.equal(moe.up[3].view(torch.uint8), tensors[f"{key}.3.up_proj.weight"].view(torch.uint8))
        assert moe.down_scale[5].item() == tensors[f"{key}.5.down_proj.weight_scale"].item()
        assert moe.up_input_scale.item() == tensors[f"{key}.{E - 1}.up_proj.input_scale"].item()   # the max
        assert moe.down_input_scale.item() == max(tensors[f"{key}.{e}.down_proj.input_scale"].item()
                                                  for e in range(E))
        shared = f"backbone.layers.{i}.mixer.shared_experts"
        assert moe.shared_up.input_scale.item() == tensors[f"{shared}.up_proj.input_scale"].item()
        assert torch.equal(moe.shared_down.weight.view(torch.uint8),
                           tensors[f"{shared}.down_proj.weight"].view(torch.uint8))
    for i, (k_scale, v_scale) in kv.items():
        assert (loaded.layers[i].mixer.k_scale, loaded.layers[i].mixer.v_scale) == (k_scale, v_scale)
        assert loaded.layers[i].mixer.q_proj.weight.dtype == torch.float32   # attention: BF16 values, not FP8

    # the same model quantised in memory, given the same static scales: the same logits, bit for bit
    q = build_model(fp32_tiny, dtype=torch.float32, backend="reference", seed=4).eval()
    q.load_state_dict(ref.state_dict())
    quantize_model_fp8(q)
    for name, m in q.named_modules():
        if isinstance(m, FP8Linear):
            m.input_scale = torch.tensor(input_scales[name.replace(".shared_up", ".shared_experts.up_proj")
                                                      .replace(".shared_down", ".shared_experts.down_proj")])
        elif isinstance(m, FP8MoE):
            m.up_input_scale = torch.tensor(max(input_scales[f"{name}.experts.{e}.up_proj"] for e in range(E)))
    ids = torch.randint(3, 259, (2, 24))
    with torch.no_grad():
        out, expected, exact = loaded(ids), q(ids), ref(ids)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    rel = ((out - exact).norm() / exact.norm()).item()
    assert 0 < rel < 0.1, rel


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
    assert {m.path for m in fp8} == {"grouped_gemm_w8 (1 row), torch._scaled_mm", "moe_experts_fp8 (CUTLASS)"}
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
            paths = (m, *((m.shared_up, m.shared_down) if isinstance(m, FP8MoE) else ()))
            x = args[0]
            # the captured rows (80: activations quantised), and 4 and 1 of them as decode steps (weights-only: the
            # experts at both, the projections at 1 row)
            for x_in in (x, x.reshape(-1, x.shape[-1])[:4], x.reshape(-1, x.shape[-1])[:1]):
                for r in paths:
                    r.force_reference = False
                gpu = m(x_in, *args[1:])
                for r in paths:
                    r.force_reference = True
                ref = m(x_in, *args[1:])
                if isinstance(m, FP8Linear):
                    # the same operands and scales on both paths (e4m3 products, or bf16 x e4m3 ones, are exact in
                    # fp32; both accumulate in fp32 and round to bf16 once): the DESIGN 2x rule against float64
                    x2 = x_in.reshape(-1, m.in_features)
                    w64 = m.weight.double() * m.weight_scale.double()
                    if x2.shape[0] <= m.WEIGHTS_ONLY_ROWS:
                        ref64 = x2.double() @ w64.t()
                    else:
                        xq, sa = quantize_rows(x2, m.input_scale)
                        ref64 = (xq.double() * sa.double()) @ w64.t()
                    assert_error_rule("FP8Linear", gpu.reshape(ref64.shape), ref64, ref.reshape(ref64.shape), k=2)
                else:
                    # the quantised GPU path rounds the routed experts' hidden activations h = relu(up x)^2 to e4m3
                    # before the down GEMM (the reference keeps them in fp32): round to nearest with 3 mantissa
                    # bits moves each element of h by at most 2^-4 of itself, so |dh| <= 2^-4 |h| and the down
                    # GEMM's output (routed + shared, the shared part alike on both paths up to bf16) moves by
                    # about that fraction; plus bf16 rounding of the outputs (2^-8). A wrong or missing scale is
                    # O(1). Weights-only keeps h in bf16 (2^-8 per element), well inside the same bound.
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
