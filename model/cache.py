"""Hybrid inference cache of a NemotronH model: per-slot Mamba states and a paged KV cache.

Per Mamba layer i:     conv[i] [num_slots, C, K-1] (model dtype; the last K-1 xBC inputs, oldest first)
                       ssm[i]  [num_slots, Hm, P, N] (fp32 by default, config.mamba_ssm_cache_dtype)
Per attention layer i: k[i], v[i] [num_blocks, block_size, Hkv, D] (model dtype unless kv_dtype is given)
Shared:                block_table [num_slots, max_blocks] int32 (pages of each slot, in order),
                       seq_lens [num_slots] int32 (tokens the model has seen per slot; host mirror host_seq_lens).

The allocator here is the simplest one: slot s owns the contiguous pages s*max_blocks .. (s+1)*max_blocks-1.
A serving engine may rewrite `block_table` rows (any page ids < num_blocks) to share a larger page pool.
"""
from __future__ import annotations

import math

import torch

from .config import NemotronHConfig
from .nemotron_h import ForwardMeta

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HybridCache:
    def __init__(self, config: NemotronHConfig, num_slots: int, max_seq_len: int, *, block_size: int = 16,
                 num_blocks: int | None = None, device="cpu", dtype: torch.dtype = torch.bfloat16,
                 kv_dtype: torch.dtype | None = None, ssm_dtype: torch.dtype | None = None):
        for name, v in (("num_slots", num_slots), ("max_seq_len", max_seq_len), ("block_size", block_size)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"HybridCache: {name} must be a positive int, got {v!r}")
        self.config, self.num_slots, self.block_size = config, num_slots, block_size
        self.max_blocks = math.ceil(max_seq_len / block_size)           # pages per slot
        self.num_blocks = num_slots * self.max_blocks if num_blocks is None else num_blocks
        if self.num_blocks < num_slots * self.max_blocks:
            raise ValueError(f"HybridCache: num_blocks={self.num_blocks} < num_slots * max_blocks = "
                             f"{num_slots * self.max_blocks} (the simple allocator gives every slot its pages)")
        if ssm_dtype is None:
            ssm_dtype = torch.float64 if dtype == torch.float64 else _DTYPES[config.mamba_ssm_cache_dtype]
        kv_dtype = dtype if kv_dtype is None else kv_dtype
        c = config
        self.conv = {i: torch.zeros(num_slots, c.conv_dim, c.conv_kernel - 1, device=device, dtype=dtype)
                     for i in c.layer_indices("M")}
        self.ssm = {i: torch.zeros(num_slots, c.mamba_num_heads, c.mamba_head_dim, c.ssm_state_size, device=device,
                                   dtype=ssm_dtype) for i in c.layer_indices("M")}
        kv_shape = (self.num_blocks, block_size, c.num_key_value_heads, c.head_dim)
        self.k = {i: torch.zeros(kv_shape, device=device, dtype=kv_dtype) for i in c.layer_indices("*")}
        self.v = {i: torch.zeros(kv_shape, device=device, dtype=kv_dtype) for i in c.layer_indices("*")}
        self.block_table = torch.arange(num_slots * self.max_blocks, device=device,
                                        dtype=torch.int32).view(num_slots, self.max_blocks)
        self.seq_lens = torch.zeros(num_slots, device=device, dtype=torch.int32)
        self.host_seq_lens = [0] * num_slots
        self.device = torch.device(device)

    @classmethod
    def for_model(cls, model, num_slots: int, max_seq_len: int, **kw) -> "HybridCache":
        """A cache on the model's device in the model's dtype."""
        return cls(model.config, num_slots, max_seq_len, device=model.device, dtype=model.dtype, **kw)

    @property
    def capacity(self) -> int:
        """Tokens one slot can hold."""
        return self.max_blocks * self.block_size

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
        for t in (*self.conv.values(), *self.ssm.values()):
            t[idx] = 0
        self.seq_lens[idx] = 0
        for s in slots:
            self.host_seq_lens[s] = 0

    def prepare(self, ops, slots, lengths: list[int], *, decode: bool = False) -> ForwardMeta:
        """ForwardMeta for running `lengths[j]` new tokens of sequence j (in slot slots[j]): where their keys and
        values go, and the cached lengths afterwards. Tokens are ordered sequence by sequence (rows of [S, L] or
        packed)."""
        host_slots = self._slot_list(slots, len(lengths))
        starts = [self.host_seq_lens[s] for s in host_slots]
        new_lens = [a + n for a, n in zip(starts, lengths)]
        for s, n in zip(host_slots, new_lens):
            if n > self.capacity:
                raise ValueError(f"slot {s}: {n} tokens exceed the cache capacity of {self.capacity} tokens per slot "
                                 f"(max_seq_len rounded up to block_size={self.block_size})")
        dev = self.device
        slots_t = torch.tensor(host_slots, device=dev, dtype=torch.long)           # [S]
        meta = ForwardMeta(ops=ops, cache=self, slots=slots_t, block_table=self.block_table[slots_t],
                           seq_lens=torch.tensor(new_lens, device=dev, dtype=torch.int32),
                           host_slots=host_slots, host_seq_lens=new_lens,
                           fresh=not decode and all(a == 0 for a in starts), decode=decode)
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
