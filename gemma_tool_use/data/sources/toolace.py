"""ToolACE (Team-ACE/ToolACE, Apache-2.0): data.json rows {"system", "conversations": [{"from":
"user"|"assistant"|"tool", "value"}]}. The tool list is a JSON array inside the system prompt
(after "Here is a list of functions in JSON format that you can invoke:") with
"parameters": {"type": "dict", ...}; model calls are Python-call text, [Get Weather(city="Paris"),
f(a=1)] (names may contain spaces); tool turns a JSON list [{"name", "results"}]. The system
prompt's format-only sentences are dropped (our renderer adds its own), other system text kept.
"""

from __future__ import annotations

import json
import re
from typing import Iterable

from gemma_tool_use.data.sources.common import (
    Dialogue,
    RowError,
    parse_literal,
    result,
    sharegpt_turns,
    split_top,
    tool_list,
)

_LIST_MARKER = "Here is a list of functions in JSON format that you can invoke:"
_BOILERPLATE = [
    re.compile(p.replace(" ", r"\s+"), re.IGNORECASE)
    for p in (
        r"You are an expert in composing functions\.",
        r"You are given a question and a set of possible functions\.",
        r"Based on the question, you will need to make one or more function/tool calls to achieve the purpose\.",
        r"If none of the functions? can be used, point it out\.",
        r"If the given question lacks the parameters required by the function, also point it out\.",
        r"You should only return the function calls? in (?:the )?tools? call sections\.",
        r"Here is a list of functions in JSON format that you can invoke:",
        r"Should you decide to return the function calls?(?:\(s\))?\s*[.,]?",
        r"Put it in the format of \[[^\]]*\]\.?",
        r"NO other text MUST be included\.?",
    )
]
_LOOKS_LIKE_TOOL_TEXT = re.compile(r"\b(functions?|tools?|apis?)\b", re.IGNORECASE)


def _find_tool_array(text: str, start: int) -> tuple[int, int, list] | None:
    """The first JSON array of tool objects (each with a "name") in `text` from `start`."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\[", text[start:]):
        at = start + m.start()
        try:
            value, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            continue
        if isinstance(value, list) and (
            (value and all(isinstance(t, dict) and "name" in t for t in value))
            or (not value and text.rfind(_LIST_MARKER, 0, at) != -1)
        ):
            return at, end, value
    return None


def toolace_system_to_tools(system: str) -> tuple[list[dict], str]:
    """The tools listed in a ToolACE system prompt, and the system text left once the tool list
    and the format-only sentences are taken out ("" when nothing else is there)."""
    if not isinstance(system, str):
        raise RowError("missing_field", f"'system' is a {type(system).__name__}, not a string")
    marker = system.find(_LIST_MARKER)
    found = _find_tool_array(system, max(marker, 0))
    if found is None:
        if marker != -1 or _LOOKS_LIKE_TOOL_TEXT.search(system):
            # ToolACE has a few rows whose tools are HTML/LaTeX tables or YAML-like blocks.
            raise RowError("malformed_prompt", "no JSON tool list in the system prompt")
        return [], system.strip()
    start, end, raw_tools = found
    rest = system[:start] + "\n" + system[end:]
    for p in _BOILERPLATE:
        rest = p.sub(" ", rest)
    # What is left of the boilerplate is punctuation ("]. \n" after the list): drop such lines.
    lines = (re.sub(r"^[.,:;]+\s*", "", line.strip()) for line in rest.splitlines())
    return tool_list(raw_tools), "\n".join(line for line in lines if re.search(r"\w", line))


def parse_python_calls(text: str) -> list[dict]:
    """ToolACE's call text, ``[f(a=1, b="x"), Get Weather(city='Paris')]``, as canonical calls.
    Names are taken verbatim (they may contain spaces, arguments may be Python keywords such as
    `from`); arguments must be keyword literals (parse_literal: never evaluated)."""
    s = text.strip()
    s = s[1:-1] if s.startswith("[") and s.endswith("]") else s
    calls = []
    try:
        for piece in filter(str.strip, split_top(s, ",", strict=True)):
            m = re.fullmatch(r"\s*([^\"'\[\]{}()=,:]+?)\s*\((.*)\)\s*", piece, re.DOTALL)
            if not m:
                raise ValueError(f"expected 'name(...)', got {piece.strip()[:60]!r}")
            args = {}
            for part in filter(str.strip, split_top(m.group(2), ",", strict=True)):
                key, eq, value = part.partition("=")
                key = key.strip().strip("\"'")
                if not eq or not key or any(c in key for c in "\"'[]{}(),: ") or key in args:
                    raise ValueError(
                        f"{m.group(1)}: a positional, repeated or malformed argument {part.strip()[:60]!r}"
                    )
                args[key] = parse_literal(value)
            calls.append({"name": m.group(1), "args": args})
    except ValueError as e:
        raise RowError("malformed_json", f"call text: {e}") from None
    if not calls:
        raise RowError("empty", "an empty call list")
    return calls


def _looks_like_call_list(text: str, tool_names: Iterable[str]) -> bool:
    s = text.strip()  # "[name(" opening a bracketed list, or a listed tool's name then "("
    return bool(s.endswith("]") and re.match(r"\[\s*[^\s\[\]()\"'{}][^\[\]()\"'{}]*\(", s)) or any(
        s.startswith(n + "(") for n in tool_names
    )


def toolace_row_to_conversation(row: dict) -> tuple[list[dict], list[dict]]:
    """One ToolACE row: tools from the system prompt, Python-call model turns parsed into calls,
    tool turns (a JSON list of {"name", "results"}) into one tool message per result."""
    tools, system_text = toolace_system_to_tools(row.get("system") or "")
    names, d = [t["name"] for t in tools], Dialogue(system_text)
    for speaker, value in sharegpt_turns(row):
        if speaker in ("user", "human"):
            d.user(value)
        elif speaker in ("assistant", "gpt"):
            calls = parse_python_calls(value) if _looks_like_call_list(value, names) else None
            d.model("" if calls else value, calls)
        elif speaker == "tool":
            d.results(result(value))
        else:
            raise RowError("missing_field", f"a turn from unknown speaker {speaker!r:.40}")
    return tools, d.messages
