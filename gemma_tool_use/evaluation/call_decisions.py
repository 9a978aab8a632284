"""Call decisions on held-out tools: does the model call when calls are due, abstain when none fits,
and make as many calls as the request needs?

The prompts are the validation split's rows (tools no training row offers: data/mix.py
split_by_tool) cut before their first model turn; the gold answer is that turn. Scored per prompt
from `stage=predict`'s parsed calls:
    false refusal   calls were due, the model made none (the over-generalised abstention of issue 29)
    false call      no call was due (the gold answer is text), the model called
    count right     as many calls as the gold answer (calls due)
    names right     the same functions as many times, any arguments, any order (calls due): the
                    decision and the choice of tool, apart from how an argument value is written
    exact           the same calls, names and arguments, in any order (calls due)
Rates are over the prompts where they apply, with their counts beside them; counts per gold kind,
per source and how (where the prompts say), and per turn: where in the conversation the decision
falls (the first user turn, a later user turn, or right after a tool result, where the next call of
a chain is due). Issue 29's false refusals sat in the later two.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from gemma_tool_use.utils.files import read_jsonl


def _kind(calls: list) -> str:
    return "no_call" if not calls else "one_call" if len(calls) == 1 else "several_calls"


def decision_prompts(rows: list[dict], limit: int, seed: int = 0) -> list[dict]:
    """Up to `limit` prompts, balanced over the gold kinds (no call, one call, several calls) as far
    as each has rows, in a fixed order (sha256 of seed and row id): {"tools", "messages", "gold"}."""
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        msgs = r["messages"]
        first = next((i for i, m in enumerate(msgs) if m["role"] == "assistant"), None)
        if first is None or not r.get("tools"):
            continue
        gold = msgs[first].get("tool_calls") or []
        row_id = f"{r.get('meta', {}).get('source')}:{r.get('meta', {}).get('row')}"
        key = hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()
        by_kind.setdefault(_kind(gold), []).append(
            (key, {"tools": r["tools"], "messages": msgs[:first], "gold": gold, "id": row_id})
        )
    for group in by_kind.values():
        group.sort(key=lambda kv: kv[0])
    out: list[dict] = []
    while len(out) < limit and any(by_kind.values()):  # round robin over the kinds
        for kind in sorted(by_kind):
            if by_kind[kind] and len(out) < limit:
                out.append(by_kind[kind].pop(0)[1])
    return out


def write_prompts(rows_file: Path, out_file: Path, limit: int, seed: int = 0) -> int:
    """The prompts of a run's val_rows.jsonl as predict input (gold kept beside them); their count."""
    rows = read_jsonl(rows_file)
    prompts = decision_prompts(rows, limit, seed)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts))
    return len(prompts)


def _canon(calls: list) -> Counter:
    return Counter(json.dumps({"name": c.get("name"), "args": c.get("args", {})}, sort_keys=True) for c in calls)


def turn(messages: list[dict]) -> str:
    """Where the model's turn falls: "first_user_turn" (one user message so far, system aside),
    "later_user_turn", or "after_tool_result" (the prompt ends with a tool message)."""
    last = messages[-1]["role"] if messages else None
    if last == "tool":
        return "after_tool_result"
    if last == "user":
        return "first_user_turn" if sum(m["role"] == "user" for m in messages) == 1 else "later_user_turn"
    return f"after_{last}"  # not a prompt our data makes; kept visible rather than folded in


def _names(calls: list) -> Counter:
    return Counter(str(c.get("name")) for c in calls)


def _tally(gold: list, got: list, *counters: Counter) -> None:
    """Count one prompt's decision into each counter."""
    for n in counters:
        n["prompts"] += 1
        if gold:
            n["due"] += 1
            n["false_refusal"] += not got
            n["count_right"] += len(got) == len(gold)
            n["names_right"] += _names(got) == _names(gold)
            n["exact"] += _canon(got) == _canon(gold)
        else:
            n["not_due"] += 1
            n["false_call"] += bool(got)


def _kind_counts(c: Counter, kind: str) -> dict:
    """The counts that apply to prompts of one gold kind (the record's long-standing shape)."""
    keys = ("prompts", "false_call") if kind == "no_call" else ("prompts", "exact", "false_refusal", "names_right")
    return {k: c[k] for k in keys}


# The counts _tally keeps: those of prompts with calls due, and those of prompts with none.
DUE_COUNTS = ("due", "false_refusal", "count_right", "names_right", "exact")
NOT_DUE_COUNTS = ("not_due", "false_call")
GROUP_COUNTS = ("prompts", *DUE_COUNTS, *NOT_DUE_COUNTS)


def _group_counts(c: Counter) -> dict:
    return {k: c[k] for k in GROUP_COUNTS if c[k] or k == "prompts"}


def score(prompts: list[dict], predictions: list[dict]) -> dict:
    """Decision rates of predictions (stage=predict rows: "line", "tool_calls") against the gold
    answers of the prompts (the predict input file's rows, in order). A prompt with no prediction
    row counts as an answer without calls. Counts per gold kind, per turn (from the prompt's
    "messages"), and per prompt "source" and "how" where the prompts say (data/heldout_calls)."""
    return score_lines(list(enumerate(prompts, start=1)), predictions)


def score_lines(prompts: list[tuple[int, dict]], predictions: list[dict]) -> dict:
    """score() of (file line, prompt) pairs: the rows of a file some of whose lines were not predicted."""
    predicted = {int(p["line"]): p.get("tool_calls") or [] for p in predictions if "line" in p}
    n = Counter()
    by_kind: dict[str, Counter] = {}
    by_source: dict[str, Counter] = {}
    by_how: dict[str, Counter] = {}
    by_turn: dict[str, Counter] = {}
    for line, prompt in prompts:
        gold, got = prompt["gold"], predicted.get(line, [])
        groups = [by_kind.setdefault(_kind(gold), Counter())]
        if "messages" in prompt:
            groups.append(by_turn.setdefault(turn(prompt["messages"]), Counter()))
        if "source" in prompt:
            groups.append(by_source.setdefault(str(prompt["source"]), Counter()))
        if "how" in prompt:
            groups.append(by_how.setdefault(f"{_kind(gold)}/{prompt['how']}", Counter()))
        _tally(gold, got, n, *groups)

    def rate(num: str, den: str) -> float | None:
        return round(100.0 * n[num] / n[den], 2) if n[den] else None

    return {
        "prompts": len(prompts),
        "calls_due": n["due"],
        "no_call_due": n["not_due"],
        "false_refusal_rate": rate("false_refusal", "due"),
        "false_call_rate": rate("false_call", "not_due"),
        "count_right_rate": rate("count_right", "due"),
        "exact_rate": rate("exact", "due"),
        "names_right_rate": rate("names_right", "due"),
        "counts": {k: v for k, v in n.items() if k != "prompts"},
        "by_gold_kind": {kind: _kind_counts(c, kind) for kind, c in sorted(by_kind.items())},
        **({"by_source": {k: _group_counts(c) for k, c in sorted(by_source.items())}} if by_source else {}),
        **({"by_how": {k: _group_counts(c) for k, c in sorted(by_how.items())}} if by_how else {}),
        **({"by_turn": {k: _group_counts(c) for k, c in sorted(by_turn.items())}} if by_turn else {}),
    }
