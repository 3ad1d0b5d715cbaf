"""gqa_attention at Nemotron 3 Nano's shape: 32 query heads, 2 kv heads, D=128, causal, bf16; B4 S8K and B1 S32K.

ours:      gqa_attention's dispatch (the Gluon FA3 kernels on sm_90 with triton 3.6, else Triton; q/k/v
           [B, S, H, D] as the model holds them), forward; backward alone (a dk/dv pass and a dq pass, no atomics);
           FP8 e4m3 forward on q/k/v quantised beforehand (not timed) with one descale per (batch, kv head),
           through the same dispatch (on sm_90 with triton 3.6: the Gluon FP8 forward, its V^T copy timed);
           varlen: the same B sequences packed ([1, B*S] with cu_seqlens, the layout the serving engine's
           prefill passes), forward and backward: the varlen kernels against the batched ones on the same work.
baselines: torch SDPA with the cuDNN and FLASH backends on the same data (views [B, H, S, D]); GQA via
           enable_gqa=True where the backend takes it, else K/V expanded to 32 heads beforehand (not timed).
Flops: causal forward 2*B*Hq*S^2*D (half of the full 4*B*Hq*S^2*D), backward 2.5x the forward (5 matmuls vs 2).
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from nemotron_kernels.ops.gqa_attention import gqa_attention

from .harness import Bench, Variant

HQ, HKV, HEAD_DIM = 32, 2, 128
SHAPES = ((4, 8192), (1, 32768))
BACKENDS = (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("FLASH", SDPBackend.FLASH_ATTENTION))


def _input_maker(bsz: int, seqlen: int, device: torch.device):
    def make(_: int) -> dict:
        q = torch.randn(bsz, seqlen, HQ, HEAD_DIM, device=device, dtype=torch.bfloat16)      # [B, S, Hq, D]
        k = torch.randn(bsz, seqlen, HKV, HEAD_DIM, device=device, dtype=torch.bfloat16)     # [B, S, Hkv, D]
        v = torch.randn(bsz, seqlen, HKV, HEAD_DIM, device=device, dtype=torch.bfloat16)
        do = torch.randn(bsz, seqlen, HQ, HEAD_DIM, device=device, dtype=torch.bfloat16)
        fp8 = {f"{n}8": _quantize_fp8(t) for n, t in (("q", q), ("k", k), ("v", v))}
        cu = torch.arange(0, bsz + 1, device=device, dtype=torch.int32) * seqlen            # [B+1] packed offsets
        return dict(q=q, k=k, v=v, do=do, cu=cu, **fp8)
    return make


def _quantize_fp8(x):
    """x [B, S, H, D] -> (e4m3 tensor, fp32 descale [B, Hkv]): one scale per (batch, kv head)."""
    bsz, seqlen, heads, d = x.shape
    amax = x.float().abs().view(bsz, seqlen, HKV, heads // HKV, d).amax(dim=(1, 3, 4)).clamp_min(1e-12)
    descale = amax / torch.finfo(torch.float8_e4m3fn).max                   # [B, Hkv]
    x8 = (x.float() / descale.repeat_interleave(heads // HKV, dim=1)[:, None, :, None]).to(torch.float8_e4m3fn)
    return x8, descale


def _ours_varlen(q, k, v, cu):
    """gqa_attention over the B sequences packed: [B, S, H, D] viewed [1, B*S, H, D] with cu_seqlens."""
    seqlen = q.shape[1]
    packed = (t.reshape(1, -1, *t.shape[2:]) for t in (q, k, v))
    return gqa_attention(*packed, cu_seqlens=cu, max_seqlen=seqlen).view(q.shape)


def _ours_fp8(s):
    (q8, qd), (k8, kd), (v8, vd) = s["q8"], s["k8"], s["v8"]
    return gqa_attention(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd)


def _sdpa(backend, gqa: bool):
    """SDPA on [B, H, S, D] views of [B, S, H, D] tensors, with (gqa) or without enable_gqa."""
    def attend(q, k, v):
        with sdpa_kernel(backend):
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, enable_gqa=gqa)
        return o.transpose(1, 2)
    return attend


def _pick_sdpa(backend, s: dict, grad: bool):
    """(attend, kv_expanded) for a backend: enable_gqa if it works (incl. backward), else expanded K/V."""
    q, k, v = (s[n][:, :256].detach().requires_grad_(grad) for n in ("q", "k", "v"))
    try:
        o = _sdpa(backend, True)(q, k, v)
        if grad:
            o.sum().backward()
        return _sdpa(backend, True), False
    except RuntimeError:
        return _sdpa(backend, False), True


def _expand(t):
    return t.repeat_interleave(HQ // HKV, dim=2)


def _check(s: dict) -> None:
    """Ours against torch SDPA (math-free check at a slice: the fp64 reference would need S^2 memory)."""
    q, k, v = (s[n][:, :1024] for n in ("q", "k", "v"))
    ours = gqa_attention(q, k, v)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        ref = F.scaled_dot_product_attention(q.transpose(1, 2), _expand(k).transpose(1, 2),
                                             _expand(v).transpose(1, 2), is_causal=True).transpose(1, 2)
    err = (ours.float() - ref.float()).abs().max().item()
    assert err < 3e-2, f"ours differs from SDPA by {err}: not timing it"


def run(bench: Bench) -> None:
    global BACKENDS
    shapes = bench.pick(SHAPES, quick=SHAPES)
    if bench.device.type != "cuda":    # CPU smoke run of this code: tiny shape, torch's math backend
        shapes, BACKENDS = ((1, 256),), (("MATH", SDPBackend.MATH),)
    for bsz, seqlen in shapes:
        name = f"B{bsz} S{seqlen // 1024}K" if seqlen >= 1024 else f"B{bsz} S{seqlen}"
        make = _input_maker(bsz, seqlen, bench.device)
        pool = bench.input_pool(make)
        if bench.device.type == "cuda":
            _check(pool[0])
        fwd_flops = 2.0 * bsz * HQ * seqlen * seqlen * HEAD_DIM
        io_bytes = 2 * (2 * bsz * seqlen * HQ * HEAD_DIM + 2 * bsz * seqlen * HKV * HEAD_DIM)   # q, o, k, v

        variants = [Variant("ours: fwd", lambda s: gqa_attention(s["q"], s["k"], s["v"]),
                            flops=fwd_flops, bytes=io_bytes),
                    Variant("ours: varlen fwd", lambda s: _ours_varlen(s["q"], s["k"], s["v"], s["cu"]),
                            flops=fwd_flops, bytes=io_bytes),
                    Variant("ours: fp8 fwd", _ours_fp8, flops=fwd_flops, bytes=io_bytes * 3 // 4,
                            flop_ceiling="fp8")]
        for label, backend in BACKENDS:
            attend, expanded = _pick_sdpa(backend, pool[0], grad=False)
            if expanded:
                for s in pool:
                    s[f"k_{label}"], s[f"v_{label}"] = _expand(s["k"]), _expand(s["v"])
            kn, vn = (f"k_{label}", f"v_{label}") if expanded else ("k", "v")
            variants.append(Variant(f"torch SDPA {label} fwd{' (kv expanded)' if expanded else ''}",
                                    lambda s, a=attend, kn=kn, vn=vn: a(s["q"], s[kn], s[vn]),
                                    flops=fwd_flops, bytes=io_bytes, baseline=True))
        bench.measure(f"{name} fwd", pool, variants, B=bsz, S=seqlen, Hq=HQ, Hkv=HKV, D=HEAD_DIM, causal=True)
        for s in pool:
            for key in [f"{n}_{label}" for n in "kv" for label, _ in BACKENDS] + ["q8", "k8", "v8"]:
                s.pop(key, None)

        # backward alone: each input set holds one autograd graph per implementation, and every timed call is an
        # autograd.grad that retains it (CUDA-graph capture of autograd may fail: the harness then times eagerly)
        impls = {"ours": (lambda q, k, v: gqa_attention(q, k, v), False),
                 "ours varlen": (lambda q, k, v, cu=pool[0]["cu"]: _ours_varlen(q, k, v, cu), False)}
        for label, backend in BACKENDS:
            impls[label] = _pick_sdpa(backend, pool[0], grad=True)

        def prepare(s):
            graphs = {}
            for key, (attend, expanded) in impls.items():
                q, k, v = (s[n].detach().requires_grad_() for n in ("q", "k", "v"))
                o = attend(q, _expand(k) if expanded else k, _expand(v) if expanded else v)
                graphs[key] = dict(o=o, ins=(q, k, v), do=s["do"])
            return graphs

        def backward(g):
            return torch.autograd.grad(g["o"], g["ins"], g["do"], retain_graph=True)

        bwd_pool = [prepare(s) for s in pool]
        del pool
        # autograd.grad is not capturable into a CUDA graph: eager CUDA-event timing (large problems, so fair)
        variants = [Variant("ours: bwd", lambda s: backward(s["ours"]), flops=2.5 * fwd_flops, graph=False),
                    Variant("ours: varlen bwd", lambda s: backward(s["ours varlen"]), flops=2.5 * fwd_flops,
                            graph=False)]
        for label, _ in BACKENDS:
            expanded = impls[label][1]
            variants.append(Variant(f"torch SDPA {label} bwd{' (kv expanded)' if expanded else ''}",
                                    lambda s, key=label: backward(s[key]), flops=2.5 * fwd_flops, baseline=True,
                                    graph=False))
        bench.measure(f"{name} bwd", bwd_pool, variants, B=bsz, S=seqlen, Hq=HQ, Hkv=HKV, D=HEAD_DIM, causal=True)
        del bwd_pool
