"""Loaders for the local datasets (data/sources): every registered source loads into canonical rows,
every upstream row is accounted for, and bad rows written in each source's own schema are counted
and skipped (or raise DataError in strict mode).

The loader tests run on the committed fixtures (tests/fixtures/local: a few real rows per file) and,
when present, on the full files in ../shared/datasets ($GEMMA_TOOL_USE_TEST_DATASETS overrides that
folder); exact drop counts and checksums are of the full files."""

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from gemma_tool_use.data.conversations import DataError, LoadReport
from gemma_tool_use.data.rows import CATEGORIES, REFUSAL
from gemma_tool_use.data.sources import LOCAL_SOURCES, fetch, load_source
from gemma_tool_use.data.sources.common import params_schema
from gemma_tool_use.format.render import render_conversation, validate_conversation
from gemma_tool_use.utils.files import sha256_file

FIXTURES = Path(__file__).parent / "fixtures" / "local"
SHARED = Path(
    os.environ.get("GEMMA_TOOL_USE_TEST_DATASETS") or Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
)
ROOTS = {"fixtures": FIXTURES, "shared": SHARED}

# Sources whose rows are built from several upstream records (SGD: a row per service call; SNIPS and
# CLINC150: drawn tool sets) have their own tests with fixtures written in their upstream shapes
# (test_data_sources_sgd.py, test_data_sources_nlu.py); this module's fixtures mirror the others.
OWN_TESTS = ("sgd", "snips", "clinc150")
NAMES = sorted(n for n in LOCAL_SOURCES if n.split("/")[0] not in OWN_TESTS)


def root_of(kind: str) -> Path:
    if not (ROOTS[kind] / "seal_tools").is_dir():
        pytest.skip(f"datasets not found at {ROOTS[kind]}")
    return ROOTS[kind]


def upstream_row_count(path: Path) -> int:
    if path.suffix == ".jsonl":
        return sum(1 for line in path.open(encoding="utf-8") if line.strip())
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows
    return len(json.loads(path.read_text(encoding="utf-8")))


@pytest.fixture(scope="module", params=list(ROOTS))
def data(request):
    """(kind, root, {source: (rows, report)}) for the fixtures, then the full files."""
    root = root_of(request.param)
    loaded = {}
    for name in NAMES:
        report = LoadReport()
        loaded[name] = (LOCAL_SOURCES[name](root, report, False), report)
    return request.param, root, loaded


@pytest.fixture(scope="module")
def tok():
    from gemma_tool_use.model.tokenizer import load_tokenizer

    return load_tokenizer()


# ------------------------------------------------------------------------------- real files


def test_every_source_file_is_pinned_upstream():
    for name, source in LOCAL_SOURCES.items():
        assert source.name == name and source.files and set(source.files) <= set(fetch.PINNED)
    for local, sha in fetch.PINNED.items():
        repo, commit, _ = fetch.REPOS[local.split("/")[0]]
        assert (
            len(sha) == 64
            and len(commit) == 40
            and fetch.raw_url(local).startswith(f"https://raw.githubusercontent.com/{repo}/{commit}/")
        )
    assert fetch.raw_url("seal_tools/dev.jsonl") == (
        "https://raw.githubusercontent.com/fairyshine/Seal-Tools/ce753ecd60ed08dd376984035de531ab8421f1c6/"
        "Seal-Tools_Dataset/dev.jsonl"
    )
    assert fetch.raw_url("toolrl/rlla_4k_test.parquet").endswith("/dataset/rlla_4k/test.parquet")


def test_local_files_match_recorded_checksums():
    assert fetch.verify(root_of("shared")) == []


def test_fixtures_mirror_the_data_root_layout():
    mirrored = {f for f in fetch.PINNED if f.split("/")[0] not in OWN_TESTS}
    assert {f for f in fetch.PINNED if (FIXTURES / f).is_file()} == mirrored


def _pin_fixtures(monkeypatch, files):
    for f in files:  # the fixtures are subsets: pin what they hold
        monkeypatch.setitem(fetch.PINNED, f, sha256_file(FIXTURES / f))


def test_missing_files_are_fetched_and_every_file_is_verified(tmp_path, monkeypatch):
    import shutil

    files = LOCAL_SOURCES["seal_tools/dev"].files  # dev.jsonl and tool.jsonl, a documented subset
    _pin_fixtures(monkeypatch, files)
    mirror, root = tmp_path / "mirror", tmp_path / "root"
    monkeypatch.setenv("GEMMA_TOOL_USE_DATA_MIRROR", mirror.as_uri())
    upstream = mirror / fetch.raw_url(files[0]).removeprefix(mirror.as_uri() + "/")
    upstream.parent.mkdir(parents=True)
    shutil.copy(FIXTURES / files[0], upstream)
    with pytest.raises(DataError, match="cannot be fetched: it is the tools the Seal-Tools rows use"):
        load_source("seal_tools/dev", root, LoadReport())  # the subset must be placed
    shutil.copy(FIXTURES / files[1], root / files[1])
    report = LoadReport()
    rows = load_source("seal_tools/dev", root, report)  # dev.jsonl fetched from the mirror, both verified
    assert rows and fetch.verify(root, files) == []
    assert report.kept + sum(report.dropped.values()) == upstream_row_count(root / files[0])
    with (root / files[0]).open("a") as f:  # a local file that changed is refused, not only a fetched one
        f.write("\n")
    with pytest.raises(DataError, match=r"dev\.jsonl: sha256 .* does not match the pinned"):
        load_source("seal_tools/dev", root, LoadReport())
    (root / files[0]).unlink()
    upstream.write_text("tampered")
    with pytest.raises(DataError, match="does not match the pinned"):
        load_source("seal_tools/dev", root, LoadReport())
    assert not (root / files[0]).exists()


@pytest.mark.parametrize("name", NAMES)
def test_source_loads_into_canonical_rows(name, data):
    _, root, loaded = data
    rows, report = loaded[name]
    assert rows and len(rows) == report.kept
    upstream = upstream_row_count(root / LOCAL_SOURCES[name].files[0])
    assert report.kept + sum(report.dropped.values()) == upstream, (report.kept, dict(report.dropped))
    for row in rows:
        validate_conversation(row)
        names = {t["name"] for t in row["tools"]}
        assert len(names) == len(row["tools"])
        for t in row["tools"]:
            params = t["parameters"]
            assert params["type"] == "object" and isinstance(params["properties"], dict)
            assert set(params.get("required", [])) <= set(params["properties"])
        for m in row["messages"]:
            for c in m.get("tool_calls") or []:
                assert c["name"] in names and isinstance(c["args"], dict)
        assert row["meta"]["source"] == name and row["meta"]["row"] != ""
        assert row["meta"]["category"] in CATEGORIES
        json.dumps(row, allow_nan=False)  # the renderer's JSON must accept every value


# Exact drops on the pinned files (checksums above): each is an upstream defect or a documented choice.
# The fixtures hold the first dropped row of each reason: one drop per reason.
EXPECTED_DROPS = {  # args_violate_schema: calls left invalid after lossless type repair (data/rows.py)
    "seal_tools/dev": {"dependent_call": 28, "args_violate_schema": 4},
    "seal_tools/test_in_domain": {"dependent_call": 30, "args_violate_schema": 6},
    "seal_tools/finetune_dev": {"dependent_call": 28, "unknown_tool": 3, "args_violate_schema": 4},
    "seal_tools/finetune_test_in_domain": {"dependent_call": 30, "unknown_tool": 2, "args_violate_schema": 6},
    "toolrl/rlla_sft": {"unknown_tool": 2, "args_violate_schema": 30},
    "toolrl/rlla_4k_test": {"unknown_tool": 2, "args_violate_schema": 7},
    "hammer/apibank_l1": {"args_violate_schema": 8},
    "hammer/apibank_l2": {"unknown_tool": 6},
    "hammer/toolalpaca": {"unknown_tool": 6, "args_violate_schema": 5},
    "hammer/masking_example": {"args_violate_schema": 1},
    "llamafactory/glaive_en": {"args_violate_schema": 1},
    "llamafactory/glaive_zh": {"orphan_tool_response": 2, "args_violate_schema": 4},
    "llamafactory/reason_tool_use": {"args_violate_schema": 1},
}

# (categories that must occur, categories that must not)
CATEGORY_MIX = {
    "seal_tools/dev": ({"simple", "parallel_multiple"}, {"irrelevance", "multi_turn", "chat", "multiple"}),
    "seal_tools/test_in_domain": ({"simple", "parallel_multiple"}, {"irrelevance", "multi_turn", "chat", "multiple"}),
    "seal_tools/finetune_dev": ({"multiple", "parallel_multiple"}, {"irrelevance", "multi_turn", "chat", "simple"}),
    "seal_tools/finetune_test_in_domain": (
        {"multiple", "parallel_multiple"},
        {"irrelevance", "multi_turn", "chat", "simple"},
    ),
    "toolrl/rlla_sft": ({"simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "multi_turn"}, {"chat"}),
    "toolrl/rlla_4k_test": ({"multiple", "parallel", "multi_turn"}, {"chat"}),
    "hammer/apibank_l1": ({"multi_turn", "simple"}, {"irrelevance", "chat"}),
    "hammer/apibank_l2": ({"multi_turn", "simple"}, {"irrelevance", "chat"}),
    "hammer/toolalpaca": ({"simple", "multiple", "parallel"}, {"irrelevance", "multi_turn", "chat"}),
    "hammer/masking_example": ({"irrelevance", "parallel"}, {"multi_turn", "chat"}),
    "llamafactory/glaive_en": ({"multi_turn", "simple", "irrelevance"}, set()),
    "llamafactory/glaive_zh": ({"multi_turn", "simple", "irrelevance"}, set()),
    "llamafactory/reason_tool_use": ({"multi_turn", "irrelevance", "parallel_multiple"}, set()),
}


@pytest.mark.parametrize("name", NAMES)
def test_drops_and_category_mix_are_as_documented(name, data):
    kind, _, loaded = data
    rows, report = loaded[name]
    expected = EXPECTED_DROPS[name] if kind == "shared" else dict.fromkeys(EXPECTED_DROPS[name], 1)
    assert dict(report.dropped) == expected, report.examples
    cats = Counter(r["meta"]["category"] for r in rows)
    must, must_not = CATEGORY_MIX[name]
    assert must <= set(cats), cats
    assert not must_not & set(cats), cats


def test_multi_turn_sources_carry_tool_responses(data):
    loaded = data[2]
    for name in (
        "llamafactory/glaive_en",
        "llamafactory/glaive_zh",
        "toolrl/rlla_sft",
        "hammer/apibank_l2",
        "llamafactory/reason_tool_use",
    ):
        rows = loaded[name][0]
        with_results = [
            r for r in rows if r["meta"]["category"] == "multi_turn" and any(m["role"] == "tool" for m in r["messages"])
        ]
        assert with_results, name
        for r in with_results:  # every result answers a call made earlier in the conversation
            called = set()
            for m in r["messages"]:
                called |= {c["name"] for c in m.get("tool_calls") or []}
                if m["role"] == "tool":
                    assert m["name"] in called, (name, r["meta"])


def test_seal_tools_rows_hold_independent_calls_only(data):
    loaded = data[2]
    for name in ("seal_tools/dev", "seal_tools/finetune_dev"):
        for r in loaded[name][0]:
            assert "API_call_" not in json.dumps(r["messages"])
            assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
    finetune = loaded["seal_tools/finetune_dev"][0]
    assert all(len(r["tools"]) == 5 for r in finetune)
    assert finetune[0]["meta"]["row"] == "dev-easy-0"
    assert not finetune[0]["messages"][0]["content"].startswith("Please chooose")  # the wrapper is gone


def test_schema_conversion_keeps_descriptions_enums_and_required(data):
    loaded = data[2]
    # Seal-Tools layout: python type names, top-level required list, "choices" -> enum.
    tool = next(t for r in loaded["seal_tools/dev"][0] for t in r["tools"] if t["name"] == "getHealthWorkforce")
    assert tool["parameters"]["required"] == ["location"]
    assert tool["parameters"]["properties"]["location"]["type"] == "string"
    assert tool["parameters"]["properties"]["location"]["description"].startswith("The location")
    schema = params_schema(
        {
            "movement_type": {"type": "str", "description": "d", "choices": ["walk", "run"]},
            "v": {"type": "float", "description": "speed", "unit": "m/s"},
        },
        ["movement_type"],
    )
    assert schema == {
        "type": "object",
        "properties": {
            "movement_type": {"type": "string", "description": "d", "enum": ["walk", "run"]},
            "v": {"type": "number", "description": "speed (unit: m/s)"},
        },
        "required": ["movement_type"],
    }
    # xLAM layout: "type, optional" markers beside required parameters; List[int]; placeholder default.
    schema = params_schema(
        {
            "a": {"type": "List[int]", "description": "x", "default": ""},
            "b": {"type": "str, optional", "description": "y", "default": "US"},
        }
    )
    assert schema == {
        "type": "object",
        "properties": {
            "a": {"type": "array", "items": {"type": "integer"}, "description": "x"},
            "b": {"type": "string", "description": "y", "default": "US"},
        },
        "required": ["a"],
    }
    # JSON Schema passes through (nested items kept); ToolAlpaca's per-parameter flags.
    js = {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "string"}}}, "required": ["xs"]}
    assert params_schema(js) == js
    assert params_schema(
        {"q": {"type": "string", "description": "", "required": True}, "n": {"type": "integer", "description": ""}},
        flags=True,
    )["required"] == ["q"]
    # Unknown to the source: no required list is invented.
    assert "required" not in params_schema({"q": {"type": "str", "description": "z"}})


def test_loading_is_deterministic_and_in_file_order(data):
    _, root, loaded = data
    again = LOCAL_SOURCES["hammer/toolalpaca"](root, LoadReport(), False)
    assert again == loaded["hammer/toolalpaca"][0]
    ids = [int(r["meta"]["row"]) for r in again]
    assert ids == sorted(ids)


@pytest.mark.parametrize("name", NAMES)
def test_loaded_rows_render_with_a_loss_mask(name, data, tok):
    rows = data[2][name][0]
    picks = {rows[0]["meta"]["row"]: rows[0]}
    for r in rows:  # plus one row of each category the source has
        picks.setdefault(r["meta"]["category"], r)
    for r in picks.values():
        rendered = render_conversation(r, tok)
        assert len(rendered) > 0 and rendered.loss_mask.any()
        assert not rendered.loss_mask[0]


# ------------------------------------------------------------------------------- bad rows, per schema


def _write(root: Path, rel: str, content) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    return path


def _check_bad_rows(loader, root: Path, path: Path, kept: int, dropped: dict, first_bad_row: str):
    report = LoadReport()
    rows = loader(root, report, False)
    assert len(rows) == report.kept == kept
    assert dict(report.dropped) == dropped, report.examples
    assert all(e.startswith(str(path)) for e in report.examples)
    with pytest.raises(DataError) as e:
        loader(root, LoadReport(), True)
    assert f"{path}:{first_bad_row}:" in str(e.value)
    return rows


SEAL_TOOL = {
    "api_name": "getWeather",
    "api_description": "Weather of a city",
    "field": "x",
    "parameters": {"city": {"type": "str", "description": "City"}},
    "required": ["city"],
    "responses": {},
}


def test_seal_tools_bad_rows(tmp_path):
    _write(tmp_path, "seal_tools/tool.jsonl", json.dumps(SEAL_TOOL) + "\n")
    good = {
        "id": "dev-easy-0",
        "query": "Weather in Paris?",
        "calling": [{"api": "getWeather", "parameters": {"city": "Paris"}, "responses": ["API_call_0"]}],
    }
    lines = [
        json.dumps(good),
        '{"id": "dev-easy-1", "query": "broken',  # malformed JSON
        json.dumps({"id": "dev-easy-2", "query": "q", "calling": [{"api": "nope", "parameters": {}}]}),
        json.dumps({"id": "dev-easy-3", "query": "q", "calling": [{"api": "getWeather", "parameters": ["Paris"]}]}),
        json.dumps(
            {
                "id": "dev-difficult-4",
                "query": "q",
                "calling": [good["calling"][0], {"api": "getWeather", "parameters": {"city": "API_call_0"}}],
            }
        ),
        json.dumps({"id": "dev-easy-5", "calling": []}),
        json.dumps({"id": "dev-easy-6", "query": "q", "calling": []}),
    ]
    path = _write(tmp_path, "seal_tools/dev.jsonl", "\n".join(lines) + "\n\n")
    rows = _check_bad_rows(
        LOCAL_SOURCES["seal_tools/dev"],
        tmp_path,
        path,
        1,
        {
            "malformed_json": 1,
            "unknown_tool": 1,
            "args_not_object": 1,
            "dependent_call": 1,
            "missing_field": 1,
            "empty": 1,
        },
        "line2",
    )
    assert rows[0]["meta"] == {"source": "seal_tools/dev", "row": "dev-easy-0", "category": "simple"}
    assert rows[0]["tools"][0]["parameters"]["required"] == ["city"]


def test_seal_tools_finetune_bad_rows(tmp_path):
    def prompt(tools, task):
        return (
            f'Please chooose the needed apis...\nInput:\napi_list = {tools!r}\ntask_instruction = "{task}"\nOutput:\n'
        )

    data = [
        {
            "id": "dev-easy-0",
            "conversations": [
                {"from": "human", "value": prompt([SEAL_TOOL], "Weather in Paris?")},
                {"from": "gpt", "value": repr([{"api": "getWeather", "parameters": {"city": "Paris"}}])},
            ],
        },
        {
            "id": "dev-easy-1",
            "conversations": [{"from": "human", "value": "no tool list here"}, {"from": "gpt", "value": "[]"}],
        },
        {
            "id": "dev-easy-2",
            "conversations": [
                {"from": "human", "value": prompt([SEAL_TOOL], "q")},
                {"from": "gpt", "value": repr([{"api": "getTime", "parameters": {}}])},
            ],
        },
        {
            "id": "dev-easy-3",
            "conversations": [
                {"from": "human", "value": prompt([SEAL_TOOL], "q")},
                {"from": "gpt", "value": "[{'api': "},
            ],
        },
    ]
    path = _write(tmp_path, "seal_tools/dataset_for_finetune/dev.json", data)
    rows = _check_bad_rows(
        LOCAL_SOURCES["seal_tools/finetune_dev"],
        tmp_path,
        path,
        1,
        {"malformed_prompt": 1, "unknown_tool": 1, "malformed_json": 1},
        "dev-easy-1",
    )
    assert rows[0]["messages"][0]["content"] == "Weather in Paris?"


TOOLRL_INSTRUCTION = (
    "You are a helpful multi-turn dialogue assistant...\n\n**Available Tools**\n"
    "In your response, you can use the following tools:\n"
    "1. Name: Get Weather\nDescription: Weather of a city.\n"
    'Parameters: {"city": {"description": "City", "type": "string", "default": ""}}\n\n'
    "**Steps for Each Turn**\n1. **Think:** ..."
)


def _toolrl_output(call_json: str) -> str:
    return f"<think> reasoning </think>\n<tool_call>\n{call_json}\n</tool_call>"


def test_toolrl_bad_rows(tmp_path):
    hist = "**Dialogue Records History**\n<user> Weather in Paris? </user>"
    multi = (
        hist + '\n\n<think> x </think>\n<tool_call>\n{"name": "Get Weather", "parameters": {"city": "Paris"}}\n'
        '</tool_call>\n<obs> [{"name": "Get Weather", "results": {"temp": 18}}] </obs>\n\n<think> y </think>\n'
        "<response> 18 degrees. </response>\n\n<user> And in Rome? </user>"
    )
    data = [
        {
            "instruction": TOOLRL_INSTRUCTION,
            "input": hist,
            "output": _toolrl_output('{"name": "Get Weather", "parameters": {"city": "Paris"}}'),
        },
        {
            "instruction": TOOLRL_INSTRUCTION,
            "input": hist,
            "output": _toolrl_output('{"name": "Get Time", "parameters": {}}'),
        },
        {
            "instruction": TOOLRL_INSTRUCTION,
            "input": hist,
            "output": _toolrl_output('{"name": "Get Weather", "parameters": ["Paris"]}'),
        },
        {
            "instruction": TOOLRL_INSTRUCTION,
            "input": hist,
            "output": _toolrl_output('{"name": "Get Weather", "parameters": {"city": '),
        },
        {"instruction": TOOLRL_INSTRUCTION, "input": hist},
        {
            "instruction": TOOLRL_INSTRUCTION,
            "input": multi,
            "output": _toolrl_output('{"name": "Get Weather", "parameters": {"city": "Rome"}}'),
        },
        {"instruction": TOOLRL_INSTRUCTION, "input": hist, "output": "<think> nothing to do </think>"},
    ]
    path = _write(tmp_path, "toolrl/rlla_sft.json", data)
    rows = _check_bad_rows(
        LOCAL_SOURCES["toolrl/rlla_sft"],
        tmp_path,
        path,
        2,
        {"unknown_tool": 1, "args_not_object": 1, "malformed_json": 1, "missing_field": 1, "empty": 1},
        "1",
    )
    assert rows[0]["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "Get Weather", "args": {"city": "Paris"}}]},
    ]
    assert [m["role"] for m in rows[1]["messages"]] == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert rows[1]["messages"][2] == {"role": "tool", "name": "Get Weather", "content": {"temp": 18}}
    assert rows[1]["meta"]["category"] == "multi_turn"


def test_toolrl_parquet_bad_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    hist = "**Dialogue Records History**\n<user> Weather in Paris? </user>"

    def row(output):
        return {
            "data_source": "rlla",
            "ability": "math",
            "prompt": [{"content": TOOLRL_INSTRUCTION, "role": "system"}, {"content": hist, "role": "user"}],
            "reward_model": {"ground_truth": output, "style": "rule"},
        }

    table = pa.Table.from_pylist(
        [
            row(_toolrl_output('{"name": "Get Weather", "parameters": {"city": "Paris"}}')),
            row(_toolrl_output('{"name": "Nope", "parameters": {}}')),
        ]
    )
    path = tmp_path / "toolrl" / "rlla_4k_test.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    _check_bad_rows(LOCAL_SOURCES["toolrl/rlla_4k_test"], tmp_path, path, 1, {"unknown_tool": 1}, "1")


APIBANK_TOOLS = [
    {
        "name": "ToolSearcher",
        "description": "Search tools.",
        "parameters": {"keywords": {"type": "str", "description": "k"}},
        "return": {},
    },
    {
        "name": "QueryStock",
        "description": "Stock price.",
        "parameters": {"code": {"type": "str", "description": "c"}},
        "return": {},
    },
]


def test_hammer_apibank_bad_rows_and_history_tool_repair(tmp_path):
    searcher, stock = APIBANK_TOOLS
    history = [
        {"role": "user", "content": "Microsoft stock price?"},
        {"role": "agent", "content": "Let me search."},
        {"role": "assistant", "content": '```[{"name": "ToolSearcher", "arguments": {"keywords": "stock"}}]```'},
        {"role": "tool", "content": "{'name': 'QueryStock'}\nGenerate API Request:"},
    ]
    data = [
        {
            "query": [
                {"role": "user", "content": "Microsoft stock price?"},
                {"role": "agent", "content": "Let me search.\nGenerate API Request:"},
            ],
            "tools": [searcher],
            "answers": [{"name": "ToolSearcher", "arguments": {"keywords": "stock"}}],
        },
        # ToolSearcher is missing from this row's list but used in its history: taken from row 0.
        {"query": history, "tools": [stock], "answers": [{"name": "QueryStock", "arguments": {"code": "MSFT"}}]},
        {"query": history, "tools": [stock], "answers": [{"name": "DeleteStock", "arguments": {}}]},
        {"query": history, "tools": [stock], "answers": [{"name": "QueryStock", "arguments": "MSFT"}]},
        {
            "query": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"}],
            "tools": [stock],
            "answers": [{"name": "QueryStock", "arguments": {}}],
        },
        {"query": "hi", "tools": [stock]},
    ]
    path = _write(tmp_path, "hammer/apibank_l2.json", data)
    rows = _check_bad_rows(
        LOCAL_SOURCES["hammer/apibank_l2"],
        tmp_path,
        path,
        2,
        {"unknown_tool": 1, "args_not_object": 1, "orphan_tool_response": 1, "missing_field": 1},
        "2",
    )
    assert rows[0]["messages"][-1] == {
        "role": "assistant",
        "content": "Let me search.",
        "tool_calls": [{"name": "ToolSearcher", "args": {"keywords": "stock"}}],
    }
    assert [t["name"] for t in rows[1]["tools"]] == ["QueryStock", "ToolSearcher"]
    assert rows[1]["messages"][2] == {"role": "tool", "name": "ToolSearcher", "content": {"name": "QueryStock"}}
    assert rows[1]["meta"]["category"] == "multi_turn"


def test_hammer_toolalpaca_and_masking_bad_rows(tmp_path):
    tools = [
        {
            "name": "getHoliday",
            "description": "Is today a holiday",
            "parameters": {
                "countryCode": {"type": "string", "description": "cc", "required": True},
                "offset": {"type": "integer", "description": "utc offset"},
            },
        },
        {"name": "components", "description": "The detailed output format...", "parameters": {}},
    ]
    data = [
        {
            "query": "Holiday in China today?",
            "tools": tools,
            "answers": [{"name": "getHoliday", "arguments": {"countryCode": "CN"}}],
        },
        {"query": "Holiday in China today?", "tools": tools, "answers": [{"name": "components", "arguments": {}}]},
        {"query": "Holiday?", "tools": tools, "answers": [{"name": "getHoliday", "arguments": [1]}]},
    ]
    path = _write(tmp_path, "hammer/toolalpaca.json", data)
    rows = _check_bad_rows(
        LOCAL_SOURCES["hammer/toolalpaca"], tmp_path, path, 1, {"unknown_tool": 1, "args_not_object": 1}, "1"
    )
    assert [t["name"] for t in rows[0]["tools"]] == ["getHoliday"]  # the 'components' pseudo tool is gone
    assert rows[0]["tools"][0]["parameters"]["required"] == ["countryCode"]

    def instruction(tools_json, query):
        return (
            f"[BEGIN OF TASK INSTRUCTION]\n...\n[END OF TASK INSTRUCTION]\n\n[BEGIN OF AVAILABLE TOOLS]\n"
            f"{tools_json}\n[END OF AVAILABLE TOOLS]\n\n[BEGIN OF QUERY]\n{query}\n[END OF QUERY]\n\n"
        )

    mtools = json.dumps(
        [
            {
                "name": "x1",
                "description": "d",
                "parameters": {
                    "a": {"description": "a", "type": "str", "default": "z"},
                    "b": {"description": "b", "type": "int, optional"},
                },
            }
        ]
    )
    masking = [
        {
            "instruction": instruction(mtools, "Use x1 on z"),
            "input": "",
            "output": '```\n[{"name": "x1", "arguments": {"a": "z"}}]\n```',
        },
        {"instruction": instruction(mtools, "Unrelated"), "input": "", "output": "```\n[]\n```"},
        {"instruction": instruction(mtools, "q"), "input": "", "output": '```\n[{"name": \n```'},
        {"instruction": instruction("[{broken", "q"), "input": "", "output": "```\n[]\n```"},
        {"instruction": instruction(mtools, "q"), "input": "", "output": '```\n[{"name": "x2", "arguments": {}}]\n```'},
    ]
    path = _write(tmp_path, "hammer/masking_sft_data_example.json", masking)
    rows = _check_bad_rows(
        LOCAL_SOURCES["hammer/masking_example"], tmp_path, path, 2, {"malformed_json": 2, "unknown_tool": 1}, "2"
    )
    assert rows[0]["tools"][0]["parameters"]["required"] == ["a"]
    assert rows[1]["messages"][-1] == {"role": "assistant", "content": REFUSAL}
    assert rows[1]["meta"]["category"] == "irrelevance"


GLAIVE_TOOLS = json.dumps(
    [
        {
            "name": "get_news",
            "description": "News",
            "parameters": {
                "type": "object",
                "properties": {"topic": {"type": "string", "description": "t", "enum": ["tech", "sport"]}},
                "required": ["topic"],
            },
        }
    ]
)


def test_glaive_bad_rows(tmp_path):
    def turn(kind, value):
        return {"from": kind, "value": value}

    call = json.dumps({"name": "get_news", "arguments": {"topic": "tech"}})
    data = [
        {
            "conversations": [
                turn("human", "Tech news?"),
                turn("function_call", call),
                turn("observation", '{"items": ["a"]}'),
                turn("gpt", "Here: a."),
            ],
            "tools": GLAIVE_TOOLS,
        },
        {"conversations": [turn("human", "Hi"), turn("gpt", "Hello!")], "tools": "[{broken"},
        {
            "conversations": [
                turn("human", "Tech news?"),
                turn("gpt", "AI get_news: {...}"),
                turn("observation", "{}"),
                turn("gpt", "ok"),
            ],
            "tools": GLAIVE_TOOLS,
        },
        {
            "conversations": [
                turn("human", "Tech news?"),
                turn("function_call", json.dumps({"name": "get_news", "arguments": "[1, 2]"})),
            ],
            "tools": GLAIVE_TOOLS,
        },
        {
            "conversations": [
                turn("human", "Weather?"),
                turn("function_call", json.dumps({"name": "get_weather", "arguments": {}})),
            ],
            "tools": GLAIVE_TOOLS,
        },
        {"conversations": [], "tools": GLAIVE_TOOLS},
        {"conversations": [turn("human", "Tell me a joke"), turn("gpt", "A joke.")], "tools": ""},
    ]
    path = _write(tmp_path, "llamafactory/glaive_toolcall_en_demo.json", data)
    rows = _check_bad_rows(
        LOCAL_SOURCES["llamafactory/glaive_en"],
        tmp_path,
        path,
        2,
        {"malformed_json": 1, "orphan_tool_response": 1, "args_not_object": 1, "unknown_tool": 1, "empty": 1},
        "1",
    )
    assert rows[0]["messages"][1:3] == [
        {"role": "assistant", "content": "", "tool_calls": [{"name": "get_news", "args": {"topic": "tech"}}]},
        {"role": "tool", "name": "get_news", "content": {"items": ["a"]}},
    ]
    assert rows[0]["tools"][0]["parameters"]["properties"]["topic"]["enum"] == ["tech", "sport"]
    assert rows[1]["meta"]["category"] == "chat" and rows[1]["tools"] == []


def test_reason_tool_use_bad_rows(tmp_path):
    tools = json.dumps(
        [
            {
                "type": "function",
                "function": {
                    "name": "circle_area",
                    "description": "Area",
                    "parameters": {"type": "dict", "properties": {"radius": {"type": "float", "description": "r"}}},
                    "required": ["radius"],
                },
            }
        ]
    )

    def msg(role, *parts):
        return {"role": role, "content": [{"type": t, "value": v} for t, v in parts]}

    calls = [("tool_call", json.dumps({"name": "circle_area", "arguments": {"radius": r}})) for r in (1, 2)]
    results = json.dumps(
        [
            {"tool_call_id": "a", "name": "circle_area", "content": "{'area': 3.14}"},
            {"tool_call_id": "b", "name": "circle_area", "content": "{'area': 12.57}"},
        ]
    )
    good = {
        "messages": [
            msg("system", ("text", "You must reason.")),
            msg("user", ("text", "Areas of r=1, r=2?")),
            msg("assistant", ("reasoning", "two calls"), *calls),
            msg("tool", ("text", results)),
            msg("assistant", ("reasoning", "done"), ("text", "3.14 and 12.57.")),
        ],
        "tools": tools,
    }
    unknown = {
        "messages": [
            msg("user", ("text", "q")),
            msg("assistant", ("tool_call", json.dumps({"name": "square_area", "arguments": {}}))),
        ],
        "tools": tools,
    }
    path = _write(
        tmp_path,
        "llamafactory/reason_tool_use_demo_50.jsonl",
        "\n".join([json.dumps(good), "{not json", json.dumps(unknown)]) + "\n",
    )
    rows = _check_bad_rows(
        LOCAL_SOURCES["llamafactory/reason_tool_use"],
        tmp_path,
        path,
        1,
        {"malformed_json": 1, "unknown_tool": 1},
        "line2",
    )
    r = rows[0]
    assert [m["role"] for m in r["messages"]] == ["user", "assistant", "tool", "tool", "assistant"]
    assert r["messages"][2]["content"] == {"area": 3.14}
    assert r["messages"][-1] == {"role": "assistant", "content": "3.14 and 12.57."}  # reasoning dropped
    assert r["tools"][0]["parameters"] == {
        "type": "object",
        "properties": {"radius": {"type": "number", "description": "r"}},
        "required": ["radius"],
    }
    assert r["meta"]["category"] == "parallel"  # results then a text answer: no dependent calls


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        LOCAL_SOURCES["hammer/apibank_l1"](tmp_path, LoadReport(), False)
    _write(tmp_path, "hammer/apibank_l1.json", "{not a json array")
    with pytest.raises(DataError, match="apibank_l1.json"):
        LOCAL_SOURCES["hammer/apibank_l1"](tmp_path, LoadReport(), False)
