"""Stage 5 rewards: one table of completions with every term's value computed by hand.

ToolRL partial credit: S = m(gold names, predicted names) + sum over gold calls of the matched
prediction's [m(gold keys, predicted keys) + number of matching values], m = |A∩B| / |A∪B| on
multisets; S_max = 1 + sum_g (1 + |args_g|); correctness = 2 * S / S_max - 1.
"""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from gemma_tool_use.format.render import render_call
from gemma_tool_use.training.grpo import rewards as R


def tool(name, *params):
    return {
        "name": name,
        "description": f"{name} tool",
        "parameters": {"type": "object", "properties": {p: {"type": "string"} for p in params}},
    }


TOOLS = [
    tool("get_weather", "city", "unit"),
    tool("get_time", "tz"),
    tool("set_thermostat", "degrees"),
    tool("list_alarms"),
]


def call(name, **args):
    return {"name": name, "args": args}


def out(*calls, text=""):
    """A model turn: optional free text, then one <tool_call> block per call."""
    return "\n".join(([text] if text else []) + [render_call(c) for c in calls])


PARIS_C = call("get_weather", city="Paris", unit="celsius")
PARIS = call("get_weather", city="Paris")
ROME = call("get_weather", city="Rome")
UTC = call("get_time", tz="UTC")
TEXT = "None of the available tools can book a flight, sorry."
BAD_JSON = '<tool_call>\n{"name": "get_weather", "args": {"city": "Paris"}\n</tool_call>'

# (id, completion, gold calls, stop reason, expected: format, correctness, abstention, call_count, exact_match)
CASES = [
    # S = 1 (names) + [1 (keys) + 2 (values)] = 4 = S_max -> 2*4/4 - 1 = 1
    ("exact_single", out(PARIS_C), [PARIS_C], "stop", 1.0, 1.0, 0.0, 1.0, 1.0),
    # S = 1 + [1 + 1] + [1 + 1] = 5 = S_max (order-free one-to-one matching) -> 1
    ("parallel_swapped_same_name", out(ROME, PARIS), [PARIS, ROME], "stop", 1.0, 1.0, 0.0, 1.0, 1.0),
    # S = 1 + [1 + 1] + [1 + 1] = 5 = S_max -> 1
    ("parallel_swapped_two_tools", out(UTC, PARIS), [PARIS, UTC], "stop", 1.0, 1.0, 0.0, 1.0, 1.0),
    # keys m({city,unit},{city}) = 1/2; S = 1 + 1/2 + 1 = 2.5, S_max = 4 -> 2*2.5/4 - 1 = 0.25
    ("missing_argument", out(PARIS), [PARIS_C], "stop", 1.0, 0.25, 0.0, 1.0, 0.0),
    # keys m({city},{city,unit}) = 1/2; S = 1 + 1/2 + 1 = 2.5, S_max = 3 -> 2*2.5/3 - 1 = 2/3
    ("extra_argument", out(PARIS_C), [PARIS], "stop", 1.0, 2 / 3, 0.0, 1.0, 0.0),
    # city wrong: S = 1 + 1 + 1 = 3, S_max = 4 -> 2*3/4 - 1 = 0.5
    (
        "wrong_value",
        out(call("get_weather", city="London", unit="celsius")),
        [PARIS_C],
        "stop",
        1.0,
        0.5,
        0.0,
        1.0,
        0.0,
    ),
    # BFCL drops ' ', ',', '-' and case: both are "sanfranciscoca" -> S = 1 + 1 + 1 = 3 = S_max -> 1
    (
        "string_case_punct_space",
        out(call("get_weather", city=" san-francisco CA")),
        [call("get_weather", city="San Francisco, CA")],
        "stop",
        1.0,
        1.0,
        0.0,
        1.0,
        1.0,
    ),
    # BFCL does not drop '!': value wrong; S = 1 + 1 + 0 = 2, S_max = 3 -> 2*2/3 - 1 = 1/3
    ("string_bang_not_normalised", out(call("get_weather", city="Paris!")), [PARIS], "stop", 1.0, 1 / 3, 0.0, 1.0, 0.0),
    # 20.0 == 20: S = 1 + 1 + 1 = 3 = S_max -> 1
    (
        "int_for_float",
        out(call("set_thermostat", degrees=20)),
        [call("set_thermostat", degrees=20.0)],
        "stop",
        1.0,
        1.0,
        0.0,
        1.0,
        1.0,
    ),
    # ... but a float for an int is BFCL's type_error: S = 1 + [1 + 0] = 2 of 3 -> 1/3
    (
        "float_for_int",
        out(call("set_thermostat", degrees=20.0)),
        [call("set_thermostat", degrees=20)],
        "stop",
        1.0,
        1 / 3,
        0.0,
        1.0,
        0.0,
    ),
    # no arguments: keys m(∅, ∅) = 1; S = 1 + 1 = 2 = S_max -> 1
    ("no_argument_call", out(call("list_alarms")), [call("list_alarms")], "stop", 1.0, 1.0, 0.0, 1.0, 1.0),
    # names m({get_weather},{get_time}) = 0, nothing to match: S = 0, S_max = 3 -> -1
    ("wrong_tool_name", out(call("get_time", tz="Paris")), [PARIS], "stop", 1.0, -1.0, 0.0, 1.0, 0.0),
    # a tool not offered (parse error unknown_tool, format 0) is a wrong name: S = 0 -> -1; one call each
    ("unknown_tool_name", out(call("get_weather_v2", city="Paris")), [PARIS], "stop", 0.0, -1.0, 0.0, 1.0, 0.0),
    # no parsed call: S = 0 -> -1; count 1 - |0-1|/1 = 0
    ("bad_json", BAD_JSON, [PARIS], "stop", 0.0, -1.0, 0.0, 0.0, 0.0),
    # cut inside the 2nd block: parsed [Paris]; names m({w,w},{w}) = 1/2; S = 1/2 + [1 + 1] = 2.5,
    # S_max = 1 + 2 + 2 = 5 -> 2*2.5/5 - 1 = 0; count 1 - 1/2 = 0.5
    (
        "truncated_mid_call",
        out(PARIS) + '\n<tool_call>\n{"name": "get_wea',
        [PARIS, ROME],
        "length",
        0.0,
        0.0,
        0.0,
        0.5,
        0.0,
    ),
    # complete call but cut before <end_of_turn>: only format (and exact match) suffer
    ("truncated_after_call", out(PARIS), [PARIS], "length", 0.0, 1.0, 0.0, 1.0, 0.0),
    ("right_abstention", TEXT, [], "stop", 1.0, 0.0, 1.0, 0.0, 1.0),
    # needed a call, answered in text: S = 0 -> -1; count 1 - |0-1|/1 = 0
    (
        "wrong_abstention",
        TEXT,
        [PARIS],
        "stop",
        0.0,
        -1.0,
        0.0,
        0.0,
        0.0,
    ),  # text where a call is needed: no format credit
    # a tidy call where no tool fits earns no format credit (it would reward calling there)
    ("call_on_no_call_row", out(PARIS), [], "stop", 0.0, 0.0, -1.0, 0.0, 0.0),
    # an attempted (unparseable) call is still a call
    ("bad_json_on_no_call_row", BAD_JSON, [], "stop", 0.0, 0.0, -1.0, 0.0, 0.0),
    # free text beside a call is stray: format 0; content still full marks
    ("text_beside_calls", out(PARIS_C, text="Sure, let me check."), [PARIS_C], "stop", 0.0, 1.0, 0.0, 1.0, 0.0),
    # names m({w},{w,w}) = 1/2; best match 1 + 1; S = 2.5, S_max = 3 -> 2*2.5/3 - 1 = 2/3; count 1 - 1/2
    ("duplicate_calls", out(PARIS, PARIS), [PARIS], "stop", 1.0, 2 / 3, 0.0, 0.5, 0.0),
    # pairs (gold x pred): (Paris,c)x(Rome,c) = 1+1, (Paris,c)x(Paris,c) = 1+2, (Rome,f)x(Rome,c) = 1+1,
    # (Rome,f)x(Paris,c) = 1+0; in order 2+1 = 3, best 3+2 = 5: S = 1 + 5 = 6, S_max = 1+3+3 = 7 -> 5/7
    (
        "parallel_best_assignment",
        out(call("get_weather", city="Rome", unit="celsius"), PARIS_C),
        [PARIS_C, call("get_weather", city="Rome", unit="fahrenheit")],
        "stop",
        1.0,
        5 / 7,
        0.0,
        1.0,
        0.0,
    ),
    # names m({w,t},{w}) = 1/2; S = 1/2 + [1 + 1] = 2.5, S_max = 5 -> 0; count 1 - 1/2
    ("parallel_one_missing", out(PARIS), [PARIS, UTC], "stop", 1.0, 0.0, 0.0, 0.5, 0.0),
    # names m({w},{w,None}) = 1/2 (unknown tool grows the union); S = 1/2 + 2 = 2.5, S_max = 3 -> 2/3
    (
        "right_call_plus_unknown",
        out(PARIS, call("book_flight", to="Paris")),
        [PARIS],
        "stop",
        0.0,
        2 / 3,
        0.0,
        0.5,
        0.0,
    ),
    # an invented tool result after the call is stray
    (
        "invented_tool_response",
        out(PARIS) + '\n<tool_response>\n{"name": "get_weather", "result": 18}\n</tool_response>',
        [PARIS],
        "stop",
        0.0,
        1.0,
        0.0,
        1.0,
        0.0,
    ),
    # a stray marker in a plain answer: format 0, but it did abstain
    ("marker_in_text_answer", TEXT + "<start_of_turn>user\nthanks", [], "stop", 0.0, 0.0, 1.0, 0.0, 0.0),
    # an empty turn is no answer
    ("empty_turn", "", [], "stop", 0.0, 0.0, 0.0, 0.0, 0.0),
    # a trailing stop string left on the text is not stray
    ("trailing_end_of_turn", out(PARIS) + "<end_of_turn>", [PARIS], "stop", 1.0, 1.0, 0.0, 1.0, 1.0),
    # a '</tool_call>' inside a JSON string is argument content, not a tag
    (
        "tag_inside_string_arg",
        out(call("get_weather", city="</tool_call> x")),
        [call("get_weather", city="</tool_call>x")],
        "stop",
        1.0,
        1.0,
        0.0,
        1.0,
        1.0,
    ),
]
TERMS = ("format", "correctness", "abstention", "call_count", "exact_match")
FNS = (R.format_reward, R.correctness_reward, R.abstention_reward, R.call_count_reward, R.exact_match_reward)


def columns(cases):
    return {"tools": [TOOLS] * len(cases), "gold_calls": [c[2] for c in cases], "stop_reasons": [c[3] for c in cases]}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_table_row(case):
    _, completion, gold, stop, *expected = case
    cols = {"tools": [TOOLS], "gold_calls": [gold], "stop_reasons": [stop], "categories": ["x"]}
    got = [fn(["prompt"], [completion], **cols)[0] for fn in FNS]
    assert got == pytest.approx(expected, abs=1e-12), dict(zip(TERMS, got))


def test_batch_equals_rows_and_binary_mode():
    """All rows in one batch give the table; binary mode's total is the exact-match column."""
    comps = [c[1] for c in CASES]
    cols = columns(CASES)
    for k, fn in enumerate(FNS):
        assert fn([None] * len(CASES), comps, **cols) == pytest.approx([c[4 + k] for c in CASES], abs=1e-12)
    binary = R.build_reward_fns(
        SimpleNamespace(
            mode="binary", format_weight=1.0, correctness_weight=1.0, abstention_weight=1.0, call_count_weight=0.5
        )
    )
    total = [
        sum(w * v for w, v in zip((w for _, w, _ in binary), vals))
        for vals in zip(*(fn(None, comps, **cols) for _, _, fn in binary))
    ]
    assert total == [c[8] for c in CASES]
    assert all(R.exact_match(c[1], TOOLS, c[2], c[3]) == bool(c[8]) for c in CASES)


def test_exact_match_probe_default_ignores_stop():
    assert R.exact_match(out(PARIS), TOOLS, [PARIS]) is True  # probe: no stop reason given
    assert R.exact_match(out(PARIS), TOOLS, [PARIS], "length") is False
    assert R.exact_match(out(PARIS, PARIS), TOOLS, [PARIS, PARIS]) is True
    assert R.exact_match(out(PARIS, PARIS), TOOLS, [PARIS, ROME]) is False


def test_build_reward_fns_partial_weights():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "mode": "partial",
            "format_weight": 0.5,
            "correctness_weight": 2.0,
            "abstention_weight": 1.0,
            "call_count_weight": 0.25,
        }
    )
    fns = R.build_reward_fns(cfg)
    assert [(n, w) for n, w, _ in fns] == [
        ("format", 0.5),
        ("correctness", 2.0),
        ("abstention", 1.0),
        ("call_count", 0.25),
        ("exact_match", 0.0),
    ]
    assert [f for _, _, f in fns] == [
        R.format_reward,
        R.correctness_reward,
        R.abstention_reward,
        R.call_count_reward,
        R.exact_match_reward,
    ]
    binary = R.build_reward_fns(OmegaConf.merge(cfg, {"mode": "binary"}))
    assert [(n, w) for n, w, _ in binary][0] == ("exact_match", 1.0)
    assert all(w == 0.0 for _, w, _ in binary[1:])
    with pytest.raises(ValueError, match="partial"):
        R.build_reward_fns(SimpleNamespace(mode="ternary"))


def test_values_match_rules():
    m = R.values_match
    assert m(1.0, 1) and m(2.5, 2.5) and not m(1, 1.5)
    assert not m(1, 1.0) and not m(20, 20.0)  # BFCL: a float for an integer parameter is a type error
    assert not m(True, 1) and not m(1, True) and m(False, False)
    assert not m("5", 5) and not m(None, "") and m(None, None)
    assert m(["New York", 1.0], ["new york", 1]) and not m(["a", "b"], ["b", "a"]) and not m([1], [1, 1])
    assert m({"tags": ["A b", "c"], "n": 2.0}, {"n": 2, "tags": ["ab", "C"]}) and not m({"n": 2}, {"n": 2.0})
    assert not m({"a": 1}, {"a": 1, "b": 2}) and not m({"a": 1}, {"A": 1})
    assert m("It's 5 p.m.", "its 5 pm") is False  # ' -> " (BFCL), so the quote is kept
    assert m("It's", 'It"s')


def test_bfcl_standardize_regex_unchanged():
    """Our copy of BFCL's standardize_string regex matches the installed bfcl_eval (read as text:
    importing its checker takes seconds)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("bfcl_eval not installed")
    src = (Path(list(spec.submodule_search_locations)[0]) / "eval_checker" / "ast_eval" / "ast_checker.py").read_text()
    assert f'regex_string = r"{R.BFCL_STANDARDIZE_REGEX}"' in src
    assert 'return re.sub(regex_string, "", input_string).lower().replace("\'", \'"\')' in src


def test_best_assignment_is_exact_and_greedy_fallback_is_bounded():
    # greedy would take 3 (0-0) then 0 (1-1) = 3; the best assignment is 2 + 2 = 4
    assert R._best_assignment([[3, 2], [2, 0]]) == 4
    assert R._best_assignment([[1], [5], [2]]) == 5  # more golds than predictions
    many = [[float(g == p) for p in range(12)] for g in range(12)]  # 12! assignments: greedy path
    assert R._best_assignment(many) == 12


def test_a_repeated_key_zeroes_the_format_term_only():
    folded = '<tool_call>\n{"name": "get_weather", "args": {"city": "Paris", "city": "Rome"}}\n</tool_call>'
    cols = dict(tools=[TOOLS], gold_calls=[[PARIS, ROME]], stop_reasons=["stop"])
    assert R.format_reward(None, [folded], **cols) == [0.0]
    assert R.format_reward(None, [out(ROME)], **cols) == [1.0]
    # the content is scored as the call json.loads reads (city Rome), the same as the tidy one
    assert R.correctness_reward(None, [folded], **cols) == R.correctness_reward(None, [out(ROME)], **cols)


def test_made_call():
    assert R.made_call(out(PARIS), TOOLS) and R.made_call(BAD_JSON, TOOLS)
    assert R.made_call("oops </tool_call>", TOOLS)
    assert not R.made_call(TEXT, TOOLS)


def test_each_text_parsed_once_per_step(monkeypatch):
    R._parse_cached.cache_clear()
    seen = []
    real = R.parse_model_output
    monkeypatch.setattr(R, "parse_model_output", lambda text, tools=None: seen.append(text) or real(text, tools))
    comps = [c[1] for c in CASES]
    for _, _, fn in R.build_reward_fns(
        SimpleNamespace(
            mode="partial", format_weight=1.0, correctness_weight=1.0, abstention_weight=1.0, call_count_weight=0.5
        )
    ):
        fn(None, comps, **columns(CASES))
    assert len(seen) == len({R._strip_stop(c) for c in comps})
    R._parse_cached.cache_clear()
    assert [p.calls for p in R.parse_completions([out(PARIS)], [TOOLS])] == [[PARIS]]


def test_misaligned_columns_raise():
    with pytest.raises(ValueError, match="aligned"):
        R.format_reward(None, ["a", "b"], tools=[TOOLS], gold_calls=[[], []], stop_reasons=["stop", "stop"])
