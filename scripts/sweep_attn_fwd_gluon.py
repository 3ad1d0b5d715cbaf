"""Sweep the Gluon attention forward's tuning knobs on the H200 (gqa_attention_fwd_gluon.VARIANTS: persistent grid,
K/V ring stages; FP8 also EXP_EMUS: score columns whose exp2 runs on the FMA pipe) against the dispatch's knobs,
bf16 and FP8 e4m3, with cuDNN SDPA (K/V expanded to 32 heads) and our Triton FP8 forward timed in the same run:
    PYTHONPATH=. .venv-aot/bin/python scripts/sweep_attn_fwd_gluon.py          # GPU: check, then time (~2 min)
    PYTHONPATH=. .venv-aot/bin/python scripts/sweep_attn_fwd_gluon.py --aot    # CPU: compile every variant, report
    ... --no-bf16 / --no-fp8: skip a part
Shapes: B4 S8K and B1 S32K, 32 / 2 heads, D = 128, causal, bf16. Every variant is first checked against SDPA (the
math backend in float32 on K/V expanded) at small shapes (fewer tiles than SMs, and several waves), then at each
full shape against the dispatch's o and lse (the per-tile arithmetic is the same: expected bitwise equal); a
mismatch exits 1 before anything is timed (bf16 EXP_EMU lost everywhere in session 27 and is no longer swept).
FP8: q / k / v quantised per tensor on the GPU (amax / 448), V^T built by _vt_fp8 (untimed: a quantisation kernel
would write it), every FP8 variant (VARIANTS x EXP_EMUS) checked against SDPA in fp32 on the dequantised inputs
(math at the small shapes, memory-efficient at the full ones), relative max error < 5e-2, then timed next to our
Triton FP8
(gqa_attention(q8, k8, v8, q_descale=...)) and cuDNN BF16 on the bf16 inputs. Timing: triton.testing.do_bench
(median ms); TFLOP/s count the causal forward as 2 * B * Hq * S^2 * D (half of 4 B Hq S^2 D). --aot adds the SASS
counts of every variant (MUFU.EX2, HGMMA / QGMMA, whole kernel and the steady-state loop of a consumer: the
offload's proof)."""
import argparse
import math
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton

from scripts.gluon_probe import check, rel_err, report

HQ, HKV, D = 32, 2, 128
SHAPES = ((4, 8192), (1, 32768))                     # (B, S)
SMALL = ((1, 256), (2, 1024), (1, 2048))             # 64 tiles (< 132 SMs), 512 and 512 tiles (several waves)
DISPATCH = (True, 3)                                 # the knobs gqa_attention's dispatch runs (batched bf16)


def label(persistent: bool, stages: int, exp_emu: int = 0, fp8: bool = False) -> str:
    name = f"gluon{' fp8' if fp8 else ''} persistent={int(persistent)} stages={stages}"
    if fp8:
        return f"{name} exp_emu={exp_emu}"
    return name + ("  (dispatch)" if (persistent, stages) == DISPATCH else "")


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
    """-> (q8, k8, v8, vt8, descales [3], (qd, kd, vd)) of bf16 q / k / v."""
    (q8, qd), (k8, kd), (v8, vd) = (quantize(t) for t in (q, k, v))
    return q8, k8, v8, mod._vt_fp8(v8), torch.cat([qd, kd, vd]), (qd, kd, vd)


def ours_fp8(mod, q8, k8, vt8, descales, persistent: bool, stages: int, exp_emu: int):
    """-> (o [B, S, Hq, D] bf16, lse) of one FP8 knob setting (outputs poisoned beforehand)."""
    bsz, s = q8.shape[:2]
    o = torch.full(q8.shape, float("nan"), device="cuda", dtype=torch.bfloat16)
    lse = torch.full((bsz, HQ, s), float("nan"), device="cuda", dtype=torch.float32)
    return mod.gqa_attention_fwd_gluon_fp8(q8, k8, vt8, descales, True, D ** -0.5, o, lse, persistent=persistent,
                                           stages=stages, exp_emu=exp_emu)


def fp8_variants(mod):
    return [(p, st, e) for p, st in mod.VARIANTS for e in mod.EXP_EMUS]


def sdpa(q, k, v, backend):
    """Causal SDPA on K/V expanded to Hq heads, [B, S, H, D] in and out."""
    from torch.nn.attention import sdpa_kernel
    import torch.nn.functional as F
    ke, ve = (t.repeat_interleave(HQ // HKV, dim=2) for t in (k, v))
    with sdpa_kernel(backend):
        o = F.scaled_dot_product_attention(q.transpose(1, 2), ke.transpose(1, 2), ve.transpose(1, 2), is_causal=True)
    return o.transpose(1, 2)


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


def run_gpu_fp8(mod) -> None:
    """FP8: check every variant against SDPA (fp32) on the dequantised inputs (small and full shapes), then time."""
    from torch.nn.attention import SDPBackend
    from nemotron_kernels.ops.gqa_attention import gqa_attention
    for bsz, s in SMALL + SHAPES:
        q, k, v = make(bsz, s, seed=s + 1)
        q8, k8, v8, vt8, descales, (qd, kd, vd) = fp8_inputs(mod, q, k, v)
        # fp32 math at the small shapes; the full ones would materialise B Hq S^2 fp32 scores (128 GiB at S32K):
        # the memory-efficient backend in fp32 there
        backend = SDPBackend.MATH if (bsz, s) in SMALL else SDPBackend.EFFICIENT_ATTENTION
        ref = sdpa(q8.float() * qd, k8.float() * kd, v8.float() * vd, backend)
        for persistent, stages, exp_emu in fp8_variants(mod):
            o, lse = ours_fp8(mod, q8, k8, vt8, descales, persistent, stages, exp_emu)
            check(f"B{bsz} S{s} {label(persistent, stages, exp_emu, fp8=True)}", {"o": rel_err(o, ref)}, 5e-2,
                  "SDPA fp32 on the dequantised inputs")
        del ref
    for bsz, s in SHAPES:
        q, k, v = make(bsz, s)
        q8, k8, v8, vt8, descales, (qd, kd, vd) = fp8_inputs(mod, q, k, v)
        flops = 2.0 * bsz * HQ * s * s * D
        print(f"B{bsz} S{s} Hq{HQ} Hkv{HKV} D{D} causal fp8 e4m3 (per-tensor descales, bf16 out; V^T untimed)",
              flush=True)
        rows = []
        o = torch.empty(q.shape, device="cuda", dtype=torch.bfloat16)
        lse = torch.empty(bsz, HQ, s, device="cuda", dtype=torch.float32)
        for persistent, stages, exp_emu in fp8_variants(mod):
            ms = triton.testing.do_bench(lambda: mod.gqa_attention_fwd_gluon_fp8(
                q8, k8, vt8, descales, True, D ** -0.5, o, lse, persistent=persistent, stages=stages,
                exp_emu=exp_emu), warmup=50, rep=300)
            rows.append((label(persistent, stages, exp_emu, fp8=True), ms))
        rows.append(("ours Triton fp8: gqa_attention(q8, k8, v8, descales)", triton.testing.do_bench(
            lambda: gqa_attention(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd), warmup=50, rep=300)))
        cudnn = cudnn_ms(q, k, v)
        rows.append(("torch SDPA cuDNN bf16 (kv expanded)", cudnn))
        print_rows(rows, flops, cudnn)


def run_gpu(bf16: bool = True, fp8: bool = True) -> None:
    from nemotron_kernels.triton import gqa_attention_fwd_gluon as mod
    print(f"{torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs, "
          f"triton {triton.__version__}", flush=True)
    if bf16:
        run_gpu_bf16(mod)
    if fp8:
        run_gpu_fp8(mod)


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
    """Compile and report every variant (bf16 knobs, FP8 knobs x EXP_EMUS); exit 1 if any reads a register before
    writing it (the FP8 NaN of session 27)."""
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
    ap.add_argument("--no-bf16", action="store_true", help="GPU: skip the bf16 variants")
    ap.add_argument("--no-fp8", action="store_true", help="GPU: skip the FP8 variants")
    args = ap.parse_args()
    run_aot() if args.aot else run_gpu(bf16=not args.no_bf16, fp8=not args.no_fp8)


if __name__ == "__main__":
    main()
