"""The grammar of a model turn that may call tools, built from the turn's own offered tools.

A grammar here is Lark text for llguidance (grammar_matcher.py compiles and runs it). It
describes exactly the turns the chat format renders (format/render.py):

    free text without a tool call                                 (tool_choice "auto", "none")
    [free text]<tool_call>\\n{"name": N, "args": A}\\n</tool_call>   (one or more, "\\n"-joined)

then a stop id (the matcher allows the stop ids once the grammar is complete). Each call is
`{"name": <an offered name>, "args": <an object valid under that tool's JSON Schema>}` with the
separators json.dumps writes (", " and ": ", as the training targets); unknown keys are refused
wherever a schema lists its properties ("strict"), as OpenAI's strict mode does.

Free text may not hold `<tool_call>` or `</tool_call>` (the parser would read a block there);
a call may follow text directly, as format/parse.py reads it. After the last call one optional
newline is allowed: without it a model that writes "\\n" there would be forced into another call.

Known differences from the training format, measured by scripts/measure_grammar_acceptance.py
(experiments/constrained_decoding/README.md):
  * llguidance writes object keys in the schema's `properties` order only;
  * llguidance's JSON has no `\\/` escape, which dump_json writes for '</' inside strings, so a
    constrained string holds '</' as is. format/parse.py reads a call's JSON before it looks for
    `</tool_call>`, so such a string cannot close the block early.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from gemma_tool_use.config.schema import CONSTRAIN_MODES
from gemma_tool_use.utils.errors import UserError

# JSON as dump_json writes it (json.dumps defaults, ensure_ascii=False): fixed separators, no
# other whitespace; schema keywords llguidance does not implement are ignored ("lenient"), those it
# does (types, enums, `format` such as date and time) are enforced.
_JSON_OPTIONS = {
    "item_separator": ", ",
    "key_separator": ": ",
    "whitespace_flexible": False,
    "lenient": True,
    "json_allow_general_unicode_escapes": True,
}

# Text that holds no tool-call tag: the parser reads a block at any `<tool_call>` and reports a
# stray `</tool_call>`.
_TEXT = r"TEXT: /(?s:.*)/ & ~/(?s:.*<\/?tool_call>.*)/"


class ToolChoiceError(UserError, ValueError):
    """A tool_choice that cannot be honoured with the offered tools."""


@dataclass(frozen=True)
class ToolChoice:
    """What the turn may do: "auto" (text or calls), "none" (text only), "required" (one or more
    calls), or "function" (exactly one call of `name`)."""

    mode: str = "auto"
    name: str | None = None

    def __post_init__(self):
        if self.mode not in ("auto", "none", "required", "function"):
            raise ToolChoiceError(f"tool_choice mode must be auto, none, required or function, got {self.mode!r}")
        if (self.mode == "function") != (self.name is not None):
            raise ToolChoiceError("tool_choice: a name goes with mode 'function' only")


# JSON's interoperable integers (RFC 8259, section 6): an integer argument without bounds of its
# own stays within them, so a runaway "5000000000000..." must end (measured on BFCL: README)
MAX_SAFE_INTEGER = 2**53 - 1


def strict_schema(schema: Any) -> Any:
    """A copy of a JSON Schema in which every object that lists its properties refuses other
    keys (`additionalProperties: false` where the schema says nothing), and every integer without
    bounds of its own is held to +-MAX_SAFE_INTEGER, at every depth."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    types = out.get("type")
    if types == "integer" or (isinstance(types, list) and "integer" in types):
        out.setdefault("minimum", -MAX_SAFE_INTEGER)
        out.setdefault("maximum", MAX_SAFE_INTEGER)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: strict_schema(v) for k, v in out["properties"].items()}
        out.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
        if isinstance(out.get(key), (dict, list)):
            out[key] = strict_schema(out[key])
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(out.get(key), list):
            out[key] = [strict_schema(s) for s in out[key]]
    for key in ("$defs", "definitions"):
        if isinstance(out.get(key), dict):
            out[key] = {k: strict_schema(v) for k, v in out[key].items()}
    return out


def call_schema(tools: Sequence[dict], *, loose: frozenset[str] = frozenset()) -> dict:
    """The JSON Schema of one call object: `{"name": N, "args": A}` for each offered tool, A
    under that tool's (strict) parameters; tools named in `loose` take any args object."""
    alternatives = []
    for tool in tools:
        params = tool.get("parameters") or {"type": "object", "properties": {}}
        args = {"type": "object"} if tool["name"] in loose else strict_schema(params)
        alternatives.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool["name"]}, "args": args},
                "required": ["name", "args"],
                "additionalProperties": False,
            }
        )
    schema = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    return {**schema, "x-guidance": _JSON_OPTIONS}


def grammars_for(tool_lists: Sequence[Sequence[dict]], constrain: str) -> list[str | None] | None:
    """Per prompt, the grammar `generation.constrain` asks for (None: unconstrained)."""
    if constrain == "none":
        return None
    if constrain != "tools":
        raise ToolChoiceError(f"generation.constrain must be one of {CONSTRAIN_MODES}, got {constrain!r}")
    return [tool_grammar(tools) for tools in tool_lists]


def tool_grammar(
    tools: Sequence[dict], choice: ToolChoice = ToolChoice(), *, loose: frozenset[str] = frozenset()
) -> str | None:
    """Lark grammar of a model turn offered `tools` under `choice`; None where nothing is
    constrained (no tools and tool_choice auto)."""
    if choice.mode == "none":
        return f"start: TEXT\n{_TEXT}\n"
    if not tools:
        if choice.mode == "auto":
            return None
        raise ToolChoiceError(f"tool_choice {choice.mode!r} needs at least one offered tool")
    if choice.mode == "function":
        chosen = [t for t in tools if t["name"] == choice.name]
        if not chosen:
            offered = ", ".join(t["name"] for t in tools)
            raise ToolChoiceError(
                f"tool_choice names {choice.name!r}, which is not among the offered tools ({offered})"
            )
        tools = chosen
    schema = json.dumps(call_schema(tools, loose=loose), ensure_ascii=False)
    body = [
        f'call: %json {schema} "\\n</tool_call>"',
        r'OPEN: "<tool_call>\n"',
        r'SEP: "\n<tool_call>\n"',
    ]
    if choice.mode == "auto":
        start = r'start: TEXT | LEAD call (SEP call)* "\n"?'
        body += [_TEXT, "LEAD: TEXT OPEN"]
    elif choice.mode == "required":
        start = r'start: OPEN call (SEP call)* "\n"?'
    else:  # one call of the named function
        start = r'start: OPEN call "\n"?'
    return "\n".join([start, *body]) + "\n"
