"""Each augmentation keeps rows valid and has its invariant; all are deterministic."""

import json
import random

import pytest

from gemma_tool_use.data import augment as A
from gemma_tool_use.data.rows import classify
from gemma_tool_use.format.render import validate_conversation

W = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city"],
    },
}
S = {
    "name": "get_stock",
    "description": "Latest price of a stock ticker.",
    "parameters": {"type": "object", "properties": {"ticker": {"type": "string"}}, "required": ["ticker"]},
}
B = {
    "name": "book_table",
    "description": "Book a restaurant table.",
    "parameters": {
        "type": "object",
        "properties": {
            "people": {"type": "integer", "minimum": 1, "maximum": 12},
            "time": {"type": "string"},
            "vip": {"type": "boolean"},
        },
        "required": ["people", "time"],
    },
}


def row(tools, q, calls):
    return {
        "tools": tools,
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "", "tool_calls": calls}],
        "meta": {"source": "t", "row": q},
    }


R1 = row([W, S], "Weather in Oslo?", [{"name": "get_weather", "args": {"city": "Oslo"}}])
R2 = row([B], "Table for 2 at 8pm", [{"name": "book_table", "args": {"people": 2, "time": "20:00"}}])


def called_names(r):
    return [c["name"] for m in r["messages"] for c in m.get("tool_calls") or []]


def test_irrelevance_removes_every_called_tool():
    out = A.make_irrelevant(R1, random.Random(0))
    validate_conversation(out)
    assert [t["name"] for t in out["tools"]] == ["get_stock"] and called_names(out) == []
    assert out["meta"]["category"] == "irrelevance" and out["messages"][-1]["content"] == A.REFUSAL
    assert A.make_irrelevant(R2, random.Random(0)) is None  # no tool would be left


def test_distractors_keep_gold_calls_and_add_unique_tools():
    out = A.add_distractors(R2, [W, S, B], random.Random(1), k=3)
    validate_conversation(out)
    names = [t["name"] for t in out["tools"]]
    assert len(names) == len(set(names)) == 3 and called_names(out) == ["book_table"]
    assert out["meta"]["category"] == "multiple"


def test_mask_names_is_a_consistent_bijection():
    out = A.mask_names(R2, random.Random(2))
    validate_conversation(out)
    tool = out["tools"][0]
    call = out["messages"][1]["tool_calls"][0]
    assert tool["name"] != "book_table" and call["name"] == tool["name"]
    assert set(call["args"]) <= set(tool["parameters"]["properties"]) and set(tool["parameters"]["required"]) == set(
        call["args"]
    )
    assert list(call["args"].values()) == [2, "20:00"] and tool["description"] == B["description"]


def test_join_parallel_concatenates_independent_calls():
    out = A.join_parallel(R1, R2, random.Random(3))
    validate_conversation(out)
    assert called_names(out) == ["get_weather", "book_table"] and out["meta"]["category"] == "parallel_multiple"
    assert "Oslo" in out["messages"][0]["content"] and "8pm" in out["messages"][0]["content"]
    assert A.join_parallel(R1, R1, random.Random(3)) is None  # shared tools: not independent


@pytest.mark.parametrize("seed", range(20))
def test_procedural_rows_satisfy_their_schema(seed):
    out = A.procedural_row(B, random.Random(seed), pool=[W, S])
    validate_conversation(out)
    (call,) = out["messages"][1]["tool_calls"]
    assert A.validate_args(call["args"], B["parameters"]) == []
    assert 1 <= call["args"]["people"] <= 12


def test_validate_args_reports_problems():
    assert A.validate_args({"people": "two"}, B["parameters"]) == [
        "args: 'time' is a required property",
        "people: 'two' is not of type 'integer'",
    ]
    assert A.validate_args({"city": "x", "unit": "k"}, W["parameters"]) == ["unit: 'k' is not one of ['c', 'f']"]
    assert A.validate_args({"city": "x", "extra": 1}, W["parameters"]) == [
        "args: Additional properties are not allowed ('extra' was unexpected)"
    ]
    assert A.validate_args({"people": 2.0, "time": "8pm"}, B["parameters"]) == [  # 2.0 is no integer to BFCL
        "people: 2.0 is not of type 'integer'"
    ]


@pytest.mark.parametrize("seed", range(12))
def test_procedural_parallel_rows_call_one_tool_with_distinct_valid_args(seed):
    out = A.procedural_parallel_row(B, random.Random(seed), pool=[W, S])
    validate_conversation(out)
    calls = out["messages"][-1]["tool_calls"]
    assert out["meta"]["category"] == "parallel" and 2 <= len(calls) <= 4
    assert {c["name"] for c in calls} == {"book_table"}
    assert len({json.dumps(c["args"], sort_keys=True) for c in calls}) == len(calls)
    for c in calls:
        assert A.validate_args(c["args"], B["parameters"]) == []
        assert f"people {c['args']['people']}" in out["messages"][0]["content"]  # each call is asked for


def test_procedural_parallel_needs_arguments_to_vary():
    assert A.procedural_parallel_row(_tool("ping", "Ping the server."), random.Random(0)) is None


def _tool(name, description):
    return {"name": name, "description": description, "parameters": {"type": "object", "properties": {}}}


NEAR_POOL = [
    _tool("fetch_conditions", "Current weather for a city."),  # a near-copy of get_weather
    _tool("get_weather_report", "Weather report for a city."),  # shares the name word "weather"
    _tool("getWeatherAlerts", "Severe storm alerts issued for a region."),  # so does this one
    _tool("get_air_quality", "Current air quality index for a city."),  # same domain, another function
    _tool("get_sunrise_time", "Sunrise time for a city on a date."),
    _tool("get_city_population", "Population of a city."),
    _tool("count_city_parks", "Number of parks in a city."),
    _tool("translate_text", "Translate a text into another language."),  # nothing in common
    _tool("get_stock", "Latest price of a stock ticker."),  # already offered by R1
]


def test_near_miss_offers_same_domain_tools_that_cannot_answer():
    index = A.NearMissIndex(NEAR_POOL)
    seen = set()
    for seed in range(30):
        out = A.make_near_miss(R1, index, random.Random(seed))
        validate_conversation(out)
        assert called_names(out) == [] and out["messages"][-1]["content"] == A.REFUSAL
        assert out["meta"]["augmentation"] == "near_miss" and out["meta"]["category"] == "irrelevance"
        names = [t["name"] for t in out["tools"]]
        assert "get_weather" not in names and "get_stock" in names and len(names) == len(set(names))
        seen |= set(names) - {"get_stock"}
    # never the near-copy, a name-word sibling, an unrelated tool or one already offered; the two
    # closest that remain (air quality, population) are skipped as the likeliest false refusals
    assert seen == {"get_sunrise_time", "count_city_parks"}
    assert A.make_near_miss(R1, A.NearMissIndex([NEAR_POOL[6]]), random.Random(0)) is None  # nothing near
    assert A.make_near_miss(row([W], "hi", []), index, random.Random(0)) is None  # not a call row
    assert A._name_words("getWeatherAlerts") == {"weather", "alerts"}


def test_augment_rows_is_deterministic_and_counts():
    rows = [R1, R2] * 10
    cfg = {"irrelevance": 0.2, "distractors": 0.3, "mask_names": 0.2, "join_parallel": 0.2, "procedural": 0.1}
    before, _ = A.augment_rows(rows, cfg, seed=7, tool_pool=NEAR_POOL + [W, S, B])
    cfg.update(near_miss=0.2, procedural_parallel=0.2)  # drawn last: the others stay as they were
    a, ca = A.augment_rows(rows, cfg, seed=7, tool_pool=NEAR_POOL + [W, S, B])
    assert json.dumps(a[: len(before)]) == json.dumps(before) and ca["near_miss"] > 0
    assert ca["procedural_parallel"] > 0
    b, cb = A.augment_rows(rows, cfg, seed=7, tool_pool=NEAR_POOL + [W, S, B])
    c, _ = A.augment_rows(rows, cfg, seed=8, tool_pool=NEAR_POOL + [W, S, B])
    assert json.dumps(a) == json.dumps(b) and ca == cb and json.dumps(a) != json.dumps(c)
    assert len(a) == len(rows) + sum(ca.values()) and ca["distractors"] == 6
    for r in a:
        validate_conversation(r)
        assert r["meta"]["category"] == classify(r) if "augmentation" in r["meta"] else True


def test_make_row_repairs_stringified_types_and_drops_schema_violations():
    from gemma_tool_use.data.conversations import DataError, LoadReport
    from gemma_tool_use.data.rows import make_row

    report = LoadReport()
    msgs = [
        {"role": "user", "content": "table"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"name": "book_table", "args": {"people": "4", "time": "8pm", "vip": "true"}}],
        },
    ]
    row = make_row([B], msgs, source="t", row_id=1, report=report)
    assert row["messages"][1]["tool_calls"][0]["args"] == {"people": 4, "time": "8pm", "vip": True}
    assert report.repaired == 2
    bad = [
        {"role": "user", "content": "table"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "book_table", "args": {"people": "four"}}]},
    ]
    assert make_row([B], bad, source="t", row_id=2, report=report) is None
    assert report.dropped == {"args_violate_schema": 1}
    with pytest.raises(DataError, match="t:2: args violate the schema"):
        make_row([B], bad, source="t", row_id=2, report=LoadReport(), strict=True)


def test_join_same_tool_makes_parallel_calls_of_one_tool_from_real_requests():
    r3 = row([W], "Weather in Rome?", [{"name": "get_weather", "args": {"city": "Rome", "unit": "c"}}])
    joined = A.join_same_tool([R1, r3], random.Random(0))
    validate_conversation(joined)
    assert joined["meta"]["category"] == "parallel" and joined["meta"]["augmentation"] == "join_same_tool"
    assert [c["args"]["city"] for c in joined["messages"][1]["tool_calls"]] == ["Oslo", "Rome"]
    assert (
        "Weather in Oslo?" in joined["messages"][0]["content"]
        and "Weather in Rome?" in joined["messages"][0]["content"]
    )
    assert sorted(t["name"] for t in joined["tools"]) == ["get_stock", "get_weather"]  # union, no repeats
    assert A.join_same_tool([R1, R1], random.Random(0)) is None  # the same call twice is one request
    assert A.join_same_tool([R1, R2], random.Random(0)) is None  # different tools: join_parallel's job
    other_schema = row([{**W, "description": "changed"}], "Weather in Rome?", r3["messages"][1]["tool_calls"])
    assert A.join_same_tool([R1, other_schema], random.Random(0)) is None  # one name, two schemas


def test_join_same_tool_draws_names_by_their_rows():
    rows = [row([W], f"Weather in {c}?", [{"name": "get_weather", "args": {"city": c}}]) for c in "ABCDEFGH"] + [R2]
    out, counts = A.augment_rows(rows, {"join_same_tool": 1.0}, seed=3)
    made = [r for r in out if r["meta"].get("augmentation") == "join_same_tool"]
    assert counts["join_same_tool"] == len(made) > 0
    assert all(called_names(r)[0] == "get_weather" and len(called_names(r)) in (2, 3) for r in made)


def test_other_tools_offers_only_another_sources_unrelated_tools():
    donor_same = {**row([B], "Table for 4", []), "meta": {"source": "t"}}  # same source as R1: never a donor
    related = {**row([_tool("weather_alerts", "Storm alerts for a city.")], "x", []), "meta": {"source": "u"}}
    unrelated = {**row([B, _tool("translate_text", "Translate a text.")], "y", []), "meta": {"source": "u"}}
    for seed in range(10):
        out = A.make_other_tools(R1, [donor_same, related, unrelated], random.Random(seed))
        validate_conversation(out)
        assert {t["name"] for t in out["tools"]} <= {"book_table", "translate_text"} and out["tools"]
        assert called_names(out) == [] and out["messages"][-1]["content"] == A.REFUSAL
        assert out["messages"][0] == R1["messages"][0]
        assert out["meta"]["augmentation"] == "other_tools" and out["meta"]["category"] == "irrelevance"
    # a donor naming a word of the request ("Oslo") or sharing the called tool's words is skipped
    oslo = {**row([_tool("oslo_metro_times", "Metro departures.")], "z", []), "meta": {"source": "u"}}
    assert A.make_other_tools(R1, [donor_same, related, oslo], random.Random(0)) is None
    assert A.make_other_tools(row([W], "hi", []), [unrelated], random.Random(0)) is None  # not a call row


def test_other_tools_in_augment_rows_and_the_mix_cache_key():
    from omegaconf import OmegaConf

    from gemma_tool_use.data.mix import mix_fingerprint

    rows = [R1, {**R2, "meta": {"source": "u", "row": "r2"}}] * 5
    cfg = {"irrelevance": 0.2}
    before, _ = A.augment_rows(rows, cfg, seed=3)
    out, counts = A.augment_rows(rows, {**cfg, "other_tools": 0.4}, seed=3)
    assert json.dumps(out[: len(before)]) == json.dumps(before) and counts["other_tools"] == 4
    for r in out[len(before) :]:  # each request offered the other source's tools only
        names = {t["name"] for t in r["tools"]}
        assert r["meta"]["augmentation"] == "other_tools"
        assert names == {"book_table"} if r["meta"]["source"] == "t" else names <= {"get_weather", "get_stock"}

    def key(**augment):
        return mix_fingerprint(OmegaConf.create({"name": "m", "augment": {"near_miss": 0.1, **augment}}), 0, "tok")

    assert key() == key(other_tools=0.0) != key(other_tools=0.1)  # a default-zero new option keeps old caches
