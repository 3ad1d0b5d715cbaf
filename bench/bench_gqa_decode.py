"""gqa_decode at Nemotron 3 Nano's shape: one query token, 32 query heads, 2 kv heads, D=128, bf16 KV.

ours:      the Triton paged split-K decode over a paged cache with randomly scattered pages (page size 16, as
           vLLM's default, and 64), seq_lens all equal to the context; and over an FP8 e4m3 cache (page 64) with
           per-(sequence, kv head) descales.
baselines: torch SDPA with the cuDNN and FLASH backends on contiguous KV [B, Hkv, ctx, D], GQA as attention of
           the 16 query heads of a kv head treated as 16 query positions (non-causal: the one query token sees
           the whole context; same math, no K/V expansion).
Bytes: the KV cache read once (2 * B * ctx * Hkv * D * 2) plus q and o; flops 4 * B * Hq * ctx * D.
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from nemotron_kernels.ops.gqa_decode import gqa_decode
from nemotron_kernels.reference.gqa_decode import gqa_decode_ref

from .harness import Bench, Variant

HQ, HKV, HEAD_DIM = 32, 2, 128
PROBLEMS = ((1, 4096), (1, 32768), (1, 131072), (64, 4096), (64, 32768), (256, 4096))
PAGE_SIZES = (16, 64)
BACKENDS = (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("FLASH", SDPBackend.FLASH_ATTENTION))


def _input_maker(bsz: int, ctx: int, device: torch.device):
    def make(i: int) -> dict:
        g = torch.Generator(device="cpu").manual_seed(i)
        q = torch.randn(bsz, HQ, HEAD_DIM, device=device, dtype=torch.bfloat16)               # [B, Hq, D]
        k = torch.randn(bsz, HKV, ctx, HEAD_DIM, device=device, dtype=torch.bfloat16)         # [B, Hkv, ctx, D]
        v = torch.randn(bsz, HKV, ctx, HEAD_DIM, device=device, dtype=torch.bfloat16)
        s = dict(q=q, k=k, v=v, seq_lens=torch.full((bsz,), ctx, dtype=torch.int32, device=device))
        for page in PAGE_SIZES:       # the same keys and values, scattered over pages in a random order
            blocks = ctx // page
            perm = torch.randperm(bsz * blocks, generator=g).to(device)
            k_pages = k.view(bsz, HKV, blocks, page, HEAD_DIM).permute(0, 2, 3, 1, 4).reshape(-1, page, HKV, HEAD_DIM)
            v_pages = v.view(bsz, HKV, blocks, page, HEAD_DIM).permute(0, 2, 3, 1, 4).reshape(-1, page, HKV, HEAD_DIM)
            k_cache = torch.empty_like(k_pages)
            v_cache = torch.empty_like(v_pages)
            k_cache[perm] = k_pages                      # logical block j of sequence b lives in page perm[b*blocks+j]
            v_cache[perm] = v_pages
            s[f"paged{page}"] = (k_cache, v_cache, perm.view(bsz, blocks).int())
        k_cache, v_cache, block_table = s["paged64"]
        k_descale = torch.full((bsz, HKV), 4.0 / 448, device=device)        # randn values mostly within +-4
        # clamped: torch 2.11's CUDA cast turns |x| >= 480 into NaN (not 448), and a few of 10^7 randn pass 4.3
        s["paged64_fp8"] = tuple((c / k_descale[0, 0]).clamp(-448, 448).to(torch.float8_e4m3fn)
                                 for c in (k_cache, v_cache)) + (block_table, k_descale)
        return s
    return make


def _sdpa(backend):
    def attend(s):
        bsz = s["q"].shape[0]
        q = s["q"].view(bsz, HKV, HQ // HKV, HEAD_DIM)                      # 16 heads of a kv head as 16 queries
        with sdpa_kernel(backend):
            o = F.scaled_dot_product_attention(q, s["k"], s["v"])           # [B, Hkv, 16, D]
        return o.reshape(bsz, HQ, HEAD_DIM)
    return attend


def _ours(page):
    def attend(s):
        k_cache, v_cache, block_table = s[f"paged{page}"]
        return gqa_decode(s["q"], k_cache, v_cache, block_table, s["seq_lens"])
    return attend


def _ours_fp8(s):
    k_cache, v_cache, block_table, descale = s["paged64_fp8"]
    return gqa_decode(s["q"], k_cache, v_cache, block_table, s["seq_lens"], k_descale=descale, v_descale=descale)


def _ours_fp8_widened(s):
    """The FP8 path before the transposed one (q kept in 16 bits, K widened for an M = 16 mma.sync): its baseline."""
    from nemotron_kernels.triton import gqa_attention_common as common
    k_cache, v_cache, block_table, descale = s["paged64_fp8"]
    q = s["q"][:, None]                                                      # [B, 1, Hq, D]
    return common.kernel_module("gqa_decode_split").gqa_decode_fwd(
        q, k_cache, v_cache, block_table, s["seq_lens"], HEAD_DIM ** -0.5, k_descale=descale, v_descale=descale,
        transposed=False)[:, 0]


def run(bench: Bench) -> None:
    problems = bench.pick(PROBLEMS, quick=((1, 32768), (64, 32768), (256, 4096)))
    backends = BACKENDS
    if bench.device.type != "cuda":   # CPU smoke run of this code: tiny shapes, torch's math backend
        problems, backends = ((2, 256),), (("MATH", SDPBackend.MATH),)
    for bsz, ctx in problems:
        pool = bench.input_pool(_input_maker(bsz, ctx, bench.device))
        first = pool[0]
        if bsz * ctx <= 64 * 4096:     # ours vs the reference on one set (the reference loops over sequences)
            k_cache, v_cache, block_table = first["paged16"]
            ref = gqa_decode_ref(first["q"], k_cache, v_cache, block_table, first["seq_lens"])
            err = (_ours(16)(first).float() - ref.float()).abs().max().item()
            assert err < 2e-2, f"ours differs from the reference by {err}: not timing it"
            k8, v8, block_table, descale = first["paged64_fp8"]
            ref = gqa_decode_ref(first["q"], k8, v8, block_table, first["seq_lens"], k_descale=descale,
                                 v_descale=descale)
            err = (_ours_fp8(first).float() - ref.float()).abs().max().item()
            assert err < 2e-2, f"ours (FP8 KV) differs from the reference by {err}: not timing it"
        kv_bytes = 2 * bsz * ctx * HKV * HEAD_DIM * 2
        io_bytes = kv_bytes + 2 * bsz * HQ * HEAD_DIM * 2
        flops = 4.0 * bsz * HQ * ctx * HEAD_DIM
        variants = [Variant(f"ours: triton paged (page {page})", _ours(page), flops=flops, bytes=io_bytes)
                    for page in PAGE_SIZES]
        variants.append(Variant("ours: triton paged FP8 KV (page 64)", _ours_fp8, flops=flops,
                                bytes=io_bytes - kv_bytes // 2))
        if bench.device.type == "cuda":
            variants.append(Variant("ours: FP8 KV, widened, q in 16 bits", _ours_fp8_widened, flops=flops,
                                    bytes=io_bytes - kv_bytes // 2))
        variants += [Variant(f"torch SDPA {label} (contiguous KV)", _sdpa(backend), flops=flops, bytes=io_bytes,
                             baseline=True) for label, backend in backends]
        name = f"B{bsz} ctx{ctx // 1024}K" if ctx >= 1024 else f"B{bsz} ctx{ctx}"
        bench.measure(name, pool, variants, B=bsz, ctx=ctx, Hq=HQ, Hkv=HKV, D=HEAD_DIM)
