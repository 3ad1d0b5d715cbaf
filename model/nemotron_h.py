"""NemotronH (Nemotron 3 Nano 30B-A3B) in one lean PyTorch file.

Architecture (nemotron3_nano_spec.md §2), one choice per line:
  * token embedding, no scaling, NO positional encoding anywhere (no RoPE);
  * `pattern` of pre-norm residual blocks: h = h + Mixer(RMSNorm(h)), exactly one mixer per block:
      M  Mamba-2: in_proj -> z | xBC | dt; depthwise causal conv (K) + SiLU over xBC; chunked SSD scan with
         A = -exp(A_log), dt = softplus(dt + dt_bias) (clamped to time_step_limit when that is not (0, inf)),
         per-head D skip; gated RMSNorm of y * silu(z) over n_groups groups; out_proj;
      *  GQA attention: q/k/v/o projections without bias, causal softmax(q k^T / sqrt(D)), kv head j // (Hq/Hkv);
      E  MoE: fp32 sigmoid router, correction bias for selection only, top-k renormalised x routed_scaling_factor,
         non-gated squared-ReLU experts stored stacked [E, I, H] / [E, H, I], plus one always-on shared expert;
      -  dense squared-ReLU MLP (not used by Nano);
  * final RMSNorm (norm_f), untied lm_head (tying supported).
All mixer math goes through the public ops of `nemotron_kernels.ops_for(backend)`; linears are plain F.linear.
Parameter names are the Hugging Face checkpoint keys without `backbone.` (experts stacked), see checkpoint.py.
Inference over a model.cache.HybridCache: prefill / decode_step, and forward_step for a serving step that
mixes decode tokens with prefill chunks (only the Mamba and attention mixers split them).

Shape legend: B batch rows, L tokens per row, T = B*L tokens (packed: B = 1, T = L), S sequences,
H hidden, V vocab; Hm Mamba heads, P Mamba head dim, G groups, N state, C = conv channels (x|B|C), K conv width;
Hq / Hkv attention heads, D attention head dim; E experts, k experts per token, I expert width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from nemotron_kernels import ops_for
from nemotron_kernels.reference.grouped_gemm import E4M3_MAX as _E4M3_MAX

from .config import NemotronHConfig


@dataclass
class ForwardMeta:
    """What one forward call needs besides the activations; passed explicitly through every block."""
    ops: SimpleNamespace                       # the op namespace of the model's backend
    cu_seqlens: torch.Tensor | None = None     # [S+1] int32 offsets of packed sequences (B = 1)
    offsets: list[int] | None = None           # cu_seqlens on the host
    max_seqlen: int | None = None
    # inference only (prefill / decode_step / forward_step)
    cache: object | None = None                # model.cache.HybridCache
    slots: torch.Tensor | None = None          # [S] int64 cache slots of the sequences
    block_table: torch.Tensor | None = None    # [S, max_blocks] int32 KV pages of the sequences
    seq_lens: torch.Tensor | None = None       # [S] int32 cached tokens after this call (current ones included)
    kv_write_idx: torch.Tensor | None = None   # [T] int64 flat KV-page row of every new token
    host_slots: list[int] | None = None        # slots and cached lengths after this call, on the host
    host_seq_lens: list[int] | None = None
    fresh: bool = True                         # no prefill sequence had cached tokens before this call
    decode: bool = False                       # one token per sequence; activations are [S, H]
    # mixed step (forward_step): sequences 0..num_decodes-1 feed one decode token each (tokens 0..num_decodes-1),
    # the others packed prefill chunks (cu_seqlens / offsets / max_seqlen describe those, from token num_decodes)
    num_decodes: int = 0
    # MoE outputs for load balancing, filled in layer order when requested
    router_counts: list | None = None          # per MoE layer: [E] int32 tokens routed to each expert
    router_scores: list | None = None          # per MoE layer: [T, E] fp32 sigmoid scores (differentiable)
    router_ids: list | None = None             # per MoE layer: [T, k] int32 experts the router selected
    _parts: tuple | None = field(default=None, repr=False, compare=False)

    def record_routing(self, x2: torch.Tensor, gate_weight: torch.Tensor, counts: torch.Tensor,
                       topk_idx: torch.Tensor) -> None:
        """A MoE layer's routing, for the lists that were asked for: counts [E], the sigmoid scores [T, E] of the
        tokens x2 [T, H] (fp32, differentiable in x2 and the gate), the chosen experts topk_idx [T, k]."""
        if self.router_counts is not None:
            self.router_counts.append(counts)
        if self.router_ids is not None:
            self.router_ids.append(topk_idx)
        if self.router_scores is not None:
            cdtype = torch.promote_types(x2.dtype, torch.float32)
            self.router_scores.append(torch.sigmoid(F.linear(x2.to(cdtype), gate_weight.to(cdtype))))

    @property
    def mixed(self) -> bool:
        """Decode tokens and prefill chunks in one call (activations [T, H])."""
        return self.num_decodes > 0 and not self.decode

    def split(self) -> tuple[ForwardMeta, ForwardMeta]:
        """(decode part, prefill part) of a mixed step, built once. The KV writes (kv_write_idx) stay with the
        whole step: the stateful mixers write every token's keys / values first, then attend part by part."""
        if self._parts is None:
            n = self.num_decodes

            def rows(t, a, b):
                return None if t is None else t[a:b]

            dec = ForwardMeta(ops=self.ops, cache=self.cache, slots=rows(self.slots, 0, n),
                              block_table=rows(self.block_table, 0, n), seq_lens=rows(self.seq_lens, 0, n),
                              fresh=False, decode=True)
            pre = ForwardMeta(ops=self.ops, cache=self.cache, cu_seqlens=self.cu_seqlens, offsets=self.offsets,
                              max_seqlen=self.max_seqlen, slots=rows(self.slots, n, None),
                              block_table=rows(self.block_table, n, None), seq_lens=rows(self.seq_lens, n, None),
                              fresh=self.fresh)
            self._parts = (dec, pre)
        return self._parts


@dataclass
class MoEAux:
    """Per-MoE-layer router outputs of one forward (load balancing / auxiliary losses)."""
    counts: list[torch.Tensor] = field(default_factory=list)   # [E] int32 each
    scores: list[torch.Tensor] = field(default_factory=list)   # [T, E] fp32 each (sigmoid, before the bias)
    ids: list[torch.Tensor] = field(default_factory=list)      # [T, k] int32 each (the router's selection)


class Linear(nn.Module):
    """y = x W^T, no bias; weight [out, in]. Unlike nn.Linear it has no default init (cheap meta construction):
    init_weights() or a checkpoint fills it."""

    def __init__(self, in_features: int, out_features: int, **factory):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))  # [out, in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DepthwiseConv(nn.Module):
    """Parameters of the depthwise causal conv, in the checkpoint's Conv1d layout; ops.causal_conv1d runs it."""

    def __init__(self, channels: int, width: int, bias: bool, **factory):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, width, **factory))        # [C, 1, K]
        self.bias = nn.Parameter(torch.empty(channels, **factory)) if bias else None  # [C]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, **factory):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, **factory))  # [dim]
        self.eps = eps

    def forward(self, x: torch.Tensor, meta: ForwardMeta, residual: torch.Tensor | None = None):
        """norm(x); with a residual, (norm(x + residual), x + residual) from one fused op."""
        if residual is None:
            return meta.ops.rmsnorm(x, self.weight, self.eps)
        return meta.ops.rmsnorm(x, self.weight, self.eps, residual)


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: NemotronHConfig, layer_idx: int, **factory):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.head_dim = cfg.mamba_num_heads, cfg.mamba_head_dim
        self.n_groups, self.state_size = cfg.n_groups, cfg.ssm_state_size
        self.d_inner, self.conv_dim, self.chunk_size = cfg.d_inner, cfg.conv_dim, cfg.chunk_size
        self.time_step_limit = cfg.time_step_limit
        self.in_proj = Linear(cfg.hidden_size, cfg.in_proj_dim, **factory)  # H -> z | xBC | dt
        self.conv1d = DepthwiseConv(self.conv_dim, cfg.conv_kernel, cfg.use_conv_bias, **factory)
        self.A_log = nn.Parameter(torch.empty(self.num_heads, **factory))    # [Hm]
        self.D = nn.Parameter(torch.empty(self.num_heads, **factory))        # [Hm]
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads, **factory))  # [Hm]
        self.norm = RMSNorm(self.d_inner, cfg.layer_norm_epsilon, **factory)  # gated, groups of d_inner/G
        self.out_proj = Linear(self.d_inner, cfg.hidden_size, **factory)

    def _A(self) -> torch.Tensor:
        """A = -exp(A_log) [Hm] in fp32 (fp64 stays fp64). For frozen weights (A_log.requires_grad False, as the
        serving engine sets them) it is kept until A_log changes (its version counter or storage), so inference steps
        and their CUDA graphs skip three tiny kernels per layer. Trainable weights never use the kept value: fused
        optimizers update them without bumping the version counter. Nor is a value made under inference_mode kept:
        an inference tensor cannot enter a later autograd graph (and inference tensors have no version)."""
        A_log = self.A_log
        keep = not (A_log.requires_grad or A_log.is_inference() or torch.is_inference_mode_enabled())
        key = (A_log._version, A_log.data_ptr(), A_log.dtype, A_log.device) if keep else None
        cached = self.__dict__.get("_A_cache")
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        A = -torch.exp(A_log.to(torch.promote_types(A_log.dtype, torch.float32)))
        if key is not None:
            self.__dict__["_A_cache"] = (key, A)
        return A

    def _dt_args(self, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """(dt, dt_bias, dt_softplus) for the ops: the ops fuse bias + softplus; a non-default time_step_limit
        needs the clamp after the softplus, so then it is applied here."""
        if self.time_step_limit == (0.0, math.inf):
            return dt, self.dt_bias, True
        lo, hi = self.time_step_limit
        cdtype = torch.promote_types(dt.dtype, torch.float32)
        dt = F.softplus(dt.to(cdtype) + self.dt_bias.to(cdtype)).clamp(lo, hi).to(dt.dtype)
        return dt, None, False

    def forward(self, x: torch.Tensor, meta: ForwardMeta) -> torch.Tensor:
        zxbcdt = self.in_proj(x)                                              # [..., d_inner + C + Hm]
        z, xBC, dt = zxbcdt.split([self.d_inner, self.conv_dim, self.num_heads], dim=-1)
        A = self._A()                                                         # [Hm] fp32 / fp64
        dt, dt_bias, dt_softplus = self._dt_args(dt)
        dt_args = (A, dt_bias, dt_softplus)
        if meta.decode:                                                       # x: [S, H]
            y = self._step(xBC, dt, dt_args, meta)                            # [S, d_inner]
        elif meta.mixed:                                                      # x: [T, H] decode tokens, then chunks
            dec, pre = meta.split()
            n = meta.num_decodes
            y = torch.cat([self._step(xBC[:n], dt[:n], dt_args, dec),
                           self._scan(xBC[n:][None], dt[n:][None], dt_args, pre)[0]])   # [T, d_inner]
        else:                                                                 # x: [B, L, H]
            y = self._scan(xBC, dt, dt_args, meta)                            # [B, L, d_inner]
        y = meta.ops.gated_rmsnorm(y, z, self.norm.weight, self.d_inner // self.n_groups, self.norm.eps)
        return self.out_proj(y.to(x.dtype))                                   # norm(y * silu(z)) W_out^T

    def _step(self, xBC: torch.Tensor, dt: torch.Tensor, dt_args, meta: ForwardMeta) -> torch.Tensor:
        """One token per sequence: xBC [S, C], dt [S, Hm] -> y [S, d_inner]; rolls the conv state and advances the
        SSM state of meta.slots in place."""
        ops, cache, i = meta.ops, meta.cache, self.layer_idx
        G, N, Hm, P = self.n_groups, self.state_size, self.num_heads, self.head_dim
        A, dt_bias, dt_softplus = dt_args
        S = xBC.shape[0]
        xBC = ops.causal_conv1d_update(xBC, cache.conv[i], self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu",
                                       slot_idx=meta.slots)                   # [S, C]
        xs, B, C = xBC.split([self.d_inner, G * N, G * N], dim=-1)
        y = ops.ssd_state_update(cache.ssm[i], xs.reshape(S, Hm, P), dt, A, B.reshape(S, G, N), C.reshape(S, G, N),
                                 D=self.D, dt_bias=dt_bias, dt_softplus=dt_softplus, slot_idx=meta.slots)  # [S, Hm, P]
        return y.reshape(S, self.d_inner)

    def _scan(self, xBC: torch.Tensor, dt: torch.Tensor, dt_args, meta: ForwardMeta) -> torch.Tensor:
        """Whole sequences or chunks: xBC [B, L, C], dt [B, L, Hm] -> y [B, L, d_inner]. With a cache the chunks
        continue from the slots' states (unless meta.fresh) and leave their final states there."""
        ops, cache, i = meta.ops, meta.cache, self.layer_idx
        G, N, Hm, P = self.n_groups, self.state_size, self.num_heads, self.head_dim
        A, dt_bias, dt_softplus = dt_args
        Bsz, L = xBC.shape[:2]
        conv0 = ssm0 = None
        if cache is not None and not meta.fresh:
            conv0, ssm0 = cache.conv[i][meta.slots], cache.ssm[i][meta.slots]  # [S, C, K-1], [S, Hm, P, N]
        out = ops.causal_conv1d(xBC, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu",
                                cu_seqlens=meta.cu_seqlens, initial_state=conv0, return_final_state=cache is not None)
        xBC, conv_final = out if cache is not None else (out, None)          # [B, L, C], [S, C, K-1]
        xs, B, C = xBC.split([self.d_inner, G * N, G * N], dim=-1)
        out = ops.ssd_scan(xs.reshape(Bsz, L, Hm, P), dt, A, B.reshape(Bsz, L, G, N), C.reshape(Bsz, L, G, N),
                           D=self.D, dt_bias=dt_bias, dt_softplus=dt_softplus, chunk_size=self.chunk_size,
                           initial_states=ssm0, cu_seqlens=meta.cu_seqlens, return_final_states=cache is not None)
        y, ssm_final = out if cache is not None else (out, None)              # [B, L, Hm, P], [S, Hm, P, N]
        if cache is not None:
            cache.conv[i][meta.slots] = conv_final.to(cache.conv[i].dtype)
            cache.ssm[i][meta.slots] = ssm_final.to(cache.ssm[i].dtype)
        return y.reshape(Bsz, L, self.d_inner)


class Attention(nn.Module):
    def __init__(self, cfg: NemotronHConfig, layer_idx: int, **factory):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        H, D = cfg.hidden_size, cfg.head_dim
        self.q_proj = Linear(H, self.num_heads * D, **factory)
        self.k_proj = Linear(H, self.num_kv_heads * D, **factory)
        self.v_proj = Linear(H, self.num_kv_heads * D, **factory)
        self.o_proj = Linear(self.num_heads * D, H, **factory)
        # FP8 KV pages hold k / k_scale and v / v_scale (per-tensor, ModelOpt's k_proj.k_scale / v_proj.v_scale);
        # plain floats, so decode folds them into its scales without reading the GPU (a cache built with
        # kv_scales="device" has its own, computed on the device)
        self.k_scale, self.v_scale = 1.0, 1.0
        # [Nq + 2 Nkv, H] once fuse_qkv() has laid the three weights out together (moves with the module)
        self.register_buffer("qkv_weight", None, persistent=False)

    def fuse_qkv(self) -> bool:
        """Lays the q, k and v weights out as one [Nq + 2 Nkv, H] tensor, each projection's Parameter a view of its
        rows (same state-dict keys, no extra memory), so forward runs one GEMM, not three (two of them small: a
        launch each at decode). Only for three plain Linears of one dtype and device; returns whether it fused."""
        lins = (self.q_proj, self.k_proj, self.v_proj)
        if self.qkv_weight is not None or any(type(lin) is not Linear for lin in lins):
            return False
        w = [lin.weight for lin in lins]
        if len({(t.dtype, t.device) for t in w}) != 1:
            return False
        fused = torch.cat([t.detach() for t in w])                            # [Nq + 2 Nkv, H]
        start = 0
        for lin, t in zip(lins, w):
            lin.weight = nn.Parameter(fused[start:start + t.shape[0]], requires_grad=t.requires_grad)
            start += t.shape[0]
        self.qkv_weight = fused
        return True

    def _project(self, x: torch.Tensor):
        """q [..., Nq], k, v [..., Nkv] of x: one GEMM over the fused weight (then column views), else three. A
        projection whose weight no longer lies in the fused tensor (replaced since, or moved by .to()) unfuses."""
        w, lins = self.qkv_weight, (self.q_proj, self.k_proj, self.v_proj)
        if w is not None:
            start = w.data_ptr()
            for lin in lins:
                if type(lin) is not Linear or lin.weight.data_ptr() != start:
                    w = self.qkv_weight = None
                    break
                start += lin.weight.numel() * lin.weight.element_size()
        if w is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return F.linear(x, w).split([lin.out_features for lin in lins], dim=-1)

    def forward(self, x: torch.Tensor, meta: ForwardMeta) -> torch.Tensor:
        D = self.head_dim
        lead = x.shape[:-1]                                                   # [B, L], [S] (decode) or [T] (mixed)
        q, k, v = self._project(x)
        q = q.view(*lead, self.num_heads, D)                                  # [..., Hq, D]
        k = k.view(*lead, self.num_kv_heads, D)                               # [..., Hkv, D]
        v = v.view(*lead, self.num_kv_heads, D)
        if meta.cache is not None:
            self._write_pages(meta.cache, k, v, meta.kv_write_idx, calibrate=not meta.decode)
        if meta.mixed:                                                        # [T, ...]: decode tokens, then chunks
            dec, pre = meta.split()
            n = meta.num_decodes
            o = torch.cat([self._attend(q[:n], k[:n], v[:n], dec),
                           self._attend(q[n:][None], k[n:][None], v[n:][None], pre)[0]])
        else:
            o = self._attend(q, k, v, meta)
        return self.o_proj(o.reshape(*lead, self.num_heads * D))

    def _kv_scales(self, cache) -> tuple:
        """(k_scale, v_scale) of this layer's FP8 pages: the cache's device tensors, else the layer's floats."""
        if cache.k_scale is not None:
            return cache.k_scale[self.layer_idx], cache.v_scale[self.layer_idx]
        return self.k_scale, self.v_scale

    def _write_pages(self, cache, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, calibrate: bool) -> None:
        """The new keys / values into their page rows (rows [T] flat indices into [num_blocks * block_size]).
        calibrate: a prefill may set the cache's device-computed FP8 scales (the layer's first one does)."""
        i = self.layer_idx
        fp8 = cache.k[i].dtype == torch.float8_e4m3fn
        if fp8 and calibrate and cache.k_scale is not None and i not in cache.kv_calibrated:
            cache.calibrate_kv(i, k, v)
        scales = self._kv_scales(cache) if fp8 else (1.0, 1.0)
        for new, pages, scale in ((k, cache.k[i], scales[0]), (v, cache.v[i], scales[1])):
            new = new.reshape(-1, self.num_kv_heads, self.head_dim)           # [T, Hkv, D]
            if fp8:                                                           # scaled into e4m3's range
                new = (new.to(torch.promote_types(new.dtype, torch.float32)) / scale).clamp(-_E4M3_MAX, _E4M3_MAX)
            pages.view(-1, self.num_kv_heads, self.head_dim)[rows] = new.to(pages.dtype)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: ForwardMeta) -> torch.Tensor:
        """q [B, L, Hq, D] / [S, Hq, D] (decode) -> o of q's shape, over the new k / v or the cache's pages."""
        ops, cache, i = meta.ops, meta.cache, self.layer_idx
        if cache is None or meta.fresh and not meta.decode:
            if cache is not None and cache.fp8_attention:
                return self._attend_fp8(q, k, v, meta)
            return ops.gqa_attention(q, k, v, causal=True, cu_seqlens=meta.cu_seqlens, max_seqlen=meta.max_seqlen)
        descales = {}
        if cache.k[i].dtype == torch.float8_e4m3fn:
            k_scale, v_scale = self._kv_scales(cache)
            if isinstance(k_scale, torch.Tensor) or (k_scale, v_scale) != (1.0, 1.0):
                descales = {"k_descale": k_scale, "v_descale": v_scale}
        if meta.decode or meta.offsets is None:  # [S, Hq, D] or [B, L, Hq, D]: the last tokens of each sequence
            return ops.gqa_decode(q, cache.k[i], cache.v[i], meta.block_table, meta.seq_lens, **descales)
        # packed continuation (chunked prefill): one sequence at a time, its new tokens are its last ones
        return torch.cat([ops.gqa_decode(q[:, a:b], cache.k[i], cache.v[i], meta.block_table[s:s + 1],
                                         meta.seq_lens[s:s + 1], **descales)
                          for s, (a, b) in enumerate(zip(meta.offsets[:-1], meta.offsets[1:]))], dim=1)

    def _attend_fp8(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: ForwardMeta) -> torch.Tensor:
        """A fresh prefill's attention in FP8: q, k, v [B, L, H, D] quantised to e4m3 with scales computed on the
        device, one per (sequence, kv head), then the FP8 kernel -> o [B, L, Hq, D] in q's dtype."""
        ops, Hkv = meta.ops, self.num_kv_heads
        cu, max_len = meta.cu_seqlens, meta.max_seqlen
        (q8, qd), (k8, kd), (v8, vd) = (ops.quantize_fp8(t, Hkv, cu, max_len) for t in (q, k, v))
        o = ops.gqa_attention(q8, k8, v8, causal=True, cu_seqlens=cu, max_seqlen=max_len, q_descale=qd,
                              k_descale=kd, v_descale=vd)
        return o.to(q.dtype)


class Router(nn.Module):
    """fp32 router weight and the selection-only correction bias (a buffer: load balancing updates it)."""

    def __init__(self, cfg: NemotronHConfig, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size, device=device,
                                               dtype=torch.float32))                       # [E, H] fp32
        self.register_buffer("e_score_correction_bias",
                             torch.empty(cfg.n_routed_experts, device=device, dtype=torch.float32))  # [E] fp32


class Experts(nn.Module):
    def __init__(self, cfg: NemotronHConfig, **factory):
        super().__init__()
        E, I, H = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.hidden_size
        self.up_proj = nn.Parameter(torch.empty(E, I, H, **factory))    # [E, I, H]
        self.down_proj = nn.Parameter(torch.empty(E, H, I, **factory))  # [E, H, I]


class MLP(nn.Module):
    """down(relu(up(x))^2): the shared expert of a MoE layer, or a dense `-` layer."""

    def __init__(self, hidden: int, inner: int, **factory):
        super().__init__()
        self.up_proj = Linear(hidden, inner, **factory)
        self.down_proj = Linear(inner, hidden, **factory)

    def forward(self, x: torch.Tensor, meta: ForwardMeta) -> torch.Tensor:
        return self.down_proj(torch.square(F.relu(self.up_proj(x))))


class MoE(nn.Module):
    def __init__(self, cfg: NemotronHConfig, layer_idx: int, **factory):
        super().__init__()
        self.layer_idx = layer_idx
        self.top_k, self.scale = cfg.num_experts_per_tok, float(cfg.routed_scaling_factor)
        self.n_group, self.topk_group = cfg.n_group, cfg.topk_group
        self.gate = Router(cfg, device=factory.get("device"))
        self.experts = Experts(cfg, **factory)
        self.shared_experts = MLP(cfg.hidden_size, cfg.moe_shared_expert_intermediate_size, **factory)

    def forward(self, x: torch.Tensor, meta: ForwardMeta) -> torch.Tensor:
        ops = meta.ops
        x2 = x.reshape(-1, x.shape[-1])                                       # [T, H]
        # the router's kernels also sort the choices by expert where that saves launches (else None)
        topk_idx, topk_weight, counts, permutation = ops.moe_router(
            x2, self.gate.weight, self.gate.e_score_correction_bias, self.top_k, self.scale,
            self.n_group, self.topk_group, with_permutation=True)           # [T, k] int32, [T, k] fp32, [E] int32
        y = ops.moe_experts(x2, topk_idx, topk_weight, self.experts.up_proj, self.experts.down_proj,
                            self.shared_experts.up_proj.weight, self.shared_experts.down_proj.weight,
                            permutation=permutation)                          # [T, H]
        meta.record_routing(x2, self.gate.weight, counts, topk_idx)
        return y.view_as(x)


class Block(nn.Module):
    """Pre-norm residual block with one mixer: h + mixer(norm(h)). The add is left to the next block's norm, which
    fuses it: (h, the previous mixer's output) -> (their sum, this mixer's output)."""

    def __init__(self, cfg: NemotronHConfig, layer_idx: int, **factory):
        super().__init__()
        self.kind = cfg.pattern[layer_idx]
        self.norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon, **factory)
        if self.kind == "M":
            self.mixer = Mamba2Mixer(cfg, layer_idx, **factory)
        elif self.kind == "*":
            self.mixer = Attention(cfg, layer_idx, **factory)
        elif self.kind == "E":
            self.mixer = MoE(cfg, layer_idx, **factory)
        else:
            self.mixer = MLP(cfg.hidden_size, cfg.intermediate_size, **factory)

    def forward(self, h: torch.Tensor, meta: ForwardMeta,
                pending: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if pending is None:
            x = self.norm(h, meta)
        else:
            x, h = self.norm(h, meta, pending)                                # h + pending, and its norm
        return h, self.mixer(x, meta)


class NemotronH(nn.Module):
    """The NemotronH causal LM. Build on the meta device, then `init_weights()` or load a checkpoint:

        with torch.device("meta"): model = NemotronH(cfg, dtype=torch.bfloat16)
        model.to_empty(device="cuda"); model.init_weights(seed=0)      # or model.checkpoint.load_model(...)

    `build_model()` does this in one call. The router weights and correction biases are always fp32.
    """

    def __init__(self, config: NemotronHConfig, *, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.config = config
        factory = {"device": device, "dtype": dtype}
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                       _weight=torch.empty(config.vocab_size, config.hidden_size, **factory))  # [V, H]
        self.layers = nn.ModuleList(Block(config, i, **factory) for i in range(config.num_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon, **factory)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, **factory)  # [V, H]
        self.tie_weights()
        self.set_backend(backend)

    def set_backend(self, backend: str) -> None:
        """"auto" | "kernels" | "reference": which implementation of the ops the model calls."""
        self.backend = backend
        self.ops = ops_for(backend)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embeddings.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embeddings.weight.device

    # ------------------------------------------------------------------ init (spec §7)
    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Random initialisation as in transformers' NemotronH: normal(0, initializer_range) for embeddings,
        linears, conv and experts; norms 1; A_log = log(1..Hm); D = 1; dt_bias = softplus^-1(dt) with dt
        log-uniform in [time_step_min, time_step_max] clamped >= time_step_floor; Mamba out_proj
        kaiming-uniform / sqrt(num_layers) when rescale_prenorm_residual; router bias 0."""
        if self.device.type == "meta":
            raise RuntimeError("init_weights needs materialised tensors: call model.to_empty(device=...) first")
        self.tie_weights()
        cfg, std = self.config, self.config.initializer_range
        gen = torch.Generator(device=self.device).manual_seed(seed)

        def normal(t):
            t.normal_(0.0, std, generator=gen)

        normal(self.embeddings.weight)
        if not cfg.tie_word_embeddings:
            normal(self.lm_head.weight)
        self.norm_f.weight.fill_(1.0)
        for block in self.layers:
            block.norm.weight.fill_(1.0)
            m = block.mixer
            if block.kind == "M":
                for w in (m.in_proj.weight, m.conv1d.weight):
                    normal(w)
                if m.conv1d.bias is not None:
                    m.conv1d.bias.zero_()
                m.A_log.copy_(torch.log(torch.arange(1, m.num_heads + 1, dtype=torch.float32)))
                m.D.fill_(1.0)
                log_lo, log_hi = math.log(cfg.time_step_min), math.log(cfg.time_step_max)
                u = torch.rand(m.num_heads, generator=gen, device=self.device, dtype=torch.float32)
                dt = torch.exp(u * (log_hi - log_lo) + log_lo).clamp(min=cfg.time_step_floor)
                m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))           # softplus^-1(dt)
                m.norm.weight.fill_(1.0)
                if cfg.rescale_prenorm_residual:
                    bound = 1.0 / math.sqrt(m.out_proj.in_features) / math.sqrt(cfg.num_layers)
                    m.out_proj.weight.uniform_(-bound, bound, generator=gen)
                else:
                    normal(m.out_proj.weight)
            elif block.kind == "*":
                for lin in (m.q_proj, m.k_proj, m.v_proj, m.o_proj):
                    normal(lin.weight)
            elif block.kind == "E":
                normal(m.gate.weight)
                m.gate.e_score_correction_bias.zero_()
                for w in (m.experts.up_proj, m.experts.down_proj, m.shared_experts.up_proj.weight,
                          m.shared_experts.down_proj.weight):
                    normal(w)
            else:
                normal(m.up_proj.weight)
                normal(m.down_proj.weight)

    # ------------------------------------------------------------------ forward
    def _run(self, input_ids: torch.Tensor, meta: ForwardMeta) -> torch.Tensor:
        h, pending = self.embeddings(input_ids), None                         # [B, L, H] or [S, H]
        for block in self.layers:
            h, pending = block(h, meta, pending)
        return self.norm_f(h, meta) if pending is None else self.norm_f(h, meta, pending)[0]

    def hidden_states(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                      aux: MoEAux | None = None, offsets: list[int] | None = None) -> torch.Tensor:
        """input_ids [B, L] (with cu_seqlens: [1, T] packed documents, cu_seqlens [S+1]) -> final-normed hidden
        states [B, L, H] (the lm_head input). Fills `aux` with the MoE router counts / scores when given.
        offsets: cu_seqlens as a host list when the caller has it (else read back from the device: a host sync)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        meta = ForwardMeta(ops=self.ops)
        if cu_seqlens is not None:
            if input_ids.shape[0] != 1:
                raise ValueError(f"with cu_seqlens, input_ids must be [1, T] (packed), got {tuple(input_ids.shape)}")
            meta.cu_seqlens = cu_seqlens
            meta.offsets = list(offsets) if offsets is not None else cu_seqlens.tolist()
            if len(meta.offsets) != cu_seqlens.numel():
                raise ValueError(f"offsets has {len(meta.offsets)} entries, cu_seqlens {cu_seqlens.numel()}")
            if meta.offsets[0] != 0 or meta.offsets[-1] != input_ids.shape[1] or any(
                    b < a for a, b in zip(meta.offsets[:-1], meta.offsets[1:])):
                raise ValueError(f"cu_seqlens must rise from 0 to T={input_ids.shape[1]}, got {meta.offsets}")
            meta.max_seqlen = max(b - a for a, b in zip(meta.offsets[:-1], meta.offsets[1:]))
        if aux is not None:
            meta.router_counts, meta.router_scores, meta.router_ids = aux.counts, aux.scores, aux.ids
        return self._run(input_ids, meta)

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None, *,
                return_aux: bool = False):
        """input_ids [B, L] (or [1, T] packed with cu_seqlens [S+1]; no token attends, convolves or scans across
        a document boundary) -> logits [B, L, V] in the model dtype (, MoEAux when return_aux)."""
        aux = MoEAux() if return_aux else None
        logits = self.lm_head(self.hidden_states(input_ids, cu_seqlens, aux))
        return (logits, aux) if return_aux else logits

    # ------------------------------------------------------------------ inference with a HybridCache
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, cache, *, cu_seqlens: torch.Tensor | None = None,
                slots=None) -> torch.Tensor:
        """Runs prompts (or the next chunk of them) through the model and stores their state in `cache`.

        input_ids [S, L] (equal lengths), or [1, T] / [T] packed with cu_seqlens [S+1]. slots: the S cache
        slots (list / tensor; default 0..S-1). Sequences continue from whatever the slots already hold (a fresh
        or `cache.reset` slot holds nothing). Returns the logits of each sequence's last token [S, V] (fp32, or fp64 for an fp64 model)."""
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if cu_seqlens is None:
            S, L = input_ids.shape
            lengths = [L] * S
        else:
            if input_ids.shape[0] != 1:
                raise ValueError(f"with cu_seqlens, input_ids must be [T] or [1, T], got {tuple(input_ids.shape)}")
            offsets = [int(o) for o in cu_seqlens.tolist()]
            lengths = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
            if offsets[0] != 0 or offsets[-1] != input_ids.shape[1] or min(lengths, default=0) < 1:
                raise ValueError(f"cu_seqlens must rise strictly from 0 to T={input_ids.shape[1]}, got {offsets}")
            S = len(lengths)
        meta = cache.prepare(self.ops, slots, lengths)
        if cu_seqlens is not None:
            meta.cu_seqlens = cu_seqlens.to(device=input_ids.device, dtype=torch.int32)
            meta.offsets, meta.max_seqlen = offsets, max(lengths)
        h = self._run(input_ids, meta)                                        # [S, L, H] or [1, T, H]
        cache.commit(meta)
        if cu_seqlens is None:
            last = h[:, -1]                                                   # [S, H]
        else:
            last = h[0, torch.tensor(offsets[1:], device=h.device) - 1]       # [S, H]
        return self._logits_fp32(last)                                        # [S, V]

    @torch.no_grad()
    def decode_step(self, input_ids: torch.Tensor, cache, *, slots=None) -> torch.Tensor:
        """One new token per sequence: input_ids [S] -> logits [S, V] (fp32 / fp64); advances the cache slots."""
        if input_ids.dim() != 1:
            raise ValueError(f"input_ids must be [S] (one token per sequence), got {tuple(input_ids.shape)}")
        meta = cache.prepare(self.ops, slots, [1] * input_ids.shape[0], decode=True)
        h = self._run(input_ids, meta)                                        # [S, H]
        cache.commit(meta)
        return self._logits_fp32(h)

    @torch.no_grad()
    def forward_step(self, input_ids: torch.Tensor, meta: ForwardMeta,
                     logits_idx: torch.Tensor | None = None) -> torch.Tensor:
        """One serving step over the cache of `meta` (from `HybridCache.prepare`, or built by a serving engine):
        decode tokens and prefill chunks of different sequences in one call.

        input_ids [T] int64: meta.num_decodes decode tokens (one per sequence, sequences 0..num_decodes-1), then the
        packed prefill chunks of the other sequences (meta.cu_seqlens over those); meta.decode: decode tokens only.
        logits_idx [R] int64 | None: rows of input_ids whose logits are returned (default: all T).
        Returns logits [R, V] (fp32, or fp64 for an fp64 model). Writes the states of meta.slots and the KV rows
        meta.kv_write_idx; the host bookkeeping of the cache (cache.commit) is the caller's. No host sync."""
        if input_ids.dim() != 1:
            raise ValueError(f"input_ids must be [T] (packed tokens), got {tuple(input_ids.shape)}")
        packed = not meta.decode and not meta.mixed                          # prefill only: [1, T] through the model
        h = self._run(input_ids[None] if packed else input_ids, meta)        # [1, T, H] or [T, H]
        h = h[0] if packed else h
        return self._logits_fp32(h if logits_idx is None else h[logits_idx])  # [R, V]

    def _logits_fp32(self, h: torch.Tensor) -> torch.Tensor:
        """lm_head output in fp32 (fp64 for an fp64 model), for sampling."""
        return self.lm_head(h).to(torch.promote_types(h.dtype, torch.float32))


def build_model(config: NemotronHConfig, *, device="cpu", dtype=torch.float32, backend: str = "auto",
                seed: int = 0) -> NemotronH:
    """A randomly initialised model: meta construction, to_empty on `device`, init_weights(seed)."""
    with torch.device("meta"):
        model = NemotronH(config, backend=backend, dtype=dtype)
    model.to_empty(device=device)
    model.init_weights(seed)
    return model
