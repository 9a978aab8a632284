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
    conv["meta"] = {"source": source, "row": str(row_id), "category": classify(conv)}
    report.kept += 1
    return conv
