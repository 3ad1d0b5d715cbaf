"""SFT data: chat JSONL, the tokenizer's chat template, loss on assistant tokens only, reasoning on/off, packing.

Input: one JSON object per line with "messages": [{"role": "system" | "user" | "assistant" | "tool",
"content": str, optional "reasoning_content": str}, ...]. A reasoning trace is either inside the content as
<think>...</think> or given as reasoning_content (rendered as <think>trace</think> before the content).

Masking: the conversation is rendered with the template one message at a time; the text an assistant message
adds (its content and end-of-turn marker, not the "<|im_start|>assistant" header, which the generation prompt
supplies) is trained, everything else (system, user, tool turns, headers) is not. A template that rewrites
earlier turns as the conversation grows (reasoning templates drop old traces) trains the last assistant turn.

Reasoning off: for a `reasoning_off_fraction` of the samples (chosen by a hash of the sample index and seed, fixed
across epochs) every trace is emptied to <think></think>, the paper's way of teaching the reasoning-off mode
(10% of samples).

Packing: whole conversations go greedily into rows of seq_len tokens (a conversation longer than a row is
truncated, or dropped); each conversation is its own cu_seqlens segment, the rest of a row is padding with no
labels. Shape legend: T tokens of one packed batch, S segments.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path

import torch

from .data import IGNORE_INDEX, PackedBatch, TokenizerInfo

ROLES = ("system", "user", "assistant", "tool")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


# ---------------------------------------------------------------------------------------------- reading
def load_chat_jsonl(path: str | os.PathLike, *, on_error: str = "fail", log=print) -> list[list[dict]]:
    """Conversations of a chat JSONL file. on_error "fail": a malformed line raises ValueError naming the file and
    line number; "skip": it is reported and skipped."""
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"SFT data file {path} does not exist")
    conversations, skipped = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                conversations.append(_parse_line(line))
            except ValueError as e:
                msg = f"{path}:{lineno}: {e}"
                if on_error == "fail":
                    raise ValueError(msg + " (use on_error='skip' / --on-error skip to skip bad lines)") from None
                log(f"skipping malformed line {msg}")
                skipped += 1
    if not conversations:
        raise ValueError(f"SFT data file {path} has no usable conversations"
                         + (f" ({skipped} malformed lines skipped)" if skipped else ""))
    return conversations


def _parse_line(line: str) -> list[dict]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        raise ValueError('expected an object with a non-empty "messages" list')
    messages = []
    for i, m in enumerate(obj["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"message {i}: needs a role in {list(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message {i}: needs a string content")
        if "reasoning_content" in m and not isinstance(m["reasoning_content"], (str, type(None))):
            raise ValueError(f"message {i}: reasoning_content must be a string")
        messages.append(dict(m))
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message (nothing to train on)")
    return messages


# ---------------------------------------------------------------------------------------------- template
def chat_renderer(tok: TokenizerInfo):
    """The tokenizer's chat template, rendered by the serving tokenizer (one renderer for serving and SFT: jinja2
    sandbox as transformers renders it, `raise_exception`, `strftime_now`, bos/eos token variables)."""
    from model.serve.tokenizer import ServeTokenizer

    specials = {}
    for key, tid in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id), ("pad_token", tok.pad_id)):
        if tid is not None:
            specials[key] = tok.tokenizer.id_to_token(tid)
    return ServeTokenizer(tok.tokenizer, chat_template=tok.chat_template, special_tokens=specials)


def drop_reasoning(messages: list[dict]) -> list[dict]:
    """Reasoning off: every assistant trace becomes empty (<think></think>)."""
    out = []
    for m in messages:
        m = dict(m)
        if m["role"] == "assistant":
            if m.get("reasoning_content") is not None:
                m["reasoning_content"] = ""
            m["content"] = _THINK.sub("<think></think>", m["content"])
        out.append(m)
    return out


def _inline_reasoning(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        m = dict(m)
        rc = m.pop("reasoning_content", None)
        if m["role"] == "assistant" and rc is not None:
            m["content"] = f"<think>{rc}</think>{m['content']}"
        out.append(m)
    return out


class _NotPrefixStable(ValueError):
    pass


def _render(template, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return template.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)


def _pieces_per_message(messages: list[dict], template) -> list[tuple[str, bool]]:
    pieces, text = [], ""

    def extend(new_text: str, trained: bool, where: str):
        nonlocal text
        if not new_text.startswith(text):
            raise _NotPrefixStable(where)
        pieces.append((new_text[len(text):], trained))
        text = new_text

    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            extend(_render(template, messages[:i], True), False, f"header of message {i}")
        extend(_render(template, messages[:i + 1]), m["role"] == "assistant", f"message {i}")
    return pieces


def _pieces_last_turn(messages: list[dict], template) -> list[tuple[str, bool]]:
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = _render(template, messages[:last], True)
    full = _render(template, messages[:last + 1])
    if not full.startswith(prompt):
        raise ValueError("chat template is not prefix-stable even for the last assistant turn: the rendered prompt "
                         "is not a prefix of the rendered conversation, so assistant tokens cannot be located")
    return [(prompt, False), (full[len(prompt):], True)]


def tokenize_conversation(messages: list[dict], tok: TokenizerInfo, template) -> tuple[list[int], list[bool]]:
    """(ids [n], trained [n]): token ids of the conversation rendered by `template` (anything with
    apply_chat_template(messages, add_generation_prompt=...), e.g. chat_renderer(tok)), BOS first when the tokenizer
    has one, and whether each token is an assistant token (a label the loss counts).

    Every assistant turn is trained when the template renders earlier turns the same way whatever follows them;
    templates that rewrite history (e.g. drop the reasoning of earlier assistant turns) train the last assistant
    turn only, on the conversation as the template shows it then (later turns are cut)."""
    messages = _inline_reasoning(messages)
    try:
        pieces = _pieces_per_message(messages, template)
    except _NotPrefixStable:
        pieces = _pieces_last_turn(messages, template)
    ids = [tok.bos_id] if tok.bos_id is not None else []
    trained = [False] * len(ids)
    for piece, flag in pieces:
        if piece:
            piece_ids = tok.encode(piece)
            ids += piece_ids
            trained += [flag] * len(piece_ids)
    return ids, trained


def _hash_fraction(seed: int, index: int) -> float:
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def tokenize_conversations(conversations: list[list[dict]], tok: TokenizerInfo, *, reasoning_off_fraction: float = 0.0,
                           seed: int = 0, template=None) -> list[tuple[list[int], list[bool]]]:
    if not 0.0 <= reasoning_off_fraction <= 1.0:
        raise ValueError(f"reasoning_off_fraction must lie in [0, 1], got {reasoning_off_fraction}")
    template = template or chat_renderer(tok)
    out = []
    for i, messages in enumerate(conversations):
        if _hash_fraction(seed, i) < reasoning_off_fraction:
            messages = drop_reasoning(messages)
        try:
            out.append(tokenize_conversation(messages, tok, template))
        except ValueError as e:
            raise ValueError(f"conversation {i}: {e}") from None
    return out


# ---------------------------------------------------------------------------------------------- packing
def pack_conversations(samples: list[tuple[list[int], list[bool]]], seq_len: int, pad_id: int) -> PackedBatch:
    """Rows of seq_len tokens from whole conversations, in order, flattened into one packed batch.
    samples: (ids, trained) per conversation; each must hold <= seq_len tokens. A conversation's input is its
    ids, its labels the next id where that token is trained; padding ends each row as its own segment."""
    ids, labels, bounds, row_used = [], [], [0], 0

    def close_row():
        nonlocal row_used
        if row_used < seq_len:
            pad = seq_len - row_used
            ids.extend([pad_id] * pad)
            labels.extend([IGNORE_INDEX] * pad)
            bounds.append(len(ids))
        row_used = 0

    for sample_ids, trained in samples:
        n = len(sample_ids)
        if n > seq_len:
            raise ValueError(f"conversation of {n} tokens does not fit a row of {seq_len}")
        if row_used + n > seq_len:
            close_row()
        ids.extend(sample_ids)
        labels.extend(t if f else IGNORE_INDEX for t, f in zip(sample_ids[1:], trained[1:]))
        labels.append(IGNORE_INDEX)
        bounds.append(len(ids))
        row_used += n
    if row_used:
        close_row()
    labels_t = torch.tensor(labels, dtype=torch.int64)
    return PackedBatch(torch.tensor(ids, dtype=torch.int64)[None], labels_t[None],
                       torch.tensor(bounds, dtype=torch.int32), int((labels_t != IGNORE_INDEX).sum()))


class SFTBatches:
    """Packed SFT batches of `batch_rows` rows x seq_len for one rank: conversations in a seeded random order per
    epoch, rank r taking every world_size-th one. State: (epoch, position in this rank's order)."""

    def __init__(self, samples: list[tuple[list[int], list[bool]]], seq_len: int, batch_rows: int, pad_id: int, *,
                 rank: int = 0, world_size: int = 1, seed: int = 0, overlong: str = "truncate", log=print):
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        if overlong not in ("truncate", "drop"):
            raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
        kept = []
        for ids, trained in samples:
            if len(ids) > seq_len:
                if overlong == "drop":
                    continue
                ids, trained = ids[:seq_len], trained[:seq_len]
            if any(trained[1:]):
                kept.append((ids, trained))
        if len(kept) < len(samples):
            log(f"SFT: {len(samples) - len(kept)} of {len(samples)} conversations dropped (longer than {seq_len} "
                f"tokens with overlong={overlong}, or no assistant token left)")
        if len(kept) < world_size:
            raise ValueError(f"SFT: {len(kept)} usable conversations for {world_size} ranks")
        self.samples, self.seq_len, self.batch_rows, self.pad_id = kept, seq_len, batch_rows, pad_id
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(len(self.samples)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order[self.rank::self.world_size]

    def _take(self):
        if self.pos >= len(self._order):
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._make_order()
        return self.samples[self._order[self.pos]]

    def __iter__(self):
        return self

    def __next__(self) -> PackedBatch:
        rows_used, row_fill, chosen = 1, 0, []
        while True:
            ids, trained = self._take()
            if row_fill + len(ids) > self.seq_len:
                if rows_used == self.batch_rows:
                    break
                rows_used, row_fill = rows_used + 1, 0
            chosen.append((ids, trained))
            row_fill += len(ids)
            self.pos += 1
        batch = pack_conversations(chosen, self.seq_len, self.pad_id)
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "num_samples": len(self.samples)}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != len(self.samples) or state["seed"] != self.seed:
            raise ValueError(f"SFT data position was saved for {state['num_samples']} conversations (seed "
                             f"{state['seed']}), this run has {len(self.samples)} (seed {self.seed})")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._make_order()
