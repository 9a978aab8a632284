"""The one data-source framework: upstream rows -> canonical rows (data/rows.py).

A family module writes `convert(row) -> (tools, messages)` per upstream layout, with `Dialogue`
and `tool_from`; `convert_rows` runs it over the rows, checks each result (`finish`), builds the
canonical row (`make_row`) and accounts for every row: kept, or dropped with one of REASONS, so
kept + dropped == upstream rows (`strict=True`: DataError naming file and row instead).

Judgement calls shared by every source:
  * Text payloads (tool lists, calls, arguments, results) are JSON, else a Python literal (repr()
    output; true/false/null too), never evaluated. A tool result that is neither stays text.
  * Parameters become JSON Schema: loose type names mapped (str -> string, List[int] -> array of
    integer, "int | None" -> integer), descriptions, enums (Seal "choices"), defaults (parsed to
    their type; "" dropped) and examples kept, "unit" appended to the description. `required`
    is written when the source says it (a list, per-parameter flags, "type, optional" markers
    beside unmarked ones), else left out.
  * A tool result answers a not yet answered call of the latest model turn: the one it names, else
    the next; one naming an uncalled tool answers the sole tool called.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import random
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from gemma_tool_use.data.conversations import DataError, LoadReport
from gemma_tool_use.data.rows import coerce, make_row
from gemma_tool_use.utils.files import iter_jsonl

log = logging.getLogger(__name__)

# The drop reasons of every source (LoadReport.dropped keys), besides make_row's invalid_conversation
# and args_violate_schema.
REASONS = {
    "malformed_json": "a payload (JSON, Python literal, Python call text) does not parse",
    "missing_field": "a field or turn the layout needs is absent, of the wrong type or of an unknown kind",
    "malformed_prompt": "prompt, system or turn text the loader cannot take apart (sections, tags)",
    "bad_tool_schema": "a tool without a name, tools that are not a list, two different tools under one name",
    "args_not_object": "call arguments that are not an object",
    "unknown_tool": "a call to a tool the row does not list",
    "dependent_call": "a call that takes an earlier call's output (Seal-Tools)",
    "orphan_tool_response": "a tool result with no call left to answer",
    "tool_response_mismatch": "results that cannot be matched to the calls",
    "empty": "no query or calls, or an empty turn",
    "not_json": "a value JSON cannot carry",
    "malformed_row": "a row that is not an object, or a shape no branch foresaw",
}


class RowError(ValueError):
    """One upstream row cannot be converted; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str, row_id: Any = None):
        assert reason in REASONS, reason
        super().__init__(detail)
        self.reason, self.row_id = reason, row_id


# ------------------------------------------------------------------------------- the loop


def convert_rows(
    rows: Iterable[Any],
    convert: Callable[[dict], tuple[list, list]],
    *,
    source: str,
    report: LoadReport | None = None,
    strict: bool = False,
    where: str | None = None,
) -> list[dict]:
    """Canonical rows of `rows` (upstream objects, or RowErrors for unreadable ones), in order.
    A row's id is its "id" field, else its index; drops are noted as `where:row_id`."""
    report = report if report is not None else LoadReport()
    where = where or source
    out, kept0, dropped0 = [], report.kept, sum(report.dropped.values())
    for index, row in enumerate(rows):
        row_id = row.row_id if isinstance(row, RowError) else row.get("id") if isinstance(row, dict) else None
        row_id = row_id if isinstance(row_id, str | int) and not isinstance(row_id, bool) and row_id != "" else index
        try:
            if isinstance(row, RowError):
                raise row
            if not isinstance(row, dict):
                raise RowError("malformed_row", f"row is a {type(row).__name__}, not an object")
            tools, messages = finish(*convert(row))
        except Exception as e:  # noqa: BLE001 - a row no branch foresaw is a bad row, never a crash
            reason, detail = (
                (e.reason, str(e)) if isinstance(e, RowError) else ("malformed_row", f"{type(e).__name__}: {e}")
            )
            detail = detail if len(detail) <= 300 else detail[:297] + "..."
            if strict:
                raise DataError(f"{where}:{row_id}: {reason}: {detail}") from e
            report.note(f"{where}:{row_id}", reason, detail)
            continue
        conv = make_row(tools, messages, source=source, row_id=row_id, report=report, strict=strict, where=where)
        if conv is not None:
            out.append(conv)
    if dropped := sum(report.dropped.values()) - dropped0:
        log.info("%s: kept %d rows, dropped %d; e.g. %s", where, report.kept - kept0, dropped, report.examples[:2])
    return out


def load_file(source: str, path: Path, convert: Callable, report: LoadReport, strict: bool) -> list[dict]:
    return convert_rows(read_rows(path), convert, source=source, report=report, strict=strict, where=str(path))


def finish(tools: list[dict], messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """The checks every row passes: unique tool names (of two different tools under one name the
    first is kept, unless a call names it), no empty turn, calls to listed tools only, JSON values
    only; trailing user/tool turns no model turn answers are cut."""
    unique: dict[str, dict] = {}
    clashes = {t["name"] for t in tools if unique.setdefault(t["name"], t) != t}
    while messages and messages[-1]["role"] in ("user", "tool"):
        messages = messages[:-1]
    for m in messages:
        if m["role"] == "user" and not m["content"].strip():
            raise RowError("empty", "a user turn is empty")
        if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
            raise RowError("empty", "a model turn has neither text nor calls")
        for c in m.get("tool_calls") or []:
            if c["name"] not in unique:
                raise RowError("unknown_tool", f"call to {c['name']!r}, not among the row's tools {sorted(unique)}")
            if c["name"] in clashes:
                raise RowError("bad_tool_schema", f"a call to {c['name']!r}, the name of two different tools")
    tools = list(unique.values())
    try:
        json.dumps({"tools": tools, "messages": messages}, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise RowError("not_json", f"row holds a value JSON cannot carry: {e}") from None
    return tools, messages


# ------------------------------------------------------------------------------- files


def read_rows(path: Path) -> list:
    """Upstream rows of a file: a JSON array (.json), JSON Lines (.jsonl: an unreadable line is a
    RowError row, id "line<N>"), or parquet."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix == ".jsonl":
        return [
            RowError("malformed_json", f"line {n}: {error}", row_id=f"line{n}") if error else value
            for n, value, error in iter_jsonl(path)
        ]
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        data = json.loads(path.read_text(encoding="utf-8"))
    except Exception as e:  # JSON errors, pyarrow's ArrowInvalid/OSError family
        raise DataError(f"{path}: not readable as {path.suffix[1:]}: {e}") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of rows, got a JSON {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------- payloads


class _JsonNames(ast.NodeTransformer):
    """true/false/null as constants, sets as lists (in source order): what JSON means by them."""

    def visit_Name(self, node):
        value = {"true": True, "false": False, "null": None, "none": None}.get(node.id.lower(), node)
        return node if value is node else ast.Constant(value)

    def visit_Set(self, node):
        return ast.List([self.visit(e) for e in node.elts], ast.Load())


def parse_literal(text: str) -> Any:
    """A JSON value from text: JSON, else a Python literal (ast.literal_eval: nothing is evaluated)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        pass
    try:
        value = ast.literal_eval(_JsonNames().visit(ast.parse(text.strip(), mode="eval")))
        return json.loads(json.dumps(value, allow_nan=False))  # tuples -> lists; bytes, nan refused
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError) as e:
        raise ValueError(f"not JSON nor a literal: {e}") from None


def loads(text: Any, what: str) -> Any:
    """`text` parsed (parse_literal), or JSON values written one after another ("{...}\\n{...}") as a
    list; a value that is not text is returned as is."""
    if not isinstance(text, str):
        return text
    try:
        return parse_literal(text)
    except ValueError:
        pass
    decoder, values, pos = json.JSONDecoder(), [], 0
    while (pos := len(text) - len(text[pos:].lstrip(" \t\r\n,"))) < len(text):
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            raise RowError("malformed_json", f"{what} is neither JSON nor a literal: {text[:120]!r}") from None
        values.append(value)
    return values


def call(obj: Any, *, name_key: str = "name", args_keys: tuple[str, ...] = ("arguments",)) -> dict:
    """A canonical call from {name, arguments}; arguments may be text holding an object."""
    if not isinstance(obj, dict):
        raise RowError("malformed_json", f"a call is a {type(obj).__name__}, not an object: {obj!r:.80}")
    name = obj.get(name_key)
    if not isinstance(name, str) or not name.strip():
        raise RowError("missing_field", f"a call has no '{name_key}'")
    args = next((obj[k] for k in args_keys if k in obj), None)
    if isinstance(args, str):
        try:
            args = parse_literal(args) if args.strip() else {}
        except ValueError:
            raise RowError(
                "args_not_object", f"arguments of {name!r} are text that does not parse: {args!r:.80}"
            ) from None
    if not isinstance(args, dict | None):
        raise RowError("args_not_object", f"arguments of {name!r} are a {type(args).__name__}")
    return {"name": name, "args": args or {}}


def calls(value: Any, what: str, **call_kw) -> list[dict]:
    """Canonical calls from one call or a list of them (or text holding either); none: RowError."""
    value = loads(value, what)
    values = value if isinstance(value, list) else [value]
    if not values:
        raise RowError("empty", f"an empty {what}")
    return [call(v, **call_kw) for v in values]


def result(value: Any) -> Any:
    """A tool result: parsed if it parses (parse_literal), else the text itself."""
    try:
        return parse_literal(value) if isinstance(value, str) else value
    except ValueError:
        return value.strip()


def sharegpt_turns(obj: dict, key: str = "conversations") -> list[tuple[Any, str]]:
    """(speaker, text) of each ShareGPT turn {"from", "value"} under `key` (a list, or text holding one)."""
    turns = loads(obj.get(key), key)
    if not isinstance(turns, list) or not turns:
        raise RowError("empty" if turns == [] else "missing_field", f"no {key!r} list, or an empty one")
    if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns):
        raise RowError("missing_field", "a turn is not {'from', 'value': str}")
    return [(t.get("from"), t["value"]) for t in turns]


class Dialogue:
    """Canonical messages built turn by turn. `pending`: calls of the latest model turn that no
    tool result has answered yet."""

    def __init__(self, system: Any = ""):
        system = system.strip() if isinstance(system, str) else ""
        self.messages, self.pending = [{"role": "system", "content": system}] if system else [], []

    def user(self, text: Any) -> None:
        if not isinstance(text, str):
            raise RowError("missing_field", f"user text is a {type(text).__name__}, not a string")
        self.messages.append({"role": "user", "content": text.strip()})
        self.pending = []

    def model(self, text: str = "", calls: list[dict] | None = None) -> None:
        """A model turn, merged into a directly preceding model turn that has no calls yet
        (upstream often splits a turn's text and the calls it announces into two records)."""
        text = (text or "").strip()
        last = self.messages[-1] if self.messages else {}
        if last.get("role") == "assistant" and not last.get("tool_calls"):
            last["content"] = f"{last['content']}\n{text}".strip()
        else:
            last = {"role": "assistant", "content": text}
            self.messages.append(last)
        if calls:
            last["tool_calls"] = calls
        self.pending = list(calls or [])

    def results(self, value: Any, content_keys: tuple[str, ...] = ("results", "content")) -> None:
        """Tool messages from one upstream result record: {"name", <content key>} or a list of
        {"name"?, <content key>}, else a bare result (one per pending call when a list of as
        many, else for the sole call)."""
        items = value if isinstance(value, list) else [value]
        if items and all(
            isinstance(v, dict)
            and any(k in v for k in content_keys)
            and (isinstance(value, list) or isinstance(v.get("name"), str))
            for v in items
        ):
            pairs = [(v.get("name"), result(next(v[k] for k in content_keys if k in v))) for v in items]
        elif len(self.pending) <= 1:
            pairs = [(None, value)]
        elif len(items) == len(self.pending):
            pairs = [(None, v) for v in items]
        else:
            raise RowError("tool_response_mismatch", f"one result record for {len(self.pending)} calls")
        for name, content in pairs:
            names = [c["name"] for c in self.pending]
            i = (
                names.index(name)
                if name in names
                else 0
                if names and (not isinstance(name, str) or len(set(names)) == 1)
                else None
            )
            if i is None:
                raise RowError("orphan_tool_response", f"a tool result ({name!r:.60}) that answers no pending call")
            self.messages.append({"role": "tool", "name": self.pending.pop(i)["name"], "content": content})


# ------------------------------------------------------------------------------- JSON Schema

_TYPE_NAMES = {
    **dict.fromkeys(
        (
            "str",
            "string",
            "text",
            "char",
            "date",
            "time",
            "datetime",
            "date-time",
            "email",
            "url",
            "uri",
            "uuid",
            "path",
        ),
        "string",
    ),
    **dict.fromkeys(("int", "integer", "long"), "integer"),
    **dict.fromkeys(("float", "number", "double", "decimal"), "number"),
    **dict.fromkeys(("bool", "boolean"), "boolean"),
    **dict.fromkeys(("none", "null", "nonetype"), "null"),
    **dict.fromkeys(("list", "array", "tuple", "set", "frozenset", "sequence", "iterable"), "array"),
    **dict.fromkeys(("dict", "object", "mapping", "map", "hashmap", "json"), "object"),
}
_PASS_KEYS = (
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "additionalProperties",
    "const",
)


def split_top(text: str, sep: str, *, strict: bool = False) -> list[str]:
    """Split at `sep` outside brackets and quoted strings. Unbalanced text: ValueError when
    `strict`, else no split."""
    parts, depth, quote, escaped, start = [], 0, None, False, 0
    for i, ch in enumerate(text):
        if quote:
            escaped, quote = not escaped and ch == "\\", None if ch == quote and not escaped else quote
            continue
        quote = ch if ch in "\"'" else None
        depth += (ch in "[({") - (ch in "])}")
        if depth < 0:
            break
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth or quote:
        if strict:
            raise ValueError(f"unbalanced brackets or quotes in {text[:80]!r}")
        return [text]
    return parts + [text[start:]]


def type_schema(type_name: Any) -> tuple[dict, bool]:
    """(JSON Schema, marked optional) for an upstream type: a JSON Schema type name or list of
    them, or a Python-ish name ("str", "List[int]", "Union[int, float]", "int | None",
    "str, optional", "Dict[str, Any]"). Unknown names give {} (any value)."""
    if isinstance(type_name, list):
        names = [type_schema(x)[0].get("type") for x in type_name]
        names = list(dict.fromkeys(n for n in names if isinstance(n, str)))
        return ({"type": names if len(names) > 1 else names[0]} if names else {}), False
    if not isinstance(type_name, str):
        return {}, False
    s = re.sub(r"[,\s]*\boptional\s*$", "", type_name.strip(), flags=re.IGNORECASE).strip()
    optional = s != type_name.strip()
    for parts in (split_top(s, "|"), split_top(s, ","), re.split(r"\s+or\s+", s)):
        if len(parts) > 1:  # "int | None", "int, float", "int or float"
            return _union(parts), optional
    m = re.fullmatch(r"([A-Za-z_][\w.\-]*)\s*(?:[\[(](.*)[\])])?", s, flags=re.DOTALL)  # List[int], list(str)
    if not m:
        return {}, optional
    base, inner = m.group(1).lower().rsplit(".", 1)[-1], m.group(2)
    if base == "optional" and inner:
        return type_schema(inner)[0], True
    if base == "union" and inner:
        return _union(split_top(inner, ",")), optional
    out = {"type": _TYPE_NAMES[base]} if base in _TYPE_NAMES else {}
    if out.get("type") == "array":
        items = [type_schema(p)[0] for p in split_top(inner or "", ",") if p.strip() not in ("", "...")]
        if items and all(it and it == items[0] for it in items):
            out["items"] = items[0]
    return out, optional


def _union(parts: list[str]) -> dict:
    schemas = [s for s in (type_schema(p)[0] for p in parts if p.strip()) if s.get("type") != "null"]
    if not schemas or any(not isinstance(s.get("type"), str) for s in schemas):
        return {}
    types = list(dict.fromkeys(s["type"] for s in schemas))
    if set(types) == {"integer", "number"}:
        return {"type": "number"}
    return schemas[0] if len(types) == 1 else {"type": types}


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def param_schema(spec: Any, pname: str) -> tuple[dict, bool, bool]:
    """(JSON Schema of one parameter, marked optional, flagged required) from an upstream spec."""
    if not isinstance(spec, dict):
        raise RowError("bad_tool_schema", f"parameter '{pname}' is described by a {type(spec).__name__}")
    out, optional = type_schema(spec.get("type"))
    optional = optional or spec.get("optional") is True
    desc = _text(spec.get("description"))
    if spec.get("type") is not None and not out and str(spec["type"]).strip().lower() not in ("any", "typing.any"):
        desc = f"{desc} (type: {spec['type']})".strip()  # keep what the source said rather than guess
    if isinstance(spec.get("unit"), str) and spec["unit"]:
        desc = f"{desc} (unit: {spec['unit']})".strip()
    if desc:
        out["description"] = desc
    enum = spec.get("enum", spec.get("choices"))
    if isinstance(enum, list) and enum:
        out["enum"] = enum
    default = coerce(spec.get("default"), out)  # "" and a "None" for a non-string type: no default
    if not (
        default is None
        or isinstance(default, str)
        and (
            not default.strip()
            or out.get("type") not in (None, "string")
            and default.strip().lower() in ("none", "null")
        )
    ):
        out["default"] = default
    for key in ("examples", "example", "example_values"):
        if spec.get(key) not in ("", None, []):
            out["examples"] = spec[key] if isinstance(spec[key], list) else [spec[key]]
            break
    if isinstance(spec.get("items"), dict):
        out["items"] = param_schema(spec["items"], f"{pname}[]")[0]
    if isinstance(spec.get("properties"), dict):
        out["properties"] = {k: param_schema(v, f"{pname}.{k}")[0] for k, v in spec["properties"].items()}
        if isinstance(spec.get("required"), list):
            out["required"] = [r for r in spec["required"] if r in out["properties"]]
    out.update((k, spec[k]) for k in _PASS_KEYS if k in spec)
    return out, optional, spec.get("required") is True


def params_schema(params: Any, required: Any = None, *, flags: bool = False, unmarked_required: bool = False) -> dict:
    """A tool's parameters as a JSON Schema object, whatever the layout: JSON Schema (type object
    or dict), or a map name -> {type, description, ...}. `required`: a list given beside the
    parameters; `flags`: parameters say "required": true one by one (ToolAlpaca);
    `unmarked_required`: in a map, every parameter not typed "..., optional" is required (xLAM)."""
    is_schema = isinstance(params, dict) and (
        isinstance(params.get("type"), str)
        and params["type"].lower() in ("object", "dict")
        or isinstance(params.get("properties"), dict)
        and set(params) <= {"type", "properties", "required", "description", "additionalProperties", "title"}
    )
    if params in (None, {}, []):
        props_in, req_in = {}, None
    elif is_schema:
        props_in, req_in = params.get("properties") or {}, params.get("required")
    elif isinstance(params, dict):
        props_in, req_in = params, None
    else:
        raise RowError("bad_tool_schema", f"parameters are a {type(params).__name__}")
    if not isinstance(props_in, dict):
        raise RowError("bad_tool_schema", f"properties are a {type(props_in).__name__}")
    props, flagged, unmarked, any_optional = {}, [], [], False
    for pname, spec in props_in.items():
        props[str(pname)], optional, flag = param_schema(spec, str(pname))
        any_optional |= optional
        flagged += [str(pname)] * flag
        unmarked += [str(pname)] * (not optional)
    schema: dict = {"type": "object", "properties": props}
    explicit = req_in if isinstance(req_in, list) else required if isinstance(required, list) else None
    if explicit is not None:
        schema["required"] = [r for r in explicit if isinstance(r, str) and r in props]
    elif flags or flagged:
        schema["required"] = flagged
    elif not is_schema and (unmarked_required or any_optional):
        schema["required"] = unmarked  # "str, optional" beside unmarked (required) parameters
    return schema


def tool_from(t: Any, *, name: str = "name", description: str = "description", **schema_kw) -> dict:
    """A canonical tool from {name, description, parameters, required?}, or the OpenAI form
    {"type": "function", "function": {...}}."""
    if not isinstance(t, dict):
        raise RowError("bad_tool_schema", f"a tool is a {type(t).__name__}: {t!r:.80}")
    t = t["function"] if isinstance(t.get("function"), dict) else t
    if not isinstance(t.get(name), str) or not t[name].strip():
        raise RowError("bad_tool_schema", f"a tool has no name ({t.get(name)!r:.60})")
    return {
        "name": t[name],
        "description": _text(t.get(description)),
        "parameters": params_schema(t.get("parameters"), t.get("required"), **schema_kw),
    }


def tool_list(value: Any, what: str = "tools", **tool_kw) -> list[dict]:
    """Canonical tools from a list (or text holding one); absent/empty -> []."""
    value = (loads(value, what) if value.strip() else None) if isinstance(value, str) else value
    if value is None:
        return []
    if not isinstance(value, list):
        raise RowError("bad_tool_schema", f"{what} are a {type(value).__name__}, not a list")
    return [tool_from(t, **tool_kw) for t in value]


# ------------------------------------------------------------------------------- seeded choices


class Draw:
    """Deterministic choices from the sha256 of a key, stable across runs and Python versions:
    only random.Random's seeding and random() are promised not to change (its sample/shuffle
    are not), so the choices are made here from random() alone."""

    def __init__(self, *key: str):
        self._rng = random.Random(int.from_bytes(hashlib.sha256("\x1f".join(key).encode("utf-8")).digest(), "big"))

    def unit(self) -> float:
        """A number in [0, 1)."""
        return self._rng.random()

    def below(self, n: int) -> int:
        return int(self.unit() * n)

    def sample(self, items: Sequence, k: int) -> list:
        """min(k, len(items)) distinct items, in the order drawn."""
        n = len(items)
        if n > 4 * k:  # a few picks from a long pool: redraw a repeat rather than copy the pool
            picked: list[int] = []
            while len(picked) < k:
                if (j := self.below(n)) not in picked:
                    picked.append(j)
            return [items[j] for j in picked]
        pool, out = list(items), []
        for _ in range(min(k, n)):
            out.append(pool.pop(self.below(len(pool))))
        return out

    def shuffled(self, items: Sequence) -> list:
        return self.sample(items, len(items))


# ------------------------------------------------------------------------------- files
