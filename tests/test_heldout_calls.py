"""The held-out tool-calling set (data/heldout_calls): only new tools, the three kinds of prompt
(real, joined, offered another source's tools), balanced kinds and sources, scored per source and
per how by evaluation/call_decisions; and, where ../shared/datasets is present, the real set."""

import json
import os
from pathlib import Path

import pytest

from gemma_tool_use.data import heldout_calls as hc
from gemma_tool_use.evaluation import call_decisions as cd


def _tool(name):
    return {"name": name, "description": f"does {name}", "parameters": {"type": "object", "properties": {}}}


def _row(i, tools, calls, history=()):
    return {
        "tools": [_tool(t) for t in tools],
        "messages": [
            *history,
            {"role": "user", "content": f"request {i}"},
            {"role": "assistant", "content": "", "tool_calls": calls},
        ],
        "meta": {"source": "x", "row": str(i)},
    }


def test_only_rows_whose_every_tool_is_new_and_the_gold_turn_by_source():
    trained = {hc.tool_key("Get_Weather")}
    rows = [
        _row(0, ["getweather", "new_a"], [{"name": "new_a", "args": {}}]),  # offers a trained tool (any spelling)
        _row(1, ["new_a"], [{"name": "new_a", "args": {"k": 1}}]),
    ]
    got = hc.real_prompts("hammer/apibank_l1", rows, trained)
    assert [p["id"] for p in got] == ["hammer/apibank_l1:1"]
    assert got[0]["gold"] == [{"name": "new_a", "args": {"k": 1}}] and got[0]["messages"][-1]["role"] == "user"
    # a dialogue source is scored on its first turn with calls, not its last turn
    dialogue = _row(2, ["new_b"], [{"name": "new_b", "args": {}}])
    dialogue["messages"] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "which city?"},
        {"role": "user", "content": "Paris"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "new_b", "args": {"city": "Paris"}}]},
        {"role": "tool", "content": "{}"},
        {"role": "assistant", "content": "done"},
    ]
    (p,) = hc.real_prompts("sgd/dev", [dialogue], trained)
    assert p["gold"][0]["args"] == {"city": "Paris"} and len(p["messages"]) == 3
    # a gold credential the conversation never states can only be guessed: left out, counted
    guessed = _row(3, ["new_c"], [{"name": "new_c", "args": {"access_key": "75619bf6", "keywords": "x"}}])
    stated = _row(4, ["new_c"], [{"name": "new_c", "args": {"apiKey": "k-42"}}])
    stated["messages"][0]["content"] = "my key is k-42"
    dropped = {}
    assert [p["id"] for p in hc.real_prompts("s", [guessed, stated], trained, dropped)] == ["s:4"]
    assert dropped == {"gold_needs_an_unstated_secret": 1}
    assert not hc.needs_an_unstated_secret([], [{"name": "f", "args": {"keywords": "history"}}])


def _real(n_per_source=6):
    prompts = []
    for s, source in enumerate(("a/x", "b/y", "c/z")):
        rows = [
            _row(i, [f"t{s}_{i % 2}", f"u{s}_{i}"], [{"name": f"t{s}_{i % 2}", "args": {"v": i}}])
            for i in range(n_per_source)
        ]
        prompts += hc.real_prompts(source, rows, set())
    return prompts


def test_joined_prompts_call_as_many_times_as_requests_and_other_tools_fit_none():
    real = _real()
    joined = hc.joined_prompts(real, 10, seed=0)
    assert len(joined) == 10 and all(len(p["gold"]) >= 2 and p["source"] == "joined" for p in joined)
    assert {p["how"] for p in joined} == {"joined", "joined_same_tool"}
    for p in joined:
        offered = {t["name"] for t in p["tools"]}
        assert {c["name"] for c in p["gold"]} <= offered and len(p["messages"]) == 1
    assert len({p["id"] for p in joined}) == len(joined)
    none = hc.other_tools_prompts(real, seed=0)
    assert len(none) == len(real)
    for p, r in zip(none, real):
        assert p["gold"] == [] and p["how"] == "other_tools" and p["messages"] == r["messages"]
        assert not {t["name"] for t in p["tools"]} & {t["name"] for t in r["tools"]}  # another source's tools
    assert hc.joined_prompts(real, 10, seed=0) == joined


def test_balanced_takes_each_kind_round_robin_over_sources():
    real = _real()
    made = real + hc.joined_prompts(real, 4, 0) + hc.other_tools_prompts(real, 0)
    got = hc.balanced(made, {"one_call": 6, "several_calls": 4, "no_call": 3}, seed=0)
    kinds = [cd._kind(p["gold"]) for p in got]
    assert kinds == ["one_call"] * 6 + ["several_calls"] * 4 + ["no_call"] * 3
    assert sorted(p["source"] for p in got[:6]) == ["a/x", "a/x", "b/y", "b/y", "c/z", "c/z"]
    assert hc.balanced(made, {"one_call": 6}, seed=1) != hc.balanced(made, {"one_call": 6}, seed=0)


def test_scores_per_source_and_how_and_right_functions():
    one = [{"name": "f", "args": {"x": 1}}]
    prompts = [
        {"gold": one, "source": "a", "how": "real"},
        {"gold": one + [{"name": "g", "args": {}}], "source": "joined", "how": "joined"},
        {"gold": [], "source": "a", "how": "other_tools"},
    ]
    preds = [
        {"line": 1, "tool_calls": [{"name": "f", "args": {"x": "1"}}]},  # right function, argument written differently
        {"line": 2, "tool_calls": [{"name": "g", "args": {}}, {"name": "f", "args": {"x": 1}}]},
        {"line": 3, "tool_calls": one},
    ]
    s = cd.score(prompts, preds)
    assert s["names_right_rate"] == 100.0 and s["exact_rate"] == 50.0 and s["false_call_rate"] == 100.0
    assert s["by_source"]["a"] == {
        "prompts": 2,
        "due": 1,
        "names_right": 1,
        "count_right": 1,
        "not_due": 1,
        "false_call": 1,
    }
    assert s["by_how"]["several_calls/joined"]["exact"] == 1
    assert s["by_gold_kind"]["one_call"] == {"prompts": 1, "exact": 0, "false_refusal": 0, "names_right": 1}
    # rows a predict run rejected are left out, not scored as answers without calls
    assert cd.score_lines([(1, prompts[0]), (3, prompts[2])], preds)["prompts"] == 2


def test_scores_per_turn_where_the_decision_falls():
    """The first user turn, a later user turn, and right after a tool result: issue 29's false
    refusals sat after tool results, which no count per kind or source shows."""
    call = [{"name": "f", "args": {}}]
    user, tool = {"role": "user", "content": "u"}, {"role": "tool", "content": "r"}
    said = {"role": "assistant", "content": "", "tool_calls": call}
    system = {"role": "system", "content": "s"}
    prompts = [
        {"gold": call, "messages": [system, user]},  # a system prompt is not a user turn
        {"gold": call, "messages": [user, said, tool]},
        {"gold": [], "messages": [user, {"role": "assistant", "content": "a"}, user]},
        {"gold": call, "messages": [user, said, tool, {"role": "assistant", "content": "a"}, user]},
    ]
    preds = [{"line": 1, "tool_calls": call}, {"line": 2, "tool_calls": []}, {"line": 3, "tool_calls": call}]
    by_turn = cd.score(prompts, preds)["by_turn"]
    assert by_turn["first_user_turn"] == {"prompts": 1, "due": 1, "count_right": 1, "names_right": 1, "exact": 1}
    assert by_turn["after_tool_result"] == {"prompts": 1, "due": 1, "false_refusal": 1}
    assert by_turn["later_user_turn"] == {"prompts": 2, "due": 1, "false_refusal": 1, "not_due": 1, "false_call": 1}
    assert cd.turn([user, said]) == "after_assistant"  # kept visible, not folded into a turn it is not


SHARED = Path(
    os.environ.get("GEMMA_TOOL_USE_TEST_DATASETS") or Path(__file__).resolve().parents[2] / "shared" / "datasets"
)


def test_the_real_set_offers_no_tool_a_training_source_offers(tmp_path):
    """On the real datasets (~25 s): every kind filled, no offered tool in sft_broad's sources or pools."""
    if not (SHARED / "hammer" / "apibank_l1.json").is_file():
        pytest.skip(f"datasets not found at {SHARED}")
    out = tmp_path / "p.jsonl"
    hc.main(["--data", "sft_broad", "--out", str(out), "--root", str(SHARED)])
    prompts = [json.loads(line) for line in out.read_text().splitlines()]
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["prompts"] == len(prompts) == sum(hc.DEFAULT_PER_KIND.values())
    from omegaconf import OmegaConf

    from gemma_tool_use.utils.paths import conf_dir

    data = OmegaConf.load(conf_dir() / "data" / "sft_broad.yaml")
    trained = hc.trained_tool_keys(list(data.sources), list(data.tool_pools), SHARED)
    assert not {hc.tool_key(t["name"]) for p in prompts for t in p["tools"]} & trained
    assert len({p["id"] for p in prompts}) == len(prompts)
