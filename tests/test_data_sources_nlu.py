"""The NLU benchmark loaders (data/sources/snips.py, data/sources/clinc150.py): intents become
tools, tagged spans become arguments, and drawn rows offer no fitting tool and teach REFUSAL.

Fixtures are small files in the upstream shapes written into tmp_path; one test per source runs
on the real files in ../shared/datasets ($GEMMA_TOOL_USE_TEST_DATASETS overrides that folder)."""

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from gemma_tool_use.data.conversations import DataError, LoadReport
from gemma_tool_use.data.rows import REFUSAL, validate_args
from gemma_tool_use.data.sources import clinc150, snips
from gemma_tool_use.format.render import validate_conversation

SHARED = Path(
    os.environ.get("GEMMA_TOOL_USE_TEST_DATASETS") or Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
)


def calls_of(row: dict) -> list[dict]:
    return row["messages"][-1].get("tool_calls") or []


def check_row(row: dict) -> None:
    """What every row of both sources is: [user, model], the model turn one call or REFUSAL, the
    calls valid against their tool."""
    validate_conversation(row)
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    names = [t["name"] for t in row["tools"]]
    assert len(set(names)) == len(names) and names
    calls, answer = calls_of(row), row["messages"][-1]
    if calls:
        assert len(calls) == 1 and answer["content"] == "" and calls[0]["name"] in names
        tool = next(t for t in row["tools"] if t["name"] == calls[0]["name"])
        assert validate_args(calls[0]["args"], tool["parameters"]) == []
        assert row["meta"]["category"] == ("simple" if len(names) == 1 else "multiple")
    else:
        assert answer["content"] == REFUSAL and row["meta"]["category"] == "irrelevance"


# ------------------------------------------------------------------------------- SNIPS


def span(text: str, slot: str | None = None) -> dict:
    return {"text": text, **({"entity": slot} if slot else {})}


def write_snips(folder: Path, utterances: dict[str, list]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for intent, items in utterances.items():
        path = folder / f"train_{intent}_full.json"
        path.write_text(json.dumps({intent: items}, indent=1), encoding="utf-8")
        paths.append(path)
    return paths


def synthetic_snips(n: int) -> dict[str, list]:
    """n utterances per intent: a request with a slot tagged in every one and one in every other."""
    out = {}
    for k, intent in enumerate(snips.INTENTS):
        out[intent] = [
            {
                "data": [span(f"do {intent} for "), span(f"thing {k}-{i}", "main")]
                + ([span(" at "), span(f"{i} pm", "timeRange")] if i % 2 else [])
            }
            for i in range(n)
        ]
    return out


def load_snips(paths, strict=False):
    report = LoadReport()
    return snips.load("snips", paths, report, strict), report


def test_snips_intents_become_tools_and_tagged_spans_their_arguments(tmp_path):
    data = synthetic_snips(30)
    weather_spans = [
        ("Will it be ", None),
        ("colder", "condition_temperature"),
        (" in ", None),
        ("Noblesville", "city"),
    ]
    weather_spans += [(" at ", None), ("3 pm", "timeRange"), (" for ", None), (" my trip", "main"), ("? ", None)]
    data["GetWeather"][0] = {"data": [span(*s) for s in weather_spans]}
    rows, report = load_snips(write_snips(tmp_path, data))
    assert report.kept == len(rows) == 7 * 30 and not report.dropped
    by_id = {r["meta"]["row"]: r for r in rows}
    weather = by_id["GetWeather:0"]
    assert weather["messages"][0]["content"] == "Will it be colder in Noblesville at 3 pm for  my trip?"
    tool = next(t for t in weather["tools"] if t["name"] == "get_weather")
    # every slot the loaded GetWeather utterances tag, and nothing else; all strings, described
    assert set(tool["parameters"]["properties"]) == {"main", "timeRange", "condition_temperature", "city"}
    assert all(p["type"] == "string" and p["description"] for p in tool["parameters"]["properties"].values())
    assert tool["parameters"]["properties"]["city"]["description"] == "City."  # hand-written
    assert tool["parameters"]["properties"]["main"]["description"] == "Main."  # the name in words
    assert tool["parameters"]["required"] == ["main"]  # in every one; timeRange in about half: optional
    if calls_of(weather):
        assert calls_of(weather) == [
            {
                "name": "get_weather",
                "args": {
                    "condition_temperature": "colder",
                    "city": "Noblesville",
                    "timeRange": "3 pm",
                    "main": "my trip",
                },
            }
        ]
    for row in rows:
        check_row(row)
        intent, index = row["meta"]["row"].split(":")
        gold = snips.INTENTS[intent][0]
        names = [t["name"] for t in row["tools"]]
        if calls_of(row):  # the gold tool and 0-3 others
            assert 1 <= len(names) <= 4 and gold in names and calls_of(row)[0]["name"] == gold
            if row is not weather:
                i = int(index)
                args = {
                    "main": f"thing {list(snips.INTENTS).index(intent)}-{i}",
                    **({"timeRange": f"{i} pm"} if i % 2 else {}),
                }
                assert calls_of(row)[0]["args"] == args
        else:  # 1-3 other intents, never the gold one
            assert 1 <= len(names) <= 3 and gold not in names


def test_snips_drops_are_counted_by_reason(tmp_path):
    data = {
        "BookRestaurant": [
            {"data": [span("book a "), span("pub", "restaurant_type"), span(" for "), span("4", "party_size_number")]},
            {"data": [span("book a "), span("bar", "restaurant_type"), span(" or a "), span("pub", "restaurant_type")]},
            {"data": [span("book "), span("pub", "restaurant_type"), span(" the "), span(" pub ", "restaurant_type")]},
            {"data": [span("  "), span(" ")]},
            {"data": "book a pub"},
            "not an object",
        ],
        "RateBook": [{"data": [span("rate it "), span("5", "rating_value")]}],
    }
    paths = write_snips(tmp_path, data)
    rows, report = load_snips(paths)
    assert dict(report.dropped) == {"malformed_row": 2, "empty": 1, "missing_field": 1}, report.examples
    assert report.kept + sum(report.dropped.values()) == 7
    assert {r["meta"]["row"] for r in rows} == {"BookRestaurant:0", "BookRestaurant:2", "RateBook:0"}
    assert any("'restaurant_type' tagged twice with different text: 'bar', 'pub'" in e for e in report.examples)
    same_twice = next(r for r in rows if r["meta"]["row"] == "BookRestaurant:2")
    if calls_of(same_twice):  # the same text tagged twice is one argument
        assert calls_of(same_twice)[0]["args"] == {"restaurant_type": "pub"}
    with pytest.raises(DataError, match=r"BookRestaurant:1: malformed_row"):
        load_snips(paths, strict=True)


def test_snips_reads_files_that_are_not_utf8_clean(tmp_path):
    data = synthetic_snips(2)
    data["PlayMusic"] = [
        {"data": [span("play "), span("Pop Punk PIZZA", "playlist")]},  # PIZZA: an emoji written as CESU-8
        {"data": [span("play "), span("Caf\u00e9 BAD", "playlist")]},  # BAD: a byte that is no UTF-8
        {"data": [span("play "), span("Caf\u00e9 del Mar", "playlist")]},
    ]
    paths = write_snips(tmp_path, data)
    music = next(p for p in paths if "PlayMusic" in p.name)
    raw = music.read_bytes().replace(b"\\u00e9", "\u00e9".encode())
    raw = raw.replace(b"PIZZA", b"\xed\xa0\xbc\xed\xbd\x95").replace(b"BAD", b"\xff")
    music.write_bytes(raw)
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    rows, report = load_snips(paths)
    assert dict(report.dropped) == {"malformed_row": 1} and "U+FFFD" in report.examples[0]
    texts = {r["meta"]["row"]: r["messages"][0]["content"] for r in rows}
    assert texts["PlayMusic:0"] == "play Pop Punk \U0001f355" and texts["PlayMusic:2"] == "play Caf\u00e9 del Mar"
    assert "PlayMusic:1" not in texts


def test_snips_no_call_share_and_determinism(tmp_path):
    data = synthetic_snips(60)  # 420 rows
    paths = write_snips(tmp_path, data)
    rows, report = load_snips(paths)
    assert report.kept == 420
    no_call = [r for r in rows if not calls_of(r)]
    assert 0.10 <= len(no_call) / len(rows) <= 0.20, len(no_call)
    sizes = Counter(len(r["tools"]) for r in rows if calls_of(r))
    assert set(sizes) == {1, 1 + snips.MAX_OTHER_TOOLS}, sizes
    assert set(Counter(len(r["tools"]) for r in no_call)) == set(range(1, snips.MAX_OTHER_TOOLS + 1))
    for row in no_call:  # the two search intents never stand in for each other
        intent = row["meta"]["row"].split(":")[0]
        if intent in ("SearchCreativeWork", "SearchScreeningEvent"):
            assert not {"search_creative_work", "search_screening_event"} & {t["name"] for t in row["tools"]}
    assert load_snips(paths)[0] == rows
    assert load_snips(list(reversed(paths)))[0] == rows  # whatever the file order
    data["RateBook"][0]["data"][0]["text"] = "please do RateBook for "  # another utterance, other draws
    changed = load_snips(write_snips(tmp_path / "b", data))[0]
    assert [r for r in changed if r["meta"]["row"] != "RateBook:0"] == [
        r for r in rows if r["meta"]["row"] != "RateBook:0"
    ]


def test_snips_rejects_unknown_intents_and_a_second_file_per_intent(tmp_path):
    paths = write_snips(tmp_path, {"OrderPizza": [{"data": [span("a pizza")]}]})
    with pytest.raises(DataError, match="unknown SNIPS intent 'OrderPizza'"):
        load_snips(paths)
    paths = write_snips(tmp_path / "a", {"RateBook": [{"data": [span("rate")]}]})
    with pytest.raises(DataError, match="a second file for intent 'RateBook'"):
        load_snips(paths + paths)


def test_snips_real_files():
    folder = SHARED / "snips"
    if not folder.is_dir():
        pytest.skip(f"datasets not found at {SHARED}")
    paths = sorted(folder.glob("train_*_full.json"))
    assert len(paths) == 7
    rows, report = load_snips(paths)
    upstream = sum(len(next(iter(json.loads(p.read_bytes().decode("utf-8", "replace")).values()))) for p in paths)
    assert report.kept + sum(report.dropped.values()) == upstream
    assert 13_600 <= report.kept <= 13_800 and set(report.dropped) <= {"malformed_row"}, dict(report.dropped)
    per_intent = Counter(r["meta"]["row"].split(":")[0] for r in rows)
    assert set(per_intent) == set(snips.INTENTS) and min(per_intent.values()) >= 1900
    assert 0.13 <= sum(not calls_of(r) for r in rows) / len(rows) <= 0.17
    for row in rows:
        check_row(row)
    required = {t["name"]: t["parameters"].get("required") for r in rows for t in r["tools"]}
    assert required["add_to_playlist"] == ["playlist"] and required["rate_book"] == ["rating_value"]
    assert required["search_creative_work"] == ["object_name"] and required["get_weather"] is None
    assert any("\U0001f355" in r["messages"][0]["content"] for r in rows)  # the CESU-8 emoji of PlayMusic


# ------------------------------------------------------------------------------- CLINC150

DOMAINS = {
    "banking": ["balance", "transfer", "freeze_account", "pay_bill", "interest_rate"],
    "credit_cards": ["apr", "credit_limit", "new_card", "report_lost_card", "card_declined"],
    "utility": ["time", "timer", "alarm", "weather", "calculator"],
    "travel": ["timezone", "book_flight", "translate", "exchange_rate", "carry_on"],
}
TEST_SPLIT = "TEST SPLIT utterance"
# intents of different domains that serve each other's requests: never offered together
NEAR = {frozenset(p) for p in [("time", "timezone"), ("apr", "interest_rate"), ("freeze_account", "report_lost_card")]}


def write_clinc(folder: Path, per_intent: int, extra: dict | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    intents = [i for v in DOMAINS.values() for i in v]
    data = {
        "train": [[f"please help with {i} number {n}", i] for i in intents for n in range(per_intent)],
        "val": [[f"could you do {i}, case {n}", i] for i in intents for n in range(2)],
        "test": [[f"{TEST_SPLIT} {n}", intents[n % len(intents)]] for n in range(50)] + [["x", "no_such_intent"], 7],
        "oos_train": [[f"something nobody offers {n}", "oos"] for n in range(per_intent * 2)],
        "oos_val": [[f"another thing nobody offers {n}", "oos"] for n in range(10)],
        "oos_test": [[f"{TEST_SPLIT} oos {n}", "oos"] for n in range(20)] + ["garbage"],
        **(extra or {}),
    }
    (folder / "data_full.json").write_text(json.dumps(data), encoding="utf-8")
    (folder / "domains.json").write_text(json.dumps(DOMAINS), encoding="utf-8")
    return [folder / "data_full.json", folder / "domains.json"]


def load_clinc(paths, strict=False):
    report = LoadReport()
    return clinc150.load("clinc150", paths, report, strict), report


def upstream_label(paths: list[Path], row: dict) -> str:
    split, index = row["meta"]["row"].split(":")
    return json.loads(paths[0].read_text())[split][int(index)][1]


def check_clinc_rows(rows, paths, domains) -> Counter:
    """Each row as designed; returns (kind of row) -> count."""
    domain_of = {i: d for d, v in domains.items() for i in v}
    data = json.loads(paths[0].read_text())
    kinds = Counter()
    for row in rows:
        check_row(row)
        split, index = row["meta"]["row"].split(":")
        text, label = data[split][int(index)]
        assert row["messages"][0]["content"] == text.strip()
        names = [t["name"] for t in row["tools"]]
        assert all(t["parameters"] == {"type": "object", "properties": {}} for t in row["tools"])
        assert all(t["description"] == clinc150.DESCRIPTIONS[t["name"]] for t in row["tools"])
        offered_domains = {domain_of[n] for n in names}
        assert not any(frozenset((label, n)) in NEAR | {frozenset(p) for p in clinc150._NEAR} for n in names), names
        if label == "oos":
            assert split.startswith("oos") and not calls_of(row) and 3 <= len(names) <= 5 and len(offered_domains) == 1
            kinds["oos"] += 1
        elif calls_of(row):
            assert calls_of(row) == [{"name": label, "args": {}}] and 3 <= len(names) <= 5 and label in names
            kinds["call"] += 1
        else:
            assert 3 <= len(names) <= 5 and domain_of[label] not in offered_domains, (label, names)
            kinds["refusal"] += 1
    return kinds


def test_clinc_rows_as_designed_and_test_split_never_read(tmp_path):
    paths = write_clinc(tmp_path, per_intent=15)  # 300 train, 40 val, 30 + 10 oos
    rows, report = load_clinc(paths)
    assert report.kept == len(rows) == 380 and not report.dropped  # test/oos_test rows, even bad ones: not read
    assert not any(TEST_SPLIT in r["messages"][0]["content"] for r in rows)
    assert {r["meta"]["row"].split(":")[0] for r in rows} == set(clinc150.SPLITS)
    kinds = check_clinc_rows(rows, paths, DOMAINS)
    assert kinds["oos"] == 40
    assert 0.18 <= kinds["call"] / (kinds["call"] + kinds["refusal"]) <= 0.32, kinds
    assert Counter(len(r["tools"]) for r in rows).keys() == {3, 4, 5}
    assert load_clinc(paths)[0] == rows
    # the same fixture without any test split loads the same rows
    bare = write_clinc(tmp_path / "bare", per_intent=15, extra={"test": None, "oos_test": None})
    assert load_clinc(bare)[0] == rows


def test_clinc_drops_are_counted_by_reason(tmp_path):
    extra = {
        "oos_val": [["fine oos", "oos"], ["labelled wrong", "balance"], ["   ", "oos"]],
        "val": [["what's my balance", "balance"], ["make it so", "no_such_intent"], ["one field"], 5],
    }
    paths = write_clinc(tmp_path, per_intent=1, extra=extra)
    rows, report = load_clinc(paths)
    assert dict(report.dropped) == {"missing_field": 4, "empty": 1}, report.examples
    assert report.kept == len(rows) == 20 + 1 + 2 + 1  # train, val, oos_train, oos_val
    assert report.kept + sum(report.dropped.values()) == 20 + 4 + 2 + 3
    with pytest.raises(DataError, match=r"val:1: missing_field: intent 'no_such_intent'"):
        load_clinc(paths, strict=True)


def test_clinc_needs_a_description_per_intent_and_its_splits(tmp_path):
    paths = write_clinc(tmp_path, per_intent=1)
    paths[1].write_text(json.dumps({**DOMAINS, "misc": ["teleport"]}))
    with pytest.raises(DataError, match=r"without a description .*\['teleport'\]"):
        load_clinc(paths)
    paths = write_clinc(tmp_path / "b", per_intent=1, extra={"oos_val": None})
    with pytest.raises(DataError, match=r"missing: \['oos_val'\]"):
        load_clinc(paths)


def test_clinc_real_files():
    folder = SHARED / "clinc150"
    if not folder.is_dir():
        pytest.skip(f"datasets not found at {SHARED}")
    paths = [folder / "data_full.json", folder / "domains.json"]
    domains = json.loads(paths[1].read_text())
    assert {i for v in domains.values() for i in v} == set(clinc150.DESCRIPTIONS)  # 150, all described
    rows, report = load_clinc(paths)
    assert report.kept == len(rows) == 15_000 + 3_000 + 100 + 100 and not report.dropped
    kinds = check_clinc_rows(rows, paths, domains)
    assert kinds["oos"] == 200 and 0.23 <= kinds["call"] / 18_000 <= 0.27, kinds
