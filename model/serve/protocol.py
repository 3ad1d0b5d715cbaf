"""OpenAI-compatible request parsing: JSON bodies of /v1/completions and /v1/chat/completions -> checked requests.

Every problem raises RequestError (HTTP 400 with an OpenAI-style error body naming the field). Unknown fields are
errors; OpenAI fields this server does not implement are accepted only at their neutral value.
Extensions beyond the OpenAI API: top_k, stop_token_ids, ignore_eos, return_token_ids, chat_template_kwargs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .sampling_params import SamplingParams


class RequestError(ValueError):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status == 400 else "not_found_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": None}}


@dataclass
class ParsedRequest:
    prompts: list            # completions: str or token-id list per prompt; chat: one rendered string
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    return_token_ids: bool = False
    max_tokens_given: bool = True
    chat: bool = False
    chat_template_kwargs: dict = field(default_factory=dict)
    messages: list | None = None
    tools: list | None = None


_SAMPLING = {"temperature", "top_p", "top_k", "seed", "max_tokens", "stop", "stop_token_ids", "ignore_eos", "n"}
# OpenAI fields accepted only at these neutral values (None = absent)
_NEUTRAL = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": ({},),
            "logprobs": (False,), "best_of": (1,), "echo": (False,), "suffix": ("",), "top_logprobs": (0,),
            "parallel_tool_calls": (True, False), "tool_choice": ("none", "auto"),
            "response_format": ({"type": "text"},), "store": (False,), "metadata": ({},)}
_COMMON = {"model", "stream", "stream_options", "user", "return_token_ids"} | _SAMPLING | set(_NEUTRAL)
_COMPLETION_FIELDS = _COMMON | {"prompt"}
_CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "tools", "chat_template_kwargs"}
_ROLES = {"system", "developer", "user", "assistant", "tool"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_common(body, allowed: set[str], served_model: str) -> None:
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}", unknown[0])
    model = body.get("model")
    if model is not None and model != served_model:
        raise RequestError(f"the model {model!r} does not exist; this server serves {served_model!r}", "model",
                           status=404)
    for name, ok in _NEUTRAL.items():
        v = body.get(name)
        if v is not None and v not in ok:
            raise RequestError(f"{name}={v!r} is not supported by this server"
                               + (f" (only {ok[0]!r})" if ok else ""), name)
    for name in ("stream", "return_token_ids", "ignore_eos"):
        if name in body and body[name] is not None and not isinstance(body[name], bool):
            raise RequestError(f"{name} must be a boolean", name)
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict) or set(opts) - {"include_usage", "continuous_usage_stats"} or any(
                v is not None and not isinstance(v, bool) for v in opts.values()):
            raise RequestError("stream_options must be an object with include_usage (boolean)", "stream_options")
        if not body.get("stream"):
            raise RequestError("stream_options is only allowed with stream=true", "stream_options")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise RequestError("user must be a string", "user")


def _sampling_params(body, max_tokens, default_temperature=1.0) -> SamplingParams:
    for name in ("temperature", "top_p"):
        v = body.get(name)
        if v is not None and not _is_num(v):
            raise RequestError(f"{name} must be a finite number", name)
    for name in ("top_k", "seed", "n"):
        v = body.get(name)
        if v is not None and not _is_int(v):
            raise RequestError(f"{name} must be an integer", name)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or any(not isinstance(s, str) or not s for s in stop) or len(stop) > 16:
        raise RequestError("stop must be a non-empty string or a list of at most 16 non-empty strings", "stop")
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_ids, list) or any(not _is_int(t) or t < 0 for t in stop_ids):
        raise RequestError("stop_token_ids must be a list of non-negative integers", "stop_token_ids")
    kw = {name: body[name] for name in ("temperature", "top_p", "top_k", "seed", "n") if body.get(name) is not None}
    kw.setdefault("temperature", default_temperature)
    try:
        return SamplingParams(max_tokens=max_tokens, stop=stop, stop_token_ids=stop_ids,
                              ignore_eos=bool(body.get("ignore_eos")), **kw)
    except ValueError as e:
        message = str(e).removeprefix("SamplingParams.")
        raise RequestError(message, message.split(":")[0]) from None


def _max_tokens(body, *names) -> tuple[int | None, bool]:
    for name in names:
        v = body.get(name)
        if v is not None:
            if not _is_int(v) or v < 1:
                raise RequestError(f"{name} must be an integer >= 1, got {v!r}", name)
            return v, True
    return None, False


def parse_completion(body, served_model: str) -> ParsedRequest:
    _check_common(body, _COMPLETION_FIELDS, served_model)
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt)):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(
            isinstance(p, str) or (isinstance(p, list) and all(_is_int(t) for t in p)) for p in prompt):
        prompts = list(prompt)
    else:
        raise RequestError("prompt must be a string, a list of strings, a list of token ids or a list of "
                           "token-id lists (non-empty)", "prompt")
    if any(len(p) == 0 for p in prompts):
        raise RequestError("prompt must not be empty", "prompt")
    max_tokens, given = _max_tokens(body, "max_tokens")
    params = _sampling_params(body, max_tokens if given else 16)
    return ParsedRequest(prompts, params, stream=bool(body.get("stream")),
                         include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
                         return_token_ids=bool(body.get("return_token_ids")), max_tokens_given=True)


def parse_chat(body, served_model: str) -> ParsedRequest:
    _check_common(body, _CHAT_FIELDS, served_model)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise RequestError(f"messages[{i}] must be an object with a role in {sorted(_ROLES)}", "messages")
        content = m.get("content")
        if isinstance(content, list):   # [{"type": "text", "text": ...}, ...]
            if any(not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str)
                   for p in content):
                raise RequestError(f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if content is not None and not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be a string or a list of text parts", "messages")
        if content is None and not m.get("tool_calls"):
            raise RequestError(f"messages[{i}].content is missing", "messages")
        clean.append({**m, "content": content})
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or any(not isinstance(t, dict) for t in tools)):
        raise RequestError("tools must be a list of objects", "tools")
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict) or any(k in ("messages", "add_generation_prompt", "tools") for k in kwargs):
        raise RequestError("chat_template_kwargs must be an object of extra template variables",
                           "chat_template_kwargs")
    max_tokens, given = _max_tokens(body, "max_completion_tokens", "max_tokens")
    params = _sampling_params(body, max_tokens if given else 1)   # default: the rest of the context (set later)
    return ParsedRequest([], params, stream=bool(body.get("stream")),
                         include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
                         return_token_ids=bool(body.get("return_token_ids")), max_tokens_given=given, chat=True,
                         chat_template_kwargs=kwargs, messages=clean, tools=tools)
