"""OpenAI chat-completions requests <-> this project's conversations, as plain functions.

`stage=serve` (serve.py) speaks the OpenAI API over HTTP; this module holds the translation so
that it can be tested without a server or a model:

* `parse_request(body)` checks a `POST /v1/chat/completions` body and returns a `ChatRequest`:
  the project conversation (`{"tools", "messages"}`, chat_format's schema) and the sampling
  settings. OpenAI tools `{"type": "function", "function": {name, description, parameters}}`
  become project tools; assistant `tool_calls` (arguments as a JSON string) become project calls
  with `args` objects; `tool` messages find the name of the tool they answer through their
  `tool_call_id`; a JSON tool result is passed on as JSON, any other as text. Every problem is
  a `RequestError` naming the field (`messages[2].tool_calls[0].function.arguments`), which the
  server returns as an OpenAI-style 400.
* `completion_response(...)` turns the model's raw text into a `chat.completion` object:
  parsed calls become `tool_calls` (ids `call_<hex>`, arguments as a JSON string, finish_reason
  "tool_calls"); otherwise the text is the content. `completion_chunks(...)` is the same answer
  as `chat.completion.chunk` events for `stream: true`.

`tool_choice` (`ChatRequest.tool_choice`, a generation/tool_grammar.ToolChoice): "auto" (default)
offers the tools; "none" leaves them out of the prompt, so the model answers in text; "required"
and `{"type": "function", "function": {"name": ...}}` are honoured through the tool-call grammar
(the server decodes under it: one or more calls, or exactly one call of that function). A
function's `strict: true` (`ChatRequest.strict_tools`) puts its arguments under its schema.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from gemma_tool_use.format.parse import ParseResult
from gemma_tool_use.format.render import FormatError, validate_conversation
from gemma_tool_use.generation.tool_grammar import ToolChoice


class RequestError(ValueError):
    """A request the API refuses: HTTP status, message, the offending field and an OpenAI code."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    conversation: dict  # {"tools": [...], "messages": [...]}, chat_format's schema
    model: str
    max_tokens: int | None = None  # None: the server's default
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    strict_tools: frozenset[str] = frozenset()  # functions sent with strict: true


_ROLES = ("system", "developer", "user", "assistant", "tool")
_IGNORED = {
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "user",
    "metadata",
    "store",
    "parallel_tool_calls",
    "service_tier",
    "reasoning_effort",
    "modalities",
    "prediction",
}
_KNOWN = {
    "model",
    "messages",
    "tools",
    "tool_choice",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "logprobs",
    "top_logprobs",
    "response_format",
    "functions",
    "function_call",
} | _IGNORED


def _number(body: dict, key: str, lo: float, hi: float, default, integer: bool = False):
    value = body.get(key)
    if value is None:
        return default
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not (lo <= value <= hi):
        kind = "an integer" if integer else "a number"
        raise RequestError(f"'{key}' must be {kind} in [{lo}, {hi}], got {value!r:.60}", key)
    return value


def _text_content(content: Any, where: str, allow_none: bool = False) -> str:
    """A message's content: a string, or a list of {"type": "text", "text": ...} parts."""
    if content is None and allow_none:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestError(f"{where}[{k}]: only text content parts are supported, got {kind!r:.40}", where)
            parts.append(part["text"])
        return "\n".join(parts)
    raise RequestError(f"{where} must be a string or a list of text parts", where)


def _tools(body: dict) -> tuple[list[dict], frozenset[str]]:
    """(the project tools, the names of those sent with strict: true)."""
    tools = body.get("tools")
    if tools is None:
        if body.get("functions") is not None:
            raise RequestError("'functions' is deprecated by OpenAI and not supported: send 'tools'", "functions")
        return [], frozenset()
    if not isinstance(tools, list):
        raise RequestError("'tools' must be a list", "tools")
    out, seen, strict_names = [], set(), set()
    for i, t in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            raise RequestError(f'{where} must be {{"type": "function", "function": {{...}}}}', where)
        f = t["function"]
        name = f.get("name")
        if not isinstance(name, str) or not name:
            raise RequestError(f"{where}.function.name must be a non-empty string", f"{where}.function.name")
        if name in seen:
            raise RequestError(f"{where}.function.name {name!r} is offered twice", f"{where}.function.name")
        seen.add(name)
        params = f.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise RequestError(
                f"{where}.function.parameters must be a JSON Schema object", f"{where}.function.parameters"
            )
        desc = f.get("description", "")
        if not isinstance(desc, str):
            raise RequestError(f"{where}.function.description must be a string", f"{where}.function.description")
        strict = f.get("strict", False)
        if not isinstance(strict, bool) and strict is not None:
            raise RequestError(f"{where}.function.strict must be a boolean", f"{where}.function.strict")
        out.append({"name": name, "description": desc, "parameters": params})
        if strict:
            strict_names.add(name)
    return out, frozenset(strict_names)


def _tool_choice(choice: Any, tools: list[dict]) -> ToolChoice:
    if choice in ("auto", "none"):
        return ToolChoice(choice)
    if choice == "required":
        if not tools:
            raise RequestError("tool_choice 'required' needs at least one tool in 'tools'", "tool_choice")
        return ToolChoice("required")
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise RequestError(
            'tool_choice must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}, '
            f"got {choice!r:.80}",
            "tool_choice",
        )
    if name not in {t["name"] for t in tools}:
        raise RequestError(f"tool_choice names {name!r:.80}, which is not in 'tools'", "tool_choice.function.name")
    return ToolChoice("function", name)


def _messages(raw: Any) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list", "messages")
    out: list[dict] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant turns
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            got = m.get("role") if isinstance(m, dict) else type(m).__name__
            raise RequestError(f"{where}.role must be one of {', '.join(_ROLES)}, got {got!r:.40}", f"{where}.role")
        role = m["role"]
        if role in ("system", "developer"):
            if out:
                raise RequestError(f"{where}: a {role} message may only come first", where)
            out.append({"role": "system", "content": _text_content(m.get("content"), f"{where}.content")})
        elif role == "user":
            out.append({"role": "user", "content": _text_content(m.get("content"), f"{where}.content")})
        elif role == "assistant":
            calls = []
            for j, c in enumerate(m.get("tool_calls") or []):
                cw = f"{where}.tool_calls[{j}]"
                f = c.get("function") if isinstance(c, dict) else None
                if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
                    raise RequestError(f"{cw}.function.name must be a non-empty string", f"{cw}.function.name")
                args = f.get("arguments", "{}")
                try:
                    args = json.loads(args) if isinstance(args, str) else args
                except json.JSONDecodeError as e:
                    raise RequestError(
                        f"{cw}.function.arguments is not valid JSON: {e}", f"{cw}.function.arguments"
                    ) from None
                if not isinstance(args, dict):
                    raise RequestError(f"{cw}.function.arguments must encode a JSON object", f"{cw}.function.arguments")
                if isinstance(c.get("id"), str):
                    call_names[c["id"]] = f["name"]
                calls.append({"name": f["name"], "args": args})
            msg = {"role": "assistant", "content": _text_content(m.get("content"), f"{where}.content", allow_none=True)}
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
        else:  # tool
            name = call_names.get(m.get("tool_call_id")) or m.get("name")
            if not isinstance(name, str) or not name:
                raise RequestError(
                    f"{where}.tool_call_id {m.get('tool_call_id')!r:.60} answers no earlier assistant "
                    "tool call (and the message has no 'name')",
                    f"{where}.tool_call_id",
                )
            text = _text_content(m.get("content"), f"{where}.content")
            try:
                content = json.loads(text)  # a JSON result stays structured in <tool_response>
            except (json.JSONDecodeError, RecursionError):
                content = text
            out.append({"role": "tool", "name": name, "content": content})
    return out


def parse_request(body: Any, default_model: str) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise RequestError(f"unknown parameter(s): {', '.join(unknown)}", unknown[0], code="unknown_parameter")
    if body.get("n", 1) != 1:
        raise RequestError("'n' must be 1: one choice per request (send several requests; they are batched)", "n")
    if body.get("logprobs"):
        raise RequestError("'logprobs' is not supported", "logprobs")
    if body.get("function_call") is not None:
        raise RequestError(
            "'function_call' is deprecated by OpenAI and not supported: use 'tool_choice'", "function_call"
        )
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise RequestError('\'response_format\' other than {"type": "text"} is not supported', "response_format")
    tools, strict_tools = _tools(body)
    choice = _tool_choice(body.get("tool_choice", "auto"), tools)
    if choice.mode == "none":
        tools, strict_tools = [], frozenset()
    conversation = {"tools": tools, "messages": _messages(body.get("messages"))}
    try:
        validate_conversation(conversation)
    except FormatError as e:
        raise RequestError(f"messages: {e}", "messages") from None
    model = body.get("model", default_model)
    if not isinstance(model, str):
        raise RequestError("'model' must be a string", "model")
    max_tokens = _number(body, "max_completion_tokens", 1, 1 << 20, None, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", 1, 1 << 20, None, integer=True)
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("'stop' must be a non-empty string or a list of up to 4 of them", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise RequestError("'stream_options' must be an object", "stream_options")
    seed = _number(body, "seed", -(1 << 63), (1 << 63) - 1, None, integer=True)
    return ChatRequest(
        conversation,
        model,
        max_tokens,
        float(_number(body, "temperature", 0, 2, 0.0)),
        float(_number(body, "top_p", 0, 1, 1.0)),
        seed,
        stop,
        stream,
        bool(opts.get("include_usage")),
        choice,
        strict_tools,
    )


# ------------------------------------------------------------------------------ responses


def apply_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut the text at the earliest stop string (OpenAI leaves the stop string out)."""
    cuts = [text.find(s) for s in stop if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _tool_calls(parsed: ParseResult) -> list[dict]:
    return [
        {
            "id": f"call_{secrets.token_hex(12)}",
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)},
        }
        for c in parsed.calls
    ]


def build_message(text: str, parsed: ParseResult, stop_reason: str) -> tuple[dict, str]:
    """(assistant message, finish_reason) for the model's text. Calls win when any parsed;
    free text beside them is kept as content (OpenAI allows both)."""
    calls = _tool_calls(parsed)
    if calls:
        return {"role": "assistant", "content": parsed.text or None, "tool_calls": calls}, "tool_calls"
    return {"role": "assistant", "content": text, "refusal": None}, "length" if stop_reason == "length" else "stop"


def completion_response(
    req_id: str, model: str, message: dict, finish: str, prompt_tokens: int, completion_tokens: int
) -> dict:
    return {
        "id": req_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def completion_chunks(
    req_id: str, model: str, message: dict, finish: str, prompt_tokens: int, completion_tokens: int, include_usage: bool
) -> list[dict]:
    """The answer as stream events: the role, then the content or each call, then the finish
    reason (and usage when asked). Sent when the generation is done: one answer, several events."""
    base = {
        "id": req_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }

    def chunk(delta: dict, finish_reason: str | None = None) -> dict:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}

    events = [chunk({"role": "assistant", "content": ""})]
    if message.get("content"):
        events.append(chunk({"content": message["content"]}))
    for k, call in enumerate(message.get("tool_calls") or []):
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": k,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]},
                        }
                    ]
                }
            )
        )
    events.append(chunk({}, finish))
    if include_usage:
        events.append(
            {
                **base,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )
    return events
