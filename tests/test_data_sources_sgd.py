"""SGD (data/sources/sgd.py): one row per service call, grounded, typed, never in BFCL's naming form;
pinned files found as plain or gzip copies (fetch.local_file); the real files when present."""

import gzip
import json
import os
from pathlib import Path

import pytest

from gemma_tool_use.data.conversations import LoadReport
from gemma_tool_use.data.rows import validate_args
from gemma_tool_use.data.sources import LOCAL_SOURCES, fetch, sgd
from gemma_tool_use.format.render import validate_conversation

SHARED = Path(
    os.environ.get("GEMMA_TOOL_USE_TEST_DATASETS") or Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
)


def _schema(prefix: str = "") -> list[dict]:
    return [
        {
            "service_name": "Restaurants_1",
            "description": "Find and reserve restaurants",
            "slots": [
                {"name": "city", "description": f"{prefix}City", "is_categorical": False, "possible_values": []},
                {"name": "cuisine", "description": f"{prefix}Cuisine", "is_categorical": False, "possible_values": []},
                {
                    "name": "party_size",
                    "description": f"{prefix}Seats",
                    "is_categorical": True,
                    "possible_values": ["1", "2", "3"],
                },
                {
                    "name": "outdoor",
                    "description": f"{prefix}Outdoor",
                    "is_categorical": True,
                    "possible_values": ["True", "False"],
                },
            ],
            "intents": [
                {
                    "name": "FindRestaurants",
                    "description": f"{prefix}Find a restaurant",
                    "is_transactional": False,
                    "required_slots": ["city", "cuisine"],
                    "optional_slots": {"outdoor": "dontcare"},
                    "result_slots": [],
                },
                {
                    "name": "ReserveTable",
                    "description": f"{prefix}Reserve a table",
                    "is_transactional": True,
                    "required_slots": ["city", "party_size"],
                    "optional_slots": {"outdoor": "False"},
                    "result_slots": [],
                },
            ],
        },
        {
            "service_name": "Weather_1",
            "description": "Weather",
            "slots": [{"name": "city", "description": f"{prefix}Town", "is_categorical": False, "possible_values": []}],
            "intents": [
                {
                    "name": "GetWeather",
                    "description": f"{prefix}Weather in a city",
                    "is_transactional": False,
                    "required_slots": ["city"],
                    "optional_slots": {},
                    "result_slots": [],
                }
            ],
        },
    ]


def _variant(v: int) -> list[dict]:
    """An SGD-X-like rewording: every name and description changed, the order kept."""
    s = _schema(prefix=f"v{v} ")
    for service in s:
        service["service_name"] += f"{v}"
        for slot in service["slots"]:
            slot["name"] = f"{slot['name']}_v{v}"
        for intent in service["intents"]:
            intent["name"] += f"V{v}"
    return s


def _turn(speaker, utterance, frames):
    return {"speaker": speaker, "utterance": utterance, "frames": frames}


def _user(utterance, intent, values=()):
    actions = [{"act": "INFORM", "slot": k, "values": [said], "canonical_values": [canon]} for k, said, canon in values]
    return _turn(
        "USER",
        utterance,
        [{"service": "Restaurants_1", "actions": actions, "state": {"active_intent": intent}}],
    )


def _system(utterance, call=None, results=()):
    frame = {"service": "Restaurants_1", "actions": []}
    if call:
        frame.update(service_call={"method": call[0], "parameters": call[1]}, service_results=list(results))
    return _turn("SYSTEM", utterance, [frame])


DIALOGUES = [
    {
        "dialogue_id": "1_00000",
        "services": ["Restaurants_1"],
        "turns": [
            _user("Find me a place to eat.", "FindRestaurants"),
            _system("In which city?"),
            _user("In San Jose, Mexican food.", "FindRestaurants"),
            _system(
                "Found 3, e.g. Taqueria.",
                ("FindRestaurants", {"city": "San Jose", "cuisine": "Mexican"}),
                [{"name": f"R{i}"} for i in range(5)],
            ),
            _user("Book it for two, tomorrow.", "ReserveTable", [("party_size", "two", "2")]),
            _system(
                "Booked.",
                ("ReserveTable", {"city": "San Jose", "party_size": "2", "outdoor": "True"}),
                [{"ok": "True"}],
            ),
        ],
    },
    {"dialogue_id": "1_00001", "services": ["Restaurants_1"], "turns": "not a list"},
]


@pytest.fixture
def split_files(tmp_path):
    """The split's files as load_split takes them, the dialogues gzip-compressed like the shared copy."""
    paths = [tmp_path / "schema.json"]
    paths[0].write_text(json.dumps(_schema()))
    for v in range(1, 6):
        paths.append(tmp_path / f"v{v}.json")
        paths[-1].write_text(json.dumps(_variant(v)))
    packed = tmp_path / "dialogues_001.json.gz"
    packed.write_bytes(gzip.compress(json.dumps(DIALOGUES).encode()))
    return [*paths, packed]


def test_one_row_per_call_grounded_typed_and_counted(split_files):
    report = LoadReport()
    rows = sgd.load_split("sgd/test", split_files, report)
    assert len(rows) == 2 and report.dropped == {"missing_field": 1}  # the dialogue without turns
    first, second = rows
    for row in rows:
        validate_conversation(row)
        assert row["messages"][0] == {"role": "system", "content": sgd.TODAY}
        names = {t["name"] for t in row["tools"]}
        for m in row["messages"]:
            for c in m.get("tool_calls") or []:
                tool = next(t for t in row["tools"] if t["name"] == c["name"])
                assert validate_args(c["args"], tool["parameters"]) == []
        # never SGD's <Service>_<n>_<Intent> form, which BFCL's live functions use
        assert not any("_1_" in n or n.startswith("Restaurants") for n in names)
    # the first call's row opens at the user turn that started the intent and asks before calling
    roles = [m["role"] for m in first["messages"][1:]]
    assert roles == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    assert first["messages"][2]["content"] == "In which city?" and not first["messages"][2].get("tool_calls")
    assert len(first["messages"][5]["content"]) == sgd.RESULTS_KEPT
    # the second call's city was said in the first task: its row starts at the dialogue's start
    assert [m["content"] for m in second["messages"] if m["role"] == "user"][0] == "Find me a place to eat."
    call = second["messages"][-3]["tool_calls"][0]
    assert sorted(type(v).__name__ for v in call["args"].values()) == ["bool", "int", "str"]


def test_rewordings_and_name_styles_come_from_the_row_id(split_files):
    tools = sgd.intent_tools(
        json.loads(split_files[0].read_text()), [json.loads(p.read_text()) for p in split_files[1:6]]
    )
    convert = sgd.SgdConverter(tools)
    assert len(tools[("Restaurants_1", "FindRestaurants")]) == sgd.VARIANTS
    v3 = tools[("Restaurants_1", "ReserveTable")][3]
    assert v3["name"] == "ReserveTableV3" and set(v3["parameters"]["properties"]) == {
        "city_v3",
        "party_size_v3",
        "outdoor_v3",
    }
    assert v3["parameters"]["properties"]["outdoor_v3"] == {
        "description": "v3 Outdoor",
        "type": "boolean",
        "default": False,
    }
    assert v3["parameters"]["required"] == ["city_v3", "party_size_v3"]
    offered = [convert._row_tools(f"d{i}:0", [("Restaurants_1", "FindRestaurants")]) for i in range(60)]
    called = {next(n["name"] for key, src, n in row if key == ("Restaurants_1", "FindRestaurants")) for row in offered}
    assert all(
        src["description"].endswith("Find a restaurant.")
        for row in offered
        for key, src, _ in row
        if key[1] == "FindRestaurants"
    )
    assert {"find_restaurants", "FindRestaurants", "find_restaurants_v2", "FindRestaurantsV5"} <= called
    again = [convert._row_tools("d7:0", [("Restaurants_1", "FindRestaurants")]) for _ in range(2)]
    assert again[0] == again[1]


def test_a_reworded_schema_out_of_order_is_refused(split_files):
    bad = _variant(1)[::-1]
    with pytest.raises(Exception, match="order|zip"):
        sgd.intent_tools(_schema(), [bad])


def test_pinned_files_verify_plain_or_gzip(tmp_path, monkeypatch):
    content = b'{"a": 1}'
    (tmp_path / "sgd" / "train").mkdir(parents=True)
    (tmp_path / "sgd" / "train" / "x.json.gz").write_bytes(gzip.compress(content))
    import hashlib

    monkeypatch.setitem(fetch.PINNED, "sgd/train/x.json", hashlib.sha256(content).hexdigest())
    assert fetch.local_file(tmp_path, "sgd/train/x.json").name == "x.json.gz"
    assert fetch.verify(tmp_path, ["sgd/train/x.json"]) == []
    fetch.ensure_files(tmp_path, ["sgd/train/x.json"])  # present as .gz: nothing to fetch
    (tmp_path / "sgd" / "train" / "x.json.gz").write_bytes(gzip.compress(b"{}"))
    assert "does not match" in fetch.verify(tmp_path, ["sgd/train/x.json"])[0]


def test_sgd_sources_are_registered_with_every_file():
    for split, n in (("train", 96), ("dev", 17)):
        files = LOCAL_SOURCES[f"sgd/{split}"].files
        assert len(files) == 6 + n and files[0] == f"sgd/{split}/schema.json"
        assert not any("test" in f for f in files)


@pytest.mark.skipif(not (SHARED / "sgd" / "dev").is_dir(), reason="../shared/datasets/sgd absent")
def test_real_dev_file():
    """One real dialogue file with the real schemas (the whole split takes ~30 s: not in CI)."""
    files = LOCAL_SOURCES["sgd/dev"].files
    report = LoadReport()
    rows = sgd.load_split("sgd/dev", [fetch.local_file(SHARED, f) for f in files[:7]], report)
    assert 200 < len(rows) < 600 and sum(report.dropped.values()) <= 5
    for row in rows:  # each row ends with its own call, its results and the answer
        assert [m["role"] for m in row["messages"][-3:]] == ["assistant", "tool", "assistant"]
        assert row["messages"][-3]["tool_calls"] and row["messages"][-1]["content"]
