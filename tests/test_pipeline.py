"""`pipeline=<recipe>` (gemma_tool_use/pipeline.py): recipes compose and plan; a three-stage tiny
pipeline runs, a kill in stage 2 and a re-run resume stage 2 without re-running stage 1; a slice
starts from an earlier stage's result; handoff refuses another architecture's adapter."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_cli


def compose(overrides, hydra=False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    if not hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


@pytest.mark.parametrize("recipe", ["cpu", "cpu_broad", "tpu_v5e8"])
def test_recipes_compose_check_and_plan(recipe):
    from gemma_tool_use.config.checks import check_config
    from gemma_tool_use.orchestration.pipeline import plan

    assert compose([f"pipeline={recipe}"], hydra=True).hydra.run.dir == f"outputs/pipeline/{recipe}"
    cfg = compose([f"pipeline={recipe}"])
    check_config(cfg)
    names = [s["name"] for s in plan(cfg)]
    # cpu_broad's default slice leaves GRPO out (it did not help there); its final evals keep their numbers
    grpo = [] if recipe == "cpu_broad" else ["3_grpo"]
    assert names[: 3 + len(grpo)] == ["0_baseline", "1_sft_small", "2_sft_full", *grpo]
    finals = {"cpu": ["4_final_full_eval"], "cpu_broad": ["4_final_full_eval", "5_final_full_eval_constrained"]}
    assert names[3 + len(grpo) :] == finals.get(recipe, [])
    # every recipe stage's own command composes and passes the checks (those outside the default slice too)
    for stage, overrides in cfg.pipeline.recipe.items():
        check_config(compose([f"stage={stage}", *cfg.pipeline.common, *overrides, "train.init_from=null"]))
    cfg = compose([f"pipeline={recipe}", "pipeline.stages=[sft_full,grpo]", "pipeline.baseline=false"])
    assert [s["name"] for s in plan(cfg)][:2] == ["2_sft_full", "3_grpo"]
    # [] with the baseline: BFCL of the start only (e.g. recorded before the stages' code is final)
    cfg = compose([f"pipeline={recipe}", "pipeline.stages=[]", "pipeline.final_full_eval=false"])
    check_config(cfg)
    assert [s["name"] for s in plan(cfg)] == ["0_baseline"]
    # [] without the baseline: the final evals of the start alone (a model chosen from another run)
    if finals.get(recipe):  # (tpu_v5e8's stages score the full categories: no final evals)
        cfg = compose([f"pipeline={recipe}", "pipeline.stages=[]", "pipeline.baseline=false"])
        check_config(cfg)
        assert [s["name"] for s in plan(cfg)] == finals[recipe]


def test_final_full_eval_takes_its_own_categories_and_a_constrained_twin(tmp_path):
    """The final model on the default set + live categories, unconstrained and under the tools
    grammar: two full-category evals after the subset evals, the second labelled by its decoding."""
    from gemma_tool_use.config.checks import check_config
    from gemma_tool_use.orchestration.pipeline import _stage_command, plan

    cats, constrained_cats = "[simple_python,irrelevance,live_simple]", "[simple_python,irrelevance]"
    cfg = compose(
        [
            "pipeline=cpu",
            f"pipeline.final_eval_categories={cats}",
            f"pipeline.final_constrained_categories={constrained_cats}",
        ]
    )
    check_config(cfg)
    steps = plan(cfg)
    assert [s["name"] for s in steps[-2:]] == ["4_final_full_eval", "5_final_full_eval_constrained"]
    for step, want, constrained in zip(steps[-2:], (cats, constrained_cats), (False, True)):
        args = _stage_command(cfg, step, tmp_path / step["name"], tmp_path, "1_sft_small/adapter", [], "g")
        assert f"eval.categories={want}" in args and not any("subset_per_category" in a for a in args)
        assert ("generation.constrain=tools" in args) == constrained
    default = plan(compose(["pipeline=cpu"]))[-1]  # no categories named: the default set, no constrained twin
    assert default["name"] == "4_final_full_eval" and "live_simple" not in default["full"]
    # the stages' subset evals keep pipeline.eval_categories
    sub = _stage_command(cfg, steps[1], tmp_path / "1", tmp_path, None, [], "g")
    assert "eval.subset_per_category=50" in sub and f"eval.categories={cats}" not in sub


@pytest.mark.parametrize(
    "override, key",
    [
        ("pipeline.stages=[grpo,sft_full]", "pipeline.stages"),
        ("pipeline.stages=[sft_full,sft_full]", "pipeline.stages"),
        ("pipeline.stages=[dpo]", "pipeline.stages"),
        ("pipeline.stages=[] pipeline.baseline=false pipeline.final_full_eval=false", "pipeline.stages"),  # nothing
        ("+pipeline.recipe.eval=[]", "pipeline.recipe"),
        ("pipeline.recipe.grpo=['train.init_from=x']", "pipeline.recipe.grpo"),
        ("pipeline.eval_subset_per_category=0", "pipeline.eval_subset_per_category"),
        ("pipeline.heldout_prompts=/no/such.jsonl", "pipeline.heldout_prompts"),
        ("pipeline.final_eval_categories=[]", "pipeline.final_eval_categories"),
        ("pipeline.final_constrained_categories=[]", "pipeline.final_constrained_categories"),
    ],
)
def test_bad_pipeline_configs_name_the_key(override, key):
    from gemma_tool_use.config.checks import ConfigValueError, check_config

    with pytest.raises(ConfigValueError, match=key.replace(".", r"\.")):
        check_config(compose(["pipeline=cpu", *override.split()]))


# A three-stage tiny pipeline: each stage a few steps of the tiny model, BFCL on 2 entries of 2
# categories after each (and on the base), 4 new tokens.
def _recipe(stage, *overrides):
    return f"pipeline.recipe.{stage}=[" + ",".join(f"'{o}'" for o in overrides) + "]"


TINY = [
    "model=tiny",
    "data=tiny",
    "tracking=disabled",
    "generation.max_new_tokens=4",
    "pipeline.final_full_eval=false",
    "pipeline.eval_subset_per_category=2",
    "pipeline.eval_categories=[simple_python,irrelevance]",
    _recipe(
        "sft_small",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.checkpoint_every_steps=1",
        "train.eval_every_steps=2",
        "train.eval_batches=1",
        "model.train_token_ids=[105,106]",
    ),
    _recipe(
        "sft_full",
        "train.max_steps=3",
        "train.batch_size=2",
        "train.checkpoint_every_steps=1",
        "train.eval_every_steps=3",
        "train.eval_batches=1",
    ),
    _recipe(
        "grpo",
        "train.max_steps=1",
        "grpo.num_generations=2",
        "grpo.prompts_per_step=2",
        "grpo.max_new_tokens=4",
        "grpo.max_prompt_len=512",
        "grpo.probe_size=2",
        "grpo.no_call_share=0.5",
    ),
]


def _pipeline(root, *extra):
    return [sys.executable, "-m", "gemma_tool_use", "pipeline=cpu", *TINY, f"hydra.run.dir={root}", *extra]


def _env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "WANDB_"))}


def test_three_stage_pipeline_kill_in_stage_2_resumes_it_then_a_slice_and_a_wrong_architecture(tmp_path):
    root = tmp_path / "pipe"
    # run until stage 2 has written its first checkpoint, then SIGTERM the pipeline process
    proc = subprocess.Popen(
        _pipeline(root), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 400
    while not (root / "2_sft_full" / "checkpoints" / "1").is_dir():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "stage 2 never wrote a checkpoint"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, out[-3000:]
    state = json.loads((root / "pipeline_state.json").read_text())
    assert state["stages"]["1_sft_small"]["status"] == "done"
    assert state["stages"]["2_sft_full"]["status"] == "interrupted"
    stage1_summary = (root / "1_sft_small" / "train_summary.json").stat().st_mtime_ns

    r = subprocess.run(_pipeline(root), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "stage 1/4: 0_baseline finished earlier, skipped" in r.stdout
    assert "stage 2/4: 1_sft_small finished earlier, skipped" in r.stdout
    assert (root / "1_sft_small" / "train_summary.json").stat().st_mtime_ns == stage1_summary
    sft_full = json.loads((root / "2_sft_full" / "train_summary.json").read_text())
    assert sft_full["steps"] == 3 and sft_full["resumed_from_step"] >= 1
    state = json.loads((root / "pipeline_state.json").read_text())
    assert all(s["status"] == "done" for s in state["stages"].values())
    # each stage started from the previous stage's exported adapter, given explicitly, recorded
    # relative to the pipeline dir
    assert state["stages"]["2_sft_full"]["start"] == "1_sft_small/adapter"
    assert state["stages"]["3_grpo"]["start"] == "2_sft_full/adapter"
    assert f"train.init_from={root / '2_sft_full' / 'adapter'}" in state["stages"]["3_grpo"]["command"]
    assert json.loads((root / "3_grpo" / "adapter" / "adapter_config.json").read_text())["model"][
        "train_token_ids"
    ] == [105, 106]
    # each stage's BFCL names what it scored: the stage's own adapter, not its start
    assert (
        json.loads((root / "3_grpo" / "bfcl_eval" / "summary.json").read_text())["model"]
        == f"tiny + {root / '3_grpo' / 'adapter'} (step 1)"
    )
    summary = json.loads((root / "pipeline_summary.json").read_text())
    assert list(summary["bfcl"]) == ["0_baseline", "1_sft_small", "2_sft_full", "3_grpo"]
    assert {b["kind"] for b in summary["bfcl"].values()} == {"subset (2 per category, seed 0)"}
    assert summary["stages"]["2_sft_full"]["seconds"] > 0 and summary["stages"]["3_grpo"]["peak_rss_gib"] > 0
    md = (root / "pipeline_summary.md").read_text()
    assert "BFCL, subset (2 per category" in md and "Δ" in md and (root / "pipeline_summary.png").is_file()
    assert "irrelevance: clean abstentions" in md and summary["bfcl"]["3_grpo"]["irrelevance_split"]["entries"] == 2

    # its record (`report collect`: small artifacts and adapters, no checkpoints), as committed to
    # experiments/ and copied back in a later session elsewhere, continues in place: the same
    # command skips every recorded stage there and rewrites the same table
    from gemma_tool_use.report import main as report_main

    assert report_main(["collect", str(root), str(tmp_path / "record")]) == 0
    assert (
        not list((tmp_path / "record").rglob("checkpoints")) and (tmp_path / "record" / "3_grpo" / "adapter").is_dir()
    )
    moved = tmp_path / "later" / "pipe"
    shutil.copytree(tmp_path / "record", moved)
    (moved / "pipeline_summary.json").unlink()
    r = subprocess.run(_pipeline(moved), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("finished earlier, skipped") == 4, (r.stdout + r.stderr)[-3000:]
    assert json.loads((moved / "pipeline_summary.json").read_text())["bfcl"] == summary["bfcl"]

    # the GRPO stage's run dir (Orbax checkpoints in the SFT layout) loads for prediction too
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"tools": [], "messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    r = run_cli(
        "stage=predict",
        "model=tiny",
        f"model.lora_checkpoint={root / '3_grpo'}",
        f"predict.input_file={src}",
        "generation.max_new_tokens=4",
        "tracking=disabled",
        f"hydra.run.dir={tmp_path / 'pred'}",
    )
    assert r.returncode == 0 and "loaded LoRA adapters" in r.stderr + r.stdout, r.stderr[-3000:]

    # a slice: GRPO alone from stage 2's result, in a new pipeline dir, no baseline, its model also
    # scored on a held-out tool-calling set (data/heldout_calls' shape: rows with their gold calls)
    from gemma_tool_use.evaluation import call_decisions

    heldout = tmp_path / "heldout.jsonl"
    call_decisions.write_prompts(REPO / "gemma_tool_use" / "resources" / "data" / "tiny" / "val.jsonl", heldout, 3)
    rows = [json.loads(line) for line in heldout.read_text().splitlines()]
    heldout.write_text("".join(json.dumps({**row, "source": "tiny", "how": "real"}) + "\n" for row in rows))
    sliced = tmp_path / "slice"
    slice_cmd = _pipeline(
        sliced,
        "pipeline.stages=[grpo]",
        "pipeline.baseline=false",
        f"pipeline.resume_from={root / '2_sft_full'}",
        f"pipeline.heldout_prompts={heldout}",
    )
    r = subprocess.run(slice_cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    state = json.loads((sliced / "pipeline_state.json").read_text())
    assert list(state["stages"]) == ["3_grpo"] and state["stages"]["3_grpo"]["start"] == str(
        root / "2_sft_full" / "adapter"
    )
    record = sliced / "3_grpo" / "heldout" / "heldout.json"
    scored = json.loads((sliced / "pipeline_summary.json").read_text())["heldout"]["3_grpo"]
    assert scored["prompts"] == 3 and scored["prompts_sha256"] == json.loads(record.read_text())["prompts_sha256"]
    assert "## Held-out tool calling" in (sliced / "pipeline_summary.md").read_text()
    stamp = record.stat().st_mtime_ns
    r = subprocess.run(slice_cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "finished earlier, skipped" in r.stdout, (r.stdout + r.stderr)[-3000:]
    assert record.stat().st_mtime_ns == stamp  # the recorded score of the same set is reused
    # the same dir from another start is refused, not silently reused
    r = subprocess.run(
        _pipeline(
            sliced, "pipeline.stages=[grpo]", "pipeline.baseline=false", f"pipeline.resume_from={root / '1_sft_small'}"
        ),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "use another pipeline dir" in r.stderr

    # handoff refuses an adapter of another architecture, before any stage starts
    r = run_cli(
        "pipeline=cpu",
        "model=gemma3_270m",
        "tracking=disabled",
        f"hydra.run.dir={tmp_path / 'real'}",
        "pipeline.stages=[grpo]",
        f"pipeline.resume_from={root / '3_grpo'}",
        timeout=120,
    )
    assert r.returncode != 0 and "not the configured 'gemma3_270m'" in r.stderr
    assert not (tmp_path / "real" / "3_grpo").exists()
