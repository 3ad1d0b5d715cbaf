"""Public op `gqa_decode`: grouped-query decode attention over a paged KV cache (split-K flash-decoding).

Triton kernels for CUDA fp16/bf16 queries over caches in q's dtype or FP8 e4m3 (with descales); the reference on
CPU, for fp32/float64, for descales on 16-bit caches, or without Triton — unless TRITON_INTERPRET=1, where CPU
fp16/fp32 queries run the kernels in Triton's interpreter. Layers: custom op `nemotron_kernels::gqa_decode` (visible to torch.compile and CUDA graphs:
no host sync, the split count comes from the block table's width) -> `gqa_decode()` (dispatch). Inference only.
"""
from typing import Optional

import torch

from ..reference._checks import check_descale, check_divisible, check_float, check_int, check_same_device, check_shape
from ..reference.gqa_decode import gqa_decode_ref
from ..triton import gqa_attention_common as common
from ._kernel_op import kernel_op

KERNEL_HEAD_DIMS = (16, 32, 64, 128)
FP8 = torch.float8_e4m3fn


@kernel_op("nemotron_kernels::gqa_decode", mutates_args=())
def gqa_decode_paged(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                     seq_lens: torch.Tensor, softmax_scale: float, k_descale: Optional[torch.Tensor] = None,
                     v_descale: Optional[torch.Tensor] = None, out_scale: float = 1.0) -> torch.Tensor:
    """q [B, Sq, Hq, D], caches [num_blocks, block_size, Hkv, D] (q's dtype or fp8 e4m3), block_table
    [B, max_blocks], seq_lens [B], descales None or fp32 tensors of 1 or [B or 1, Hkv] elements
    -> o [B, Sq, Hq, D] in q's dtype, times out_scale (Triton)."""
    kernels = common.kernel_module("gqa_decode_split")
    return kernels.gqa_decode_fwd(q, k_cache, v_cache, block_table, seq_lens, softmax_scale, k_descale=k_descale,
                                  v_descale=v_descale, out_scale=out_scale)


@gqa_decode_paged.register_fake
def _(q, k_cache, v_cache, block_table, seq_lens, softmax_scale, k_descale=None, v_descale=None, out_scale=1.0):
    return torch.empty_like(q)


def _kernel_eligible(q, k_cache, v_cache, descales) -> bool:
    """16-bit q over caches of its dtype (no descales) or over FP8 e4m3 caches (any descales)."""
    if not (isinstance(q, torch.Tensor) and isinstance(k_cache, torch.Tensor) and isinstance(v_cache, torch.Tensor)
            and q.dim() in (3, 4) and k_cache.dim() == 4 and common.use_triton(q)
            and q.shape[-1] in KERNEL_HEAD_DIMS and k_cache.dtype == v_cache.dtype):
        return False
    return k_cache.dtype == FP8 or (k_cache.dtype == q.dtype and all(d is None for d in descales))


def gqa_decode(q, k_cache, v_cache, block_table, seq_lens, softmax_scale=None, k_descale=None, v_descale=None):
    """Paged GQA decode attention; also serves a chunk of Sq query tokens per sequence (chunked prefill).

    Args:
        q [B, Hq, D] (one token per sequence) or [B, Sq, Hq, D] (the last Sq tokens of each sequence, causal).
        k_cache, v_cache [num_blocks, block_size, Hkv, D]: pages of keys / values (kernel: q's dtype or fp8
            e4m3, any block_size).
        block_table [B, max_blocks] int32/int64: page ids of each sequence in order (entries past the sequence
            are ignored). seq_lens [B] int32/int64: cached tokens per sequence incl. the current ones (>= Sq).
            The kernel path trusts both (no host sync): page ids must lie in [0, num_blocks) and
            seq_lens <= max_blocks * block_size; a sequence of length 0 (a padded batch slot) gets zeros.
        softmax_scale: default D ** -0.5.
        k_descale, v_descale: FP8 cache scales: a number, a one-element tensor or [B, Hkv]; the caches are
            multiplied by them (16-bit caches with descales take the reference).
    FP8 caches at plain decode (Sq * Hq/Hkv <= 16) run QK^T in FP8 on the GPU: q is rounded to e4m3 with a scale
    per row, as FP8 attention kernels do (about 2.6% of rms(o) at NemotronH's shape, against 2.8% for the e4m3
    cache itself; triton/gqa_decode_split.py). `gqa_decode_split.TRANSPOSED_FP8 = False` keeps q in 16 bits.
    Returns:
        o with q's shape, in q's dtype.
    """
    if not _kernel_eligible(q, k_cache, v_cache, (k_descale, v_descale)):
        return gqa_decode_ref(q, k_cache, v_cache, block_table, seq_lens, softmax_scale, k_descale, v_descale)
    q4 = q if q.dim() == 4 else q[:, None]                                   # [B, Sq, Hq, D]
    bsz, sq, hq, head_dim = q4.shape
    check_float("k_cache", k_cache, "[num_blocks, block_size, Hkv, D]", 4)
    hkv = k_cache.shape[2]
    check_shape("k_cache", k_cache, (k_cache.shape[0], k_cache.shape[1], hkv, head_dim),
                "[num_blocks, block_size, Hkv, D]")
    check_shape("v_cache", v_cache, tuple(k_cache.shape), "[num_blocks, block_size, Hkv, D] (like k_cache)")
    check_divisible("Hq (heads of q)", hq, "Hkv (heads of k_cache)", hkv)
    check_int("block_table", block_table, "[B, max_blocks]", 2)
    if block_table.shape[0] != bsz:
        raise ValueError(f"block_table must have B = {bsz} rows [B, max_blocks], got shape {tuple(block_table.shape)}")
    check_int("seq_lens", seq_lens, "[B]", 1)
    check_shape("seq_lens", seq_lens, (bsz,), "[B]")
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, block_table=block_table, seq_lens=seq_lens)
    for name, descale in (("k_descale", k_descale), ("v_descale", v_descale)):
        check_descale(name, descale, bsz, hkv)
        if isinstance(descale, torch.Tensor) and descale.device != q.device:
            raise ValueError(f"{name} is on {descale.device} but q is on {q.device}")
    scale = head_dim ** -0.5 if softmax_scale is None else float(softmax_scale)
    q4 = q4 if q4.stride(-1) == 1 else q4.contiguous()
    block_table = block_table if block_table.stride(-1) == 1 else block_table.contiguous()
    k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous() for t in (k_cache, v_cache))
    # Python-number descales fold into the scales on the host; tensors go to the kernel (no sync)
    kd, vd = (d if isinstance(d, torch.Tensor) else None for d in (k_descale, v_descale))
    k_factor, v_factor = (1.0 if d is None or isinstance(d, torch.Tensor) else float(d) for d in (k_descale, v_descale))
    o = gqa_decode_paged(q4, k_cache, v_cache, block_table, seq_lens, scale * k_factor, kd, vd, v_factor)
    return o if q.dim() == 4 else o[:, 0]


def backend_report(device_type: str) -> str:
    return common.backend_report(device_type, "paged split-K decode over 16-bit or FP8 e4m3 caches, Sq >= 1, "
                                              "D in (16, 32, 64, 128)")
