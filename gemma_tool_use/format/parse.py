"""The tool-calling chat format, parsing side: model output text back into tool calls.

A model turn is optional free text and one `<tool_call>` block per call, each holding
`{"name": ..., "args": {...}}` (the format itself: format/render.py). `parse_model_output` never
raises: every problem (bad JSON, a block never closed, a stray or nested tag, an unknown tool,
numbers or nesting past the limits, lone surrogates) becomes a ParseError of one of
ERROR_KINDS, which evaluation and rewards count. Whatever the input, the result is strict JSON
with valid Unicode, and its calls render back into a turn that parses to the same calls.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Sequence

from gemma_tool_use.format.render import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

# Error kinds, counted by evaluation and rewards.
BAD_JSON = "bad_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_NAME = "missing_name"
ARGS_NOT_OBJECT = "args_not_object"
UNKNOWN_TOOL = "unknown_tool"
UNTERMINATED_BLOCK = "unterminated_block"
STRAY_CLOSE_TAG = "stray_close_tag"
NESTED_OPEN_TAG = "nested_open_tag"  # '<tool_call>' again inside an open block; the inner block is parsed
NUMBER_TOO_LARGE = "number_too_large"  # int over MAX_INT_DIGITS digits, or a float that overflows to inf
TOO_DEEP = "too_deep"  # JSON nested deeper than MAX_NESTING
INVALID_UNICODE = "invalid_unicode"  # lone surrogates (e.g. the escape "\ud800"), replaced by U+FFFD
# an object of the call repeats a key (e.g. two calls folded into one: {"a": 3, "b": 4, "a": 5});
# the call is kept with the last value, as json.loads keeps it, so BFCL's decode ignores this kind
DUPLICATE_KEY = "duplicate_key"
BAD_TOOLS = "bad_tools"  # the caller's tool list is malformed (the caller's bug, not the model's)
PARSER_ERROR = "parser_error"  # a bug in this parser, reported rather than raised (tests expect none)
ERROR_KINDS = (
    BAD_JSON,
    NOT_AN_OBJECT,
    MISSING_NAME,
    ARGS_NOT_OBJECT,
    UNKNOWN_TOOL,
    UNTERMINATED_BLOCK,
    STRAY_CLOSE_TAG,
    NESTED_OPEN_TAG,
    NUMBER_TOO_LARGE,
    TOO_DEEP,
    INVALID_UNICODE,
    DUPLICATE_KEY,
    BAD_TOOLS,
    PARSER_ERROR,
)

MAX_INT_DIGITS = 4300  # CPython's default int<->str limit: anything longer cannot be written back
MAX_NESTING = 64  # containers, the call object included; real arguments nest a few levels

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class ParseError:
    kind: str
    detail: str
    block: int  # index of the <tool_call> block it concerns (-1: outside blocks)


@dataclass
class ParseResult:
    calls: list[dict] = field(default_factory=list)  # [{"name": str, "args": dict}]
    text: str = ""  # free text outside the blocks, stripped
    errors: list[ParseError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error_kinds(self) -> list[str]:
        return [e.kind for e in self.errors]

    def to_dict(self) -> dict:
        return {
            "calls": self.calls,
            "text": self.text,
            "errors": [{"kind": e.kind, "detail": e.detail, "block": e.block} for e in self.errors],
        }


def parse_model_output(text: str, tools: Sequence[dict] | None = None) -> ParseResult:
    """Extract tool calls from model text. Never raises; every problem becomes a ParseError.

    A call to a tool not in `tools` is kept (scorers decide) but reported as unknown_tool.
    Blocks whose content is not a usable call are dropped and reported. Whatever `text` and
    `tools` are, the result is strict JSON (no NaN/Infinity, no int past MAX_INT_DIGITS, nesting
    within MAX_NESTING) whose strings are valid Unicode (lone surrogates become U+FFFD), so
    `json.dumps(result.to_dict(), ensure_ascii=False).encode("utf-8")` works, and its calls and
    text render back into a model turn (`render_assistant_text`) that parses to the same calls."""
    result = ParseResult()
    try:
        _parse_into(result, text, tools)
    except Exception as e:  # last line of defence for the eval loops; the fuzz tests expect none
        result = ParseResult(errors=[ParseError(PARSER_ERROR, f"{type(e).__name__}: {e}", -1)])
    for e in result.errors:
        e.detail = _SURROGATE.sub("\ufffd", e.detail if len(e.detail) <= 500 else e.detail[:500] + "...")
    return result


def _parse_into(result: ParseResult, text: Any, tools: Any) -> None:
    if not isinstance(text, str):
        result.errors.append(ParseError(NOT_AN_OBJECT, f"model output is {type(text).__name__}, not text", -1))
        return
    known = _known_tools(tools, result)
    if _SURROGATE.search(text):
        text = _SURROGATE.sub("\ufffd", text)
        result.errors.append(ParseError(INVALID_UNICODE, "lone surrogate in the model text, replaced by U+FFFD", -1))
    free: list[str] = []
    pos, block = 0, 0
    while True:
        start = text.find(TOOL_CALL_OPEN, pos)
        stray = text.find(TOOL_CALL_CLOSE, pos)
        if stray != -1 and (start == -1 or stray < start):
            result.errors.append(ParseError(STRAY_CLOSE_TAG, f"'{TOOL_CALL_CLOSE}' without an opening tag", -1))
            free.append(text[pos:stray])
            pos = stray + len(TOOL_CALL_CLOSE)
            continue
        if start == -1:
            free.append(text[pos:])
            break
        free.append(text[pos:start])
        body_start = start + len(TOOL_CALL_OPEN)
        end = text.find(TOOL_CALL_CLOSE, body_start)
        if end == -1:
            result.errors.append(ParseError(UNTERMINATED_BLOCK, f"'{TOOL_CALL_OPEN}' is never closed", block))
            break
        body = text[body_start:end]
        call, errors = _parse_block(body, block, known)
        if call is None:  # a '</tool_call>' inside one of the call's strings ended the block too early?
            json_end = _close_after_json(text, body_start)
            if json_end is not None and json_end > end:
                retry, retry_errors = _parse_block(text[body_start:json_end], block, known)
                if retry is not None:
                    body, end, call, errors = text[body_start:json_end], json_end, retry, retry_errors
        inner = body.rfind(TOOL_CALL_OPEN)
        if call is None and inner != -1:  # not an '<tool_call>' inside a JSON string: a restarted call
            result.errors.append(
                ParseError(
                    NESTED_OPEN_TAG,
                    f"'{TOOL_CALL_OPEN}' again before '{TOOL_CALL_CLOSE}'; the outer block is dropped",
                    block,
                )
            )
            pos, block = body_start + inner, block + 1
            continue
        result.errors.extend(errors)
        if call is not None:
            result.calls.append(call)
        pos, block = end + len(TOOL_CALL_CLOSE), block + 1
    free_text = "".join(free)
    while TOOL_CALL_OPEN in free_text or TOOL_CALL_CLOSE in free_text:  # forged by joining, e.g. '<tool_' + 'call>'
        free_text = free_text.replace(TOOL_CALL_OPEN, "").replace(TOOL_CALL_CLOSE, "")
    result.text = free_text.strip()


_JSON_DECODER = json.JSONDecoder()
_BLANK = " \t\r\n"


def _close_after_json(text: str, start: int) -> int | None:
    """Where a `</tool_call>` right after the JSON value that starts at `start` begins, or None.
    A grammar-constrained string may hold '</tool_call>' as is (llguidance's JSON has no '\\/'
    escape, generation/tool_grammar.py); the block then ends after the value, not inside it."""
    i = start
    while i < len(text) and text[i] in _BLANK:
        i += 1
    try:
        _, j = _JSON_DECODER.raw_decode(text, i)
    except (ValueError, RecursionError):
        return None
    while j < len(text) and text[j] in _BLANK:
        j += 1
    return j if text.startswith(TOOL_CALL_CLOSE, j) else None


def _known_tools(tools: Any, result: ParseResult) -> set[str] | None:
    """Names of the listed tools (None: no list, so no unknown_tool check); a malformed list is
    reported once as bad_tools and its well-formed entries still count."""
    if tools is None:
        return None
    if isinstance(tools, (str, bytes, bytearray, Mapping)):
        items = None
    else:
        try:
            items = list(tools)
        except Exception:
            items = None
    if items is None:
        result.errors.append(
            ParseError(BAD_TOOLS, f"tools must be a list of tool objects, not {type(tools).__name__}", -1)
        )
        return None
    names: set[str] = set()
    problems: list[str] = []
    for i, t in enumerate(items):
        try:
            name = t.get("name") if isinstance(t, Mapping) else None
            if not isinstance(t, Mapping):
                problems.append(f"tools[{i}] is a {type(t).__name__}, not an object")
            elif not isinstance(name, str) or not name:
                problems.append(f"tools[{i}] has no non-empty string 'name'")
            else:
                if _SURROGATE.search(name):
                    problems.append(f"tools[{i}]: 'name' is not valid Unicode")
                    name = _SURROGATE.sub("\ufffd", name)
                names.add(name)
                params = t.get("parameters")
                if params is not None and not isinstance(params, Mapping):
                    problems.append(f"tools[{i}] ({name!r}): 'parameters' is a {type(params).__name__}, not an object")
        except Exception as e:  # a Mapping that misbehaves
            problems.append(f"tools[{i}]: {type(e).__name__}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        result.errors.append(ParseError(BAD_TOOLS, problems[0] + more, -1))
    return names or None


class _NumberTooLarge(Exception):
    pass


class _TooDeep(Exception):
    pass


def _parse_int(s: str) -> int:
    if len(s) - s.startswith("-") > MAX_INT_DIGITS:
        raise _NumberTooLarge(f"integer with {len(s) - s.startswith('-')} digits (limit {MAX_INT_DIGITS})")
    try:
        return int(s)
    except ValueError as e:  # an interpreter with a lower int_max_str_digits
        raise _NumberTooLarge(str(e)) from None


def _parse_float(s: str) -> float:
    x = float(s)
    if not math.isfinite(x):
        raise _NumberTooLarge(f"number {s[:40]}{'...' if len(s) > 40 else ''} overflows a float")
    return x


def _reject_constant(s: str):
    raise ValueError(f"{s} is not JSON")


def _clean(value: Any, depth: int, flags: set) -> Any:
    """A copy of a decoded JSON value with lone surrogates replaced by U+FFFD (flags gets
    'unicode'); raises _TooDeep past MAX_NESTING containers. Recursion is bounded by MAX_NESTING."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            flags.add("unicode")
            return _SURROGATE.sub("\ufffd", value)
        return value
    if isinstance(value, (dict, list)) and depth >= MAX_NESTING:
        raise _TooDeep
    if isinstance(value, dict):
        return {_clean(k, depth, flags): _clean(v, depth + 1, flags) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v, depth + 1, flags) for v in value]
    return value


def _parse_block(body: str, block: int, known: set | None) -> tuple[dict | None, list[ParseError]]:
    """(the call or None, its errors) for one block's content."""
    too_deep = ParseError(TOO_DEEP, f"JSON nested deeper than {MAX_NESTING} levels", block)
    repeated: list[str] = []

    def last_value_wins(pairs: list) -> dict:
        seen = set()
        for k, _ in pairs:
            if k in seen:
                repeated.append(k)
            seen.add(k)
        return dict(pairs)

    try:
        obj = json.loads(
            body.strip(),
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_reject_constant,
            object_pairs_hook=last_value_wins,
        )
    except _NumberTooLarge as e:
        return None, [ParseError(NUMBER_TOO_LARGE, str(e), block)]
    except RecursionError:
        return None, [too_deep]
    except ValueError as e:  # JSONDecodeError, NaN/Infinity
        return None, [ParseError(BAD_JSON, f"{e}", block)]
    flags: set = set()
    try:
        obj = _clean(obj, 0, flags)
    except _TooDeep:
        return None, [too_deep]
    if not isinstance(obj, dict):
        return None, [ParseError(NOT_AN_OBJECT, f"call is a JSON {type(obj).__name__}", block)]
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, [ParseError(MISSING_NAME, "call has no string 'name'", block)]
    args = obj.get("args", {})
    if not isinstance(args, dict):
        return None, [ParseError(ARGS_NOT_OBJECT, f"'args' is a JSON {type(args).__name__}", block)]
    errors = []
    if flags:
        errors.append(ParseError(INVALID_UNICODE, "lone surrogate in a string, replaced by U+FFFD", block))
    if repeated:
        keys = ", ".join(f"'{k}'" for k in dict.fromkeys(repeated))
        errors.append(ParseError(DUPLICATE_KEY, f"repeated key(s) {keys}; the last value is kept", block))
    if known is not None and name not in known:
        errors.append(ParseError(UNKNOWN_TOOL, f"'{name}' is not among the listed tools", block))
    return {"name": name, "args": args}, errors
