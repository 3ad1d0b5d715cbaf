"""gqa_attention (Triton forward + backward) against the float64 reference under the DESIGN error rule.

CPU: the kernels run in Triton's interpreter (fp16/fp32; the interpreter mis-computes bf16 tl.dot) at small shapes
with small tiles, so short sequences cross several tiles; odd lengths, Sq != Sk, uneven varlen, Hq/Hkv in
{1, 2, 3, 16}. AOT: every kernel configuration compiles for sm_90a. `cuda`: NemotronH shapes (32/2 heads, D=128)
in bf16 on the GPU.

Error rule: err(kernel) <= k * err(reference run in the kernel's dtype) + floor, errors = max |x - x_fp64|,
k = 2 forward / 3 backward, floor = eps(kernel dtype) * max(max |x_fp64|, 1).
"""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemotron_kernels.ops.gqa_attention import gqa_attention, quantize_fp8
from nemotron_kernels.reference.gqa_attention import quantize_fp8_ref
from nemotron_kernels.reference.gqa_attention import gqa_attention_ref

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64
FWD, BWD = 2.0, 3.0


def assert_error_rule(name, kernel, ref64, ref_low, k, dtype=None):
    assert kernel.shape == ref64.shape, f"{name}: shape {tuple(kernel.shape)} != {tuple(ref64.shape)}"
    assert not torch.isnan(kernel).any(), f"{name}: NaN in the kernel output"
    fin = torch.isfinite(ref64)
    assert torch.equal(torch.isfinite(kernel), fin), f"{name}: infinities differ from the reference"
    if not fin.any():
        return
    floor = torch.finfo(dtype or kernel.dtype).eps * max(ref64[fin].abs().max().item(), 1.0)
    kernel, ref64, ref_low = kernel[fin].to(F64), ref64[fin], ref_low[fin].to(F64)
    err = (kernel - ref64).abs().max().item()
    base = (ref_low - ref64).abs().max().item()
    assert err <= k * base + floor, (f"{name}: kernel err {err:.3e} > {k} x reference-in-dtype err {base:.3e} "
                                     f"+ floor {floor:.3e}")


def assert_backward_reproducible(q64, k64, v64, do64, dtype):
    """Two causal backward runs of the public op on the same inputs give bitwise equal dq, dk, dv."""
    grads = []
    for _ in range(2):
        ins = [t.to(dtype).requires_grad_() for t in (q64, k64, v64)]
        gqa_attention(*ins).backward(do64.to(dtype))
        grads.append([t.grad for t in ins])
    for name, a, b in zip(("dq", "dk", "dv"), *grads):
        assert torch.equal(a, b), f"{name}: two backward runs differ"


def make_qkv(seed, bsz, sq, sk, hq, hkv, d, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(bsz, sq, hq, d, generator=g, dtype=F64)
    k = torch.randn(bsz, sk, hkv, d, generator=g, dtype=F64)
    v = torch.randn(bsz, sk, hkv, d, generator=g, dtype=F64)
    do = torch.randn(bsz, sq, hq, d, generator=g, dtype=F64)
    return tuple(t.to(device) for t in (q, k, v, do))


def check_fwd_bwd(q64, k64, v64, do64, dtype, causal, cu_seqlens=None, max_seqlen=None, backward=True,
                  make_inputs=None):
    """Kernel (public op) vs the float64 reference and the reference in `dtype`: o, lse (2x) and dq, dk, dv (3x).
    make_inputs(t) turns a float64 tensor into the kernel's input (default: cast to dtype)."""
    make_inputs = make_inputs or (lambda t: t.to(dtype))
    kw = dict(causal=causal, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, return_lse=True)
    ins = [make_inputs(t).requires_grad_(backward) for t in (q64, k64, v64)]
    o, lse = gqa_attention(*ins, **kw)
    ins64 = [t.clone().requires_grad_(backward) for t in (q64, k64, v64)]
    o64, lse64 = gqa_attention_ref(*ins64, **kw)
    ins_low = [t.to(dtype).requires_grad_(backward) for t in (q64, k64, v64)]
    o_low, lse_low = gqa_attention_ref(*ins_low, **kw)
    assert o.dtype == dtype and lse.dtype == torch.float32
    assert_error_rule("o", o.detach(), o64.detach(), o_low.detach(), FWD)
    assert_error_rule("lse", lse, lse64.to(F64), lse_low, FWD, dtype=dtype)
    if not backward:
        return
    o.backward(do64.to(dtype))
    o64.backward(do64)
    o_low.backward(do64.to(dtype))
    for name, a, b, c in zip(("dq", "dk", "dv"), ins, ins64, ins_low):
        assert a.grad.dtype == dtype and a.grad.shape == a.shape
        assert_error_rule(name, a.grad, b.grad, c.grad, BWD)


# (B, Sq, Sk, Hq, Hkv, D, causal, dtype)
CASES = [
    (2, 37, 37, 4, 2, 32, True, torch.float16),
    (2, 37, 37, 4, 2, 32, False, torch.float32),
    (1, 20, 45, 16, 1, 16, True, torch.float32),     # Sq < Sk: bottom-right causal; 16 heads per kv head
    (1, 13, 5, 2, 2, 16, True, torch.float16),       # Sq > Sk: the first 8 queries see no key
    (2, 1, 1, 2, 1, 64, True, torch.float16),        # one token
    (1, 1, 30, 16, 2, 32, True, torch.float16),      # one query over a long key range
    (1, 24, 24, 32, 2, 16, True, torch.float16),     # NemotronH head ratio
    (1, 19, 19, 3, 1, 128, True, torch.float16),     # D=128, 3 heads per kv head (odd packing)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-Sq{}-Sk{}-H{}x{}-D{}-{}-{}".format(
    *c[:6], "causal" if c[6] else "full", str(c[7])[6:]))
def test_interpreter_matches_reference(interpret, case):
    bsz, sq, sk, hq, hkv, d, causal, dtype = case
    q, k, v, do = make_qkv(sum(case[:6]), bsz, sq, sk, hq, hkv, d)
    check_fwd_bwd(q, k, v, do, dtype, causal)


def test_interpreter_deterministic_backward(interpret):
    """The backward runs under torch.use_deterministic_algorithms(True) (which raises on a nondeterministic torch
    op), meets the 3x rule, and a second run gives the same bits."""
    q, k, v, do = make_qkv(6, 1, 29, 29, 4, 2, 32)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        check_fwd_bwd(q, k, v, do, torch.float16, True)
        assert_backward_reproducible(q, k, v, do, torch.float16)
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("offsets,hq,hkv,causal,dtype", [
    ([0, 10, 10, 29, 50], 6, 2, True, torch.float16),      # an empty sequence, uneven lengths
    ([0, 1, 17, 40], 3, 1, False, torch.float32),
])
def test_interpreter_varlen(interpret, offsets, hq, hkv, causal, dtype):
    q, k, v, do = make_qkv(len(offsets) + hq, 1, offsets[-1], offsets[-1], hq, hkv, 32)
    cu = torch.tensor(offsets, dtype=torch.int32)
    check_fwd_bwd(q, k, v, do, dtype, causal, cu_seqlens=cu, max_seqlen=max(b - a for a, b in zip(offsets, offsets[1:])))


def test_interpreter_varlen_without_max_seqlen(interpret):
    q, k, v, do = make_qkv(3, 1, 21, 21, 4, 1, 16)
    check_fwd_bwd(q, k, v, do, torch.float16, True, cu_seqlens=torch.tensor([0, 4, 21]), backward=False)


@pytest.mark.usefixtures("interpret")
def test_interpreter_varlen_reads_only_what_it_writes(assert_reads_only_written):
    """Packed causal sequences of 37 tokens (10-position query tiles and 16-key tiles, the last ones in part past
    its end), 5 (shorter than one query tile), 0 and 1, 3 heads per kv head (30 of 32 tile rows): with scratch
    memory poisoned as NaN, o, lse, dq, dk and dv equal a plain run's, so no kernel reads an element that no
    kernel wrote."""
    offsets = [0, 37, 42, 42, 43]
    q64, k64, v64, do64 = make_qkv(10, 1, offsets[-1], offsets[-1], 6, 2, 16)
    cu = torch.tensor(offsets, dtype=torch.int32)

    def run():
        q, k, v = (t.to(torch.float16).requires_grad_() for t in (q64, k64, v64))
        o, lse = gqa_attention(q, k, v, True, cu_seqlens=cu, max_seqlen=37, return_lse=True)
        o.backward(do64.to(torch.float16))
        return {"o": o.detach(), "lse": lse, "dq": q.grad, "dk": k.grad, "dv": v.grad}

    assert_reads_only_written(run)


def test_interpreter_strided_inputs(interpret):
    """q, k, v as head slices of one fused projection [B, S, (Hq + 2 Hkv) * D], as the model produces them."""
    hq, hkv, d = 4, 2, 16
    q, k, v, do = make_qkv(7, 2, 23, 23, hq, hkv, d)

    def sliced(t):
        fused = torch.cat([q.flatten(2), k.flatten(2), v.flatten(2)], dim=-1).to(torch.float16)
        parts = fused.split([hq * d, hkv * d, hkv * d], dim=-1)
        idx = {id(q): 0, id(k): 1, id(v): 2}[id(t)]
        out = parts[idx].unflatten(-1, (-1, d))
        assert not out.is_contiguous()
        return out

    check_fwd_bwd(q, k, v, do, torch.float16, True, make_inputs=sliced)


def test_interpreter_tma_forward_varlen_and_strided(interpret):
    """The TMA path (2-D descriptors over [B*S, Hkv*D]) with sequences that end inside a tile (rows past a
    sequence belong to the next one) and with K/V as slices of a wider row."""
    from nemotron_kernels.triton import gqa_attention_common as common
    fwd = common.kernel_module("gqa_attention_fwd")
    config = (32, 16, 4, 1, True)
    offsets = [0, 7, 30, 41]
    q, k, v, _ = (t.to(torch.float16) for t in make_qkv(8, 1, 41, 41, 4, 2, 16))
    v[0, 7:30] = float("nan")          # finite keys elsewhere must not mix NaN rows of other sequences in
    cu = torch.tensor(offsets, dtype=torch.int32)
    o, lse = fwd.gqa_attention_fwd(q, k, v, True, 0.25, cu, 23, config=config)
    ref, ref_lse = gqa_attention_ref(q, k, v, True, 0.25, cu_seqlens=cu, return_lse=True)
    keep = torch.ones(41, dtype=torch.bool)
    keep[7:30] = False
    torch.testing.assert_close(o[:, keep], ref[:, keep], rtol=0, atol=2e-3)
    q, k, v, _ = (t.to(torch.float16) for t in make_qkv(9, 2, 21, 21, 4, 2, 16))
    wide_k = torch.cat([k, k], dim=2)[:, :, 1:3]            # [B, S, 2, D] with a row stride of 4 heads
    assert fwd.tma_eligible(wide_k, wide_k)
    o, _ = fwd.gqa_attention_fwd(q, wide_k, wide_k, True, 0.25, config=config)
    torch.testing.assert_close(o, gqa_attention_ref(q, wide_k, wide_k, True, 0.25), rtol=0, atol=2e-3)


@pytest.mark.parametrize("hq,hkv,seqlen,fwd_config", [(32, 2, 21, 1), (2, 2, 150, 3)])
def test_interpreter_gpu_tile_sizes(interpret, hq, hkv, seqlen, fwd_config):
    """The launchers with the H200 tile shapes (packing 8 positions x 16 heads into 128 rows for 32/2 heads),
    K/V through TMA descriptors (config 1) and through pointers (config 3)."""
    from nemotron_kernels.triton import gqa_attention_common as common
    fwd = common.kernel_module("gqa_attention_fwd")
    bwd = common.kernel_module("gqa_attention_bwd")
    q64, k64, v64, do64 = make_qkv(hq, 1, seqlen, seqlen, hq, hkv, 64)
    q, k, v, do = (t.to(torch.float16) for t in (q64, k64, v64, do64))
    scale = 64 ** -0.5
    o, lse = fwd.gqa_attention_fwd(q, k, v, True, scale, config=fwd.FWD_CONFIGS[fwd_config])
    o_low, lse_low = gqa_attention_ref(q, k, v, True, return_lse=True)
    ins64 = [t.clone().requires_grad_() for t in (q64, k64, v64)]
    o64, lse64 = gqa_attention_ref(*ins64, causal=True, return_lse=True)
    assert_error_rule("o", o, o64.detach(), o_low, FWD)
    dq, dk, dv = bwd.gqa_attention_bwd(do, q, k, v, o, lse, True, scale, dkdv_config=bwd.DKDV_CONFIGS[64],
                                       dq_config=bwd.DQ_CONFIGS[64])
    o64.backward(do64)
    ins_low = [t.clone().requires_grad_() for t in (q, k, v)]
    gqa_attention_ref(*ins_low, causal=True).backward(do)
    for name, a, b, c in zip(("dq", "dk", "dv"), (dq, dk, dv), ins64, ins_low):
        assert_error_rule(name, a, b.grad, c.grad, BWD)


def test_interpreter_opcheck(interpret):
    """torch.library's schema / fake-tensor / autograd-registration checks on the custom ops."""
    q, k, v, do = (t.to(torch.float16) for t in make_qkv(5, 1, 5, 5, 2, 1, 16))
    lse = torch.zeros(1, 2, 5)
    torch.library.opcheck(torch.ops.nemotron_kernels.gqa_attention_fwd.default, (q, k, v, True, 0.25, None, 5),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.nemotron_kernels.gqa_attention_bwd.default,
                          (do, q, k, v, do, lse, True, 0.25, None, 5), test_utils=("test_schema", "test_faketensor"))


def make_fp8_exact(seed, bsz, seqlen, hq, hkv, d, rows=None):
    """FP8 inputs whose softmax probabilities are exact powers of two (so the kernel's e4m3 P loses nothing):
    integer q, k and q_descale * k_descale = 1 per (row, kv head), with softmax_scale = ln 2 (scores in log2
    units are integers). -> q8, k8, v8, q_descale, k_descale, v_descale (float64 [rows, Hkv])."""
    g = torch.Generator().manual_seed(seed)
    fp8 = torch.float8_e4m3fn
    q8 = torch.randint(-2, 3, (bsz, seqlen, hq, d), generator=g).to(fp8)
    k8 = torch.randint(-1, 2, (bsz, seqlen, hkv, d), generator=g).to(fp8)
    v8 = torch.randn(bsz, seqlen, hkv, d, generator=g).to(fp8)
    exponent = torch.randint(-3, 4, (rows or bsz, hkv), generator=g).to(F64)
    v_descale = torch.rand(rows or bsz, hkv, generator=g, dtype=F64) + 0.5
    return q8, k8, v8, 2.0 ** exponent, 2.0 ** -exponent, v_descale


@pytest.mark.parametrize("causal", [True, False])
def test_interpreter_fp8_forward(interpret, causal):
    """FP8 e4m3 q/k/v with per-(batch, kv head) descales -> bf16 output, vs the reference (2x rule). The
    probabilities are exact in e4m3 here: the interpreter's fp32 -> e4m3 cast mis-rounds (checked on the GPU)."""
    q8, k8, v8, qd, kd, vd = make_fp8_exact(1, 2, 37, 4, 2, 32)                  # D >= 32: an e4m3 dot
    scale = math.log(2)
    o, lse = gqa_attention(q8, k8, v8, causal, scale, q_descale=qd.float(), k_descale=kd.float(),
                           v_descale=vd.float(), return_lse=True)
    o64, lse64 = gqa_attention_ref(q8.to(F64), k8.to(F64), v8.to(F64), causal, scale, q_descale=qd, k_descale=kd,
                                   v_descale=vd, return_lse=True)
    o_low, lse_low = gqa_attention_ref(q8, k8, v8, causal, scale, q_descale=qd.float(), k_descale=kd.float(),
                                       v_descale=vd.float(), return_lse=True)
    assert o.dtype == torch.bfloat16
    assert_error_rule("o", o, o64, o_low, FWD)
    assert_error_rule("lse", lse, lse64.to(F64), lse_low, FWD, dtype=torch.float32)


def test_transpose_v_fp8_layout():
    """The FP8 forward's v^T: [B, Hkv, D, Sk'] with Sk' = Sk rounded up to 16 (16-byte TMA rows), v's values."""
    from nemotron_kernels.triton.gqa_attention_fwd import transpose_v_fp8
    v = torch.randn(2, 37, 3, 16).to(torch.float8_e4m3fn)
    vt = transpose_v_fp8(v)
    assert vt.shape == (2, 3, 16, 48) and vt.is_contiguous() and vt.dtype == v.dtype
    assert torch.equal(vt[..., :37].view(torch.uint8), v.permute(0, 2, 3, 1).view(torch.uint8))
    # packed sequences (B = 1): sequence b from column 16 * ceil(cu[b] / 16) + 16 * b, a 16-byte aligned TMA box
    def check_packed(vt, cu):
        assert vt.shape == (1, 3, 16, 48 + 4 * 16)
        prev_end = 0
        for b, (a, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            col = -(-a // 16) * 16 + 16 * b
            assert col % 16 == 0 and col >= prev_end, (b, col)
            assert torch.equal(vt[0, :, :, col:col + e - a].view(torch.uint8),
                               v[0, a:e].permute(1, 2, 0).view(torch.uint8)), f"sequence {b}"
            prev_end = col + e - a

    cu = torch.tensor([0, 5, 5, 21, 37], dtype=torch.int32)
    check_packed(transpose_v_fp8(v[:1], cu), cu)
    # the column map is kept on cu_seqlens for the step's next layer, and made again after an in-place change
    kept = cu._nk_vt_columns[1]
    check_packed(transpose_v_fp8(v[:1], cu), cu)
    assert cu._nk_vt_columns[1] is kept
    cu[1:4] = torch.tensor([20, 20, 36], dtype=torch.int32)
    check_packed(transpose_v_fp8(v[:1], cu), cu)
    assert cu._nk_vt_columns[1] is not kept


def test_interpreter_fp8_varlen_scalar_descales(interpret):
    """Packed sequences with one descale row per sequence, and Python-number / one-element descales."""
    offsets = [0, 5, 5, 30, 41]
    q8, k8, v8, qd, kd, vd = make_fp8_exact(2, 1, 41, 4, 2, 32, rows=4)
    cu = torch.tensor(offsets, dtype=torch.int32)
    scale = math.log(2)
    kw = dict(causal=True, softmax_scale=scale, cu_seqlens=cu, max_seqlen=25)
    o = gqa_attention(q8, k8, v8, q_descale=qd.float(), k_descale=kd.float(), v_descale=vd.float(), **kw)
    o64 = gqa_attention_ref(q8.to(F64), k8.to(F64), v8.to(F64), q_descale=qd, k_descale=kd, v_descale=vd, **kw)
    o_low = gqa_attention_ref(q8, k8, v8, q_descale=qd.float(), k_descale=kd.float(), v_descale=vd.float(), **kw)
    assert_error_rule("o", o, o64, o_low, FWD)
    o = gqa_attention(q8, k8, v8, q_descale=2.0, k_descale=torch.tensor(0.5), v_descale=3.0, **kw)
    o64 = gqa_attention_ref(q8.to(F64), k8.to(F64), v8.to(F64), q_descale=2.0, k_descale=0.5, v_descale=3.0, **kw)
    o_low = gqa_attention_ref(q8, k8, v8, q_descale=2.0, k_descale=0.5, v_descale=3.0, **kw)
    assert_error_rule("o", o, o64, o_low, FWD)


def make_exactly_quantisable(seed, bsz, offsets, heads, hkv, d):
    """x [B, S, H, D] = e4m3 values * 2^e per (row, kv head), each group holding one -448 * 2^e: amax / 448 is a
    power of two and x / descale is exact, so no e4m3 rounding happens (the interpreter's e4m3 cast mis-rounds).
    Rows: the B batch rows (offsets = [0, S]) or, with B = 1, the packed sequences of `offsets`."""
    g = torch.Generator().manual_seed(seed)
    seqlen = offsets[-1]
    x = torch.randn(bsz, seqlen, heads, d, generator=g).clamp(-400, 400).to(torch.float8_e4m3fn).to(F64)
    group = heads // hkv
    spans = [(b, 0, seqlen) for b in range(bsz)] if bsz > 1 else [(0, a, e) for a, e in zip(offsets, offsets[1:])]
    exponent = torch.randint(-5, 5, (len(spans), hkv), generator=g).to(F64)
    for row, (b, start, end) in enumerate(spans):
        if end > start:
            x.view(bsz, seqlen, hkv, group, d)[b, (start + end) // 2, :, group - 1, d // 2] = -448.0
            x[b, start:end] *= (2.0 ** exponent[row]).repeat_interleave(group)[None, :, None]
    return x


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_interpreter_quantize_fp8(interpret, dtype):
    x = make_exactly_quantisable(4, 3, [0, 21], 8, 2, 32).to(dtype)
    x8, descale = quantize_fp8(x, 2)
    x8_ref, descale_ref = quantize_fp8_ref(x, 2)
    assert torch.equal(descale, descale_ref) and descale.shape == (3, 2)
    assert torch.equal(x8.view(torch.uint8), x8_ref.view(torch.uint8))


def test_interpreter_quantize_fp8_varlen_and_given_scale(interpret):
    offsets = [0, 7, 7, 40]
    x = make_exactly_quantisable(5, 1, offsets, 4, 4, 16).to(torch.float16)
    cu = torch.tensor(offsets)
    x8, descale = quantize_fp8(x, 4, cu_seqlens=cu)
    x8_ref, descale_ref = quantize_fp8_ref(x, 4, cu_seqlens=cu)
    assert torch.equal(descale, descale_ref) and descale.shape == (3, 4)
    assert torch.equal(x8.view(torch.uint8), x8_ref.view(torch.uint8))
    x8, same = quantize_fp8(x, 4, cu_seqlens=cu, max_seqlen=33, descale=descale_ref)
    assert same is descale_ref or torch.equal(same, descale_ref)
    assert torch.equal(x8.view(torch.uint8), x8_ref.view(torch.uint8))


@pytest.mark.usefixtures("interpret")
def test_interpreter_quantize_fp8_reads_only_what_it_writes(assert_reads_only_written):
    """Batch rows of 21 positions (16-position blocks: the second has 5), 4 heads per kv head; packed sequences of
    7, 0 and 33 tokens (33: three blocks, the last with 1), with computed and with given scales: with scratch
    memory poisoned as NaN, x8 and descale equal a plain run's, so the kernels write every element of both."""
    x = make_exactly_quantisable(4, 3, [0, 21], 8, 2, 32).to(torch.float16)
    offsets = [0, 7, 7, 40]
    packed = make_exactly_quantisable(5, 1, offsets, 4, 4, 16).to(torch.float16)
    cu = torch.tensor(offsets)
    given = quantize_fp8_ref(packed, 4, cu_seqlens=cu)[1]

    def run():
        x8, descale = quantize_fp8(x, 2)
        p8, p_descale = quantize_fp8(packed, 4, cu_seqlens=cu, max_seqlen=33)
        g8, _ = quantize_fp8(packed, 4, cu_seqlens=cu, max_seqlen=33, descale=given)
        return {"x8": x8.view(torch.uint8), "descale": descale, "x8 (packed)": p8.view(torch.uint8),
                "descale (packed)": p_descale, "x8 (given scale)": g8.view(torch.uint8)}

    assert_reads_only_written(run)


def test_quantize_fp8_ref_roundtrip():
    """The PyTorch path: x8 * descale reproduces x within half an e4m3 ulp (3 mantissa bits) or the subnormal step."""
    x = torch.randn(2, 50, 8, 16, dtype=F64) * torch.logspace(-3, 3, 8, dtype=F64)[None, None, :, None]
    x8, descale = quantize_fp8_ref(x, 2)
    back = x8.to(F64) * descale.to(F64).repeat_interleave(4, dim=1)[:, None, :, None]
    step = descale.to(F64).repeat_interleave(4, dim=1)[:, None, :, None] * 2.0 ** -9
    assert ((back - x).abs() <= 2.0 ** -4 * x.abs() + step).all()
    assert (x8.to(F64).abs().amax(dim=(1, 3)) > 0).all()


def test_dispatch_reference_paths(monkeypatch):
    """CPU tensors without the interpreter, float64 and bf16 (interpreter) take the reference, bit for bit."""
    q, k, v, _ = make_qkv(1, 1, 6, 6, 4, 2, 16)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    qf, kf, vf = (t.float() for t in (q, k, v))
    assert torch.equal(gqa_attention(qf, kf, vf), gqa_attention_ref(qf, kf, vf))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert torch.equal(gqa_attention(q, k, v), gqa_attention_ref(q, k, v))
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    assert torch.equal(gqa_attention(qb, kb, vb), gqa_attention_ref(qb, kb, vb))
    assert torch.equal(gqa_attention(qf, kf, vf, q_descale=2.0), gqa_attention_ref(qf, kf, vf, q_descale=2.0))


def test_bad_inputs_raise(interpret):
    q, k, v, _ = (t.to(torch.float16) for t in make_qkv(2, 1, 6, 6, 3, 2, 16))
    with pytest.raises(ValueError, match="Hq"):
        gqa_attention(q, k, v)
    q, k, v, _ = (t.to(torch.float16) for t in make_qkv(2, 1, 6, 6, 4, 2, 16))
    with pytest.raises(ValueError, match="v must have shape"):
        gqa_attention(q, k, v[:, :5])
    with pytest.raises(ValueError, match="cu_seqlens"):
        gqa_attention(q, k, v, cu_seqlens=torch.tensor([0.0, 6.0]))
    with pytest.raises(ValueError, match="max_seqlen"):
        gqa_attention(q, k, v, cu_seqlens=torch.tensor([0, 6]), max_seqlen=-1)


def test_fp8_head_dim_16_takes_the_reference(interpret):
    """An e4m3 tensor-core dot reduces over at least 32: FP8 attention with D = 16 runs the reference (the Triton
    kernel would not compile for sm_90), D = 32 the kernel."""
    from nemotron_kernels.ops.gqa_attention import _kernel_eligible
    for d, eligible in ((16, False), (32, True)):
        q8, k8, v8, *_ = make_fp8_exact(5, 1, 8, 4, 2, d)
        assert _kernel_eligible(q8, k8, v8, None, (None, None, None)) is eligible, d


@pytest.mark.parametrize("quantize", [quantize_fp8, quantize_fp8_ref])
def test_quantize_fp8_bad_inputs_raise(interpret, quantize):
    """The op and its reference name what is wrong: heads not a multiple of Hkv, packed with B > 1, a 3-D or an
    integer input (TypeError, as every op), a descale of the wrong shape."""
    x = torch.randn(2, 8, 4, 16, dtype=torch.float16)
    with pytest.raises(ValueError, match="num_kv_heads"):
        quantize(x, 3)
    with pytest.raises(ValueError, match="B = 1"):
        quantize(x, 2, torch.tensor([0, 8], dtype=torch.int32))
    with pytest.raises(ValueError, match="x must be 4-D"):
        quantize(x[0], 2)
    with pytest.raises(TypeError, match="floating-point"):
        quantize(x.to(torch.int32), 2)
    if quantize is quantize_fp8:
        with pytest.raises(ValueError, match="descale"):
            quantize(x, 2, descale=torch.ones(3, 2))


def test_backend_report(monkeypatch):
    from nemotron_kernels.ops.gqa_attention import backend_report
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert backend_report("cpu").startswith("reference")
    assert backend_report("cuda").startswith(("triton", "reference"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "interpreter" in backend_report("cpu")


def run_aot(*modules: str) -> str:
    """Compile every kernel configuration of nemotron_kernels.triton.<module> for sm_90a in one fresh process
    (compiled mode: TRITON_INTERPRET unset); kernels with tl.dot must use tensor cores: wgmma for 64+ row tiles,
    mma.sync for the 16-row decode tiles. Prints one line per kernel: name, mma kind, shared bytes, the wgmma
    operand types (e.g. e4m3.e4m3) and the cubin's resource usage (REG, STACK, LOCAL: spills) from cuobjdump."""
    code = (f"import importlib, os, re, subprocess, tempfile, triton\nmods = {list(modules)!r}\n"
            "cuobjdump = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')\n"
            "for name, ck in (c for m in mods for c in importlib.import_module('nemotron_kernels.triton.' + m)"
            ".aot_compile_all()):\n"
            "    ptx = ck.asm['ptx']\n"
            "    uses_dot = any(key in name for key in ('attn_fwd', 'bwd_dkdv', 'bwd_dq', 'decode_split'))\n"
            "    mma = 'wgmma' if 'wgmma' in ptx else 'mma.sync' if 'mma.sync' in ptx else None\n"
            "    assert not uses_dot or mma, name + ': no tensor-core mma in the PTX'\n"
            "    kinds = sorted(set(re.findall(r'wgmma\\.mma_async\\.sync\\.aligned\\.m\\d+n\\d+k\\d+\\.f32\\.(\\w+\\.\\w+)', ptx)))\n"
            "    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:\n"
            "        f.write(ck.asm['cubin']); f.flush()\n"
            "        res = subprocess.run([cuobjdump, '-res-usage', f.name], capture_output=True, text=True).stdout\n"
            "    usage = re.search(r'REG:\\d+ STACK:\\d+ SHARED:\\d+ LOCAL:\\d+', res)\n"
            "    print(name, '|', mma, ck.metadata.shared, '| wgmma', ','.join(kinds) or '-', '|',"
            " usage.group(0) if usage else 'usage ?')\n")
    return run_compiled(code)


def run_compiled(code: str) -> str:
    """Run `code` in a fresh process in compiled mode (TRITON_INTERPRET unset) from the repository root; -> its
    stdout (the process must succeed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run.stdout


def test_aot_compile_sm90():
    pytest.importorskip("triton")
    out = run_aot("gqa_attention_fwd", "gqa_attention_bwd", "gqa_attention_quant")
    for kernel in ("gqa_attn_fwd", "_gqa_attn_bwd_dkdv_kernel", "_gqa_attn_bwd_dq_kernel", "preprocess",
                   "_fp8_amax_kernel", "_fp8_quantize_kernel"):
        assert kernel in out, out
    # the FP8 forward's 128 x 128 TMA candidates (2, 3 and 4 stages): both products e4m3 wgmmas, no spills
    fp8 = [line for line in out.splitlines() if line.startswith("gqa_attn_fwd fp8e4nv D128")]
    assert len(fp8) == 3, out
    for line in fp8:
        assert "| wgmma e4m3.e4m3 |" in line and "STACK:0" in line and "LOCAL:0" in line, line


# ---------------------------------------------------------------------------------------------- GPU (H200)
@pytest.mark.cuda
@pytest.mark.parametrize("causal", [True, False])
def test_cuda_nemotron_shapes(causal):
    """32 query heads, 2 kv heads, D=128, bf16, S not a multiple of any tile."""
    q, k, v, do = make_qkv(11, 2, 1000, 1000, 32, 2, 128, device="cuda")
    check_fwd_bwd(q, k, v, do, torch.bfloat16, causal)


@pytest.mark.cuda
def test_cuda_fp16_d64_bottom_right():
    q, k, v, do = make_qkv(12, 2, 300, 777, 16, 2, 64, device="cuda")
    check_fwd_bwd(q, k, v, do, torch.float16, True)


@pytest.mark.cuda
def test_cuda_varlen():
    offsets = [0, 1, 130, 130, 1100, 2048]
    q, k, v, do = make_qkv(13, 1, offsets[-1], offsets[-1], 32, 2, 128, device="cuda")
    cu = torch.tensor(offsets, dtype=torch.int32, device="cuda")
    check_fwd_bwd(q, k, v, do, torch.bfloat16, True, cu_seqlens=cu, max_seqlen=970)


@pytest.mark.cuda
def test_cuda_backward_is_deterministic():
    """Two backward runs at 2048 tokens give the same bits (no atomics), and the backward meets the 3x rule against
    the float64 reference (on the first 600 tokens)."""
    q, k, v, do = make_qkv(14, 1, 2048, 2048, 32, 2, 128, device="cuda")
    check_fwd_bwd(q[:, :600], k[:, :600], v[:, :600], do[:, :600], torch.bfloat16, True)
    assert_backward_reproducible(q, k, v, do, torch.bfloat16)


@pytest.mark.cuda
def test_cuda_quantize_fp8_matches_torch():
    """The quantisation kernels round like torch (bit for bit) on random bf16 data, padded and packed."""
    q, _, _, _ = (t.bfloat16() for t in make_qkv(17, 2, 777, 777, 32, 2, 128, device="cuda"))
    for args in ((q, 2), (q[:1], 2, torch.tensor([0, 5, 5, 700, 777], device="cuda"))):
        x8, descale = quantize_fp8(*args)
        x8_ref, descale_ref = quantize_fp8_ref(*args)
        assert torch.equal(descale, descale_ref)
        assert torch.equal(x8.view(torch.uint8), x8_ref.view(torch.uint8))


@pytest.mark.cuda
@pytest.mark.parametrize("causal", [True, False])
def test_cuda_fp8_forward_error_budget(gluon_calls, causal):
    """FP8 e4m3 forward at NemotronH shapes (S 1000: Triton's FP8 kernel, not Gluon's) against the float64
    attention of the same (dequantised) fp8 inputs, within assert_fp8_budget."""
    q, k, v, _ = (t.bfloat16() for t in make_qkv(16, 2, 1000, 1000, 32, 2, 128, device="cuda"))
    (q8, qd), (k8, kd), (v8, vd) = quantize_fp8(2 * q, 2), quantize_fp8(2 * k, 2), quantize_fp8(v, 2)
    o, lse = gqa_attention(q8, k8, v8, causal, q_descale=qd, k_descale=kd, v_descale=vd, return_lse=True)
    assert_fp8_budget(o, lse, q8, k8, v8, qd, kd, vd, causal)
    assert gluon_calls == []


def assert_fp8_budget(o, lse, q8, k8, v8, qd, kd, vd, causal):
    """An FP8 forward's o [B, S, Hq, D] bf16 and lse [B, Hq, S] against the float64 attention of the same
    (dequantised) fp8 inputs (Sq = Sk; descales qd, kd, vd fp32 [B, Hkv], vd with any out_scale folded in).
    Budget: the kernels round P to e4m3 (3 mantissa bits; Triton's scales P by 256 first so small probabilities
    stay normal, Gluon's rounds P itself: those under 2^-6 go subnormal, a loss that weighs little in o): max |err|
    <= 2^-4 * max |v| (a half-ulp of e4m3 on the largest weight) and RMS err <= 2^-5 * RMS(o); lse: the 2x rule plus
    the fp8 tensor-core accumulation budget of `fp8_lse_budget`, row by row."""
    o64, lse64 = gqa_attention_ref(q8.to(F64), k8.to(F64), v8.to(F64), causal, q_descale=qd.to(F64),
                                   k_descale=kd.to(F64), v_descale=vd.to(F64), return_lse=True)
    _, lse_low = gqa_attention_ref(q8, k8, v8, causal, q_descale=qd, k_descale=kd, v_descale=vd, return_lse=True)
    assert o.dtype == torch.bfloat16 and o.shape == q8.shape and torch.isfinite(o).all()
    err = (o.to(F64) - o64).abs()
    v_max = (v8.to(F64) * vd.to(F64)[:, None, :, None]).abs().max().item()
    assert err.max().item() <= 2 ** -4 * v_max, (err.max().item(), v_max)
    assert err.pow(2).mean().sqrt().item() <= 2 ** -5 * o64.pow(2).mean().sqrt().item()
    err, bound = fp8_lse_budget(lse, lse64, lse_low, q8, k8, qd, kd, causal)
    worst = (err / bound).argmax()
    assert (err <= bound).all(), (f"lse: err {err.flatten()[worst]:.3e} > budget {bound.flatten()[worst]:.3e} at "
                                  f"[b, h, s] {tuple(int(i) for i in torch.unravel_index(worst, err.shape))}")


def fp8_method_error(q, k, v, causal, o=None):
    """(relative RMS error, max error / max |v|) against the float64 attention of the unquantised q, k, v of
    `o`, by default of the FP8 method itself: quantize_fp8_ref (per-(batch, kv head) scales) then the reference
    attention of the e4m3 tensors."""
    o64 = gqa_attention_ref(q.to(F64), k.to(F64), v.to(F64), causal)
    if o is None:
        (q8, qd), (k8, kd), (v8, vd) = (quantize_fp8_ref(t, k.shape[2]) for t in (q, k, v))
        o = gqa_attention_ref(q8, k8, v8, causal, q_descale=qd, k_descale=kd, v_descale=vd)
    err = o.to(F64) - o64
    return (err.pow(2).mean().sqrt() / o64.pow(2).mean().sqrt()).item(), (err.abs().max() / v.abs().max()).item()


FP8_BUDGET = (2 ** -3, 2 ** -2)   # relative RMS error, max error / max |v| (e4m3's 3 mantissa bits on q, k, v, P)


@pytest.mark.parametrize("causal", [True, False])
def test_fp8_method_error_against_the_unquantised_inputs(causal):
    """The error budget FP8 attention is held to against BF16 inputs before quantisation (NemotronH heads, scores
    with twice unit spread): the method itself (reference ops) measures 8-9% relative RMS and 14-17% of max |v|
    at most; the budget is 2^-3 and 2^-2."""
    q, k, v, _ = (t.bfloat16() for t in make_qkv(21, 1, 512, 512, 32, 2, 128))
    rms, worst = fp8_method_error(2 * q, 2 * k, v, causal)
    assert 0.02 < rms <= FP8_BUDGET[0] and worst <= FP8_BUDGET[1], (rms, worst)


@pytest.mark.cuda
@pytest.mark.parametrize("causal", [True, False])
def test_cuda_fp8_against_the_unquantised_inputs(causal):
    """The kernel path a model takes (quantize_fp8 on the device, then the FP8 forward; batched S 1024: the Gluon
    kernel) against the float64 attention of the BF16 inputs before quantisation: within FP8_BUDGET, and within
    1.25x the error of the method itself (so the kernels add little to the quantisation's own error)."""
    q, k, v, _ = (t.bfloat16() for t in make_qkv(22, 2, 1024, 1024, 32, 2, 128, device="cuda"))
    q, k = 2 * q, 2 * k
    (q8, qd), (k8, kd), (v8, vd) = (quantize_fp8(t, 2) for t in (q, k, v))
    o = gqa_attention(q8, k8, v8, causal, q_descale=qd, k_descale=kd, v_descale=vd)
    rms, worst = fp8_method_error(q, k, v, causal, o)
    method_rms, method_worst = fp8_method_error(q, k, v, causal)
    assert rms <= FP8_BUDGET[0] and worst <= FP8_BUDGET[1], (rms, worst)
    assert rms <= 1.25 * method_rms and worst <= 1.25 * method_worst + 2 ** -6, (rms, method_rms, worst, method_worst)


@pytest.mark.cuda
@pytest.mark.parametrize("config", [0, 2])            # FWD_CONFIGS: 128x128 through TMA, and through pointers
def test_cuda_fp8_varlen_is_each_sequence_alone(config):
    """Packed FP8 varlen (uneven lengths, NemotronH heads) equals each sequence run alone, bit for bit, at a fixed
    tile: the transposed V (v^T columns = packed keys) must be read from each sequence's start, with the keys of
    the next sequence masked in the last tile."""
    from nemotron_kernels.triton import gqa_attention_common as common
    fwd = common.kernel_module("gqa_attention_fwd")
    lens = [300, 17, 1000, 129]
    cu = torch.tensor([0] + lens, device="cuda").cumsum(0).to(torch.int32)
    q, k, v, _ = (t.bfloat16() for t in make_qkv(21, 1, sum(lens), sum(lens), 32, 2, 128, device="cuda"))
    (q8, qd), (k8, kd), (v8, vd) = (quantize_fp8(t, 2, cu_seqlens=cu) for t in (2 * q, 2 * k, v))
    cfg, scale = fwd.FWD_CONFIGS[config], 128 ** -0.5
    o, lse = fwd.gqa_attention_fwd(q8, k8, v8, True, scale, cu, max(lens), config=cfg, q_descale=qd, k_descale=kd,
                                   v_descale=vd)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o1, lse1 = fwd.gqa_attention_fwd(q8[:, a:b], k8[:, a:b], v8[:, a:b], True, scale, config=cfg,
                                         q_descale=qd[i:i + 1], k_descale=kd[i:i + 1], v_descale=vd[i:i + 1])
        assert torch.equal(o[:, a:b], o1), f"sequence {i} (rows {a}:{b})"
        assert torch.equal(lse[..., a:b], lse1), f"sequence {i} lse"


def fp8_lse_budget(lse, lse64, lse_low, q8, k8, qd, kd, causal):
    """(|lse - lse64|, budget), both [B, Hq, Sq], for FP8 q/k (Sq = Sk, descales [B, Hkv]; lse64 and lse_low: the
    reference on the same dequantised fp8 inputs in float64 and fp32).

    lse is 1-Lipschitz in the scores (|dlse| <= max_j |ds_j| over the row's visible keys), so its error is the
    error of the scores s_j = scale * qd * kd * q8.k8_j. Their products of e4m3 values are exact, and torch sums
    them in fp32 (lse_low: ~1e-5 off), but on sm_90 Triton's fp8 tl.dot keeps the sum in the tensor core's
    reduced-precision accumulator (max_num_imprecise_acc defaults to 2^30 there: no fp32 promotion), which keeps
    ~13 mantissa bits and truncates addends to the running sum's exponent (DeepSeek-V3 report, sec. 3.3.2):
    up to 2^-13 of the magnitude A_j = scale * qd * kd * sum_i |q8_i k8_ji| per wgmma (K = 32), D / 32 = 4 of them
    -> 2^-11 A, taken with a 4x margin for the hardware's unpublished rounding: budget = 2x rule + 2^-9 max_j A_j.
    Here A ~ 30 (budget ~0.06; the H200 run measured 1.5e-2), while a wrong descale row or kv head (amax differ
    by a few %, scores ~13), a wrong scale or an off-by-one causal mask (the first rows see 1-2 keys) moves lse
    by 0.1 or more."""
    bsz, sq, hq, d = q8.shape
    group = hq // k8.shape[2]
    scale = d ** -0.5 * (qd * kd).to(F64).repeat_interleave(group, dim=1)[:, :, None]        # [B, Hq, 1]
    k_abs = k8.float().abs().repeat_interleave(group, dim=2)                                     # [B, Sk, Hq, D]
    mag = torch.einsum("bqhd,bkhd->bhqk", q8.float().abs(), k_abs)                               # [B, Hq, Sq, Sk]
    if causal:
        mag = mag.masked_fill(~torch.ones(sq, sq, dtype=torch.bool, device=mag.device).tril(), 0.0)
    acc_mag = scale * mag.amax(dim=-1).to(F64)                                                   # [B, Hq, Sq]
    lse64 = lse64.to(F64)
    base = (lse_low.to(F64) - lse64).abs().max().item()
    floor = torch.finfo(torch.float32).eps * max(lse64.abs().max().item(), 1.0)
    return (lse.to(F64) - lse64).abs(), FWD * base + floor + 2.0 ** -9 * acc_mag


@pytest.mark.cuda
def test_cuda_torch_compile_and_graph():
    """The custom op traces under torch.compile (fullgraph) and matches eager."""
    q, k, v, _ = (t.bfloat16() for t in make_qkv(15, 1, 256, 256, 32, 2, 128, device="cuda"))
    compiled = torch.compile(lambda a, b, c: gqa_attention(a, b, c), fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), gqa_attention(q, k, v), rtol=0, atol=0)


# ------------------------------------------------------------------------------- Gluon forward (sm_90, triton 3.6)
def gluon_module():
    """nemotron_kernels.triton.gqa_attention_fwd_gluon (imports on any Triton with Gluon; runs on 3.6 only)."""
    pytest.importorskip("triton")
    with pytest.MonkeyPatch.context() as m:
        if not torch.cuda.is_available():
            # conftest imported triton.language in interpreter mode here, and Gluon's import asserts that mode
            m.setenv("TRITON_INTERPRET", "1")
        from nemotron_kernels.triton import gqa_attention_fwd_gluon
    return gqa_attention_fwd_gluon


def skip_unless_gluon(q, k, v, causal, descales=(None, None, None)):
    """Skip unless the dispatch would run the Gluon forward (FP8 with these descales) on these inputs (with
    NK_GLUON unset)."""
    why = gluon_module().gluon_ineligible_reason(q, k, v, causal, None, descales)
    if why is not None:
        pytest.skip(f"the Gluon forward does not run here: {why}")


@pytest.fixture
def gluon_calls(monkeypatch):
    """The Gluon forward's launches during the test: a list that gets (B, S, Hq) per call."""
    return spy_launches(monkeypatch, gluon_module(), "gqa_attention_fwd_gluon", 0)


def spy_launches(monkeypatch, mod, name: str, q_arg: int) -> list:
    """Replace launcher `mod.name` by a spy that records (B, S, Hq) of its q (argument q_arg) per call and launches;
    NK_GLUON unset. -> the list of calls."""
    monkeypatch.delenv("NK_GLUON", raising=False)
    calls, launch = [], getattr(mod, name)

    def spy(*args, **kwargs):
        calls.append(tuple(args[q_arg].shape[:3]))
        return launch(*args, **kwargs)

    monkeypatch.setattr(mod, name, spy)
    return calls


def test_gluon_eligibility_rules(monkeypatch):
    """gluon_eligible on CPU tensors: False on CPU (triton/common.py gluon_platform, tested in test_ssd_scan.py);
    with the platform passed by monkeypatching, True for 32/2 heads D=128 S=256 fp16/bf16 causal or not, and False
    for each disqualifier."""
    mod = gluon_module()

    def qkv(bsz=2, sq=256, sk=256, hq=32, hkv=2, d=128, dtype=torch.bfloat16, device="cpu"):
        return (torch.empty(bsz, s, h, d, dtype=dtype, device=device) for s, h in ((sq, hq), (sk, hkv), (sk, hkv)))

    none3 = (None, None, None)
    assert "cpu" in mod.gluon_ineligible_reason(*qkv(), True, None, none3)
    assert not mod.gluon_eligible(*qkv(), True, None, none3)
    monkeypatch.setattr(mod, "gluon_platform", lambda device: (True, "test"))
    for dtype in (torch.bfloat16, torch.float16):
        for causal in (True, False):
            assert mod.gluon_eligible(*qkv(dtype=dtype), causal, None, none3), (dtype, causal)
    assert mod.gluon_eligible(*qkv(bsz=1, sq=128, sk=128, hq=6, hkv=2), True, None, none3)
    # any S (the last block of a sequence is masked), and packed varlen with B = 1 and max_seqlen given
    for s in (1, 64, 200, 1000):
        assert mod.gluon_eligible(*qkv(sq=s, sk=s), True, None, none3), s
    # batched inputs run on the persistent grid (#SMs CTAs): no B * Hq limit, unlike ragged ones (below)
    assert mod.gluon_eligible(*qkv(bsz=2049, sq=128, sk=128, device="meta"), True, None, none3)
    for dtype in (torch.int32, torch.int64):
        cu = torch.tensor([0, 0, 1, 131, 256], dtype=dtype)
        for causal in (True, False):
            assert mod.gluon_eligible(*qkv(bsz=1), causal, cu, none3, 130), (dtype, causal)
    q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in qkv())
    q16, k16, v16 = qkv(dtype=torch.float16)
    rejected = {
        "dtype": [(*qkv(dtype=torch.float32), True, None, none3), (q8, k8, v16.bfloat16(), True, None, none3),
                  (q16, k16.bfloat16(), v16, True, None, none3)],
        "descales": [(*qkv(), True, None, (torch.ones(1), None, None)),
                     (*qkv(), True, None, (None, None, torch.ones(1)))],
        "varlen without max_seqlen": [(*qkv(bsz=1), True, torch.tensor([0, 128, 256], dtype=torch.int32), none3)],
        "varlen with B = 2": [(*qkv(), True, torch.tensor([0, 128, 256], dtype=torch.int32), none3, 128)],
        "cu_seqlens torch.float32": [(*qkv(bsz=1), True, torch.tensor([0.0, 256.0]), none3, 256)],
        "cu_seqlens on meta": [(*qkv(bsz=1), True, torch.tensor([0, 256], device="meta"), none3, 256)],
        "Sq": [(*qkv(sq=128, sk=256), True, None, none3), (*qkv(sq=256, sk=128), False, None, none3)],
        "empty": [(*qkv(bsz=0), True, None, none3), (*qkv(sq=0, sk=0), True, None, none3)],
        "D 64": [(*qkv(d=64), True, None, none3)],
        "B * Hq = 65568 > 65535": [(*qkv(bsz=2049, sq=100, sk=100, device="meta"), True, None, none3)],
        "num_seqs * Hq = 65536 > 65535": [(*qkv(bsz=1, sq=4096, sk=4096, device="meta"), True,
                                           torch.arange(0, 4097, 2, device="meta"), none3, 2)],
    }
    for reason, cases in rejected.items():
        for args in cases:
            why = mod.gluon_ineligible_reason(*args)
            assert why is not None and reason in why, (reason, why)
            assert not mod.gluon_eligible(*args)
    monkeypatch.setattr(mod, "gluon_platform", lambda device: (False, "off (NK_GLUON=0)"))
    assert mod.gluon_ineligible_reason(*qkv(), True, None, none3) == "off (NK_GLUON=0)"


def test_gluon_fp8_eligibility_rules(monkeypatch):
    """gluon_ineligible_reason for FP8 e4m3 q / k / v (the platform passed by monkeypatching, CPU / meta tensors):
    None for batched S % 128 == 0, D 128, causal or not, any Hq multiple of Hkv, descales None, per tensor (one
    element) or per (batch, kv head) ([B or 1, Hkv]), any out_scale; a reason naming each disqualifier, so
    gqa_attention_fwd keeps those on its Triton FP8 kernel."""
    mod = gluon_module()
    fp8 = torch.float8_e4m3fn

    def qkv(bsz=2, s=256, hq=32, hkv=2, d=128, device="cpu"):
        return tuple(torch.empty(bsz, s, h, d, dtype=fp8, device=device) for h in (hq, hkv, hkv))

    none3 = (None, None, None)
    assert "cpu" in mod.gluon_ineligible_reason(*qkv(), True, None, none3)
    monkeypatch.setattr(mod, "gluon_platform", lambda device: (True, "test"))
    per_tensor = (torch.tensor([0.5]), torch.tensor(2.0), torch.ones(1, 1))
    per_head = (torch.rand(2, 2), torch.rand(1, 2), torch.rand(2, 2, dtype=F64))
    for causal in (True, False):
        for descales in (none3, per_tensor, per_head):
            assert mod.gluon_eligible(*qkv(), causal, None, descales), (causal, descales)
    assert mod.gluon_eligible(*qkv(), True, None, per_head, out_scale=0.25)
    for bsz, s, hq, hkv in ((1, 128, 6, 2), (3, 384, 4, 4), (1, 32768, 32, 2), (4096, 128, 32, 2)):
        assert mod.gluon_eligible(*qkv(bsz, s, hq, hkv, device="meta"), True, None, none3), (bsz, s, hq, hkv)
    q8, k8, v8 = qkv()
    rejected = {
        "FP8 varlen": [(*qkv(bsz=1), True, torch.tensor([0, 128, 256], dtype=torch.int32), none3, 128)],
        "S 200 % 128": [(*qkv(s=200), True, None, none3)],
        "S 64 % 128": [(*qkv(s=64), False, None, none3)],
        "Hq 3 not a multiple of Hkv 2": [(*qkv(hq=3), True, None, none3)],
        "D 64": [(*qkv(d=64), True, None, none3)],
        "Sq": [(q8, k8[:, :128], v8[:, :128], True, None, none3)],
        "empty": [(*qkv(bsz=0), True, None, none3)],
        "dtype": [(q8, k8, v8.bfloat16(), True, None, none3)],
        "q_descale shape (3, 2)": [(*qkv(), True, None, (torch.ones(3, 2), None, None))],
        "v_descale shape (2,)": [(*qkv(), True, None, (None, None, torch.ones(2)))],
        "k_descale: not a float tensor": [(*qkv(), True, None, (None, torch.ones(1, dtype=torch.int32), None)),
                                          (*qkv(), True, None, (None, torch.ones(2, 2, device="meta"), None))],
    }
    for reason, cases in rejected.items():
        for args in cases:
            why = mod.gluon_ineligible_reason(*args)
            assert why is not None and reason in why, (reason, why)
    monkeypatch.setattr(mod, "gluon_platform", lambda device: (False, "off (NK_GLUON=0)"))
    assert mod.gluon_ineligible_reason(*qkv(), True, None, none3) == "off (NK_GLUON=0)"


def test_gluon_fp8_vt_layout_and_descale_table():
    """The FP8 launcher's host side: _vt_fp8 writes V^T [B, Hkv, D, S] with column 32g+16h+4c+2e+p holding key
    32g+16h+8e+2c+p (the order of the kernel's packed P), in one copy, from strided V too; descale_table gives the
    [B, Hkv, 3] fp32 rows the kernels read per tile (None -> 1, one element or [1, Hkv] broadcast, out_scale on v's
    column)."""
    mod = gluon_module()
    v8 = torch.randn(2, 4, 256, 128).to(torch.float8_e4m3fn)[:, 1:3].transpose(1, 2)          # [B, S, Hkv, D]
    assert not v8.is_contiguous()
    vt = mod._vt_fp8(v8)
    assert vt.shape == (2, 2, 128, 256) and vt.is_contiguous() and vt.dtype == v8.dtype
    col = torch.arange(256)
    g, h, c, e, p = col // 32, col // 16 % 2, col // 4 % 4, col // 2 % 2, col % 2
    key = 32 * g + 16 * h + 8 * e + 2 * c + p
    assert sorted(key.tolist()) == list(range(256))
    assert torch.equal(vt.view(torch.uint8), v8.view(torch.uint8).permute(0, 2, 3, 1)[..., key])
    qd, vd = torch.rand(3, 2), torch.rand(1, 2, dtype=F64)
    table = mod.descale_table((qd, torch.tensor([0.5]), vd), 3, 2, "cpu", out_scale=4.0)
    assert table.shape == (3, 2, 3) and table.dtype == torch.float32 and table.is_contiguous()
    assert torch.equal(table[..., 0], qd) and (table[..., 1] == 0.5).all()
    assert torch.equal(table[..., 2], (vd.float() * 4.0).expand(3, 2))
    assert torch.equal(mod.descale_table((None, None, None), 2, 4, "cpu"), torch.ones(2, 4, 3))


def test_gluon_fp8_dispatch(monkeypatch):
    """gqa_attention_fwd (the Triton launcher the op calls) hands eligible FP8 inputs, with their descales and
    out_scale, to the Gluon launcher (spied, the platform passed by monkeypatching, CPU tensors under the
    interpreter) and keeps its Triton FP8 kernel for the rest (S not a multiple of 128 here)."""
    mod = gluon_module()                           # imported before the interpreter mode is set
    from nemotron_kernels.triton import gqa_attention_common as common
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    fwd = common.kernel_module("gqa_attention_fwd")
    for m in (fwd, mod):
        monkeypatch.setattr(m, "gluon_platform", lambda device: (True, "patched"))
    calls = []
    monkeypatch.setattr(mod, "gqa_attention_fwd_gluon", lambda q, k, v, causal, scale, o, lse, *args:
                        calls.append((tuple(q.shape), causal, *args)) or (o, lse))
    q8, k8, v8, qd, kd, vd = make_fp8_exact(3, 2, 256, 4, 2, 128)
    qd, kd, vd = qd.float(), kd.float(), vd.float()
    o, lse = fwd.gqa_attention_fwd(q8, k8, v8, False, 0.1, q_descale=qd, k_descale=kd, v_descale=vd, out_scale=0.5)
    assert o.dtype == torch.bfloat16 and o.shape == q8.shape and lse.shape == (2, 4, 256)
    assert len(calls) == 1
    shape, causal, cu, max_seqlen, descales, out_scale = calls[0]
    assert shape == (2, 256, 4, 128) and causal is False and cu is None and out_scale == 0.5
    assert all(a is b for a, b in zip(descales, (qd, kd, vd)))
    q8, k8, v8, qd, kd, vd = make_fp8_exact(4, 1, 40, 4, 2, 128)          # S 40: Triton (interpreted)
    scale = math.log(2)
    o, lse = fwd.gqa_attention_fwd(q8, k8, v8, True, scale, q_descale=qd.float(), k_descale=kd.float(),
                                   v_descale=vd.float())
    assert len(calls) == 1
    o64 = gqa_attention_ref(q8.to(F64), k8.to(F64), v8.to(F64), True, scale, q_descale=qd, k_descale=kd,
                            v_descale=vd)
    o_low = gqa_attention_ref(q8, k8, v8, True, scale, q_descale=qd.float(), k_descale=kd.float(),
                              v_descale=vd.float())
    assert_error_rule("o", o, o64, o_low, FWD)


def test_gluon_rows_view_keeps_viewable_strides():
    """The TMA descriptors read q / k / v in place when they are [B*S, H*D] rows (a fused projection's head
    slices), and from a contiguous copy otherwise (heads-major, a padded head dim, an unaligned base)."""
    mod = gluon_module()
    bsz, seqlen, hq, hkv, d = 2, 8, 4, 2, 128
    fused = torch.zeros(bsz, seqlen, (hq + 2 * hkv) * d, dtype=torch.bfloat16)
    q, k, v = (t.unflatten(-1, (-1, d)) for t in fused.split([hq * d, hkv * d, hkv * d], dim=-1))
    for t in (q, k, v):
        assert not t.is_contiguous() and mod._rows_view(t) is t
    heads_major = torch.zeros(bsz, hq, seqlen, d, dtype=torch.bfloat16).transpose(1, 2)
    padded = torch.zeros(bsz, seqlen, hq, d + 8, dtype=torch.bfloat16)[..., :d]
    unaligned = torch.zeros(bsz * seqlen * hq * d + 1, dtype=torch.bfloat16)[1:].view(bsz, seqlen, hq, d)
    for t in (heads_major, padded, unaligned):
        view = mod._rows_view(t)
        assert view is not t and view.is_contiguous() and torch.equal(view, t)


def test_gluon_aot_compile_sm90():
    """The Gluon forward compiles for sm_90a in every variant the dispatch launches (bf16 / fp16, causal / full;
    batched on the persistent kernel, varlen, ragged; FP8 batched on the persistent kernel, causal / full): 16-bit
    wgmmas (FP8: e4m3), no spills, shared memory within the H200's 232,448 B a block. Its Gluon API is Triton 3.6's
    (common.GLUON_TRITON): skipped on other versions (CI's 3.8). Checked without importing the module here: Triton
    3.6 cannot import Gluon in a process whose triton.language was first imported in interpreter mode (conftest,
    without a GPU)."""
    triton = pytest.importorskip("triton")
    if not triton.__version__.startswith("3.6"):
        pytest.skip(f"triton {triton.__version__}: the Gluon kernel is built for triton 3.6 only")
    out = run_aot("gqa_attention_fwd_gluon")
    lines = [line for line in out.splitlines() if line.startswith("gqa_attn_fwd_gluon")]
    # (batched persistent, varlen, ragged batched) x 16-bit dtype x causal, + FP8 persistent x causal
    assert len(lines) == 14, out
    assert sum(" fp8 " in line for line in lines) == 2, out
    for line in lines:
        kind = "e4m3.e4m3" if " fp8 " in line else "bf16.bf16" if " bf16 " in line else "f16.f16"
        assert f"| wgmma {kind} |" in line and "STACK:0" in line and "LOCAL:0" in line, line
        assert int(re.search(r"\| wgmma (\d+) \|", line).group(1)) <= 232448, line


def test_gluon_fp8_aot_reads_no_uninitialised_register():
    """The FP8 forward compiles for sm_90a, in the dispatch's variants (persistent, FP8_STAGES, causal and full)
    and the sweep's batched one, to e4m3 wgmmas that read no register before writing it
    (common.live_in_registers): ptxas 12.8 did so when packing the diagonal tile's P (see PACK_E4M3_PRMT), which
    gave NaN on the H200 in session 27. Triton 3.6 only (test_gluon_aot_compile_sm90)."""
    triton = pytest.importorskip("triton")
    if not triton.__version__.startswith("3.6"):
        pytest.skip(f"triton {triton.__version__}: the Gluon kernel is built for triton 3.6 only")
    out = run_compiled("from nemotron_kernels.triton import gqa_attention_fwd_gluon as m\n"
                       "from nemotron_kernels.triton.common import live_in_registers\n"
                       "for persistent, causal in ((False, True), (True, True), (True, False)):\n"
                       "    ck = m.aot_compile_variant(persistent, m.FP8_STAGES, causal, fp8=True)\n"
                       "    print('fp8 persistent', persistent, 'causal', causal, 'f32.e4m3.e4m3' in ck.asm['ptx'],"
                       " live_in_registers(ck.asm['cubin']))\n")
    lines = [line for line in out.splitlines() if line.startswith("fp8 persistent")]
    assert lines == ["fp8 persistent False causal True True []", "fp8 persistent True causal True True []",
                     "fp8 persistent True causal False True []"], out


@pytest.mark.cuda
@pytest.mark.parametrize("bsz,seqlen,hq,hkv,causal,dtype", [
    (2, 1024, 32, 2, True, torch.bfloat16),        # NemotronH heads
    (1, 256, 4, 4, False, torch.float16),          # full attention, one query head per kv head
    (2, 128, 32, 2, True, torch.bfloat16),         # one block: the diagonal only
    (1, 384, 6, 2, True, torch.float16),           # 3 heads per kv head, 3 blocks
    (1, 384, 6, 2, False, torch.bfloat16),
])
def test_cuda_gluon_forward_matches_reference(gluon_calls, bsz, seqlen, hq, hkv, causal, dtype):
    """gqa_attention's forward on the Gluon kernel (one launch): o and lse vs the float64 reference (2x rule)."""
    q, k, v, do = make_qkv(seqlen + hq, bsz, seqlen, seqlen, hq, hkv, 128, device="cuda")
    skip_unless_gluon(*(t.to(dtype) for t in (q, k, v)), causal)
    check_fwd_bwd(q, k, v, do, dtype, causal, backward=False)
    assert gluon_calls == [(bsz, seqlen, hq)]


@pytest.mark.cuda
@pytest.mark.parametrize("causal", [True, False])
def test_cuda_gluon_forward_then_triton_backward(gluon_calls, causal):
    """Autograd through gqa_attention with the Gluon forward: the Triton backward consumes its o and lse (natural
    log); dq, dk, dv vs the float64 reference (3x rule)."""
    q, k, v, do = make_qkv(31, 1, 512, 512, 32, 2, 128, device="cuda")
    skip_unless_gluon(*(t.bfloat16() for t in (q, k, v)), causal)
    check_fwd_bwd(q, k, v, do, torch.bfloat16, causal)
    assert gluon_calls == [(1, 512, 32)]


@pytest.mark.cuda
def test_cuda_gluon_path_is_taken(gluon_calls, monkeypatch):
    """Eligible inputs launch the Gluon kernel once; NK_GLUON=0 sends them to the Triton kernel (no launch); the
    two agree (o within a bf16 step of its largest value, lse within 1e-3)."""
    q, k, v = (t.bfloat16() for t in make_qkv(32, 2, 512, 512, 32, 2, 128, device="cuda")[:3])
    skip_unless_gluon(q, k, v, True)
    o, lse = gqa_attention(q, k, v, return_lse=True)
    assert gluon_calls == [(2, 512, 32)]
    monkeypatch.setenv("NK_GLUON", "0")
    o_triton, lse_triton = gqa_attention(q, k, v, return_lse=True)
    assert len(gluon_calls) == 1
    torch.testing.assert_close(o, o_triton, rtol=0, atol=2 ** -7 * o_triton.abs().max().item())
    torch.testing.assert_close(lse, lse_triton, rtol=0, atol=1e-3)


@pytest.mark.cuda
def test_cuda_gluon_strided_inputs():
    """q / k / v as head slices of one fused projection (read in place through the descriptors' row stride) and
    heads-major (copied first) give the contiguous inputs' o and lse bit for bit."""
    mod = gluon_module()
    hq, hkv, d = 8, 2, 128
    q, k, v = (t.bfloat16() for t in make_qkv(33, 2, 256, 256, hq, hkv, d, device="cuda")[:3])
    skip_unless_gluon(q, k, v, True)
    want = gqa_attention(q, k, v, return_lse=True)
    fused = torch.cat([q.flatten(2), k.flatten(2), v.flatten(2)], dim=-1)
    sliced = [t.unflatten(-1, (-1, d)) for t in fused.split([hq * d, hkv * d, hkv * d], dim=-1)]
    assert all(mod._rows_view(t) is t for t in sliced)
    heads_major = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    for ins in (sliced, heads_major):
        got = gqa_attention(*ins, return_lse=True)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def make_fp8_per_head(seed, bsz, seqlen, hq, hkv):
    """FP8 e4m3 q [B, S, Hq, 128], k / v [B, S, Hkv, 128] on the GPU, quantised per (batch, kv head) by
    quantize_fp8 from bf16 data whose scale differs by (batch, kv head): q by 2^e, k by 2^-e (the scores keep the
    test_cuda_fp8_forward_error_budget statistics), v by 2^f, e in -2..2, f in -3..3, so a tile reading another
    (batch, kv head)'s descales is off by a power of 2. -> (q8, k8, v8, qd, kd, vd), descales fp32 [B, Hkv]."""
    q, k, v, _ = (t.bfloat16() for t in make_qkv(seed, bsz, seqlen, seqlen, hq, hkv, 128, device="cuda"))
    g = torch.Generator().manual_seed(seed)
    e = (2.0 ** torch.randint(-2, 3, (bsz, hkv), generator=g)).cuda()
    f = (2.0 ** torch.randint(-3, 4, (bsz, hkv), generator=g)).cuda()
    q_scale = e.repeat_interleave(hq // hkv, dim=1)[:, None, :, None].bfloat16()
    (q8, qd), (k8, kd), (v8, vd) = (quantize_fp8(2 * q * q_scale, hkv), quantize_fp8(2 * k / e[:, None, :, None],
                                    hkv), quantize_fp8(v * f[:, None, :, None], hkv))
    return q8, k8, v8, qd, kd, vd


@pytest.mark.cuda
@pytest.mark.parametrize("bsz,seqlen,hq,hkv,causal,descales", [
    (2, 128, 32, 2, True, "per_head"),           # one block, the diagonal only: 64 tiles, fewer than SMs
    (2, 1024, 32, 2, True, "per_head"),          # NemotronH heads, 8 blocks: 512 tiles, ~4 waves of the grid
    (2, 1024, 32, 2, False, "per_head"),
    (2, 2048, 32, 2, True, "per_tensor"),
    (1, 384, 6, 2, True, "per_tensor"),          # 3 heads per kv head, 3 blocks
    (2, 256, 4, 4, False, "numbers"),            # one query head per kv head; Python numbers: out_scale
])
def test_cuda_gluon_fp8_forward_matches_reference(gluon_calls, bsz, seqlen, hq, hkv, causal, descales):
    """gqa_attention's FP8 e4m3 forward on the Gluon kernel (one launch, V^T built in it) with descales per (batch,
    kv head) ([B, Hkv] from quantize_fp8), per tensor (one-element tensors: their first row's) or Python numbers
    (the same values; the op folds q's and k's into the scale, v's into out_scale): o and lse vs the float64
    attention of the dequantised inputs within assert_fp8_budget, with the outputs' memory poisoned first (a row
    left unwritten would be NaN)."""
    q8, k8, v8, qd, kd, vd = make_fp8_per_head(seqlen + hq + 70, bsz, seqlen, hq, hkv)
    if descales == "per_head":
        args = (qd, kd, vd)
    else:
        qd, kd, vd = (d[:1, :1].expand(bsz, hkv).contiguous() for d in (qd, kd, vd))      # [B, Hkv] for the budget
        args = (qd[0, :1], kd[0, :1], vd[:1, :1]) if descales == "per_tensor" else (qd[0, 0].item(),
                                                                                     kd[0, 0].item(), vd[0, 0].item())
    skip_unless_gluon(q8, k8, v8, causal, tuple(a if isinstance(a, torch.Tensor) else None for a in args))
    poison_cuda_cache()
    o, lse = gqa_attention(q8, k8, v8, causal, q_descale=args[0], k_descale=args[1], v_descale=args[2],
                           return_lse=True)
    assert gluon_calls == [(bsz, seqlen, hq)]
    assert_fp8_budget(o, lse, q8, k8, v8, qd, kd, vd, causal)


@pytest.mark.cuda
def test_cuda_gluon_fp8_path_is_taken(gluon_calls, monkeypatch):
    """Eligible FP8 inputs launch the Gluon forward (one launch a call) and give the same bits again; q / k / v as
    head slices of one fused e4m3 projection (q and k read in place) give them too; NK_GLUON=0 sends the inputs to
    the Triton FP8 kernel (no launch), and both meet assert_fp8_budget."""
    q8, k8, v8, qd, kd, vd = make_fp8_per_head(71, 2, 512, 32, 2)
    skip_unless_gluon(q8, k8, v8, True, (qd, kd, vd))
    kw = dict(q_descale=qd, k_descale=kd, v_descale=vd, return_lse=True)
    o, lse = gqa_attention(q8, k8, v8, **kw)
    again = gqa_attention(q8, k8, v8, **kw)
    assert torch.equal(o, again[0]) and torch.equal(lse, again[1])
    fused = torch.cat([t.flatten(2).view(torch.uint8) for t in (q8, k8, v8)], dim=-1).view(torch.float8_e4m3fn)
    sliced = [t.unflatten(-1, (-1, 128)) for t in fused.split([32 * 128, 2 * 128, 2 * 128], dim=-1)]
    assert all(gluon_module()._rows_view(t) is t for t in sliced)
    got = gqa_attention(*sliced, **kw)
    assert torch.equal(got[0], o) and torch.equal(got[1], lse)
    assert gluon_calls == [(2, 512, 32)] * 3
    assert_fp8_budget(o, lse, q8, k8, v8, qd, kd, vd, True)
    monkeypatch.setenv("NK_GLUON", "0")
    o_triton, lse_triton = gqa_attention(q8, k8, v8, **kw)
    assert len(gluon_calls) == 3
    assert_fp8_budget(o_triton, lse_triton, q8, k8, v8, qd, kd, vd, True)


# ------------------------------------------------------------------------------ Gluon backward (sm_90, triton 3.6)
def gluon_bwd_module():
    """nemotron_kernels.triton.gqa_attention_bwd_gluon (imports on any Triton with Gluon; runs on 3.6 only)."""
    pytest.importorskip("triton")
    with pytest.MonkeyPatch.context() as m:
        if not torch.cuda.is_available():
            m.setenv("TRITON_INTERPRET", "1")        # as gluon_module: conftest's interpreter-mode triton.language
        from nemotron_kernels.triton import gqa_attention_bwd_gluon
    return gqa_attention_bwd_gluon


def skip_unless_gluon_bwd(q, k, v, causal):
    """Skip unless gqa_attention_bwd would run the Gluon backward on these inputs (with NK_GLUON unset)."""
    why = gluon_bwd_module().gluon_bwd_ineligible_reason(q, k, v, causal, None)
    if why is not None:
        pytest.skip(f"the Gluon backward does not run here: {why}")


@pytest.fixture
def gluon_bwd_calls(monkeypatch):
    """The Gluon backward's launches during the test: a list that gets (B, S, Hq) per call."""
    return spy_launches(monkeypatch, gluon_bwd_module(), "gqa_attention_bwd_gluon", 1)


def test_gluon_bwd_eligibility_rules(monkeypatch):
    """gluon_bwd_ineligible_reason on CPU / meta tensors: the platform's reason first (CPU here); with the platform
    passed by monkeypatching, None for fp16 / bf16, causal or not, any Hq multiple of Hkv, and a reason naming each
    disqualifier."""
    mod = gluon_bwd_module()

    def qkv(bsz=2, sq=256, sk=256, hq=32, hkv=2, d=128, dtype=torch.bfloat16, device="cpu"):
        return tuple(torch.empty(bsz, s, h, d, dtype=dtype, device=device) for s, h in ((sq, hq), (sk, hkv), (sk, hkv)))

    assert mod.gluon_bwd_ineligible_reason(*qkv(), True, None) is not None              # CPU tensors
    fwd = gluon_module()                           # its inputs_ineligible_reason checks the platform for both
    monkeypatch.setattr(fwd, "gluon_platform", lambda device: (False, "platform says no"))
    assert mod.gluon_bwd_ineligible_reason(*qkv(), True, None) == "platform says no"
    monkeypatch.setattr(fwd, "gluon_platform", lambda device: (True, "patched"))
    for dtype in (torch.bfloat16, torch.float16):
        for causal in (True, False):
            assert mod.gluon_bwd_ineligible_reason(*qkv(dtype=dtype), causal, None) is None, (dtype, causal)
    for hq, hkv in ((6, 2), (4, 4), (1, 1), (48, 2)):
        assert mod.gluon_bwd_ineligible_reason(*qkv(bsz=1, sq=128, sk=128, hq=hq, hkv=hkv), True, None) is None
    for s in (1, 64, 200, 1000):                                                          # any S
        assert mod.gluon_bwd_ineligible_reason(*qkv(sq=s, sk=s), False, None) is None, s
    for dtype in (torch.int32, torch.int64):                                              # packed varlen
        cu = torch.tensor([0, 0, 1, 131, 256], dtype=dtype)
        for causal in (True, False):
            assert mod.gluon_bwd_ineligible_reason(*qkv(bsz=1), causal, cu, 130) is None, (dtype, causal)
    q16, k16, v16 = qkv(dtype=torch.float16)
    q, k, v = qkv()
    big = 128 * 65535 + 1                                                                 # cdiv(S, 128) past grid y
    meta_cu = torch.tensor([0, big], device="meta")
    rejected = {
        "dtype": [(*qkv(dtype=torch.float32), True, None),
                  (*(t.to(torch.float8_e4m3fn) for t in qkv()), True, None), (q16, k16.bfloat16(), v16, True, None)],
        "varlen without max_seqlen": [(*qkv(bsz=1), True, torch.tensor([0, 128, 256], dtype=torch.int32))],
        "varlen with B = 2": [(*qkv(), True, torch.tensor([0, 128, 256], dtype=torch.int32), 128)],
        "Sq": [(*qkv(sq=128, sk=256), True, None), (*qkv(sq=256, sk=128), False, None)],
        "empty": [(*qkv(bsz=0), True, None), (*qkv(sq=0, sk=0), True, None)],
        "D 64": [(*qkv(d=64), True, None)],
        "Hq 3 not a multiple of Hkv 2": [(*qkv(hq=3, hkv=2), True, None)],
        "cdiv(S, 128) = 65536 > 65535": [(*qkv(bsz=1, sq=big, sk=big, hq=1, hkv=1, device="meta"), True, None),
                                         (*qkv(bsz=1, sq=big, sk=big, hq=1, hkv=1, device="meta"), True, meta_cu,
                                          big)],
        "devices differ": [(q, k.to("meta"), v, True, None)],
    }
    for reason, cases in rejected.items():
        for args in cases:
            why = mod.gluon_bwd_ineligible_reason(*args)
            assert why is not None and reason in why, (reason, why)


def test_gluon_bwd_dispatch(monkeypatch):
    """gqa_attention_bwd (the Triton launcher the op calls) hands eligible inputs to the Gluon launcher (spied, with
    the platform passed by monkeypatching, CPU tensors under the interpreter) and keeps its Triton kernels for
    ineligible ones."""
    mod = gluon_bwd_module()                       # imported before the interpreter mode is set
    from nemotron_kernels.triton import gqa_attention_common as common
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    bwd = common.kernel_module("gqa_attention_bwd")
    for m in (bwd, gluon_module()):
        monkeypatch.setattr(m, "gluon_platform", lambda device: (True, "patched"))
    calls = []
    monkeypatch.setattr(mod, "gqa_attention_bwd_gluon",
                        lambda do, q, *args: calls.append((tuple(q.shape), *args[-2:])) or "gluon")

    def run(seqlen, d, cu=None, max_seqlen=None):
        q, k, v, do = (t.to(torch.float16) for t in make_qkv(seqlen + d, 1, seqlen, seqlen, 4, 2, d))
        o, lse = q.flip(1), torch.full((1, 4, seqlen), 3.0)                   # any o and lse: shapes only
        return bwd.gqa_attention_bwd(do, q, k, v, o, lse, True, d ** -0.5, cu, max_seqlen)

    assert run(128, 128) == "gluon" and calls == [((1, 128, 4, 128), None, None)]
    assert run(200, 128) == "gluon" and calls[-1] == ((1, 200, 4, 128), None, None)     # any S
    cu = torch.tensor([0, 70, 70, 200], dtype=torch.int32)
    assert run(200, 128, cu, 130) == "gluon" and calls[-1] == ((1, 200, 4, 128), cu, 130)  # varlen
    dq, dk, dv = run(48, 16)                                                   # D 16: Triton
    assert len(calls) == 3 and dq.shape == (1, 48, 4, 16) and dk.shape == dv.shape == (1, 48, 2, 16)


def test_gluon_bwd_aot_compile_sm90():
    """The Gluon backward compiles for sm_90a in every variant the dispatch launches (dk/dv and dq, bf16 / fp16,
    causal / full): 16-bit wgmmas, no spills. Triton 3.6's Gluon API: skipped on other versions (CI's 3.8); checked
    in a fresh process, like test_gluon_aot_compile_sm90."""
    triton = pytest.importorskip("triton")
    if not triton.__version__.startswith("3.6"):
        pytest.skip(f"triton {triton.__version__}: the Gluon kernels are built for triton 3.6 only")
    out = run_aot("gqa_attention_bwd_gluon")
    lines = [line for line in out.splitlines() if line.startswith(("gqa_attn_bwd_dkdv_gluon", "gqa_attn_bwd_dq_gluon"))]
    assert len(lines) == 24, out                   # 2 kernels x (batched, varlen, ragged batched) x dtype x causal
    for line in lines:
        kind = "bf16.bf16" if " bf16 " in line else "f16.f16"
        assert f"| wgmma {kind} |" in line and "LOCAL:0" in line, line
        # ragged dk/dv: ptxas keeps 4-6 scalars (16-24 B) on the stack, stored before the query-tile loops and
        # reloaded after them (one L1 load per diagonal tile); everything else: no stack
        ragged_dkdv = "dkdv" in line and ("varlen" in line or "ragged" in line)
        stack = int(line.split("STACK:")[1].split()[0])
        assert stack <= (32 if ragged_dkdv else 0), line


@pytest.mark.cuda
@pytest.mark.parametrize("bsz,seqlen,hq,hkv,causal,dtype", [
    (2, 1024, 32, 2, True, torch.bfloat16),        # NemotronH heads
    (2, 1024, 32, 2, False, torch.bfloat16),
    (1, 256, 4, 4, True, torch.float16),           # one query head per kv head
    (1, 256, 4, 4, False, torch.float16),
    (2, 128, 32, 2, True, torch.bfloat16),         # one key block: the diagonal only
    (1, 384, 6, 2, False, torch.float16),          # 3 heads per kv head, full attention
])
def test_cuda_gluon_bwd_matches_reference(gluon_bwd_calls, bsz, seqlen, hq, hkv, causal, dtype):
    """gqa_attention's backward on the Gluon kernels (one launch): dq, dk, dv vs the float64 reference (3x rule)."""
    q, k, v, do = make_qkv(seqlen + hq + 50, bsz, seqlen, seqlen, hq, hkv, 128, device="cuda")
    skip_unless_gluon_bwd(*(t.to(dtype) for t in (q, k, v)), causal)
    check_fwd_bwd(q, k, v, do, dtype, causal)
    assert gluon_bwd_calls == [(bsz, seqlen, hq)]


@pytest.mark.cuda
def test_cuda_gluon_bwd_path_is_taken(gluon_bwd_calls, monkeypatch):
    """On the same o and lse, gqa_attention_bwd launches the Gluon backward once; NK_GLUON=0 sends it to the Triton
    kernels (no launch); dq, dk, dv agree within 2^-6 of each gradient's largest magnitude."""
    from nemotron_kernels.triton import gqa_attention_common as common
    q, k, v, do = (t.bfloat16() for t in make_qkv(52, 2, 512, 512, 32, 2, 128, device="cuda"))
    skip_unless_gluon_bwd(q, k, v, True)
    bwd = common.kernel_module("gqa_attention_bwd")
    o, lse = gqa_attention(q, k, v, return_lse=True)
    gluon = bwd.gqa_attention_bwd(do, q, k, v, o, lse, True, 128 ** -0.5)
    assert gluon_bwd_calls == [(2, 512, 32)]
    monkeypatch.setenv("NK_GLUON", "0")
    triton_grads = bwd.gqa_attention_bwd(do, q, k, v, o, lse, True, 128 ** -0.5)
    assert len(gluon_bwd_calls) == 1
    for name, g, t in zip(("dq", "dk", "dv"), gluon, triton_grads):
        assert g.shape == t.shape and g.dtype == t.dtype, name
        torch.testing.assert_close(g, t, rtol=0, atol=2 ** -6 * t.abs().max().item(), msg=name)


@pytest.mark.cuda
def test_cuda_gluon_bwd_is_deterministic(gluon_bwd_calls):
    """Two Gluon backward runs at 2048 tokens (NemotronH heads) give the same bits (no atomics)."""
    q, k, v, do = make_qkv(53, 1, 2048, 2048, 32, 2, 128, device="cuda")
    skip_unless_gluon_bwd(*(t.bfloat16() for t in (q, k, v)), True)
    assert_backward_reproducible(q, k, v, do, torch.bfloat16)
    assert gluon_bwd_calls == [(1, 2048, 32)] * 2


@pytest.mark.cuda
def test_cuda_gluon_bwd_strided_inputs(gluon_bwd_calls):
    """q / k / v as head slices of one fused projection (read in place through the descriptors' row stride) and
    heads-major (copied first) give the contiguous inputs' dq, dk, dv bit for bit."""
    from nemotron_kernels.triton import gqa_attention_common as common
    hq, hkv, d = 8, 2, 128
    q, k, v, do = (t.bfloat16() for t in make_qkv(54, 2, 256, 256, hq, hkv, d, device="cuda"))
    skip_unless_gluon_bwd(q, k, v, True)
    bwd = common.kernel_module("gqa_attention_bwd")
    o, lse = gqa_attention(q, k, v, return_lse=True)
    want = bwd.gqa_attention_bwd(do, q, k, v, o, lse, True, d ** -0.5)
    fused = torch.cat([q.flatten(2), k.flatten(2), v.flatten(2)], dim=-1)
    sliced = [t.unflatten(-1, (-1, d)) for t in fused.split([hq * d, hkv * d, hkv * d], dim=-1)]
    heads_major = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    for ins in (sliced, heads_major):
        got = bwd.gqa_attention_bwd(do, *ins, o, lse, True, d ** -0.5)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert len(gluon_bwd_calls) == 3


# ------------------------------------------------------------------ Gluon, packed varlen and any S (sm_90, triton 3.6)
VARLEN_LENGTHS = [0, 1, 130, 128, 700, 33]          # empty, one token, past / at a block, long, short
VARLEN_OFFSETS = [0, 0, 1, 131, 259, 959, 992]


def skip_unless_gluon_fwd_bwd(q, k, v, causal, cu_seqlens=None, max_seqlen=None):
    """Skip unless gqa_attention would run both the Gluon forward and backward on these inputs."""
    why = gluon_module().gluon_ineligible_reason(q, k, v, causal, cu_seqlens, (None, None, None), max_seqlen)
    why = why or gluon_bwd_module().gluon_bwd_ineligible_reason(q, k, v, causal, cu_seqlens, max_seqlen)
    if why is not None:
        pytest.skip(f"the Gluon kernels do not run here: {why}")


def poison_cuda_cache():
    """Fill the caching allocator's free memory with NaN (its large-block pool, and small blocks of up to 1 MB), so
    fresh torch.empty outputs hold NaN where a kernel leaves them unwritten."""
    torch.full((256 << 20, ), float("nan"), dtype=torch.float32, device="cuda")
    [torch.full((n, ), float("nan"), dtype=torch.float32, device="cuda") for n in (1 << 16, 1 << 18) for _ in range(32)]


@pytest.mark.cuda
@pytest.mark.parametrize("causal,cu_dtype", [(True, torch.int32), (False, torch.int64)])
def test_cuda_gluon_varlen_matches_reference(gluon_calls, gluon_bwd_calls, causal, cu_dtype):
    """Packed sequences of lengths 0, 1, 130, 128, 700, 33 (NemotronH heads, bf16) through the Gluon forward and
    backward (one launch each): o, lse [1, Hq, T], dq, dk, dv vs the float64 reference (2x / 3x rule) on every
    row, with the outputs' memory poisoned first (a row left unwritten would be NaN)."""
    q, k, v, do = make_qkv(61, 1, VARLEN_OFFSETS[-1], VARLEN_OFFSETS[-1], 32, 2, 128, device="cuda")
    cu = torch.tensor(VARLEN_OFFSETS, dtype=cu_dtype, device="cuda")
    skip_unless_gluon_fwd_bwd(*(t.bfloat16() for t in (q, k, v)), causal, cu, max(VARLEN_LENGTHS))
    poison_cuda_cache()
    check_fwd_bwd(q, k, v, do, torch.bfloat16, causal, cu_seqlens=cu, max_seqlen=max(VARLEN_LENGTHS))
    assert gluon_calls == [(1, VARLEN_OFFSETS[-1], 32)] and gluon_bwd_calls == [(1, VARLEN_OFFSETS[-1], 32)]


@pytest.mark.cuda
@pytest.mark.parametrize("bsz,seqlen,causal", [(2, 200, True), (2, 200, False), (3, 50, True), (1, 1, True),
                                               (2, 1000, True), (1, 129, False)])
def test_cuda_gluon_any_length_matches_reference(gluon_calls, gluon_bwd_calls, bsz, seqlen, causal):
    """Batched S not a multiple of 128 (the last block of each batch row masked, its neighbour's rows untouched;
    S < 64 leaves a warpgroup's rows all past the end) through the Gluon kernels: the 2x / 3x rule, poisoned."""
    q, k, v, do = make_qkv(seqlen + bsz, bsz, seqlen, seqlen, 32, 2, 128, device="cuda")
    skip_unless_gluon_fwd_bwd(*(t.bfloat16() for t in (q, k, v)), causal)
    poison_cuda_cache()
    check_fwd_bwd(q, k, v, do, torch.bfloat16, causal)
    assert gluon_calls == [(bsz, seqlen, 32)] and gluon_bwd_calls == [(bsz, seqlen, 32)]


@pytest.mark.cuda
@pytest.mark.parametrize("causal", [True, False])
def test_cuda_gluon_varlen_matches_triton(gluon_calls, gluon_bwd_calls, monkeypatch, causal):
    """The Gluon varlen path against the Triton kernels (NK_GLUON=0) on the same packed inputs, with a max_seqlen
    larger than any sequence (whole grid rows past every end): o within a bf16 step of its largest value, lse
    within 1e-3, dq, dk, dv within 2^-6 of each gradient's largest magnitude; two Gluon runs give the same bits."""
    q, k, v, do = (t.bfloat16() for t in make_qkv(62, 1, VARLEN_OFFSETS[-1], VARLEN_OFFSETS[-1], 32, 2, 128,
                                                  device="cuda"))
    cu = torch.tensor(VARLEN_OFFSETS, dtype=torch.int32, device="cuda")
    skip_unless_gluon_fwd_bwd(q, k, v, causal, cu, 1000)

    def run():
        ins = [t.clone().requires_grad_() for t in (q, k, v)]
        o, lse = gqa_attention(*ins, causal=causal, cu_seqlens=cu, max_seqlen=1000, return_lse=True)
        o.backward(do)
        return o.detach(), lse, *(t.grad for t in ins)

    gluon, again = run(), run()
    assert len(gluon_calls) == 2 and len(gluon_bwd_calls) == 2
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), gluon, again):
        assert torch.equal(a, b), f"{name}: two Gluon runs differ"
    monkeypatch.setenv("NK_GLUON", "0")
    triton_out = run()
    assert len(gluon_calls) == 2 and len(gluon_bwd_calls) == 2
    for name, g, t in zip(("o", "lse", "dq", "dk", "dv"), gluon, triton_out):
        assert g.shape == t.shape and g.dtype == t.dtype, name
        atol = 1e-3 if name == "lse" else (2 ** -7 if name == "o" else 2 ** -6) * t.abs().max().item()
        torch.testing.assert_close(g, t, rtol=0, atol=atol, msg=name)
