"""Sampling parameters of one request, checked on construction (a bad value raises ValueError naming the field)."""
from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass, field, fields

_MAX_SEED = 2 ** 63 - 1


@dataclass
class SamplingParams:
    """How to pick the tokens of one completion.

    temperature: 0 = greedy (argmax); > 0 divides the logits.   top_k: keep the k most likely tokens (0 or -1 = all).
    top_p: keep the smallest set of tokens whose probability reaches top_p (1.0 = all).
    seed: per-request random stream (same seed + same prompt = same output, whatever else is being served).
    max_tokens: tokens to generate at most (>= 1).   stop_token_ids: stop after sampling one of these (it is kept
    in token_ids, dropped from the text).   stop: stop strings (the text is cut before the first one).
    ignore_eos: do not stop at the model's end-of-sequence tokens.
    n: completions of the prompt; they share its prefill (KV pages and Mamba state are forked), completion i
    samples with seed + i.
    """
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if isinstance(self.stop_token_ids, (tuple, set)):
            self.stop_token_ids = list(self.stop_token_ids)
        if isinstance(self.stop, tuple):
            self.stop = list(self.stop)
        self.validate()

    def validate(self) -> None:
        def fail(name, why):
            raise ValueError(f"SamplingParams.{name}: {why} (got {getattr(self, name)!r})")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        if not is_num(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            fail("temperature", "must be a finite number >= 0 (0 = greedy)")
        if not is_int(self.top_k) or self.top_k < -1:
            fail("top_k", "must be an int >= 1, or 0 / -1 to disable")
        if not is_num(self.top_p) or not (0.0 < self.top_p <= 1.0):
            fail("top_p", "must be a number in (0, 1]")
        if self.seed is not None and (not is_int(self.seed) or not 0 <= self.seed <= _MAX_SEED):
            fail("seed", f"must be None or an int in [0, {_MAX_SEED}]")
        if not is_int(self.max_tokens) or self.max_tokens < 1:
            fail("max_tokens", "must be an int >= 1")
        if not isinstance(self.stop_token_ids, list) or any(not is_int(t) or t < 0 for t in self.stop_token_ids):
            fail("stop_token_ids", "must be a list of non-negative ints")
        if not isinstance(self.stop, list) or any(not isinstance(s, str) or not s for s in self.stop):
            fail("stop", "must be a string or a list of non-empty strings")
        if not isinstance(self.ignore_eos, bool):
            fail("ignore_eos", "must be a bool")
        if not is_int(self.n) or self.n < 1:
            fail("n", "must be an int >= 1")
        if self.seed is not None and self.seed + self.n - 1 > _MAX_SEED:
            fail("seed", f"+ n - 1 must be <= {_MAX_SEED} (completion i uses seed + i)")

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids must exist in the model's vocabulary."""
        bad = [t for t in self.stop_token_ids if t >= vocab_size]
        if bad:
            raise ValueError(f"SamplingParams.stop_token_ids: ids {bad} are outside the vocabulary "
                             f"(vocab_size={vocab_size})")

    def for_completion(self, index: int) -> "SamplingParams":
        """The parameters of completion `index` of an n > 1 request: n = 1 and its own seed."""
        seed = None if self.seed is None else self.seed + index
        return dataclasses.replace(self, n=1, seed=seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_top_k(self) -> bool:
        return self.top_k > 0

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
