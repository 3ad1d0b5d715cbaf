"""ssd_scan forward, and forward+backward, at Nemotron 3 Nano's shape: H=64 heads, P=64, G=8 groups, N=128 state,
chunk 128, bf16, with D, dt_bias, softplus and final states (the prefill call of the model), 32K tokens as B4·L8K,
B1·L32K, B16·L2K, plus a packed batch (cu_seqlens) of 16 uneven sequences.

ours:      the op (cumsum -> chunk_state over segments -> state_passing -> chunk_scan; Gluon stages on Hopper).
baselines: mamba_ssm 2.3.2 `mamba_chunk_scan_combined` (pure-Triton SSD; carried as a wheel in .whl/, loaded
           without running the mamba_ssm package __init__, which needs CUDA extensions the wheel lacks), and our
           torch reference (`ssd_scan_ref`, chunked, fp32 compute) on the same device.
Bytes: x, B, C, dt read once, y written once, final states written (the anchor's 0.68 GB at 32K tokens);
flops: the chunked algorithm's matmuls, 2 * L * H * (Q * N (CB, per group: / heads_per_group) + Q * P + 2 * P * N).

fwd+bwd (the training step of the scan): forward then torch.autograd.grad of y (dy random, no final-state gradient:
training does not use the final states) w.r.t. x, dt, A, B, C, D, dt_bias, for ours (Triton forward + Triton
backward, which recomputes the chunk states), mamba_ssm's `mamba_chunk_scan_combined` (its Triton fwd + bwd) and
the reference's autograd. Flops counted as 3x the forward's (backward = 2x forward, the usual convention);
bytes: the forward's inputs and y, plus dy read and dx, ddt, dB, dC written."""
import torch

from nemotron_kernels.ops.ssd_scan import ssd_scan
from nemotron_kernels.reference.ssd_scan import ssd_scan_ref

from ._mamba_ssm import load_mamba_ssm
from .harness import Bench, Variant

H, P, G, N, CHUNK = 64, 64, 8, 128, 128
PROBLEMS = ((4, 8192), (1, 32768), (16, 2048))
PACKED_LENGTHS = (137, 4096, 1, 900, 2048, 3000, 129, 4000, 512, 2500, 1500, 3100, 256, 1600, 4500, 3001)


def packed_cu(lengths=PACKED_LENGTHS) -> list[int]:
    """cu_seqlens of sequences of these lengths, packed: the bench's 16 uneven sequences, 31,280 tokens."""
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return cu


def _input_maker(bsz: int, seqlen: int, device: torch.device, cu=None):
    def make(i: int) -> dict:
        g = torch.Generator(device="cpu").manual_seed(i)

        def randn(*shape, scale=1.0):
            return (scale * torch.randn(*shape, generator=g)).to(device)

        s = dict(x=randn(bsz, seqlen, H, P).bfloat16(), dt=randn(bsz, seqlen, H, scale=0.5).sub(2.0).bfloat16(),
                 A=-torch.exp(randn(H, scale=0.5)), B=randn(bsz, seqlen, G, N).bfloat16(),
                 C=randn(bsz, seqlen, G, N).bfloat16(), D=randn(H), dt_bias=randn(H, scale=0.5))
        if cu is not None:
            s["cu_seqlens"] = torch.tensor(cu, dtype=torch.int32, device=device)
        return s
    return make


def _ours(s):
    return ssd_scan(s["x"], s["dt"], s["A"], s["B"], s["C"], D=s["D"], dt_bias=s["dt_bias"], dt_softplus=True,
                    chunk_size=CHUNK, cu_seqlens=s.get("cu_seqlens"), return_final_states=True)


def _mamba(ssd_combined):
    def scan(s):
        cu = s.get("cu_seqlens")
        # packed: mamba takes seq_idx for the scan and cu_seqlens for the per-sequence final states
        kwargs = {} if cu is None else dict(seq_idx=s["seq_idx"], cu_seqlens=cu, return_varlen_states=True)
        return ssd_combined.mamba_chunk_scan_combined(s["x"], s["dt"], s["A"], s["B"], s["C"], CHUNK, D=s["D"],
                                                      dt_bias=s["dt_bias"], dt_softplus=True,
                                                      return_final_states=cu is None, **kwargs)
    return scan


def _check(s) -> None:
    """Ours vs the float64 reference on the first 2048 tokens of row 0 (the reference is slow)."""
    part = {k: (v[:1, :2048] if k in ("x", "dt", "B", "C") else v) for k, v in s.items()
            if k not in ("cu_seqlens", "seq_idx")}
    y, final = _ours(part)
    y_ref, final_ref = ssd_scan_ref(*(part[k].double() for k in ("x", "dt", "A", "B", "C")), D=part["D"].double(),
                                    dt_bias=part["dt_bias"].double(), dt_softplus=True, chunk_size=CHUNK,
                                    return_final_states=True)
    for name, a, b in (("y", y, y_ref), ("final", final, final_ref)):
        err = (a.double() - b).abs().max().item() / b.abs().max().item()
        assert err < 2e-2, f"ours ({name}) differs from the reference by {err:.3e} (relative): not timing it"


GRAD_KEYS = ("x", "dt", "A", "B", "C", "D", "dt_bias")


def _with_grad(s: dict) -> dict:
    """The input set with leaves that require grad (shared by every fwd+bwd variant) and a random dy."""
    out = dict(s)
    for k in GRAD_KEYS:
        out[k] = s[k].detach().requires_grad_()
    g = torch.Generator(device="cpu").manual_seed(int(s["x"].shape[1]))
    out["dy"] = torch.randn(s["x"].shape, generator=g).to(device=s["x"].device, dtype=s["x"].dtype)
    return out


def _grads(y, s):
    return torch.autograd.grad(y, [s[k] for k in GRAD_KEYS], s["dy"])


def _ours_fwd_bwd(s):
    y = ssd_scan(s["x"], s["dt"], s["A"], s["B"], s["C"], D=s["D"], dt_bias=s["dt_bias"], dt_softplus=True,
                 chunk_size=CHUNK, cu_seqlens=s.get("cu_seqlens"))
    return _grads(y, s)


def _mamba_fwd_bwd(ssd_combined):
    def step(s):
        kwargs = {} if s.get("seq_idx") is None else dict(seq_idx=s["seq_idx"])
        y = ssd_combined.mamba_chunk_scan_combined(s["x"], s["dt"], s["A"], s["B"], s["C"], CHUNK, D=s["D"],
                                                   dt_bias=s["dt_bias"], dt_softplus=True, **kwargs)
        return _grads(y, s)
    return step


def _ref_fwd_bwd(s):
    y = ssd_scan_ref(s["x"], s["dt"], s["A"], s["B"], s["C"], D=s["D"], dt_bias=s["dt_bias"], dt_softplus=True,
                     chunk_size=CHUNK, cu_seqlens=s.get("cu_seqlens"))
    return _grads(y, s)


def _check_bwd(s) -> None:
    """Our gradients vs the float64 reference's autograd on the first 2048 tokens of row 0 (relative max error)."""
    part = {k: (v[:1, :2048].detach() if k in ("x", "dt", "B", "C", "dy") else v.detach()) for k, v in s.items()
            if k not in ("cu_seqlens", "seq_idx")}
    ours = _ours_fwd_bwd(_with_grad(part) | {"dy": part["dy"]})
    ref = {k: part[k].double().requires_grad_() for k in GRAD_KEYS}
    y_ref = ssd_scan_ref(ref["x"], ref["dt"], ref["A"], ref["B"], ref["C"], D=ref["D"], dt_bias=ref["dt_bias"],
                         dt_softplus=True, chunk_size=CHUNK)
    ref_grads = torch.autograd.grad(y_ref, [ref[k] for k in GRAD_KEYS], part["dy"].double())
    for name, a, b in zip(GRAD_KEYS, ours, ref_grads):
        err = (a.double() - b).abs().max().item() / b.abs().max().item()
        assert err < 3e-2, f"ours (d{name}) differs from the reference by {err:.3e} (relative): not timing it"


def _flops(tokens: int) -> float:
    return 2.0 * tokens * H * (CHUNK * N / (H // G) + CHUNK * P + 2 * P * N)


def run(bench: Bench) -> None:
    problems = [(bsz, seqlen, None) for bsz, seqlen in bench.pick(PROBLEMS, quick=((1, 32768),))]
    cu = packed_cu()
    problems.append((1, cu[-1], cu))
    if bench.device.type != "cuda":    # CPU smoke run of this code: tiny shapes (the reference runs)
        problems = [(1, 160, None), (1, 160, [0, 60, 160])]
    try:
        (ssd_combined,) = load_mamba_ssm("ssd_combined")
        mamba_note = None
    except Exception as e:  # noqa: BLE001  (the baseline is optional; say why it is missing)
        ssd_combined, mamba_note = None, f"{type(e).__name__}: {e}"
        print(f"  [ssd_scan] mamba_ssm baseline unavailable: {mamba_note}")
    for bsz, seqlen, cu_list in problems:
        pool = bench.input_pool(_input_maker(bsz, seqlen, bench.device, cu_list))
        for s in pool:
            if cu_list is not None:
                lens = torch.tensor(cu_list[1:], device=bench.device) - torch.tensor(cu_list[:-1], device=bench.device)
                s["seq_idx"] = torch.repeat_interleave(torch.arange(len(lens), device=bench.device, dtype=torch.int32),
                                                       lens)[None]
        first = pool[0]
        if bench.device.type == "cuda":
            _check(first)
        tokens = bsz * seqlen
        io_bytes = sum(first[k].numel() * first[k].element_size() for k in ("x", "dt", "B", "C")) \
            + first["x"].numel() * 2 + (bsz if cu_list is None else len(cu_list) - 1) * H * P * N * 4
        variants = [Variant("ours: fwd", _ours, flops=_flops(tokens), bytes=io_bytes)]
        if ssd_combined is not None and bench.device.type == "cuda":   # a GPU-only Triton baseline
            variants.append(Variant("mamba_ssm 2.3.2 chunk_scan_combined", _mamba(ssd_combined), flops=_flops(tokens),
                                    bytes=io_bytes, baseline=True))
        variants.append(Variant("reference (torch)", lambda s: ssd_scan_ref(
            s["x"], s["dt"], s["A"], s["B"], s["C"], D=s["D"], dt_bias=s["dt_bias"], dt_softplus=True,
            chunk_size=CHUNK, cu_seqlens=s.get("cu_seqlens"), return_final_states=True), baseline=True,
            graph=cu_list is None))                        # packed: the reference reads cu_seqlens on the host
        length = f"L{seqlen // 1024}K" if seqlen % 1024 == 0 else f"L{seqlen}"
        name = f"B{bsz} {length}" if cu_list is None else f"packed {len(cu_list) - 1} seqs, {seqlen} tokens"
        bench.measure(name, pool, variants, B=bsz, L=seqlen, H=H, P=P, G=G, N=N, chunk=CHUNK,
                      packed=cu_list is not None, kind="fwd")

        grad_pool = [_with_grad(s) for s in pool]
        if bench.device.type == "cuda":
            _check_bwd(grad_pool[0])
        bwd_bytes = io_bytes + 2 * sum(first[k].numel() * first[k].element_size() for k in ("x", "dt", "B", "C")) \
            + first["x"].numel() * 2
        variants = [Variant("ours: fwd + bwd", _ours_fwd_bwd, flops=3 * _flops(tokens), bytes=bwd_bytes)]
        if ssd_combined is not None and bench.device.type == "cuda":
            variants.append(Variant("mamba_ssm 2.3.2 chunk_scan_combined", _mamba_fwd_bwd(ssd_combined),
                                    flops=3 * _flops(tokens), bytes=bwd_bytes, baseline=True))
        variants.append(Variant("reference (torch)", _ref_fwd_bwd, baseline=True, graph=cu_list is None))
        bench.measure(f"fwd+bwd {name}", grad_pool, variants, B=bsz, L=seqlen, H=H, P=P, G=G, N=N, chunk=CHUNK,
                      packed=cu_list is not None, kind="fwd+bwd")
