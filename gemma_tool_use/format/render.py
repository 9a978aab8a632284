"""The tool-calling chat format, rendering side: a conversation to token ids + loss mask, or text.

A conversation is a plain dict (JSON- and `datasets`-friendly):

    {"tools": [{"name": ..., "description": ..., "parameters": {JSON Schema}}, ...],
     "messages": [
        {"role": "system", "content": "..."},                       # optional, first only
        {"role": "user", "content": "..."},
        {"role": "assistant", "content": "...", "tool_calls": [{"name": ..., "args": {...}}]},
        {"role": "tool", "name": "...", "content": <any JSON value>},   # one per call result
        {"role": "assistant", "content": "final answer"}]}

Rendered (Gemma 3 turns; the system prompt and tool list are merged into the first user turn
exactly like the official Gemma template merges a system message):

    <bos><start_of_turn>user
    {system prompt}

    <tools>
    [{"name": "get_weather", "description": "...", "parameters": {...}}]
    </tools>

    What's the weather in Paris?<end_of_turn>
    <start_of_turn>model
    <tool_call>
    {"name": "get_weather", "args": {"city": "Paris"}}
    </tool_call><end_of_turn>
    <start_of_turn>user
    <tool_response>
    {"name": "get_weather", "result": {"temp_c": 18}}
    </tool_response><end_of_turn>
    <start_of_turn>model
    It is 18 °C in Paris.<end_of_turn>

Parallel calls are several <tool_call> blocks in one model turn; no call means plain text.
The loss mask covers model-turn content and its closing <end_of_turn> only. Reading model
output back into calls is format/parse.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from gemma_tool_use.model.tokenizer import (
    BOS_ID,
    END_OF_TURN_ID,
    START_OF_TURN_ID,
    GemmaTokenizer,
)
from gemma_tool_use.utils.errors import UserError

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
TOOLS_OPEN, TOOLS_CLOSE = "<tools>", "</tools>"

DEFAULT_TOOL_SYSTEM_PROMPT = (
    "You are a helpful assistant that can call functions. The available tools are listed "
    "below as JSON. To call a tool, reply with one block per call:\n"
    '<tool_call>\n{"name": "<tool name>", "args": {<arguments>}}\n</tool_call>\n'
    "Use several blocks for several calls. If no tool fits the request, answer in plain text "
    "without calling any tool."
)

ROLES = ("system", "user", "assistant", "tool")


class FormatError(UserError, ValueError):
    """A conversation does not follow the canonical schema."""


def dump_json(value: Any) -> str:
    """Compact-ish, deterministic JSON. '</' is written '<\\/' (valid JSON for '/') so that a
    string argument containing '</tool_call>' can never close the block early."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False).replace("</", "<\\/")


def render_tools(tools: Sequence[dict]) -> str:
    # One tool per line: readable, and ~30% fewer tokens than indented JSON.
    body = ",\n".join(dump_json(_tool_schema(t)) for t in tools)
    return f"{TOOLS_OPEN}\n[{body}]\n{TOOLS_CLOSE}"


def _tool_schema(tool: dict) -> dict:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
        raise FormatError(f"tool must be an object with a non-empty 'name': {tool!r:.200}")
    out = {"name": tool["name"], "description": tool.get("description", "")}
    out["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    return out


def render_call(call: dict) -> str:
    return f"{TOOL_CALL_OPEN}\n{dump_json({'name': call['name'], 'args': call.get('args', {})})}\n{TOOL_CALL_CLOSE}"


def render_tool_response(name: str, result: Any) -> str:
    return f"{TOOL_RESPONSE_OPEN}\n{dump_json({'name': name, 'result': result})}\n{TOOL_RESPONSE_CLOSE}"


def render_assistant_text(message: dict) -> str:
    """The text of one model turn: optional free text, then one block per call."""
    parts = []
    content = (message.get("content") or "").strip()
    if content:
        parts.append(content)
    parts.extend(render_call(c) for c in message.get("tool_calls") or [])
    return "\n".join(parts)


def validate_conversation(conv: dict) -> None:
    """Raise FormatError naming the first problem; accepts the canonical schema only."""
    if not isinstance(conv, dict):
        raise FormatError("conversation must be an object with 'messages'")
    tools = conv.get("tools") or []
    if not isinstance(tools, list):
        raise FormatError("'tools' must be a list")
    for t in tools:
        _tool_schema(t)
    msgs = conv.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise FormatError("'messages' must be a non-empty list")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise FormatError(f"messages[{i}]: role must be one of {ROLES}, got {m!r:.100}")
        if m["role"] == "system" and i != 0:
            raise FormatError(f"messages[{i}]: a system message may only come first")
        if m["role"] == "tool" and not isinstance(m.get("name"), str):
            raise FormatError(f"messages[{i}]: tool message needs the 'name' of the tool it answers")
        if m["role"] in ("system", "user") and not isinstance(m.get("content"), str):
            raise FormatError(f"messages[{i}]: {m['role']} content must be a string")
        for j, c in enumerate(m.get("tool_calls") or []):
            if m["role"] != "assistant":
                raise FormatError(f"messages[{i}]: only assistant messages carry tool_calls")
            if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
                raise FormatError(f"messages[{i}].tool_calls[{j}]: needs a non-empty 'name'")
            if not isinstance(c.get("args", {}), dict):
                raise FormatError(f"messages[{i}].tool_calls[{j}]: 'args' must be an object")
    if not any(m["role"] == "user" for m in msgs):
        raise FormatError("conversation has no user message")


@dataclass
class RenderedConversation:
    ids: np.ndarray  # int32 [T]
    loss_mask: np.ndarray  # bool [T]: True where the token is a training target

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def _turns(conv: dict, system_prompt: str | None) -> list[tuple[str, str]]:
    """Group messages into Gemma turns: ('user'|'model', text). Consecutive tool results form
    one user turn. The top of the first user turn holds, in order: the conversation's own system
    message, then (when tools are present) the tool instructions and the tool list."""
    msgs = list(conv["messages"])
    system_parts = []
    if msgs and msgs[0]["role"] == "system":
        system_parts.append(msgs.pop(0)["content"].strip())
    tools = conv.get("tools") or []
    if tools:
        if system_prompt:  # the format instructions are needed whatever the conversation's own system text
            system_parts.append(system_prompt.strip())
        system_parts.append(render_tools(tools))
    prefix = "\n\n".join(p for p in system_parts if p)

    turns: list[tuple[str, str]] = []
    for m in msgs:
        if m["role"] == "assistant":
            turns.append(("model", render_assistant_text(m)))
            continue
        text = m["content"].strip() if m["role"] == "user" else render_tool_response(m["name"], m.get("content"))
        if turns and turns[-1][0] == "user":  # merge tool results (and a user note after them)
            turns[-1] = ("user", turns[-1][1] + "\n" + text)
        else:
            turns.append(("user", text))
    if prefix:
        for k, (role, text) in enumerate(turns):
            if role == "user":
                turns[k] = ("user", prefix + "\n\n" + text)
                break
    return turns


def render_conversation(
    conv: dict,
    tokenizer: GemmaTokenizer,
    *,
    system_prompt: str | None = DEFAULT_TOOL_SYSTEM_PROMPT,
    add_generation_prompt: bool = False,
    validate: bool = True,
) -> RenderedConversation:
    """Render a conversation to ids and a loss mask over model turns (+ their <end_of_turn>).

    Text segments are tokenized separately at turn boundaries, which is exactly how a prompt
    and its generated continuation are tokenized at inference time.
    With add_generation_prompt, the result ends with '<start_of_turn>model\\n' (for sampling)."""
    if validate:
        validate_conversation(conv)
    ids: list[int] = [BOS_ID]
    mask: list[bool] = [False]

    def add(tokens: Iterable[int], train: bool) -> None:
        tokens = list(tokens)
        ids.extend(tokens)
        mask.extend([train] * len(tokens))

    for role, text in _turns(conv, system_prompt):
        add([START_OF_TURN_ID], False)
        add(tokenizer.encode(role + "\n"), False)
        add(tokenizer.encode(text), role == "model")
        add([END_OF_TURN_ID], role == "model")
        add(tokenizer.encode("\n"), False)
    if add_generation_prompt:
        add([START_OF_TURN_ID], False)
        add(tokenizer.encode("model\n"), False)
    return RenderedConversation(np.asarray(ids, np.int32), np.asarray(mask, bool))


def render_text(
    conv: dict, *, system_prompt: str | None = DEFAULT_TOOL_SYSTEM_PROMPT, add_generation_prompt: bool = False
) -> str:
    """The same rendering as a string (for display, and for tokenizers that parse specials)."""
    validate_conversation(conv)
    out = ["<bos>"]
    for role, text in _turns(conv, system_prompt):
        out.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
    if add_generation_prompt:
        out.append("<start_of_turn>model\n")
    return "".join(out)
