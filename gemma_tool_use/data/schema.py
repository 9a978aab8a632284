"""The canonical training row every source loader produces, and its task category.

A row is a canonical conversation (see chat_format) plus provenance:

    {"tools": [...], "messages": [...],
     "meta": {"source": "seal_tools/dev", "row": "17", "category": "multiple"}}

Loaders never raise on a bad upstream row: they call `report.note(where, reason, detail)`
(LoadReport in data/conversations.py) and skip it; `strict=True` turns that into DataError.
"""

from __future__ import annotations

from gemma_tool_use.chat_format import FormatError, validate_conversation
from gemma_tool_use.data.conversations import DataError, LoadReport

CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "multi_turn", "chat")


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
    if "tool" in roles and any(r == "assistant" for r in roles[roles.index("tool"):]) \
            and any(m.get("tool_calls") for m in msgs[roles.index("tool"):]):
        return "multi_turn"
    if roles[first_model + 1:].count("user") > 0 and roles.count("assistant") > 1:
        return "multi_turn"
    calls = msgs[first_model].get("tool_calls") or []
    if not calls:
        return "irrelevance" if conv.get("tools") else "chat"
    if len(calls) == 1:
        return "simple" if len(conv.get("tools") or []) == 1 else "multiple"
    return "parallel" if len({c["name"] for c in calls}) == 1 else "parallel_multiple"


def validate_args(args: dict, params: dict) -> list[str]:
    """Problems of `args` against a tool's JSON Schema parameters (required, types, enums)."""
    problems = []
    props = params.get("properties") or {}
    for req in params.get("required") or []:
        if req not in args:
            problems.append(f"missing required '{req}'")
    kinds = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}
    for k, v in args.items():
        if k not in props:
            if props:
                problems.append(f"unknown argument '{k}'")
            continue
        spec = props[k]
        typ = spec.get("type")
        if isinstance(typ, str) and typ in kinds:
            ok = isinstance(v, kinds[typ]) and not (typ in ("integer", "number") and isinstance(v, bool))
            if not ok:
                problems.append(f"'{k}' should be {typ}, got {type(v).__name__}")
        if spec.get("enum") and v not in spec["enum"]:
            problems.append(f"'{k}'={v!r} not in enum")
    return problems


def _coerce(value, spec: dict):
    """A lossless conversion of a stringified value to the schema's type, or the value unchanged."""
    import ast
    import json

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
                    new = _coerce(v, props[k])
                    if new is not v:
                        c["args"][k] = new
                        repaired += 1
            problems += [f"{c['name']}: {p}" for p in validate_args(c.get("args", {}), params)]
    return repaired, problems


def make_row(tools: list, messages: list, *, source: str, row_id, report: LoadReport, strict: bool = False,
             where: str = "") -> dict | None:
    """Build, validate and tag one canonical row; None (noted in report) if it is unusable."""
    conv = {"tools": tools or [], "messages": messages}
    try:
        validate_conversation(conv)
        if not any(m["role"] == "assistant" for m in messages):
            raise FormatError("no assistant message: nothing to learn")
    except FormatError as e:
        if strict:
            raise DataError(f"{where or source}:{row_id}: {e}") from e
        report.note(f"{where or source}:{row_id}", "invalid_conversation", str(e))
        return None
    # Calls must satisfy their tool's schema: BFCL's checker compares types, so training on
    # '"page": "1"' for an integer parameter teaches the wrong habit. Lossless fixes first.
    repaired, problems = repair_call_args(conv["tools"], conv["messages"])
    report.repaired += repaired
    if problems:
        if strict:
            raise DataError(f"{where or source}:{row_id}: args violate the schema: {'; '.join(problems)}")
        report.note(f"{where or source}:{row_id}", "args_violate_schema", "; ".join(problems)[:300])
        return None
    conv["meta"] = {"source": source, "row": str(row_id), "category": classify(conv)}
    report.kept += 1
    return conv
