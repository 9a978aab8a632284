"""Parser hardening (issue 12): `parse_model_output` never raises, whatever the text and tools,
and everything it returns is strict, UTF-8-encodable JSON that renders back into a model turn
(the multi-turn hot path: parsed calls become the next prompt's history).

A seeded mutation fuzzer builds thousands of outputs from a handful of valid model outputs;
named failure cases check their specific error kinds."""

import json
import random

import pytest

from gemma_tool_use.format import parse, render

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
ADD = {"name": "calc.add", "description": "Add.", "parameters": {"type": "object", "properties": {}}}
TOOLS = [WEATHER, ADD]


def call_text(name, args) -> str:
    return render.render_call({"name": name, "args": args})


SEEDS = [
    call_text("get_weather", {"city": "Paris"}),
    call_text("get_weather", {"city": "Paris"}) + "\n" + call_text("calc.add", {"a": 1, "b": -2.5e3}),
    "Let me check.\n"
    + call_text("calc.add", {"a": 12, "b": 0.5, "opts": {"round": True, "tags": ["x", None]}})
    + "\nDone.",
    "I cannot help with that. 😀 élan",
    # What the renderer writes for awkward strings: '</' escaped, a real astral char, quotes, newlines.
    call_text("get_weather", {"city": 'say "hi"\n<b>x</b> </tool_call> <tool_call> 😀', "n": [1, [2, [3, {}]]]}),
    '<tool_call>\n{"name": "get_weather", "args": {"city": "\\ud83d\\ude00 \\u00e9"}}\n</tool_call>',
]

HUGE_INT = "1" * 4301
DEEP = "[" * 10_000
SNIPPETS = [
    render.TOOL_CALL_OPEN,
    render.TOOL_CALL_CLOSE,
    render.TOOL_CALL_OPEN * 2,
    render.TOOL_CALL_CLOSE * 2,
    "<tool_",
    "call>",
    "</tool_",
    "<\\/tool_call>",
    "<end_of_turn>",
    "<tool_response>",
    '"\\ud800"',
    "\\ud800",
    "\\udfff",
    "\\ud83d",
    "\\ude00",
    '"\\udc00\\ud800"',
    "\ud800",
    "\udfff",
    HUGE_INT,
    "-" + "9" * 5000,
    "1e400",
    "-1e999",
    "1" * 400 + ".5",
    "NaN",
    "Infinity",
    "-Infinity",
    DEEP,
    DEEP + "]" * 10_000,
    '{"a": ' * 3000,
    "[" * 150 + "]" * 150,
    '"name": "x"',
    '"args": {}',
    '"args": []',
    '{"name": 1}',
    "null",
    "true",
    '""',
    "{}",
    "[]",
    "\x00",
    "\x1f",
    "\ufeff",
    "\u2028",
    "\\",
    '\\"',
    "\\u",
    "\\u12",
    "\n" * 3,
]
CHARS = list('{}[]",:\\ \n\t/<>_-.0123456789eEabnu') + ["😀", "é", "\u00a0", "\ud800", "\udbff", "\udc00", "\x00"]
TOOL_VARIANTS = [
    None,
    [],
    TOOLS,
    (WEATHER,),
    "abc",
    3,
    {"name": "f"},
    [1, None],
    [{"description": "no name"}],
    [{"name": ["unhashable"]}],
    [{"name": ""}],
    [WEATHER, {"name": "f", "parameters": "x"}],
    [{"name": "\ud800"}],
    b"bytes",
]


def random_unicode(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.5:
            out.append(chr(rng.randrange(32, 127)))
        elif r < 0.7:
            out.append(chr(rng.randrange(0xD800, 0xE000)))  # raw surrogates
        elif r < 0.85:
            out.append(f"\\u{rng.randrange(0xD800, 0xE000):04x}")  # surrogate escapes
        else:
            out.append(chr(rng.randrange(0x80, 0x110000)))
    return "".join(out)


def mutate(rng: random.Random, text: str) -> str:
    op = rng.randrange(7)
    i = rng.randrange(len(text) + 1)
    if op == 0:  # insert a char
        return text[:i] + rng.choice(CHARS) + text[i:]
    if op == 1:  # delete a span
        return text[:i] + text[i + rng.randrange(1, 6) :]
    if op == 2:  # insert a snippet
        return text[:i] + rng.choice(SNIPPETS) + text[i:]
    if op == 3:  # duplicate a span (often a tag)
        j = min(len(text), i + rng.randrange(1, 20))
        return text[:j] + text[i:j] + text[j:]
    if op == 4:  # random unicode
        return text[:i] + random_unicode(rng, rng.randrange(1, 8)) + text[i:]
    if op == 5:  # a snippet as a well-placed argument value, so the JSON gets that far
        return call_text("get_weather", {"city": "X"}).replace('"X"', rng.choice(SNIPPETS + [HUGE_INT, '"\\ud800"']))
    return text[:i]  # truncate


def fuzz_cases(n: int = 20_000, seed: int = 12):
    rng = random.Random(seed)
    for _ in range(n):
        text = rng.choice(SEEDS)
        for _ in range(rng.randrange(1, 4)):
            text = mutate(rng, text)
        yield text, TOOLS if rng.random() < 0.5 else rng.choice(TOOL_VARIANTS)
    for s in (SEEDS[1], SEEDS[2], SEEDS[4]):  # every truncation of a few samples
        for i in range(len(s) + 1):
            yield s[:i], TOOLS


def check(text, tools, tokenizer=None) -> parse.ParseResult:
    res = parse.parse_model_output(text, tools)
    assert isinstance(res, parse.ParseResult)
    assert set(res.error_kinds) <= set(parse.ERROR_KINDS), res.error_kinds
    assert parse.PARSER_ERROR not in res.error_kinds, res.errors  # the catch-all must never be needed
    # Strict JSON (no NaN/Infinity), valid UTF-8: what eval/predict write per record.
    json.dumps(res.to_dict(), ensure_ascii=False, allow_nan=False).encode("utf-8")
    # Multi-turn: the parsed turn goes back into the history and is rendered (and tokenized) again.
    msg = {"role": "assistant", "content": res.text, "tool_calls": res.calls}
    render.validate_conversation({"messages": [{"role": "user", "content": "q"}, msg]})
    back = render.render_assistant_text(msg)
    back.encode("utf-8")
    assert render.TOOL_CALL_OPEN not in res.text and render.TOOL_CALL_CLOSE not in res.text
    assert parse.parse_model_output(back).calls == res.calls
    if tokenizer is not None:
        tokenizer.encode(back)
    return res


def test_fuzzed_outputs_never_raise_and_serialise(tokenizer):
    failures = []
    n = 0
    for text, tools in fuzz_cases():
        n += 1
        try:
            check(text, tools, tokenizer)
        except Exception as e:  # collect, so one run reports the whole picture
            failures.append(f"{type(e).__name__}: {str(e)[:120]} <- {text[:80]!r}")
    assert n > 20_000
    assert not failures, f"{len(failures)}/{n} failed, e.g.\n" + "\n".join(failures[:15])


def arg_call(value_json: str, name: str = '"get_weather"') -> str:
    return f'<tool_call>\n{{"name": {name}, "args": {{"city": {value_json}}}}}\n</tool_call>'


@pytest.mark.parametrize(
    "text,kind",
    [
        (arg_call(HUGE_INT), parse.NUMBER_TOO_LARGE),
        (arg_call("-" + "9" * 5000), parse.NUMBER_TOO_LARGE),
        (arg_call("1e400"), parse.NUMBER_TOO_LARGE),
        (arg_call("-1e999"), parse.NUMBER_TOO_LARGE),
        (arg_call("NaN"), parse.BAD_JSON),
        (arg_call("Infinity"), parse.BAD_JSON),
        (arg_call(DEEP), parse.TOO_DEEP),
        (arg_call(DEEP + "]" * 10_000), parse.TOO_DEEP),
        (arg_call("[" * 200 + "]" * 200), parse.TOO_DEEP),  # json can parse it; nothing downstream should have to
        (arg_call('{"a": ' * 3000 + "1" + "}" * 3000), parse.TOO_DEEP),
        ("<tool_call>\n" + DEEP + "\n</tool_call>", parse.TOO_DEEP),
    ],
)
def test_unusable_values_drop_the_call_with_their_kind(text, kind):
    res = check(text, TOOLS)
    assert kind in res.error_kinds and res.calls == []


def test_huge_but_representable_int_is_kept():
    res = check(arg_call("9" * 4300), TOOLS)
    assert res.ok and res.calls[0]["args"]["city"] == int("9" * 4300)


def test_nesting_up_to_the_limit_is_kept():
    depth = parse.MAX_NESTING - 2  # the call object and 'args' are two levels
    res = check(arg_call("[" * depth + "]" * depth), TOOLS)
    assert res.ok, res.errors


@pytest.mark.parametrize(
    "text,where",
    [
        (arg_call('"\\ud800"'), "args"),
        (arg_call('"a\\udfffb"'), "args"),
        (arg_call('"\\ude00\\ud83d"'), "args"),  # low before high: two lone halves
        (arg_call('"\ud800"'), "args"),  # a raw surrogate inside the JSON string
        (arg_call('"x"', name='"get_\\ud800weather"'), "name"),
        ('<tool_call>\n{"name": "get_weather", "args": {"\\udc00": 1}}\n</tool_call>', "key"),
        ("bad \ud800 text", "text"),
    ],
)
def test_lone_surrogates_become_replacement_chars(text, where):
    res = check(text, TOOLS)
    assert parse.INVALID_UNICODE in res.error_kinds
    dumped = json.dumps(res.to_dict(), ensure_ascii=False)
    assert "\ufffd" in dumped
    if where != "text":
        assert len(res.calls) == 1  # kept, like unknown_tool: scorers decide
    if where == "name":
        assert res.calls[0]["name"] == "get_\ufffdweather" and parse.UNKNOWN_TOOL in res.error_kinds


def test_surrogate_pair_escapes_are_fine():
    res = check(arg_call('"\\ud83d\\ude00"'), TOOLS)
    assert res.ok and res.calls[0]["args"]["city"] == "😀"


@pytest.mark.parametrize(
    "tools",
    [
        "abc",
        3,
        {"name": "get_weather"},
        [1, None],
        [{"description": "no name"}],
        [{"name": ["unhashable"]}],
        [{"name": ""}],
        b"bytes",
        [WEATHER, {"name": "f", "parameters": "x"}],
        [WEATHER, "get_weather"],
    ],
)
def test_bad_tools_are_reported_and_the_call_still_parses(tools):
    res = check(call_text("get_weather", {"city": "Paris"}), tools)
    assert res.error_kinds.count(parse.BAD_TOOLS) == 1
    assert res.calls == [{"name": "get_weather", "args": {"city": "Paris"}}]
    assert parse.UNKNOWN_TOOL not in res.error_kinds  # WEATHER, where listed, is still known


def test_bad_tools_keep_the_good_names():
    res = check(call_text("nope", {}), [WEATHER, 7])
    assert sorted(res.error_kinds) == sorted([parse.BAD_TOOLS, parse.UNKNOWN_TOOL])


def test_tools_may_be_any_iterable_of_tools():
    res = check(call_text("get_weather", {"city": "P"}), (t for t in TOOLS))
    assert res.ok


def test_nested_open_tag_is_reported_and_the_inner_call_recovered():
    text = '<tool_call>\n{"name": "get_wea' + call_text("get_weather", {"city": "Paris"})
    res = check(text, TOOLS)
    assert res.error_kinds == [parse.NESTED_OPEN_TAG]
    assert res.calls == [{"name": "get_weather", "args": {"city": "Paris"}}]


def test_open_tag_inside_a_json_string_is_just_text():
    res = check('<tool_call>\n{"name": "get_weather", "args": {"city": "<tool_call>"}}\n</tool_call>', TOOLS)
    assert res.ok and res.calls[0]["args"]["city"] == "<tool_call>"


def test_raw_close_tag_inside_a_json_string_stays_in_the_string():
    """A grammar-constrained string holds '</tool_call>' as is (no '\\/' escape in llguidance's
    JSON): the block ends after the call's JSON value, not inside its string."""
    res = check('<tool_call>\n{"name": "get_weather", "args": {"city": "a</tool_call>b"}}\n</tool_call>', TOOLS)
    assert res.ok and res.calls == [{"name": "get_weather", "args": {"city": "a</tool_call>b"}}]
    # a block whose JSON is broken still ends at the first closing tag
    res = check('<tool_call>\n{"name": "get_weather", "args": {"city": "a</tool_call>b"\n</tool_call>', TOOLS)
    assert parse.BAD_JSON in res.error_kinds and parse.STRAY_CLOSE_TAG in res.error_kinds and res.calls == []


@pytest.mark.parametrize(
    "text,kinds",
    [
        ("<tool_call>", [parse.UNTERMINATED_BLOCK]),
        ("</tool_call>", [parse.STRAY_CLOSE_TAG]),
        (SEEDS[0] + "\n</tool_call>", [parse.STRAY_CLOSE_TAG]),
        (SEEDS[0] + "\n<tool_call>\n{", [parse.UNTERMINATED_BLOCK]),
        (
            "<tool_call><tool_call></tool_call></tool_call>",
            [parse.NESTED_OPEN_TAG, parse.BAD_JSON, parse.STRAY_CLOSE_TAG],
        ),
    ],
)
def test_unbalanced_tags(text, kinds):
    res = check(text, TOOLS)
    assert res.error_kinds == kinds


def test_text_after_calls_is_free_text_not_an_error():
    res = check(SEEDS[0] + "\nAnything else?", TOOLS)
    assert res.ok and res.text == "Anything else?" and len(res.calls) == 1


def test_tags_forged_by_removing_a_stray_tag_do_not_reach_the_text():
    res = check("a <tool_</tool_call>call> b </tool_</tool_call>call>", TOOLS)
    assert render.TOOL_CALL_OPEN not in res.text and render.TOOL_CALL_CLOSE not in res.text
    assert parse.STRAY_CLOSE_TAG in res.error_kinds


def test_non_text_output_is_reported():
    for bad in (None, 3, b"<tool_call>", ["x"]):
        res = check(bad, TOOLS)
        assert res.error_kinds == [parse.NOT_AN_OBJECT]
