"""One sequence being served: its tokens, how many are in the cache, its KV blocks and its Mamba state slot."""
from __future__ import annotations

import enum
import itertools
import time

from .sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"      # queued (new, or preempted and waiting to be recomputed)
    RUNNING = "running"      # holds a state slot and KV blocks; gets tokens scheduled every step
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"            # an end-of-sequence token, a stop token id or a stop string
    LENGTH = "length"        # max_tokens, or the model's context is full
    ABORT = "abort"          # cancelled (client gone, or engine.abort)


_seq_ids = itertools.count()


class Sequence:
    """token_ids = prompt + generated tokens. The first `num_computed_tokens` of them are in the cache (KV blocks
    of the attention layers, conv + SSM state in `slot` for the Mamba layers); the rest are fed to the model next.
    In decode exactly one token (the last sampled one) is not yet computed."""

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 arrival_time: float | None = None, index: int = 0):
        if not prompt_token_ids:
            raise ValueError(f"request {request_id!r}: the prompt must have at least one token")
        self.seq_id = next(_seq_ids)
        self.request_id = request_id
        self.params = params
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0
        self.status = SequenceStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.block_table: list[int] = []      # KV page ids, in token order
        self.slot: int | None = None          # Mamba state slot while RUNNING
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.num_preemptions = 0
        self.generator = None                 # torch.Generator for seeded sampling (made by the sampler)
        self.index = index                    # which completion of its request (n > 1)
        # completions 1..n-1 of an n > 1 request, until the prompt is computed: they hold state slots reserved on
        # admission, then fork from this sequence (shared KV pages, a copy of the Mamba state)
        self.pending_forks: list[Sequence] = []

    def __repr__(self):
        return (f"Sequence(id={self.seq_id}, request={self.request_id!r}, status={self.status.value}, "
                f"tokens={self.num_tokens}, computed={self.num_computed_tokens}, slot={self.slot}, "
                f"blocks={len(self.block_table)})")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[:self.num_prompt_tokens]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def fork_into(self, child: "Sequence") -> None:
        """child continues from this sequence's tokens and computed prefix (its pages: BlockManager.fork)."""
        child.token_ids = list(self.token_ids)
        child.num_prompt_tokens = self.num_prompt_tokens
        child.num_computed_tokens = self.num_computed_tokens
        child.status = SequenceStatus.RUNNING

    def reset_for_recompute(self) -> None:
        """Preempted: the cache is dropped; prompt and generated tokens are all fed again on readmission."""
        self.num_computed_tokens = 0
        self.num_preemptions += 1
        self.status = SequenceStatus.WAITING
