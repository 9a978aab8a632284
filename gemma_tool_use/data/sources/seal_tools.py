"""Seal-Tools (github.com/fairyshine/Seal-Tools).

* {dev,test_in_domain}.jsonl: {id, query, calling: [{api, parameters, responses}]}; the tools are
  the called ones, looked up by name in tool.jsonl ({api_name, api_description, parameters,
  required}, python type names, "choices").
* dataset_for_finetune/{dev,test_in_domain}.json: a prompt "api_list = [...] task_instruction =
  "..."" with 5 candidate tools (Python literals) and a Python-literal call list as the answer:
  "multiple" rows with distractors. The prompt wrapper is taken apart: tools to `tools`, the task
  to the user turn.

A call whose arguments name an earlier call's output ("API_call_3") cannot be made without that
output, and the data holds no results to feed back, so such rows are dropped (dependent_call);
independent calls become one parallel model turn.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any

from gemma_tool_use.data.conversations import DataError, LoadReport
from gemma_tool_use.data.sources.common import RowError, call, convert_rows, load_file, loads, read_rows, tool_from

log = logging.getLogger(__name__)

_API_REF = re.compile(r"\bAPI_call_\d+\b")
_PROMPT = re.compile(r"api_list = (\[.*\])\s*\ntask_instruction = \"(.*)\"\s*\nOutput:\s*$", re.S)


def _tool(t: Any) -> dict:
    return tool_from(t, name="api_name", description="api_description")


def _calls(calling: Any) -> list[dict]:
    if not isinstance(calling, list):
        raise RowError("missing_field", "'calling' is not a list")
    if not calling:
        raise RowError("empty", "no calls")
    calls = []
    for c in calling:
        calls.append(call(c, name_key="api", args_keys=("parameters",)))
        if _API_REF.search(repr(calls[-1]["args"])):
            raise RowError("dependent_call", f"'{calls[-1]['name']}' takes an earlier call's output: {calls[-1]['args']}")
    return calls


def catalog(path: Path, strict: bool) -> dict[str, dict]:
    """tool.jsonl by tool name. A bad schema only matters to rows that call it (unknown_tool)."""
    tools: dict[str, dict] = {}
    for i, obj in enumerate(read_rows(path)):
        try:
            if isinstance(obj, RowError):
                raise obj
            tool = _tool(obj)
        except RowError as e:
            if strict:
                raise DataError(f"{path}:{e.row_id or i}: {e.reason}: {e}") from None
            log.warning("%s:%s: %s: %s", path, e.row_id or i, e.reason, e)
            continue
        tools.setdefault(tool["name"], tool)
    return tools


def load_calls(source: str, paths: list[Path], report: LoadReport, strict: bool = False) -> list[dict]:
    """{dev,test_in_domain}.jsonl; paths = [that file, tool.jsonl]."""
    rows = read_rows(paths[0])
    tools_by_name = catalog(paths[1], strict)

    def convert(obj):
        if "query" not in obj or "calling" not in obj:
            raise RowError("missing_field", "row needs 'query' and 'calling'")
        calls = _calls(obj["calling"])
        unknown = [c["name"] for c in calls if c["name"] not in tools_by_name]
        if unknown:
            raise RowError("unknown_tool", f"'{unknown[0]}' is not in tool.jsonl")
        dialogue = _dialogue(obj["query"], calls)
        return [copy.deepcopy(tools_by_name[c["name"]]) for c in calls], dialogue

    return convert_rows(rows, convert, source=source, report=report, strict=strict, where=str(paths[0]))


def _dialogue(query: Any, calls: list[dict]) -> list[dict]:
    if not isinstance(query, str):
        raise RowError("missing_field", f"the query is a {type(query).__name__}, not text")
    return [{"role": "user", "content": query.strip()}, {"role": "assistant", "content": "", "tool_calls": calls}]


def load_finetune(source: str, paths: list[Path], report: LoadReport, strict: bool = False) -> list[dict]:
    """dataset_for_finetune/{dev,test_in_domain}.json: {id, conversations: [human prompt, gpt answer]}."""

    def convert(obj):
        turns = obj.get("conversations") if isinstance(obj.get("conversations"), list) else []
        human = next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "human"), None)
        answer = next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"), None)
        if not isinstance(human, str) or not isinstance(answer, str):
            raise RowError("missing_field", "row needs a human prompt and a gpt answer")
        m = _PROMPT.search(human)
        if not m:
            raise RowError("malformed_prompt", "no 'api_list = [...]' / 'task_instruction = \"...\"' in the prompt")
        api_list = loads(m.group(1), "api_list")
        if not isinstance(api_list, list):
            raise RowError("malformed_prompt", "api_list is not a list")
        return [_tool(t) for t in api_list], _dialogue(m.group(2), _calls(loads(answer, "answer")))

    return load_file(source, paths[0], convert, report, strict)
