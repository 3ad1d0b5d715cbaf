"""Sweep the Gluon attention forward's tuning knobs on the H200 (gqa_attention_fwd_gluon.VARIANTS: persistent grid,
K/V ring stages), bf16 and FP8 e4m3, with cuDNN SDPA (K/V expanded to 32 heads) and our Triton FP8 forward timed in
the same run:
    PYTHONPATH=. python3 scripts/sweep_attn_fwd_gluon.py             # GPU: check, then time
    PYTHONPATH=. python3 scripts/sweep_attn_fwd_gluon.py --fp8-only  # GPU: the FP8 part only (--bf16-only: bf16)
    PYTHONPATH=. .venv-aot/bin/python scripts/sweep_attn_fwd_gluon.py --aot    # CPU: compile every variant, report
Every kernel compiles first, in parallel worker processes on tiny inputs of the same specialisation (warm), so
Triton's disk cache serves the run. Shapes B4 S8K and B1 S32K, 32 / 2 heads, D = 128, causal.
bf16: every variant is checked against SDPA (the math backend in float32 on K/V expanded) at small shapes (fewer
tiles than SMs, and several waves), then at each full shape against the dispatch's o and lse (the per-tile
arithmetic is the same: expected bitwise equal); a mismatch exits 1 before anything is timed.
FP8: q / k / v quantised per tensor on the GPU (amax / 448), V^T built by _vt_fp8 and the descale table by
descale_table (untimed: a quantisation kernel would write them); every variant (VARIANTS) checked at the small
and full shapes against `reference` (fp32 on the dequantised inputs, by chunks of query rows): o and lse,
relative max errors < FP8_TOL. A wrong variant gets a diagnosis at its first wrong shape (fp8_diagnosis: which
elements of o are never written / NaN / off, by head, query tile, row mod 128 and d column, and whether lse, i.e. m
and l, is right), is never timed, and the run goes on to exit 1 at the end. The right ones are timed next to the
dispatch (gqa_attention(q8, k8, v8, q_descale=...): the FP8_DISPATCH variant with V^T and the table built in each
call), our Triton FP8 (the same call with NK_GLUON=0) and cuDNN BF16 on the bf16 inputs.
Timing: triton.testing.do_bench (median ms); TFLOP/s count the causal forward as 2 * B * Hq * S^2 * D (half of
4 B Hq S^2 D). --aot adds the SASS counts of every variant (MUFU.EX2, HGMMA / QGMMA, whole kernel and the
steady-state loop of a consumer) and exits 1 if one reads a register before writing it on some path
(common.live_in_registers; session 27's FP8 NaN; every variant here has none)."""
import argparse
import concurrent.futures
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton

from scripts.gluon_probe import check, gluon_off, rel_err, report

HQ, HKV, D = 32, 2, 128
SHAPES = ((4, 8192), (1, 32768))                     # (B, S)
SMALL = ((1, 256), (2, 1024), (1, 2048))             # 64 tiles (< 132 SMs), 512 and 512 tiles (several waves)
DISPATCH = (True, 3)                                 # the knobs gqa_attention's dispatch runs (batched bf16:
FP8_DISPATCH = (True, 2)                             # persistent, STAGES) and for FP8 (FP8_STAGES)
# FP8 tolerances (relative max): o carries P rounded to e4m3 (2^-4 of a value); lse comes from the fp32 P
FP8_TOL = {"o": 5e-2, "lse": 1e-2}
O_POISON, LSE_POISON = 0x7FA5, 0x7FC0BEEF            # NaN payloads the kernel never computes: kept = not written


def label(persistent: bool, stages: int, fp8: bool = False) -> str:
    name = f"gluon{' fp8' if fp8 else ''} persistent={int(persistent)} stages={stages}"
    return name + ("  (dispatch)" if (persistent, stages) == (FP8_DISPATCH if fp8 else DISPATCH) else "")


def make(bsz: int, s: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(bsz, s, HQ, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(bsz, s, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(bsz, s, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    return q, k, v


def ours(mod, q, k, v, persistent: bool, stages: int):
    """-> (o [B, S, Hq, D], lse [B, Hq, S]) of one knob setting (outputs poisoned beforehand)."""
    bsz, s = q.shape[:2]
    o = torch.full_like(q, float("nan"))
    lse = torch.full((bsz, HQ, s), float("nan"), device="cuda", dtype=torch.float32)
    return mod.gqa_attention_fwd_gluon(q, k, v, True, D ** -0.5, o, lse, persistent=persistent, stages=stages)


def quantize(x):
    """Per-tensor e4m3 quantisation on the GPU: (x / descale in e4m3, descale = amax / 448 as a [1] fp32 tensor)."""
    descale = (x.abs().amax().float().clamp_min(1e-12) / 448.0).reshape(1)
    return (x.float() / descale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), descale


def fp8_inputs(mod, q, k, v):
    """-> (q8, k8, v8, vt8, descales [B, Hkv, 3] (descale_table), (qd, kd, vd)) of bf16 q / k / v."""
    (q8, qd), (k8, kd), (v8, vd) = (quantize(t) for t in (q, k, v))
    return q8, k8, v8, mod._vt_fp8(v8), mod.descale_table((qd, kd, vd), q.shape[0], HKV, q.device), (qd, kd, vd)


def ours_fp8(mod, q8, k8, vt8, descales, persistent: bool, stages: int):
    """-> (o [B, S, Hq, D] bf16, lse) of one FP8 knob setting, poisoned beforehand with NaNs of their own payload
    (O_POISON, LSE_POISON)."""
    bsz, s = q8.shape[:2]
    o = torch.full(q8.shape, O_POISON, device=q8.device, dtype=torch.int16).view(torch.bfloat16)
    lse = torch.full((bsz, HQ, s), LSE_POISON, device=q8.device, dtype=torch.int32).view(torch.float32)
    return mod.gqa_attention_fwd_gluon_fp8(q8, k8, vt8, descales, True, D ** -0.5, o, lse, persistent=persistent,
                                           stages=stages)


def sdpa(q, k, v, backend):
    """Causal SDPA on K/V expanded to Hq heads, [B, S, H, D] in and out."""
    from torch.nn.attention import sdpa_kernel
    import torch.nn.functional as F
    ke, ve = (t.repeat_interleave(HQ // HKV, dim=2) for t in (k, v))
    with sdpa_kernel(backend):
        o = F.scaled_dot_product_attention(q.transpose(1, 2), ke.transpose(1, 2), ve.transpose(1, 2), is_causal=True)
    return o.transpose(1, 2)


def reference(q, k, v, chunk: int = 1024):
    """Causal attention in fp32 of q [B, S, Hq, D], k / v [B, S, Hkv, D] -> (o [B, S, Hq, D], lse [B, Hq, S] in
    natural log), by chunks of query rows (a chunk's scores B Hq chunk S fp32: 4 GiB at B1 S32K)."""
    bsz, s = q.shape[:2]
    ke, ve = (t.repeat_interleave(HQ // HKV, dim=2) for t in (k, v))
    o = torch.empty(bsz, s, HQ, D, device=q.device)
    lse = torch.empty(bsz, HQ, s, device=q.device)
    pos = torch.arange(s, device=q.device)
    for r0 in range(0, s, chunk):
        r1 = min(r0 + chunk, s)                                               # keys past r1 - 1: all masked
        scores = torch.einsum("brhd,bshd->bhrs", q[:, r0:r1], ke[:, :r1]) * D ** -0.5
        scores.masked_fill_(pos[:r1] > pos[r0:r1, None], float("-inf"))
        lse[:, :, r0:r1] = torch.logsumexp(scores, dim=-1)
        o[:, r0:r1] = torch.einsum("bhrs,bshd->brhd", torch.softmax(scores, dim=-1), ve[:, :r1])
    return o, lse


def spans(idx) -> str:
    """Indices as sorted ranges: [5, 0, 1, 2] -> "0-2, 5"."""
    out = []
    for i in sorted(set(int(i) for i in idx)):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in out) or "none"


def fp8_errors(o, lse, ref_o, ref_lse) -> dict:
    """Relative max errors of an FP8 run ({"o", "lse"}; NaN where the output has a non-finite value)."""
    return {name: rel_err(x, ref) if torch.isfinite(x).all() else math.nan
            for name, x, ref in (("o", o, ref_o), ("lse", lse, ref_lse))}


def fp8_diagnosis(o, lse, ref_o, ref_lse) -> str:
    """Where an FP8 run went wrong, in up to 3 lines. o's bad elements (never written = poison kept, NaN, inf, or
    off by more than FP8_TOL["o"] of max |ref|), counted and placed: heads; query tiles (tile 0 holds only the
    diagonal block); their shares by warp (rows mod 128 / 16; WG 0 is rows 0-63, WG 1 64-127) and by fragment half
    (rows g / g + 8 of a warp's 16); d columns. Then lse: right means m and l are (the error is in P V: P's
    packing, V^T, the v descale), wrong points at S or the softmax (Q, K, the scale, the mask)."""
    bsz, s = o.shape[:2]
    of = o.float()
    kept = int((o.view(torch.int16) == O_POISON).sum())
    bad = ~torch.isfinite(of) | ((of - ref_o).abs() > FP8_TOL["o"] * ref_o.abs().max())  # [B, S, Hq, D]
    lines = [f"o: {int(bad.sum())} of {o.numel()} bad ({bad.float().mean().item():.2%}): never written {kept}, "
             f"NaN {int(of.isnan().sum()) - kept}, inf {int(of.isinf().sum())}"]
    if bad.any():
        worst = (of - ref_o).abs().nan_to_num(float("inf")).argmax()
        b, r, h, d = (int(i) for i in torch.unravel_index(worst, bad.shape))
        lines[0] += f"; worst [b {b}, row {r}, head {h}, d {d}]: {of[b, r, h, d]:.4g} vs {ref_o[b, r, h, d]:.4g}"
        share = bad.reshape(bsz, s // 128, 128, HQ, D).sum(dim=(0, 1, 3, 4)).double() / bad.sum()  # row mod 128
        warps = " ".join(f"{x:.0%}" for x in share.reshape(8, 16).sum(1).tolist())
        g, g8 = share.reshape(8, 2, 8).sum(dim=(0, 2)).tolist()
        lines.append(f"where: heads {spans(bad.any(3).any(1).any(0).nonzero().flatten())} of {HQ}; query tiles "
                     f"{spans(bad.reshape(bsz, s // 128, -1).any(2).any(0).nonzero().flatten())} of {s // 128}; "
                     f"share by warp (rows mod 128 / 16) {warps}, rows g / g+8 {g:.0%} / {g8:.0%}; "
                     f"d {spans(bad.any(2).any(1).any(0).nonzero().flatten())}")
    lse_err = ((lse - ref_lse).abs() / ref_lse.abs().max()).nan_to_num(float("inf"))   # [B, Hq, S]
    lse_bad = lse_err > FP8_TOL["lse"]
    kept = int((lse.view(torch.int32) == LSE_POISON).sum())
    verdict = ("m and l right: P V is wrong (P's packing, V^T, v descale)" if not lse_bad.any() else
               "m or l wrong: S or the softmax (Q, K, scale, mask)")
    lines.append(f"lse: max rel err {lse_err.max().item():.1e}, never written {kept}, bad rows "
                 f"{int(lse_bad.any(1).any(0).sum())} of {s}, mod 128 "
                 f"{spans(lse_bad.any(1).any(0).nonzero().flatten() % 128)}: {verdict}")
    return "\n".join("    " + line for line in lines)


def cudnn_ms(q, k, v) -> float:
    """cuDNN SDPA's median ms on bf16 q / k / v (K/V expanded), NaN when unavailable."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    try:
        ke, ve = (t.repeat_interleave(HQ // HKV, dim=2) for t in (k, v))
        qt, kt, vt = q.transpose(1, 2), ke.transpose(1, 2), ve.transpose(1, 2)

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
        return triton.testing.do_bench(cudnn, warmup=50, rep=300)
    except RuntimeError as e:
        print(f"  cuDNN SDPA unavailable: {e}"[:200])
        return math.nan


def print_rows(rows, flops: float, cudnn: float) -> None:
    for name, ms in rows:
        print(f"  {name:52s} {ms:7.3f} ms  {flops / ms * 1e-9:6.1f} TFLOP/s  {cudnn / ms:5.3f}x cuDNN bf16",
              flush=True)


def run_gpu_fp8(mod, crashed=()) -> list:
    """FP8: check every variant but the `crashed` ones (their warm-up raised: wrong, never run here) against fp32 on
    the dequantised inputs (small and full shapes; a wrong one is diagnosed at its first wrong shape), then time the
    right ones at the full shapes. -> the wrong variants."""
    from nemotron_kernels.ops.gqa_attention import gqa_attention
    wrong, full = set(crashed), {}
    print(f"FP8 checks, o / lse relative max error vs fp32 on the dequantised inputs (tolerance {FP8_TOL['o']:.0e}"
          f" / {FP8_TOL['lse']:.0e}; pP sS: persistent, stages):", flush=True)
    for bsz, s in SMALL + SHAPES:
        q, k, v = make(bsz, s, seed=s + 1)
        q8, k8, v8, vt8, descales, scales = fp8_inputs(mod, q, k, v)
        ref_o, ref_lse = reference(*(t.float() * d for t, d in zip((q8, k8, v8), scales)))
        results, diagnoses = [], []
        for variant in mod.VARIANTS:
            if variant in crashed:
                continue
            o, lse = ours_fp8(mod, q8, k8, vt8, descales, *variant)
            errs = fp8_errors(o, lse, ref_o, ref_lse)
            ok = all(errs[name] <= FP8_TOL[name] for name in errs)
            results.append(f"p{int(variant[0])} s{variant[1]} {errs['o']:.1e} / {errs['lse']:.1e}"
                           + ("" if ok else " WRONG"))
            if not ok and variant not in wrong:
                wrong.add(variant)
                diagnoses.append(f"  {label(*variant, fp8=True)}, first wrong at B{bsz} S{s}:\n"
                                 + fp8_diagnosis(o, lse, ref_o, ref_lse))
        print(f"  B{bsz} S{s}: " + " | ".join(results), flush=True)
        for text in diagnoses:
            print(text, flush=True)
        if (bsz, s) in SHAPES:
            full[bsz, s] = (q, k, v, q8, k8, v8, vt8, descales, scales)
        del ref_o, ref_lse
    right = [variant for variant in mod.VARIANTS if variant not in wrong]
    for inputs in full.values():
        time_fp8(mod, right, *inputs, gqa_attention)
    return sorted(wrong)


def time_fp8(mod, variants, q, k, v, q8, k8, v8, vt8, descales, scales, gqa_attention) -> None:
    """Time the FP8 variants at one full shape, then the dispatch (V^T and descale table included), our Triton FP8
    and cuDNN bf16 on the same inputs."""
    bsz, s = q.shape[:2]
    flops = 2.0 * bsz * HQ * s * s * D
    print(f"B{bsz} S{s} Hq{HQ} Hkv{HKV} D{D} causal fp8 e4m3 (per-tensor descales, bf16 out; V^T untimed)",
          flush=True)
    rows = []
    o = torch.empty(q.shape, device="cuda", dtype=torch.bfloat16)
    lse = torch.empty(bsz, HQ, s, device="cuda", dtype=torch.float32)
    for persistent, stages in variants:
        ms = triton.testing.do_bench(lambda: mod.gqa_attention_fwd_gluon_fp8(
            q8, k8, vt8, descales, True, D ** -0.5, o, lse, persistent=persistent, stages=stages), warmup=25, rep=200)
        rows.append((label(persistent, stages, fp8=True), ms))
    qd, kd, vd = scales
    rows.append(("ours dispatch fp8: gqa_attention (Gluon, V^T timed)", triton.testing.do_bench(
        lambda: gqa_attention(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd), warmup=25, rep=200)))
    with gluon_off():
        rows.append(("ours Triton fp8: gqa_attention, NK_GLUON=0", triton.testing.do_bench(
            lambda: gqa_attention(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd), warmup=25, rep=200)))
    cudnn = cudnn_ms(q, k, v)
    rows.append(("torch SDPA cuDNN bf16 (kv expanded)", cudnn))
    print_rows(rows, flops, cudnn)


def warm_one(job) -> None:
    """Worker: launch one kernel on tiny inputs (B1 S128: the specialisation of the sweep's shapes), which puts its
    compile in Triton's disk cache. job: ("bf16", persistent, stages), ("fp8", persistent, stages), or
    ("triton fp8", ) for our Triton FP8 forward (its autotune configs)."""
    from nemotron_kernels.triton import gqa_attention_fwd_gluon as mod
    q, k, v = make(1, 128)
    if job[0] == "bf16":
        ours(mod, q, k, v, *job[1:])
    else:
        q8, k8, v8, vt8, descales, (qd, kd, vd) = fp8_inputs(mod, q, k, v)
        if job[0] == "fp8":
            ours_fp8(mod, q8, k8, vt8, descales, *job[1:])
        else:
            from nemotron_kernels.ops.gqa_attention import gqa_attention
            with gluon_off():
                gqa_attention(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd)
    torch.cuda.synchronize()


def warm(jobs) -> dict:
    """Compile the jobs' kernels in parallel worker processes (spawned: CUDA). -> {job: error} of the jobs whose
    worker raised (a kernel that crashes there would poison this process's CUDA context: the sweep skips it); a
    worker that died takes the pool down, and the main process then compiles the rest itself."""
    workers = max(1, min(len(jobs), (os.cpu_count() or 2) - 2, 12))
    failed = {}
    warnings = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = "ignore"             # the workers' import warnings: this process shows them once
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(warm_one, job): job for job in jobs}
            for future in concurrent.futures.as_completed(futures):
                error = future.exception()
                if isinstance(error, concurrent.futures.BrokenExecutor):
                    print(f"  warm-up of {futures[future]} lost: {error!r}"[:200], flush=True)
                elif error is not None:
                    failed[futures[future]] = f"{error!r}"[:300]
    finally:
        if warnings is None:
            del os.environ["PYTHONWARNINGS"]
        else:
            os.environ["PYTHONWARNINGS"] = warnings
    return failed


def run_gpu(bf16: bool = True, fp8: bool = True) -> None:
    from nemotron_kernels.triton import gqa_attention_fwd_gluon as mod
    # the "(dispatch)" labels and the bitwise reference must be the knobs the module dispatches
    assert DISPATCH == (True, mod.STAGES) and FP8_DISPATCH == (True, mod.FP8_STAGES), "DISPATCH: update to the module"
    print(f"{torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs, "
          f"triton {triton.__version__}", flush=True)
    jobs = [("triton fp8", )] + [("fp8", *variant) for variant in mod.VARIANTS] if fp8 else []
    failed = warm(jobs + ([("bf16", p, st) for p, st in mod.VARIANTS] if bf16 else []))  # the longest (6 configs) 1st
    for job, error in failed.items():
        print(f"warm-up (B1 S128) of {job} raised {error}", flush=True)
    if bf16:
        run_gpu_bf16(mod)
    if fp8:
        wrong = run_gpu_fp8(mod, [job[1:] for job in failed if job[0] == "fp8"])
        if wrong:
            print(f"FP8: {len(wrong)} of {len(mod.VARIANTS)} variants WRONG (not timed): "
                  + "; ".join(f"p{int(p)} s{st}" for p, st in wrong), flush=True)
            sys.exit(1)


def run_gpu_bf16(mod) -> None:
    from torch.nn.attention import SDPBackend
    for bsz, s in SMALL:                                      # vs SDPA in float32 (math) on the same bf16 inputs
        q, k, v = make(bsz, s, seed=s)
        ref = sdpa(q.float(), k.float(), v.float(), SDPBackend.MATH)
        bf16_err = rel_err(sdpa(q, k, v, SDPBackend.MATH), ref)
        o0, lse0 = ours(mod, q, k, v, *DISPATCH)
        for persistent, stages in mod.VARIANTS:
            o, lse = ours(mod, q, k, v, persistent, stages)
            check(f"B{bsz} S{s} {label(persistent, stages)}", {"o": rel_err(o, ref), "lse vs dispatch":
                  rel_err(lse, lse0)}, max(2 * bf16_err, 1e-2), f"SDPA fp32 (torch bf16 {bf16_err:.1e})")
    for bsz, s in SHAPES:
        q, k, v = make(bsz, s)
        flops = 2.0 * bsz * HQ * s * s * D
        print(f"B{bsz} S{s} Hq{HQ} Hkv{HKV} D{D} causal bf16", flush=True)
        o0, lse0 = ours(mod, q, k, v, *DISPATCH)
        for persistent, stages in mod.VARIANTS:
            if (persistent, stages) == DISPATCH:
                continue
            o, lse = ours(mod, q, k, v, persistent, stages)
            same = torch.equal(o, o0) and torch.equal(lse, lse0)
            check(label(persistent, stages) + (" (bitwise)" if same else ""),
                  {"o": rel_err(o, o0), "lse": rel_err(lse, lse0)}, 1e-2, "the dispatch's knobs")
        rows = []
        o = torch.empty_like(q)
        lse = torch.empty(bsz, HQ, s, device="cuda", dtype=torch.float32)
        for persistent, stages in mod.VARIANTS:
            ms = triton.testing.do_bench(lambda: mod.gqa_attention_fwd_gluon(
                q, k, v, True, D ** -0.5, o, lse, persistent=persistent, stages=stages), warmup=50, rep=300)
            rows.append((label(persistent, stages), ms))
        cudnn = cudnn_ms(q, k, v)
        rows.append(("torch SDPA cuDNN bf16 (kv expanded)", cudnn))
        print_rows(rows, flops, cudnn)


SASS_OPS = ("MUFU.EX2", "HGMMA", "QGMMA", "FFMA", "FADD", "FMUL", "FMNMX", "F2FP", "PRMT", "SHF", "LEA", "IMAD")


def sass_counts(ck) -> str:
    """The SASS's counts of SASS_OPS in the whole kernel, then in the steady-state loop of a consumer warpgroup (the
    shortest backward branch whose body holds a P V and an S wgmma batch, 16 HGMMA or 8 QGMMA, and a MUFU)."""
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(ck.asm["cubin"])
        sass = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", path], capture_output=True,
                              text=True).stdout
    lines = [(int(a, 16), ins.strip()) for a, ins in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]

    def count(body):
        ops = [re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0] for ins in body]
        return f"{len(ops)} instr, " + ", ".join(
            f"{name} {sum(op == name or op.startswith(name + '.') for op in ops)}" for name in SASS_OPS)

    loops = []
    for addr, ins in lines:
        m = re.search(r"\bBRA\b.*0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) < addr:
            body = [x for a, x in lines if int(m.group(1), 16) <= a <= addr]
            hgmma, qgmma = (sum(x.startswith(kind) for x in body) for kind in ("HGMMA", "QGMMA"))
            if (hgmma, qgmma) in ((16, 0), (0, 8)) and any("MUFU" in x for x in body):
                loops.append(body)
    text = "  SASS kernel: " + count([ins for _, ins in lines])
    if loops:
        text += "\n  SASS loop (per warp, per key block): " + count(min(loops, key=len))
    return text


def run_aot() -> None:
    """Compile and report every variant (bf16 and FP8 knobs); exit 1 if any reads a register before writing it (the
    FP8 NaN of session 27)."""
    from nemotron_kernels.triton import gqa_attention_fwd_gluon as mod
    wrong = []
    for gen in (mod.aot_compile_variants(), mod.aot_compile_fp8_variants()):
        for name, ck in gen:
            print(name, flush=True)
            if report(ck, name.replace(" ", "_").replace("=", "")):
                wrong.append(name)
            print(sass_counts(ck), flush=True)
    if wrong:
        print(f"{len(wrong)} variants read uninitialised registers: {'; '.join(wrong)}", flush=True)
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aot", action="store_true", help="compile every variant for sm_90a (no GPU) and report")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--fp8-only", action="store_true", help="GPU: the FP8 variants only (skip bf16)")
    only.add_argument("--bf16-only", action="store_true", help="GPU: the bf16 variants only (skip FP8)")
    args = ap.parse_args()
    run_aot() if args.aot else run_gpu(bf16=not args.fp8_only, fp8=not args.bf16_only)


if __name__ == "__main__":
    main()
