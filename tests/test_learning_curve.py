"""The learning curve's parts: call-decision scoring on held-out tools, the curve's points and
flatness rule, its plot, its config checks, train.stop_after_steps, and the data lineage an adapter
carries into BFCL's summary (live scores of a model trained on SGD are labelled)."""

import json

import pytest
from omegaconf import OmegaConf

from gemma_tool_use.evaluation import bfcl
from gemma_tool_use.evaluation import call_decisions as cd
from gemma_tool_use.model import adapters
from gemma_tool_use.orchestration import learning_curve as lc

T = [{"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}]


def _row(i, calls, text=""):
    return {
        "tools": T,
        "messages": [
            {"role": "user", "content": f"q{i}"},
            {"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})},
            {"role": "user", "content": "more"},
        ],
        "meta": {"source": "s", "row": str(i)},
    }


ONE = [{"name": "f", "args": {"x": 1}}]
TWO = [{"name": "f", "args": {"x": 1}}, {"name": "f", "args": {"x": 2}}]


def test_prompts_stop_before_the_first_model_turn_and_balance_the_kinds():
    rows = [_row(i, ONE) for i in range(10)] + [_row(10 + i, TWO) for i in range(3)] + [_row(20, None, "no")]
    prompts = cd.decision_prompts(rows, 6)
    assert len(prompts) == 6 and all(p["messages"][-1]["role"] == "user" and len(p["messages"]) == 1 for p in prompts)
    kinds = [cd._kind(p["gold"]) for p in prompts]
    assert kinds == ["no_call", "one_call", "several_calls", "one_call", "several_calls", "one_call"]  # round robin
    assert cd.decision_prompts(rows, 6) == prompts and cd.decision_prompts(rows, 6, seed=1) != prompts


def test_decision_rates():
    prompts = [{"gold": ONE}, {"gold": TWO}, {"gold": ONE}, {"gold": []}, {"gold": []}]
    preds = [
        {"line": 1, "tool_calls": ONE},  # exact
        {"line": 2, "tool_calls": ONE},  # one call of two: count wrong
        {"line": 3, "tool_calls": []},  # false refusal
        {"line": 4, "tool_calls": ONE},  # false call
        # line 5 missing: no prediction counts as no call (right here)
    ]
    s = cd.score(prompts, preds)
    assert (s["calls_due"], s["no_call_due"]) == (3, 2)
    assert s["false_refusal_rate"] == pytest.approx(33.33) and s["false_call_rate"] == 50.0
    assert s["count_right_rate"] == pytest.approx(33.33) and s["exact_rate"] == pytest.approx(33.33)
    assert s["by_gold_kind"]["several_calls"] == {"prompts": 1, "exact": 0, "false_refusal": 0, "names_right": 0}
    reordered = cd.score([{"gold": TWO}], [{"line": 1, "tool_calls": TWO[::-1]}])
    assert reordered["exact_rate"] == 100.0


def test_write_prompts_from_val_rows(tmp_path):
    rows = tmp_path / "val_rows.jsonl"
    rows.write_text("".join(json.dumps(_row(i, ONE if i % 2 else None, "no")) + "\n" for i in range(8)))
    n = cd.write_prompts(rows, tmp_path / "curve" / "p.jsonl", 5)
    lines = (tmp_path / "curve" / "p.jsonl").read_text().splitlines()
    assert n == len(lines) == 5 and {"tools", "messages", "gold", "id"} <= set(json.loads(lines[0]))


def test_points_and_flatness():
    cfg = OmegaConf.create({"curve": {"until_steps": None, "every_steps": 100}, "train": {"max_steps": 350}})
    assert lc.points(cfg) == [100, 200, 300, 350]
    cfg.curve.until_steps = 200
    assert lc.points(cfg) == [100, 200]
    recs = [{"bfcl_subset_mean": m} for m in (10.0, 20.0, 20.5)]
    assert not lc.is_flat(recs, 1.0)
    assert lc.is_flat([*recs, {"bfcl_subset_mean": 20.9}], 1.0)
    assert not lc.is_flat(recs[:2], 100.0)  # two points are one interval


def test_learning_curve_plot(tmp_path):
    from gemma_tool_use.training.curves import change_labels, plot_learning_curve

    dec = {"false_refusal_rate": 10.0, "false_call_rate": 5.0, "count_right_rate": 60.0, "exact_rate": 30.0}
    curve = {
        "subset_per_category": 50,
        "stopped_because": None,
        "points": [
            {
                "rows_trained": 800 * k,
                "bfcl_subset": {"simple_python": 40.0 + k},
                "bfcl_subset_mean": 30.0,
                "decisions": dec,
            }
            for k in (1, 2)
        ],
    }
    out = plot_learning_curve(curve, tmp_path / "c.png")
    assert out.stat().st_size > 10_000
    for k, p in zip((1, 2), curve["points"]):
        p["step"] = 100 * k
    curve["changes"] = [{"from_step": 100, "to_step": 200, "gained": 9, "lost": 1, "p_value": 0.0215}]
    assert change_labels(curve) == [(1200.0, 30.0, "+9 -1\np=0.021", True)]
    assert plot_learning_curve(curve, tmp_path / "c.png").stat().st_size > 10_000
    several = {"several_calls": {"prompts": 4, "names_right": 1}}
    curve["points"][1]["heldout"] = {**dec, "by_gold_kind": several}  # a third panel: the held-out set
    wide = plot_learning_curve(curve, tmp_path / "wide.png")
    from PIL import Image

    assert Image.open(wide).size[0] > Image.open(out).size[0]


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["stage=eval", "curve=cpu"], "curve"),
        (["stage=sft_full", "data=sft_full", "curve=cpu", "curve.every_steps=0"], "curve.every_steps"),
        (["stage=sft_full", "data=sft_full", "curve=cpu", "curve.until_steps=100000"], "curve.until_steps"),
        (["stage=sft_full", "data=sft_full", "train.stop_after_steps=0"], "train.stop_after_steps"),
        (
            ["stage=sft_full", "data=sft_full", "curve=cpu", "curve.heldout_prompts=/no/such.jsonl"],
            "curve.heldout_prompts",
        ),
        (["stage=sft_small", "train.start_step=5"], "train.start_step"),  # no init_from
        (["stage=sft_full", "data=sft_full", "train.init_from=x", "train.start_step=-1"], "train.start_step"),
        (["stage=sft_full", "data=sft_full", "train.init_from=x", "train.start_step=100000"], "train.start_step"),
        (["stage=grpo", "train.init_from=x", "train.start_step=5"], "train.start_step"),
        (["stage=sft_full", "data=sft_broad", "+data.max_rows_per_source.nope=3"], "data.max_rows_per_source.nope"),
    ],
)
def test_config_errors_name_the_key(overrides, key):
    from hydra import compose, initialize_config_dir

    from gemma_tool_use.config.checks import check_config
    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.utils.errors import UserError
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        check_config(cfg)


def test_stop_after_steps_ends_the_loop_not_the_schedule(tmp_path):
    from gemma_tool_use.training.sft_loop import trainer_config

    cfg = OmegaConf.create(
        {
            "train": {
                "grad_accum_steps": 1,
                "eval_every_steps": 10,
                "max_steps": 500,
                "stop_after_steps": 125,
                "checkpoint_every_steps": 25,
                "max_checkpoints_to_keep": 2,
            },
            "stage": {"name": "sft_full"},
        }
    )
    assert trainer_config(cfg, tmp_path).max_steps == 125
    cfg.train.stop_after_steps = None
    assert trainer_config(cfg, tmp_path).max_steps == 500


def test_adapter_lineage_labels_live_scores(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / adapters.CONFIG).write_text(json.dumps({"trained_on": ["sgd/train", "snips/train"]}))
    assert adapters.trained_on(a) == ["sgd/train", "snips/train"]
    assert adapters.trained_on(tmp_path) == []  # no adapter/ under it
    (tmp_path / "run" / "adapter").mkdir(parents=True)
    (tmp_path / "run" / "adapter" / adapters.CONFIG).write_text(json.dumps({"trained_on": ["seal_tools/dev"]}))
    assert adapters.trained_on(tmp_path / "run") == ["seal_tools/dev"]  # a run dir stands for its adapter
    assert adapters.trained_on(None) == []
    caveats = adapters.score_caveats(["sgd/train"])
    # every live category: live_relevance too (7 of its 16 entries offer SGD-named functions)
    assert set(caveats) == {c for c in bfcl.SINGLE_TURN if c.startswith("live_")}
    assert "SGD" in caveats["live_multiple"] and adapters.score_caveats(["snips/train"]) == {}
    # an aggregate of a marked category is marked; non-live is clean
    assert set(bfcl.aggregate_caveats(caveats)) == {"live", "irrelevance", "overall_agentic_not_run"}


def test_results_table_marks_caveated_categories(tmp_path):
    from gemma_tool_use.evaluation.bfcl_tables import write_bfcl_report

    per = {c: {"accuracy": 0.5, "correct": 1, "total_count": 2} for c in ("simple_python", "live_simple")}
    summary = {"model": "m", "categories": per, "aggregates": {}, "caveats": adapters.score_caveats(["sgd/train"])}
    write_bfcl_report(tmp_path, summary)
    text = (tmp_path / "results.md").read_text()
    assert "live_simple *" in text and "simple_python *" not in text and "trained on SGD's domains" in text
    summary["aggregates"] = {"non_live": 0.5, "live": 0.5, "irrelevance": None}
    write_bfcl_report(tmp_path, summary)
    text = (tmp_path / "results.md").read_text()
    assert "| live *" in text and "| non_live " in text and "| irrelevance " in text  # n/a is no score to mark
    # `report compare` marks the cells of the run trained on SGD's domains, not the other run's
    from gemma_tool_use.evaluation.bfcl_tables import compare_bfcl

    for name, caveats in (("sgd", summary["caveats"]), ("clean", {})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({**summary, "caveats": caveats, "commit": "c"}))
    compare_bfcl({"sgd": tmp_path / "sgd", "clean": tmp_path / "clean"}, tmp_path / "cmp")
    md = (tmp_path / "cmp" / "bfcl_compare.md").read_text()
    live_row = next(line for line in md.splitlines() if line.startswith("| live_simple"))
    assert live_row.count("*") == 1 and "(1/2) *" in live_row and "trained on SGD's domains" in md
    live_agg = [cell.strip() for cell in next(ln for ln in md.splitlines() if "**live**" in ln).split("|")[2:4]]
    assert live_agg == ["50.00 *", "50.00"]


def test_pipeline_summary_marks_caveated_categories_and_aggregates(tmp_path):
    """The pipeline's summary labels a model trained on SGD's domains as its stage's results.md does."""
    from gemma_tool_use.orchestration.pipeline_summary import write_pipeline_summary

    per = {
        c: {"accuracy": 0.5, "correct": 1, "total_count": 2} for c in ("simple_python", "irrelevance", "live_simple")
    }
    clean = {"model": "m", "categories": per, "aggregates": {"live": 0.5, "irrelevance": 0.5}, "caveats": {}}
    state = {
        "stages": {"0_baseline": {"dir": "0_baseline", "stage": "eval"}, "1_sft": {"dir": "1_sft", "stage": "sft"}}
    }
    trained = {**clean, "caveats": adapters.score_caveats(["sgd/train"])}
    out = write_pipeline_summary(tmp_path, state, {"0_baseline": clean, "1_sft": trained})
    md = (tmp_path / "pipeline_summary.md").read_text()
    assert "| live_simple *" in md and "| simple_python " in md and "| **live ***" in md
    # the aggregate "irrelevance" takes in live_irrelevance; the category of that name is clean
    assert "| **irrelevance ***" in md and "| irrelevance " in md
    assert "\\* trained on SGD's domains" in md
    assert "live_simple" in out["bfcl"]["1_sft"]["caveats"] and out["bfcl"]["0_baseline"]["caveats"] == {}
    # a record written before a rule was added (here: none recorded) is labelled by its trained_on
    old = {**clean, "trained_on": ["sgd/train"]}
    write_pipeline_summary(tmp_path, state, {"0_baseline": clean, "1_sft": old})
    assert "| live_simple *" in (tmp_path / "pipeline_summary.md").read_text()


def test_tiny_curve_trains_in_slices_scores_each_and_resumes(tmp_path):
    """The whole driver on the tiny model: two slices of one run, each adapter kept and scored on a
    BFCL subset and on call decisions; a re-run finds every point done and trains nothing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = tmp_path / "curve_run"
    tiny_val = Path(__file__).resolve().parents[1] / "gemma_tool_use" / "resources" / "data" / "tiny" / "val.jsonl"
    assert cd.write_prompts(tiny_val, root / "curve" / "val_prompts.jsonl", 4) == 4
    cmd = [
        sys.executable,
        "-m",
        "gemma_tool_use",
        "stage=sft_small",
        "model=tiny",
        "data=tiny",
        "tracking=disabled",
        "generation.max_new_tokens=4",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.checkpoint_every_steps=1",
        "train.eval_every_steps=2",
        "train.eval_batches=1",
        "model.train_token_ids=[105,106]",
        "curve=cpu",
        "curve.every_steps=1",
        "curve.subset_per_category=2",
        "curve.eval_categories=[simple_python]",
        f"hydra.run.dir={root}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "WANDB_"))}
    r = subprocess.run(cmd, cwd=root.parents[0], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    curve = json.loads((root / "learning_curve.json").read_text())
    assert [p["step"] for p in curve["points"]] == [1, 2] and curve["stopped_because"] == "until_steps"
    assert [p["rows_trained"] for p in curve["points"]] == [2, 4]
    for p in curve["points"]:
        assert (
            json.loads((root / "curve" / f"step_{p['step']}" / "adapter" / "adapter_config.json").read_text())["step"]
            == p["step"]
        )
        assert set(p["bfcl_subset"]) == {"simple_python"} and p["decisions"]["prompts"] == 4
    assert (root / "learning_curve.png").stat().st_size > 0
    (change,) = curve["changes"]  # step 1 -> 2 on the same two entries: its gains and losses are the move
    sp = change["categories"]["simple_python"]
    assert (change["from_step"], change["to_step"], sp["compared"]) == (1, 2, 2)
    a, b = (p["bfcl_subset"]["simple_python"] for p in curve["points"])
    assert sp["points"] == round(b - a, 2) and 0 < sp["p_value"] <= 1
    stamps = {f: f.stat().st_mtime_ns for f in [*root.glob("curve/step_*/point.json"), *root.glob("train/adapter/*")]}
    again = subprocess.run(cmd, cwd=root.parents[0], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps  # nothing trained or scored again
    assert json.loads((root / "learning_curve.json").read_text())["points"] == curve["points"]
    # a held-out set named later is scored on the recorded points (stage=predict writes decisions.json)
    heldout = tmp_path / "heldout.jsonl"
    rows = [json.loads(line) for line in (root / "curve" / "val_prompts.jsonl").read_text().splitlines()]
    heldout.write_text("".join(json.dumps({**r, "source": "s", "how": "real"}) + "\n" for r in rows[:3]))
    later = subprocess.run(
        [*cmd, f"curve.heldout_prompts={heldout}"],
        cwd=root.parents[0],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert later.returncode == 0, later.stdout[-3000:] + later.stderr[-3000:]
    points = json.loads((root / "learning_curve.json").read_text())["points"]
    for p, before in zip(points, curve["points"]):
        assert p["heldout"]["prompts"] == 3 and p["heldout"]["by_source"]["s"]["prompts"] == 3
        assert p["heldout"]["prompts_sha256"] and {k: v for k, v in p.items() if k != "heldout"} == before
        assert (root / "curve" / f"step_{p['step']}" / "heldout" / "decisions.json").is_file()
