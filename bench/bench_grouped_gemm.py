"""grouped_gemm at Nemotron 3 Nano's expert shapes: up [E=128, I=1856, H=2688] + relu^2 -> down [E, H, I], bf16
and FP8 e4m3, on expert-sorted rows (M = 6 T, a uniform random top-6 routing per input set).

ours:      BF16: CUTLASS sm90 grouped GEMMs, up with relu^2 fused, then down (also with each row's routing
           weight applied in the down GEMM's epilogue: row_scale);
           FP8: rows quantised per row (timed), FP8 up with dequant + relu^2 fused, h re-quantised, FP8 down;
           at T <= 16 also weights-only FP8 (grouped_gemm_w8: bf16 rows and h, e4m3 weights; no quantisation)
baselines: torch._grouped_mm up -> torch relu^2 -> torch._grouped_mm down (ANCHORS.md);
           torch._scaled_grouped_mm with the same row-wise scales (x pre-quantised, h re-quantised by torch ops);
           a Python loop over the experts (bf16 matmuls).
At decode sizes (T <= 1024) the run also times each kernel path forced (GEMV, swapped operands on 128x32
tiles, 128-row tiles), so the rows-per-expert thresholds of path_for (csrc/moe/moe_kernels.h) rest on one run."""
import torch

from nemotron_kernels import _ext
from nemotron_kernels.ops.grouped_gemm import grouped_gemm, grouped_gemm_fp8, grouped_gemm_w8, quantize_fp8_rowwise

from .harness import Bench, Variant

HIDDEN, INTER, EXPERTS, TOP_K = 2688, 1856, 128, 6
TOKENS = (1, 4, 8, 16, 32, 64, 256, 1024, 16384, 65536)
PATHS = {0: "128-row tiles", 1: "swapped 128x32", 2: "GEMV"}  # moe::GemmPath values


def routed_counts(ntokens: int, nexperts: int, gen: torch.Generator) -> torch.Tensor:
    """Rows per expert [E] of a uniform random top-k routing (k distinct experts per token)."""
    scores = torch.rand(ntokens, nexperts, generator=gen)
    idx = scores.topk(TOP_K, dim=1).indices
    return torch.bincount(idx.view(-1), minlength=nexperts)


def make_weights(device, nexperts=EXPERTS):
    """up [E, I, H], down [E, H, I] bf16 (E = 8 for the CPU smoke run: 2.5 GB of weights is too much there)."""
    up = torch.empty(nexperts, INTER, HIDDEN, device=device, dtype=torch.bfloat16)
    down = torch.empty(nexperts, HIDDEN, INTER, device=device, dtype=torch.bfloat16)
    for e in range(nexperts):
        up[e] = torch.randn(INTER, HIDDEN, device=device) * HIDDEN ** -0.5
        down[e] = torch.randn(HIDDEN, INTER, device=device) * INTER ** -0.5
    return up, down


def _input_maker(ntokens, up, down, device):
    def make(i: int) -> dict:
        gen = torch.Generator().manual_seed(1000 * ntokens + i)
        counts = routed_counts(ntokens, up.shape[0], gen)
        ends = torch.cumsum(counts, 0).to(torch.int32)
        rows = torch.randn(ntokens * TOP_K, HIDDEN, generator=gen).to(device=device, dtype=torch.bfloat16)
        row_weight = torch.rand(ntokens * TOP_K, generator=gen).to(device)       # [M] routing weight of each row
        return dict(rows=rows, up=up, down=down, offsets=torch.cat([ends.new_zeros(1), ends]).to(device),
                    ends=ends.to(device), counts=counts.tolist(), row_weight=row_weight)
    return make


def ours(s):
    h = grouped_gemm(s["rows"], s["up"], s["offsets"], "relu2")
    return grouped_gemm(h, s["down"], s["offsets"])


def ours_weighted(s):
    """The down projection with each row's routing weight applied in its epilogue (row_scale)."""
    h = grouped_gemm(s["rows"], s["up"], s["offsets"], "relu2")
    return grouped_gemm(h, s["down"], s["offsets"], row_scale=s["row_weight"])


def torch_grouped_mm(s):
    h = torch._grouped_mm(s["rows"], s["up"].transpose(1, 2), offs=s["ends"])
    h = torch.relu(h).square()
    return torch._grouped_mm(h, s["down"].transpose(1, 2), offs=s["ends"])


def ours_fp8(s):
    rows_q, rows_scale = quantize_fp8_rowwise(s["rows"])
    h = grouped_gemm_fp8(rows_q, rows_scale, s["up_q"], s["up_scale"], s["offsets"], "relu2")
    h_q, h_scale = quantize_fp8_rowwise(h)
    return grouped_gemm_fp8(h_q, h_scale, s["down_q"], s["down_scale"], s["offsets"])


def ours_w8(s):
    h = grouped_gemm_w8(s["rows"], s["up_q"], s["up_scale"], s["offsets"], "relu2")
    return grouped_gemm_w8(h, s["down_q"], s["down_scale"], s["offsets"])


def forced_path(path: int, fp8: bool):
    """ours / ours_fp8 with both GEMMs on one kernel path (the extension's `path` argument)."""
    if fp8:
        def run(s):
            rows_q, rows_scale = quantize_fp8_rowwise(s["rows"])
            h = _ext._C.grouped_gemm_fp8_nt(rows_q, rows_scale, s["up_q"], s["up_scale"], s["offsets"], True, path)
            h_q, h_scale = quantize_fp8_rowwise(h)
            return _ext._C.grouped_gemm_fp8_nt(h_q, h_scale, s["down_q"], s["down_scale"], s["offsets"], False, path)
    else:
        def run(s):
            h = _ext._C.grouped_gemm_nt(s["rows"], s["up"], s["offsets"], True, path)
            return _ext._C.grouped_gemm_nt(h, s["down"], s["offsets"], False, path)
    return run


def _torch_rowwise_fp8(x):
    scale = (x.float().abs().amax(1) / 448.0).clamp_min(1e-12)
    return (x.float() / scale[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn), scale


def torch_scaled_grouped_mm(s):
    h = torch._scaled_grouped_mm(s["rows_q"], s["up_q"].transpose(1, 2), s["rows_scale"], s["up_scale"],
                                 offs=s["ends"], out_dtype=torch.bfloat16)
    h_q, h_scale = _torch_rowwise_fp8(torch.relu(h).square())
    return torch._scaled_grouped_mm(h_q, s["down_q"].transpose(1, 2), h_scale, s["down_scale"], offs=s["ends"],
                                    out_dtype=torch.bfloat16)


def expert_loop(s):
    out = torch.empty_like(s["rows"])
    start = 0
    for e, n in enumerate(s["counts"]):
        if n:
            h = torch.relu(s["rows"][start:start + n] @ s["up"][e].T).square()
            out[start:start + n] = h @ s["down"][e].T
        start += n
    return out


def _close(got, want, tol, what):
    rel = ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30)).item()
    assert rel < tol, f"{what} (relative error {rel:.3e}): not timing it"


def run(bench: Bench) -> None:
    up, down = make_weights(bench.device, EXPERTS if bench.device.type == "cuda" else 8)
    nexperts = up.shape[0]
    up_q, up_scale = quantize_fp8_rowwise(up.view(-1, HIDDEN))
    down_q, down_scale = quantize_fp8_rowwise(down.view(-1, INTER))
    fp8_weights = dict(up_q=up_q.view(up.shape), up_scale=up_scale.view(nexperts, INTER),
                       down_q=down_q.view(down.shape), down_scale=down_scale.view(nexperts, HIDDEN))
    for ntokens in bench.pick(TOKENS, quick=(1, 16, 64, 256, 16384)):
        if bench.device.type == "cpu" and ntokens > 8:
            continue
        make_bf16 = _input_maker(ntokens, up, down, bench.device)

        def make(i):
            s = make_bf16(i)
            s["rows_q"], s["rows_scale"] = quantize_fp8_rowwise(s["rows"])
            return {**s, **fp8_weights}

        pool = bench.input_pool(make, min_sets=4)
        s = pool[0]
        scaled_baseline = False
        if bench.device.type == "cuda":
            want = torch_grouped_mm(s)
            _close(ours(s), want, 2e-2, "ours != torch._grouped_mm")
            _close(ours_weighted(s), want * s["row_weight"][:, None], 2e-2, "ours weighted != torch._grouped_mm * w")
            _close(ours_fp8(s), want, 0.15, "ours fp8 != torch._grouped_mm bf16")
            try:
                _close(torch_scaled_grouped_mm(s), want, 0.15, "torch._scaled_grouped_mm != torch._grouped_mm")
                scaled_baseline = True
            except Exception as e:  # layout or version limits of the private torch op: report, do not time
                print(f"  [bench] torch._scaled_grouped_mm baseline skipped: {type(e).__name__}: {str(e)[:160]}")
        m_rows = ntokens * TOP_K
        touched = sum(1 for n in s["counts"] if n)
        flops = 2.0 * m_rows * HIDDEN * INTER * 2
        weight_bytes = touched * 2 * INTER * HIDDEN * 2
        act_bytes = m_rows * (HIDDEN * 2 + INTER * 2) * 2                       # rows in, h out+in, y out
        variants = [Variant("ours: CUTLASS up+relu2, down", ours, flops=flops, bytes=weight_bytes + act_bytes),
                    Variant("ours: the same, down x routing weight (epilogue)", ours_weighted, flops=flops,
                            bytes=weight_bytes + act_bytes + m_rows * 4),
                    Variant("ours fp8: quant, up+relu2, quant, down", ours_fp8, flops=flops, flop_ceiling="fp8",
                            bytes=weight_bytes // 2 + act_bytes)]
        if bench.device.type == "cuda" and ntokens <= 1024:
            for path, name in PATHS.items():
                for fp8 in (False, True):
                    if path == 2 and ntokens > 64:
                        continue      # the GEMV passes over each expert's weights once per 8 rows
                    fn = forced_path(path, fp8)
                    _close(fn(s), want, 0.15 if fp8 else 2e-2, f"path {name} != torch._grouped_mm")
                    variants.append(Variant(f"ours{' fp8' if fp8 else ''}, forced {name}", fn, flops=flops,
                                            flop_ceiling="fp8" if fp8 else "bf16",
                                            bytes=(weight_bytes // 2 if fp8 else weight_bytes) + act_bytes))
        if ntokens <= 16:
            _close(ours_w8(s), want if bench.device.type == "cuda" else ours(s), 0.15, "ours w8 != bf16")
            variants.append(Variant("ours fp8 weights-only (w8a16 GEMV)", ours_w8, flops=flops,
                                    bytes=weight_bytes // 2 + act_bytes))
        if bench.device.type == "cuda":
            variants.append(Variant("torch: _grouped_mm up, relu2, down", torch_grouped_mm, flops=flops,
                                    bytes=weight_bytes + act_bytes, baseline=True))
            if scaled_baseline:
                variants.append(Variant("torch: _scaled_grouped_mm fp8 rowwise", torch_scaled_grouped_mm,
                                        flops=flops, flop_ceiling="fp8", bytes=weight_bytes // 2 + act_bytes,
                                        baseline=True))
        if ntokens <= 16384:
            variants.append(Variant("torch: loop over experts", expert_loop, flops=flops,
                                    bytes=weight_bytes + act_bytes, baseline=bench.device.type != "cuda"))
        bench.measure(f"T={ntokens}", pool, variants, T=ntokens, M=m_rows, E=up.shape[0], H=HIDDEN, I=INTER,
                      experts_touched=touched)
