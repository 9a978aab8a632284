"""LLaMA-Factory demo data (github.com/hiyouga/LLaMA-Factory, data/); tools as a JSON string.

* glaive_toolcall_{en,zh}_demo.json: ShareGPT turns human / gpt / function_call / observation.
* reason_tool_use_demo_50.jsonl: OpenAI-style messages whose content is a list of parts (text /
  reasoning / tool_call); a tool record holds [{"tool_call_id", "name", "content"}, ...] or the
  bare result of a single call. Reasoning parts and the system prompt that asks for them are
  dropped: the canonical format has no reasoning channel.
"""

from __future__ import annotations

from gemma_tool_use.data.sources.common import (
    Dialogue,
    RowError,
    calls,
    result,
    sharegpt_turns,
    tool_list,
)


def glaive_row(obj: dict) -> tuple[list[dict], list[dict]]:
    turns, tools, d = sharegpt_turns(obj), tool_list(obj.get("tools")), Dialogue(obj.get("system"))
    for kind, value in turns:
        if kind == "human":
            d.user(value)
        elif kind == "gpt":
            d.model(value)
        elif kind == "function_call":
            d.model(calls=calls(value, "function_call"))
        elif kind == "observation":
            d.results(result(value))
        else:
            raise RowError("missing_field", f"unknown turn kind {kind!r}")
    return tools, d.messages


def reason_tool_use_row(obj: dict) -> tuple[list[dict], list[dict]]:
    if not isinstance(messages := obj.get("messages"), list) or not messages:
        raise RowError("empty" if messages == [] else "missing_field", "no 'messages' list, or an empty one")
    tools, d = tool_list(obj.get("tools")), Dialogue()
    for m in messages:
        parts = m.get("content") if isinstance(m, dict) else None
        parts = [{"type": "text", "value": parts}] if isinstance(parts, str) else parts
        if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
            raise RowError("missing_field", "a message needs text or a list of parts as content")
        text = "\n".join(
            p["value"].strip() for p in parts if p.get("type") == "text" and isinstance(p.get("value"), str)
        ).strip()
        role = m.get("role")
        if role == "user":
            d.user(text)
        elif role == "assistant":
            d.model(
                text, [c for p in parts if p.get("type") == "tool_call" for c in calls(p.get("value"), "function_call")]
            )
        elif role == "tool":
            d.results(result(text), content_keys=("content",))
        elif role != "system":
            raise RowError("missing_field", f"unknown role {role!r}")
    return tools, d.messages
