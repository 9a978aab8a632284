"""ToolRL (github.com/qiancheng0/ToolRL): rlla_sft.json ({instruction, input, output}) and
rlla_4k_test.parquet (prompt = [system, user], reward_model.ground_truth = the answer).

The tools are "N. Name / Description / Parameters" entries in the instruction's "**Available
Tools**" section (the rest of that prompt, written for ToolRL's output format, is dropped: our
renderer adds its own), the history <user>/<tool_call>/<obs>/<response> tags, the answer
<think>/<tool_call>/<response> tags. <think> reasoning is dropped: there is no reasoning channel.
"""

from __future__ import annotations

import re

from gemma_tool_use.data.sources.common import (
    Dialogue,
    RowError,
    calls,
    loads,
    result,
    tool_from,
)

_ENTRY = re.compile(r"\d+\. Name: (.*?)\nDescription: (.*?)\nParameters: (.*)", re.S)
_SEGMENT = re.compile(r"<(user|think|tool_call|obs|response)>(.*?)</\1>", re.S)


def _tools(instruction: str) -> list[dict]:
    if "**Available Tools**" not in instruction:
        raise RowError("missing_field", "no '**Available Tools**' section in the instruction")
    section = instruction.split("**Available Tools**", 1)[1].split("**Steps for Each Turn**", 1)[0]
    section = section.split("you can use the following tools:", 1)[-1].strip()
    tools = []
    for entry in filter(None, (e.strip() for e in re.split(r"\n(?=\d+\. Name: )", section))):
        m = _ENTRY.fullmatch(entry)
        if not m:
            raise RowError("malformed_prompt", f"tool entry not 'N. Name/Description/Parameters': {entry[:80]!r}")
        tools.append(
            tool_from(
                {
                    "name": m.group(1).strip(),
                    "description": m.group(2),
                    "parameters": loads(m.group(3).strip(), f"parameters of {m.group(1)!r}"),
                }
            )
        )
    return tools


def _segments(text: str, what: str, *, lenient: bool = False) -> list[tuple[str, str]]:
    parts = _SEGMENT.split(text)  # outside, tag, body, outside, tag, body, ..., outside
    if not lenient and (outside := [p.strip() for p in parts[::3] if p.strip()]):
        raise RowError("malformed_prompt", f"{what}: text outside the tags: {outside[0][:80]!r}")
    return [(tag, body.strip()) for tag, body in zip(parts[1::3], parts[2::3])]


def _calls(body: str) -> list[dict]:  # JSON objects {"name": ..., "parameters": {...}}
    return calls(body, "<tool_call> block", args_keys=("parameters", "arguments"))


def _messages(history: str, output: str) -> list[dict]:
    d = Dialogue()
    for tag, body in _segments(history.split("**Dialogue Records History**", 1)[-1], "dialogue history"):
        if tag == "user":
            d.user(body)
        elif tag == "tool_call":
            d.model(calls=_calls(body))
        elif tag == "obs":  # [{"name": ..., "results": ...}, ...]
            d.results(result(body))
        elif tag == "response":
            d.model(body)
    content, answer = "", []
    for tag, body in _segments(output, "answer", lenient=True):
        if tag == "tool_call":
            answer += _calls(body)
        elif tag == "response":
            content = f"{content}\n{body}".strip()
    if not content and not answer:
        raise RowError("empty", "the answer has neither <tool_call> nor <response>")
    d.messages.append({"role": "assistant", "content": content, **({"tool_calls": answer} if answer else {})})
    return d.messages


def row_to_conversation(obj: dict) -> tuple[list[dict], list[dict]]:
    if "prompt" in obj:  # rlla_4k_test.parquet
        by_role = {m.get("role"): m.get("content") for m in obj.get("prompt") or [] if isinstance(m, dict)}
        texts = by_role.get("system"), by_role.get("user"), (obj.get("reward_model") or {}).get("ground_truth")
    else:
        texts = obj.get("instruction"), obj.get("input"), obj.get("output")
    for field, value in zip(("instruction", "input", "output"), texts):
        if not isinstance(value, str):
            raise RowError("missing_field", f"no {field} text")
    return _tools(texts[0]), _messages(*texts[1:])
