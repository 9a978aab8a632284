"""Hermes function calling (NousResearch/hermes-function-calling-v1, Apache-2.0), configs
func_calling_singleturn, func_calling, glaive_func_calling (the json_mode_* configs carry no calls).

ShareGPT rows {"id", "conversations": [{"from": "system"|"human"|"gpt"|"tool", "value"}], "tools":
<JSON string>, ...}; the system prompt repeats the tools inside <tools>...</tools>; gpt turns hold
<tool_call>{"name", "arguments"}</tool_call> blocks (some written as Python dict literals), tool
turns <tool_response>{"name", "content"}</tool_response> blocks. The Hermes tool prompt is dropped
(our renderer adds its own), other system text kept. Text after a <tool_call> block cannot be
represented (a model message holds its text before its calls) and makes the row unusable.
"""

from __future__ import annotations

import re
from typing import Any

from gemma_tool_use.data.sources.common import (
    Dialogue,
    RowError,
    call,
    loads,
    sharegpt_turns,
    tool_list,
)

_TOOLS_BLOCK_RE = re.compile(r"<tools>(.*?)</tools>", re.DOTALL)
# Openings of Hermes' tool prompts (func_calling*, the structured-extraction rows, glaive).
_PREAMBLES = ("You are a function calling AI model", "You are an expert structured information extraction AI model")


def _strip_literal_newlines(body: str) -> str:
    """Block bodies sometimes carry a written backslash-n where a newline belongs."""
    return re.sub(r"^(\s*\\n)+|(\\n\s*)+$", "", body.strip()).strip()


def _blocks(text: str, tag: str) -> tuple[str, list[str], str]:
    """(text before the first <tag> block, the blocks' bodies, the text after it outside the blocks)."""
    pattern = re.compile(f"<{tag}>(.*?)</{tag}>", re.DOTALL)
    bodies = [_strip_literal_newlines(b) for b in pattern.findall(text)]
    if text.count(f"<{tag}>") != len(bodies) or text.count(f"</{tag}>") != len(bodies):
        raise RowError("malformed_prompt", f"a <{tag}> tag without its pair")
    before, _, after = text.partition(f"<{tag}>")
    return before, bodies, _strip_literal_newlines(pattern.sub("", f"<{tag}>{after}")) if bodies else ""


def split_hermes_calls(text: str) -> tuple[str, list[dict]]:
    """A gpt turn as (text before the calls, calls)."""
    before, bodies, after = _blocks(text, "tool_call")
    if after:
        raise RowError("malformed_prompt", f"text after a <tool_call> block: {after[:60]!r}")
    return before.strip(), [call(loads(b, "<tool_call> block")) for b in bodies]


def _results(text: str) -> Any:
    before, bodies, after = _blocks(text, "tool_response")
    if not bodies or _strip_literal_newlines(before) or after:
        raise RowError("malformed_prompt", f"a tool turn is not <tool_response> blocks alone: {text[:80]!r}")
    values = [loads(b, "<tool_response> block") for b in bodies]
    return values[0] if len(values) == 1 else values


def hermes_system_to_tools(system: str, *, parse_tools: bool = True) -> tuple[list[dict] | None, str]:
    """Tools from the system prompt's <tools> block (None when it has none, or when not
    `parse_tools`), and the system text left without the Hermes tool prompt around it."""
    block = next((m for m in _TOOLS_BLOCK_RE.finditer(system) if m.group(1).strip()), None)
    if block is None:
        return None, system.strip()
    tools = None
    if parse_tools:  # a JSON/Python list, or objects one after another
        try:
            value = loads(_strip_literal_newlines(block.group(1)), "<tools> block")
        except RowError as e:
            raise RowError("bad_tool_schema", str(e)) from None
        tools = tool_list(value if isinstance(value, list) else [value])
    before, after = system[: block.start()], system[block.end() :]
    starts = [before.find(p) for p in _PREAMBLES if p in before]
    before = before[: min(starts)] if starts else before
    close = after.rfind("</tool_call>")
    after = after[close + len("</tool_call>") :] if close != -1 else after
    return tools, "\n\n".join(p.strip() for p in (before, after) if p.strip())


def hermes_row_to_conversation(row: dict) -> tuple[list[dict], list[dict]]:
    """One Hermes function-calling row. Tools come from the row's `tools` field, else from the
    system prompt's <tools> block."""
    turns, tools, d = sharegpt_turns(row), tool_list(row.get("tools")) or None, Dialogue()
    for i, (speaker, value) in enumerate(turns):
        if speaker == "system" and i == 0:
            system_tools, rest = hermes_system_to_tools(value, parse_tools=tools is None)
            tools = tools or system_tools
            d = Dialogue(rest)
        elif speaker in ("human", "user"):
            d.user(value)
        elif speaker in ("gpt", "assistant"):
            d.model(*split_hermes_calls(value))
        elif speaker == "tool":
            d.results(_results(value))
        else:
            raise RowError("missing_field", f"turn {i} from unknown speaker {speaker!r:.40} (a system turn only first)")
    return tools or [], d.messages
