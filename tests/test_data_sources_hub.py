"""Hub dataset loaders (data/sources: xLAM 60k, xLAM irrelevance, ToolACE, Hermes function calling):
upstream rows -> canonical rows. Fixtures in tests/fixtures/hub/ are small hand-written files in each
dataset's upstream layout; nothing here touches the network."""

import copy
import functools
import json
from pathlib import Path

import pytest

from gemma_tool_use.data import sources as hub
from gemma_tool_use.data.conversations import DataError, LoadReport
from gemma_tool_use.data.rows import REFUSAL
from gemma_tool_use.data.sources.common import RowError, convert_rows, type_schema
from gemma_tool_use.data.sources.hermes import hermes_row_to_conversation, hermes_system_to_tools
from gemma_tool_use.data.sources.toolace import parse_python_calls, toolace_row_to_conversation
from gemma_tool_use.data.sources.xlam import xlam_row_to_conversation
from gemma_tool_use.format.render import render_conversation, render_text, validate_conversation

FIXTURES = Path(__file__).parent / "fixtures" / "hub"


def raw(name: str) -> list[dict]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def load(hub_id: str, name: str, **kw):
    report = LoadReport()
    rows = hub.load_hub_dataset(
        hub_id, revision=hub.HUB_SOURCES[hub_id].revision, report=report, data_files=FIXTURES / name, **kw
    )
    return rows, report


@pytest.fixture(scope="module")
def tok():
    from gemma_tool_use.model.tokenizer import load_tokenizer

    return load_tokenizer()


def check_rows(rows: list[dict], source: str) -> None:
    """Every row is canonical, tagged, and calls only tools it lists."""
    for row in rows:
        validate_conversation(row)
        assert row["meta"]["source"] == source
        names = {t["name"] for t in row["tools"]}
        for t in row["tools"]:
            assert t["parameters"]["type"] == "object" and isinstance(t["parameters"]["properties"], dict)
        for m in row["messages"]:
            for c in m.get("tool_calls") or []:
                assert c["name"] in names and isinstance(c["args"], dict)
            if m["role"] == "tool":
                assert m["name"] in names
        assert row["messages"][-1]["role"] == "assistant"


def calls(row: dict) -> list[dict]:
    return [c for m in row["messages"] for c in m.get("tool_calls") or []]


def tool(row: dict, name: str) -> dict:
    return next(t for t in row["tools"] if t["name"] == name)


# ------------------------------------------------------------------------------------ xLAM


def test_xlam_rows_are_canonical_with_categories_and_typed_arguments():
    rows, report = load(hub.XLAM_ID, "xlam_function_calling_60k.json")
    assert report.kept == 5 and not report.dropped
    check_rows(rows, hub.XLAM_ID)
    assert [r["meta"]["category"] for r in rows] == ["simple", "multiple", "parallel", "parallel_multiple", "simple"]
    assert [r["meta"]["row"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[0]["messages"] == [
        {"role": "user", "content": "What is the exchange rate from EUR to GBP?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"name": "get_exchange_rate", "args": {"base": "EUR", "target": "GBP"}}],
        },
    ]
    assert calls(rows[1]) == [{"name": "is_prime", "args": {"n": 1031}}]
    assert calls(rows[3])[0]["args"]["numbers"] == [2.5, 3, 4.5]
    assert calls(rows[3])[1]["args"]["nums"] == [-2, 1, -3, 4, -1, 2, 1]


def test_xlam_parameters_become_json_schema():
    rows, _ = load(hub.XLAM_ID, "xlam_function_calling_60k.json")
    comments = tool(rows[2], "video_comments")["parameters"]
    assert comments["properties"] == {
        "video_id": {"type": "integer", "description": "The ID of the video.", "default": 7178094165614464282},
        "cursor": {"type": "integer", "description": "The cursor for pagination. Defaults to 0.", "default": 0},
        "count": {"type": "integer", "description": "The number of comments to fetch. Defaults to 20.", "default": 20},
        "lang": {"type": "string", "description": "Language filter. Defaults to None."},  # "" default: none
    }
    assert comments["required"] == ["video_id"]  # ", optional" types are not required
    rate = tool(rows[0], "get_exchange_rate")["parameters"]
    assert rate["required"] == ["base", "target"] and rate["properties"]["base"]["default"] == "USD"
    subarray = tool(rows[3], "find_max_subarray_sum")["parameters"]["properties"]
    assert subarray["nums"]["items"] == {"type": "integer"} and subarray["strict"]["default"] is False
    assert tool(rows[3], "average")["parameters"]["properties"]["numbers"]["items"] == {"type": "number"}
    # A parameter with a default that the gold call leaves out is not required for that row.
    giveaways = tool(rows[4], "list_giveaways")["parameters"]
    assert giveaways["required"] == [] and giveaways["properties"]["type"]["default"] == "game"


@pytest.mark.parametrize(
    "name, schema",
    [
        ("str", {"type": "string"}),
        ("int", {"type": "integer"}),
        ("float", {"type": "number"}),
        ("bool", {"type": "boolean"}),
        ("str, optional", {"type": "string"}),
        ("int, optional", {"type": "integer"}),
        ("List[str]", {"type": "array", "items": {"type": "string"}}),
        ("List", {"type": "array"}),
        ("List[List[int]]", {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}),
        ("Tuple[int, int]", {"type": "array", "items": {"type": "integer"}}),
        ("Dict", {"type": "object"}),
        ("Dict[str, Any]", {"type": "object"}),
        ("dict, optional", {"type": "object"}),
        ("Union[int, float]", {"type": "number"}),
        ("Optional[str]", {"type": "string"}),
        ("int | None", {"type": "integer"}),
        ("Union[str, int]", {"type": ["string", "integer"]}),
        ("Callable", {}),
        ("Any", {}),
    ],
)
def test_python_type_names_map_to_json_schema(name, schema):
    assert type_schema(name)[0] == schema


def test_xlam_irrelevance_rows_answer_in_plain_text():
    rows, report = load(hub.XLAM_IRRELEVANCE_ID, "xlam_irrelevance.json")
    assert report.kept == 3 and not report.dropped
    check_rows(rows, hub.XLAM_IRRELEVANCE_ID)
    assert [r["meta"]["category"] for r in rows] == ["irrelevance", "irrelevance", "chat"]  # the last offers no tool
    assert [r["meta"]["row"] for r in rows] == ["0", "1", "2"]  # rows carry no id: their index
    for r in rows:
        assert r["messages"][-1] == {"role": "assistant", "content": REFUSAL}
    custom = convert_rows(
        raw("xlam_irrelevance.json")[:1],
        functools.partial(xlam_row_to_conversation, no_call_reply="No tool fits."),
        source=hub.XLAM_IRRELEVANCE_ID,
    )
    assert custom[0]["messages"][-1]["content"] == "No tool fits."


# ------------------------------------------------------------------------------------ ToolACE


def test_toolace_rows_parse_python_calls_and_tool_results():
    rows, report = load(hub.TOOLACE_ID, "toolace.json")
    assert report.kept == 4 and not report.dropped
    check_rows(rows, hub.TOOLACE_ID)
    assert [r["meta"]["category"] for r in rows] == ["multi_turn", "parallel", "irrelevance", "simple"]
    multi = rows[0]
    assert [m["role"] for m in multi["messages"]] == ["user", "assistant", "tool", "assistant"] * 2
    assert calls(multi) == [
        {"name": "GetLeagues", "args": {"country": "PE"}},
        {"name": "Get Team Logo", "args": {"team": "Alianza Lima", "size": 128}},
    ]
    assert multi["messages"][6] == {
        "role": "tool",
        "name": "Get Team Logo",
        "content": {"url": "https://img.example/alianza-128.png"},
    }
    logo = tool(multi, "Get Team Logo")["parameters"]
    assert logo == {
        "type": "object",
        "required": ["team"],
        "properties": {
            "team": {"description": "Team name.", "type": "string"},
            "size": {"description": "Edge length in pixels.", "type": "integer"},
        },
    }  # "dict"/"int" mapped
    assert calls(rows[1]) == [
        {"name": "convertCurrency", "args": {"amount": 100.0, "from": "USD", "to": "EUR"}},
        {"name": "convertCurrency", "args": {"amount": 100.0, "from": "USD", "to": "JPY"}},
    ]
    assert tool(rows[1], "convertCurrency")["parameters"]["properties"]["amount"]["type"] == "number"
    assert rows[2]["messages"][-1] == {
        "role": "assistant",
        "content": "Sure. From which airport are you leaving, and on what date?",
    }
    assert calls(rows[3])[0]["args"] == {
        "origin": "LHR",
        "destination": "LIS",
        "date": "2024-05-20",
        "passengers": 2,
        "flexible": True,
    }


def test_toolace_system_prompt_boilerplate_is_dropped_and_other_text_kept():
    rows, _ = load(hub.TOOLACE_ID, "toolace.json")
    assert all(m["role"] != "system" for r in rows[:3] for m in r["messages"])
    assert rows[3]["messages"][0] == {"role": "system", "content": "Today is 2024-05-01. Answer in a friendly tone."}


def test_python_calls_are_parsed_without_evaluation():
    assert parse_python_calls('[f(a=-1, b=[1, 2.5], c={"k": None}, d=true, e="x, (y)")]') == [
        {"name": "f", "args": {"a": -1, "b": [1, 2.5], "c": {"k": None}, "d": True, "e": "x, (y)"}}
    ]
    assert parse_python_calls("[Get Team Logo(), g(x='a'), h(from=\"x\")]") == [
        {"name": "Get Team Logo", "args": {}},
        {"name": "g", "args": {"x": "a"}},
        {"name": "h", "args": {"from": "x"}},
    ]  # a Python keyword as an argument name
    for text in (
        '[f(a=__import__("os").getcwd())]',
        "[f(a=(lambda: 1)())]",
        "[f(a=1 + 2)]",
        "[f(1)]",
        "[f(a=1, a=2)]",
        "[f(a=1) g(b=2)]",
        "[f(a=1]",
        "[f(**{'a': 1})]",
        "[f(a=x)]",
    ):
        with pytest.raises(RowError) as e:
            parse_python_calls(text)
        assert e.value.reason == "malformed_json" and isinstance(e.value, ValueError)


# ------------------------------------------------------------------------------------ Hermes


def test_hermes_single_turn_calls_in_json_and_python_literal_form():
    rows, report = load(hub.HERMES_ID, "hermes_func_calling_singleturn.json", config="func_calling_singleturn")
    assert report.kept == 2 and not report.dropped
    check_rows(rows, hub.HERMES_ID)
    assert [r["meta"]["category"] for r in rows] == ["parallel_multiple", "multiple"]
    assert [r["meta"]["row"] for r in rows] == ["8a1f0c22-1", "8a1f0c22-2"]
    assert calls(rows[0]) == [  # written upstream as Python dict literals
        {"name": "getInventoryLevels", "args": {"api_endpoint": "https://api.shop.example/inventory"}},
        {
            "name": "getOrderStatuses",
            "args": {"api_endpoint": "https://api.shop.example/orders", "include_closed": True},
        },
        {"name": "trackShipment", "args": {"shipment_id": "SH-4411", "carrier": "dhl"}},
    ]
    assert calls(rows[1]) == [{"name": "get_stock_price", "args": {"symbol": "NVDA"}}]
    assert tool(rows[0], "trackShipment")["parameters"]["properties"]["carrier"]["enum"] == ["ups", "dhl"]
    assert all(m["role"] != "system" for r in rows for m in r["messages"])  # only the Hermes tool prompt


def test_hermes_multi_turn_with_tool_responses():
    rows, report = load(hub.HERMES_ID, "hermes_func_calling.json", config="func_calling")
    assert report.kept == 2 and not report.dropped
    check_rows(rows, hub.HERMES_ID)
    assert [r["meta"]["category"] for r in rows] == ["multi_turn", "parallel"]
    assert rows[0]["messages"][2] == {
        "role": "tool",
        "name": "get_stock_price",
        "content": {"symbol": "TSLA", "price": 191.97, "currency": "USD"},
    }
    assert calls(rows[0])[1] == {"name": "get_company_news", "args": {"symbol": "TSLA", "limit": 3}}
    parallel = rows[1]["messages"]
    assert parallel[1]["content"] == "Let me look both up." and len(parallel[1]["tool_calls"]) == 2
    assert [m["content"]["price"] for m in parallel if m["role"] == "tool"] == [189.5, 415.1]


def test_hermes_glaive_rows_and_rows_without_tools():
    rows, report = load(hub.HERMES_ID, "hermes_glaive_func_calling.json", config="glaive_func_calling")
    assert report.kept == 2 and not report.dropped
    check_rows(rows, hub.HERMES_ID)
    assert [r["meta"]["category"] for r in rows] == ["multi_turn", "chat"]
    assert rows[0]["messages"][0]["role"] == "user"
    assert rows[1]["tools"] == []
    assert rows[1]["messages"][0] == {
        "role": "system",
        "content": "You are a helpful assistant, with no access to external functions.",
    }


def test_hermes_tool_prompt_is_cut_out_of_the_system_text():
    glaive_system = raw("hermes_glaive_func_calling.json")[0]["conversations"][0]["value"]
    text = "You are Bob, a terse assistant.\n\n" + glaive_system + "\nAnswer in French."
    tools, rest = hermes_system_to_tools(text)
    assert [t["name"] for t in tools] == ["get_movie_details", "calculate_tip"]
    assert rest == "You are Bob, a terse assistant.\n\nAnswer in French."
    # Tools come from the row's `tools` field first; the system prompt's copy only when that is empty.
    row = raw("hermes_func_calling_singleturn.json")[1]
    row["tools"] = json.dumps([json.loads(row["tools"])[0]])
    assert [t["name"] for t in hermes_row_to_conversation(row)[0]] == ["get_stock_price"]
    row["tools"] = "[]"
    assert [t["name"] for t in hermes_row_to_conversation(row)[0]] == ["get_stock_price", "get_company_news"]


# ------------------------------------------------------------------------------------ bad rows


@pytest.mark.parametrize(
    "hub_id, name, kept, dropped, first",
    [
        (
            hub.XLAM_ID,
            "xlam_bad.json",
            1,
            {"malformed_json": 1, "unknown_tool": 1, "empty": 1, "bad_tool_schema": 1},
            "xlam_bad.json:100: malformed_json",
        ),
        (
            hub.TOOLACE_ID,
            "toolace_bad.json",
            0,
            {"malformed_prompt": 1, "malformed_json": 1, "unknown_tool": 1, "orphan_tool_response": 1},
            "toolace_bad.json:0: malformed_prompt",
        ),
        (
            hub.HERMES_ID,
            "hermes_bad.json",
            0,
            {
                "malformed_prompt": 1,
                "orphan_tool_response": 1,
                "malformed_json": 1,
                "missing_field": 1,
                "bad_tool_schema": 1,
            },
            "hermes_bad.json:bad-1: malformed_prompt",
        ),
    ],
)
def test_bad_rows_are_counted_and_skipped(hub_id, name, kept, dropped, first):
    rows, report = load(hub_id, name)
    assert len(rows) == report.kept == kept
    assert dict(report.dropped) == dropped
    assert first in report.examples[0]


@pytest.mark.parametrize(
    "hub_id, name, where",
    [
        (hub.XLAM_ID, "xlam_bad.json", "xlam_bad.json:100: malformed_json"),
        (hub.TOOLACE_ID, "toolace_bad.json", "toolace_bad.json:0: malformed_prompt"),
        (hub.HERMES_ID, "hermes_bad.json", "hermes_bad.json:bad-1: malformed_prompt"),
    ],
)
def test_strict_mode_raises_naming_the_row(hub_id, name, where):
    with pytest.raises(DataError, match=where.replace(".", r"\.")):
        load(hub_id, name, strict=True)
    with pytest.raises(DataError, match=r"^my/source:101: unknown_tool"):
        convert_rows(raw("xlam_bad.json")[1:2], xlam_row_to_conversation, strict=True, source="my/source")


def test_row_converters_are_pure_and_raise_value_errors():
    row = raw("xlam_function_calling_60k.json")[2]
    before = copy.deepcopy(row)
    first = xlam_row_to_conversation(row)
    assert xlam_row_to_conversation(row) == first and row == before
    for convert, bad in [
        (xlam_row_to_conversation, raw("xlam_bad.json")[0]),
        (toolace_row_to_conversation, raw("toolace_bad.json")[1]),
        (hermes_row_to_conversation, raw("hermes_bad.json")[0]),
    ]:
        with pytest.raises(ValueError) as e:
            convert(bad)
        assert isinstance(e.value, RowError) and e.value.reason


def test_converters_work_with_dataset_map():
    from datasets import Dataset

    ds = Dataset.from_list(raw("xlam_function_calling_60k.json"))

    def to_json(r):
        tools, messages = xlam_row_to_conversation(r)
        return {"conversation": json.dumps({"tools": tools, "messages": messages})}

    out = ds.map(to_json, remove_columns=ds.column_names)
    assert len(out) == 5 and json.loads(out[2]["conversation"])["messages"][1]["tool_calls"][0]["args"]["count"] == 15


def test_a_row_that_crashes_a_converter_is_still_only_noted():
    report = LoadReport()
    rows = convert_rows([{"query": "x"}, 7], lambda r: 1 / 0, source="s", report=report)
    assert rows == [] and dict(report.dropped) == {"malformed_row": 2}
    assert "ZeroDivisionError" in report.examples[0] and "row is a int" in report.examples[1]


# ------------------------------------------------------------------------------------ files and hub


def test_load_hub_dataset_reads_jsonl_parquet_and_several_files_offline(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected, _ = load(hub.XLAM_ID, "xlam_function_calling_60k.json")
    rows = raw("xlam_function_calling_60k.json")
    jsonl = tmp_path / "xlam.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n", encoding="utf-8")
    parquet = tmp_path / "xlam.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for path, dropped in [(jsonl, {"malformed_json": 1}), (parquet, {})]:
        report = LoadReport()
        got = hub.load_hub_dataset(hub.XLAM_ID, revision="main", report=report, data_files=path)
        assert got == expected and dict(report.dropped) == dropped
    report = LoadReport()
    both = hub.load_hub_dataset(
        hub.HERMES_ID,
        revision="main",
        report=report,
        data_files=[FIXTURES / "hermes_func_calling.json", FIXTURES / "hermes_bad.json"],
    )
    assert len(both) == report.kept == 2 and sum(report.dropped.values()) == 5


def test_load_hub_dataset_without_network_names_the_dataset_and_suggests_local_files(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # both read the variable at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for hub_id in (hub.TOOLACE_ID, hub.XLAM_ID):
        with pytest.raises(hub.HubLoadError) as e:
            hub.load_hub_dataset(
                hub_id, revision=hub.HUB_SOURCES[hub_id].revision, report=LoadReport(), cache_dir=tmp_path / "cache"
            )
        message = str(e.value)
        assert hub_id in message and "data_files=" in message and "unreachable" in message
        assert hub.HUB_SOURCES[hub_id].files[None] in message
        assert isinstance(e.value, DataError)
    assert "HF_TOKEN" in message  # xLAM is gated


def test_registry_and_argument_checks():
    assert set(hub.HUB_SOURCES) == {hub.XLAM_ID, hub.XLAM_IRRELEVANCE_ID, hub.TOOLACE_ID, hub.HERMES_ID}
    for hub_id, spec in hub.HUB_SOURCES.items():
        assert spec.hub_id == hub_id and spec.revision and spec.license and callable(spec.converter)
    with pytest.raises(DataError, match="unknown hub dataset"):
        hub.load_hub_dataset("someone/else", revision="main", report=LoadReport())
    with pytest.raises(DataError, match="json_mode_agentic"):
        hub.load_hub_dataset(hub.HERMES_ID, revision="main", config="json_mode_agentic", report=LoadReport())
    with pytest.raises(DataError, match="not found"):
        hub.load_hub_dataset(hub.TOOLACE_ID, revision="main", report=LoadReport(), data_files="/nonexistent/data.json")


# ------------------------------------------------------------------------------------ rendering


@pytest.mark.parametrize(
    "hub_id, name, index, expect",
    [
        (
            hub.XLAM_ID,
            "xlam_function_calling_60k.json",
            2,
            '{"name": "video_comments", "args": {"video_id": 456789123, "count": 15}}',
        ),
        (hub.XLAM_IRRELEVANCE_ID, "xlam_irrelevance.json", 0, REFUSAL),
        (hub.TOOLACE_ID, "toolace.json", 0, '{"name": "Get Team Logo", "args": {"team": "Alianza Lima", "size": 128}}'),
        (
            hub.HERMES_ID,
            "hermes_func_calling.json",
            0,
            '{"name": "get_company_news", "args": {"symbol": "TSLA", "limit": 3}}',
        ),
    ],
)
def test_converted_rows_render(tok, hub_id, name, index, expect):
    row = load(hub_id, name)[0][index]
    rendered = render_conversation(row, tok)
    assert len(rendered) == len(rendered.loss_mask) and rendered.loss_mask.any()
    trained = tok.decode([int(i) for i, m in zip(rendered.ids, rendered.loss_mask) if m])
    assert expect in trained
    assert expect in render_text(row)
