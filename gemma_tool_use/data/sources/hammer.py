"""Hammer (github.com/MadeAgents/Hammer).

* Evaluation files {query, tools, answers}: API-Bank L1/L2 (query = a dialogue: roles user, agent
  = model text, assistant = a call as ```[...]```, tool = its result) and ToolAlpaca (query = one
  request, per-parameter "required" flags). `answers` are the calls of the next model turn.
  API-Bank L2 history calls to a tool missing from the row's list (ToolSearcher, once
  GetUserToken) get that tool's schema from elsewhere in the same file: the tool was evidently
  available. Target calls are never repaired: an unlisted target is unknown_tool. ToolAlpaca's
  OpenAPI "components" pseudo tool is removed.
* masking_sft_data_example.json {instruction, input, output}: the tools and the query are
  [BEGIN OF ...] sections of the instruction; the output is a fenced JSON list of calls.

An empty call list ("[]") becomes the plain-text answer REFUSAL.
"""

from __future__ import annotations

import re
from pathlib import Path

from gemma_tool_use.data.conversations import LoadReport
from gemma_tool_use.data.rows import REFUSAL
from gemma_tool_use.data.sources.common import (
    Dialogue,
    RowError,
    call,
    calls,
    convert_rows,
    loads,
    read_rows,
    result,
    tool_from,
    tool_list,
)

_GENERATE_MARK = re.compile(r"\s*Generate API Request:\s*$")


def _history(query: list, d: Dialogue) -> None:
    for m in query:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise RowError("missing_field", "a query record needs 'role' and text 'content'")
        role, text = m.get("role"), _GENERATE_MARK.sub("", m["content"])
        if role == "user":
            d.user(text)
        elif role == "agent":
            d.model(text)
        elif role == "assistant":
            d.model(calls=calls(text.strip().strip("`").strip(), "history call"))
        elif role == "tool":
            d.results(result(text))
        else:
            raise RowError("missing_field", f"unknown role {role!r}")


def load_eval(
    source: str, paths: list[Path], report: LoadReport, strict: bool = False, *, flags: bool = False
) -> list[dict]:
    rows = read_rows(paths[0])
    catalog = {
        t["name"]: t
        for obj in reversed(rows)
        if isinstance(obj, dict) and isinstance(obj.get("tools"), list)
        for t in obj["tools"]
        if isinstance(t, dict) and isinstance(t.get("name"), str)
    }  # first by name

    def convert(obj):
        if "query" not in obj or not isinstance(obj.get("tools"), list) or not isinstance(obj.get("answers"), list):
            raise RowError("missing_field", "row needs a 'query', and 'tools' and 'answers' lists")
        tools = tool_list(
            [
                t
                for t in obj["tools"]
                if not (isinstance(t, dict) and t.get("name") == "components" and not t.get("parameters"))
            ],
            flags=flags,
        )
        d, query = Dialogue(), obj["query"]
        if isinstance(query, str):
            d.user(query)
        elif isinstance(query, list) and query:
            _history(query, d)
        else:
            raise RowError("empty", "no query")
        listed = {t["name"] for t in tools}
        called = dict.fromkeys(c["name"] for m in d.messages for c in m.get("tool_calls") or [])  # the history's
        tools += [tool_from(catalog[n], flags=flags) for n in called if n not in listed and n in catalog]
        answer = [call(a) for a in obj["answers"]]
        if d.messages[-1].get("tool_calls"):
            d.messages.append({"role": "assistant", "content": "", "tool_calls": answer})
        else:
            d.model(REFUSAL if not answer else "", answer)
        return tools, d.messages

    return convert_rows(rows, convert, source=source, report=report, strict=strict, where=str(paths[0]))


def _section(text: str, name: str) -> str:
    if not (m := re.search(rf"\[BEGIN OF {name}\](.*?)\[END OF {name}\]", text, re.DOTALL)):
        raise RowError("malformed_prompt", f"no '[BEGIN OF {name}] ... [END OF {name}]' section")
    return m.group(1).strip()


def masking_row(obj: dict) -> tuple[list[dict], list[dict]]:
    if not isinstance(obj.get("instruction"), str) or not isinstance(obj.get("output"), str):
        raise RowError("missing_field", "row needs 'instruction' and 'output' text")
    tools = tool_list(_section(obj["instruction"], "AVAILABLE TOOLS"), "tool list")
    query = _section(obj["instruction"], "QUERY")
    if isinstance(obj.get("input"), str) and obj["input"].strip():
        query = f"{query}\n{obj['input'].strip()}"
    answer = loads(re.sub(r"^```(?:json)?\s*|\s*```$", "", obj["output"].strip()), "output")
    if not isinstance(answer, list):
        raise RowError("malformed_json", "output is not a JSON list of calls")
    d = Dialogue()
    d.user(query)
    d.model(REFUSAL if not answer else "", [call(a) for a in answer])
    return tools, d.messages
