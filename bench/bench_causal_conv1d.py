"""causal_conv1d (prefill fwd, bwd) and causal_conv1d_update (decode) at Nemotron 3 Nano's shape: the xBC conv,
C = 6144 channels, K = 4, bias, SiLU, bf16; prefill 32K tokens as B4·L8K, B1·L32K, B16·L2K, with x a strided
slice of the in_proj output (row stride 10304) as in the model; decode batch 1 / 64 / 256 on a slot pool.

ours:      the Triton kernels.
baselines: the reference (plain torch: channel-first F.conv1d-like sum of K shifted products, eager).
Bytes (the memory floor; issue #3's target: within 1.5x): fwd reads x and writes y (+ weights, final state);
bwd reads x and dy and writes dx; decode reads x, the K-1 state inputs and writes y and the state."""
import torch

from nemotron_kernels.ops.causal_conv1d import causal_conv1d, causal_conv1d_bwd, causal_conv1d_update
from nemotron_kernels.reference.causal_conv1d import causal_conv1d_ref, causal_conv1d_update_ref

from .harness import Bench, Variant

C, K, IN_PROJ = 6144, 4, 10304
PROBLEMS = ((4, 8192), (1, 32768), (16, 2048))
BATCHES = (1, 64, 256)


def _prefill_maker(bsz: int, seqlen: int, device: torch.device):
    def make(i: int) -> dict:
        g = torch.Generator(device="cpu").manual_seed(i)
        zxbcdt = torch.randn(bsz, seqlen, IN_PROJ, generator=g).bfloat16().to(device)
        x = zxbcdt[..., 4096:4096 + C]                                           # [B, L, C], row stride 10304
        return dict(x=x, weight=(0.5 * torch.randn(C, K, generator=g)).bfloat16().to(device),
                    bias=torch.randn(C, generator=g).bfloat16().to(device),
                    dy=torch.randn(bsz, seqlen, C, generator=g).bfloat16().to(device))
    return make


def _decode_maker(bsz: int, device: torch.device, slots: int):
    def make(i: int) -> dict:
        g = torch.Generator(device="cpu").manual_seed(i)
        return dict(x=torch.randn(bsz, C, generator=g).bfloat16().to(device),
                    state=torch.randn(slots, C, K - 1, generator=g).bfloat16().to(device),
                    weight=(0.5 * torch.randn(C, K, generator=g)).bfloat16().to(device),
                    bias=torch.randn(C, generator=g).bfloat16().to(device),
                    slot_idx=torch.randperm(slots, generator=g)[:bsz].int().to(device))
    return make


def run(bench: Bench) -> None:
    on_gpu = bench.device.type == "cuda"
    problems = bench.pick(PROBLEMS, quick=((1, 32768),)) if on_gpu else ((1, 64),)
    for bsz, seqlen in problems:
        pool = bench.input_pool(_prefill_maker(bsz, seqlen, bench.device))
        first = pool[0]
        y, final = causal_conv1d(first["x"], first["weight"], first["bias"], return_final_state=True)
        y_ref, final_ref = causal_conv1d_ref(first["x"], first["weight"], first["bias"], return_final_state=True)
        err = (y.float() - y_ref.float()).abs().max().item()
        assert err < 5e-2 and torch.equal(final, final_ref), f"ours differs from the reference by {err}: not timing"
        tokens = bsz * seqlen
        fwd_bytes = 2 * tokens * C * 2 + bsz * C * (K - 1) * 2
        bwd_bytes = 3 * tokens * C * 2
        length = f"L{seqlen // 1024}K" if seqlen % 1024 == 0 else f"L{seqlen}"
        bench.measure(f"fwd B{bsz} {length}", pool, [
            Variant("ours: triton fwd (+ final state)", lambda s: causal_conv1d(
                s["x"], s["weight"], s["bias"], return_final_state=True), bytes=fwd_bytes),
            Variant("reference (torch)", lambda s: causal_conv1d_ref(
                s["x"], s["weight"], s["bias"], return_final_state=True), bytes=fwd_bytes, baseline=True),
        ], B=bsz, L=seqlen, C=C, K=K, kind="fwd")

        def ref_bwd(s):
            x = s["x"].detach().requires_grad_()
            w = s["weight"].detach().requires_grad_()
            b = s["bias"].detach().requires_grad_()
            return torch.autograd.grad(causal_conv1d_ref(x, w, b), (x, w, b), s["dy"])

        def ours_bwd(s):   # the backward custom op alone (on CPU, autograd of the public op: the reference)
            if not on_gpu:
                return ref_bwd(s)
            return causal_conv1d_bwd(s["x"], s["weight"], s["bias"], None, None, None, s["dy"], True)

        bench.measure(f"bwd B{bsz} {length}", pool, [
            Variant("ours: triton bwd (dx, dw, dbias)", ours_bwd, bytes=bwd_bytes),
            Variant("reference (torch autograd)", ref_bwd, bytes=bwd_bytes, baseline=True),
        ], B=bsz, L=seqlen, C=C, K=K, kind="bwd")

    slots = 512 if on_gpu else 4
    for bsz in (bench.pick(BATCHES, quick=(1, 256)) if on_gpu else (2,)):
        pool = bench.input_pool(_decode_maker(bsz, bench.device, slots))
        io_bytes = bsz * C * (2 + 2 * (K - 1) * 2 + 2)
        bench.measure(f"update B{bsz}", pool, [
            Variant("ours: triton update (slots)", lambda s: causal_conv1d_update(
                s["x"], s["state"], s["weight"], s["bias"], "silu", s["slot_idx"]), bytes=io_bytes),
            Variant("reference (torch)", lambda s: causal_conv1d_update_ref(
                s["x"], s["state"], s["weight"], s["bias"], "silu", s["slot_idx"]), bytes=io_bytes, baseline=True),
        ], B=bsz, C=C, K=K, kind="update")
