"""Seal-Tools (github.com/fairyshine/Seal-Tools).

* {dev,test_in_domain}.jsonl: {id, query, calling: [{api, parameters}]}; the tools are the called
  ones, looked up by name in tool.jsonl ({api_name, api_description, parameters, required}).
* dataset_for_finetune/{dev,test_in_domain}.json: a prompt "api_list = [...] task_instruction =
  "..."" with 5 candidate tools as Python literals (so "multiple" rows with distractors) and a
  Python-literal call list as the answer; tools go to `tools`, the task to the user turn.

A call whose arguments name an earlier call's output ("API_call_3") cannot be made without it, and
the data holds no results to feed back, so such rows are dropped (dependent_call); independent
calls become one parallel model turn.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any

from gemma_tool_use.data.conversations import DataError, LoadReport
from gemma_tool_use.data.sources.common import (
    RowError,
    call,
    load_file,
    loads,
    read_rows,
    tool_from,
)

log = logging.getLogger(__name__)

_API_REF = re.compile(r"\bAPI_call_\d+\b")
_PROMPT = re.compile(r"api_list = (\[.*\])\s*\ntask_instruction = \"(.*)\"\s*\nOutput:\s*$", re.S)


def _row(tools: list[dict], query: Any, calling: Any) -> tuple[list[dict], list[dict]]:
    if not isinstance(query, str) or not isinstance(calling, list):
        raise RowError("missing_field", "row needs a text query and a list of calls")
    calls = [call(c, name_key="api", args_keys=("parameters",)) for c in calling]
    if not calls:
        raise RowError("empty", "no calls")
    if dependent := next((c for c in calls if _API_REF.search(repr(c["args"]))), None):
        raise RowError("dependent_call", f"'{dependent['name']}' takes an earlier call's output: {dependent['args']}")
    return tools, [
        {"role": "user", "content": query.strip()},
        {"role": "assistant", "content": "", "tool_calls": calls},
    ]


def catalog(path: Path, strict: bool) -> dict[str, dict]:
    """tool.jsonl by tool name. A bad schema only matters to rows that call it (unknown_tool)."""
    tools: dict[str, dict] = {}
    for i, obj in enumerate(read_rows(path)):
        try:
            if isinstance(obj, RowError):
                raise obj
            tool = tool_from(obj, name="api_name", description="api_description")
        except RowError as e:
            if strict:
                raise DataError(f"{path}:{i}: {e.reason}: {e}") from None
            log.warning("%s:%s: %s: %s", path, i, e.reason, e)
            continue
        tools.setdefault(tool["name"], tool)
    return tools


def load_calls(source: str, paths: list[Path], report: LoadReport, strict: bool = False) -> list[dict]:
    """{dev,test_in_domain}.jsonl; paths = [that file, tool.jsonl]."""
    tools = catalog(paths[1], strict)

    def convert(obj):
        names = [c.get("api") for c in obj.get("calling") or [] if isinstance(c, dict)]
        unknown = [n for n in names if n not in tools]
        _, messages = _row([], obj.get("query"), obj.get("calling"))
        if unknown:
            raise RowError("unknown_tool", f"'{unknown[0]}' is not in tool.jsonl")
        return [copy.deepcopy(tools[n]) for n in names], messages

    return load_file(source, paths[0], convert, report, strict)


def finetune_row(obj: dict) -> tuple[list[dict], list[dict]]:
    """dataset_for_finetune/{dev,test_in_domain}.json: {id, conversations: [human prompt, gpt answer]}."""
    turns = {t.get("from"): t.get("value") for t in obj.get("conversations") or [] if isinstance(t, dict)}
    if not isinstance(turns.get("human"), str) or not isinstance(turns.get("gpt"), str):
        raise RowError("missing_field", "row needs a human prompt and a gpt answer")
    m = _PROMPT.search(turns["human"])
    if not m or not isinstance(api_list := loads(m.group(1), "api_list"), list):
        raise RowError("malformed_prompt", "no 'api_list = [...]' / 'task_instruction = \"...\"' in the prompt")
    tools = [tool_from(t, name="api_name", description="api_description") for t in api_list]
    return _row(tools, m.group(2), loads(turns["gpt"], "answer"))
