"""xLAM function calling: Salesforce/xlam-function-calling-60k (CC-BY-4.0, gated) and
MadeAgents/xlam-irrelevance-7.5k (CC-BY-4.0; the answering tool removed, answers "[]").

A row is {"id", "query", "answers", "tools"}: `answers` a JSON string of [{"name", "arguments"}]
(several = parallel calls), `tools` a JSON string of [{"name", "description", "parameters":
{param: {"type", "description", "default"?}}}] with Python type names ("str", "int, optional",
"List[int]") and defaults written as strings ("20", ""). A parameter not typed "..., optional" is
required, except one with a default that the gold call leaves out (xLAM gives many required
parameters an example value as "default"). A no-call answer becomes the plain text REFUSAL.
"""

from __future__ import annotations

from gemma_tool_use.data.rows import REFUSAL
from gemma_tool_use.data.sources.common import (
    Dialogue,
    RowError,
    call,
    loads,
    tool_list,
)


def _defaulted(raw_tool: dict) -> set[str]:
    params = raw_tool.get("parameters") if isinstance(raw_tool.get("parameters"), dict) else {}
    params = params.get("properties") if isinstance(params.get("properties"), dict) else params
    return {p for p, spec in params.items() if isinstance(spec, dict) and "default" in spec}


def xlam_row_to_conversation(row: dict, *, no_call_reply: str = REFUSAL) -> tuple[list[dict], list[dict]]:
    """One xLAM row: the query, then one model turn of calls, or `no_call_reply` when `answers` is empty."""
    raw = loads(row.get("tools") or "[]", "tools")
    tools = tool_list(raw, unmarked_required=True)
    answers = loads(row.get("answers") or "[]", "answers")
    if not isinstance(answers, list):
        raise RowError("malformed_json", f"'answers' is a JSON {type(answers).__name__}, not a list")
    calls = [call(a) for a in answers]
    for tool, raw_tool in zip(tools, raw):
        defaulted, params = _defaulted(raw_tool), tool["parameters"]
        omitted = {p for c in calls if c["name"] == tool["name"] for p in defaulted - set(c["args"])}
        if omitted & set(params.get("required", ())):
            params["required"] = [r for r in params["required"] if r not in omitted]
    d = Dialogue()
    d.user(row.get("query"))
    d.model("" if calls else no_call_reply, calls)
    return tools, d.messages
