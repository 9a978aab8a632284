"""The pipeline: `python -m gemma_tool_use pipeline=<recipe>` runs stages N..M, one process each.

    python -m gemma_tool_use pipeline=cpu                                   # baseline, every stage
    python -m gemma_tool_use pipeline=cpu "pipeline.stages=[sft_full,grpo]" \\
        pipeline.resume_from=outputs/pipeline/cpu/1_sft_small               # a slice from a result

A recipe (conf/pipeline/<name>.yaml) maps each training stage to its overrides. Every stage runs
as `python -m gemma_tool_use stage=<stage> <common> <recipe overrides> <your overrides>` in its own
process (no JAX or W&B state shared) and in a fixed directory, `<pipeline dir>/<i>_<stage>/`
(i: the stage's place in the recipe, 0 the baseline eval), with W&B group `pipeline-<name>`.

Handoff is explicit: the first stage starts from `pipeline.resume_from` (or the base model), each
later one from the previous stage's exported adapter (`<dir>/adapter/`, model/adapters.py), passed
as `train.init_from`. BFCL runs after every training stage (and on the start, `0_baseline`) on
`pipeline.eval_categories`, on the full categories or on a fixed stratified subset
(`pipeline.eval_subset_per_category`; labelled as such everywhere).

A stage is recorded in the pipeline's state file (pipeline_state.py) when its process exits 0.
Re-running the same command skips recorded stages and re-runs the interrupted one in its own
directory, where training and BFCL resume from their checkpoints / finished entries. A recorded
stage whose start differs from the one this command would give it is refused (use another
pipeline dir: `hydra.run.dir=...`). With `pipeline.heldout_prompts` (data/heldout_calls), the start
and each training stage's model are also scored on that held-out tool-calling set
(`<stage dir>/heldout/`). After each stage: pipeline_summary.{json,md,png} (pipeline_summary.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from gemma_tool_use.config.schema import EvalConfig, runs_final_evals
from gemma_tool_use.model.checkpoints import check_same_architecture
from gemma_tool_use.orchestration.heldout_scoring import RECORD as HELDOUT_RECORD
from gemma_tool_use.orchestration.heldout_scoring import score_heldout
from gemma_tool_use.orchestration.pipeline_state import (
    absolute,
    portable,
    read_state,
    write_state,
)
from gemma_tool_use.orchestration.pipeline_summary import write_pipeline_summary
from gemma_tool_use.utils.errors import UserError
from gemma_tool_use.utils.git import git_commit
from gemma_tool_use.utils.interrupt import Stopped
from gemma_tool_use.utils.progress import POSITION_ENV

HELDOUT_DIR = "heldout"  # in a stage's dir: the held-out set's stage=predict run


class PipelineError(UserError, RuntimeError):
    """A stage failed, or the pipeline dir holds results of another start."""


def command_overrides(own: tuple[str, ...]) -> list[str]:
    """The command line's overrides for the child processes: all but those starting with `own`
    (the orchestrator's own keys) and Hydra's."""
    from hydra.core.hydra_config import HydraConfig

    try:
        task = list(HydraConfig.get().overrides.task)
    except ValueError:  # outside a Hydra app
        return []
    return [o for o in task if not o.lstrip("+~").startswith(("hydra.", *own))]


def _user_overrides() -> list[str]:
    """What goes to every stage: all but the pipeline's own keys and Hydra's (the stage dirs are the pipeline's)."""
    return command_overrides(("pipeline", "stage=", "train.init_from"))


def plan(cfg: DictConfig) -> list[dict]:
    """The stages this command runs, in order: index, stage, dir name, recipe overrides."""
    pl = cfg.pipeline
    order = list(pl.recipe)
    chosen = list(pl.stages) if pl.stages is not None else order
    steps = []
    if pl.baseline:
        steps.append({"index": 0, "stage": "eval", "name": "0_baseline", "overrides": []})
    for stage in chosen:
        i = order.index(stage) + 1
        steps.append({"index": i, "stage": stage, "name": f"{i}_{stage}", "overrides": list(pl.recipe[stage])})
    if runs_final_evals(pl):
        finals = [("final_full_eval", [], pl.get("final_eval_categories") or _default_categories())]
        if pl.get("final_constrained_categories"):  # decoded under the tools grammar
            finals.append(
                ("final_full_eval_constrained", ["generation.constrain=tools"], pl.final_constrained_categories)
            )
        for j, (name, overrides, cats) in enumerate(finals):
            i = len(order) + 1 + j
            steps.append(
                {"index": i, "stage": "eval", "name": f"{i}_{name}", "overrides": overrides, "full": list(cats)}
            )
    return steps


def _eval_overrides(pl, full: list[str] | None = None) -> list[str]:
    """BFCL categories of a stage's eval: the subset of pipeline.eval_categories, or a final eval's
    full categories (`full`)."""
    cats = ",".join(full or pl.eval_categories)
    out = [f"eval.categories=[{cats}]"]
    if pl.eval_subset_per_category and not full:
        out.append(f"eval.subset_per_category={int(pl.eval_subset_per_category)}")
    return out


def _default_categories() -> list[str]:
    return EvalConfig().categories


def _bfcl_summary(stage_dir: Path, stage: str) -> dict | None:
    f = stage_dir / ("summary.json" if stage == "eval" else "bfcl_eval/summary.json")
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


def _run_child(args: list[str], position: str) -> tuple[int, float, float, str | None]:
    """Run one stage process (its output to the console, as it comes); forward Ctrl-C / SIGTERM to
    it and wait for it to save. Returns (exit code, seconds, peak RSS GiB of that process, the
    name of the signal that stopped it or None)."""
    t0 = time.time()

    # its own session: a signal reaches it only through us; its progress lines carry its position
    proc = subprocess.Popen(args, start_new_session=True, env={**os.environ, POSITION_ENV: position})
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                _, status, usage = os.wait4(proc.pid, 0)
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stopped = signal.Signals(received[0]).name if received else None
    return proc.returncode, time.time() - t0, usage.ru_maxrss / 2**20, stopped  # ru_maxrss: KiB (Linux)


def _pipeline_root(cfg: DictConfig) -> Path:
    """The pipeline dir, created: Hydra's run dir, or outside a Hydra app `run_dir` (default
    outputs/pipeline/<name>), as an absolute path."""
    from hydra.core.hydra_config import HydraConfig

    try:
        root = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        root = Path(cfg.get("run_dir") or f"outputs/pipeline/{cfg.pipeline.name}")
    root = root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _resolve_start(cfg: DictConfig, root: Path) -> str | None:
    """The first stage's start from `pipeline.resume_from` (a stage dir stands for its exported
    adapter), checked against the configured architecture and recorded relative to the pipeline
    dir when it lies inside it; as given when unset (the base model)."""
    start = cfg.pipeline.resume_from
    if not start:
        return start
    p = Path(start).expanduser()
    if not p.exists():
        raise PipelineError(f"pipeline.resume_from={start!r}: no such file or directory")
    if (p / "adapter" / "adapter_config.json").is_file():  # a stage dir: its exported adapter
        p = p / "adapter"
    check_same_architecture(str(p.absolute()), cfg.model, "pipeline.resume_from")
    return portable(root, str(p.absolute()))


def _check_grpo_has_start(steps: list[dict], start: str | None) -> None:
    first_training = next((s for s in steps if s["stage"] != "eval"), None)
    if first_training and first_training["stage"] == "grpo" and not start:
        raise PipelineError(
            "pipeline: GRPO starts from an SFT result; give pipeline.resume_from=<stage dir or adapter>"
        )


def _finished_earlier(rec: dict | None, stage_dir: Path, start_here: str | None) -> bool:
    """Whether the stage's record says it finished from this same start (skip it). A record from
    another start, finished or interrupted, is refused: a stage dir holds one chain only."""
    if rec and rec.get("status") == "done":
        if rec.get("start") != start_here:
            raise PipelineError(
                f"{stage_dir}: finished from start {rec.get('start')!r}, but this command starts it "
                f"from {start_here!r}; use another pipeline dir (hydra.run.dir=...)"
            )
        return True
    if rec and rec.get("start") != start_here:  # an interrupted stage resumes only from its own start
        raise PipelineError(
            f"{stage_dir}: an interrupted run from start {rec.get('start')!r}; this command starts "
            f"it from {start_here!r}; use another pipeline dir (hydra.run.dir=...)"
        )
    return False


def _stage_command(
    cfg: DictConfig, step: dict, stage_dir: Path, root: Path, start_here: str | None, user: list[str], group: str
) -> list[str]:
    """The stage's command line: common, recipe and user overrides, its dir and W&B group, the
    BFCL categories, and its start (the adapter an eval loads, or a training stage continues)."""
    pl, stage = cfg.pipeline, step["stage"]
    args = [
        sys.executable,
        "-m",
        "gemma_tool_use",
        f"stage={stage}",
        *pl.common,
        *step["overrides"],
        *user,
        f"hydra.run.dir={stage_dir}",
        f"tracking.group={group}",
        *_eval_overrides(pl, step.get("full")),
    ]
    if stage == "eval":
        args.append(
            f"model.lora_checkpoint={absolute(root, start_here)}" if start_here else "model.lora_checkpoint=null"
        )
    else:
        args += [
            f"train.init_from={absolute(root, start_here)}" if start_here else "train.init_from=null",
            "eval.run_after_training=true",
        ]
    return args


def _run_stage(
    pl, root: Path, state: dict, step: dict, start_here: str | None, args: list[str], position: str
) -> str | None:
    """Run one stage's process and record it in the state file: running, then done, interrupted
    (raises Stopped) or failed (raises PipelineError). Returns the adapter the next stage starts
    from, None after an eval stage."""
    name, stage = step["name"], step["stage"]
    stage_dir = (root / name).absolute()
    prev = state["stages"].get(name) or {}  # an interrupted earlier attempt: its time and memory count too
    state["stages"][name] = {
        "status": "running",
        "stage": stage,
        "start": start_here,
        "dir": name,
        "command": args[1:],
        "seconds": prev.get("seconds"),
        "peak_rss_gib": prev.get("peak_rss_gib"),
    }
    write_state(root, state)
    code, seconds, rss, stopped = _run_child(args, position)
    # a resumed stage ran in several processes: its wall time adds up, its peak memory is the max
    state["stages"][name].update(
        {
            "seconds": round(seconds + float(prev.get("seconds") or 0), 1),
            "peak_rss_gib": round(max(rss, float(prev.get("peak_rss_gib") or 0)), 2),
        }
    )
    if stopped:
        state["stages"][name]["status"] = "interrupted"
        write_state(root, state)
        print(
            f"[pipeline {pl.name}] stopped ({stopped}) in stage {name}; re-run the same command to resume it",
            file=sys.stderr,
            flush=True,
        )
        raise Stopped(stopped)
    if code != 0:
        state["stages"][name]["status"] = f"failed (exit {code})"
        write_state(root, state)
        raise PipelineError(
            f"stage {name} failed (exit {code}); its log: {stage_dir}/gemma_tool_use.log. "
            "Fix it and re-run the same command: finished stages are skipped"
        )
    adapter = stage_dir / "adapter"
    state["stages"][name].update({"status": "done", "adapter": f"{name}/adapter" if stage != "eval" else None})
    if stage != "eval" and not (adapter / "adapter_config.json").is_file():
        raise PipelineError(f"stage {name} exited 0 but wrote no adapter at {adapter}")
    write_state(root, state)
    return f"{name}/adapter" if stage != "eval" else None


def _score_heldout(cfg: DictConfig, root: Path, step: dict, model: str | None, user: list[str], position: str) -> None:
    """The held-out set (pipeline.heldout_prompts) on the model a stage ends with: the start for the
    baseline, the stage's adapter for a training stage (the final full eval has no model of its own)."""
    if not cfg.pipeline.get("heldout_prompts") or step.get("full"):
        return

    def run(args: list[str], what: str) -> None:
        code, _, _, stopped = _run_child([sys.executable, "-m", "gemma_tool_use", *args], what)
        if stopped:
            raise Stopped(stopped)
        if code != 0:
            raise PipelineError(f"{what} failed (exit {code}); re-run the same command to resume")

    lora = f"model.lora_checkpoint={absolute(root, model)}" if model else "model.lora_checkpoint=null"
    score_heldout(
        str(cfg.pipeline.heldout_prompts),
        root / step["name"] / HELDOUT_DIR,
        [*cfg.pipeline.common, *user, lora],
        run,
        f"{position}: held-out tool-calling set",
    )


def _summarise(root: Path, state: dict, steps: list[dict]) -> None:
    """pipeline_summary.{json,md,png} from the finished stages' BFCL summaries and held-out records."""
    done = [s for s in steps if state["stages"].get(s["name"], {}).get("status") == "done"]
    write_pipeline_summary(
        root,
        state,
        {s["name"]: _bfcl_summary(root / state["stages"][s["name"]]["dir"], s["stage"]) for s in done},
        {s["name"]: _heldout_record(root / state["stages"][s["name"]]["dir"]) for s in done},
    )


def _heldout_record(stage_dir: Path) -> dict | None:
    try:
        return json.loads((stage_dir / HELDOUT_DIR / HELDOUT_RECORD).read_text())
    except (OSError, ValueError):
        return None


def run_pipeline(cfg: DictConfig) -> float | None:
    pl = cfg.pipeline
    root = _pipeline_root(cfg)
    start = _resolve_start(cfg, root)
    steps = plan(cfg)
    _check_grpo_has_start(steps, start)

    state = read_state(root)
    state.update({"name": pl.name, "commit": git_commit(), "resume_from": start})
    user = _user_overrides()
    group = cfg.tracking.group or f"pipeline-{pl.name}"
    current = start  # the model the next stage starts from (None: the base)
    n = len(steps)
    for k, step in enumerate(steps, 1):
        name = step["name"]
        stage_dir = (root / name).absolute()
        rec = state["stages"].get(name)
        position = f"pipeline {pl.name}, stage {k}/{n}: {name}"
        if _finished_earlier(rec, stage_dir, current):
            print(f"[pipeline {pl.name}] stage {k}/{n}: {name} finished earlier, skipped", flush=True)
            current = rec.get("adapter") or current
        else:
            args = _stage_command(cfg, step, stage_dir, root, current, user, group)
            print(f"[pipeline {pl.name}] stage {k}/{n}: {name} -> {stage_dir}", flush=True)
            current = _run_stage(pl, root, state, step, current, args, position) or current
        _score_heldout(cfg, root, step, current, user, position)  # a recorded score of this set is reused
        _summarise(root, state, steps)
    _summarise(root, state, steps)  # also when every stage was recorded earlier: the table from the files alone
    print(f"[pipeline {pl.name}] done: {root / 'pipeline_summary.md'}", flush=True)
    return None
