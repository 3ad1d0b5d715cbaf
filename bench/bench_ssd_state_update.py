"""ssd_state_update (one decode step, in place on state slots) at Nemotron 3 Nano's shape: H=64, P=64, G=8,
N=128, bf16 x/B/C/dt, fp32 (and bf16) state, D, dt_bias, softplus; batch 1, 64, 256 over a pool of 512 slots
(rows pick scattered slots, as the serving engine does).

ours:      the Triton kernel (one program per [BLOCK_P, N] block of a (row, head) state).
baselines: mamba_ssm 2.3.2 `selective_state_update` (Triton; A, dt, D, dt_bias broadcast over head dims with
           stride 0, state_batch_indices = the slots), as vLLM / transformers call it.
Bytes: the state read and written once (2 * B * H * P * N * element size) plus x, dt, B, C, y. Targets (issue #3):
>= 3.5 TB/s of state traffic at batch 256, <= 15 us at batch 1."""
import torch

from nemotron_kernels.ops.ssd_state_update import ssd_state_update
from nemotron_kernels.reference.ssd_state_update import ssd_state_update_ref

from ._mamba_ssm import load_mamba_ssm
from .harness import Bench, Variant

H, P, G, N, SLOTS = 64, 64, 8, 128, 512
BATCHES = (1, 64, 256)


def _input_maker(bsz: int, state_dtype, device: torch.device, slots: int):
    def make(i: int) -> dict:
        g = torch.Generator(device="cpu").manual_seed(i)

        def randn(*shape, scale=1.0):
            return (scale * torch.randn(*shape, generator=g)).to(device)

        return dict(state=randn(slots, H, P, N).to(state_dtype), x=randn(bsz, H, P).bfloat16(),
                    dt=randn(bsz, H, scale=0.5).sub(2.0).bfloat16(), A=-torch.exp(randn(H, scale=0.5)),
                    B=randn(bsz, G, N).bfloat16(), C=randn(bsz, G, N).bfloat16(), D=randn(H),
                    dt_bias=randn(H, scale=0.5), slot_idx=torch.randperm(slots, generator=g)[:bsz].int().to(device))
    return make


def _ours(s):
    return ssd_state_update(s["state"], s["x"], s["dt"], s["A"], s["B"], s["C"], D=s["D"], dt_bias=s["dt_bias"],
                            dt_softplus=True, slot_idx=s["slot_idx"])


def _mamba(ssu):
    def step(s):
        bsz = s["x"].shape[0]
        A = s["A"][:, None, None].expand(H, P, N)
        dt = s["dt"][:, :, None].expand(bsz, H, P)
        D = s["D"][:, None].expand(H, P)
        dt_bias = s["dt_bias"][:, None].expand(H, P)
        return ssu.selective_state_update(s["state"], s["x"], dt, A, s["B"], s["C"], D=D, dt_bias=dt_bias,
                                          dt_softplus=True, state_batch_indices=s["slot_idx"])
    return step


def run(bench: Bench) -> None:
    problems = [(b, torch.float32) for b in bench.pick(BATCHES, quick=(1, 256))] + [(256, torch.bfloat16)]
    slots = SLOTS
    if bench.device.type != "cuda":    # CPU smoke run of this code (the reference runs)
        problems, slots = [(2, torch.float32)], 4
    try:
        (ssu,) = load_mamba_ssm("selective_state_update")
    except Exception as e:  # noqa: BLE001  (the baseline is optional; say why it is missing)
        ssu = None
        print(f"  [ssd_state_update] mamba_ssm baseline unavailable: {type(e).__name__}: {e}")
    for bsz, state_dtype in problems:
        pool = bench.input_pool(_input_maker(bsz, state_dtype, bench.device, slots))
        first = pool[0]
        if bench.device.type == "cuda":   # ours vs the reference on copies of the first set
            s1, s2 = first["state"].clone(), first["state"].clone()
            y = ssd_state_update(s1, *(first[k] for k in ("x", "dt", "A", "B", "C")), D=first["D"],
                                 dt_bias=first["dt_bias"], dt_softplus=True, slot_idx=first["slot_idx"])
            y_ref = ssd_state_update_ref(s2, *(first[k] for k in ("x", "dt", "A", "B", "C")), D=first["D"],
                                         dt_bias=first["dt_bias"], dt_softplus=True, slot_idx=first["slot_idx"])
            err = (y.float() - y_ref.float()).abs().max().item() / y_ref.float().abs().max().item()
            assert err < 2e-2 and torch.allclose(s1.float(), s2.float(), rtol=1e-2, atol=1e-2), \
                f"ours differs from the reference (y relative err {err:.3e}): not timing it"
        elem = torch.empty(0, dtype=state_dtype).element_size()
        state_bytes = 2 * bsz * H * P * N * elem
        io_bytes = state_bytes + bsz * (2 * H * P * 2 + H * 2 + 2 * G * N * 2)
        variants = [Variant("ours: triton", _ours, bytes=io_bytes)]
        if ssu is not None and bench.device.type == "cuda":   # a GPU-only Triton baseline
            variants.append(Variant("mamba_ssm 2.3.2 selective_state_update", _mamba(ssu), bytes=io_bytes,
                                    baseline=True))
        if bench.device.type != "cuda":
            variants.append(Variant("reference (torch)", lambda s: ssd_state_update_ref(
                s["state"], *(s[k] for k in ("x", "dt", "A", "B", "C")), D=s["D"], dt_bias=s["dt_bias"],
                dt_softplus=True, slot_idx=s["slot_idx"]), baseline=True))
        name = f"B{bsz} {str(state_dtype).split('.')[-1]} state"
        bench.measure(name, pool, variants, B=bsz, H=H, P=P, G=G, N=N, state_dtype=str(state_dtype),
                      state_tbps_bytes=state_bytes)
