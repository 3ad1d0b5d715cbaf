"""Cross-entropy of one chunk of fp32 logits and its gradient (Triton), for training/loss.py's chunked loss.

Per row of logits [n, V] fp32: loss = lse - logit[label] and grad = softmax - onehot(label) in the GEMM dtype (BF16),
both zero for IGNORE_INDEX rows. One program per row: an online max / sum-exp pass over V in BLOCK_V blocks,
then a second pass writing the gradient; 2 reads of the fp32 row and 1 write of the BF16 gradient in all
(an ignored row: no read, zeros written). A label outside [0, V) gives a NaN loss, never an out-of-bounds read.
Row offsets are int64. `cross_entropy_grad_ref` is the plain-PyTorch version the tests compare against.

Training-only (no public op): it lives beside loss.py, its one caller. Shape legend: n rows, V vocab."""
import torch
import triton
import triton.language as tl

from nemotron_kernels.triton.common import interpreting

from .data import IGNORE_INDEX

INTERPRETED = interpreting()


@triton.jit
def _cross_entropy_grad_kernel(
    logits_ptr, labels_ptr, grad_ptr, loss_ptr,   # logits [n, V] fp32, labels [n] int64, grad [n, V], loss [n] fp32
    V, stride_logits_row, stride_grad_row,
    IGNORE: tl.constexpr,                         # label of rows without a target
    HAS_GRAD: tl.constexpr,                       # write grad (False: loss only, one read)
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = logits_ptr + row * stride_logits_row
    g_row = grad_ptr + row * stride_grad_row
    offs = tl.arange(0, BLOCK_V)
    label = tl.load(labels_ptr + row)
    if label != IGNORE:
        m = tl.full((), -float("inf"), tl.float32)                            # running max
        s = tl.zeros((), tl.float32)                                          # running sum of exp(x - m)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + offs
            x = tl.load(x_row + cols, mask=cols < V, other=-float("inf"))
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)
        in_range = (label >= 0) & (label < V)
        x_label = tl.load(x_row + label, mask=in_range, other=float("nan"))
        tl.store(loss_ptr + row, lse - x_label)
        if HAS_GRAD:
            for v0 in range(0, V, BLOCK_V):
                cols = v0 + offs
                mask = cols < V
                x = tl.load(x_row + cols, mask=mask, other=-float("inf"))
                p = tl.exp(x - lse)
                p = tl.where(cols == label, p - 1.0, p)
                tl.store(g_row + cols, p.to(grad_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(loss_ptr + row, 0.0)
        if HAS_GRAD:
            zeros = tl.zeros((BLOCK_V,), dtype=grad_ptr.dtype.element_ty)
            for v0 in range(0, V, BLOCK_V):
                cols = v0 + offs
                tl.store(g_row + cols, zeros, mask=cols < V)


def ce_config(vocab_size: int) -> dict:
    """Tile of one launch: 4096-column blocks (16 fp32 per thread with 8 warps), smaller for tiny vocabularies."""
    block_v = min(4096, triton.next_power_of_2(vocab_size))
    return {"BLOCK_V": block_v, "num_warps": 8 if block_v >= 4096 else 4}


def cross_entropy_grad_launch(logits: torch.Tensor, labels: torch.Tensor, loss_rows: torch.Tensor,
                              grad: torch.Tensor | None, block_v: int | None = None) -> None:
    """logits [n, V] fp32 (unit column stride), labels [n] int64 -> writes loss_rows [n] fp32 and grad [n, V]
    (any float dtype, unit column stride; None: loss only). block_v overrides the tile (tests)."""
    n, V = logits.shape
    if n == 0:
        return
    assert logits.dtype == torch.float32 and logits.stride(1) == 1, "cross_entropy: logits must be fp32, unit stride"
    assert labels.shape == (n,) and labels.dtype == torch.int64 and labels.is_contiguous(), \
        "cross_entropy: labels must be contiguous int64 [n]"
    assert loss_rows.shape == (n,) and loss_rows.dtype == torch.float32 and loss_rows.is_contiguous(), \
        "cross_entropy: loss_rows must be contiguous fp32 [n]"
    if grad is not None:
        assert grad.shape == (n, V) and grad.stride(1) == 1, "cross_entropy: grad must be [n, V] with unit stride"
    cfg = ce_config(V)
    if block_v is not None:
        cfg = {"BLOCK_V": block_v, "num_warps": 4}
    _cross_entropy_grad_kernel[(n,)](
        logits, labels, grad if grad is not None else logits, loss_rows,
        V, logits.stride(0), grad.stride(0) if grad is not None else 0,
        IGNORE=IGNORE_INDEX, HAS_GRAD=grad is not None, BLOCK_V=cfg["BLOCK_V"], num_warps=cfg["num_warps"])


def cross_entropy_grad_ref(logits: torch.Tensor, labels: torch.Tensor, grad_dtype: torch.dtype | None):
    """The kernel in PyTorch (loss.py's reference expressions): logits [n, V] float, labels [n] ->
    (loss_rows [n] in logits' dtype, grad [n, V] in grad_dtype with zero IGNORE_INDEX rows, or None)."""
    from .loss import cross_entropy_rows_
    loss_rows, grad = cross_entropy_rows_(logits.clone(), labels, grad_dtype is not None)
    if grad is None:
        return loss_rows, None
    return loss_rows, (grad * (labels != IGNORE_INDEX)[:, None]).to(grad_dtype)


def aot_compile_all():
    """(name, CompiledKernel) for the launches training runs (V = 131072, BF16 / fp32 grads, loss-only), sm_90a."""
    from nemotron_kernels.triton.mamba_common import aot_compile
    cfg = ce_config(131072)
    for grad_dtype, has_grad in (("bf16", True), ("fp32", True), ("fp32", False)):
        sig = {"logits_ptr": "*fp32", "labels_ptr": "*i64", "grad_ptr": f"*{grad_dtype}", "loss_ptr": "*fp32",
               "V": "i32", "stride_logits_row": "i64", "stride_grad_row": "i64"}
        consts = {"IGNORE": IGNORE_INDEX, "HAS_GRAD": has_grad, "BLOCK_V": cfg["BLOCK_V"]}
        yield (f"cross_entropy_grad {grad_dtype} grad={has_grad}",
               aot_compile(_cross_entropy_grad_kernel, sig, consts, num_warps=cfg["num_warps"], num_stages=1,
                           aligned=("V",)))
