"""gqa_decode_ref over shuffled pages == gqa_attention_ref on the contiguous keys of each sequence."""
import pytest
import torch

from nemotron_kernels.reference.gqa_attention import gqa_attention_ref
from nemotron_kernels.reference.gqa_decode import gqa_decode_ref

F64 = torch.float64
HQ, HKV, HEAD_DIM, BLOCK = 6, 2, 8, 4


def paged(g, seq_lens, extra_blocks=3, dtype=F64):
    """Contiguous k/v per sequence and the same tokens scattered over shuffled pages of a cache.
    Unused pages and page tails hold large random values, so reading them would show."""
    pages_per_seq = [-(-n // BLOCK) for n in seq_lens]
    num_blocks = sum(pages_per_seq) + extra_blocks
    max_blocks = max(pages_per_seq) + 1
    k_cache = 100 * torch.randn(num_blocks, BLOCK, HKV, HEAD_DIM, generator=g, dtype=F64)
    v_cache = 100 * torch.randn(num_blocks, BLOCK, HKV, HEAD_DIM, generator=g, dtype=F64)
    # each sequence owns distinct pages in shuffled order; unused table entries point at arbitrary pages
    order = torch.randperm(num_blocks, generator=g)
    block_table = torch.randint(0, num_blocks, (len(seq_lens), max_blocks), generator=g, dtype=torch.int32)
    first = 0
    for b, n_pages in enumerate(pages_per_seq):
        block_table[b, :n_pages] = order[first:first + n_pages]
        first += n_pages
    ks, vs = [], []
    for b, n in enumerate(seq_lens):
        k = torch.randn(n, HKV, HEAD_DIM, generator=g, dtype=F64)
        v = torch.randn(n, HKV, HEAD_DIM, generator=g, dtype=F64)
        for t in range(n):
            page = block_table[b, t // BLOCK]
            k_cache[page, t % BLOCK], v_cache[page, t % BLOCK] = k[t], v[t]
        ks.append(k.to(dtype))
        vs.append(v.to(dtype))
    seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32)
    return k_cache.to(dtype), v_cache.to(dtype), block_table, seq_lens_t, ks, vs


@pytest.mark.parametrize("sq,q_rank", [(1, 3), (1, 4), (3, 4)])   # a 3-D q holds one token per sequence
def test_matches_contiguous_attention(sq, q_rank):
    g = torch.Generator().manual_seed(sq * 10 + q_rank)
    seq_lens = [3, 17, 8, 33, 4]   # mixed; some exact multiples of the block size
    k_cache, v_cache, block_table, seq_lens_t, ks, vs = paged(g, seq_lens)
    q = torch.randn(len(seq_lens), sq, HQ, HEAD_DIM, generator=g, dtype=F64)
    o = gqa_decode_ref(q if q_rank == 4 else q[:, 0], k_cache, v_cache, block_table, seq_lens_t, softmax_scale=0.4)
    assert o.shape == (q if q_rank == 4 else q[:, 0]).shape
    o4 = o if q_rank == 4 else o[:, None]
    for b in range(len(seq_lens)):
        expected = gqa_attention_ref(q[b:b + 1], ks[b][None], vs[b][None], causal=True, softmax_scale=0.4)
        torch.testing.assert_close(o4[b:b + 1], expected, rtol=1e-13, atol=1e-13)


def test_single_token_sequence():
    g = torch.Generator().manual_seed(1)
    k_cache, v_cache, block_table, seq_lens_t, ks, vs = paged(g, [1, 5])
    q = torch.randn(2, HQ, HEAD_DIM, generator=g, dtype=F64)
    o = gqa_decode_ref(q, k_cache, v_cache, block_table, seq_lens_t)
    # one visible token: the output is that token's value for every query head of its kv group
    torch.testing.assert_close(o[0], vs[0][0].repeat_interleave(HQ // HKV, dim=0), rtol=1e-13, atol=1e-13)


def test_descale_per_sequence():
    g = torch.Generator().manual_seed(2)
    seq_lens = [6, 11]
    k_cache, v_cache, block_table, seq_lens_t, ks, vs = paged(g, seq_lens)
    q = torch.randn(2, 2, HQ, HEAD_DIM, generator=g, dtype=F64)
    k_ds = 0.5 + torch.rand(2, HKV, generator=g, dtype=F64)
    o = gqa_decode_ref(q, k_cache, v_cache, block_table, seq_lens_t, k_descale=k_ds, v_descale=0.25)
    for b in range(2):
        expected = gqa_attention_ref(q[b:b + 1], ks[b][None] * k_ds[b, None, :, None], vs[b][None] * 0.25)
        torch.testing.assert_close(o[b:b + 1], expected, rtol=1e-13, atol=1e-13)


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="torch has no float8_e4m3fn")
def test_fp8_cache_bf16_query():
    g = torch.Generator().manual_seed(3)
    k_cache, v_cache, block_table, seq_lens_t, ks, vs = paged(g, [5, 9], dtype=torch.float8_e4m3fn)
    q = torch.randn(2, HQ, HEAD_DIM, generator=g).to(torch.bfloat16)
    o = gqa_decode_ref(q, k_cache, v_cache, block_table, seq_lens_t, k_descale=0.5)
    assert o.dtype == torch.bfloat16
    for b in range(2):
        expected = gqa_attention_ref(q[b:b + 1, None].to(F64), ks[b][None].to(F64) * 0.5, vs[b][None].to(F64))
        torch.testing.assert_close(o[b:b + 1].to(F64), expected[:, 0], rtol=1e-2, atol=1e-2)


def test_bad_inputs():
    g = torch.Generator().manual_seed(4)
    k_cache, v_cache, block_table, seq_lens_t, _, _ = paged(g, [5, 9])
    q = torch.randn(2, HQ, HEAD_DIM, generator=g, dtype=F64)
    with pytest.raises(ValueError, match="q must be 3-D"):
        gqa_decode_ref(q[0], k_cache, v_cache, block_table, seq_lens_t)
    with pytest.raises(TypeError, match="block_table must have dtype"):
        gqa_decode_ref(q, k_cache, v_cache, block_table.float(), seq_lens_t)
    with pytest.raises(ValueError, match="block_table must have B = 2 rows"):
        gqa_decode_ref(q, k_cache, v_cache, block_table[:1], seq_lens_t)
    with pytest.raises(ValueError, match="v_cache must have shape"):
        gqa_decode_ref(q, k_cache, v_cache[:, :2], block_table, seq_lens_t)
    with pytest.raises(ValueError, match=r"seq_lens\[1\] = 99 must lie in"):
        gqa_decode_ref(q, k_cache, v_cache, block_table, torch.tensor([5, 99], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"seq_lens\[0\] = 2 must lie in \[Sq = 3"):
        gqa_decode_ref(q[:, None].expand(2, 3, HQ, HEAD_DIM), k_cache, v_cache, block_table,
                       torch.tensor([2, 9], dtype=torch.int32))
    bad_table = block_table.clone()
    bad_table[1, 0] = k_cache.shape[0]
    with pytest.raises(ValueError, match=r"block_table\[1\] uses page ids"):
        gqa_decode_ref(q, k_cache, v_cache, bad_table, seq_lens_t)
    with pytest.raises(ValueError, match=r"Hq \(heads of q\) \(5\) must be a multiple of Hkv"):
        gqa_decode_ref(q[:, :5], k_cache, v_cache, block_table, seq_lens_t)
