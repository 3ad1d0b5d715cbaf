"""Single-row projections through the grouped GEMV (model/serve/gemv.py): which modules are swapped, that the
parameters stay the model's, the F.linear path off the GPU and for several rows, and under the `cuda` marker the
one-row GEMV against float64 under the error rule and an engine that swaps its model's projections."""
import pytest
import torch
import torch.nn.functional as F

from model.config import NemotronHConfig
from model.nemotron_h import Linear, build_model
from model.serve import EngineConfig, LLMEngine, SamplingParams
from model.serve.fp8 import FP8Linear, quantize_model_fp8
from model.serve.gemv import GemvLinear, use_gemv_for_single_rows
from nemotron_kernels.testing import assert_error_rule


def _tiny(device="cpu", dtype=torch.float32):
    cfg = NemotronHConfig.from_preset("tiny", max_position_embeddings=512)
    return build_model(cfg, device=device, dtype=dtype, backend="auto", seed=0).eval()


def test_swaps_only_mamba_out_proj_and_attention_o_proj_and_keeps_the_parameters():
    model = _tiny()
    keys = {k: v.data_ptr() for k, v in model.state_dict().items()}
    swapped = use_gemv_for_single_rows(model)
    cfg = model.config
    assert swapped == len(cfg.layer_indices("M")) + len(cfg.layer_indices("*"))
    for block in model.layers:
        mixer = block.mixer
        for name, lin in mixer.named_children():
            assert isinstance(lin, GemvLinear) == (name in ("out_proj", "o_proj")), (block.kind, name)
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == keys     # same names, same storage
    assert use_gemv_for_single_rows(model) == 0                                  # a second call changes nothing


def test_fp8_projections_and_unaligned_sizes_are_left_alone():
    model = _tiny()
    quantize_model_fp8(model)
    fp8 = {i for i, b in enumerate(model.layers) if isinstance(getattr(b.mixer, "out_proj", None), FP8Linear)}
    use_gemv_for_single_rows(model)
    assert fp8 and all(isinstance(model.layers[i].mixer.out_proj, FP8Linear) for i in fp8)
    odd = torch.nn.Module()
    odd.layers = torch.nn.ModuleList([torch.nn.Module()])
    odd.layers[0].mixer = torch.nn.Module()
    odd.layers[0].mixer.out_proj = Linear(60, 12)                                # K not a multiple of 8
    assert use_gemv_for_single_rows(odd) == 0


@pytest.mark.parametrize("rows", [1, 3])
def test_cpu_forward_is_f_linear(rows):
    lin = Linear(64, 32)
    torch.nn.init.normal_(lin.weight)
    gemv = GemvLinear(lin)
    x = torch.randn(rows, 1, 64)
    assert torch.equal(gemv(x), F.linear(x, lin.weight))


@pytest.mark.cuda
@pytest.mark.parametrize("k,n", [(4096, 2688), (64, 64)])   # Nano's out_proj / o_proj; the tiny preset's
def test_cuda_one_row_is_the_gemv_under_the_error_rule(k, n):
    lin = Linear(k, n, device="cuda", dtype=torch.bfloat16)
    torch.nn.init.normal_(lin.weight, std=k ** -0.5)
    gemv = GemvLinear(lin)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    got = gemv(x)
    assert got.shape == (1, n) and got.dtype == torch.bfloat16
    want64 = x.double() @ lin.weight.double().t()
    assert_error_rule("one-row GEMV", got, want64, F.linear(x, lin.weight), 2)
    x3 = torch.randn(3, k, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(gemv(x3), F.linear(x3, lin.weight))                      # more rows: cuBLAS as before


@pytest.mark.cuda
def test_cuda_engine_swaps_its_projections_and_decodes(byte_tokenizer):
    model = _tiny("cuda", torch.bfloat16)
    engine = LLMEngine(model, byte_tokenizer, EngineConfig(max_num_seqs=4, max_num_batched_tokens=32, block_size=16,
                                                           max_model_len=128))
    assert sum(isinstance(m, GemvLinear) for m in model.modules()) == \
        len(model.config.layer_indices("M")) + len(model.config.layer_indices("*"))
    rid = engine.add_request("one row", SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    finals = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
    assert len(finals[rid].token_ids) == 6
