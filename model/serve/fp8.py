"""Selective FP8 (e4m3) as the Nemotron 3 Nano FP8 release ships it (spec §4.4).

FP8 weights and activations: the MoE experts (routed + shared) and in_proj / out_proj of the Mamba layers, except
the Mamba layer right before each attention layer (4, 11, 18, 25, 32, 41 in Nano). Everything else stays as is:
attention, those Mamba layers, every conv1d, norms, embeddings, lm_head; the router stays fp32.

Scales: one fp32 scale per weight tensor (per expert for the routed experts), as ModelOpt exports them; activations
use the checkpoint's static `input_scale` when there is one, else a dynamic scale per token (row); the routed
experts on a GPU always scale per token. GEMMs on a GPU: torch._scaled_mm with row-wise scales for the projections
(activations quantised per row by nemotron_kernels' fused quantize_fp8_rowwise kernel), our CUTLASS FP8 grouped
GEMMs (nemotron_kernels moe_experts_fp8) for the routed experts and, when its activation scales are dynamic, the
shared expert in the same call, out bf16. At decode sizes the FP8 GEMMs are weights-only instead (bf16 activations,
the e4m3 weights streamed by the weights-only grouped GEMV): the experts up to T * top_k = 16 rows, the projections
at one row (FP8Linear.WEIGHTS_ONLY_ROWS). Elsewhere (CPU,
or dims that are not multiples of 16) a reference path dequantises: the same fp8 values and scales, the matmul in
the compute dtype.

Checkpoints (ModelOpt HF export): `X.weight` F8_E4M3 [N, K], `X.weight_scale` F32 scalar, `X.input_scale` F32
scalar; routed experts per expert (`experts.{k}.up_proj.weight` ...); `k_proj.k_scale` / `v_proj.v_scale`.
"""
from __future__ import annotations

import json
import logging
import math
import os

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from model.checkpoint import CheckpointError, checkpoint_layout, keeps_fp32
from model.config import NemotronHConfig
from model.nemotron_h import NemotronH
from nemotron_kernels.ops.grouped_gemm import grouped_gemm_w8, one_group_offsets, quantize_fp8_rowwise
from nemotron_kernels.ops.moe_experts import moe_experts_fp8
from nemotron_kernels.reference.grouped_gemm import weights_only_for

log = logging.getLogger("model.serve")

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max   # 448


def fp8_plan(config: NemotronHConfig) -> dict[str, list[int]]:
    """Which layers get FP8: {"mamba": Mamba layers with FP8 projections, "mamba_bf16": the Mamba layers kept in
    BF16 (the last Mamba layer before each attention layer), "moe": MoE layers with FP8 experts}."""
    keep = set()
    for a in config.layer_indices("*"):
        before = [m for m in config.layer_indices("M") if m < a]
        if before:
            keep.add(before[-1])
    mamba = config.layer_indices("M")
    return {"mamba": [i for i in mamba if i not in keep], "mamba_bf16": sorted(keep),
            "moe": config.layer_indices("E")}


def quantize_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (any float) -> (w_fp8, scale fp32 scalar) with w ~= w_fp8 * scale (one scale for the whole tensor)."""
    amax = w.detach().abs().amax().float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    return (w.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def quantize_rows(x: torch.Tensor, static_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (x_fp8 [M, K], scale [M, 1] fp32): the static per-tensor scale, or a dynamic one per row.
    Dynamic: nemotron_kernels' quantize_fp8_rowwise, one fused kernel on a GPU (bitwise its reference, which runs
    elsewhere): scale = amax|x[r]| / 448 (1 for a zero row). The torch-op version it replaces took ~8 elementwise
    kernels and fp32 copies of x per call, before every FP8 projection."""
    if static_scale is None:
        q, scale = quantize_fp8_rowwise(x)                                       # [M, K] e4m3, [M]
        return q, scale[:, None]
    scale = static_scale.float().expand(x.shape[0], 1)
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale.contiguous()


def _positive_scale(t: torch.Tensor, what: str) -> float:
    """A per-tensor scale read from a checkpoint, as a Python float (checked finite and > 0)."""
    if t.numel() != 1:
        raise CheckpointError(f"{what}: expected one scale, got shape {list(t.shape)}")
    value = float(t.float().reshape(()))
    if not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{what}: scale must be finite and > 0, got {value}")
    return value


def _gpu_ok(*dims: int) -> bool:
    return all(d % 16 == 0 for d in dims)


class FP8Linear(nn.Module):
    """y = x W^T with W in e4m3 (weight [N, K], weight_scale scalar) and x quantised to e4m3 on the fly, except for
    a single row (decode at batch 1), which goes weights-only."""

    # Rows up to which the projection is weights-only. Every row multiplies the whole matrix, so the GEMV's CUDA-core
    # work grows with M while quantise + torch._scaled_mm stays flat: H200, in_proj, one-group e4m3 GEMV 18.7 us at
    # M=1 and 54.6 at M=8 against 22.3 / 22.1; weights-only at M=1 15.5 us, out_proj 7.5 against 15.7 (NOTES,
    # sessions 10-11). M = 2..7 were not timed, so only M = 1 goes weights-only.
    WEIGHTS_ONLY_ROWS = 1

    def __init__(self, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor | None,
                 out_dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = weight_fp8.shape
        self.register_buffer("weight", weight_fp8)                                # [N, K] e4m3
        self.register_buffer("weight_scale", weight_scale.float().reshape(()))    # scalar
        self.register_buffer("input_scale", None if input_scale is None else input_scale.float().reshape(()))
        self.out_dtype = out_dtype
        self.force_reference = False   # test hook: the dequantised path on any device
        self._derive_scales()
        self.register_load_state_dict_post_hook(lambda module, _: module._derive_scales())

    def _derive_scales(self) -> None:
        """The weight scale as the [1, N] vector row-wise GEMMs take (not saved; re-derived after a state-dict
        load, so a loaded scale never meets a stale copy)."""
        self.register_buffer("_scale_b", self.weight_scale.expand(1, self.out_features).contiguous(),
                             persistent=False)                                    # [1, N]

    @classmethod
    def from_linear(cls, linear: nn.Module) -> "FP8Linear":
        """From a bias-free linear with `weight` [N, K] (model.nemotron_h.Linear or nn.Linear)."""
        if getattr(linear, "bias", None) is not None:
            raise ValueError("FP8Linear: biased linears are not used by NemotronH")
        w, s = quantize_tensor(linear.weight)
        return cls(w, s, None, linear.weight.dtype)

    def _use_gpu(self, x: torch.Tensor) -> bool:
        return x.is_cuda and not self.force_reference and _gpu_ok(self.in_features, self.out_features)

    @property
    def path(self) -> str:
        return ("grouped_gemm_w8 (1 row), torch._scaled_mm" if self._use_gpu(self.weight)
                else "reference (dequantised)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)                                      # [M, K]
        rows = x2.shape[0]
        cdtype = torch.promote_types(x.dtype, torch.float32)
        if 0 < rows <= self.WEIGHTS_ONLY_ROWS:
            # decode at batch 1: weights-only, x as it is (the GEMM is a stream of the weights; quantising x would
            # cost a launch and its e4m3 rounding), through the one-group weights-only GEMV; input_scale is unused
            if self._use_gpu(x2) and x2.dtype == torch.bfloat16:
                offsets = one_group_offsets(rows, x2.device)                      # [0, M]: one group
                y = grouped_gemm_w8(x2, self.weight.unsqueeze(0), self._scale_b, offsets)
            else:
                y = x2.to(cdtype) @ (self.weight.to(cdtype) * self.weight_scale.to(cdtype)).t()
            return y.to(self.out_dtype).reshape(*lead, self.out_features)
        xq, sa = quantize_rows(x2, self.input_scale)
        if self._use_gpu(x2):
            y = torch._scaled_mm(xq, self.weight.t(), scale_a=sa, scale_b=self._scale_b, out_dtype=torch.bfloat16)
        else:
            y = (xq.to(cdtype) * sa.to(cdtype)) @ (self.weight.to(cdtype) * self.weight_scale.to(cdtype)).t()
        return y.to(self.out_dtype).reshape(*lead, self.out_features)


class FP8MoE(nn.Module):
    """A MoE layer whose experts (routed and shared) are FP8; the router is the original fp32 one.

    up [E, I, H], down [E, H, I] e4m3 with per-expert scales [E]; static input scales are per layer (the max over
    experts when a checkpoint has one per expert)."""

    def __init__(self, moe: nn.Module, up_fp8, up_scale, down_fp8, down_scale, up_input_scale=None,
                 down_input_scale=None, shared_up: FP8Linear | None = None, shared_down: FP8Linear | None = None):
        super().__init__()
        self.layer_idx, self.top_k, self.scale = moe.layer_idx, moe.top_k, moe.scale
        self.n_group, self.topk_group = moe.n_group, moe.topk_group
        self.gate = moe.gate
        E, I, H = up_fp8.shape
        self.register_buffer("up", up_fp8)                                        # [E, I, H] e4m3
        self.register_buffer("down", down_fp8)                                    # [E, H, I] e4m3
        self.register_buffer("up_scale", up_scale.float().reshape(E))             # [E]
        self.register_buffer("down_scale", down_scale.float().reshape(E))         # [E]
        self.register_buffer("up_input_scale", None if up_input_scale is None else up_input_scale.float().reshape(()))
        self.register_buffer("down_input_scale",
                             None if down_input_scale is None else down_input_scale.float().reshape(()))
        self.shared_up = shared_up if shared_up is not None else FP8Linear.from_linear(moe.shared_experts.up_proj)
        self.shared_down = shared_down if shared_down is not None else \
            FP8Linear.from_linear(moe.shared_experts.down_proj)
        self.out_dtype = self.shared_up.out_dtype
        self.force_reference = False   # test hook: the dequantised path on any device
        self._derive_scales()
        self.register_load_state_dict_post_hook(lambda module, _: module._derive_scales())

    def _derive_scales(self) -> None:
        """Per-expert scales as the per-channel [E, N] matrices the grouped GEMMs take (not saved; re-derived
        after a state-dict load)."""
        (E, I, H) = self.up.shape
        self.register_buffer("_up_scale_b", self.up_scale[:, None].expand(E, I).contiguous(), persistent=False)
        self.register_buffer("_down_scale_b", self.down_scale[:, None].expand(E, H).contiguous(), persistent=False)

    @classmethod
    def from_moe(cls, moe: nn.Module) -> "FP8MoE":
        up, down = moe.experts.up_proj.detach(), moe.experts.down_proj.detach()
        ups = [quantize_tensor(up[e]) for e in range(up.shape[0])]
        downs = [quantize_tensor(down[e]) for e in range(down.shape[0])]
        return cls(moe, torch.stack([q for q, _ in ups]), torch.stack([s for _, s in ups]),
                   torch.stack([q for q, _ in downs]), torch.stack([s for _, s in downs]))

    def _use_gpu(self, x: torch.Tensor) -> bool:
        return x.is_cuda and not self.force_reference and _gpu_ok(*self.up.shape[1:])

    def _shared_fused(self) -> bool:
        """The shared expert runs inside moe_experts_fp8 (on the routed path's quantised x, its output added by
        the unpermute) when it scales activations dynamically per row, as moe_experts_fp8 does; a checkpoint's
        static input scales keep it on its FP8Linears."""
        su, sd = self.shared_up, self.shared_down
        return (su.input_scale is None and sd.input_scale is None and not su.force_reference
                and not sd.force_reference and _gpu_ok(su.out_features, su.in_features))

    @property
    def path(self) -> str:
        return "moe_experts_fp8 (CUTLASS)" if self._use_gpu(self.up) else "reference (dequantised)"

    def forward(self, x: torch.Tensor, meta) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])                                           # [T, H]
        topk_idx, topk_weight, _ = meta.ops.moe_router(
            x2, self.gate.weight, self.gate.e_score_correction_bias, self.top_k, self.scale, self.n_group,
            self.topk_group)                                                      # [T, k], [T, k], [E]
        if self._use_gpu(x2):
            # our FP8 grouped GEMMs (relu^2 in the up GEMM's epilogue): 3.7x faster than torch._scaled_grouped_mm
            # at T=16384 (bench/NOTES.md, 2026-11-29)
            if self._shared_fused():
                # one pipeline: x quantised once, the shared expert's GEMMs (GEMV at decode sizes) beside the
                # routed ones, relu^2 fused, its output added in the unpermute (round(routed) + shared, rounded:
                # the arithmetic of the unfused path below)
                # the shared expert's per-tensor weight scales as the per-channel vectors the kernels take
                y = moe_experts_fp8(x2, topk_idx, topk_weight, self.up, self._up_scale_b, self.down,
                                    self._down_scale_b, self.shared_up.weight, self.shared_up._scale_b[0],
                                    self.shared_down.weight, self.shared_down._scale_b[0])
                return y.to(x.dtype).view_as(x)
            routed = moe_experts_fp8(x2, topk_idx, topk_weight, self.up, self._up_scale_b, self.down,
                                     self._down_scale_b).float()
        else:
            routed = self._routed_reference(x2, topk_idx, topk_weight, meta)
        shared = self.shared_down(torch.square(F.relu(self.shared_up(x2))))
        return (routed + shared).to(x.dtype).view_as(x)

    def _routed_reference(self, x2, topk_idx, topk_weight, meta):
        # down_e(relu(up_e x)^2) with up_e = s_up Q_up, down_e = s_down Q_down equals
        # s_down s_up^2 * Q_down(relu(Q_up x)^2): fold the scales into the routing weights
        cdtype = torch.promote_types(x2.dtype, torch.float32)
        if weights_only_for(topk_idx.numel()):                                    # decode: x as it is
            x_dq = x2.to(cdtype)
        else:
            xq, sa = quantize_rows(x2, self.up_input_scale)
            x_dq = xq.to(cdtype) * sa.to(cdtype)                                  # [T, H] fake-quantised input
        fold = (self.down_scale * self.up_scale.square()).to(cdtype)              # [E]
        w = topk_weight.to(cdtype) * fold[topk_idx.long()]                        # [T, k]
        return meta.ops.moe_experts(x_dq, topk_idx, w, self.up, self.down).float()


@torch.no_grad()
def quantize_model_fp8(model: NemotronH) -> dict[str, list[int]]:
    """Quantises a loaded BF16 model in place per `fp8_plan` (per-tensor weight scales, dynamic activation scales).
    Returns the plan."""
    plan = fp8_plan(model.config)
    for i in plan["mamba"]:
        mixer = model.layers[i].mixer
        mixer.in_proj = FP8Linear.from_linear(mixer.in_proj)
        mixer.out_proj = FP8Linear.from_linear(mixer.out_proj)
    for i in plan["moe"]:
        model.layers[i].mixer = FP8MoE.from_moe(model.layers[i].mixer)
    _report(model, plan)
    return plan


def _report(model: NemotronH, plan: dict) -> None:
    paths = sorted({m.path for m in model.modules() if isinstance(m, (FP8Linear, FP8MoE))})
    log.info("selective FP8: Mamba projections of layers %s, experts of MoE layers %s; BF16 Mamba layers %s; "
             "GEMM path: %s", plan["mamba"], plan["moe"], plan["mamba_bf16"], ", ".join(paths) or "none")


# ---------------------------------------------------------------------- ModelOpt-style FP8 checkpoints
def _all_keys(directory: str) -> dict[str, str]:
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return {k: os.path.join(directory, v) for k, v in json.load(f)["weight_map"].items()}
    single = os.path.join(directory, "model.safetensors")
    if not os.path.exists(single):
        raise CheckpointError(f"{directory}: neither model.safetensors nor model.safetensors.index.json found")
    with safe_open(single, framework="pt") as f:
        return {k: single for k in f.keys()}


def is_fp8_checkpoint(directory: str) -> bool:
    return any(k.endswith(".weight_scale") for k in _all_keys(os.fspath(directory)))


@torch.no_grad()
def load_fp8_checkpoint(directory: str, *, device="cuda", dtype: torch.dtype = torch.bfloat16,
                        backend: str = "auto") -> NemotronH:
    """A ModelOpt-style FP8 checkpoint -> NemotronH with FP8Linear / FP8MoE modules where the checkpoint has
    quantised weights, BF16 (router fp32) elsewhere. k_proj.k_scale / v_proj.v_scale become the attention layers'
    k_scale / v_scale: FP8 KV pages (kv_cache_dtype="fp8") then hold k / k_scale and v / v_scale."""
    directory = os.fspath(directory)
    config = NemotronHConfig.from_hf_config(directory)
    with torch.device("meta"):
        model = NemotronH(config, backend=backend, dtype=dtype)
    keys = _all_keys(directory)
    handles = {}

    def get(key):
        path = keys.get(key)
        if path is None:
            raise CheckpointError(f"{directory}: missing key {key!r}")
        if path not in handles:
            handles[path] = safe_open(path, framework="pt", device="cpu")
        return handles[path].get_tensor(key).to(device)

    def has(key):
        return key in keys

    def linear(prefix, out_dtype):
        scale = get(prefix + ".weight_scale")
        inp = get(prefix + ".input_scale") if has(prefix + ".input_scale") else None
        w = get(prefix + ".weight")
        if w.dtype != FP8:
            raise CheckpointError(f"{keys[prefix + '.weight']}: {prefix}.weight has dtype {w.dtype}, expected e4m3")
        return FP8Linear(w, scale, inp, out_dtype)

    used = set()
    for i, block in enumerate(model.layers):
        p = f"backbone.layers.{i}.mixer"
        if block.kind == "M" and has(f"{p}.in_proj.weight_scale"):
            block.mixer.in_proj = linear(f"{p}.in_proj", dtype)
            block.mixer.out_proj = linear(f"{p}.out_proj", dtype)
            used |= {f"{p}.{n}.{s}" for n in ("in_proj", "out_proj") for s in ("weight", "weight_scale",
                                                                                "input_scale")}
        elif block.kind == "E" and has(f"{p}.experts.0.up_proj.weight_scale"):
            E = config.n_routed_experts
            parts = {}
            for proj in ("up_proj", "down_proj"):
                ws = [get(f"{p}.experts.{e}.{proj}.weight") for e in range(E)]
                ss = [get(f"{p}.experts.{e}.{proj}.weight_scale") for e in range(E)]
                ins = [get(f"{p}.experts.{e}.{proj}.input_scale") for e in range(E)
                       if has(f"{p}.experts.{e}.{proj}.input_scale")]
                parts[proj] = (torch.stack(ws), torch.stack(ss).reshape(E),
                               torch.stack(ins).max() if ins else None)
                used |= {f"{p}.experts.{e}.{proj}.{s}" for e in range(E)
                         for s in ("weight", "weight_scale", "input_scale")}
            shared_up, shared_down = linear(f"{p}.shared_experts.up_proj", dtype), \
                linear(f"{p}.shared_experts.down_proj", dtype)
            used |= {f"{p}.shared_experts.{n}.{s}" for n in ("up_proj", "down_proj")
                     for s in ("weight", "weight_scale", "input_scale")}
            (up, up_s, up_in), (down, down_s, down_in) = parts["up_proj"], parts["down_proj"]
            block.mixer = FP8MoE(block.mixer, up, up_s, down, down_s, up_in, down_in, shared_up, shared_down)
    for i in config.layer_indices("*"):                   # FP8 KV-cache scales (used with kv_cache_dtype="fp8")
        attn, p = model.layers[i].mixer, f"backbone.layers.{i}.mixer"
        for proj, name in (("k_proj", "k_scale"), ("v_proj", "v_scale")):
            key = f"{p}.{proj}.{name}"
            if has(key):
                setattr(attn, name, _positive_scale(get(key), f"{keys[key]}: {key}"))
                used.add(key)

    # the rest: plain tensors in the layout of model.checkpoint (router fp32); FP8 modules are loaded already
    layout = checkpoint_layout(model)
    current = model.state_dict(keep_vars=True)
    state = {}
    for key, (name, expert, shape) in layout.items():
        if not current[name].is_meta:
            continue
        t = get(key)
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{keys[key]}: key {key!r} has shape {list(t.shape)}, expected {list(shape)}")
        target = torch.float32 if keeps_fp32(name) else dtype
        if expert is None:
            state[name] = t.to(target)
        else:
            state.setdefault(name, torch.empty(current[name].shape, device=device, dtype=target))[expert].copy_(t)
        used.add(key)
    unexpected = sorted(set(keys) - used)
    if unexpected:
        raise CheckpointError(f"{keys[unexpected[0]]}: unexpected key {unexpected[0]!r} "
                              f"({len(unexpected)} unexpected keys)")
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["embeddings.weight"]
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{directory}: no weights for {left[:4]} ({len(left)} tensors)")
    _report(model, fp8_plan(config))
    return model


@torch.no_grad()
def save_fp8_checkpoint(model: NemotronH, directory: str) -> None:
    """Writes a quantised model (quantize_model_fp8 / load_fp8_checkpoint) as a ModelOpt-style FP8 checkpoint:
    config.json (+ quantization_config), hf_quant_config.json and one model.safetensors."""
    os.makedirs(directory, exist_ok=True)
    tensors = {}

    def put_linear(prefix, m: FP8Linear):
        tensors[prefix + ".weight"] = m.weight
        tensors[prefix + ".weight_scale"] = m.weight_scale
        if m.input_scale is not None:
            tensors[prefix + ".input_scale"] = m.input_scale

    fp8_moe = {i for i, block in enumerate(model.layers) if isinstance(block.mixer, FP8MoE)}
    state = model.state_dict()
    for key, (name, expert, _) in checkpoint_layout(model).items():
        parts = name.split(".")
        if parts[0] == "layers" and int(parts[1]) in fp8_moe and parts[2] == "mixer" and not name.endswith(
                (".gate.weight", ".gate.e_score_correction_bias")):
            continue                                                              # FP8 experts: below
        t = state[name]
        tensors[key] = t if expert is None else t[expert]
    for i in sorted(fp8_moe):
        p, m = f"backbone.layers.{i}.mixer", model.layers[i].mixer
        for e in range(m.up.shape[0]):
            for proj, w, s, inp in (("up_proj", m.up, m.up_scale, m.up_input_scale),
                                    ("down_proj", m.down, m.down_scale, m.down_input_scale)):
                tensors[f"{p}.experts.{e}.{proj}.weight"] = w[e]
                tensors[f"{p}.experts.{e}.{proj}.weight_scale"] = s[e]
                if inp is not None:
                    tensors[f"{p}.experts.{e}.{proj}.input_scale"] = inp
        put_linear(f"{p}.shared_experts.up_proj", m.shared_up)
        put_linear(f"{p}.shared_experts.down_proj", m.shared_down)
    kv_scaled = False
    for i in model.config.layer_indices("*"):
        attn = model.layers[i].mixer
        if (attn.k_scale, attn.v_scale) != (1.0, 1.0):
            kv_scaled = True
            tensors[f"backbone.layers.{i}.mixer.k_proj.k_scale"] = torch.tensor(attn.k_scale, dtype=torch.float32)
            tensors[f"backbone.layers.{i}.mixer.v_proj.v_scale"] = torch.tensor(attn.v_scale, dtype=torch.float32)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_hf_config(dtype="bfloat16")
    quant = {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8" if kv_scaled else None,
             "exclude_modules": ["lm_head"] + [f"backbone.layers.{i}.mixer" for i in
                                               fp8_plan(model.config)["mamba_bf16"] + model.config.layer_indices("*")]}
    cfg["quantization_config"] = quant
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    with open(os.path.join(directory, "hf_quant_config.json"), "w") as f:
        json.dump({"producer": {"name": "nemotron-kernels"}, "quantization": quant}, f, indent=2)
