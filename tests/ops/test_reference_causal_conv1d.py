"""causal_conv1d_ref / causal_conv1d_update_ref against torch's conv1d, per-sequence runs and full recomputes."""
import pytest
import torch
import torch.nn.functional as F

from nemotron_kernels.reference.causal_conv1d import causal_conv1d_ref, causal_conv1d_update_ref

F64 = torch.float64
CH = 6


def randn(g, *shape, dtype=F64):
    return torch.randn(*shape, generator=g, dtype=F64).to(dtype)


def torch_conv(x, weight, bias, activation):
    """Depthwise conv1d with K-1 zeros of left padding, truncated to L outputs. x [B, L, C] -> [B, L, C]."""
    seqlen, width = x.shape[1], weight.shape[1]
    y = F.conv1d(x.transpose(1, 2), weight[:, None, :], bias, padding=width - 1, groups=x.shape[2])[..., :seqlen]
    y = F.silu(y) if activation == "silu" else y
    return y.transpose(1, 2)


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("seqlen", [1, 2, 5, 33])
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("use_bias", [True, False])
def test_matches_torch_conv1d(width, seqlen, activation, use_bias):
    g = torch.Generator().manual_seed(width * 100 + seqlen)
    x, weight, bias = randn(g, 2, seqlen, CH), randn(g, CH, width), randn(g, CH) if use_bias else None
    y = causal_conv1d_ref(x, weight, bias, activation=activation)
    torch.testing.assert_close(y, torch_conv(x, weight, bias, activation), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("width", [1, 4])
def test_final_state_is_last_inputs(width):
    g = torch.Generator().manual_seed(1)
    x, weight = randn(g, 3, 2, CH), randn(g, CH, width)
    _, final = causal_conv1d_ref(x, weight, return_final_state=True)
    assert final.shape == (3, CH, width - 1) and final.dtype == F64
    expected = torch.cat([torch.zeros(3, CH, max(width - 1 - 2, 0), dtype=F64), x.transpose(1, 2)], dim=-1)
    torch.testing.assert_close(final, expected[..., expected.shape[-1] - (width - 1):], rtol=0, atol=0)


@pytest.mark.parametrize("split", [1, 2, 3, 7, 11])
def test_initial_state_chaining(split):
    """Running [0, split) then [split, L) from the first part's final state == running [0, L) at once."""
    g = torch.Generator().manual_seed(split)
    x, weight, bias, init = randn(g, 2, 12, CH), randn(g, CH, 4), randn(g, CH), randn(g, 2, CH, 3)
    y_all, final_all = causal_conv1d_ref(x, weight, bias, initial_state=init, return_final_state=True)
    y1, state = causal_conv1d_ref(x[:, :split], weight, bias, initial_state=init, return_final_state=True)
    y2, final2 = causal_conv1d_ref(x[:, split:], weight, bias, initial_state=state, return_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_all, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(final2, final_all, rtol=0, atol=0)


@pytest.mark.parametrize("use_init", [False, True])
def test_varlen_equals_per_sequence(use_init):
    lens = [5, 1, 2, 9, 3]   # sequences shorter than K-1 included
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    g = torch.Generator().manual_seed(3)
    x, weight, bias = randn(g, 1, sum(lens), CH), randn(g, CH, 4), randn(g, CH)
    init = randn(g, len(lens), CH, 3) if use_init else None
    y, final = causal_conv1d_ref(x, weight, bias, cu_seqlens=cu, initial_state=init, return_final_state=True)
    assert final.shape == (len(lens), CH, 3)
    for s, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        y_s, final_s = causal_conv1d_ref(x[:, start:end], weight, bias, return_final_state=True,
                                         initial_state=None if init is None else init[s:s + 1])
        torch.testing.assert_close(y[:, start:end], y_s, rtol=0, atol=0)
        torch.testing.assert_close(final[s:s + 1], final_s, rtol=0, atol=0)


@pytest.mark.parametrize("state_dtype", [F64, torch.float32])
def test_prefill_then_update_matches_full_recompute(state_dtype):
    g = torch.Generator().manual_seed(4)
    bsz, prefill, steps, nslots = 3, 5, 4, 6
    x, weight, bias = randn(g, bsz, prefill + steps, CH), randn(g, CH, 4), randn(g, CH)
    y_full, final_full = causal_conv1d_ref(x, weight, bias, return_final_state=True)
    _, state = causal_conv1d_ref(x[:, :prefill], weight, bias, return_final_state=True)
    slot_idx = torch.tensor([4, 0, 2], dtype=torch.int32)
    conv_state = randn(g, nslots, CH, 3, dtype=state_dtype)
    untouched = conv_state.clone()
    conv_state[slot_idx.long()] = state.to(state_dtype)
    for t in range(prefill, prefill + steps):
        y_t = causal_conv1d_update_ref(x[:, t], conv_state, weight, bias, slot_idx=slot_idx)
        tol = 1e-13 if state_dtype == F64 else 1e-6
        torch.testing.assert_close(y_t, y_full[:, t], rtol=tol, atol=tol)
    torch.testing.assert_close(conv_state[slot_idx.long()], final_full.to(state_dtype), rtol=0, atol=0)
    others = [s for s in range(nslots) if s not in slot_idx.tolist()]
    torch.testing.assert_close(conv_state[others], untouched[others], rtol=0, atol=0)


def test_update_without_slot_idx_uses_first_rows():
    g = torch.Generator().manual_seed(5)
    x, weight, conv_state = randn(g, 2, CH), randn(g, CH, 4), randn(g, 3, CH, 3)
    before = conv_state.clone()
    y = causal_conv1d_update_ref(x, conv_state, weight, activation=None)
    window = torch.cat([before[:2], x[:, :, None]], dim=-1)
    torch.testing.assert_close(y, (window * weight).sum(-1), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(conv_state[:2], window[..., 1:], rtol=0, atol=0)
    torch.testing.assert_close(conv_state[2], before[2], rtol=0, atol=0)


def test_bf16_output_dtype():
    g = torch.Generator().manual_seed(6)
    x, weight, bias = randn(g, 2, 9, CH, dtype=torch.bfloat16), randn(g, CH, 4), randn(g, CH)
    y, final = causal_conv1d_ref(x, weight, bias, return_final_state=True)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.bfloat16
    expected = torch_conv(x.to(F64), weight, bias, "silu")
    torch.testing.assert_close(y.to(F64), expected, rtol=1e-2, atol=1e-2)


def test_bad_inputs():
    g = torch.Generator().manual_seed(7)
    x, weight, conv_state = randn(g, 2, 5, CH), randn(g, CH, 4), randn(g, 3, CH, 3)
    with pytest.raises(ValueError, match="x must be 3-D"):
        causal_conv1d_ref(x[0], weight)
    with pytest.raises(ValueError, match="weight must have shape"):
        causal_conv1d_ref(x, weight[:4])
    with pytest.raises(ValueError, match="activation must be None or 'silu'"):
        causal_conv1d_ref(x, weight, activation="relu")
    with pytest.raises(ValueError, match="initial_state must have shape"):
        causal_conv1d_ref(x, weight, initial_state=randn(g, 2, CH, 4))
    with pytest.raises(ValueError, match="batch dimension must be 1"):
        causal_conv1d_ref(x, weight, cu_seqlens=torch.tensor([0, 5], dtype=torch.int32))
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        causal_conv1d_update_ref(x[:, 0].to(torch.int64), conv_state, weight)
    with pytest.raises(ValueError, match=r"slot_idx values must lie in \[0, S_slots=3\)"):
        causal_conv1d_update_ref(x[:, 0], conv_state, weight, slot_idx=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="slot_idx must not repeat"):
        causal_conv1d_update_ref(x[:, 0], conv_state, weight, slot_idx=torch.tensor([1, 1]))
    with pytest.raises(TypeError, match="slot_idx must have dtype"):
        causal_conv1d_update_ref(x[:, 0], conv_state, weight, slot_idx=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="conv_state must have shape"):
        causal_conv1d_update_ref(x[:, 0], conv_state[..., :2], weight)


def test_gradcheck_varlen_with_state():
    g = torch.Generator().manual_seed(8)
    cu = torch.tensor([0, 2, 7], dtype=torch.int32)
    x, weight, bias, init = (randn(g, *s).requires_grad_() for s in ((1, 7, 3), (3, 4), (3,), (2, 3, 3)))
    assert torch.autograd.gradcheck(
        lambda *a: causal_conv1d_ref(*a[:3], cu_seqlens=cu, initial_state=a[3], return_final_state=True),
        (x, weight, bias, init))
