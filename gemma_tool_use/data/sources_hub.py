"""Loaders for four Hugging Face tool-calling datasets, converted to canonical training rows.

Sources (upstream row layouts, as published):

* ``Salesforce/xlam-function-calling-60k`` (CC-BY-4.0, gated: accept the terms on the hub and set
  ``HF_TOKEN``). One JSON array, ``xlam_function_calling_60k.json``; a row is
  ``{"id": int, "query": str, "answers": str, "tools": str}`` where ``answers`` is a JSON string of
  ``[{"name", "arguments": {...}}]`` (several entries = parallel calls) and ``tools`` a JSON string
  of ``[{"name", "description", "parameters": {param: {"type", "description", "default"?}}}]``
  with Python-ish type names (``"str"``, ``"int, optional"``, ``"List[int]"``, ...) and defaults
  written as strings (``"20"``, ``""``).
* ``MadeAgents/xlam-irrelevance-7.5k`` (CC-BY-4.0). ``xlam-7.5k-irrelevancek.json``, the xLAM
  layout with the answering tool removed from ``tools`` and ``answers`` = ``"[]"``.
* ``Team-ACE/ToolACE`` (Apache-2.0). ``data.json``; a row is ``{"system": str, "conversations":
  [{"from": "user"|"assistant"|"tool", "value": str}]}``. The tool list is a JSON array inside the
  system prompt (after "Here is a list of functions in JSON format that you can invoke:"), with
  ``"parameters": {"type": "dict", "properties": ..., "required": [...]}``. Assistant calls are
  Python-call text, ``[Get Weather(city="Paris"), f(a=1)]`` (names may contain spaces), tool turns
  a JSON list ``[{"name": ..., "results": {...}}]``.
* ``NousResearch/hermes-function-calling-v1`` (Apache-2.0), function-calling configs
  ``func_calling_singleturn``, ``func_calling``, ``glaive_func_calling``. ShareGPT rows ``{"id",
  "conversations": [{"from": "system"|"human"|"gpt"|"tool", "value"}], "tools": <JSON string>,
  "category", "subcategory", "task"}``; the system prompt repeats the tools inside
  ``<tools>...</tools>``; gpt turns hold ``<tool_call>{"name", "arguments"}</tool_call>`` blocks
  (some rows write them as Python dict literals), tool turns ``<tool_response>{"name", "content"}
  </tool_response>`` blocks. The ``json_mode_*`` configs carry no tool calls and are not supported.

Row converters (``*_row_to_conversation``) are pure functions of one upstream row returning
``(tools, messages)`` in the canonical schema (see chat_format), usable with ``Dataset.map`` or plain
iteration; they raise ConversionError (a ValueError) with a specific ``reason``. Loaders build rows
with schema.make_row, note and skip bad rows in a LoadReport, or raise DataError in strict mode.
Python-literal text is parsed with ``ast`` node walking, never ``eval``.

Judgement calls: upstream system prompts are dropped where they only describe the tools and the
call format (our renderer adds its own), other system text is kept; a no-call answer with no text
upstream (xLAM irrelevance) gets a fixed plain-text reply, NO_CALL_REPLY; trailing user/tool turns
that no assistant turn answers are dropped (nothing to learn from them); a call to a tool the row
does not list, two different tools under one name, or text after a Hermes <tool_call> block make
the row unusable.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from gemma_tool_use.data.conversations import DataError, LoadReport
from gemma_tool_use.data.schema import make_row

log = logging.getLogger(__name__)

XLAM_ID = "Salesforce/xlam-function-calling-60k"
XLAM_IRRELEVANCE_ID = "MadeAgents/xlam-irrelevance-7.5k"
TOOLACE_ID = "Team-ACE/ToolACE"
HERMES_ID = "NousResearch/hermes-function-calling-v1"

HERMES_FUNCTION_CONFIGS = ("func_calling_singleturn", "func_calling", "glaive_func_calling")

# The assistant reply for a no-call row whose upstream answer has no text (xLAM irrelevance).
NO_CALL_REPLY = "None of the available tools can help with this request."


class ConversionError(ValueError):
    """One upstream row cannot be converted; ``reason`` is a short key counted by LoadReport."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class HubLoadError(DataError):
    """A dataset could not be loaded from the Hugging Face hub (unreachable, gated, bad revision)."""


# =============================================================================== type mapping

_SCALAR_TYPES = {
    "str": "string", "string": "string", "text": "string", "char": "string",
    "date": "string", "time": "string", "datetime": "string", "date-time": "string",
    "email": "string", "url": "string", "uri": "string", "uuid": "string", "path": "string",
    "int": "integer", "integer": "integer", "long": "integer",
    "float": "number", "number": "number", "double": "number", "decimal": "number",
    "bool": "boolean", "boolean": "boolean",
    "none": "null", "null": "null", "nonetype": "null",
}
_ARRAY_TYPES = {"list", "array", "tuple", "set", "frozenset", "sequence", "iterable"}
_OBJECT_TYPES = {"dict", "object", "mapping", "map", "json"}


def _top_level(text: str, stops: str, start: int = 0):
    """Indices of `stops` chars outside brackets and quoted strings, from `start` on. A
    closing bracket in `stops` is reported at depth 0, i.e. when it closes the text's own
    level (how a call's closing parenthesis is found)."""
    depth, quote, i = 0, None, start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in stops and depth == 0:
            yield i
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        i += 1


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside brackets and quotes."""
    cuts = [-1, *_top_level(text, sep), len(text)]
    return [text[a + 1:b] for a, b in zip(cuts, cuts[1:])]


def _scan_to(text: str, start: int, stop: str) -> int:
    """Index of the first `stop` char at depth 0 from `start`, skipping quoted strings; -1 if none."""
    return next(_top_level(text, stop, start), -1)


def python_type_to_schema(type_name: str) -> dict:
    """JSON Schema for a Python-ish type name ("str", "List[int]", "Union[int, float]",
    "str, optional", "Dict[str, Any]"). Unknown names give {} (any value)."""
    s = re.sub(r"[,\s]*\boptional\s*$", "", str(type_name).strip(), flags=re.IGNORECASE).strip()
    for parts in (_split_top(s, "|"), _split_top(s, ","), re.split(r"\s+or\s+", s)):
        if len(parts) > 1:  # "int | None", "int, float", "int or float"
            return _union_schema(parts)
    m = re.fullmatch(r"([A-Za-z_][\w.\-]*)\s*(?:\[(.*)\])?", s, flags=re.DOTALL)
    if not m:
        return {}
    base, inner = m.group(1).lower().rsplit(".", 1)[-1], m.group(2)
    if base == "optional" and inner:
        return python_type_to_schema(inner)
    if base == "union" and inner:
        return _union_schema(_split_top(inner))
    if base in _SCALAR_TYPES:
        return {"type": _SCALAR_TYPES[base]}
    if base in _ARRAY_TYPES:
        out: dict = {"type": "array"}
        items = [python_type_to_schema(p) for p in _split_top(inner or "") if p.strip() not in ("", "...")]
        if items and all(it and it == items[0] for it in items):
            out["items"] = items[0]
        return out
    if base in _OBJECT_TYPES:
        return {"type": "object"}
    return {}


def _union_schema(parts: Sequence[str]) -> dict:
    schemas = [python_type_to_schema(p) for p in parts if p.strip()]
    schemas = [s for s in schemas if s.get("type") != "null"]
    if not schemas or any(not s or not isinstance(s.get("type"), str) for s in schemas):
        return {}
    types = list(dict.fromkeys(s["type"] for s in schemas))
    if set(types) == {"integer", "number"}:
        return {"type": "number"}
    return schemas[0] if len(types) == 1 else {"type": types}


def normalize_schema(schema: Any) -> dict:
    """A JSON-Schema-ish parameter schema (ToolACE's "dict"/"float" types, Hermes' OpenAI schemas)
    with type names mapped to JSON Schema; other keywords are kept."""
    if not isinstance(schema, dict):
        return {}
    out = dict(schema)
    t = out.get("type")
    if isinstance(t, str):
        mapped = python_type_to_schema(t)
        if "type" in mapped:
            out["type"] = mapped["type"]
            if "items" in mapped and "items" not in out:
                out["items"] = mapped["items"]
        else:
            del out["type"]
    elif isinstance(t, list):
        names = [python_type_to_schema(x).get("type") for x in t if isinstance(x, str)]
        names = list(dict.fromkeys(n for n in names if isinstance(n, str)))
        if names:
            out["type"] = names if len(names) > 1 else names[0]
        else:
            del out["type"]
    elif t is not None:
        del out["type"]
    if isinstance(out.get("properties"), dict):
        out["properties"] = {str(k): normalize_schema(v) for k, v in out["properties"].items()}
    elif "properties" in out:
        del out["properties"]
    if "items" in out:
        out["items"] = normalize_schema(out["items"]) if isinstance(out["items"], dict) else {}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = normalize_schema(out["additionalProperties"])
    req = out.get("required")
    if "required" in out and not (isinstance(req, list) and all(isinstance(r, str) for r in req)):
        del out["required"]  # ToolACE writes "required": null
    return out


def _parameters_object(schema: Any) -> dict:
    """Top-level tool parameters: always an object schema with properties."""
    out = normalize_schema(schema) if isinstance(schema, dict) else {}
    out["type"] = "object"
    out.setdefault("properties", {})
    return out


# =============================================================================== literals


_NAME_LITERALS = {"true": True, "false": False, "null": None, "none": None}


def _node_value(node: ast.AST) -> Any:
    """The JSON value of a literal expression node; anything else is refused (no evaluation)."""
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, (str, bool, int)) or v is None:
            return v
        if isinstance(v, float) and math.isfinite(v):
            return v
        raise ValueError(f"unsupported literal {v!r:.60}")
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_node_value(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values):
            if k is None:
                raise ValueError("'**' unpacking is not a literal")
            key = _node_value(k)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise ValueError(f"unsupported dict key {key!r:.60}")
            out[key if isinstance(key, str) else json.dumps(key)] = _node_value(v)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _node_value(node.operand)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Name) and node.id.lower() in _NAME_LITERALS:
        return _NAME_LITERALS[node.id.lower()]
    raise ValueError(f"not a literal: {ast.dump(node)[:80]}")


def parse_python_literal(text: str) -> Any:
    """A Python (or JSON) literal from text, by walking the syntax tree: never evaluates code."""
    try:
        return _node_value(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, RecursionError, MemoryError, TypeError) as e:
        raise ValueError(f"not a literal: {e}") from None


def _loads(text: Any, what: str, reason: str = "bad_json") -> Any:
    """JSON, else a Python literal (Hermes and ToolACE rows mix both)."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        pass
    try:
        return parse_python_literal(text)
    except ValueError:
        raise ConversionError(reason, f"{what} is neither JSON nor a literal: {text[:120]!r}") from None


def parse_python_calls(text: str) -> list[dict]:
    """ToolACE's call text, ``[f(a=1, b="x"), Get Weather(city='Paris')]``, as canonical calls.
    Names are taken verbatim (they may contain spaces); arguments must be keyword literals."""
    s = text.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    calls, i = [], 0
    while True:
        while i < len(s) and (s[i].isspace() or s[i] == ","):
            i += 1
        if i >= len(s):
            break
        open_at = s.find("(", i)
        if open_at == -1:
            raise ConversionError("bad_call", f"expected 'name(...)' at {s[i:i + 60]!r}")
        name = s[i:open_at].strip()
        if not name or any(c in name for c in "\"'[]{}()=,:"):
            raise ConversionError("bad_call", f"bad function name {name!r:.60}")
        close_at = _scan_to(s, open_at + 1, ")")
        if close_at == -1:
            raise ConversionError("bad_call", f"unbalanced parentheses in call to {name!r}")
        calls.append({"name": name, "args": _parse_kwargs(s[open_at + 1:close_at], name)})
        i = close_at + 1
        while i < len(s) and s[i].isspace():
            i += 1
        if i < len(s) and s[i] != ",":
            raise ConversionError("bad_call", f"unexpected text after call to {name!r}: {s[i:i + 40]!r}")
    if not calls:
        raise ConversionError("bad_call", "empty call list")
    return calls


def _parse_kwargs(text: str, name: str) -> dict:
    args: dict = {}
    for part in _split_top(text):
        if not part.strip():
            continue
        eq = _scan_to(part, 0, "=")
        if eq <= 0:
            raise ConversionError("bad_call", f"{name}: positional or malformed argument {part.strip()[:60]!r}")
        key = part[:eq].strip().strip("\"'")
        if not key:
            raise ConversionError("bad_call", f"{name}: empty argument name")
        if key in args:
            raise ConversionError("bad_call", f"{name}: argument {key!r} given twice")
        try:
            args[key] = parse_python_literal(part[eq + 1:])
        except ValueError:
            raise ConversionError("bad_call", f"{name}: argument {key!r} is not a literal: "
                                              f"{part[eq + 1:].strip()[:60]!r}") from None
    return args


# =============================================================================== shared checks


def _tool(name: Any, description: Any, parameters: dict) -> dict:
    if not isinstance(name, str) or not name.strip():
        raise ConversionError("bad_tools", f"tool without a name: {name!r:.60}")
    return {"name": name, "description": description if isinstance(description, str) else "",
            "parameters": parameters}


def _finish(tools: list[dict], messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """Shared row checks: tool names unique (exact duplicates merged), every call names a listed
    tool, JSON-serialisable values; trailing turns no assistant answers are dropped."""
    unique: dict[str, dict] = {}
    for t in tools:
        if t["name"] in unique and unique[t["name"]] != t:
            raise ConversionError("duplicate_tool", f"two different tools named {t['name']!r}")
        unique[t["name"]] = t
    tools = list(unique.values())
    for m in messages:
        for c in m.get("tool_calls") or []:
            if c["name"] not in unique:
                raise ConversionError("unknown_tool", f"call to {c['name']!r}, which the row's tools do not list")
    while messages and messages[-1]["role"] in ("user", "tool"):
        messages = messages[:-1]
    try:
        json.dumps({"tools": tools, "messages": messages}, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConversionError("non_json_value", str(e)) from None
    return tools, messages


def _tool_message(name: str, content: Any, calls: list[dict] | None) -> dict:
    """A tool result answering one of `calls` (the latest assistant turn's calls)."""
    if not calls:
        raise ConversionError("orphan_tool_response", f"a tool response ({name!r:.60}) that answers no call")
    called = {c["name"] for c in calls}
    if name not in called:
        if len(called) != 1:
            raise ConversionError("orphan_tool_response", f"a response from {name!r:.60}, which was not called")
        name = next(iter(called))
    return {"role": "tool", "name": name, "content": content}


# =============================================================================== xLAM


def _xlam_tools(raw: Any) -> tuple[list[dict], dict[str, set]]:
    """xLAM tools as canonical tools, and for each tool the parameters that have a default."""
    tools_list = _loads(raw, "tools")
    if not isinstance(tools_list, list):
        raise ConversionError("bad_tools", f"'tools' is a JSON {type(tools_list).__name__}, not a list")
    tools, defaults = [], {}
    for t in tools_list:
        if not isinstance(t, dict):
            raise ConversionError("bad_tools", f"tool is not an object: {t!r:.80}")
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise ConversionError("bad_tools", f"{t.get('name')!r}: parameters are not an object")
        if params.get("type") == "object" and isinstance(params.get("properties"), dict):
            schema = _parameters_object(params)  # already JSON Schema
            has_default = {p for p, s in schema["properties"].items() if isinstance(s, dict) and "default" in s}
        else:
            schema, has_default = _xlam_parameters(params, t.get("name"))
        tool = _tool(t.get("name"), t.get("description"), schema)
        tools.append(tool)
        defaults[tool["name"]] = has_default
    return tools, defaults


def _xlam_parameters(params: dict, tool_name: Any) -> tuple[dict, set]:
    properties, required, has_default = {}, [], set()
    for pname, spec in params.items():
        if not isinstance(spec, dict):
            raise ConversionError("bad_tools", f"{tool_name!r}: parameter {pname!r} is not an object")
        type_name = spec.get("type", "")
        prop = python_type_to_schema(type_name) if isinstance(type_name, str) else {}
        if isinstance(spec.get("description"), str):
            prop["description"] = spec["description"]
        if "default" in spec:
            has_default.add(pname)
            keep, value = _coerce_default(spec["default"], prop.get("type"))
            if keep:
                prop["default"] = value
        properties[str(pname)] = prop
        # Optional only when the type says so: xLAM gives many required parameters an example
        # value as "default" (e.g. an id). _relax_required drops a defaulted one a call omits.
        if not (isinstance(type_name, str) and "optional" in type_name.lower()):
            required.append(str(pname))
    return {"type": "object", "properties": properties, "required": required}, has_default


def _coerce_default(value: Any, json_type: Any) -> tuple[bool, Any]:
    """(keep, value): xLAM writes defaults as strings; "" means none. Parse to the declared type
    where that is lossless, else keep the upstream value."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return False, None
    if not isinstance(value, str):
        return True, value
    v = value.strip()
    if json_type in ("integer", "number"):
        try:
            return True, int(v)
        except ValueError:
            pass
        try:
            f = float(v)
            if math.isfinite(f):
                return True, int(f) if json_type == "integer" and f.is_integer() else f
        except ValueError:
            pass
    elif json_type == "boolean" and v.lower() in ("true", "false"):
        return True, v.lower() == "true"
    elif json_type in ("array", "object"):
        try:
            parsed = _loads(v, "default")
            if isinstance(parsed, list if json_type == "array" else dict):
                return True, parsed
        except ConversionError:
            pass
    if json_type not in (None, "string") and v.lower() in ("none", "null"):
        return False, None
    return True, value


def _relax_required(tools: list[dict], defaults: dict[str, set], calls: list[dict]) -> None:
    """A parameter with a default that a gold call leaves out is not required for this row."""
    by_name = {t["name"]: t for t in tools}
    for c in calls:
        tool = by_name.get(c["name"])
        if tool is None:
            continue
        req = tool["parameters"].get("required") or []
        keep = [r for r in req if r in c["args"] or r not in defaults.get(c["name"], set())]
        if keep != req:
            tool["parameters"]["required"] = keep


def xlam_row_to_conversation(row: dict, *, no_call_reply: str = NO_CALL_REPLY) -> tuple[list[dict], list[dict]]:
    """One xLAM row (also xlam-irrelevance): user query, then one assistant turn of calls, or the
    plain-text `no_call_reply` when ``answers`` is empty."""
    query = row.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ConversionError("bad_query", f"'query' must be a non-empty string, got {query!r:.60}")
    tools, defaults = _xlam_tools(row.get("tools", "[]"))
    answers = _loads(row.get("answers", "[]") or "[]", "answers")
    if not isinstance(answers, list):
        raise ConversionError("bad_call", f"'answers' is a JSON {type(answers).__name__}, not a list")
    calls = []
    for a in answers:
        if not isinstance(a, dict) or not isinstance(a.get("name"), str) or not a["name"]:
            raise ConversionError("bad_call", f"answer is not {{'name', 'arguments'}}: {a!r:.80}")
        args = a.get("arguments", {})
        args = _loads(args, "arguments", "bad_call") if isinstance(args, str) else args
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ConversionError("bad_call", f"{a['name']}: arguments are a {type(args).__name__}, not an object")
        calls.append({"name": a["name"], "args": args})
    _relax_required(tools, defaults, calls)
    reply = {"role": "assistant", "content": "", "tool_calls": calls} if calls else \
        {"role": "assistant", "content": no_call_reply}
    return _finish(tools, [{"role": "user", "content": query}, reply])


# =============================================================================== ToolACE

_TOOLACE_LIST_MARKER = "Here is a list of functions in JSON format that you can invoke:"
# The format-only sentences of ToolACE's system prompt (matched with flexible whitespace).
_TOOLACE_BOILERPLATE = [
    r"You are an expert in composing functions\.",
    r"You are given a question and a set of possible functions\.",
    r"Based on the question, you will need to make one or more function/tool calls to achieve the purpose\.",
    r"If none of the functions? can be used, point it out\.",
    r"If the given question lacks the parameters required by the function, also point it out\.",
    r"You should only return the function calls? in (?:the )?tools? call sections\.",
    r"Here is a list of functions in JSON format that you can invoke:",
    r"Should you decide to return the function calls?(?:\(s\))?\s*[.,]?",
    r"Put it in the format of \[[^\]]*\]\.?",
    r"NO other text MUST be included\.?",
]
_TOOLACE_BOILERPLATE_RE = [re.compile(p.replace(" ", r"\s+"), re.IGNORECASE) for p in _TOOLACE_BOILERPLATE]
_LOOKS_LIKE_TOOL_TEXT = re.compile(r"\b(functions?|tools?|apis?)\b", re.IGNORECASE)


def _find_tool_array(text: str, start: int = 0) -> tuple[int, int, list] | None:
    """The first JSON array of tool objects (each with a "name") in `text` from `start`."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\[", text[start:]):
        at = start + m.start()
        try:
            value, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            continue
        if isinstance(value, list) and (
                (value and all(isinstance(t, dict) and "name" in t for t in value))
                or (not value and text.rfind(_TOOLACE_LIST_MARKER, 0, at) != -1)):
            return at, end, value
    return None


def _strip_boilerplate(text: str, patterns: Sequence[re.Pattern]) -> str:
    for p in patterns:
        text = p.sub(" ", text)
    # What is left of the boilerplate is punctuation ("]. \n" after the list): drop such lines.
    lines = (re.sub(r"^[.,:;]+\s*", "", line.strip()) for line in text.splitlines())
    return "\n".join(line for line in lines if re.search(r"\w", line))


def toolace_system_to_tools(system: str) -> tuple[list[dict], str]:
    """The tools listed in a ToolACE system prompt, and the system text left once the tool list
    and the format-only sentences are taken out ("" when nothing else is there)."""
    if not isinstance(system, str):
        raise ConversionError("bad_system", f"'system' is a {type(system).__name__}, not a string")
    marker = system.find(_TOOLACE_LIST_MARKER)
    found = _find_tool_array(system, marker if marker != -1 else 0)
    if found is None:
        if marker != -1 or _LOOKS_LIKE_TOOL_TEXT.search(system):
            # ToolACE has a few rows whose tools are HTML/LaTeX tables or YAML-like blocks.
            raise ConversionError("no_tool_list", "no JSON tool list in the system prompt")
        return [], system.strip()
    start, end, raw_tools = found
    tools = []
    for t in raw_tools:
        if not isinstance(t, dict):
            raise ConversionError("bad_tools", f"tool is not an object: {t!r:.80}")
        tools.append(_tool(t.get("name"), t.get("description"), _parameters_object(t.get("parameters"))))
    rest = _strip_boilerplate(system[:start] + "\n" + system[end:], _TOOLACE_BOILERPLATE_RE)
    return tools, rest


def _looks_like_call_list(text: str, tool_names: Iterable[str]) -> bool:
    s = text.strip()
    if s.startswith("[") and s.endswith("]") and re.match(r"\[\s*[^\s\[\]()\"'{}][^\[\]()\"'{}]*\(", s):
        return True
    return any(s.startswith(n + "(") for n in tool_names)


def toolace_row_to_conversation(row: dict) -> tuple[list[dict], list[dict]]:
    """One ToolACE row: tools from the system prompt, Python-call assistant turns parsed into
    calls, tool turns (a JSON list of {"name", "results"}) into one tool message per result."""
    tools, system_text = toolace_system_to_tools(row.get("system") or "")
    turns = row.get("conversations")
    if isinstance(turns, str):
        turns = _loads(turns, "conversations", "bad_turn")
    if not isinstance(turns, list) or not turns:
        raise ConversionError("bad_turn", "'conversations' must be a non-empty list")
    names = [t["name"] for t in tools]
    messages: list[dict] = [{"role": "system", "content": system_text}] if system_text else []
    last_calls: list[dict] | None = None
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ConversionError("bad_turn", f"turn {i} is not {{'from', 'value': str}}")
        speaker, value = turn.get("from"), turn["value"]
        if speaker in ("user", "human"):
            messages.append({"role": "user", "content": value})
            last_calls = None
        elif speaker in ("assistant", "gpt"):
            if _looks_like_call_list(value, names):
                last_calls = parse_python_calls(value)
                messages.append({"role": "assistant", "content": "", "tool_calls": last_calls})
            else:
                messages.append({"role": "assistant", "content": value.strip()})
                last_calls = None
        elif speaker == "tool":
            messages.extend(_toolace_results(value, last_calls))
        else:
            raise ConversionError("bad_turn", f"turn {i} from unknown speaker {speaker!r:.40}")
    return _finish(tools, messages)


def _toolace_results(value: str, calls: list[dict] | None) -> list[dict]:
    try:
        parsed = _loads(value, "tool response", "bad_tool_response")
    except ConversionError:
        parsed = value.strip()  # plain-text result: it answers the single call, if there is one
    items = parsed if isinstance(parsed, list) else [parsed]
    if items and all(isinstance(it, dict) and isinstance(it.get("name"), str) for it in items):
        out = []
        for it in items:
            content = it["results"] if "results" in it else {k: v for k, v in it.items() if k != "name"}
            out.append(_tool_message(it["name"], content, calls))
        return out
    if calls and len(calls) == 1:
        return [_tool_message(calls[0]["name"], parsed, calls)]
    raise ConversionError("bad_tool_response", f"tool turn names no tool: {value[:100]!r}")


# =============================================================================== Hermes

_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_TOOL_RESPONSE_RE = re.compile(r"<tool_response>(.*?)</tool_response>", re.DOTALL)
_TOOLS_BLOCK_RE = re.compile(r"<tools>(.*?)</tools>", re.DOTALL)
# Openings of Hermes' tool prompts (func_calling*, the structured-extraction rows, glaive).
_HERMES_PREAMBLES = ("You are a function calling AI model",
                     "You are an expert structured information extraction AI model")


def _strip_literal_newlines(body: str) -> str:
    """Block bodies sometimes carry a written backslash-n where a newline belongs."""
    body = body.strip()
    while body.startswith("\\n"):
        body = body[2:].strip()
    while body.endswith("\\n"):
        body = body[:-2].strip()
    return body


def _hermes_tool(t: Any) -> dict:
    if not isinstance(t, dict):
        raise ConversionError("bad_tools", f"tool is not an object: {t!r:.80}")
    fn = t.get("function") if isinstance(t.get("function"), dict) else t
    return _tool(fn.get("name"), fn.get("description"), _parameters_object(fn.get("parameters")))


def _parse_tool_list(text: str) -> list:
    """The body of a <tools> block: a JSON/Python list, or objects one after another."""
    text = _strip_literal_newlines(text)
    try:
        value = _loads(text, "tool list", "bad_tools")
    except ConversionError:
        value, decoder, pos = [], json.JSONDecoder(), 0
        while pos < len(text):  # "{...}\n{...}"
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text):
                break
            try:
                obj, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                raise ConversionError("bad_tools", f"<tools> block is not a tool list: {text[:120]!r}") from None
            value.append(obj)
    return value if isinstance(value, list) else [value]


def hermes_system_to_tools(system: str, *, parse_tools: bool = True) -> tuple[list[dict] | None, str]:
    """Tools from the system prompt's <tools> block (None when it has none, or when not
    `parse_tools`), and the system text left without the Hermes tool prompt around it."""
    block = next((m for m in _TOOLS_BLOCK_RE.finditer(system) if m.group(1).strip()), None)
    if block is None:
        return None, system.strip()
    tools = [_hermes_tool(t) for t in _parse_tool_list(block.group(1))] if parse_tools else None
    before, after = system[:block.start()], system[block.end():]
    starts = [before.find(p) for p in _HERMES_PREAMBLES if p in before]
    if starts:
        before = before[:min(starts)]
    close = after.rfind("</tool_call>")
    if close != -1:
        after = after[close + len("</tool_call>"):]
    rest = "\n\n".join(p.strip() for p in (before, after) if p.strip())
    return tools, rest


def _hermes_row_tools(row: dict) -> list[dict] | None:
    raw = row.get("tools")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    value = _loads(raw, "'tools'", "bad_tools")
    if value is None:
        return None
    if not isinstance(value, list):
        raise ConversionError("bad_tools", f"'tools' is a JSON {type(value).__name__}, not a list")
    return [_hermes_tool(t) for t in value] or None


def split_hermes_calls(text: str) -> tuple[str, list[dict]]:
    """A gpt turn as (text before the calls, calls). Text after a call cannot be represented (an
    assistant message holds its text before its calls) and makes the turn unusable."""
    blocks = list(_TOOL_CALL_RE.finditer(text))
    opens, closes = text.count("<tool_call>"), text.count("</tool_call>")
    if opens != len(blocks) or closes != len(blocks):
        raise ConversionError("bad_call", "a <tool_call> tag without its pair")
    if not blocks:
        return text.strip(), []
    content = text[:blocks[0].start()].strip()
    for prev, nxt in zip(blocks, blocks[1:] + [None]):
        between = text[prev.end():nxt.start() if nxt else len(text)]
        if _strip_literal_newlines(between):
            raise ConversionError("text_after_call", f"text after a <tool_call> block: {between.strip()[:60]!r}")
    calls = []
    for b in blocks:
        obj = _loads(_strip_literal_newlines(b.group(1)), "<tool_call> block", "bad_call")
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            raise ConversionError("bad_call", f"<tool_call> block is not {{name, arguments}}: {b.group(1)[:80]!r}")
        args = obj.get("arguments", {})
        args = _loads(args, "arguments", "bad_call") if isinstance(args, str) else args
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ConversionError("bad_call", f"{obj['name']}: arguments are a {type(args).__name__}, not an object")
        calls.append({"name": obj["name"], "args": args})
    return content, calls


def _hermes_results(text: str, calls: list[dict] | None) -> list[dict]:
    blocks = list(_TOOL_RESPONSE_RE.finditer(text))
    if text.count("<tool_response>") != len(blocks) or text.count("</tool_response>") != len(blocks):
        raise ConversionError("bad_tool_response", "a <tool_response> tag without its pair")
    if not blocks:
        raise ConversionError("bad_tool_response", f"a tool turn without a <tool_response> block: {text[:80]!r}")
    if _strip_literal_newlines(_TOOL_RESPONSE_RE.sub("", text)):
        raise ConversionError("bad_tool_response", "text outside the <tool_response> blocks")
    out = []
    for b in blocks:
        obj = _loads(_strip_literal_newlines(b.group(1)), "<tool_response> block", "bad_tool_response")
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            content = obj["content"] if "content" in obj else {k: v for k, v in obj.items() if k != "name"}
            out.append(_tool_message(obj["name"], content, calls))
        elif calls and len(calls) == 1:
            out.append(_tool_message(calls[0]["name"], obj, calls))
        else:
            raise ConversionError("bad_tool_response", f"<tool_response> names no tool: {b.group(1)[:80]!r}")
    return out


def hermes_row_to_conversation(row: dict) -> tuple[list[dict], list[dict]]:
    """One Hermes function-calling row. Tools come from the row's ``tools`` field, else from the
    system prompt's <tools> block; the Hermes tool prompt is dropped, other system text kept."""
    turns = row.get("conversations")
    if isinstance(turns, str):
        turns = _loads(turns, "conversations", "bad_turn")
    if not isinstance(turns, list) or not turns:
        raise ConversionError("bad_turn", "'conversations' must be a non-empty list")
    tools = _hermes_row_tools(row)
    messages: list[dict] = []
    last_calls: list[dict] | None = None
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ConversionError("bad_turn", f"turn {i} is not {{'from', 'value': str}}")
        speaker, value = turn.get("from"), turn["value"]
        if speaker == "system":
            if i != 0:
                raise ConversionError("bad_turn", f"turn {i}: a system turn after the first")
            # The row's own `tools` field wins; the prompt's copy is read only when that is empty.
            system_tools, rest = hermes_system_to_tools(value, parse_tools=tools is None)
            if tools is None:
                tools = system_tools
            if rest:
                messages.append({"role": "system", "content": rest})
        elif speaker in ("human", "user"):
            messages.append({"role": "user", "content": value})
            last_calls = None
        elif speaker in ("gpt", "assistant"):
            content, calls = split_hermes_calls(value)
            messages.append({"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})})
            last_calls = calls or None
        elif speaker == "tool":
            messages.extend(_hermes_results(value, last_calls))
        else:
            raise ConversionError("bad_turn", f"turn {i} from unknown speaker {speaker!r:.40}")
    return _finish(tools or [], messages)


# =============================================================================== loaders

Converter = Callable[..., tuple[list[dict], list[dict]]]


def _row_id(row: Any, index: int) -> Any:
    rid = row.get("id") if isinstance(row, dict) else None
    return rid if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid) != "" else index


def convert_rows(rows: Iterable[dict], convert: Converter, report: LoadReport | None, *, strict: bool = False,
                 source: str, where: str | None = None, **convert_kwargs) -> list[dict]:
    """Canonical rows from upstream rows; a bad row is noted in `report` and skipped (strict:
    DataError naming it as ``where:row_id``)."""
    report = report if report is not None else LoadReport()
    where = where or source
    out = []
    for index, row in enumerate(rows):
        row_id = _row_id(row, index)
        try:
            if not isinstance(row, dict):
                raise ConversionError("bad_row", f"row is a {type(row).__name__}, not an object")
            tools, messages = convert(row, **convert_kwargs)
        except Exception as e:  # noqa: BLE001 - a bad row must never end a load
            reason = e.reason if isinstance(e, ConversionError) else "unexpected_error"
            detail = str(e) if isinstance(e, ConversionError) else f"{type(e).__name__}: {e}"
            if strict:
                raise DataError(f"{where}:{row_id}: {reason}: {detail}") from e
            report.note(f"{where}:{row_id}", reason, detail)
            continue
        conv = make_row(tools, messages, source=source, row_id=row_id, report=report, strict=strict, where=where)
        if conv is not None:
            out.append(conv)
    if report.dropped:
        log.warning("%s: kept %d rows, dropped %s; e.g. %s", where, report.kept, dict(report.dropped),
                    "; ".join(report.examples[:3]))
    return out


def load_xlam(rows: Iterable[dict], report: LoadReport | None, strict: bool = False, source: str = XLAM_ID,
              *, where: str | None = None, no_call_reply: str = NO_CALL_REPLY) -> list[dict]:
    return convert_rows(rows, xlam_row_to_conversation, report, strict=strict, source=source, where=where,
                        no_call_reply=no_call_reply)


def load_xlam_irrelevance(rows: Iterable[dict], report: LoadReport | None, strict: bool = False,
                          source: str = XLAM_IRRELEVANCE_ID, *, where: str | None = None,
                          no_call_reply: str = NO_CALL_REPLY) -> list[dict]:
    return convert_rows(rows, xlam_row_to_conversation, report, strict=strict, source=source, where=where,
                        no_call_reply=no_call_reply)


def load_toolace(rows: Iterable[dict], report: LoadReport | None, strict: bool = False, source: str = TOOLACE_ID,
                 *, where: str | None = None) -> list[dict]:
    return convert_rows(rows, toolace_row_to_conversation, report, strict=strict, source=source, where=where)


def load_hermes(rows: Iterable[dict], report: LoadReport | None, strict: bool = False, source: str = HERMES_ID,
                *, where: str | None = None) -> list[dict]:
    return convert_rows(rows, hermes_row_to_conversation, report, strict=strict, source=source, where=where)


# =============================================================================== registry


@dataclass(frozen=True)
class HubSource:
    hub_id: str
    revision: str  # pinned commit; pass it as load_hub_dataset(revision=...)
    license: str
    converter: Converter
    loader: Callable[..., list[dict]]
    files: dict[str | None, str] = field(default_factory=dict)  # config -> upstream file
    configs: tuple[str, ...] = ()  # the configs load_hub_dataset accepts (empty: the default one only)
    gated: bool = False


# Revisions: commit shas of the dataset repos as pinned by other public projects and, for
# MadeAgents/xlam-irrelevance-7.5k, shown as main's head on the hub; not checked against the hub
# from here (no access). `huggingface_hub.HfApi().dataset_info(id).sha` gives the current head.
HUB_SOURCES: dict[str, HubSource] = {
    XLAM_ID: HubSource(XLAM_ID, "26d14ebfe18b1f7b524bd39b404b50af5dc97866", "CC-BY-4.0",
                       xlam_row_to_conversation, load_xlam, {None: "xlam_function_calling_60k.json"}, gated=True),
    XLAM_IRRELEVANCE_ID: HubSource(XLAM_IRRELEVANCE_ID, "34323bf09efc7e4a394998a0fa91ff997617c369", "CC-BY-4.0",
                                   xlam_row_to_conversation, load_xlam_irrelevance,
                                   {None: "xlam-7.5k-irrelevancek.json"}),
    TOOLACE_ID: HubSource(TOOLACE_ID, "6bda777c88d21e5a204703c1ee45597a8fa4f734", "Apache-2.0",
                          toolace_row_to_conversation, load_toolace, {None: "data.json"}),
    HERMES_ID: HubSource(HERMES_ID, "dae3e1d28cfbcf4b915c04ea1e072030529b4bda", "Apache-2.0",
                         hermes_row_to_conversation, load_hermes,
                         {None: "func-calling-singleturn.json",
                          "func_calling_singleturn": "func-calling-singleturn.json",
                          "func_calling": "func-calling.json",
                          "glaive_func_calling": "glaive-function-calling-5k.json"},
                         configs=HERMES_FUNCTION_CONFIGS),
}


# =============================================================================== files and hub


def read_upstream_rows(path: str | Path, report: LoadReport | None = None, *, strict: bool = False) -> list[dict]:
    """Rows of a downloaded upstream file: a JSON array (.json, or JSON Lines under that name),
    JSON Lines (.jsonl), or parquet. A malformed JSON line is noted (strict: DataError)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    text = p.read_text(encoding="utf-8")
    if suffix != ".jsonl":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            if text.lstrip().startswith("["):
                raise DataError(f"{p}: malformed JSON array: {e}") from e
            value = None  # JSON Lines under a .json name
        if isinstance(value, list):
            return value
        if isinstance(value, dict):
            return [value]
        if value is not None:
            raise DataError(f"{p}: expected a JSON array of rows, got a JSON {type(value).__name__}")
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if strict:
                raise DataError(f"{p}:{lineno}: malformed JSON: {e}") from e
            (report if report is not None else LoadReport()).note(f"{p}:{lineno}", "malformed_json", str(e))
    return rows


def _expand(data_files: str | Path | Sequence[str | Path]) -> list[Path]:
    items = [data_files] if isinstance(data_files, (str, Path)) else list(data_files)
    out = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in (".json", ".jsonl", ".parquet")))
        else:
            out.append(p)
    if not out:
        raise DataError(f"no data files in {data_files!r}")
    return out


def _hub_rows(spec: HubSource, revision: str, split: str, config: str | None, cache_dir: str | None):
    import datasets

    token = os.environ.get("HF_TOKEN") or None
    where = f"{spec.hub_id}@{revision}" + (f" ({config})" if config else "")
    file_hint = spec.files.get(config) or spec.files.get(None) or "the upstream data file"
    try:
        return datasets.load_dataset(spec.hub_id, name=config, revision=revision, split=split, token=token,
                                     cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as e:  # noqa: BLE001 - every failure gets the same advice
        if isinstance(e, (ConnectionError, TimeoutError)) or "offline" in str(e).lower():
            why = "the Hugging Face hub is unreachable (offline or no network)"
        else:
            why = "the Hugging Face hub refused or failed the request"
        gated = (" It is a gated dataset: accept its terms on the hub and set HF_TOKEN." if spec.gated else "")
        raise HubLoadError(
            f"could not load {where}: {why}: {type(e).__name__}: {e}.{gated} To work offline, download "
            f"{file_hint} from https://huggingface.co/datasets/{spec.hub_id} (revision {revision}) and pass "
            f"data_files=<path to the .json/.jsonl/.parquet file>.") from e


def load_hub_dataset(hub_id: str, *, revision: str, split: str = "train", report: LoadReport | None = None,
                     strict: bool = False, cache_dir: str | Path | None = None,
                     data_files: str | Path | Sequence[str | Path] | None = None,
                     config: str | None = None) -> list[dict]:
    """Canonical rows of one registered dataset, from the hub (``datasets.load_dataset`` at the
    given revision, token from HF_TOKEN) or, with ``data_files``, from local copies of the upstream
    files (no network; `revision` and `split` then only label the source). `config` picks a Hermes
    function-calling config (default: the dataset's default, func_calling_singleturn)."""
    spec = HUB_SOURCES.get(hub_id)
    if spec is None:
        raise DataError(f"unknown hub dataset {hub_id!r}; supported: {', '.join(HUB_SOURCES)}")
    if config is not None and config not in spec.configs:
        supported = ", ".join(spec.configs) or "none (the dataset has one)"
        raise DataError(f"{hub_id}: config {config!r} is not supported; supported configs: {supported}")
    report = report if report is not None else LoadReport()
    if data_files is not None:
        out = []
        for p in _expand(data_files):
            rows = read_upstream_rows(p, report, strict=strict)
            out.extend(spec.loader(rows, report, strict, hub_id, where=str(p)))
        return out
    ds = _hub_rows(spec, revision, split, config, cache_dir)
    where = f"{hub_id}@{revision[:12]}" + (f"/{config}" if config else "") + f"/{split}"
    return spec.loader(ds, report, strict, hub_id, where=where)
