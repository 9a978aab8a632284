"""Decontamination against bfcl-eval's own data: planted BFCL rows are caught."""

import pytest

from gemma_tool_use.data.decontaminate import bfcl_index, contamination_reason, decontaminate
from gemma_tool_use.evaluation import bfcl


@pytest.fixture(scope="module")
def index():
    return bfcl_index()


def planted(category, i=0):
    e = bfcl.load_entries(category)[i]
    conv = bfcl.entry_conversation(e)
    conv["messages"].append({"role": "assistant", "content": "ok"})
    return conv


CLEAN = {
    "tools": [
        {
            "name": "brew_coffee",
            "description": "Brew a cup of coffee with the given roast and size.",
            "parameters": {"type": "object", "properties": {"roast": {"type": "string"}}},
        }
    ],
    "messages": [
        {"role": "user", "content": "Make me a dark roast, large please."},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "brew_coffee", "args": {"roast": "dark"}}]},
    ],
}


def test_index_covers_every_category(index):
    assert index.n_entries > 4000 and len(index.queries) > 3000 and len(index.descriptions) > 1000


@pytest.mark.parametrize("category", ["simple_python", "multiple", "live_multiple", "irrelevance", "multi_turn_base"])
def test_planted_bfcl_rows_are_dropped(index, category):
    assert contamination_reason(planted(category), index) is not None


def test_edited_copies_are_caught(index):
    row = planted("simple_python", 5)
    q = row["messages"][0]["content"]
    row["messages"][0]["content"] = "  " + q.upper().replace(".", " !") + "  "
    assert contamination_reason(row, index) == "bfcl_query_exact"
    # Same BFCL tool (hint stripped, description lightly edited), new question: caught by the tool.
    e = bfcl.load_entries("multiple", hints=False)[3]["function"][0]
    tool = {"name": e["name"], "description": e["description"] + " Extra words here.", "parameters": {"type": "object"}}
    row = {
        "tools": [tool],
        "messages": [{"role": "user", "content": "totally new question"}, {"role": "assistant", "content": "x"}],
    }
    assert contamination_reason(row, index) == "bfcl_function_name"  # its name alone drops it now
    renamed = {**row, "tools": [{**tool, "name": "fresh_name", "description": e["description"]}]}
    assert contamination_reason(renamed, index) == "bfcl_tool_description_exact"


def test_clean_rows_are_kept_and_counts_reported(index):
    rows = [CLEAN, planted("simple_python", 1), planted("parallel", 2), CLEAN]
    kept, dropped = decontaminate(rows, index)
    assert kept == [CLEAN, CLEAN]
    assert sum(dropped.values()) == 2 and all(k.startswith("bfcl_") for k in dropped)


def test_a_row_offering_or_calling_a_bfcl_function_name_is_dropped(index):
    name = bfcl.load_entries("live_multiple", hints=False)[0]["function"][0]["name"]
    assert name in index.function_names
    offered = {**CLEAN, "tools": [*CLEAN["tools"], {"name": name, "description": "new words", "parameters": {}}]}
    assert contamination_reason(offered, index) == "bfcl_function_name"
    dotted = next(
        f["name"] for e in bfcl.load_entries("simple_python", hints=False) for f in e["function"] if "." in f["name"]
    )
    as_sent = {"name": dotted.replace(".", "_"), "description": "x y", "parameters": {}}
    assert contamination_reason({**CLEAN, "tools": [as_sent]}, index) == "bfcl_function_name"
    assert contamination_reason(CLEAN, index) is None
