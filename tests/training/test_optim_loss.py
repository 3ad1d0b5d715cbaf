"""AdamW parameter groups, the WSD schedule, gradient clipping by the global norm and the chunked fp32
cross-entropy."""
import math

import pytest
import torch
import torch.nn.functional as F

from model.config import NemotronHConfig
from model.nemotron_h import build_model
from training.data import IGNORE_INDEX
from training.loss import chunked_cross_entropy, default_chunk_rows
from training.optim import WSDSchedule, build_optimizer, param_groups
from training.parallel import DistInfo, Parallelism, clip_grad_norm_


def test_wsd_schedule_shape():
    s = WSDSchedule(peak_lr=1e-3, min_lr=1e-5, total_steps=100, warmup_steps=10, decay_fraction=0.2)
    lrs = [s.lr(i) for i in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))                # linear warmup
    assert all(lr == 1e-3 for lr in lrs[10:80])                           # stable at the peak
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:]))                 # decay over the last 20%
    assert lrs[99] == pytest.approx(1e-5)
    # cosine decay: halfway through the decay the LR is halfway between peak and min
    assert s.lr(89) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    linear = WSDSchedule(1e-3, 0.0, 100, 0, 0.2, "linear")
    assert linear.lr(89) == pytest.approx(1e-3 * 0.5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(total_steps=0), "total_steps"), (dict(warmup_steps=200), "warmup_steps"),
    (dict(decay_fraction=1.5), "decay_fraction"), (dict(decay_shape="step"), "decay_shape"),
    (dict(min_lr=1.0), "min_lr")])
def test_wsd_schedule_bad_input(kwargs, match):
    args = dict(peak_lr=1e-3, min_lr=1e-5, total_steps=100, warmup_steps=10) | kwargs
    with pytest.raises(ValueError, match=match):
        WSDSchedule(**args)


def test_weight_decay_on_matrices_only():
    model = build_model(NemotronHConfig.from_preset("tiny"), backend="reference")
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"embeddings.weight", "lm_head.weight", "layers.2.mixer.experts.up_proj",
            "layers.2.mixer.gate.weight", "layers.0.mixer.conv1d.weight"} <= decayed
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert {"norm_f.weight", "layers.0.mixer.A_log", "layers.0.mixer.D", "layers.0.mixer.dt_bias",
            "layers.0.mixer.conv1d.bias"} <= not_decayed
    opt = build_optimizer(model, lr=1e-3)
    assert opt.defaults["betas"] == (0.9, 0.95)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def _params_with_grads(*grads):
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def test_clip_grad_norm_scales_to_max_norm_and_returns_the_norm_before():
    """Above max_norm: every gradient is scaled by the same factor so their global L2 norm becomes max_norm (the
    direction kept); the returned value is the norm before clipping. Parameters without a gradient are skipped."""
    torch.manual_seed(0)
    grads = [torch.randn(7, 5) * 3, torch.randn(11), torch.randn(2, 3, 4) * 0.5]
    params = _params_with_grads(*grads) + [torch.nn.Parameter(torch.ones(3))]       # the last one: no grad
    expected = math.sqrt(sum(g.double().square().sum().item() for g in grads))
    assert expected > 10
    total = clip_grad_norm_(params, 1.0, Parallelism(DistInfo()))
    assert total.dtype == torch.float32 and total.shape == ()
    assert total.item() == pytest.approx(expected, rel=1e-6)
    after = math.sqrt(sum(p.grad.double().square().sum().item() for p in params[:3]))
    assert after == pytest.approx(1.0, rel=1e-5)
    for p, g in zip(params, grads):                                      # one common factor: direction kept
        torch.testing.assert_close(p.grad, g / expected, rtol=1e-5, atol=0)
    assert params[3].grad is None


@pytest.mark.parametrize("max_norm", [100.0, 0.0])
def test_clip_grad_norm_leaves_small_gradients_and_max_norm_zero_alone(max_norm):
    """Below max_norm (or with clipping off, max_norm 0) the gradients stay bit for bit as they were."""
    torch.manual_seed(1)
    grads = [torch.randn(4, 4), torch.randn(9) * 2]
    params = _params_with_grads(*grads)
    total = clip_grad_norm_(params, max_norm, Parallelism(DistInfo()))
    assert total.item() == pytest.approx(math.sqrt(sum(g.double().square().sum().item() for g in grads)), rel=1e-6)
    assert total.item() < 100
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g)


@pytest.mark.parametrize("chunk_rows", [1, 5, 16, 64])
def test_chunked_cross_entropy_matches_torch(chunk_rows):
    torch.manual_seed(0)
    T, H, V = 37, 16, 50
    hidden = torch.randn(T, H, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (T,))
    labels[[3, 20, 36]] = IGNORE_INDEX
    loss = chunked_cross_entropy(hidden, weight, labels, chunk_rows)
    (0.7 * loss).backward()
    h2, w2 = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    ref = F.cross_entropy(h2 @ w2.T, labels, reduction="sum", ignore_index=IGNORE_INDEX)
    (0.7 * ref).backward()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hidden.grad, h2.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weight.grad, w2.grad, rtol=1e-12, atol=1e-12)


def test_chunked_cross_entropy_keeps_fp32_logits_for_low_precision_weights():
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 32, dtype=torch.bfloat16)
    weight = torch.randn(300, 32, dtype=torch.bfloat16)
    labels = torch.randint(0, 300, (2, 9))
    loss = chunked_cross_entropy(hidden, weight, labels, chunk_rows=4)
    assert loss.dtype == torch.float32
    # same as the fp32 cross-entropy of the bf16 GEMM's logits
    ref = F.cross_entropy((hidden.reshape(-1, 32) @ weight.T).float(), labels.reshape(-1), reduction="sum")
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-4)


def test_chunked_cross_entropy_never_holds_all_logits():
    """With chunk_rows = 4 the largest [*, V] float tensor created for 64 x 1000 logits is one chunk, 4 x 1000."""
    from torch.utils._python_dispatch import TorchDispatchMode

    hidden = torch.randn(64, 8, requires_grad=True)
    weight = torch.randn(1000, 8, requires_grad=True)
    inputs = {hidden.untyped_storage().data_ptr(), weight.untyped_storage().data_ptr()}

    class LargestOutput(TorchDispatchMode):  # largest new [*, V] float tensor (views of the inputs excluded)
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if (isinstance(t, torch.Tensor) and t.dtype.is_floating_point and t.shape[-1:] == (1000,)
                        and t.untyped_storage().data_ptr() not in inputs):
                    LargestOutput.largest = max(LargestOutput.largest, t.numel())
            return out

    with LargestOutput():
        loss = chunked_cross_entropy(hidden, weight, torch.randint(0, 1000, (64,)), chunk_rows=4)
    assert LargestOutput.largest == 4 * 1000
    loss.backward()
    assert default_chunk_rows(131072) == 2048


def test_chunked_cross_entropy_bad_shapes():
    with pytest.raises(ValueError, match="labels"):
        chunked_cross_entropy(torch.randn(4, 8), torch.randn(10, 8), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="weight"):
        chunked_cross_entropy(torch.randn(4, 8), torch.randn(10, 7), torch.zeros(4, dtype=torch.long))
