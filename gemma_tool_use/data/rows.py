"""The canonical training row every source loader produces, and its task category.

A row is a canonical conversation (see format/render.py) plus provenance:

    {"tools": [...], "messages": [...],
     "meta": {"source": "seal_tools/dev", "row": "17", "category": "multiple"}}

A row that cannot be made is noted in the LoadReport (data/conversations.py) and skipped, or is a
DataError with `strict=True`.
"""

from __future__ import annotations

import ast
import json

import jsonschema

from gemma_tool_use.data.conversations import DataError, LoadReport
from gemma_tool_use.format.render import FormatError, validate_conversation

CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "multi_turn", "chat")

# The one plain-text answer the data teaches for "no tool fits" (Hammer's "[]", xLAM irrelevance,
# the irrelevance augmentation): it states the decision first, then covers both reasons to abstain.
REFUSAL = (
    "I can't do this with a tool call: none of the available tools fits the request, "
    "or the request lacks a required parameter."
)


def classify(conv: dict) -> str:
    """Task category in BFCL's terms, from the tools offered and the calls made.

    multi_turn: a tool response is followed by further model output (calls depend on results),
    or the user speaks again after the first model turn. Otherwise by the first model turn:
    no call -> irrelevance (tools offered) or chat (none); one call -> simple (one tool
    offered) or multiple; several calls to one function -> parallel; to several -> parallel_multiple."""
    msgs = [m for m in conv["messages"] if m["role"] != "system"]
    roles = [m["role"] for m in msgs]
    first_model = next((i for i, r in enumerate(roles) if r == "assistant"), None)
    if first_model is None:
        return "chat"
    after_tool = msgs[roles.index("tool") :] if "tool" in roles else []
    if any(m.get("tool_calls") for m in after_tool) or (
        "user" in roles[first_model + 1 :] and roles.count("assistant") > 1
    ):
        return "multi_turn"
    calls = msgs[first_model].get("tool_calls") or []
    if not calls:
        return "irrelevance" if conv.get("tools") else "chat"
    if len(calls) == 1:
        return "simple" if len(conv.get("tools") or []) == 1 else "multiple"
    return "parallel" if len({c["name"] for c in calls}) == 1 else "parallel_multiple"


_JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object", "null"}
# JSON Schema calls 1.0 an integer; BFCL's checker (and Python) do not.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=(
        jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
            "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool)
        )
    ),
)


def _checked(spec: dict) -> dict:
    """The part of a parameter schema a call is checked against: its type(s) and enum."""
    t, out = spec.get("type"), {}
    if all(isinstance(x, str) and x in _JSON_TYPES for x in (t if isinstance(t, list) else [t])) and t:
        out["type"] = t
    if isinstance(spec.get("enum"), list) and spec["enum"]:
        out["enum"] = spec["enum"]
    return out


def validate_args(args: dict, params: dict) -> list[str]:
    """Problems of `args` against a tool's JSON Schema parameters: missing required ones, unknown
    names (when the tool lists its parameters), and each value's type and enum."""
    props = params.get("properties") or {}
    schema = {
        "type": "object",
        "required": list(params.get("required") or []),
        "additionalProperties": not props,
        "properties": {k: _checked(v) for k, v in props.items() if isinstance(v, dict)},
    }
    return [f"{'/'.join(map(str, e.path)) or 'args'}: {e.message}" for e in _Validator(schema).iter_errors(args)]


def coerce(value, spec: dict):
    """A lossless conversion of a stringified value to the schema's type, or the value unchanged."""
    typ = spec.get("type")
    if not isinstance(value, str) or typ in (None, "string") or not isinstance(typ, str):
        return value
    text = value.strip()
    try:
        if typ == "integer" and text.lstrip("-").isdigit():
            return int(text)
        if typ == "number":
            f = float(text)
            return int(f) if f.is_integer() and "." not in text and "e" not in text.lower() else f
        if typ == "boolean" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if typ in ("array", "object"):
            for parse in (json.loads, ast.literal_eval):
                try:
                    out = parse(text)
                except (ValueError, SyntaxError):
                    continue
                if isinstance(out, list if typ == "array" else dict):
                    return out
    except (ValueError, OverflowError):
        pass
    return value


def repair_call_args(tools: list, messages: list) -> tuple[int, list[str]]:
    """Convert stringified numbers/booleans/lists/objects to their schema types in place;
    return (values repaired, remaining problems)."""
    by_name = {t["name"]: t for t in tools}
    repaired, problems = 0, []
    for m in messages:
        for c in m.get("tool_calls") or []:
            params = (by_name.get(c["name"]) or {}).get("parameters") or {}
            props = params.get("properties") or {}
            for k, v in list(c.get("args", {}).items()):
                if k in props:
                    new = coerce(v, props[k])
                    if new is not v:
                        c["args"][k] = new
                        repaired += 1
            problems += [f"{c['name']}: {p}" for p in validate_args(c.get("args", {}), params)]
    return repaired, problems


def make_row(
    tools: list, messages: list, *, source: str, row_id, report: LoadReport, strict: bool = False, where: str = ""
) -> dict | None:
    """Build, validate and tag one canonical row; None (noted in report) if it is unusable."""
    conv, at = {"tools": tools or [], "messages": messages}, f"{where or source}:{row_id}"
    try:
        validate_conversation(conv)
        if not any(m["role"] == "assistant" for m in messages):
            raise FormatError("no assistant message: nothing to learn")
    except FormatError as e:
        if strict:
            raise DataError(f"{at}: {e}") from e
        report.note(at, "invalid_conversation", str(e))
        return None
    # Calls must satisfy their tool's schema: BFCL's checker compares types, so training on
    # '"page": "1"' for an integer parameter teaches the wrong habit. Lossless fixes first.
    repaired, problems = repair_call_args(conv["tools"], conv["messages"])
    report.repaired += repaired
    if problems:
        if strict:
            raise DataError(f"{at}: args violate the schema: {'; '.join(problems)}")
        report.note(at, "args_violate_schema", "; ".join(problems)[:300])
        return None
    conv["meta"] = {"source": source, "row": str(row_id), "category": classify(conv)}
    report.kept += 1
    return conv
