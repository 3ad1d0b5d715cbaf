"""Hybrid inference cache of a NemotronH model: per-slot Mamba states and a paged KV cache.

Per Mamba layer i:     conv[i] [num_slots + scratch_slots, C, K-1] (model dtype; the last K-1 xBC inputs, oldest first)
                       ssm[i]  [num_slots + scratch_slots, Hm, P, N] (fp32 by default, config.mamba_ssm_cache_dtype)
Per attention layer i: k[i], v[i] [num_blocks + scratch_blocks, block_size, Hkv, D] (model dtype unless kv_dtype;
                       FP8 e4m3 pages hold k / k_scale, v / v_scale: kv_scales="layer", the attention layer's
                       floats (an FP8 checkpoint's, else 1); kv_scales="device", k_scale[i], v_scale[i] [1] fp32
                       on the device, computed from the first prefill that writes the layer (calibrate_kv));
                       fp8_attention: fresh prefills attend over e4m3 q / k / v (scales computed on the device)
Shared:                block_table [num_slots + scratch_slots, max_blocks] int32 (pages of each slot, in order),
                       seq_lens [num_slots] int32 (tokens the model has seen per slot; host mirror host_seq_lens).

Two ways to own the pages:
  * simple (default): slot s owns the contiguous pages s*max_blocks .. (s+1)*max_blocks-1;
  * paged=True: the caller's allocator owns them (a serving engine's block manager): num_blocks may be smaller than
    num_slots * max_blocks, and `set_pages(slot, pages)` writes a slot's page table.
Scratch space: `scratch_slots` state slots after the num_slots usable ones, and the pages after the num_blocks
usable ones that they write into (scratch slot j: token row j % block_size of scratch page j // block_size). No
sequence owns them: padded rows of a CUDA-graph batch run there without touching any real state.
"""
from __future__ import annotations

import math

import torch

from .config import NemotronHConfig
from .nemotron_h import _E4M3_MAX, ForwardMeta

KV_HEADROOM = 2.0  # device-computed FP8 page scales leave this factor above the first prefill's |k| / |v| max
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _ssm_dtype(config: NemotronHConfig, dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else _DTYPES[config.mamba_ssm_cache_dtype]


class HybridCache:
    def __init__(self, config: NemotronHConfig, num_slots: int, max_seq_len: int, *, block_size: int = 16,
                 num_blocks: int | None = None, paged: bool = False, scratch_slots: int = 0, device="cpu",
                 dtype: torch.dtype = torch.bfloat16, kv_dtype: torch.dtype | None = None,
                 ssm_dtype: torch.dtype | None = None, kv_scales: str = "layer", fp8_attention: bool = False):
        for name, v in (("num_slots", num_slots), ("max_seq_len", max_seq_len), ("block_size", block_size)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"HybridCache: {name} must be a positive int, got {v!r}")
        if not isinstance(scratch_slots, int) or scratch_slots < 0:
            raise ValueError(f"HybridCache: scratch_slots must be an int >= 0, got {scratch_slots!r}")
        if kv_scales not in ("layer", "device"):
            raise ValueError(f"HybridCache: kv_scales must be 'layer' or 'device', got {kv_scales!r}")
        self.config, self.num_slots, self.block_size, self.paged = config, num_slots, block_size, paged
        self.max_blocks = math.ceil(max_seq_len / block_size)           # pages per slot
        self.num_blocks = num_slots * self.max_blocks if num_blocks is None else num_blocks
        if not paged and self.num_blocks < num_slots * self.max_blocks:
            raise ValueError(f"HybridCache: num_blocks={self.num_blocks} < num_slots * max_blocks = "
                             f"{num_slots * self.max_blocks} (the simple allocator gives every slot its pages; "
                             f"paged=True lets the caller share fewer pages)")
        if self.num_blocks < 1:
            raise ValueError(f"HybridCache: num_blocks must be >= 1, got {self.num_blocks}")
        self.scratch_slots = scratch_slots
        self.scratch_blocks = math.ceil(scratch_slots / block_size)
        ssm_dtype = _ssm_dtype(config, dtype) if ssm_dtype is None else ssm_dtype
        kv_dtype = dtype if kv_dtype is None else kv_dtype
        c, n_states = config, num_slots + scratch_slots
        self.conv = {i: torch.zeros(n_states, c.conv_dim, c.conv_kernel - 1, device=device, dtype=dtype)
                     for i in c.layer_indices("M")}
        self.ssm = {i: torch.zeros(n_states, c.mamba_num_heads, c.mamba_head_dim, c.ssm_state_size, device=device,
                                   dtype=ssm_dtype) for i in c.layer_indices("M")}
        kv_shape = (self.num_blocks + self.scratch_blocks, block_size, c.num_key_value_heads, c.head_dim)
        self.k = {i: torch.zeros(kv_shape, device=device, dtype=kv_dtype) for i in c.layer_indices("*")}
        self.v = {i: torch.zeros(kv_shape, device=device, dtype=kv_dtype) for i in c.layer_indices("*")}
        # device-computed FP8 page scales: tensors from the start (CUDA graphs read them), set by calibrate_kv
        device_scales = kv_dtype == torch.float8_e4m3fn and kv_scales == "device"
        self.k_scale = {i: torch.ones(1, device=device) for i in self.k} if device_scales else None
        self.v_scale = {i: torch.ones(1, device=device) for i in self.k} if device_scales else None
        self.kv_calibrated: set[int] = set()
        self.fp8_attention = fp8_attention        # fresh prefills attend in FP8 e4m3 (Attention._attend_fp8)
        tables = torch.zeros(n_states, self.max_blocks, dtype=torch.int32)
        if not paged:
            tables[:num_slots] = torch.arange(num_slots * self.max_blocks, dtype=torch.int32).view(num_slots, -1)
        tables[num_slots:] = self.num_blocks + torch.arange(scratch_slots, dtype=torch.int32)[:, None] // block_size
        self.block_table = tables.to(device)
        self._host_tables: list[list[int] | None] = [None] * num_slots   # paged: what set_pages last wrote
        self.seq_lens = torch.zeros(num_slots, device=device, dtype=torch.int32)
        self.host_seq_lens = [0] * num_slots
        self.device = torch.device(device)

    def calibrate_kv(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Attention layer i's FP8 page scales from the keys and values of its first prefill, on the device (no host
        sync): max |k| x KV_HEADROOM / 448, the same for v, fixed from then on; later values past that range
        saturate at +-448 when written."""
        for new, scale in ((k, self.k_scale[i]), (v, self.v_scale[i])):
            amax = new.detach().abs().amax().to(torch.float32)
            scale.copy_((amax * (KV_HEADROOM / _E4M3_MAX)).clamp_min(1e-12).reshape(1))
        self.kv_calibrated.add(i)

    @classmethod
    def for_model(cls, model, num_slots: int, max_seq_len: int, **kw) -> HybridCache:
        """A cache on the model's device in the model's dtype."""
        return cls(model.config, num_slots, max_seq_len, device=model.device, dtype=model.dtype, **kw)

    @staticmethod
    def bytes_per_slot(config: NemotronHConfig, dtype: torch.dtype, ssm_dtype: torch.dtype | None = None) -> int:
        """Device bytes of one state slot (conv + SSM state of every Mamba layer)."""
        c, ssm_dtype = config, ssm_dtype or _ssm_dtype(config, dtype)
        per_layer = (c.conv_dim * (c.conv_kernel - 1) * dtype.itemsize
                     + c.mamba_num_heads * c.mamba_head_dim * c.ssm_state_size * ssm_dtype.itemsize)
        return per_layer * len(c.layer_indices("M"))

    @staticmethod
    def bytes_per_block(config: NemotronHConfig, block_size: int, kv_dtype: torch.dtype) -> int:
        """Device bytes of one KV page (keys and values of every attention layer)."""
        c = config
        return 2 * block_size * c.num_key_value_heads * c.head_dim * kv_dtype.itemsize * len(c.layer_indices("*"))

    @property
    def capacity(self) -> int:
        """Tokens one slot can hold."""
        return self.max_blocks * self.block_size

    # ------------------------------------------------------------------ device-side upkeep (no host sync)
    def set_pages(self, slot: int, pages: list[int]) -> None:
        """Paged mode: the KV pages of `slot` in token order (ids < num_blocks). The device row is rewritten only
        when it changed since the last call (one small host-to-device copy, not waited for)."""
        if not self.paged:
            raise RuntimeError("HybridCache.set_pages needs paged=True (the simple allocator owns the pages)")
        if self._host_tables[slot] == pages:
            return
        if len(pages) > self.max_blocks:
            raise ValueError(f"slot {slot}: {len(pages)} pages exceed max_blocks={self.max_blocks}")
        row = torch.tensor(pages, dtype=torch.int32)
        if self.device.type == "cuda":
            row = row.pin_memory()
        self.block_table[slot, :len(pages)].copy_(row, non_blocking=True)
        self._host_tables[slot] = list(pages)

    def clear_states(self, slots: torch.Tensor) -> None:
        """Empty Mamba states for new sequences: slots [n] int64 on the cache's device."""
        for t in (*self.conv.values(), *self.ssm.values()):
            t.index_fill_(0, slots, 0)

    def copy_states(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Mamba states of slots src -> dst ([n] int64 on the device each), e.g. completions forking a prompt."""
        for t in (*self.conv.values(), *self.ssm.values()):
            t[dst] = t[src]

    def copy_pages(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """KV pages src -> dst ([n] int64 on the device each), e.g. copy-on-write of a shared page."""
        for t in (*self.k.values(), *self.v.values()):
            t[dst] = t[src]

    def scratch_rows(self, count: int) -> tuple[list[int], list[int], list[int]]:
        """(slots, seq_lens, kv rows) of `count` padded decode rows on the scratch space: row j runs in scratch slot
        j and writes (then attends up to) token row j % block_size of scratch page j // block_size."""
        if count > self.scratch_slots:
            raise ValueError(f"{count} padded rows need as many scratch slots; the cache has {self.scratch_slots}")
        bs = self.block_size
        return ([self.num_slots + j for j in range(count)], [j % bs + 1 for j in range(count)],
                [self.num_blocks * bs + j for j in range(count)])

    # ------------------------------------------------------------------ host-side bookkeeping (prefill / decode_step)
    def _slot_list(self, slots, count: int | None = None) -> list[int]:
        if slots is None:
            slots = list(range(self.num_slots if count is None else count))
        elif isinstance(slots, torch.Tensor):
            slots = [int(s) for s in slots.tolist()]
        else:
            slots = [int(s) for s in slots]
        if count is not None and len(slots) != count:
            raise ValueError(f"slots: expected {count} slots (one per sequence), got {len(slots)}")
        if len(set(slots)) != len(slots) or any(not 0 <= s < self.num_slots for s in slots):
            raise ValueError(f"slots must be distinct ints in [0, num_slots={self.num_slots}), got {slots}")
        return slots

    def reset(self, slots=None) -> None:
        """Empties the given slots (default: all) for new sequences."""
        slots = self._slot_list(slots)
        idx = torch.tensor(slots, device=self.device, dtype=torch.long)
        self.clear_states(idx)
        self.seq_lens[idx] = 0
        for s in slots:
            self.host_seq_lens[s] = 0

    def prepare(self, ops, slots, lengths: list[int], *, decode: bool = False, num_decodes: int = 0) -> ForwardMeta:
        """ForwardMeta for running `lengths[j]` new tokens of sequence j (in slot slots[j]): where their keys and
        values go, and the cached lengths afterwards. Tokens are ordered sequence by sequence (rows of [S, L] or
        packed). decode: one token per sequence. num_decodes > 0: a mixed step for model.forward_step, where the
        first num_decodes sequences decode one token each and the others are packed prefill chunks."""
        host_slots = self._slot_list(slots, len(lengths))
        starts = [self.host_seq_lens[s] for s in host_slots]
        new_lens = [a + n for a, n in zip(starts, lengths)]
        for s, n in zip(host_slots, new_lens):
            if n > self.capacity:
                raise ValueError(f"slot {s}: {n} tokens exceed the cache capacity of {self.capacity} tokens per slot "
                                 f"(max_seq_len rounded up to block_size={self.block_size})")
        if num_decodes:
            if any(n != 1 for n in lengths[:num_decodes]) or any(a == 0 for a in starts[:num_decodes]):
                raise ValueError("the first num_decodes sequences must feed one token each after cached ones")
            decode = decode or num_decodes == len(lengths)
        dev = self.device
        slots_t = torch.tensor(host_slots, device=dev, dtype=torch.long)           # [S]
        meta = ForwardMeta(ops=ops, cache=self, slots=slots_t, block_table=self.block_table[slots_t],
                           seq_lens=torch.tensor(new_lens, device=dev, dtype=torch.int32),
                           host_slots=host_slots, host_seq_lens=new_lens,
                           fresh=not decode and all(a == 0 for a in starts[num_decodes:]), decode=decode,
                           num_decodes=0 if decode else num_decodes)
        if meta.mixed:
            offsets = [0]
            for n in lengths[num_decodes:]:
                offsets.append(offsets[-1] + n)
            meta.offsets, meta.max_seqlen = offsets, max(lengths[num_decodes:])
            meta.cu_seqlens = torch.tensor(offsets, device=dev, dtype=torch.int32)
        if self.k:
            seq_of_token = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))  # [T]
            pos = torch.cat([torch.arange(a, a + n) for a, n in zip(starts, lengths)])                # [T]
            seq_of_token, pos = seq_of_token.to(dev), pos.to(dev)
            pages = meta.block_table[seq_of_token, pos // self.block_size].long()                    # [T]
            meta.kv_write_idx = pages * self.block_size + pos % self.block_size                      # [T]
        return meta

    def commit(self, meta: ForwardMeta) -> None:
        """Records the new cached lengths after a successful forward."""
        self.seq_lens[meta.slots] = meta.seq_lens
        for s, n in zip(meta.host_slots, meta.host_seq_lens):
            self.host_seq_lens[s] = n
