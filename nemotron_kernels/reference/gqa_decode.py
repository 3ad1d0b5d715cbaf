"""Reference decode attention over a paged KV cache: gathers each sequence's pages into contiguous keys and
values, then runs `gqa_attention_ref` on them. The Sq query tokens of a sequence are its last Sq positions
(causal among themselves); cached token t of sequence b lives in page block_table[b, t // block_size],
row t % block_size."""
import torch

from ._checks import check_descale, check_divisible, check_float, check_int, check_same_device, check_shape
from .gqa_attention import gqa_attention_ref, output_dtype


def gqa_decode_ref(q, k_cache, v_cache, block_table, seq_lens, softmax_scale=None, k_descale=None, v_descale=None):
    """Paged GQA decode attention (reference).

    Args:
        q [B, Hq, D] (one token per sequence) or [B, Sq, Hq, D] (the last Sq tokens of each sequence).
        k_cache, v_cache [num_blocks, block_size, Hkv, D]: pages of keys / values (bf16, fp8, any float).
        block_table [B, max_blocks] int32/int64: page ids of each sequence, in order; unused tail entries ignored.
        seq_lens [B] int32/int64: valid cached tokens per sequence, the current query tokens included (>= Sq).
        softmax_scale: default D ** -0.5.
        k_descale, v_descale: None, a scalar, or a float tensor [B, Hkv]; the caches are multiplied by them.
    Returns:
        o with q's shape, in q's dtype (bf16 when q is fp8).
    """
    check_float("q", q)
    if q.dim() not in (3, 4):
        raise ValueError(f"q must be 3-D [B, Hq, D] or 4-D [B, Sq, Hq, D], got shape {tuple(q.shape)}")
    q4 = q if q.dim() == 4 else q[:, None]                                   # [B, Sq, Hq, D]
    bsz, sq, hq, head_dim = q4.shape
    check_float("k_cache", k_cache, "[num_blocks, block_size, Hkv, D]", 4)
    num_blocks, block_size, hkv = k_cache.shape[:3]
    check_shape("k_cache", k_cache, (num_blocks, block_size, hkv, head_dim), "[num_blocks, block_size, Hkv, D]")
    check_float("v_cache", v_cache, "[num_blocks, block_size, Hkv, D]", 4)
    check_shape("v_cache", v_cache, tuple(k_cache.shape), "[num_blocks, block_size, Hkv, D] (like k_cache)")
    check_divisible("Hq (heads of q)", hq, "Hkv (heads of k_cache)", hkv)
    check_int("block_table", block_table, "[B, max_blocks]", 2)
    if block_table.shape[0] != bsz:
        raise ValueError(f"block_table must have B = {bsz} rows [B, max_blocks], got shape {tuple(block_table.shape)}")
    max_blocks = block_table.shape[1]
    check_int("seq_lens", seq_lens, "[B]", 1)
    check_shape("seq_lens", seq_lens, (bsz,), "[B]")
    for name, descale in (("k_descale", k_descale), ("v_descale", v_descale)):
        check_descale(name, descale, bsz, hkv)
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, block_table=block_table, seq_lens=seq_lens,
                      k_descale=k_descale, v_descale=v_descale)
    lens = [int(n) for n in seq_lens.tolist()]
    for b, n in enumerate(lens):
        if not sq <= n <= max_blocks * block_size:
            raise ValueError(f"seq_lens[{b}] = {n} must lie in [Sq = {sq}, max_blocks * block_size = "
                             f"{max_blocks * block_size}]")
    table = block_table.tolist()

    def row(descale, b):
        # a [B, Hkv] descale contributes its row b; scalars apply to every sequence
        return descale[b:b + 1] if isinstance(descale, torch.Tensor) and descale.numel() > 1 else descale

    outs = []
    for b, n in enumerate(lens):
        pages = table[b][:-(-n // block_size)]
        bad = [p for p in pages if not 0 <= p < num_blocks]
        if bad:
            raise ValueError(f"block_table[{b}] uses page ids {bad} outside [0, num_blocks={num_blocks})")
        pages = torch.tensor(pages, dtype=torch.long, device=k_cache.device)
        gathered = (len(pages) * block_size, hkv, head_dim)
        k_seq = k_cache[pages].reshape(gathered)[:n]                        # [n, Hkv, D], token order
        v_seq = v_cache[pages].reshape(gathered)[:n]                        # [n, Hkv, D]
        outs.append(gqa_attention_ref(q4[b:b + 1], k_seq[None], v_seq[None], causal=True,
                                      softmax_scale=softmax_scale, k_descale=row(k_descale, b),
                                      v_descale=row(v_descale, b)))         # [1, Sq, Hq, D]
    o = torch.cat(outs, dim=0) if outs else torch.zeros(q4.shape, dtype=output_dtype(q.dtype), device=q.device)
    return o if q.dim() == 4 else o[:, 0]
