"""Run reports: training-curve plot and the BFCL before/after table."""

import json

import pytest

from gemma_tool_use.evaluation.bfcl_tables import compare_bfcl, sign_test_p, write_bfcl_report
from gemma_tool_use.report import main
from gemma_tool_use.training.curves import plot_training_curves
from gemma_tool_use.utils.files import read_jsonl


def _summary(path, acc, aggregates):
    cats = {c: {"accuracy": a, "correct": int(a * 10), "total_count": 10} for c, a in acc.items()}
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps({"commit": "abc", "categories": cats, "aggregates": aggregates}))
    return path


def test_curves_plot_reads_metrics_and_tolerates_a_torn_last_line(tmp_path):
    lines = [{"step": 0, "eval/loss": 2.0}]
    lines += [{"step": s, "train/loss": 2.0 / s, "train/learning_rate": 1e-4} for s in range(1, 30)]
    text = "\n".join(json.dumps(r) for r in lines) + '\n{"step": 30, "train/lo'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 30
    out = plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "c.png")
    assert out.stat().st_size > 5000
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not JSON"):
        read_jsonl(tmp_path / "metrics.jsonl")


def test_compare_lines_up_categories_and_aggregates(tmp_path):
    base = _summary(tmp_path / "base", {"simple_python": 0.0, "irrelevance": 1.0}, {"non_live": 0.0})
    sft = _summary(tmp_path / "sft", {"simple_python": 0.5, "parallel": 0.2}, {"non_live": 0.35})
    assert main(["compare", f"base={base}", f"sft={sft / 'summary.json'}", "--out", str(tmp_path / "cmp")]) == 0
    md = [" ".join(line.split()) for line in (tmp_path / "cmp" / "bfcl_compare.md").read_text().splitlines()]
    assert md[0] == "| category | base | sft |"
    assert "| simple_python | 0.00 (0/10) | 50.00 (5/10) |" in md
    assert "| parallel | - | 20.00 (2/10) |" in md
    assert "| **non_live** | 0.00 | 35.00 |" in md
    assert (tmp_path / "cmp" / "bfcl_compare.png").stat().st_size > 5000
    with pytest.raises(FileNotFoundError, match="nope"):
        compare_bfcl({"nope": tmp_path / "missing"}, tmp_path / "x")


def test_constrained_runs_are_labelled(tmp_path):
    """A run decoded under the tool-call grammar is a different harness: every table names it."""
    free = _summary(tmp_path / "free", {"simple_python": 0.4}, {"non_live": 0.4})
    held = _summary(tmp_path / "held", {"simple_python": 0.5}, {"non_live": 0.5})
    summary = json.loads((held / "summary.json").read_text())
    (held / "summary.json").write_text(json.dumps({**summary, "constrain": "tools"}))
    result = compare_bfcl({"final": free, "final_grammar": held}, tmp_path / "cmp")
    assert set(result["runs"]) == {"final", "final_grammar [constrained: tools]"}
    md = (tmp_path / "cmp" / "bfcl_compare.md").read_text().splitlines()[0]
    assert " ".join(md.split()) == "| category | final | final_grammar [constrained: tools] |"
    write_bfcl_report(held, {**summary, "constrain": "tools", "model": "m"})
    assert "Decoding: constrained by the tool-call grammar" in (held / "results.md").read_text()


def test_failures_are_counted_by_kind(tmp_path):
    run = _summary(tmp_path / "run", {"simple_python": 0.25}, {})
    (run / "bfcl").mkdir()
    errors = [None, "ast_decoder:decoder_failed", "type_error:simple", "value_error:string", "something:new"]
    rows = [{"id": f"simple_python_{i}", "valid": e is None, "error_type": e} for i, e in enumerate(errors)]
    (run / "bfcl" / "simple_python.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    failures = compare_bfcl({"run": run}, tmp_path / "cmp")["runs"]["run"]["failures"]
    assert failures == {
        "simple_python": {"entries": 5, "pass": 1, "decode failure": 1, "type error": 1, "wrong value": 1, "other": 1}
    }
    assert "Failures by kind" in (tmp_path / "cmp" / "bfcl_compare.md").read_text()


def test_compare_reports_how_outputs_end(tmp_path):
    """LoRA-only models got the call right, then never emitted <end_of_turn>: the table shows it."""
    runs = {}
    for name, stops in {"rows": ["stop", "stop", "stop", "length"], "lora_only": ["length"] * 3 + ["stop"]}.items():
        run = _summary(tmp_path / name, {"simple_python": 0.5}, {})
        (run / "bfcl").mkdir()
        rows = [
            {
                "id": f"simple_python_{i}",
                "stop_reason": s,
                "new_tokens": 30 if s == "stop" else 128,
                "decoded": [{"name": "f", "args": {}}] if i else [],
                "parse_errors": [] if s == "stop" else ["bad_json"],
            }
            for i, s in enumerate(stops)
        ]
        (run / "bfcl" / "simple_python.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + '\n{"id": "torn')
        runs[name] = run
    result = compare_bfcl(runs, tmp_path / "cmp")
    assert result["runs"]["rows"]["outputs"]["stopped"] == 0.75
    assert result["runs"]["lora_only"]["outputs"] == {
        "entries": 4,
        "stopped": 0.25,
        "length": 0.75,
        "with_call": 0.75,
        "parse_error": 0.75,
        "median_new_tokens": 128,
    }
    md = [" ".join(line.split()) for line in (tmp_path / "cmp" / "bfcl_compare.md").read_text().splitlines()]
    assert "| lora_only | 4 | 25.0% | 75.0% | 75.0% | 75.0% | 128 |" in md
    base = _summary(tmp_path / "no_files", {"simple_python": 0.0}, {})
    assert compare_bfcl({"base": base}, tmp_path / "cmp2")["runs"]["base"]["outputs"] is None


def test_collect_copies_small_artifacts_only(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run / ".hydra" / "overrides.yaml").write_text("- experiments=x\n")
    (run / "train_summary.json").write_text(json.dumps({"checkpoint_dir": f"{run.resolve()}/checkpoints"}))
    (run / "bfcl_eval" / "bfcl").mkdir(parents=True)
    (run / "bfcl_eval" / "bfcl" / "simple_python.jsonl").write_text("{}\n")
    (run / "heldout").mkdir()
    for name in ("heldout.json", "predictions.jsonl", "gemma_tool_use.log"):
        (run / "heldout" / name).write_text("{}\n")
    (run / "checkpoints" / "13").mkdir(parents=True)
    (run / "checkpoints" / "13" / "weights.bin").write_bytes(b"x" * 100)
    dest = tmp_path / "exp"
    assert main(["collect", str(run), str(dest)]) == 0
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == [
        "bfcl_eval/bfcl/simple_python.jsonl",
        "config_resolved.yaml",
        "heldout/heldout.json",
        "heldout/predictions.jsonl",
        "overrides.yaml",
        "train_summary.json",
    ]
    assert json.loads((dest / "train_summary.json").read_text()) == {"checkpoint_dir": "<run dir>/checkpoints"}
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        main(["collect", str(tmp_path / "exp"), str(tmp_path / "x")])


def test_agree_counts_equal_verdicts_and_texts_per_entry(tmp_path, capsys):
    """`report agree`: two runs' per-entry JSONL, matched by id (order and extra entries ignored)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()

    def rows(d, name, items):
        (d / f"{name}.jsonl").write_text(
            "".join(json.dumps({"id": i, "valid": v, "result": t}) + "\n" for i, v, t in items)
        )

    rows(a, "simple_python", [("s1", True, "x"), ("s2", False, "y"), ("s3", True, "z"), ("s4", False, "only in a")])
    rows(b, "simple_python", [("s3", False, "z2"), ("s1", True, "x"), ("s2", True, "y2")])
    rows(a, "irrelevance", [("i1", True, "no call")])  # absent from b: not compared
    out = tmp_path / "agree.json"
    assert main(["agree", str(a), str(b), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    sp = r["categories"]["simple_python"]
    assert (sp["compared"], sp["verdicts_equal"], sp["texts_equal"]) == (3, 1, 1)
    assert sorted(sp["flipped"]) == ["s2", "s3"] and sp["flipped_to_valid"] == ["s2"]
    assert set(r["categories"]) == {"simple_python"} and r["compared"] == 3
    change = r["change"]["categories"]["simple_python"]  # s2 gained, s3 lost
    assert (change["gained"], change["lost"], change["points"], change["p_value"]) == (1, 1, 0.0, 1.0)
    printed = capsys.readouterr().out
    assert "1/3" in printed and "+1 -1" in printed


def test_results_rewrites_an_eval_dirs_tables_with_todays_labels(tmp_path, capsys):
    per = {c: {"accuracy": 0.5, "correct": 1, "total_count": 2} for c in ("simple_python", "live_relevance")}
    summary = {"model": "m", "categories": per, "aggregates": {}, "caveats": {}, "trained_on": ["sgd/train"]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert main(["results", str(tmp_path)]) == 0
    assert "live_relevance *" in (tmp_path / "results.md").read_text() and (tmp_path / "accuracy.png").is_file()
    with pytest.raises(SystemExit):
        main(["results", str(tmp_path / "nowhere")])
    assert "nowhere/summary.json: no such file" in capsys.readouterr().err


def test_decisions_rescore_predictions_per_turn(tmp_path, capsys):
    """`report decisions` re-scores a committed predictions.jsonl against its prompt file: the
    tables a README quotes come from a command, not a throwaway script."""
    call = [{"name": "f", "args": {"x": 1}}]
    user, tool = {"role": "user", "content": "u"}, {"role": "tool", "content": "r"}
    prompts = [
        {"gold": call, "messages": [user], "source": "a", "how": "real"},
        {"gold": call, "messages": [user, {"role": "assistant", "content": "", "tool_calls": call}, tool]},
        {"gold": [], "messages": [user], "source": "a", "how": "other_tools"},
    ]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    preds = [{"line": 1, "tool_calls": call}, {"line": 2, "text": "done"}, {"line": 3, "tool_calls": call}]
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    assert (
        main(["decisions", str(tmp_path / "p.jsonl"), str(tmp_path / "pred.jsonl"), "--out", str(tmp_path / "d.json")])
        == 0
    )
    out = capsys.readouterr().out
    assert "- false refusals (calls due): 50.0%" in out and "- false calls (no call fits): 100.0%" in out
    cells = {row[0]: row for row in ([c.strip() for c in ln.split("|")[1:-1]] for ln in out.splitlines() if "|" in ln)}
    assert cells["after_tool_result"] == ["after_tool_result", "1", "1", "1", "0", "0", "0", "", ""]
    assert cells["first_user_turn"] == ["first_user_turn", "2", "1", "0", "1", "1", "1", "1", "1"]
    assert json.loads((tmp_path / "d.json").read_text())["by_source"]["a"]["false_call"] == 1


def test_sign_test_p_is_mcnemars_exact_test():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 0) == sign_test_p(0, 5) == 0.0625  # 2 / 2**5
    assert sign_test_p(1, 8) == round(2 * (1 + 9) / 2**9, 4)  # 0.0391: the curve's irrelevance, step 200 -> 400
    assert sign_test_p(16, 22) > 0.4  # the curve's whole subset, step 200 -> 400: chance
    assert 0 < sign_test_p(44, 11) < 1e-4  # the curve's start -> step 800: tiny, never rounded to 0
