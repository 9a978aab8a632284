"""Loaders for the real tool-calling datasets kept in `shared/datasets/` (one folder per upstream,
each with SOURCE.md and LICENSE), turning every upstream row into a canonical row (data/schema.py).

    from gemma_tool_use.data.sources_local import LOCAL_SOURCES
    report = LoadReport()
    rows = LOCAL_SOURCES["seal_tools/dev"](root, report, False)   # root: the folder holding seal_tools/ ...

Every loader reads one upstream file in file order and returns rows in that order; every upstream
row is either kept (`report.kept`) or dropped with one `report.note(...)` naming its reason, so
kept + dropped == number of upstream rows. `strict=True` raises DataError (file and row) instead.
A missing or wholly unreadable file is not a row problem: it raises DataError in both modes.

Drop reasons: malformed_json (unparseable JSON/literal payload), missing_field, malformed_prompt
(a prompt/dialogue layout the loader cannot take apart), unknown_tool (a call to a tool not in the
row's tool list), args_not_object, dependent_call (Seal-Tools), orphan_tool_response (a tool result
with no call before it), tool_response_mismatch, bad_tool_schema, empty, not_json, malformed_row,
plus make_row's invalid_conversation.

Judgement calls, one place to read them:
  * Prompt wrappers written for another model's output format (ToolRL's <think>/<response> system
    prompt, Hammer's [BEGIN OF ...] sections, Seal-Tools' "api_list = ..." prompt, the reasoning
    demo's "you must reason" system prompt) are taken apart: tools go to `tools`, the request to
    the user turn. Our renderer adds its own tool instructions.
  * Reasoning text (ToolRL <think>, the reasoning demo's "reasoning" parts) is dropped: the
    canonical format has no reasoning channel and the model answers with calls or text.
  * Seal-Tools: a call whose arguments name an earlier call's output ("API_call_3") cannot be
    made without that output, and the data holds no results to feed back, so such rows are
    dropped (dependent_call); independent calls become one parallel model turn.
    `seal_tools/{dev,test_in_domain}` offer exactly the called tools (looked up by name in
    tool.jsonl); `seal_tools/finetune_*` offer the 5 candidate tools of the upstream prompt
    (so "multiple" rows with distractors).
  * Hammer API-Bank level 2: history calls to a tool missing from the row's list (ToolSearcher,
    once GetUserToken) get that tool's schema from elsewhere in the same file - the tool was
    evidently available. Target calls are never repaired: an unlisted target is unknown_tool.
  * Hammer ToolAlpaca lists the OpenAPI "components" section as a pseudo tool; it is removed.
  * An empty call list ("[]" in Hammer) becomes the plain-text answer NO_TOOL_FITS_TEXT.
  * Tool results given as text are parsed as JSON, else as a Python literal, else kept as text.
  * Parameter layouts are cast to JSON Schema: python/loose type names mapped (str -> string,
    List[int] -> array of integer, ...), descriptions/enums/defaults/examples kept (Seal "choices"
    -> enum, "unit" appended to the description, the "" placeholder default dropped). `required`
    is written when the source says it (a list, per-parameter flags, or "type, optional" markers
    next to unmarked ones) and left out when the source cannot tell.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from gemma_tool_use.data.conversations import DataError, LoadReport
from gemma_tool_use.data.schema import make_row

log = logging.getLogger(__name__)

NO_TOOL_FITS_TEXT = ("I can't do this with a tool call: none of the available tools fits the request, "
                     "or the request lacks a required parameter.")

# ------------------------------------------------------------------------------- provenance

_SEAL = ("https://github.com/fairyshine/Seal-Tools", "ce753ecd60ed08dd376984035de531ab8421f1c6")
_TOOLRL = ("https://github.com/qiancheng0/ToolRL", "8cee13ec0ca72f0461da372a93a6fd8140dbb840")
_HAMMER = ("https://github.com/MadeAgents/Hammer", "ff415d9998180b5a68bbfdda3309ec04b472fb49")
_LLAMAFACTORY = ("https://github.com/hiyouga/LLaMA-Factory", "ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30")

_SHA256 = {
    "seal_tools/dev.jsonl": "53da12c9fab27e47eba4767ae3625b53bb6474215c38e5033b1fe11e84efacf6",
    "seal_tools/test_in_domain.jsonl": "330020288948e711846417c2fca9a5980ef0f1adc01ad74dc38cc9ff7142811f",
    "seal_tools/tool.jsonl": "1209d67ff1e149bc2633e15d471d72af9014770fadb41c2409cc2718953750a9",
    "seal_tools/dataset_for_finetune/dev.json": "24cf1bbe0719aed1780ca43553611535cc0e1e626529011d131e860d4222cca3",
    "seal_tools/dataset_for_finetune/test_in_domain.json":
        "75d51adc3521c6dce1b0f19628446a5e49d30e7a36425fada7809b0f5a4e4d7a",
    "toolrl/rlla_sft.json": "ef42a7b1574f1552d6cc7bf9f060a6425458ff67bae2baf53e945dc640dc125c",
    "toolrl/rlla_4k_test.parquet": "f7f300ebe755fd04985c83e18097d5a94a08619d72809fe06128ed3f00da7554",
    "hammer/apibank_l1.json": "b6c129cd887da3e1965479bdbe56170adc0d315567c6a716a7c493de26887f19",
    "hammer/apibank_l2.json": "7476f8a5a514c64498de6ae0f457b0b342ba3571d08a556447dafad8d0be6544",
    "hammer/toolalpaca.json": "d61e5ede4dd32aa977fade4396b43c7cc39279a98409b64df13ed50815989754",
    "hammer/masking_sft_data_example.json": "af92c76d6c5e2058b05579d24fc928d433bd3a296889c82e6cb1a65434ebd21a",
    "llamafactory/glaive_toolcall_en_demo.json": "8b84773e44e71881f32490080350734cad3069dc227eafd771ccfb80732f6437",
    "llamafactory/glaive_toolcall_zh_demo.json": "d5bbc25b250ff7578ea339abe90a612511866d9beb1ea3b66d094b4f250c9c50",
    "llamafactory/reason_tool_use_demo_50.jsonl": "6e1f0d3cbb8b0a6c73362bd42c33fa45256e7c8cb8ae74608ec7f9c6774b7e4e",
}


def _upstream(repo_commit: tuple[str, str], *files: tuple[str, str], note: str = "") -> dict:
    repo, commit = repo_commit
    entry = {"repo": repo, "commit": commit, "url": f"{repo}/tree/{commit}", "license": "Apache-2.0",
             "files": [{"local": local, "upstream": up, "sha256": _SHA256[local]} for local, up in files]}
    if note:
        entry["note"] = note
    return entry


_SEAL_TOOLS_NOTE = ("seal_tools/tool.jsonl is a subset of upstream's Seal-Tools_Dataset/tool.jsonl: its sha256 "
                    "is of the local copy and will not match the upstream file")

# Source name -> upstream repository at the pinned commit (SOURCE.md), the path of each file inside
# it and the sha256 of the local copy. The first file is the one whose rows the loader reads.
SOURCE_UPSTREAM: dict[str, dict] = {
    "seal_tools/dev": _upstream(_SEAL, ("seal_tools/dev.jsonl", "Seal-Tools_Dataset/dev.jsonl"),
                                ("seal_tools/tool.jsonl", "Seal-Tools_Dataset/tool.jsonl"), note=_SEAL_TOOLS_NOTE),
    "seal_tools/test_in_domain": _upstream(
        _SEAL, ("seal_tools/test_in_domain.jsonl", "Seal-Tools_Dataset/test_in_domain.jsonl"),
        ("seal_tools/tool.jsonl", "Seal-Tools_Dataset/tool.jsonl"), note=_SEAL_TOOLS_NOTE),
    "seal_tools/finetune_dev": _upstream(
        _SEAL, ("seal_tools/dataset_for_finetune/dev.json", "Seal-Tools_Dataset/dataset_for_finetune/dev.json")),
    "seal_tools/finetune_test_in_domain": _upstream(
        _SEAL, ("seal_tools/dataset_for_finetune/test_in_domain.json",
                "Seal-Tools_Dataset/dataset_for_finetune/test_in_domain.json")),
    "toolrl/rlla_sft": _upstream(_TOOLRL, ("toolrl/rlla_sft.json", "dataset/rlla_4k_raw/rlla_sft.json"),
                                 note="upstream warns that about 18 rows reuse BFCL function descriptions"),
    "toolrl/rlla_4k_test": _upstream(_TOOLRL, ("toolrl/rlla_4k_test.parquet", "dataset/rlla_4k/test.parquet"),
                                     note="upstream warns that about 18 rows reuse BFCL function descriptions"),
    "hammer/apibank_l1": _upstream(_HAMMER, ("hammer/apibank_l1.json", "data/test/original/apibank_l1.json")),
    "hammer/apibank_l2": _upstream(_HAMMER, ("hammer/apibank_l2.json", "data/test/original/apibank_l2.json")),
    "hammer/toolalpaca": _upstream(_HAMMER, ("hammer/toolalpaca.json", "data/test/original/toolalpaca.json")),
    "hammer/masking_example": _upstream(
        _HAMMER, ("hammer/masking_sft_data_example.json", "data/train/masking_sft_data_example.json")),
    "llamafactory/glaive_en": _upstream(
        _LLAMAFACTORY, ("llamafactory/glaive_toolcall_en_demo.json", "data/glaive_toolcall_en_demo.json")),
    "llamafactory/glaive_zh": _upstream(
        _LLAMAFACTORY, ("llamafactory/glaive_toolcall_zh_demo.json", "data/glaive_toolcall_zh_demo.json")),
    "llamafactory/reason_tool_use": _upstream(
        _LLAMAFACTORY, ("llamafactory/reason_tool_use_demo_50.jsonl", "data/reason_tool_use_demo_50.jsonl"),
        note="upstream origin of the rows is not stated"),
}


def upstream_raw_url(name: str, index: int = 0) -> str:
    """Direct download URL of a source's file at the pinned commit (GitHub raw)."""
    entry = SOURCE_UPSTREAM[name]
    owner_repo = entry["repo"].removeprefix("https://github.com/")
    return f"https://raw.githubusercontent.com/{owner_repo}/{entry['commit']}/{entry['files'][index]['upstream']}"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_local_files(root: str | os.PathLike, names: Iterable[str] | None = None) -> list[str]:
    """Problems (missing file, checksum mismatch) with the local copies; empty when all match."""
    root = Path(root)
    problems, seen = [], set()
    for name in names or SOURCE_UPSTREAM:
        for f in SOURCE_UPSTREAM[name]["files"]:
            if f["local"] in seen:
                continue
            seen.add(f["local"])
            p = root / f["local"]
            if not p.is_file():
                problems.append(f"{p}: missing")
            elif (digest := sha256_file(p)) != f["sha256"]:
                problems.append(f"{p}: sha256 {digest} != {f['sha256']}")
    return problems


# ------------------------------------------------------------------------------- row plumbing


class _Skip(Exception):
    """An upstream row is unusable: reason (a short tag) and detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class _Bad:
    """Placeholder for a row that could not even be read (e.g. a malformed JSONL line)."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail


def _convert_rows(items: Iterable[tuple[Any, Any]], convert: Callable[[Any], tuple[list, list]], *,
                  source: str, path: Path, report: LoadReport, strict: bool) -> list[dict]:
    """Run `convert(item) -> (tools, messages)` over (row_id, item) pairs; keep or note each row."""
    rows: list[dict] = []
    kept0, dropped0 = report.kept, sum(report.dropped.values())
    for row_id, item in items:
        try:
            if isinstance(item, _Bad):
                raise _Skip(item.reason, item.detail)
            tools, messages = convert(item)
            tools = _dedupe_tools(tools)
            _check_row(tools, messages)
        except _Skip as s:
            _drop(report, strict, path, row_id, s.reason, s.detail)
            continue
        except (KeyError, TypeError, AttributeError, IndexError, ValueError, RecursionError) as e:
            # An upstream shape no branch above foresaw: still a bad row, never a crash.
            _drop(report, strict, path, row_id, "malformed_row", f"{type(e).__name__}: {e}")
            continue
        row = make_row(tools, messages, source=source, row_id=row_id, report=report, strict=strict, where=str(path))
        if row is not None:
            rows.append(row)
    dropped = sum(report.dropped.values()) - dropped0
    if dropped:
        log.info("%s: kept %d rows, dropped %d", source, report.kept - kept0, dropped)
    return rows


def _drop(report: LoadReport, strict: bool, path: Path, row_id, reason: str, detail: str) -> None:
    detail = detail if len(detail) <= 300 else detail[:297] + "..."
    if strict:
        raise DataError(f"{path}:{row_id}: {reason}: {detail}")
    report.note(f"{path}:{row_id}", reason, detail)


def _dedupe_tools(tools: list[dict]) -> list[dict]:
    seen, out = set(), []
    for t in tools:
        if t["name"] not in seen:
            seen.add(t["name"])
            out.append(t)
    return out


def _check_row(tools: list[dict], messages: list[dict]) -> None:
    names = {t["name"] for t in tools}
    for m in messages:
        if m["role"] == "user" and not m["content"].strip():
            raise _Skip("empty", "a user turn is empty")
        if m["role"] == "assistant" and not m.get("content", "").strip() and not m.get("tool_calls"):
            raise _Skip("empty", "an assistant turn has neither text nor calls")
        for c in m.get("tool_calls") or []:
            if c["name"] not in names:
                raise _Skip("unknown_tool", f"call to '{c['name']}', not among the row's tools {sorted(names)}")
    try:
        json.dumps({"tools": tools, "messages": messages}, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise _Skip("not_json", f"row holds a value JSON cannot carry: {e}") from None


def _user(text: Any) -> dict:
    if not isinstance(text, str):
        raise _Skip("missing_field", f"user text is {type(text).__name__}, not a string")
    return {"role": "user", "content": text.strip()}


def _add_assistant(messages: list[dict], content: str = "", calls: list[dict] | None = None) -> None:
    """Append a model turn, merging into a directly preceding model turn that has no calls yet
    (upstream often splits 'text' and 'the calls it announces' into two records)."""
    content = (content or "").strip()
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant" and not last.get("tool_calls"):
        if content:
            last["content"] = f"{last['content']}\n{content}".strip()
        if calls:
            last["tool_calls"] = calls
        return
    msg: dict = {"role": "assistant", "content": content}
    if calls:
        msg["tool_calls"] = calls
    messages.append(msg)


def _args(value: Any, name: str) -> dict:
    """Call arguments: an object, or a JSON string holding one; value types kept as given."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            raise _Skip("args_not_object", f"arguments of '{name}' are a string that is not JSON: {value!r:.80}")
    if not isinstance(value, dict):
        raise _Skip("args_not_object", f"arguments of '{name}' are a JSON {type(value).__name__}")
    return value


def _call(obj: Any, *, name_key: str = "name", args_keys: tuple[str, ...] = ("arguments",)) -> dict:
    if not isinstance(obj, dict):
        raise _Skip("malformed_json", f"a call is a {type(obj).__name__}, not an object")
    name = obj.get(name_key)
    if not isinstance(name, str) or not name.strip():
        raise _Skip("missing_field", f"a call has no '{name_key}'")
    raw = next((obj[k] for k in args_keys if k in obj), {})
    return {"name": name, "args": _args(raw, name)}


def _json(text: Any, what: str) -> Any:
    if not isinstance(text, str):
        raise _Skip("missing_field", f"{what} is {type(text).__name__}, not text")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _Skip("malformed_json", f"{what}: {e}") from None


def _literal(text: str, what: str) -> Any:
    """A Python-literal payload (upstream wrote repr() output); JSON as a fallback."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _Skip("malformed_json", f"{what}: {e}") from None


def _result(value: Any) -> Any:
    """A tool result: JSON if it parses, else a Python literal, else the text itself."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if text[:1] in "[{(":
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return text


def _tool_messages(result: Any, calls: list[dict]) -> list[dict]:
    """Tool messages answering `calls` from one upstream result record."""
    if not calls:
        raise _Skip("orphan_tool_response", "a tool result with no call before it")
    if len(calls) == 1:
        return [{"role": "tool", "name": calls[0]["name"], "content": result}]
    if isinstance(result, list) and len(result) == len(calls):
        return [{"role": "tool", "name": c["name"], "content": r} for c, r in zip(calls, result)]
    raise _Skip("tool_response_mismatch", f"one result record for {len(calls)} calls")


# ------------------------------------------------------------------------------- file readers


def _file(root: Path, rel: str) -> Path:
    path = Path(root) / rel
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return path


def _jsonl_items(path: Path, id_key: str | None = None) -> Iterator[tuple[Any, Any]]:
    """(row id, object or _Bad) per non-empty line; row id = the object's id_key, else its index."""
    with path.open(encoding="utf-8") as f:
        index = 0
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield f"line{lineno}", _Bad("malformed_json", f"line {lineno}: {e}")
            else:
                rid = obj.get(id_key) if id_key and isinstance(obj, dict) else None
                yield (rid if isinstance(rid, (str, int)) else index), obj
            index += 1


def _json_items(path: Path, id_key: str | None = None) -> Iterator[tuple[Any, Any]]:
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not readable as JSON: {e}") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    for index, obj in enumerate(data):
        rid = obj.get(id_key) if id_key and isinstance(obj, dict) else None
        yield (rid if isinstance(rid, (str, int)) else index), obj


def _plain(value: Any) -> Any:
    """numpy/pyarrow containers from a parquet row -> plain Python."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _parquet_items(path: Path) -> Iterator[tuple[Any, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid/OSError family
        raise DataError(f"{path}: not readable as parquet: {e}") from e
    for index, row in enumerate(table.to_pylist()):
        yield index, _plain(row)


# ------------------------------------------------------------------------------- JSON Schema

_TYPE_NAMES = {
    "str": "string", "string": "string", "text": "string", "char": "string",
    "int": "integer", "integer": "integer", "long": "integer",
    "float": "number", "double": "number", "number": "number", "decimal": "number",
    "bool": "boolean", "boolean": "boolean",
    "list": "array", "array": "array", "tuple": "array", "set": "array", "sequence": "array",
    "dict": "object", "object": "object", "mapping": "object", "hashmap": "object", "json": "object",
    "null": "null", "none": "null",
}
_ANY_TYPES = {"any", "typing.any", "object | none"}
_PASS_KEYS = ("format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
              "pattern", "minItems", "maxItems", "uniqueItems", "additionalProperties", "const")


def _split_top(text: str) -> list[str]:
    """Split 'a, List[b, c], d' on top-level commas."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _type_schema(t: Any) -> tuple[dict, bool, bool]:
    """(JSON Schema fragment, marked optional, understood) for an upstream type name."""
    if isinstance(t, list):
        types = []
        for x in t:
            frag, _, ok = _type_schema(x)
            if ok and isinstance(frag.get("type"), str) and frag["type"] not in types:
                types.append(frag["type"])
        return ({"type": types if len(types) > 1 else types[0]} if types else {}), False, bool(types)
    if not isinstance(t, str):
        return {}, False, False
    s, optional = t.strip(), False
    if s.lower().endswith(", optional"):
        s, optional = s[: -len(", optional")].strip(), True
    low = s.lower()
    if low in _TYPE_NAMES:
        return {"type": _TYPE_NAMES[low]}, optional, True
    if low in _ANY_TYPES:
        return {}, optional, True
    m = re.fullmatch(r"(\w+)\s*[\[(](.*)[\])]", s, re.S)
    if m:
        outer, inner = m.group(1).lower(), m.group(2)
        if outer == "optional":
            frag, _, ok = _type_schema(inner)
            return frag, True, ok
        if outer in ("list", "array", "sequence", "set", "iterable"):
            items, _, ok = _type_schema(inner)
            return ({"type": "array", "items": items} if ok and items else {"type": "array"}), optional, True
        if outer == "tuple":
            return {"type": "array"}, optional, True
        if outer in ("dict", "mapping"):
            return {"type": "object"}, optional, True
        if outer == "union":
            frag, _, ok = _type_schema(_split_top(inner))
            return frag, optional, ok
    return {}, optional, False


def _examples(value: Any) -> list:
    if isinstance(value, list):
        return value
    return [value]


def _param_schema(spec: Any, pname: str) -> tuple[dict, bool, bool]:
    """(JSON Schema of one parameter, marked optional, flagged required) from an upstream spec."""
    if not isinstance(spec, dict):
        raise _Skip("bad_tool_schema", f"parameter '{pname}' is described by a {type(spec).__name__}")
    out: dict = {}
    optional = spec.get("optional") is True
    desc = spec.get("description")
    desc = desc.strip() if isinstance(desc, str) else ("" if desc is None else str(desc))
    if "type" in spec and spec["type"] is not None:
        frag, opt, ok = _type_schema(spec["type"])
        out.update(frag)
        optional = optional or opt
        if not ok:  # keep what the source said rather than guess
            desc = f"{desc} (type: {spec['type']})".strip()
    if isinstance(spec.get("unit"), str) and spec["unit"]:
        desc = f"{desc} (unit: {spec['unit']})".strip()
    if desc:
        out["description"] = desc
    enum = spec.get("enum", spec.get("choices"))
    if isinstance(enum, list) and enum:
        out["enum"] = enum
    if "default" in spec and spec["default"] not in ("", None):
        out["default"] = spec["default"]
    for key in ("examples", "example", "example_values"):
        if key in spec and spec[key] not in ("", None, []):
            out["examples"] = _examples(spec[key])
            break
    if isinstance(spec.get("items"), dict):
        out["items"] = _param_schema(spec["items"], f"{pname}[]")[0]
    if isinstance(spec.get("properties"), dict):
        out["properties"] = {k: _param_schema(v, f"{pname}.{k}")[0] for k, v in spec["properties"].items()}
        if isinstance(spec.get("required"), list):
            out["required"] = [r for r in spec["required"] if r in out["properties"]]
    for key in _PASS_KEYS:
        if key in spec:
            out[key] = spec[key]
    return out, optional, spec.get("required") is True


def _is_object_schema(params: dict) -> bool:
    t = params.get("type")
    if isinstance(t, str) and t.lower() in ("object", "dict"):
        return True
    return isinstance(params.get("properties"), dict) and set(params) <= {
        "type", "properties", "required", "description", "additionalProperties", "title"}


def _object_schema(params: Any, required: Any = None, *, per_param_flags: bool = False) -> dict:
    """JSON Schema object for a tool's parameters, whatever layout the source used:
    a JSON Schema object (type object/dict), or a map name -> {type, description, ...}.
    `required` is an explicit list given beside the parameters (Seal-Tools, xLAM-style tools)."""
    if params in (None, {}, []):
        props_in, req_in = {}, None
    elif isinstance(params, dict):
        if _is_object_schema(params):
            props_in, req_in = params.get("properties") or {}, params.get("required")
        else:
            props_in, req_in = params, None
    else:
        raise _Skip("bad_tool_schema", f"parameters are a {type(params).__name__}")
    if not isinstance(props_in, dict):
        raise _Skip("bad_tool_schema", f"properties are a {type(props_in).__name__}")
    props, flagged, unmarked, any_optional = {}, [], [], False
    for pname, spec in props_in.items():
        props[pname], optional, flag = _param_schema(spec, pname)
        any_optional = any_optional or optional
        if flag:
            flagged.append(pname)
        if not optional:
            unmarked.append(pname)
    schema: dict = {"type": "object", "properties": props}
    explicit = req_in if isinstance(req_in, list) else required if isinstance(required, list) else None
    if explicit is not None:
        schema["required"] = [r for r in explicit if isinstance(r, str) and r in props]
    elif per_param_flags or flagged:
        schema["required"] = flagged
    elif any_optional:  # xLAM convention: "str, optional" beside unmarked (required) parameters
        schema["required"] = unmarked
    return schema


def _tool(name: Any, description: Any, params: Any, required: Any = None, *, per_param_flags: bool = False) -> dict:
    if not isinstance(name, str) or not name.strip():
        raise _Skip("bad_tool_schema", f"a tool has no name ({name!r:.60})")
    if not isinstance(description, str):
        description = "" if description is None else str(description)
    return {"name": name, "description": description.strip(),
            "parameters": _object_schema(params, required, per_param_flags=per_param_flags)}


def _generic_tool(t: Any) -> dict:
    """OpenAI-style ({"type": "function", "function": {...}}) or plain {name, description, parameters}."""
    if not isinstance(t, dict):
        raise _Skip("bad_tool_schema", f"a tool is a {type(t).__name__}")
    if isinstance(t.get("function"), dict):
        t = t["function"]
    return _tool(t.get("name"), t.get("description", ""), t.get("parameters"), t.get("required"))


# ------------------------------------------------------------------------------- Seal-Tools

_SEAL_SPLITS = ("dev", "test_in_domain")
_API_REF = re.compile(r"\bAPI_call_\d+\b")


def _seal_tool(t: Any) -> dict:
    if not isinstance(t, dict):
        raise _Skip("bad_tool_schema", f"a tool is a {type(t).__name__}")
    return _tool(t.get("api_name"), t.get("api_description", ""), t.get("parameters"), t.get("required"))


def _refers_to_call(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_API_REF.search(value))
    if isinstance(value, dict):
        return any(_refers_to_call(v) for v in value.values())
    if isinstance(value, list):
        return any(_refers_to_call(v) for v in value)
    return False


def _seal_calls(calling: Any) -> list[dict]:
    """Seal-Tools calls. A call whose arguments name an earlier call's output ('API_call_3') needs
    that output, and the data holds no results to feed back (only placeholders), so the row is
    dropped as dependent_call rather than trained on an argument the model could never know."""
    if not isinstance(calling, list):
        raise _Skip("missing_field", "'calling' is not a list")
    if not calling:
        raise _Skip("empty", "no calls")
    calls = []
    for c in calling:
        call = _call(c, name_key="api", args_keys=("parameters",))
        if _refers_to_call(call["args"]):
            raise _Skip("dependent_call", f"'{call['name']}' takes an earlier call's output: {call['args']}")
        calls.append(call)
    return calls


def _seal_catalog(root: Path, strict: bool) -> dict[str, dict]:
    path = _file(root, "seal_tools/tool.jsonl")
    catalog: dict[str, dict] = {}
    for row_id, obj in _jsonl_items(path):
        try:
            if isinstance(obj, _Bad):
                raise _Skip(obj.reason, obj.detail)
            tool = _seal_tool(obj)
        except _Skip as s:  # a bad schema only matters to rows that call it (they drop as unknown_tool)
            if strict:
                raise DataError(f"{path}:{row_id}: {s.reason}: {s.detail}") from None
            log.warning("%s:%s: %s: %s", path, row_id, s.reason, s.detail)
            continue
        catalog.setdefault(tool["name"], tool)
    return catalog


def load_seal_tools(root: Path, split: str, report: LoadReport, strict: bool = False) -> list[dict]:
    """Seal-Tools {split}.jsonl: a query and its calls; tools = the called ones, from tool.jsonl."""
    if split not in _SEAL_SPLITS:
        raise ValueError(f"unknown Seal-Tools split {split!r}; one of {_SEAL_SPLITS}")
    root = Path(root)
    path = _file(root, f"seal_tools/{split}.jsonl")
    catalog = _seal_catalog(root, strict)

    def convert(obj):
        if not isinstance(obj, dict):
            raise _Skip("malformed_json", f"row is a {type(obj).__name__}")
        if "query" not in obj or "calling" not in obj:
            raise _Skip("missing_field", "row needs 'query' and 'calling'")
        calls = _seal_calls(obj["calling"])
        tools = []
        for c in calls:
            if c["name"] not in catalog:
                raise _Skip("unknown_tool", f"'{c['name']}' is not in tool.jsonl")
            tools.append(copy.deepcopy(catalog[c["name"]]))
        return tools, [_user(obj["query"]), {"role": "assistant", "content": "", "tool_calls": calls}]

    return _convert_rows(_jsonl_items(path, "id"), convert, source=f"seal_tools/{split}", path=path,
                         report=report, strict=strict)


_SEAL_PROMPT = re.compile(r"api_list = (\[.*\])\s*\ntask_instruction = \"(.*)\"\s*\nOutput:\s*$", re.S)


def load_seal_tools_finetune(root: Path, split: str, report: LoadReport, strict: bool = False) -> list[dict]:
    """Seal-Tools dataset_for_finetune/{split}.json: a prompt with 5 candidate tools (their schemas
    inline, Python-literal) and the task; the answer is a Python-literal call list."""
    if split not in _SEAL_SPLITS:
        raise ValueError(f"unknown Seal-Tools split {split!r}; one of {_SEAL_SPLITS}")
    path = _file(Path(root), f"seal_tools/dataset_for_finetune/{split}.json")

    def convert(obj):
        if not isinstance(obj, dict) or not isinstance(obj.get("conversations"), list):
            raise _Skip("missing_field", "row needs 'conversations'")
        turns = obj["conversations"]
        human = next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "human"), None)
        answer = next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"), None)
        if not isinstance(human, str) or not isinstance(answer, str):
            raise _Skip("missing_field", "row needs a human prompt and a gpt answer")
        m = _SEAL_PROMPT.search(human)
        if not m:
            raise _Skip("malformed_prompt", "no 'api_list = [...]' / 'task_instruction = \"...\"' in the prompt")
        api_list = _literal(m.group(1), "api_list")
        if not isinstance(api_list, list):
            raise _Skip("malformed_prompt", "api_list is not a list")
        tools = [_seal_tool(t) for t in api_list]
        calls = _seal_calls(_literal(answer, "answer"))
        return tools, [_user(m.group(2)), {"role": "assistant", "content": "", "tool_calls": calls}]

    return _convert_rows(_json_items(path, "id"), convert, source=f"seal_tools/finetune_{split}", path=path,
                         report=report, strict=strict)


# ------------------------------------------------------------------------------- ToolRL

_TOOLRL_FILES = {"rlla_sft": "toolrl/rlla_sft.json", "rlla_4k_test": "toolrl/rlla_4k_test.parquet"}
_TOOLRL_ENTRY = re.compile(r"\d+\. Name: (.*?)\nDescription: (.*?)\nParameters: (.*)", re.S)
_TOOLRL_SEGMENT = re.compile(r"<(user|think|tool_call|obs|response)>(.*?)</\1>", re.S)


def _toolrl_tools(instruction: Any) -> list[dict]:
    if not isinstance(instruction, str) or "**Available Tools**" not in instruction:
        raise _Skip("missing_field", "no '**Available Tools**' section in the instruction")
    section = instruction.split("**Available Tools**", 1)[1].split("**Steps for Each Turn**", 1)[0]
    section = section.split("you can use the following tools:", 1)[-1].strip()
    tools = []
    for entry in re.split(r"\n(?=\d+\. Name: )", section):
        entry = entry.strip()
        if not entry:
            continue
        m = _TOOLRL_ENTRY.fullmatch(entry)
        if not m:
            raise _Skip("malformed_prompt", f"tool entry not 'N. Name/Description/Parameters': {entry[:80]!r}")
        tools.append(_tool(m.group(1).strip(), m.group(2), _json(m.group(3).strip(), f"parameters of {m.group(1)!r}")))
    return tools


def _segments(text: str, what: str, *, lenient: bool = False) -> list[tuple[str, str]]:
    segs, pos = [], 0
    for m in _TOOLRL_SEGMENT.finditer(text):
        if text[pos:m.start()].strip() and not lenient:
            raise _Skip("malformed_prompt", f"{what}: text outside the tags: {text[pos:m.start()].strip()[:80]!r}")
        segs.append((m.group(1), m.group(2).strip()))
        pos = m.end()
    if text[pos:].strip() and not lenient:
        raise _Skip("malformed_prompt", f"{what}: text outside the tags: {text[pos:].strip()[:80]!r}")
    return segs


def _toolrl_calls(body: str) -> list[dict]:
    """One JSON object per call: {"name": ..., "parameters": {...}}."""
    decoder, calls, pos = json.JSONDecoder(), [], 0
    body = body.strip()
    while pos < len(body):
        if body[pos].isspace():
            pos += 1
            continue
        try:
            obj, pos = decoder.raw_decode(body, pos)
        except json.JSONDecodeError as e:
            raise _Skip("malformed_json", f"tool call: {e}") from None
        calls.append(_call(obj, args_keys=("parameters", "arguments")))
    if not calls:
        raise _Skip("empty", "an empty <tool_call> block")
    return calls


def _toolrl_obs(body: str, calls: list[dict]) -> list[dict]:
    """<obs> [{"name": ..., "results": ...}, ...] </obs> -> one tool message per result."""
    if not calls:
        raise _Skip("orphan_tool_response", "<obs> with no call before it")
    value = _result(body)
    if isinstance(value, list) and value and all(isinstance(v, dict) and "results" in v for v in value):
        out = []
        for i, v in enumerate(value):
            name = v.get("name") if isinstance(v.get("name"), str) else calls[i]["name"] if i < len(calls) else None
            if name is None:
                raise _Skip("tool_response_mismatch", f"{len(value)} results for {len(calls)} calls")
            out.append({"role": "tool", "name": name, "content": v["results"]})
        return out
    return _tool_messages(value, calls)


def _toolrl_messages(history: str, output: str) -> list[dict]:
    history = history.split("**Dialogue Records History**", 1)[-1]
    messages: list[dict] = []
    last_calls: list[dict] = []
    for tag, body in _segments(history, "dialogue history"):
        if tag == "user":
            messages.append(_user(body))
        elif tag == "tool_call":
            last_calls = _toolrl_calls(body)
            _add_assistant(messages, calls=last_calls)
        elif tag == "obs":
            messages.extend(_toolrl_obs(body, last_calls))
            last_calls = []
        elif tag == "response":
            _add_assistant(messages, content=body)
    # The answer: <think> (dropped) then <tool_call> and/or <response>.
    content, calls = "", None
    for tag, body in _segments(output, "answer", lenient=True):
        if tag == "tool_call":
            calls = (calls or []) + _toolrl_calls(body)
        elif tag == "response":
            content = f"{content}\n{body}".strip()
    if not content and not calls:
        raise _Skip("empty", "the answer has neither <tool_call> nor <response>")
    messages.append({"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})})
    return messages


def load_toolrl(root: Path, name: str, report: LoadReport, strict: bool = False) -> list[dict]:
    """ToolRL rlla_sft.json ({instruction, input, output}) or rlla_4k_test.parquet (prompt =
    [system, user], reward_model.ground_truth = the answer): the tool list lives in the system
    text, the dialogue history in <user>/<tool_call>/<obs>/<response> tags."""
    if name not in _TOOLRL_FILES:
        raise ValueError(f"unknown ToolRL file {name!r}; one of {tuple(_TOOLRL_FILES)}")
    path = _file(Path(root), _TOOLRL_FILES[name])

    def convert(obj):
        if not isinstance(obj, dict):
            raise _Skip("malformed_json", f"row is a {type(obj).__name__}")
        if name == "rlla_sft":
            instruction, history, output = obj.get("instruction"), obj.get("input"), obj.get("output")
        else:
            prompt = obj.get("prompt") or []
            by_role = {m.get("role"): m.get("content") for m in prompt if isinstance(m, dict)}
            instruction, history = by_role.get("system"), by_role.get("user")
            output = (obj.get("reward_model") or {}).get("ground_truth")
        for field, value in (("instruction", instruction), ("input", history), ("output", output)):
            if not isinstance(value, str):
                raise _Skip("missing_field", f"no {field} text")
        return _toolrl_tools(instruction), _toolrl_messages(history, output)

    items = _json_items(path) if path.suffix == ".json" else _parquet_items(path)
    return _convert_rows(items, convert, source=f"toolrl/{name}", path=path, report=report, strict=strict)


# ------------------------------------------------------------------------------- Hammer

_HAMMER_EVAL_FILES = {"apibank_l1": "hammer/apibank_l1.json", "apibank_l2": "hammer/apibank_l2.json",
                      "toolalpaca": "hammer/toolalpaca.json"}
_GENERATE_MARK = re.compile(r"\s*Generate API Request:\s*$")


def _hammer_tool(t: Any, per_param_flags: bool) -> dict:
    if not isinstance(t, dict):
        raise _Skip("bad_tool_schema", f"a tool is a {type(t).__name__}")
    return _tool(t.get("name"), t.get("description", ""), t.get("parameters"), per_param_flags=per_param_flags)


def _is_components(t: Any) -> bool:
    """ToolAlpaca lists its OpenAPI 'components' (output formats) as if it were a tool."""
    return isinstance(t, dict) and t.get("name") == "components" and not t.get("parameters")


def _apibank_calls(text: str) -> list[dict]:
    value = _json(text.strip().strip("`").strip(), "history call")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _Skip("malformed_json", "a history call block is not a list of calls")
    return [_call(v) for v in value]


def _apibank_history(query: list) -> list[dict]:
    """API-Bank roles: user; agent (model text); assistant (a call, ```[...]```); tool (its result).
    The "Generate API Request:" cue upstream appends to the last record is removed."""
    messages: list[dict] = []
    last_calls: list[dict] = []
    for m in query:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise _Skip("missing_field", "a query record needs 'role' and text 'content'")
        role, text = m.get("role"), _GENERATE_MARK.sub("", m["content"])
        if role == "user":
            messages.append(_user(text))
        elif role == "agent":
            _add_assistant(messages, content=text)
        elif role == "assistant":
            last_calls = _apibank_calls(text)
            _add_assistant(messages, calls=last_calls)
        elif role == "tool":
            messages.extend(_tool_messages(_result(text), last_calls))
            last_calls = []
        else:
            raise _Skip("missing_field", f"unknown role {role!r}")
    return messages


def load_hammer_eval(root: Path, name: str, report: LoadReport, strict: bool = False) -> list[dict]:
    """Hammer's evaluation files ({query, tools, answers}): API-Bank L1/L2 (query = a dialogue)
    and ToolAlpaca (query = one request). `answers` are the calls of the next model turn."""
    if name not in _HAMMER_EVAL_FILES:
        raise ValueError(f"unknown Hammer file {name!r}; one of {tuple(_HAMMER_EVAL_FILES)}")
    path = _file(Path(root), _HAMMER_EVAL_FILES[name])
    per_param_flags = name == "toolalpaca"  # ToolAlpaca marks required parameters one by one
    items = list(_json_items(path))
    # Every tool schema in the file, by name: history calls to an unlisted tool take it from here.
    catalog: dict[str, Any] = {}
    for _, obj in items:
        for t in (obj.get("tools") if isinstance(obj, dict) and isinstance(obj.get("tools"), list) else []):
            if isinstance(t, dict) and isinstance(t.get("name"), str):
                catalog.setdefault(t["name"], t)

    def convert(obj):
        if not isinstance(obj, dict):
            raise _Skip("malformed_json", f"row is a {type(obj).__name__}")
        for field in ("query", "tools", "answers"):
            if field not in obj:
                raise _Skip("missing_field", f"row has no '{field}'")
        if not isinstance(obj["tools"], list) or not isinstance(obj["answers"], list):
            raise _Skip("missing_field", "'tools' and 'answers' must be lists")
        tools = [_hammer_tool(t, per_param_flags) for t in obj["tools"] if not _is_components(t)]
        query = obj["query"]
        if isinstance(query, str):
            messages = [_user(query)]
        elif isinstance(query, list) and query:
            messages = _apibank_history(query)
        else:
            raise _Skip("empty", "no query")
        listed = {t["name"] for t in tools}
        for m in messages:  # history calls: the tool was evidently available (see module docstring)
            for c in m.get("tool_calls") or []:
                if c["name"] not in listed and c["name"] in catalog:
                    tools.append(_hammer_tool(catalog[c["name"]], per_param_flags))
                    listed.add(c["name"])
        calls = [_call(a) for a in obj["answers"]]
        if messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
            messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        elif calls:
            _add_assistant(messages, calls=calls)
        else:
            _add_assistant(messages, content=NO_TOOL_FITS_TEXT)
        return tools, messages

    return _convert_rows(items, convert, source=f"hammer/{name}", path=path, report=report, strict=strict)


def _between(text: str, start: str, end: str) -> str:
    i = text.find(start)
    j = text.find(end, i + len(start)) if i != -1 else -1
    if i == -1 or j == -1:
        raise _Skip("malformed_prompt", f"no '{start} ... {end}' section")
    return text[i + len(start):j].strip()


def load_hammer_masking(root: Path, report: LoadReport, strict: bool = False) -> list[dict]:
    """Hammer masking_sft_data_example.json ({instruction, input, output}): the tools and the query
    are sections of the instruction; the output is a fenced JSON list of calls ('[]': no call)."""
    path = _file(Path(root), "hammer/masking_sft_data_example.json")

    def convert(obj):
        if not isinstance(obj, dict) or not isinstance(obj.get("instruction"), str) \
                or not isinstance(obj.get("output"), str):
            raise _Skip("missing_field", "row needs 'instruction' and 'output' text")
        ins = obj["instruction"]
        raw_tools = _json(_between(ins, "[BEGIN OF AVAILABLE TOOLS]", "[END OF AVAILABLE TOOLS]"), "tool list")
        if not isinstance(raw_tools, list):
            raise _Skip("malformed_prompt", "the tool list is not a JSON array")
        tools = [_generic_tool(t) for t in raw_tools]
        query = _between(ins, "[BEGIN OF QUERY]", "[END OF QUERY]")
        if isinstance(obj.get("input"), str) and obj["input"].strip():
            query = f"{query}\n{obj['input'].strip()}"
        out = obj["output"].strip()
        out = re.sub(r"^```(?:json)?\s*|\s*```$", "", out)
        answer = _json(out, "output")
        if not isinstance(answer, list):
            raise _Skip("malformed_json", "output is not a JSON list of calls")
        calls = [_call(a) for a in answer]
        reply = {"role": "assistant", "content": "", "tool_calls": calls} if calls else \
            {"role": "assistant", "content": NO_TOOL_FITS_TEXT}
        return tools, [_user(query), reply]

    return _convert_rows(_json_items(path), convert, source="hammer/masking_example", path=path,
                         report=report, strict=strict)


# ------------------------------------------------------------------------------- LLaMA-Factory

_GLAIVE_FILES = {"en": "llamafactory/glaive_toolcall_en_demo.json", "zh": "llamafactory/glaive_toolcall_zh_demo.json"}


def _tools_field(value: Any) -> list[dict]:
    """LLaMA-Factory keeps the tool list as a JSON string (sometimes absent/empty)."""
    if value in (None, ""):
        return []
    if isinstance(value, str):
        value = _json(value, "tools")
    if not isinstance(value, list):
        raise _Skip("bad_tool_schema", f"tools are a {type(value).__name__}")
    return [_generic_tool(t) for t in value]


def _function_calls(text: Any) -> list[dict]:
    value = _json(text, "function_call")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise _Skip("empty", "an empty function_call")
    return [_call(v) for v in values]


def _llamafactory_row(obj: Any, turns_key: str) -> tuple[list, list[dict]]:
    """(the non-empty turn list under `turns_key`, the tools) of a LLaMA-Factory row."""
    if not isinstance(obj, dict):
        raise _Skip("malformed_json", f"row is a {type(obj).__name__}")
    turns = obj.get(turns_key)
    if not isinstance(turns, list):
        raise _Skip("missing_field", f"row has no {turns_key!r}")
    if not turns:
        raise _Skip("empty", f"no {turns_key}")
    return turns, _tools_field(obj.get("tools"))


def load_glaive(root: Path, lang: str, report: LoadReport, strict: bool = False) -> list[dict]:
    """LLaMA-Factory glaive_toolcall_{en,zh}_demo.json: ShareGPT turns human / gpt /
    function_call / observation; tools as a JSON string."""
    if lang not in _GLAIVE_FILES:
        raise ValueError(f"unknown glaive language {lang!r}; one of {tuple(_GLAIVE_FILES)}")
    path = _file(Path(root), _GLAIVE_FILES[lang])

    def convert(obj):
        turns, tools = _llamafactory_row(obj, "conversations")
        messages: list[dict] = []
        if isinstance(obj.get("system"), str) and obj["system"].strip():
            messages.append({"role": "system", "content": obj["system"].strip()})
        pending: list[dict] = []
        for t in turns:
            if not isinstance(t, dict) or not isinstance(t.get("value"), str):
                raise _Skip("missing_field", "a turn needs 'from' and text 'value'")
            kind, value = t.get("from"), t["value"]
            if kind == "human":
                messages.append(_user(value))
                pending = []
            elif kind == "gpt":
                _add_assistant(messages, content=value)
                pending = []
            elif kind == "function_call":
                pending = _function_calls(value)
                _add_assistant(messages, calls=pending)
            elif kind == "observation":
                messages.extend(_tool_messages(_result(value), pending))
                pending = []
            else:
                raise _Skip("missing_field", f"unknown turn kind {kind!r}")
        return tools, messages

    return _convert_rows(_json_items(path), convert, source=f"llamafactory/glaive_{lang}", path=path,
                         report=report, strict=strict)


def _parts(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "value": content}]
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        raise _Skip("missing_field", "message content must be text or a list of parts")
    return content


def _reason_tool_results(text: Any, calls: list[dict]) -> list[dict]:
    """A tool record holds either [{"tool_call_id", "name", "content"}, ...] (one per call) or
    the bare result of a single call."""
    value = _result(text)
    if isinstance(value, list) and value and all(isinstance(v, dict) and "content" in v and "name" in v
                                                 for v in value):
        if not calls:
            raise _Skip("orphan_tool_response", "a tool result with no call before it")
        return [{"role": "tool", "name": str(v["name"]), "content": _result(v["content"])} for v in value]
    return _tool_messages(value, calls)


def load_reason_tool_use(root: Path, report: LoadReport, strict: bool = False) -> list[dict]:
    """LLaMA-Factory reason_tool_use_demo_50.jsonl: OpenAI-style messages whose content is a list of
    parts (text / reasoning / tool_call); tools as a JSON string of OpenAI function specs.
    Reasoning parts and the system prompt that asks for them are dropped (module docstring)."""
    path = _file(Path(root), "llamafactory/reason_tool_use_demo_50.jsonl")

    def convert(obj):
        raw, tools = _llamafactory_row(obj, "messages")
        messages: list[dict] = []
        pending: list[dict] = []
        for m in raw:
            if not isinstance(m, dict):
                raise _Skip("missing_field", "a message is not an object")
            role, parts = m.get("role"), _parts(m.get("content"))
            text = "\n".join(p["value"].strip() for p in parts
                             if p.get("type") == "text" and isinstance(p.get("value"), str)).strip()
            if role == "system":
                continue
            if role == "user":
                messages.append(_user(text))
                pending = []
            elif role == "assistant":
                calls = [c for p in parts if p.get("type") == "tool_call" for c in _function_calls(p.get("value"))]
                messages.append({"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})})
                pending = calls
            elif role == "tool":
                messages.extend(_reason_tool_results(text, pending))
                pending = []
            else:
                raise _Skip("missing_field", f"unknown role {role!r}")
        return tools, messages

    return _convert_rows(_jsonl_items(path), convert, source="llamafactory/reason_tool_use", path=path,
                         report=report, strict=strict)


# ------------------------------------------------------------------------------- registry

LocalLoader = Callable[[Path, LoadReport, bool], list[dict]]


def _bind(fn: Callable, arg: str) -> LocalLoader:
    def loader(root: Path, report: LoadReport, strict: bool = False) -> list[dict]:
        return fn(root, arg, report, strict)

    loader.__name__ = f"{fn.__name__}[{arg}]"
    loader.__doc__ = fn.__doc__
    return loader


LOCAL_SOURCES: dict[str, LocalLoader] = {
    "seal_tools/dev": _bind(load_seal_tools, "dev"),
    "seal_tools/test_in_domain": _bind(load_seal_tools, "test_in_domain"),
    "seal_tools/finetune_dev": _bind(load_seal_tools_finetune, "dev"),
    "seal_tools/finetune_test_in_domain": _bind(load_seal_tools_finetune, "test_in_domain"),
    "toolrl/rlla_sft": _bind(load_toolrl, "rlla_sft"),
    "toolrl/rlla_4k_test": _bind(load_toolrl, "rlla_4k_test"),
    "hammer/apibank_l1": _bind(load_hammer_eval, "apibank_l1"),
    "hammer/apibank_l2": _bind(load_hammer_eval, "apibank_l2"),
    "hammer/toolalpaca": _bind(load_hammer_eval, "toolalpaca"),
    "hammer/masking_example": load_hammer_masking,
    "llamafactory/glaive_en": _bind(load_glaive, "en"),
    "llamafactory/glaive_zh": _bind(load_glaive, "zh"),
    "llamafactory/reason_tool_use": load_reason_tool_use,
}
assert set(LOCAL_SOURCES) == set(SOURCE_UPSTREAM)


def load_local_source(name: str, root: str | os.PathLike, *, strict: bool = False,
                      report: LoadReport | None = None) -> list[dict]:
    """Rows of one registered source under `root` (the folder holding seal_tools/, toolrl/, ...)."""
    if name not in LOCAL_SOURCES:
        raise DataError(f"unknown local source {name!r}; known: {', '.join(LOCAL_SOURCES)}")
    report = report if report is not None else LoadReport()
    return LOCAL_SOURCES[name](Path(root), report, strict)
