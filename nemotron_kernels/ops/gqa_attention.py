"""Public op `gqa_attention`: causal (bottom-right aligned) grouped-query flash attention, packed varlen, lse.

Triton kernels on CUDA fp16/bf16 tensors (forward + backward) and FP8 e4m3 q/k/v with descales (forward, bf16
output), Gluon ones in their scope on sm_90 (triton/gqa_attention_fwd_gluon.py, _bwd_gluon.py); the reference on
CPU, for fp32/float64, for descales on 16-bit inputs, or without Triton — unless TRITON_INTERPRET=1, where CPU
fp16/fp32/fp8 tensors run the kernels in Triton's interpreter. Layers: custom ops `nemotron_kernels::gqa_attention_fwd`
/ `_bwd` (visible to torch.compile and CUDA graphs) -> `GqaAttentionFn` (autograd) -> `gqa_attention()` (dispatch).
"""
from typing import Optional

import torch

from ..reference._checks import check_descale, check_divisible, check_float, check_same_device, check_shape
from ..reference.gqa_attention import check_quantize_args, gqa_attention_ref, quantize_fp8_ref
from ..triton import gqa_attention_common as common
from ._kernel_op import kernel_op

KERNEL_HEAD_DIMS = (16, 32, 64, 128)
FP8 = torch.float8_e4m3fn


@kernel_op("nemotron_kernels::gqa_attention_fwd", mutates_args=())
def gqa_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, softmax_scale: float,
                      cu_seqlens: Optional[torch.Tensor], max_seqlen: int, q_descale: Optional[torch.Tensor] = None,
                      k_descale: Optional[torch.Tensor] = None, v_descale: Optional[torch.Tensor] = None,
                      out_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D] -> (o [B, Sq, Hq, D] in q's dtype (bf16 for fp8), lse [B, Hq, Sq] fp32)
    (Triton). Descales: None or fp32 tensors of 1 or [B (S with cu_seqlens) or 1, Hkv] elements; the output is
    also multiplied by out_scale."""
    kernels = common.kernel_module("gqa_attention_fwd")
    return kernels.gqa_attention_fwd(q, k, v, causal, softmax_scale, cu_seqlens, max_seqlen, q_descale=q_descale,
                                     k_descale=k_descale, v_descale=v_descale, out_scale=out_scale)


@gqa_attention_fwd.register_fake
def _(q, k, v, causal, softmax_scale, cu_seqlens, max_seqlen, q_descale=None, k_descale=None, v_descale=None,
      out_scale=1.0):
    bsz, sq, hq, _ = q.shape
    return (torch.empty(q.shape, dtype=torch.bfloat16 if q.dtype == FP8 else q.dtype, device=q.device),
            q.new_empty((bsz, hq, sq), dtype=torch.float32))


@kernel_op("nemotron_kernels::gqa_attention_bwd", mutates_args=())
def gqa_attention_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                      lse: torch.Tensor, causal: bool, softmax_scale: float, cu_seqlens: Optional[torch.Tensor],
                      max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """do, o [B, Sq, Hq, D], q, k, v, lse [B, Hq, Sq] -> (dq like q, dk like k, dv like v) (Triton; no atomics,
    bitwise reproducible)."""
    kernels = common.kernel_module("gqa_attention_bwd")
    return kernels.gqa_attention_bwd(do, q, k, v, o, lse, causal, softmax_scale, cu_seqlens, max_seqlen)


@gqa_attention_bwd.register_fake
def _(do, q, k, v, o, lse, causal, softmax_scale, cu_seqlens, max_seqlen):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class GqaAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, softmax_scale: float, cu_seqlens, max_seqlen: int):
        o, lse = gqa_attention_fwd(q, k, v, causal, softmax_scale, cu_seqlens, max_seqlen)
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
        ctx.causal, ctx.softmax_scale, ctx.max_seqlen = causal, softmax_scale, max_seqlen
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = gqa_attention_bwd(do.contiguous(), q, k, v, o, lse, ctx.causal, ctx.softmax_scale, cu_seqlens,
                                       ctx.max_seqlen)
        return dq, dk, dv, None, None, None, None


def _kernel_eligible(q, k, v, cu_seqlens, descales) -> bool:
    """Whether the Triton kernels can run these inputs (anything else goes to the reference): 16-bit q/k/v without
    descales, or FP8 e4m3 q/k/v with any descales and D >= 32 (an e4m3 wgmma reduces over at least 32: q k^T over
    D = 16 does not compile, bench/NOTES.md session 29)."""
    fp8 = q.dtype == FP8
    return (common.use_triton(q, fp8=True) and q.dtype == k.dtype == v.dtype and q.shape[-1] in KERNEL_HEAD_DIMS
            and (not fp8 or q.shape[-1] >= 32) and (fp8 or all(d is None for d in descales))
            and (cu_seqlens is None or q.shape[0] == 1))


def _split_descale(descale):
    """A descale -> (tensor or None for the kernel, Python factor folded into the scales on the host)."""
    if descale is None:
        return None, 1.0
    if isinstance(descale, torch.Tensor):
        return descale, 1.0
    return None, float(descale)


def gqa_attention(q, k, v, causal: bool = True, softmax_scale=None, cu_seqlens=None, max_seqlen=None,
                  q_descale=None, k_descale=None, v_descale=None, return_lse: bool = False):
    """Grouped-query softmax attention (flash attention on CUDA).

    Args:
        q [B, Sq, Hq, D], k [B, Sk, Hkv, D], v [B, Sk, Hkv, D]: Hq % Hkv == 0; query head j reads kv head
            j // (Hq // Hkv). Kernel path: fp16/bf16 (differentiable) or fp8 e4m3 (forward), D in (16, 32, 64, 128).
        causal: bottom-right aligned (query i sees keys <= i + Sk - Sq); queries that see no key give 0.
        softmax_scale: multiplies q.k; default D ** -0.5.
        cu_seqlens [S+1] int32/int64 | None: packed varlen (B = 1, same offsets for q and k).
        max_seqlen: longest sequence with cu_seqlens (read from cu_seqlens, a host sync, when None).
        q_descale, k_descale, v_descale: FP8 dequantisation scales: a number, a one-element tensor, or [B, Hkv]
            ([S, Hkv] or [1, Hkv] with cu_seqlens); q, k, v are multiplied by them (16-bit inputs with descales
            take the reference).
        return_lse: also return lse [B, Hq, Sq] float32 (natural log; not differentiable).
    Returns:
        o [B, Sq, Hq, D] in q's dtype (bf16 for fp8 q), or (o, lse). Differentiable in q, k, v (16-bit inputs);
        the backward is bitwise reproducible (no atomics: dk/dv and dq in separate passes).
    """
    descales = (q_descale, k_descale, v_descale)
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
            and q.dim() == 4 and k.dim() == 4 and _kernel_eligible(q, k, v, cu_seqlens, descales)):
        return gqa_attention_ref(q, k, v, causal, softmax_scale, cu_seqlens, max_seqlen, q_descale, k_descale,
                                 v_descale, return_lse)
    check_float("q", q, "[B, Sq, Hq, D]", 4)
    bsz, sq, hq, head_dim = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    check_shape("k", k, (bsz, sk, hkv, head_dim), "[B, Sk, Hkv, D]")
    check_shape("v", v, (bsz, sk, hkv, head_dim), "[B, Sk, Hkv, D]")
    check_divisible("Hq (heads of q)", hq, "Hkv (heads of k)", hkv)
    check_same_device(q=q, k=k, v=v, cu_seqlens=cu_seqlens)
    nseq = None if cu_seqlens is None else cu_seqlens.numel() - 1
    for name, descale in zip(("q_descale", "k_descale", "v_descale"), descales):
        check_descale(name, descale, bsz, hkv, nseq)
        if isinstance(descale, torch.Tensor) and descale.device != q.device:
            raise ValueError(f"{name} is on {descale.device} but q is on {q.device}")
    if cu_seqlens is not None:
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"cu_seqlens must be 1-D int32/int64 [S+1] with S >= 1, got {cu_seqlens.dtype} "
                             f"{tuple(cu_seqlens.shape)}")
        if sk != sq:
            raise ValueError(f"with cu_seqlens, q and k are packed alike: k has {sk} tokens but q has {sq}")
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())      # host sync; pass max_seqlen to avoid
        if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0:
            raise ValueError(f"max_seqlen must be a non-negative int, got {max_seqlen!r}")
    else:
        max_seqlen = max(sq, sk)
    scale = head_dim ** -0.5 if softmax_scale is None else float(softmax_scale)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if q.dtype == FP8:      # forward only: fold Python-number descales into the scales, pass tensors through
        (qd, qf), (kd, kf), (vd, vf) = (_split_descale(d) for d in descales)
        o, lse = gqa_attention_fwd(q, k, v, bool(causal), scale * qf * kf, cu_seqlens, max_seqlen, qd, kd, vd, vf)
    else:
        o, lse = GqaAttentionFn.apply(q, k, v, bool(causal), scale, cu_seqlens, max_seqlen)
    return (o, lse) if return_lse else o


def quantize_fp8(x, num_kv_heads: int, cu_seqlens=None, max_seqlen=None, descale=None):
    """FP8 e4m3 quantisation of attention inputs with scales computed on the device, one per (batch row or packed
    sequence, kv head), the descale granularity `gqa_attention` and `gqa_decode` take.

    Args:
        x [B, S, H, D] float (q: H = Hq, the Hq // Hkv heads of a kv head share a scale; k, v: H = Hkv).
        num_kv_heads: Hkv.   cu_seqlens [S+1] | None: packed sequences (B = 1), one scale row per sequence;
        max_seqlen: their longest length (read from cu_seqlens, a host sync, when None).
        descale [rows, Hkv] fp32 | None: quantise with these scales instead (e.g. a fixed KV-cache scale).
    Returns:
        (x8 [B, S, H, D] float8_e4m3fn, descale [B or S, Hkv] fp32) with x ~= x8 * descale; descale =
        amax / 448 (amax over the row's positions, the group's heads and D; floored at 1e-12).
    Triton on CUDA (and in the interpreter); plain PyTorch otherwise.
    """
    check_quantize_args(x, num_kv_heads, cu_seqlens, descale)
    kernel_ok = (common.triton_status()[0] and x.dtype != torch.float64 and x.shape[-1] in (16, 32, 64, 128, 256)
                 and (x.is_cuda or (x.device.type == "cpu" and common.interpreting())))
    if not kernel_ok:
        return quantize_fp8_ref(x, num_kv_heads, cu_seqlens, max_seqlen, descale)
    if cu_seqlens is not None and max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())                 # host sync
    x = x if x.stride(-1) == 1 else x.contiguous()
    kernels = common.kernel_module("gqa_attention_quant")
    return kernels.quantize_fp8(x, num_kv_heads, cu_seqlens, max_seqlen,
                                None if descale is None else descale.float().contiguous())


def quantize_fp8_backend_report(device_type: str) -> str:
    return common.backend_report(device_type, "FP8 e4m3 quantisation: amax per (row or sequence, kv head), then the "
                                              "scaled cast, D in (16, 32, 64, 128, 256)")


def backend_report(device_type: str) -> str:
    return common.backend_report(device_type, "flash attention fwd+bwd (fp16/bf16), FP8 e4m3 fwd with descales "
                                              "(D >= 32), "
                                              "causal/varlen, D in (16, 32, 64, 128); fp16/bf16 fwd and bwd by "
                                              "Gluon FA3 kernels on sm_90 with triton 3.6 (D=128, Sq = Sk, "
                                              "varlen too), the FP8 fwd too for batched S % 128 == 0 (descales "
                                              "per tensor or per (batch, kv head)); NK_GLUON=0 disables them")
