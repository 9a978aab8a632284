"""A learning curve: `python -m gemma_tool_use stage=sft_full curve=cpu [overrides]`.

One SFT run, taken in slices of `curve.every_steps` steps (train.stop_after_steps: the learning-rate
schedule still spans train.max_steps), each slice its own process resuming the run in place. After
each slice its adapter is kept, scored on BFCL's fixed stratified subset (`stage=eval`) and on call
decisions for the run's held-out-tool validation split (`stage=predict` + evaluation/call_decisions):

    <run dir>/train/                the SFT run (checkpoints, metrics, val_rows.jsonl, adapter/)
    <run dir>/curve/val_prompts.jsonl
    <run dir>/curve/step_<k>/       adapter/, bfcl/ (stage=eval dir), val/ (stage=predict dir), point.json,
                                    heldout/ (stage=predict dir, with curve.heldout_prompts)
    <run dir>/learning_curve.{json,png}

Re-running the same command resumes: finished points are kept, an interrupted slice or evaluation
resumes from its checkpoint / finished entries. It stops after `curve.until_steps` (default
train.max_steps), or, with curve.stop_when_flat, once the subset's mean accuracy moved less than
`curve.flat_points` over two consecutive points; learning_curve.json says which. Between
consecutive points it also records the subset entries gained and lost and the sign test's p
(evaluation/bfcl_tables.paired_change): the subset is 50 entries a category, where chance moves a
category by several points.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from omegaconf import DictConfig

from gemma_tool_use.evaluation import call_decisions
from gemma_tool_use.evaluation.bfcl_tables import entry_agreement, paired_change
from gemma_tool_use.orchestration.heldout_scoring import score_heldout
from gemma_tool_use.orchestration.pipeline import PipelineError, _pipeline_root, _run_child, command_overrides
from gemma_tool_use.training.curves import plot_learning_curve
from gemma_tool_use.utils.files import read_jsonl, write_json_atomic

CURVE_FILE = "learning_curve.json"
# Set for the curve's own children: a child whose config also names a curve (an experiment file
# that sets curve.*) runs its stage, never a curve of its own.
CHILD_ENV = "GTU_CURVE_CHILD"


def _user_overrides() -> list[str]:
    """What goes to the children: all but the curve's own keys, the slice's stop and Hydra's."""
    return command_overrides(("curve", "train.stop_after_steps", "eval.run_after_training", "stage="))


def points(cfg: DictConfig) -> list[int]:
    last = int(cfg.curve.until_steps or cfg.train.max_steps)
    every = int(cfg.curve.every_steps)
    steps = list(range(every, last + 1, every))
    return steps if steps and steps[-1] == last else [*steps, last]


def _child(args: list[str], what: str) -> None:
    os.environ[CHILD_ENV] = "1"  # _run_child passes os.environ on
    try:
        code, seconds, _, stopped = _run_child([sys.executable, "-m", "gemma_tool_use", *args], what)
    finally:
        os.environ.pop(CHILD_ENV, None)
    if stopped:
        raise KeyboardInterrupt(stopped)
    if code != 0:
        raise PipelineError(f"learning curve: {what} failed (exit {code}); re-run the same command to resume")


def _mean_accuracy(summary: dict) -> float:
    accs = [v["accuracy"] for v in summary["categories"].values()]
    return round(100.0 * sum(accs) / len(accs), 2) if accs else 0.0


def _train_slice(cfg: DictConfig, train_dir: Path, here: Path, step: int, overrides: list[str]) -> Path:
    """Train to `step` (resuming) and keep that step's adapter in the point's folder."""
    adapter = here / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        _child(
            [
                f"stage={cfg.stage.name}",
                *overrides,
                f"train.stop_after_steps={step}",
                "eval.run_after_training=false",
                f"hydra.run.dir={train_dir}",
            ],
            f"train to step {step}",
        )
        done = json.loads((train_dir / "adapter" / "adapter_config.json").read_text())
        if done.get("step") != step:
            raise PipelineError(f"learning curve: {train_dir}/adapter is at step {done.get('step')}, not {step}")
        shutil.copytree(train_dir / "adapter", adapter.with_name("adapter.tmp"), dirs_exist_ok=True)
        adapter.with_name("adapter.tmp").rename(adapter)
    return adapter


def _scoring_overrides(overrides: list[str]) -> list[str]:
    """The scoring children take the model and decoding settings, not the training ones."""
    return [o for o in overrides if not o.lstrip("+~").startswith(("data", "train.", "optim.", "eval.", "predict."))]


def _predict(here: Path, name: str, prompts: Path, common: list[str], what: str) -> Path:
    """stage=predict of the point's adapter on a prompt file; its run dir."""
    _child(
        [
            "stage=predict",
            *common,
            f"model.lora_checkpoint={here / 'adapter'}",
            f"predict.input_file={prompts}",
            f"hydra.run.dir={here / name}",
        ],
        what,
    )
    return here / name


def _heldout(cfg: DictConfig, here: Path, step: int, common: list[str]) -> dict:
    """Call decisions on the held-out tool-calling set (curve.heldout_prompts), with the set's sha256."""
    return score_heldout(
        str(cfg.curve.heldout_prompts),
        here / "heldout",
        [*common, f"model.lora_checkpoint={here / 'adapter'}"],
        _child,
        f"held-out tool-calling set at step {step}",
    )


def _point(cfg: DictConfig, root: Path, step: int, overrides: list[str]) -> dict:
    """Train to `step` (resuming), keep its adapter, score it; the point's record."""
    train_dir, here = root / "train", root / "curve" / f"step_{step}"
    adapter = _train_slice(cfg, train_dir, here, step, overrides)
    prompts = root / "curve" / "val_prompts.jsonl"
    if not prompts.is_file() and int(cfg.curve.val_prompts) and (train_dir / "val_rows.jsonl").is_file():
        call_decisions.write_prompts(train_dir / "val_rows.jsonl", prompts, int(cfg.curve.val_prompts))
    common = _scoring_overrides(overrides)
    cats = ",".join(cfg.curve.eval_categories)
    _child(
        [
            "stage=eval",
            *common,
            f"model.lora_checkpoint={adapter}",
            f"eval.categories=[{cats}]",
            f"eval.subset_per_category={int(cfg.curve.subset_per_category)}",
            f"hydra.run.dir={here / 'bfcl'}",
        ],
        f"BFCL subset at step {step}",
    )
    bfcl = json.loads((here / "bfcl" / "summary.json").read_text())
    record = {
        "step": step,
        "rows_trained": step * int(cfg.train.batch_size) * int(cfg.train.grad_accum_steps),
        "bfcl_subset": {c: round(100.0 * v["accuracy"], 2) for c, v in bfcl["categories"].items()},
        "bfcl_subset_mean": _mean_accuracy(bfcl),
        "decisions": None,
    }
    if prompts.is_file() and prompts.stat().st_size:
        val = _predict(here, "val", prompts, common, f"held-out-tool decisions at step {step}")
        record["decisions"] = call_decisions.score(read_jsonl(prompts), read_jsonl(val / "predictions.jsonl"))
    if cfg.curve.get("heldout_prompts"):
        record["heldout"] = _heldout(cfg, here, step, common)
    write_json_atomic(here / "point.json", record)
    return record


def _recorded_point(cfg: DictConfig, root: Path, step: int, overrides: list[str]) -> dict:
    """A finished point's record, scored on the held-out set first if the set was named, or changed,
    after the point was scored."""
    here = root / "curve" / f"step_{step}"
    record = json.loads((here / "point.json").read_text())
    if cfg.curve.get("heldout_prompts"):
        heldout = _heldout(cfg, here, step, _scoring_overrides(overrides))
        if record.get("heldout") != heldout:
            record["heldout"] = heldout
            write_json_atomic(here / "point.json", record)
    return record


def is_flat(records: list[dict], tolerance: float) -> bool:
    """The subset mean moved less than `tolerance` points over each of the last two intervals."""
    if len(records) < 3:
        return False
    a, b, c = (r["bfcl_subset_mean"] for r in records[-3:])
    return abs(b - a) < tolerance and abs(c - b) < tolerance


def run_learning_curve(cfg: DictConfig) -> float:
    if cfg.data.get("pack_length"):
        raise PipelineError("curve: rows trained are counted as steps x batch size; set data.pack_length=null")
    root = _pipeline_root(cfg)
    overrides = _user_overrides()
    records, stopped_because = [], "until_steps"
    for step in points(cfg):
        done = root / "curve" / f"step_{step}" / "point.json"
        records.append(
            _recorded_point(cfg, root, step, overrides) if done.is_file() else _point(cfg, root, step, overrides)
        )
        _write_curve(root, cfg, records, None)
        if cfg.curve.stop_when_flat and is_flat(records, float(cfg.curve.flat_points)):
            stopped_because = "flat"
            break
    _write_curve(root, cfg, records, stopped_because)
    return records[-1]["bfcl_subset_mean"]


def _changes(root: Path, records: list[dict]) -> list[dict]:
    """Entries gained and lost between consecutive points on the same subset (per category and in
    all, with the sign test's p), where both points' per-entry BFCL records are on disk."""
    out = []
    for a, b in zip(records, records[1:]):
        dirs = [root / "curve" / f"step_{r['step']}" / "bfcl" / "bfcl" for r in (a, b)]
        if all(d.is_dir() for d in dirs):
            out.append({"from_step": a["step"], "to_step": b["step"], **paired_change(entry_agreement(*dirs))})
    return out


def _write_curve(root: Path, cfg: DictConfig, records: list[dict], stopped_because: str | None) -> None:
    curve = {
        "every_steps": int(cfg.curve.every_steps),
        "batch_size": int(cfg.train.batch_size),
        "subset_per_category": int(cfg.curve.subset_per_category),
        "flat_points": float(cfg.curve.flat_points),
        "stopped_because": stopped_because,  # null while running
        "points": records,
        "changes": _changes(root, records),
    }
    write_json_atomic(root / CURVE_FILE, curve, indent=2)
    try:
        plot_learning_curve(curve, root / "learning_curve.png")
    except Exception as e:  # noqa: BLE001 - a plot never loses the curve's numbers
        print(f"warning: could not draw the learning curve: {e}", file=sys.stderr)
