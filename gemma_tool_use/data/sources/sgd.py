"""Schema-Guided Dialogue (SGD, DSTC8; CC BY-SA 4.0) and SGD-X's reworded schemas, as tool-calling
conversations: one row per service call.

Upstream: dialogues (`dialogue_id`, `services`, `turns`: USER / SYSTEM turns with `frames`; a SYSTEM
frame may hold `service_call` {"method", "parameters"} and `service_results`, the rows the service
returned, and the SYSTEM utterance of that turn is what it said after reading them) and a schema per
split (services -> slots, intents with required and optional slots). SGD-X v1-v5 reword every
service, intent and slot (names and descriptions), in the same order as the original schema.

Judgement calls:
  * A row is the stretch of dialogue that leads to one call: from the user turn that opened the
    call's intent (the run of user turns with that intent active) to the system's answer after the
    call's results. When a call argument's value is not in that stretch's text (slots carried over
    from an earlier task, values the system offered), the row starts earlier, at the dialogue's start
    if need be. Each call is its own row; stretches of one dialogue may overlap.
  * Turns: user turns as they are; a system turn without a call is a model turn in words (asking for
    a missing required slot is how SGD teaches "ask, don't call"); a system turn with a call is the
    call, its results (the first RESULTS_KEPT rows) as a tool turn, and the utterance as the answer.
  * Tools: the intents the row calls, half the time one more intent of a called service, half the
    time one intent of another service (an intent's schema is ~200 tokens: rows must fit the cpu
    recipe's 768-token cap). Each intent's properties are its required and optional slots: categorical slots as
    enums (integers when every value is a number, booleans for True/False), the rest strings;
    required slots required; an optional slot's default kept unless it is "dontcare".
  * Call arguments are SGD's canonical values, typed like their property. SGD's dialogues all take
    place on Friday 2019-03-01 ("tomorrow" is 2019-03-02 in every dialogue), so each row's system
    message says so: relative dates are then answerable, not guessed.
  * Names: a dialogue is rendered with the original schema or one of SGD-X's five rewordings (by a
    hash of its id), intent names in snake_case or CamelCase. Never SGD's `<Service>_<n>_<Intent>`
    form: BFCL's live categories name their SGD-derived functions that way.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from gemma_tool_use.data.conversations import DataError, LoadReport
from gemma_tool_use.data.sources.common import Dialogue, RowError, convert_rows
from gemma_tool_use.data.sources.fetch import read_bytes

RESULTS_KEPT = 2
TODAY = "Today is Friday, 2019-03-01."
VARIANTS = 6  # 0: the original schema; 1-5: SGD-X v1-v5


def _hash(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_bytes(path).decode("utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not readable as JSON: {e}") from e


# ------------------------------------------------------------------------------- schemas


def _slot_schema(slot: dict, description: str) -> dict:
    values = slot.get("possible_values") or []
    out: dict = {"description": description}
    if slot.get("is_categorical") and values:
        if all(re.fullmatch(r"-?\d+", v) for v in values):
            out.update(type="integer", enum=[int(v) for v in values])
        elif set(values) <= {"True", "False"}:
            out["type"] = "boolean"
        else:
            out.update(type="string", enum=list(values))
    else:
        out["type"] = "string"
    return out


def typed(value: str, schema: dict) -> Any:
    """A canonical SGD value as the JSON value its property takes."""
    if schema.get("type") == "integer" and re.fullmatch(r"-?\d+", value):
        return int(value)
    if schema.get("type") == "boolean" and value in ("True", "False"):
        return value == "True"
    return value


def intent_tools(original: list[dict], variants: list[list[dict]]) -> dict[tuple[str, str], list[dict]]:
    """(service, intent) -> its tool under each variant (index 0: the original schema), with the
    original slot name of each property under "slot_names" (stripped before use)."""
    out: dict[tuple[str, str], list[dict]] = {}
    for i, service in enumerate(original):
        for v, schema in enumerate([original, *variants]):
            if len(schema) != len(original) or schema[i].get("intents") is None:
                raise DataError(f"SGD-X schema {v} does not follow the original schema's order at service {i}")
            s = schema[i]
            slot_of = {o["name"]: w for o, w in zip(service["slots"], s["slots"], strict=True)}
            for o_intent, intent in zip(service["intents"], s["intents"], strict=True):
                slots = [*o_intent["required_slots"], *o_intent["optional_slots"]]
                props = {slot_of[n]["name"]: _slot_schema(slot_of[n], slot_of[n]["description"]) for n in slots}
                for n, default in o_intent["optional_slots"].items():
                    if default != "dontcare":
                        props[slot_of[n]["name"]]["default"] = typed(default, props[slot_of[n]["name"]])
                tool = {
                    "name": intent["name"],
                    "description": intent["description"].rstrip(".") + ".",
                    "parameters": {
                        "type": "object",
                        "properties": props,
                        "required": [slot_of[n]["name"] for n in o_intent["required_slots"]],
                    },
                    "slot_names": {n: slot_of[n]["name"] for n in slots},
                }
                out.setdefault((service["service_name"], o_intent["name"]), []).append(tool)
    return out


def _named(tool: dict, style: int) -> dict:
    name = snake(tool["name"]) if style == 0 else tool["name"][0].upper() + tool["name"][1:]
    return {"name": name, **{k: v for k, v in tool.items() if k not in ("name", "slot_names")}}


# ------------------------------------------------------------------------------- rows


def _text(turns: list[dict]) -> str:
    return " ".join(t["utterance"] for t in turns).lower()


def _call_frame(turn: dict) -> dict | None:
    return next((f for f in turn["frames"] if "service_call" in f), None)


def _segment_start(turns: list[dict], at: int, frame: dict) -> int:
    """Where the row for the call in turns[at] starts (see the module's judgement calls)."""
    method, start = frame["service_call"]["method"], at
    for i in range(at - 1, -1, -1):
        if turns[i]["speaker"] != "USER":
            continue
        if any(
            f["service"] == frame["service"] and f.get("state", {}).get("active_intent") == method
            for f in turns[i]["frames"]
        ):
            start = i
        elif start < at:
            break
    values = [v.lower() for v in frame["service_call"]["parameters"].values()]
    # A value is grounded when the stretch says it, or a user said it in other words (its surface form).
    surface = {
        c.lower(): [x.lower() for x in a["values"]]
        for t in turns[: at + 1]
        for f in t["frames"]
        for a in f["actions"]
        for c in a.get("canonical_values", [])
    }
    text = _text(turns[start:at])
    if all(v in text or any(s in text for s in surface.get(v, [])) or v in ("true", "false") for v in values):
        return start
    return 0


def segments(dialogue: dict) -> list[dict]:
    """One upstream row per service call: the dialogue's turns from the row's start to the call."""
    turns, out = dialogue.get("turns"), []
    if not isinstance(turns, list):
        return [RowError("missing_field", "a dialogue without turns", row_id=dialogue.get("dialogue_id"))]
    for at, turn in enumerate(turns):
        frame = _call_frame(turn) if turn.get("speaker") == "SYSTEM" else None
        if frame is not None:
            start = _segment_start(turns, at, frame)
            out.append({"id": f"{dialogue['dialogue_id']}:{len(out)}", "turns": turns[start : at + 1]})
    return out


class SgdConverter:
    """convert(row) -> (tools, messages) for the segments of one split, given its tools."""

    def __init__(self, tools: dict[tuple[str, str], list[dict]]):
        self.tools = tools

    def _row_tools(self, row_id: str, called: list[tuple[str, str]]) -> list[tuple[tuple[str, str], dict, dict]]:
        """((service, intent), source tool, named tool) offered in a row, in a seeded order: the called intents,
        half the time one more intent of a called service, and 0-1 intent of another service.
        Few tools: an SGD intent's schema is ~200 tokens, and rows must fit data.max_length."""
        variant, style = _hash("variant", row_id.split(":")[0]) % VARIANTS, _hash("style", row_id) % 2
        services = sorted({s for s, _ in called})
        chosen = list(dict.fromkeys(called))
        siblings = [k for k in self.tools if k[0] in services and k not in chosen]
        if siblings and _hash("sibling", row_id) % 2:
            chosen.append(siblings[_hash("which", row_id) % len(siblings)])
        others = [k for k in self.tools if k[0] not in services]
        if others and _hash("distractor", row_id) % 2:
            chosen.append(others[_hash("other", row_id) % len(others)])
        tools, names = [], set()
        for key in chosen:
            named = _named(self.tools[key][variant], style)
            if named["name"] not in names:
                names.add(named["name"])
                tools.append((key, self.tools[key][variant], named))
        order = sorted(range(len(tools)), key=lambda i: _hash("order", row_id, i))
        return [tools[i] for i in order]

    def __call__(self, row: dict) -> tuple[list[dict], list[dict]]:
        turns = row["turns"]
        called = [
            (f["service"], f["service_call"]["method"]) for t in turns for f in t["frames"] if "service_call" in f
        ]
        tools = self._row_tools(row["id"], called)
        by_key = {key: (source, named) for key, source, named in tools}
        d = Dialogue(TODAY)
        for turn in turns:
            if turn["speaker"] == "USER":
                d.user(turn["utterance"])
                continue
            frame = _call_frame(turn)
            if frame is None:
                d.model(turn["utterance"])
                continue
            key = (frame["service"], frame["service_call"]["method"])
            if key not in by_key:
                raise RowError("unknown_tool", f"a call of {key}, not in the schema")
            source, named = by_key[key]
            props = named["parameters"]["properties"]
            args = {}
            for slot, value in frame["service_call"]["parameters"].items():
                if slot not in source["slot_names"]:
                    raise RowError("missing_field", f"{key[1]} has no slot {slot!r}")
                pname = source["slot_names"][slot]
                args[pname] = typed(value, props[pname])
            d.model("", [{"name": named["name"], "args": args}])
            d.results(frame.get("service_results", [])[:RESULTS_KEPT])
            d.model(turn["utterance"])
        return [named for _, _, named in tools], d.messages


def load_split(source: str, paths: list[Path], report: LoadReport, strict: bool = False) -> list[dict]:
    """Rows of one split. paths: the split's schema, SGD-X v1-v5's schemas of the split, then its
    dialogue files (each may be a .gz copy: fetch.local_file)."""
    schema, variants, dialogue_files = _read_json(paths[0]), [_read_json(p) for p in paths[1:6]], paths[6:]
    convert = SgdConverter(intent_tools(schema, variants))
    rows: list = []
    for path in dialogue_files:
        dialogues = _read_json(path)
        if not isinstance(dialogues, list):
            raise DataError(f"{path}: expected a JSON array of dialogues")
        for dialogue in dialogues:
            if isinstance(dialogue, dict) and isinstance(dialogue.get("dialogue_id"), str):
                rows.extend(segments(dialogue))
            else:
                rows.append(RowError("missing_field", "a dialogue without a dialogue_id", row_id=f"{path.name}"))
    return convert_rows(rows, convert, source=source, report=report, strict=strict, where=source)
