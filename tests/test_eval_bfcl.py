"""Stage 2: bfcl-eval's verdicts on our decoded outputs, aggregates, resume, re-scoring."""

import json

import pytest

from gemma_tool_use.evaluation import bfcl
from gemma_tool_use.format.render import render_call

from conftest import run_cli


def call_text(*calls):
    return "\n".join(render_call({"name": n, "args": a}) for n, a in calls)


@pytest.fixture(scope="module")
def entries():
    cats = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "irrelevance")
    return {c: (bfcl.load_entries(c, hints=False), bfcl.load_answers(c)) for c in cats}


def test_prompts_carry_bfcls_language_hints():
    py = bfcl.entry_conversation(bfcl.load_entries("simple_python")[0])
    assert "Python 3 syntax" in py["tools"][0]["description"]
    java = bfcl.entry_conversation(bfcl.load_entries("simple_java")[0])
    assert "Java 8 SDK syntax" in java["tools"][0]["description"]
    assert all(p["type"] == "string" for p in java["tools"][0]["parameters"]["properties"].values())


def _as_source_text(v):
    """Java/JavaScript arguments are passed as strings of source text (BFCL's hint says so)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else json.dumps(v)


def first_answer_args(answer, category="simple_python"):
    """One acceptable argument set per call from BFCL's possible answers."""
    out = []
    for call in answer:
        ((name, params),) = call.items()
        args = {k: v[0] for k, v in params.items() if v and v[0] != ""}
        if category in ("simple_java", "simple_javascript"):
            args = {k: _as_source_text(v) for k, v in args.items()}
        out.append((name, args))
    return out


@pytest.mark.parametrize("category", ["simple_python", "simple_java", "simple_javascript", "multiple", "parallel"])
def test_correct_calls_pass_bfcls_checker(entries, category):
    es, answers = entries[category]
    if category in ("simple_java", "simple_javascript"):  # keep answers whose source text is obvious
        es = [
            e
            for e in es
            if all(
                not isinstance(v[0], (dict, list))
                for c in answers[e["id"]]
                for p in c.values()
                for v in p.values()
                if v
            )
        ]
    assert len(es) >= 5
    for e in es[:5]:
        text = call_text(*first_answer_args(answers[e["id"]], category))
        verdict = bfcl.score_entry(category, e, text, answers[e["id"]])
        assert verdict["valid"], (e["id"], text, verdict)


def test_wrong_and_malformed_outputs_fail_with_bfcls_error_types(entries):
    es, answers = entries["simple_python"]
    e, ans = es[0], answers[es[0]["id"]]
    name, args = first_answer_args(ans)[0]
    wrong_value = dict(args, **{next(iter(args)): 123456})
    cases = {
        call_text((name, wrong_value)): "value_error",
        call_text(("not_the_function", args)): "simple_function_checker:wrong_func_name",
        call_text((name, args)).replace("}\n</tool_call>", "\n</tool_call>"): "ast_decoder:decoder_failed",
        "I think the area is 25.": "simple_function_checker:wrong_count",
        call_text((name, args), (name, args)): "simple_function_checker:wrong_count",
    }
    for text, kind in cases.items():
        verdict = bfcl.score_entry("simple_python", e, text, ans)
        assert not verdict["valid"] and verdict["error_type"].startswith(kind), (text, verdict)


def test_a_repeated_key_is_decoded_with_its_last_value_as_json_loads_would(entries):
    es, answers = entries["simple_python"]
    e, ans = es[0], answers[es[0]["id"]]
    name, args = first_answer_args(ans)[0]
    key = next(iter(args))
    right = call_text((name, args))
    repeated_wrong_first = right.replace('"args": {', '"args": {' + json.dumps(key) + ": 123456, ", 1)
    repeated_right_first = right.replace("}}\n</tool_call>", ", " + json.dumps(key) + ": 123456}}\n</tool_call>")
    assert bfcl.score_entry("simple_python", e, repeated_wrong_first, ans)["valid"]
    assert bfcl.score_entry("simple_python", e, repeated_right_first, ans)["error_type"].startswith("value_error")


def test_irrelevance_rule(entries):
    e = entries["irrelevance"][0][0]
    assert bfcl.score_entry("irrelevance", e, "Sorry, none of the tools can do that.", None)["valid"]
    assert not bfcl.score_entry("irrelevance", e, call_text(("anything", {"x": 1})), None)["valid"]
    # BFCL's rule: output that fails to decode is "no call", so it passes irrelevance.
    assert bfcl.score_entry("irrelevance", e, "<tool_call>\n{oops\n</tool_call>", None)["valid"]


def test_aggregates_match_hand_computed_values():
    per = {
        "simple_python": {"accuracy": 0.9, "total_count": 400},
        "simple_java": {"accuracy": 0.6, "total_count": 100},
        "simple_javascript": {"accuracy": 0.3, "total_count": 50},
        "multiple": {"accuracy": 0.8, "total_count": 200},
        "parallel": {"accuracy": 0.5, "total_count": 200},
        "parallel_multiple": {"accuracy": 0.4, "total_count": 200},
        "irrelevance": {"accuracy": 0.7, "total_count": 240},
        "live_irrelevance": {"accuracy": 0.5, "total_count": 884},
        "live_simple": {"accuracy": 0.6, "total_count": 258},
        "live_multiple": {"accuracy": 0.5, "total_count": 1053},
        "live_parallel": {"accuracy": 0.25, "total_count": 16},
        "live_parallel_multiple": {"accuracy": 0.5, "total_count": 24},
        "multi_turn_base": {"accuracy": 0.1, "total_count": 200},
        "multi_turn_miss_func": {"accuracy": 0.2, "total_count": 200},
        "multi_turn_miss_param": {"accuracy": 0.3, "total_count": 200},
        "multi_turn_long_context": {"accuracy": 0.0, "total_count": 200},
    }
    agg = bfcl.aggregate(per)
    simple = (0.9 + 0.6 + 0.3) / 3  # 0.6
    assert agg["simple"] == pytest.approx(simple)
    assert agg["non_live"] == pytest.approx((simple + 0.8 + 0.5 + 0.4) / 4)  # 0.575
    live = (0.6 * 258 + 0.5 * 1053 + 0.25 * 16 + 0.5 * 24) / (258 + 1053 + 16 + 24)
    assert agg["live"] == pytest.approx(live)
    assert agg["irrelevance"] == pytest.approx(0.6)
    assert agg["multi_turn"] == pytest.approx(0.15)
    assert agg["overall_agentic_not_run"] == pytest.approx(0.1 * 0.575 + 0.1 * live + 0.1 * 0.6 + 0.3 * 0.15)
    assert agg["agentic_run"] is False
    partial = bfcl.aggregate({"simple_python": per["simple_python"]})
    assert partial["non_live"] is None and "simple_java" in partial["missing"]["non_live"]


def test_stratified_subset_is_fixed_per_category_and_order_free():
    from gemma_tool_use.evaluation.evaluate import select_entries, stratified_subset

    entries = bfcl.load_entries("simple_python")
    sub = stratified_subset(entries, 25)
    assert len(sub) == 25 and len({e["id"] for e in sub}) == 25
    assert [e["id"] for e in stratified_subset(list(reversed(entries)), 25)] == [e["id"] for e in reversed(sub)]
    assert {e["id"] for e in stratified_subset(entries, 25, seed=1)} != {e["id"] for e in sub}
    # not the file's head: a sample across the category
    assert {e["id"] for e in sub} != {e["id"] for e in entries[:25]}
    # smaller subsets are nested in larger ones (a cheaper tracker scores a subset of the same rows)
    assert {e["id"] for e in stratified_subset(entries, 10)} <= {e["id"] for e in sub}
    assert select_entries(entries, [], None, 25) == sub
    assert len(stratified_subset(entries[:5], 25)) == 5


def test_unknown_category_is_a_config_error():
    with pytest.raises(bfcl.BfclError, match="unknown BFCL category 'simple_cobol'"):
        bfcl.check_categories(["simple_cobol"])
    assert bfcl.check_categories(["web_search", "irrelevance"]) == ["irrelevance"]


def test_tiny_end_to_end_eval_resume_and_independent_rescoring(tmp_path):
    from bfcl_eval.eval_checker.eval_runner import evaluate_task

    cats = "eval.categories=[simple_python,multiple,parallel,irrelevance,multi_turn_base]"
    common = [
        "stage=eval",
        "model=tiny",
        cats,
        "eval.limit=3",
        "eval.ids=[simple_python_0,simple_python_1,simple_python_2,"
        "multiple_0,multiple_1,multiple_2,parallel_0,parallel_1,parallel_2,irrelevance_0,irrelevance_1,"
        "irrelevance_2,multi_turn_base_105]",
        "generation.max_new_tokens=8",
        "generation.batch_size=2",
        "generation.max_prompt_len=4096",
        "tracking=disabled",
        f"hydra.run.dir={tmp_path}",
    ]
    r = run_cli(*common)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["categories"]) == {"simple_python", "multiple", "parallel", "irrelevance", "multi_turn_base"}
    assert summary["partial"] and (tmp_path / "results.md").is_file() and (tmp_path / "accuracy.png").is_file()
    lines = {c: (tmp_path / "bfcl" / f"{c}.jsonl").read_text().splitlines() for c in summary["categories"]}
    assert all(len(v) == (1 if c == "multi_turn_base" else 3) for c, v in lines.items())
    mt = json.loads(lines["multi_turn_base"][0])
    assert isinstance(mt["result"], list) and all(isinstance(t, list) for t in mt["result"])

    # Resume: drop two finished entries (and tear the last line), re-run: only those are redone.
    path = tmp_path / "bfcl" / "multiple.jsonl"
    kept = lines["multiple"][:1]
    path.write_text("\n".join(kept) + "\n" + lines["multiple"][1][:20])
    r = run_cli(*common)
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["categories"]["multiple"]["generated_now"] == 2
    assert again["categories"]["simple_python"]["generated_now"] == 0
    assert again["categories"]["multiple"]["total_count"] == 3

    # Anyone can re-score the per-entry files with bfcl-eval's own runner and our handler.
    for cat, res in again["categories"].items():
        records = {}
        for line in (tmp_path / "bfcl" / f"{cat}.jsonl").read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[rec["id"]] = {"id": rec["id"], "result": rec["result"]}
        table = evaluate_task(
            cat,
            None,
            tmp_path / "score",
            list(records.values()),
            bfcl.MODEL_NAME,
            bfcl.handler(),
            {},
            allow_missing=True,
        )
        assert table[bfcl.MODEL_NAME][cat]["accuracy"] == pytest.approx(res["accuracy"])
        assert table[bfcl.MODEL_NAME][cat]["total_count"] == res["total_count"]


class ScriptedGenerator:
    """Stands in for the model in multi-turn tests: replays fixed texts, one per step."""

    batch_size = 1
    constrain = "none"

    def __init__(self, texts):
        self.texts = list(texts)

    def generate_ids(self, prompts, params, grammars=None):
        from gemma_tool_use.generation.generator import Generation

        assert len(prompts) == 1 and grammars is None
        text = self.texts.pop(0)
        return [Generation(0, len(prompts[0]), [1, 2], text, "stop")]


def _gt_to_text(call_strings, functions):
    """BFCL ground-truth call strings (Python syntax) as our tool-call blocks; positional
    arguments take their names from the function doc's parameter order."""
    import ast

    order = {f["name"]: list(f["parameters"]["properties"]) for f in functions}
    calls = []
    for s in call_strings:
        node = ast.parse(s, mode="eval").body
        name = ast.unparse(node.func)
        args = {order[name][i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
        args.update({k.arg: ast.literal_eval(k.value) for k in node.keywords})
        calls.append((name, args))
    return call_text(*calls)


@pytest.mark.parametrize("category", ["multi_turn_base", "multi_turn_miss_func"])
def test_multi_turn_loop_with_ground_truth_calls_passes_bfcls_checker(category, tokenizer):
    from gemma_tool_use.evaluation.multi_turn import run_dialogues, score_dialogue

    entry = bfcl.load_entries(category)[0]
    original = bfcl.load_entries(category, hints=False)[0]
    truth = bfcl.load_answers(category)[entry["id"]]
    functions = entry["function"] + [f for fs in entry.get("missed_function", {}).values() for f in fs]
    script = []
    for turn_calls in truth:  # each turn: the calls (if any), then a plain-text answer ends the turn
        if turn_calls:
            script.append(_gt_to_text(turn_calls, functions))
        script.append("Done.")
    gen = ScriptedGenerator(script)
    from gemma_tool_use.generation.generator import SamplingParams

    (d,) = run_dialogues([entry], gen, tokenizer, SamplingParams())
    assert not gen.texts and d.done and d.error is None
    assert len(d.results) == len(truth)
    tool_msgs = [m for m in d.messages if m["role"] == "tool"]
    assert len(tool_msgs) == sum(len(t) for t in truth)  # every call executed, result fed back
    assert score_dialogue(category, d, truth, original)["valid"]
    # The same entry again in this process: fresh simulated APIs, same verdict (no state leak).
    (d2,) = run_dialogues([entry], ScriptedGenerator(script), tokenizer, SamplingParams())
    assert [m["content"] for m in d2.messages if m["role"] == "tool"] == [m["content"] for m in tool_msgs]
    assert score_dialogue(category, d2, truth, original)["valid"]


def test_multi_turn_wrong_calls_fail(tokenizer):
    from gemma_tool_use.evaluation.multi_turn import run_dialogues, score_dialogue
    from gemma_tool_use.generation.generator import SamplingParams

    entry = bfcl.load_entries("multi_turn_base")[0]
    truth = bfcl.load_answers("multi_turn_base")[entry["id"]]
    script = ["I cannot do that."] * len(truth)
    (d,) = run_dialogues([entry], ScriptedGenerator(script), tokenizer, SamplingParams())
    verdict = score_dialogue("multi_turn_base", d, truth, bfcl.load_entries("multi_turn_base", hints=False)[0])
    assert not verdict["valid"] and verdict["error_type"].startswith("multi_turn:")
