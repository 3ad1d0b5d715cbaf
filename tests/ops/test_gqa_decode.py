"""gqa_decode (Triton paged split-K decode + combine) against the float64 reference under the DESIGN error rule.

CPU: the kernels run in Triton's interpreter (fp16/fp32) at small shapes: random block tables, mixed lengths
(1 token up to several pages), page sizes that do and do not hold whole key tiles, forced split counts, several
query tokens per sequence (chunked prefill), Hq/Hkv in {1, 2, 3, 16}. AOT: every kernel configuration compiles
for sm_90a. `cuda`: NemotronH shapes (32/2 heads, D=128) in bf16 on the GPU, and CUDA-graph capture.

Error rule: err(kernel) <= 2 * err(reference run in the kernel's dtype) + eps(dtype) * max(max |o_fp64|, 1).
"""
import pytest
import torch

from nemotron_kernels.ops.gqa_decode import gqa_decode
from nemotron_kernels.reference.gqa_decode import gqa_decode_ref
from test_gqa_attention import FWD, assert_error_rule, run_aot

F64 = torch.float64



def make_paged(seed, lens, sq, hq, hkv, d, page, device="cpu", spare_blocks=3):
    """Random caches and a random (shuffled, non-overlapping) block table with one spare column.
    -> q [B, Sq, Hq, D], k_cache, v_cache [num_blocks, page, Hkv, D] float64, block_table, seq_lens int32."""
    g = torch.Generator().manual_seed(seed)
    bsz = len(lens)
    max_blocks = max(-(-n // page) for n in lens) + 1
    num_blocks = bsz * max_blocks + spare_blocks
    k_cache = torch.randn(num_blocks, page, hkv, d, generator=g, dtype=F64)
    v_cache = torch.randn(num_blocks, page, hkv, d, generator=g, dtype=F64)
    block_table = torch.randperm(num_blocks, generator=g)[:bsz * max_blocks].view(bsz, max_blocks).int()
    q = torch.randn(bsz, sq, hq, d, generator=g, dtype=F64)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    return tuple(t.to(device) for t in (q, k_cache, v_cache, block_table, seq_lens))


def check_decode(q, k_cache, v_cache, block_table, seq_lens, dtype, num_splits=None, config=None, kv_dtype=None,
                 k_descale=None, v_descale=None):
    """Kernel (public op, or the launcher when num_splits/config are forced) vs the float64 reference on the same
    (rounded) inputs. kv_dtype: the caches' dtype (default: dtype); with FP8 caches the descales multiply them."""
    ql = q.to(dtype)
    kl, vl = (t.to(kv_dtype or dtype) for t in (k_cache, v_cache))
    descales = dict(k_descale=k_descale, v_descale=v_descale)
    if num_splits is None and config is None:
        o = gqa_decode(ql, kl, vl, block_table, seq_lens, **descales)
    else:
        from nemotron_kernels.triton import gqa_attention_common as common
        split = common.kernel_module("gqa_decode_split")
        q4 = ql if ql.dim() == 4 else ql[:, None]
        o = split.gqa_decode_fwd(q4, kl, vl, block_table, seq_lens, q.shape[-1] ** -0.5, num_splits=num_splits,
                                 config=config, **descales)
        o = o if ql.dim() == 4 else o[:, 0]
    assert o.dtype == dtype and o.shape == q.shape
    d64 = {n: d.to(F64) if isinstance(d, torch.Tensor) else d for n, d in descales.items()}
    o64 = gqa_decode_ref(q, kl.to(F64), vl.to(F64), block_table, seq_lens, **d64)
    o_low = gqa_decode_ref(ql, kl, vl, block_table, seq_lens, **descales)
    assert_error_rule("o", o, o64, o_low, FWD)


# (lens, Sq, Hq, Hkv, D, page, dtype, num_splits)
CASES = [
    ([1, 37, 70], 1, 4, 2, 32, 16, torch.float16, None),       # auto split count, mixed lengths
    ([1, 37, 70], 1, 4, 2, 32, 16, torch.float16, 4),          # split-K + combine; a 1-token sequence
    ([3, 50], 3, 32, 2, 16, 5, torch.float32, 3),              # chunked prefill, odd page size (gather path)
    ([5, 77], 5, 6, 2, 64, 32, torch.float16, 2),              # 3 heads per kv head (odd packing)
    ([100, 1], 1, 16, 1, 128, 64, torch.float16, 5),           # whole tiles per page, D=128
    ([40, 9], 9, 16, 16, 16, 8, torch.float32, 1),             # Hq == Hkv, Sq == seq_len (prefill in one chunk)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "L{}-Sq{}-H{}x{}-D{}-page{}-{}-splits{}".format(
    "_".join(map(str, c[0])), *c[1:6], str(c[6])[6:], c[7]))
def test_interpreter_matches_reference(interpret, case):
    lens, sq, hq, hkv, d, page, dtype, splits = case
    q, k_cache, v_cache, block_table, seq_lens = make_paged(sum(lens) + sq + page, lens, sq, hq, hkv, d, page)
    check_decode(q, k_cache, v_cache, block_table, seq_lens, dtype, num_splits=splits)


@pytest.fixture
def widened_fp8(monkeypatch):
    """FP8 caches on the widened path (q kept in 16 bits): the transposed one, the default, is off."""
    from nemotron_kernels.triton import gqa_attention_common as common
    monkeypatch.setattr(common.kernel_module("gqa_decode_split"), "TRANSPOSED_FP8", False)


@pytest.mark.parametrize("qdtype,splits,descale", [(torch.float16, 3, "tensor"), (torch.float32, 1, "number")])
def test_interpreter_fp8_cache(interpret, widened_fp8, qdtype, splits, descale):
    """FP8 e4m3 caches (widened to q's dtype in registers, the transposed path off) with [B, Hkv] tensor or
    Python-number descales."""
    q, k_cache, v_cache, block_table, seq_lens = make_paged(8, [45, 3, 17], 2, 8, 2, 32, 16)
    k_cache, v_cache = 40 * k_cache, 80 * v_cache                       # use the e4m3 range (< 448)
    if descale == "tensor":
        g = torch.Generator().manual_seed(3)
        k_descale = (torch.rand(3, 2, generator=g) / 20).to(qdtype if qdtype != torch.float16 else torch.float32)
        v_descale = torch.rand(3, 2, generator=g) / 50
    else:
        k_descale, v_descale = 0.03, 0.01
    check_decode(q, k_cache, v_cache, block_table, seq_lens, qdtype, num_splits=splits,
                 kv_dtype=torch.float8_e4m3fn, k_descale=k_descale, v_descale=v_descale)
    check_decode(q, k_cache, v_cache, block_table, seq_lens, qdtype, kv_dtype=torch.float8_e4m3fn,
                 k_descale=k_descale, v_descale=v_descale)


def check_transposed(q, k_cache, v_cache, block_table, seq_lens, dtype, num_splits=None, config=None,
                     k_descale=None, v_descale=None):
    """The transposed FP8 path (q rounded to e4m3 in the kernel) against the float64 reference, twice:
    (1) on q_dq = q8 * q_scale, the kernel's own rounding of q (quantize_rows_e4m3, its torch twin): the DESIGN rule
        with the reference run in fp16 (P and V enter the PV product in fp16 whatever q's dtype) on the same q_dq,
        its output rounded to q's dtype as the kernel's is (bf16's rounding of o dominates with a bf16 q);
    (2) on q itself: err <= bound(1) + |ref64(q_dq) - ref64(q)|, the triangle inequality, the second term being what
        rounding q to e4m3 costs, computed exactly. Empty sequences (seq_len 0) must give zeros; the references
    run on the others. -> (err on q_dq, err on q, that cost, max |o|)."""
    from nemotron_kernels.triton import gqa_attention_common as common
    split = common.kernel_module("gqa_decode_split")
    ql = q.to(dtype)
    kl, vl = (t.to(torch.float8_e4m3fn) for t in (k_cache, v_cache))
    descales = dict(k_descale=k_descale, v_descale=v_descale)
    o = split.gqa_decode_fwd(ql, kl, vl, block_table, seq_lens, q.shape[-1] ** -0.5, num_splits=num_splits,
                             config=config, transposed=True, **descales)
    assert o.dtype == dtype and o.shape == q.shape
    live = seq_lens > 0
    assert torch.equal(o[~live], torch.zeros_like(o[~live]))
    o, q, ql, block_table, seq_lens = o[live], q[live], ql[live], block_table[live], seq_lens[live]
    descales = {n: d[live] if isinstance(d, torch.Tensor) and d.numel() > 1 else d for n, d in descales.items()}
    q8, q_scale = split.quantize_rows_e4m3(ql)
    q_dq = q8.to(F64) * q_scale.to(F64)                                             # [B, Sq, Hq, D]
    d64 = {n: d.to(F64) if isinstance(d, torch.Tensor) else d for n, d in descales.items()}
    ref = lambda qq, k, v, **d: gqa_decode_ref(qq, k, v, block_table, seq_lens, **d)   # noqa: E731
    o64_dq = ref(q_dq, kl.to(F64), vl.to(F64), **d64)
    o_low = ref(q_dq.half(), kl.half(), vl.half(), **{n: d.half() if isinstance(d, torch.Tensor) else d
                                                      for n, d in descales.items()})
    o_low = o_low.to(dtype)                         # stored in q's dtype, as the kernel stores o
    assert_error_rule("o (on q_dq)", o, o64_dq, o_low, FWD)
    o64 = ref(q, kl.to(F64), vl.to(F64), **d64)
    floor = torch.finfo(dtype).eps * max(o64_dq.abs().max().item(), 1.0)
    tight = FWD * (o_low.to(F64) - o64_dq).abs().max().item() + floor
    cost = (o64_dq - o64).abs().max().item()
    err_dq = (o.to(F64) - o64_dq).abs().max().item()
    err = (o.to(F64) - o64).abs().max().item()
    assert err <= tight + cost, f"o (on q): err {err:.3e} > bound on q_dq {tight:.3e} + e4m3-q cost {cost:.3e}"
    return err_dq, err, cost, o64.abs().max().item()


# (lens, Sq, Hq, Hkv, D, page, q dtype, num_splits, descale): rows per tile Sq * Hq/Hkv <= 16
TRANSPOSED_CASES = [
    ([45, 0, 17, 33], 1, 32, 2, 32, 12, torch.float16, 3, "tensor"),   # gathered pages, an empty slot, split-K
    ([45, 0, 17, 33], 1, 32, 2, 32, 12, torch.float16, 1, "number"),   # one split writes o directly
    ([70, 5, 3], 2, 16, 2, 64, 32, torch.float32, 2, "tensor"),        # Sq=2 x 8 heads: causal rows, whole tiles
    ([29, 50], 3, 8, 2, 32, 7, torch.float16, 4, None),                # 12 of 16 rows used, no descales
]


@pytest.mark.parametrize("case", TRANSPOSED_CASES, ids=lambda c: "L{}-Sq{}-H{}x{}-D{}-page{}-{}-splits{}-{}".format(
    "_".join(map(str, c[0])), *c[1:6], str(c[6])[6:], c[7], c[8]))
def test_interpreter_fp8_transposed(interpret, case):
    """The transposed FP8 path: several pages, pages that do not hold whole key tiles, seq_lens incl. 0, splits."""
    lens, sq, hq, hkv, d, page, dtype, splits, descale = case
    q, k_cache, v_cache, block_table, seq_lens = make_paged(sum(lens) + page, lens, sq, hq, hkv, d, page)
    k_cache, v_cache = 40 * k_cache, 80 * v_cache                       # use the e4m3 range (< 448)
    g = torch.Generator().manual_seed(5)
    descales = {"tensor": dict(k_descale=torch.rand(len(lens), hkv, generator=g) / 20,
                               v_descale=torch.rand(len(lens), hkv, generator=g) / 50),
                "number": dict(k_descale=0.03, v_descale=0.01), None: {}}[descale]
    err_dq, err, cost, o_max = check_transposed(q, k_cache, v_cache, block_table, seq_lens, dtype, splits,
                                                **descales)
    print(f"err on q_dq {err_dq:.2e}, on q {err:.2e} (e4m3 q costs {cost:.2e}), max |o| {o_max:.2f}")


@pytest.mark.parametrize("page,splits", [(16, 3), (128, 2)])
def test_interpreter_fp8_transposed_gpu_tile(interpret, page, splits):
    """The transposed path at the H200 tile shape (64-key tiles: M = 64 for the FP8 MMA), NemotronH's 16 heads per
    kv head, gathered (16) and whole-tile (128) pages."""
    from nemotron_kernels.triton import gqa_attention_common as common
    config = common.kernel_module("gqa_decode_split").DECODE_CONFIG
    q, k_cache, v_cache, block_table, seq_lens = make_paged(page + 1, [150, 1, 64, 0], 1, 32, 2, 32, page)
    check_transposed(q, 40 * k_cache, 80 * v_cache, block_table, seq_lens, torch.float16, splits, config,
                     k_descale=0.02, v_descale=0.01)


def test_interpreter_fp8_transposed_dispatch(interpret, monkeypatch):
    """By default (TRANSPOSED_FP8), FP8 launches with 16-row tiles and D >= 32 take the transposed path and wider
    tiles or D=16 the other; forcing it onto a wide tile, D=16 or a 16-bit cache is refused."""
    from nemotron_kernels.triton import gqa_attention_common as common
    split = common.kernel_module("gqa_decode_split")
    q, k_cache, v_cache, block_table, seq_lens = make_paged(9, [20, 9], 2, 16, 2, 32, 8)
    q, k8, v8 = q.half(), (20 * k_cache).to(torch.float8_e4m3fn), (20 * v_cache).to(torch.float8_e4m3fn)
    run = lambda qq, **kw: split.gqa_decode_fwd(qq, k8, v8, block_table, seq_lens, 0.25, k_descale=0.05, **kw)  # noqa
    assert split.TRANSPOSED_FP8
    decode = q[:, 1:]                                                  # Sq=1: 8 heads per kv head
    assert torch.equal(run(decode), run(decode, transposed=True))
    assert not torch.equal(run(decode), run(decode, transposed=False))
    assert torch.equal(run(q), run(q, transposed=True))               # Sq=2 x 8 heads = 16 rows: transposed too
    hq_wide = make_paged(9, [20, 9], 2, 32, 2, 32, 8)[0].half()       # Sq=2 x 16 heads = 32 rows
    assert torch.equal(run(hq_wide), run(hq_wide, transposed=False))
    with pytest.raises(AssertionError, match="transposed"):
        run(hq_wide, transposed=True)
    # D=16: an e4m3 dot reduces over >= 32 (the serving test's tiny model failed to compile on the H200)
    q16, k16, v16 = make_paged(9, [20, 9], 1, 16, 2, 16, 8)[:3]
    k16, v16 = (20 * k16).to(torch.float8_e4m3fn), (20 * v16).to(torch.float8_e4m3fn)
    run16 = lambda **kw: split.gqa_decode_fwd(q16.half(), k16, v16, block_table, seq_lens, 0.25, **kw)  # noqa
    assert torch.equal(run16(), run16(transposed=False))
    with pytest.raises(AssertionError, match="D >= 32"):
        run16(transposed=True)
    with pytest.raises(AssertionError, match="transposed"):
        split.gqa_decode_fwd(decode, k_cache.half(), v_cache.half(), block_table, seq_lens, 0.25, transposed=True)
    monkeypatch.setattr(split, "TRANSPOSED_FP8", False)
    assert torch.equal(run(decode), run(decode, transposed=False))


@pytest.mark.parametrize("kv_dtype", [torch.float16, torch.float8_e4m3fn])
def test_interpreter_query_sliced_from_a_fused_projection(interpret, kv_dtype):
    """q [B, Hq, D] as the head slice of one fused q/k/v projection [B, (Hq + 2 Hkv) * D] (serving's fused GEMM):
    the same bits as a contiguous q, over 16-bit and FP8 caches."""
    q, k_cache, v_cache, block_table, seq_lens = make_paged(5, [20, 3, 70], 1, 4, 2, 32, 16)
    kl, vl = k_cache.to(kv_dtype), v_cache.to(kv_dtype)
    fused = torch.cat([q[:, 0].flatten(1), torch.randn(3, 2 * 2 * 32)], dim=-1).half()   # [B, (Hq + 2 Hkv) D]
    sliced = fused[:, :4 * 32].unflatten(-1, (4, 32))
    assert not sliced.is_contiguous()
    assert torch.equal(gqa_decode(sliced, kl, vl, block_table, seq_lens),
                       gqa_decode(sliced.contiguous(), kl, vl, block_table, seq_lens))
    if kv_dtype == torch.float16:        # FP8 caches round q to e4m3 (the error rule is their tests' business)
        check_decode(sliced, k_cache, v_cache, block_table, seq_lens, torch.float16)


def test_interpreter_one_token_query_shape(interpret):
    """q [B, Hq, D] (one token per sequence) returns [B, Hq, D]."""
    q, k_cache, v_cache, block_table, seq_lens = make_paged(3, [20, 3], 1, 4, 1, 32, 16)
    check_decode(q[:, 0], k_cache, v_cache, block_table, seq_lens, torch.float16)


@pytest.mark.parametrize("page,splits", [(16, 3), (128, 2)])
def test_interpreter_gpu_tile_sizes(interpret, page, splits):
    """The H200 tile shape (64-token key tiles): gathered pages (16) and whole tiles per page (128)."""
    from nemotron_kernels.triton import gqa_attention_common as common
    config = common.kernel_module("gqa_decode_split").DECODE_CONFIG
    q, k_cache, v_cache, block_table, seq_lens = make_paged(page, [150, 1, 64], 1, 32, 2, 32, page)
    check_decode(q, k_cache, v_cache, block_table, seq_lens, torch.float16, num_splits=splits, config=config)


def test_interpreter_empty_slot_gives_zeros(interpret):
    """A padded batch slot (seq_len 0) gets zeros; the other sequences are unaffected."""
    q, k_cache, v_cache, block_table, seq_lens = make_paged(4, [30, 12], 1, 4, 2, 16, 8)
    ql, kl, vl = (t.to(torch.float16) for t in (q, k_cache, v_cache))
    for splits in (1, 3):
        from nemotron_kernels.triton import gqa_attention_common as common
        split = common.kernel_module("gqa_decode_split")
        o = split.gqa_decode_fwd(ql, kl, vl, block_table, torch.tensor([30, 0], dtype=torch.int32), 0.25,
                                 num_splits=splits)
        assert torch.equal(o[1], torch.zeros_like(o[1]))
        ref = gqa_decode_ref(ql[:1], kl, vl, block_table[:1], seq_lens[:1], softmax_scale=0.25)
        torch.testing.assert_close(o[:1], ref, rtol=0, atol=2e-3)


@pytest.mark.usefixtures("interpret")
def test_interpreter_split_reads_only_what_it_writes(assert_reads_only_written):
    """Split-K in 16-token splits over sequences of 70, 2, 0 and 33 tokens with 2 query tokens each: 70 fills five
    splits (the last in part) and leaves one empty, 2 and 0 use split 0 only, and 33's third split holds one token
    that only its second query sees; over a 16-bit cache and an FP8 one on both FP8 paths (widened, transposed).
    With scratch memory poisoned as NaN, o equals a plain run's, so the combine reads only partials the split
    kernel wrote."""
    from nemotron_kernels.triton import gqa_attention_common as common
    split = common.kernel_module("gqa_decode_split")
    q, k_cache, v_cache, block_table, seq_lens = make_paged(11, [70, 2, 0, 33], 2, 8, 2, 32, 16)
    g = torch.Generator().manual_seed(6)
    descales = dict(k_descale=torch.rand(4, 2, generator=g) / 20, v_descale=torch.rand(4, 2, generator=g) / 50)
    fp8 = [t.to(torch.float8_e4m3fn) for t in (40 * k_cache, 80 * v_cache)]
    cases = {"16-bit cache": ([k_cache.half(), v_cache.half()], {}),
             "fp8 cache, widened": (fp8, dict(descales, transposed=False)),
             "fp8 cache, transposed": (fp8, dict(descales, transposed=True))}

    def run():
        return {f"o ({name})": split.gqa_decode_fwd(q.half(), *caches, block_table, seq_lens, 0.25, num_splits=6, **kw)
                for name, (caches, kw) in cases.items()}

    assert_reads_only_written(run)


def test_interpreter_opcheck(interpret):
    q, k_cache, v_cache, block_table, seq_lens = make_paged(5, [7, 3], 1, 2, 1, 16, 4)
    args = (q.half(), k_cache.half(), v_cache.half(), block_table, seq_lens, 0.25)
    torch.library.opcheck(torch.ops.nemotron_kernels.gqa_decode.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_dispatch_reference_paths(monkeypatch):
    """CPU without the interpreter, float64, bf16 (interpreter) and descales take the reference, bit for bit."""
    q, k_cache, v_cache, block_table, seq_lens = make_paged(6, [9, 4], 1, 4, 2, 16, 4)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = (q.float(), k_cache.float(), v_cache.float(), block_table, seq_lens)
    assert torch.equal(gqa_decode(*args), gqa_decode_ref(*args))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    args64 = (q, k_cache, v_cache, block_table, seq_lens)
    assert torch.equal(gqa_decode(*args64), gqa_decode_ref(*args64))
    args_bf16 = (q.bfloat16(), k_cache.bfloat16(), v_cache.bfloat16(), block_table, seq_lens)
    assert torch.equal(gqa_decode(*args_bf16), gqa_decode_ref(*args_bf16))
    assert torch.equal(gqa_decode(*args, k_descale=0.5), gqa_decode_ref(*args, k_descale=0.5))


def test_bad_inputs_raise(interpret):
    q, k_cache, v_cache, block_table, seq_lens = (t.half() if t.is_floating_point() else t
                                                  for t in make_paged(7, [9, 4], 1, 4, 2, 16, 4))
    with pytest.raises(ValueError, match="v_cache"):
        gqa_decode(q, k_cache, v_cache[:, :2], block_table, seq_lens)
    with pytest.raises(ValueError, match="block_table"):
        gqa_decode(q, k_cache, v_cache, block_table[:1], seq_lens)
    with pytest.raises(TypeError, match="seq_lens"):
        gqa_decode(q, k_cache, v_cache, block_table, seq_lens.float())
    with pytest.raises(ValueError, match="Hq"):
        gqa_decode(q[:, :, :3], k_cache, v_cache, block_table, seq_lens)


def test_split_heuristic():
    """Batch 1 at 32K splits into 256-token pieces; batch 64 into a few; batch 256 at 4K does not split. The
    transposed FP8 path aims at four programs per SM in one wave (splits rounded to whole key tiles)."""
    pytest.importorskip("triton")
    from nemotron_kernels.triton.gqa_decode_split import choose_splits
    assert choose_splits(32768, 2, 132, 64) == (128, 256)
    splits, split_len = choose_splits(32768, 128, 132, 64)
    assert splits == 3 and split_len % 64 == 0 and splits * split_len >= 32768
    assert choose_splits(4096, 512, 132, 64) == (1, 4096)
    assert choose_splits(131072, 2, 132, 64, transposed=True) == (256, 512)  # 264 asked: 4 programs per SM
    assert choose_splits(32768, 128, 132, 64, transposed=True)[0] == 4
    assert choose_splits(4096, 1024, 132, 64, transposed=True) == (1, 4096)


def test_aot_compile_sm90():
    """Every configuration compiles for sm_90a. The transposed FP8 path runs QK^T as an FP8 wgmma (e4m3 x e4m3)
    and PV as an f16 wgmma, without spills; the other FP8 path widens K for f16 mma.sync."""
    pytest.importorskip("triton")
    out = run_aot("gqa_decode_split")
    assert "gqa_decode_combine" in out, out
    lines = [line for line in out.splitlines() if "kv=fp8e4nv" in line]
    transposed = [line for line in lines if "transposed" in line]
    assert transposed and len(transposed) < len(lines), out
    for line in transposed:
        assert "e4m3.e4m3" in line and "f16.f16" in line, line
        assert "STACK:0" in line and "LOCAL:0" in line, line
    for line in set(lines) - set(transposed):
        assert "| mma.sync" in line, line


# ---------------------------------------------------------------------------------------------- GPU (H200)
@pytest.mark.cuda
@pytest.mark.parametrize("page", [16, 64])
@pytest.mark.parametrize("sq", [1, 16])
def test_cuda_nemotron_shapes(page, sq):
    lens = [1, 17, 300, 4097, 777, 2048, 64, 1500]
    lens = [max(n, sq) for n in lens]
    q, k_cache, v_cache, block_table, seq_lens = make_paged(page + sq, lens, sq, 32, 2, 128, page, device="cuda")
    check_decode(q, k_cache, v_cache, block_table, seq_lens, torch.bfloat16)


@pytest.mark.cuda
def test_cuda_long_context_split_k():
    """Batch 1 at 32K tokens (128 splits) and a forced single split agree with the reference."""
    q, k_cache, v_cache, block_table, seq_lens = make_paged(21, [32768], 1, 32, 2, 128, 64, device="cuda")
    check_decode(q, k_cache, v_cache, block_table, seq_lens, torch.bfloat16)
    check_decode(q, k_cache, v_cache, block_table, seq_lens, torch.bfloat16, num_splits=1)


@pytest.mark.cuda
def test_cuda_fp8_cache(widened_fp8):
    """bf16 queries over FP8 e4m3 caches with per-(sequence, kv head) descales (2x rule vs the reference on the
    same fp8 payload), the transposed path off (test_cuda_fp8_transposed holds that one)."""
    lens = [1, 300, 4097, 2048]
    q, k_cache, v_cache, block_table, seq_lens = make_paged(23, lens, 1, 32, 2, 128, 64, device="cuda")
    k_descale = torch.rand(4, 2, device="cuda") / 100
    v_descale = torch.rand(4, 2, device="cuda") / 100
    check_decode(q, 50 * k_cache, 60 * v_cache, block_table, seq_lens, torch.bfloat16,
                 kv_dtype=torch.float8_e4m3fn, k_descale=k_descale, v_descale=v_descale)


@pytest.mark.cuda
@pytest.mark.parametrize("config", [None, (128, 4, 3)])
def test_cuda_fp8_transposed(config):
    """The transposed FP8 path on the H200 (FP8 and f16 wgmmas): bf16 q over e4m3 caches with [B, Hkv] descales, an
    empty slot, split-K; held to check_transposed's two bounds."""
    lens = [1, 300, 4097, 2048, 0]
    q, k_cache, v_cache, block_table, seq_lens = make_paged(24, lens, 1, 32, 2, 128, 64, device="cuda")
    k_descale = torch.rand(5, 2, device="cuda") / 100
    v_descale = torch.rand(5, 2, device="cuda") / 100
    check_transposed(q, 50 * k_cache, 60 * v_cache, block_table, seq_lens, torch.bfloat16, config=config,
                     k_descale=k_descale, v_descale=v_descale)


@pytest.mark.cuda
def test_cuda_graph_capture():
    """No host sync: the op captures into a CUDA graph; replays follow new seq_lens written in place."""
    q, k_cache, v_cache, block_table, seq_lens = make_paged(22, [1000, 50, 3000, 7], 1, 32, 2, 128, 16,
                                                            device="cuda")
    ql, kl, vl = (t.bfloat16() for t in (q, k_cache, v_cache))
    gqa_decode(ql, kl, vl, block_table, seq_lens)            # compile outside the capture
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        gqa_decode(ql, kl, vl, block_table, seq_lens)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gqa_decode(ql, kl, vl, block_table, seq_lens)
    seq_lens.copy_(torch.tensor([1001, 51, 2500, 8], dtype=torch.int32, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    ref = gqa_decode(ql, kl, vl, block_table, seq_lens)
    assert torch.equal(out, ref)


def _check_widening(device):
    """Every pair of e4m3 bytes (NaN aside) widens to torch's own e4m3 -> fp16 value, in memory order."""
    from nemotron_kernels.triton.common import kernel_module
    e4m3 = torch.arange(256, dtype=torch.int32)
    e4m3 = e4m3[(e4m3 & 0x7F) != 0x7F]                                                  # the two NaN codes
    lo, hi = torch.meshgrid(e4m3, e4m3, indexing="ij")
    pairs = (lo | (hi << 8)).to(torch.int16).reshape(-1, 254)                            # [254, 254] low byte first
    want = pairs.view(torch.uint8).view(torch.float8_e4m3fn).to(torch.float16)          # [254, 508]
    got = kernel_module("gqa_decode_split").widen_e4m3_pairs(
        torch.nn.functional.pad(pairs, (0, 2)).to(device))[:, :508]                     # C = 256, a power of two
    assert torch.equal(got.cpu(), want)


def test_interpreter_e4m3_widening(interpret):
    _check_widening("cpu")


@pytest.mark.cuda
def test_cuda_e4m3_widening():
    _check_widening("cuda")
