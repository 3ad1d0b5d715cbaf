"""One MoE layer of one decode token (Nemotron 3 Nano: H 2688, 128 experts, top-6, I 1856, shared expert 3712),
timed as CUDA graphs in two schedules, BF16 and weights-only FP8 (W8):
  now      router -> up GEMV (routed + shared in one launch) -> down + weighted sum (moe_experts' decode path)
  overlap  the shared expert's up GEMV on a side stream, a graph branch beside the router; then the routed up
           alone, the join, and the same down + weighted sum
The router keeps few SMs busy for ~5.7 µs per layer at B1 (bench/NOTES.md, session 17 profile), and the shared up
streams 20 MB (W8: 10 MB) that does not depend on it. Before the model changes, this measures whether the
overlap pays for its extra launch (#6: decode at batch 1). Also times the parts alone. Eight copies of the
router and shared-expert weights rotate (each layer's are L2-cold in the model); the routed experts are one set
of 128 (2.5 GB), of which random routing touches 6 per call.
    PYTHONPATH=. python3 scripts/bench_moe_decode_overlap.py      # from the repository root, after building"""
import torch

from bench.bench_grouped_gemm import EXPERTS, HIDDEN, INTER, TOP_K, make_weights
from bench.harness import cuda_times
from nemotron_kernels.ops.grouped_gemm import (grouped_gemm_nt, grouped_gemm_w8_nt, moe_decode_down,
                                               moe_decode_gemv)
from nemotron_kernels.ops.moe_experts import moe_experts, moe_experts_fp8, quantize_experts_fp8
from nemotron_kernels.ops.moe_router import moe_router_gate

SHARED, SCALE, LAYERS = 3712, 2.5, 8


def make_layers(up, down, w8: bool) -> list[dict]:
    """LAYERS sets of (router, shared expert) weights around one set of routed experts, bf16 or e4m3 (W8)."""
    layers = []
    routed = quantize_experts_fp8(up, down) if w8 else dict(up_q=up, up_scale=None, down_q=down, down_scale=None)
    for _ in range(LAYERS):
        s_up = (torch.randn(SHARED, HIDDEN, device="cuda") * HIDDEN ** -0.5).to(torch.bfloat16)
        s_down = (torch.randn(HIDDEN, SHARED, device="cuda") * SHARED ** -0.5).to(torch.bfloat16)
        shared = (quantize_experts_fp8(None, None, s_up, s_down) if w8 else
                  dict(shared_up_q=s_up, shared_up_scale=None, shared_down_q=s_down, shared_down_scale=None))
        layers.append(dict(gate=torch.randn(EXPERTS, HIDDEN, device="cuda") * HIDDEN ** -0.5,
                           bias=torch.randn(EXPERTS, device="cuda") * 0.01, **routed,
                           **{k: v for k, v in shared.items() if k.startswith("shared")}))
    return layers


def route(x, L):
    _, idx, weight, _ = moe_router_gate(x, L["gate"], L["bias"], TOP_K, SCALE, 1, 1)   # [1, k] int32, [1, k] fp32
    return idx, weight


def now(s, layers, w8: bool):
    """The model's schedule today: the ops it calls."""
    L = layers[s["layer"]]
    idx, weight = route(s["x"], L)
    if w8:
        return moe_experts_fp8(s["x"], idx, weight, L["up_q"], L["up_scale"], L["down_q"], L["down_scale"],
                               L["shared_up_q"], L["shared_up_scale"], L["shared_down_q"], L["shared_down_scale"])
    return moe_experts(s["x"], idx, weight, L["up_q"], L["down_q"], L["shared_up_q"], L["shared_down_q"])


def shared_up(x, L, one):
    """The shared expert's up GEMV alone (one group; the GEMV path with its K split for a small grid)."""
    if L["shared_up_scale"] is None:
        return grouped_gemm_nt(x, L["shared_up_q"][None], one, True)                       # [1, Is]
    return grouped_gemm_w8_nt(x, L["shared_up_q"][None], L["shared_up_scale"][None], one, True)


def overlap(s, layers, side, one):
    """The shared up on `side` beside the router, joined before the down."""
    L = layers[s["layer"]]
    main = torch.cuda.current_stream()
    side.wait_stream(main)
    with torch.cuda.stream(side):
        hs = shared_up(s["x"], L, one)                                                      # [1, Is]
    idx, weight = route(s["x"], L)
    h, _ = moe_decode_gemv(s["x"], idx, L["up_q"], L["up_scale"], None, None, None, True)   # [k, I]
    main.wait_stream(side)
    # hs was made on `side` and is freed after main's last use: safe without record_stream, as the next call's
    # side work waits for everything main queued before it (the fork above), this call's down included.
    return moe_decode_down(h, idx, weight, L["down_q"], L["down_scale"], hs, L["shared_down_q"],
                           L["shared_down_scale"])                                          # [1, H]


def main():
    print(f"{torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs")
    gen = torch.Generator().manual_seed(0)
    up, down = make_weights("cuda")
    one = torch.tensor([0, 1], dtype=torch.int32, device="cuda")
    side = torch.cuda.Stream()
    pool = [dict(x=torch.randn(1, HIDDEN, generator=gen).to("cuda", torch.bfloat16), layer=i % LAYERS)
            for i in range(2 * LAYERS)]
    for w8 in (False, True):
        layers = make_layers(up, down, w8)
        a, b = now(pool[0], layers, w8), overlap(pool[0], layers, side, one)
        torch.cuda.synchronize()
        diff = (a.float() - b.float()).abs().max().item()
        rows = {"now: router, up (routed + shared), down": lambda s: now(s, layers, w8),
                "overlap: shared up beside the router": lambda s: overlap(s, layers, side, one),
                "  router alone": lambda s: route(s["x"], layers[s["layer"]]),
                "  shared up alone": lambda s: shared_up(s["x"], layers[s["layer"]], one)}
        print(f"{'W8' if w8 else 'BF16'} (now vs overlap: max |diff| {diff:.3g})")
        for name, fn in rows.items():
            t = cuda_times(fn, pool, reps=50, graph_replays=20)
            print(f"  {name:<44} {t['ms'] * 1e3:7.2f} us  (eager {t['ms_eager'] * 1e3:7.2f})")
        del layers


if __name__ == "__main__":
    main()
