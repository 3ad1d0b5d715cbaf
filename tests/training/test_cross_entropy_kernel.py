"""The Triton cross-entropy kernel of training/loss.py (training/cross_entropy_triton.py) against its PyTorch
reference, and chunked_cross_entropy's kernel path against its reference path, under the DESIGN error rule
(float64 reference; 2x the same-dtype torch error forward, 3x backward). CPU: Triton's interpreter at small
shapes; `cuda`: the H200 path (fp32-output GEMM, in-GEMM fp32 weight-gradient accumulation)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nemotron_kernels.testing import assert_error_rule
from training import loss as loss_mod
from training.data import IGNORE_INDEX
from training.loss import chunked_cross_entropy, kernel_available

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64
FWD, BWD = 2.0, 3.0



def make_logits(seed, n, V, scale, offset=0.0):
    """fp32 logits [n, V] with a per-row offset (large magnitudes), labels [n] with ignored rows and both ends."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, V, generator=g) + offset * torch.randn(n, 1, generator=g)
    labels = torch.randint(0, V, (n,), generator=g)
    labels[1::4] = IGNORE_INDEX
    labels[0], labels[-1] = 0, V - 1
    return logits, labels


def run_kernel(logits, labels, grad_dtype, block_v=None):
    n, V = logits.shape
    loss_rows = torch.full((n,), float("nan"))                                    # poisoned
    grad = torch.full((n, V), float("nan"), dtype=grad_dtype) if grad_dtype is not None else None
    loss_mod._kernels().cross_entropy_grad_launch(logits, labels, loss_rows, grad, block_v=block_v)
    return loss_rows, grad


@pytest.mark.parametrize("grad_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("n,V,block_v,scale,offset", [
    (9, 100, 32, 3.0, 0.0),         # 4 blocks, the last one partial
    (6, 257, 64, 30.0, 1000.0),     # large magnitudes: a near one-hot softmax, logits ~1e3
    (5, 37, None, 1.0, 0.0),        # the launcher's own tile (one masked block)
    (3, 5000, None, 5.0, -300.0),   # the real 4096-column tile, V not a multiple of it
])
@pytest.mark.usefixtures("interpret")
def test_kernel_matches_reference(grad_dtype, n, V, block_v, scale, offset):
    ce = loss_mod._kernels()
    logits, labels = make_logits(n + V, n, V, scale, offset)
    loss_rows, grad = run_kernel(logits, labels, grad_dtype, block_v)
    loss64, grad64 = ce.cross_entropy_grad_ref(logits.to(F64), labels, F64)
    loss32, grad32 = ce.cross_entropy_grad_ref(logits, labels, grad_dtype)
    assert_error_rule("loss_rows", loss_rows, loss64, loss32, FWD)
    assert_error_rule("grad", grad, grad64, grad32, BWD)
    ignored = labels == IGNORE_INDEX
    assert torch.equal(loss_rows[ignored], torch.zeros(int(ignored.sum())))
    assert torch.equal(grad[ignored], torch.zeros_like(grad[ignored]))


@pytest.mark.usefixtures("interpret")
def test_kernel_loss_only_and_bad_labels():
    """grad None: loss only. A label outside [0, V) (neither a class nor IGNORE_INDEX) gives NaN, not a bad read."""
    ce = loss_mod._kernels()
    logits, labels = make_logits(3, 7, 90, 4.0)
    loss_rows, _ = run_kernel(logits, labels, None, block_v=32)
    assert_error_rule("loss_rows", loss_rows, ce.cross_entropy_grad_ref(logits.to(F64), labels, None)[0],
                      ce.cross_entropy_grad_ref(logits, labels, None)[0], FWD)
    labels[2], labels[3] = 90, -5
    loss_rows, _ = run_kernel(logits, labels, torch.float32, block_v=32)
    assert loss_rows[2:4].isnan().all() and loss_rows[[0, 4, 6]].isfinite().all()


def chunked_case(seed, T, H, V, dtype):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=g, dtype=F64)
    weight = torch.randn(V, H, generator=g, dtype=F64) / H ** 0.5 * 4
    labels = torch.randint(0, V, (T,), generator=g)
    labels[[1, 5, T - 1]] = IGNORE_INDEX
    return hidden.to(dtype), weight.to(dtype), labels


def loss_and_grads(hidden, weight, labels, **kwargs):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    loss = chunked_cross_entropy(h, w, labels, **kwargs)
    (0.7 * loss).backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("dtype,T,H,V,chunk_rows", [
    (torch.float32, 37, 16, 300, 5),
    (torch.bfloat16, 37, 16, 300, 16),
    (torch.bfloat16, 13, 8, 5000, 64),    # two 4096-column blocks, one chunk
])
@pytest.mark.usefixtures("interpret")
def test_chunked_kernel_path_matches_reference_path(monkeypatch, dtype, T, H, V, chunk_rows):
    hidden, weight, labels = chunked_case(T + V, T, H, V, dtype)
    assert kernel_available(hidden, weight)
    ce = loss_mod._kernels()
    launches = []
    launch = ce.cross_entropy_grad_launch
    monkeypatch.setattr(ce, "cross_entropy_grad_launch", lambda *a, **k: launches.append(1) or launch(*a, **k))
    kernel = loss_and_grads(hidden, weight, labels, chunk_rows=chunk_rows)                # auto -> kernel
    assert len(launches) == -(-T // chunk_rows)
    ref = loss_and_grads(hidden, weight, labels, chunk_rows=chunk_rows, use_kernel=False)
    h64, w64 = hidden.to(F64).requires_grad_(), weight.to(F64).requires_grad_()
    loss64 = F.cross_entropy(h64 @ w64.T, labels, reduction="sum", ignore_index=IGNORE_INDEX)
    (0.7 * loss64).backward()
    assert kernel[0].dtype == torch.float32 and kernel[1].dtype == dtype and kernel[2].dtype == dtype
    assert_error_rule("loss", kernel[0], loss64.detach(), ref[0], FWD)
    assert_error_rule("grad hidden", kernel[1], h64.grad, ref[1], BWD)
    assert_error_rule("grad weight", kernel[2], w64.grad, ref[2], BWD)


@pytest.mark.usefixtures("interpret")
def test_chunked_kernel_path_without_grads():
    hidden, weight, labels = chunked_case(4, 11, 8, 70, torch.float32)
    with torch.no_grad():
        loss = chunked_cross_entropy(hidden, weight, labels, chunk_rows=4)
    ref = chunked_cross_entropy(hidden, weight, labels, chunk_rows=4, use_kernel=False)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-5)


def test_cpu_without_interpreter_takes_reference(monkeypatch):
    """Plain CPU runs (training tests, resume checks) keep the reference path bit for bit; float64 always does."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    hidden, weight, labels = chunked_case(2, 9, 8, 40, torch.float32)
    assert not kernel_available(hidden, weight)
    auto = loss_and_grads(hidden, weight, labels, chunk_rows=4)
    ref = loss_and_grads(hidden, weight, labels, chunk_rows=4, use_kernel=False)
    assert all(torch.equal(a, b) for a, b in zip(auto, ref))
    with pytest.raises(ValueError, match="use_kernel"):
        chunked_cross_entropy(hidden, weight, labels, use_kernel=True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not kernel_available(hidden.double(), weight.double())


def test_aot_compile_sm90():
    """The kernel compiles for sm_90a at the training tile (compiled mode, in a child process: no GPU needed)."""
    code = ("from training.cross_entropy_triton import aot_compile_all\n"
            "for name, compiled in aot_compile_all():\n"
            "    print('AOT', name, compiled.metadata.num_warps, flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600, check=False)
    assert child.returncode == 0, child.stderr[-6000:]
    assert len([line for line in child.stdout.splitlines() if line.startswith("AOT ")]) == 3, child.stdout


@pytest.mark.cuda
@pytest.mark.parametrize("T,H,V,chunk_rows", [(1000, 256, 32768 + 17, 384), (600, 1024, 131072, 512)])
def test_cuda_kernel_path_matches_reference(T, H, V, chunk_rows):
    """bf16 on the GPU: the fp32-output GEMM, the kernel and the in-GEMM fp32 accumulation of grad_w."""
    hidden, weight, labels = chunked_case(T, T, H, V, torch.bfloat16)
    hidden, weight, labels = hidden.cuda(), weight.cuda(), labels.cuda()
    assert kernel_available(hidden, weight)
    kernel = loss_and_grads(hidden, weight, labels, chunk_rows=chunk_rows)
    ref = loss_and_grads(hidden, weight, labels, chunk_rows=chunk_rows, use_kernel=False)
    h64, w64 = hidden.to(F64).requires_grad_(), weight.to(F64).requires_grad_()
    loss64 = F.cross_entropy(h64 @ w64.T, labels, reduction="sum", ignore_index=IGNORE_INDEX)
    (0.7 * loss64).backward()
    assert_error_rule("loss", kernel[0], loss64.detach(), ref[0], FWD)
    assert_error_rule("grad hidden", kernel[1], h64.grad, ref[1], BWD)
    assert_error_rule("grad weight", kernel[2], w64.grad, ref[2], BWD)
