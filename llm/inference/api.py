"""The OpenAI request and response shapes: strict validation in, JSON objects out.

Every problem becomes an `ApiError` with an HTTP status and a message naming the field, in the
OpenAI error body `{"error": {"message", "type", "param", "code"}}`. Fields we do not implement
(n > 1, logprobs, logit_bias, echo, best_of, suffix, tools) are refused rather than ignored;
unknown fields are refused too, except `user` and `stream_options`, which change nothing here.

Adapters (`llm serve --adapter NAME=DIR`): a request picks one with our `adapter` field or
with OpenAI's `model` field naming it (each adapter is listed as a model); neither, or
`model` naming the base, runs the base. An unknown name is a 404, as for an unknown model.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any

from llm.inference.engine import StopCriteria
from llm.inference.loading import chat_stops
from llm.inference.sampling import SamplingError, SamplingParams
from llm.tokenizers.chat import ROLES, apply_chat

MAX_STOP_STRINGS = 4


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param,
                          "code": self.code}}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Limits:
    model_name: str
    max_prompt_tokens: int
    max_new_tokens: int
    context: int  # prompt + generated tokens must fit in this many
    adapters: tuple[str, ...] = ()  # names a request may pick (llm/inference/adapters.py)


@dataclasses.dataclass
class ParsedRequest:
    chat: bool
    prompt_ids: list[int]
    sampling: SamplingParams
    stop: StopCriteria
    stream: bool
    model: str
    include_usage: bool = False  # stream_options.include_usage: a final chunk with usage
    adapter: str | None = None  # whose weights answer it; None: the base model


COMMON = {"model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
          "min_p", "typical_p", "repetition_penalty", "frequency_penalty", "presence_penalty",
          "seed", "stop", "stream", "user", "stream_options", "n", "logprobs", "logit_bias",
          "echo", "best_of", "suffix", "top_logprobs", "adapter"}  # fmt: skip
UNSUPPORTED = {"n": 1, "best_of": 1, "logprobs": None, "top_logprobs": None, "echo": False,
               "suffix": None, "logit_bias": None}  # fmt: skip


def decode_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body, or 400 naming what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {err.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise ApiError(400, f"request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


def parse(body: dict[str, Any], tokenizer: Any, limits: Limits, *, chat: bool) -> ParsedRequest:
    """Validates a /v1/completions (chat=False) or /v1/chat/completions body."""
    allowed = COMMON | ({"messages"} if chat else {"prompt"})
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field(s) {unknown}", param=unknown[0])
    for key, default in UNSUPPORTED.items():
        if body.get(key, default) not in (default, {}):
            raise ApiError(400, f"{key}={body[key]!r} is not supported", param=key)
    model, adapter = _model_and_adapter(body, limits)
    ids = _chat_ids(body, tokenizer) if chat else _prompt_ids(body, tokenizer)
    if len(ids) > limits.max_prompt_tokens:
        raise ApiError(400, f"prompt has {len(ids)} tokens; the limit is "
                       f"{limits.max_prompt_tokens}", param="messages" if chat else "prompt",
                       code="context_length_exceeded")  # fmt: skip
    max_key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    # unset: the server's limit, or what the context leaves if less (a default, not a request)
    room = min(limits.max_new_tokens, limits.context - len(ids))
    max_new = _get(body, max_key, int, max(room, 1))
    if not 1 <= max_new <= limits.max_new_tokens:
        raise ApiError(400, f"{max_key}={max_new} must be in [1, {limits.max_new_tokens}]",
                       param=max_key)  # fmt: skip
    if len(ids) + max_new > limits.context:
        raise ApiError(400, f"prompt ({len(ids)} tokens) + {max_key} ({max_new}) exceeds the "
                       f"context of {limits.context} tokens", param=max_key,
                       code="context_length_exceeded")  # fmt: skip
    stops = _stop_strings(body)
    stop_ids = (tokenizer.eos_id,)
    if chat:
        stop_ids, turn_strings = chat_stops(tokenizer)
        stops = (*stops, *turn_strings)
    options = _get(body, "stream_options", dict, {})
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):
        raise ApiError(400, "stream_options.include_usage must be a boolean",
                       param="stream_options")  # fmt: skip
    return ParsedRequest(chat, ids, _sampling(body), StopCriteria(max_new, stop_ids, stops),
                         _get(body, "stream", bool, False), model, usage, adapter)  # fmt: skip


def _model_and_adapter(body: dict[str, Any], limits: Limits) -> tuple[str, str | None]:
    """(the model name to echo, the adapter to run or None) from `model` and `adapter`."""
    model = _get(body, "model", str, limits.model_name)
    has = f"this server has {limits.model_name!r}" + (
        f" and adapters {list(limits.adapters)}" if limits.adapters else " and no adapters"
    )
    if model != limits.model_name and model not in limits.adapters:
        raise ApiError(404, f"model {model!r} does not exist; {has}", param="model",
                       code="model_not_found")  # fmt: skip
    by_model = model if model in limits.adapters else None
    adapter = _get(body, "adapter", str, None)
    if adapter is None:
        return model, by_model
    if adapter not in limits.adapters:
        raise ApiError(404, f"adapter {adapter!r} does not exist; {has}", param="adapter",
                       code="adapter_not_found")  # fmt: skip
    if by_model is not None and by_model != adapter:
        raise ApiError(400, f"model {model!r} names adapter {model!r} but adapter is "
                       f"{adapter!r}: give one of them", param="adapter")  # fmt: skip
    return model, adapter


def _get(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ApiError(400, f"{key} must be of type {kind.__name__}, got "
                       f"{type(value).__name__}", param=key)  # fmt: skip
    return value


def _prompt_ids(body: dict[str, Any], tokenizer: Any) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "prompt is empty", param="prompt")
        return [tokenizer.bos_id, *tokenizer.encode(prompt)]
    if isinstance(prompt, list) and all(type(t) is int for t in prompt):
        if not prompt:
            raise ApiError(400, "prompt is empty", param="prompt")
        bad = [t for t in prompt if not 0 <= t < tokenizer.vocab_size]
        if bad:
            raise ApiError(400, f"prompt token ids {bad[:5]} are outside the vocabulary",
                           param="prompt")  # fmt: skip
        return list(prompt)
    raise ApiError(400, "prompt must be a non-empty string or a list of token ids "
                   "(one prompt per request)", param="prompt")  # fmt: skip


def _chat_ids(body: dict[str, Any], tokenizer: Any) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{k}] must be an object with role in {ROLES}",
                           param=f"messages[{k}]")  # fmt: skip
        if not isinstance(m.get("content"), str):
            raise ApiError(400, f"messages[{k}].content must be a string",
                           param=f"messages[{k}].content")  # fmt: skip
    if not any(m["content"] for m in messages):
        raise ApiError(400, "every message is empty", param="messages")
    return apply_chat(tokenizer, messages, add_generation_prompt=True)


def _stop_strings(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "stop must be a non-empty string or a list of them", param="stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, f"at most {MAX_STOP_STRINGS} stop strings", param="stop")
    return tuple(stops)


def _sampling(body: dict[str, Any]) -> SamplingParams:
    fields = {"temperature": float, "top_p": float, "top_k": int, "min_p": float,
              "typical_p": float, "repetition_penalty": float, "frequency_penalty": float,
              "presence_penalty": float, "seed": int}  # fmt: skip
    values = {k: _get(body, k, kind, None) for k, kind in fields.items()}
    values = {k: v for k, v in values.items() if v is not None}
    for key in ("frequency_penalty", "presence_penalty"):
        if not -2.0 <= values.get(key, 0.0) <= 2.0:
            raise ApiError(400, f"{key} must be in [-2, 2]", param=key)
    if not 0.0 <= values.get("temperature", 1.0) <= 2.0:
        raise ApiError(400, "temperature must be in [0, 2]", param="temperature")
    if "seed" not in values:
        values["seed"] = uuid.uuid4().int % 2**32  # unseeded requests differ from each other
    try:
        return SamplingParams(**values)
    except SamplingError as err:
        raise ApiError(400, str(err), param=err.problems[0][0]) from None


def completion_object(
    req: ParsedRequest,
    rid: str,
    text: str,
    finish: str | None,
    usage: dict[str, int] | None,
    chunk: bool,
    first: bool = False,
) -> dict:
    """One response (chunk=False) or one SSE chunk in the shape of the endpoint."""
    base = {"id": rid, "created": int(time.time()), "model": req.model}
    if not req.chat:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        out = {**base, "object": "text_completion", "choices": [choice]}
    elif chunk:
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        if finish is not None and not text:
            delta = {}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        out = {**base, "object": "chat.completion.chunk", "choices": [choice]}
    else:
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        out = {**base, "object": "chat.completion", "choices": [choice]}
    if usage is not None:
        out["usage"] = usage
    return out
