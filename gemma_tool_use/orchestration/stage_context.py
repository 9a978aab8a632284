"""What every stage runner opens and what every training stage ends with, written once.

`open_stage` is the stage's frame (as the lightning-hydra template's task wrapper): the runtime
prepared before JAX starts (simulated devices, multi-host init), the run dir, the device mesh,
the tokenizer and the tracker, with the tracker always closed and the mesh always left, however
the stage ends. `finish_training` is the shared ending of SFT and GRPO: the portable adapter,
the curve, the summary on disk before BFCL starts (a failed or cut evaluation loses none of
the training figures), BFCL on the trained model, the summary again with its scores.

JAX is imported here only inside `open_stage`, after `prepare_runtime`: the runners import this
module at their top and stay importable without JAX.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gemma_tool_use.model.adapters import export_adapter, trained_on
from gemma_tool_use.orchestration.runs import run_dir_of, wandb_group
from gemma_tool_use.utils.git import git_commit
from gemma_tool_use.utils.mesh import build_mesh, prepare_runtime
from gemma_tool_use.utils.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """One stage's run: its config, where it writes, its devices, tokenizer and tracker."""

    cfg: DictConfig
    run_dir: Path
    mesh: Any
    tokenizer: Any = None
    tracker: Any = None
    started: float = field(default_factory=time.time)

    def config_dict(self) -> dict:
        return OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True)


@contextlib.contextmanager
def open_stage(cfg: DictConfig, *, tokenizer: bool = True, tracker: bool = True) -> Iterator[StageContext]:
    """Runtime, run dir, mesh and tokenizer; the tracker here (tracker=True) or later by the stage
    with `open_tracker(ctx, ...)`. The tracker and the mesh context close when the stage ends."""
    prepare_runtime(cfg.tpu)  # before JAX starts: simulated devices, multi-host init
    from gemma_tool_use.model.loading import load_tokenizer_for  # imports JAX

    ctx = StageContext(cfg=cfg, run_dir=run_dir_of(cfg), mesh=build_mesh(cfg.tpu))
    if tokenizer:
        ctx.tokenizer = load_tokenizer_for(cfg.model)
    with contextlib.ExitStack() as stack:
        if tracker:
            ctx.tracker = stack.enter_context(open_tracker(ctx))
        stack.enter_context(ctx.mesh)
        yield ctx


def open_tracker(ctx: StageContext, run_dir: Path | None = None):
    """The stage's Tracker (metrics.jsonl + W&B) in `run_dir` (default: the run dir)."""
    return Tracker(
        run_dir or ctx.run_dir, ctx.cfg.tracking, ctx.config_dict(), name=ctx.run_dir.name, group=wandb_group(ctx.cfg)
    )


def export_trained_adapter(ctx: StageContext, model, step: int, *, write: bool = True) -> str:
    """The portable adapter (LoRA + trained rows): the next stage's start, the user's takeaway.
    It records the data sources of this stage and of the adapter it started from."""
    lineage = set(ctx.cfg.data.get("sources") or []) | set(trained_on(ctx.cfg.model.get("lora_checkpoint")))
    return str(
        export_adapter(
            model,
            ctx.run_dir / "adapter",
            ctx.cfg.model,
            step=step,
            source=str(ctx.run_dir),
            commit=git_commit(),
            write=write,
            trained_on=sorted(lineage),
        )
    )


def draw_curve(summary: dict, key: str, draw: Callable[[], Path]) -> None:
    """A plot is a convenience: never lose a finished run over it."""
    try:
        summary[key] = str(draw())
    except Exception as e:  # noqa: BLE001
        log.warning("could not draw %s: %s", key.replace("_", " "), e)


def finish_training(
    ctx: StageContext, model, summary: dict, *, summary_file: str, step: int, seconds_key: str = "total_seconds"
) -> dict:
    """BFCL on the trained model (eval.run_after_training), its scores in the summary, the summary
    written to `<run dir>/<summary_file>` and the tracker; returns the summary."""
    cfg, path = ctx.cfg, ctx.run_dir / summary_file
    if cfg.eval.run_after_training:
        from gemma_tool_use.evaluation.evaluate import evaluate_model  # imports JAX

        path.write_text(json.dumps(summary, indent=2))  # on disk before BFCL: a cut eval loses none of it
        bfcl_summary = evaluate_model(
            cfg,
            model,
            ctx.tokenizer,
            ctx.run_dir / "bfcl_eval",
            ctx.tracker,
            step=step,
            model_label=f"{cfg.model.name} + {ctx.run_dir / 'adapter'} (step {step})",
        )
        summary["bfcl"] = {k: v for k, v in bfcl_summary["aggregates"].items() if k != "missing"}
        summary["bfcl_categories"] = {c: v["accuracy"] for c, v in bfcl_summary["categories"].items()}
    summary[seconds_key] = round(time.time() - ctx.started, 1)
    path.write_text(json.dumps(summary, indent=2))
    ctx.tracker.summary({k: v for k, v in summary.items() if not isinstance(v, dict)})
    log.info("done: %s", json.dumps(summary))
    return summary
