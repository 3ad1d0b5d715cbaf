"""Tokenizer of a served model: encode / decode with `tokenizers`, chat template rendered with jinja2 (sandboxed),
and incremental detokenization for streaming and stop strings."""
from __future__ import annotations

import datetime
import json
import os

from tokenizers import Tokenizer

# Used when the tokenizer config has no chat template (the byte-level demo tokenizer): ChatML-style turns.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


class ServeTokenizer:
    def __init__(self, tokenizer: Tokenizer, *, chat_template: str | None = None, eos_token_ids=(),
                 special_tokens: dict[str, str] | None = None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template or DEFAULT_CHAT_TEMPLATE
        self.eos_token_ids = list(eos_token_ids)
        self.special_tokens = special_tokens or {}   # bos_token, eos_token, ... for the template
        self._template = None

    @classmethod
    def from_checkpoint(cls, directory: str, eos_token_ids=()) -> "ServeTokenizer":
        """tokenizer.json + tokenizer_config.json (chat_template, special tokens) or chat_template.jinja."""
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: the checkpoint needs its tokenizer to serve text")
        tok = Tokenizer.from_file(path)
        cfg = {}
        cfg_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)
        template = cfg.get("chat_template")
        if isinstance(template, list):   # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        jinja_path = os.path.join(directory, "chat_template.jinja")
        if template is None and os.path.exists(jinja_path):
            with open(jinja_path) as f:
                template = f.read()
        specials = {}
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            v = cfg.get(key)
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                specials[key] = v
        eos = list(eos_token_ids)
        gen_path = os.path.join(directory, "generation_config.json")
        if os.path.exists(gen_path):            # chat checkpoints often list their end-of-turn ids here
            with open(gen_path) as f:
                gen_eos = json.load(f).get("eos_token_id")
            for tid in ([gen_eos] if isinstance(gen_eos, int) else gen_eos or []):
                if tid not in eos:
                    eos.append(tid)
        if "eos_token" in specials:
            tid = tok.token_to_id(specials["eos_token"])
            if tid is not None and tid not in eos:
                eos.append(tid)
        return cls(tok, chat_template=template, eos_token_ids=eos, special_tokens=specials)

    @classmethod
    def byte_level(cls) -> "ServeTokenizer":
        """The demo byte-level tokenizer of model.generate (259 ids; 2 = </s>) with the default chat template."""
        from model.generate import byte_level_tokenizer
        return cls(byte_level_tokenizer(), eos_token_ids=[2],
                   special_tokens={"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Renders the conversation with the checkpoint's chat template. Template errors raise ValueError."""
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        if self._template is None:
            def raise_exception(message):
                raise jinja2.exceptions.TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
            env.filters["tojson"] = lambda v, indent=None: json.dumps(v, indent=indent, ensure_ascii=False)
            self._template = env.from_string(self.chat_template)
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens, **kwargs)
        except jinja2.exceptions.TemplateError as e:
            raise ValueError(f"chat template: {e}") from e


class IncrementalDetokenizer:
    """Text of a growing token list, one step at a time, without re-decoding everything: decodes a short window
    (from the last complete-text boundary) and emits text only once it no longer ends in an incomplete character.
    """

    def __init__(self, tokenizer: ServeTokenizer, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-6:])        # a little context, for tokenizers that merge across tokens
        self.prefix_offset = 0                  # window start
        self.read_offset = len(self.ids)        # text of ids[:read_offset] has been emitted
        self.text = ""

    def add(self, token_ids: list[int]) -> str:
        """Appends tokens; returns the new text (maybe empty)."""
        self.ids += token_ids
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new = full[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            self.text += new
            return new
        return ""

    def flush(self) -> str:
        """At the end: whatever text is still held back (an incomplete character decodes as U+FFFD)."""
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset:])
        new = full[len(prefix):] if full.startswith(prefix) else ""
        self.prefix_offset = self.read_offset = len(self.ids)
        self.text += new
        return new
