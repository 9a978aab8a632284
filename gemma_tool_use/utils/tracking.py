"""Experiment tracking: metrics.jsonl in the run dir always; W&B offline (default), online,
or disabled by `tracking.mode`. W&B never needs a network or an account unless online.

A Tracker is a context manager: the W&B run is finished even when the job fails (with a
non-zero exit code), so a multirun never leaves a dangling run behind.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from gemma_tool_use.utils.files import iter_jsonl

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray) and value.size == 1:
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(value, "item") and getattr(value, "size", None) == 1:
        return value.item()
    return value


class Tracker:
    def __init__(
        self, run_dir: str | Path, tracking_cfg, config: dict, *, name: str | None = None, group: str | None = None
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.mode = str(getattr(tracking_cfg.mode, "value", tracking_cfg.mode))
        self.wandb_run = None
        if self.mode != "disabled":
            self.wandb_run = self._init_wandb(tracking_cfg, config, name, group)

    def _init_wandb(self, cfg, config, name, group):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        t0 = time.time()
        # A resumed run (same run dir) continues its W&B run: one curve, not one run per restart.
        previous = self._previous_run_id(cfg)
        run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=group or cfg.group,
            name=name,
            tags=list(cfg.tags),
            config=config,
            dir=str(self.run_dir),
            mode=self.mode,
            reinit="finish_previous",  # one process, several jobs (multirun): never reuse a run
            **({"id": previous, "resume": "allow"} if previous else {}),
        )
        log.info(
            "W&B %s run %s in %s (%.1fs)%s",
            self.mode,
            run.id,
            run.dir,
            time.time() - t0,
            " (resumed)" if previous else "",
        )
        (self.run_dir / "wandb_run.json").write_text(
            json.dumps({"id": run.id, "group": run.group, "project": cfg.project, "mode": self.mode, "dir": run.dir})
        )
        return run

    def _previous_run_id(self, cfg) -> str | None:
        try:
            prev = json.loads((self.run_dir / "wandb_run.json").read_text())
        except (OSError, ValueError):
            return None
        if prev.get("project") == cfg.project and prev.get("mode") == self.mode and prev.get("id"):
            return str(prev["id"])
        return None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        metrics = {k: _plain(v) for k, v in metrics.items()}
        self._metrics.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        self._metrics.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def drop_records_after(self, step: int) -> int:
        """On resume from checkpoint `step`: drop the metrics.jsonl records of steps that will be
        redone (written after that checkpoint by a killed process) and of evaluations that will
        run again (the validation at `step`, bfcl/*), so the file keeps one line per step however often a run resumes.
        A torn last line goes too. Returns how many records were dropped."""
        self._metrics.close()
        path = self.run_dir / "metrics.jsonl"
        kept, dropped = [], 0
        for _, rec, err in iter_jsonl(path):
            # the evaluation at `step` itself runs again when training restarts
            if (
                err is None
                and isinstance(rec, dict)
                and rec.get("step", 0) <= step
                and not any(k.startswith("bfcl/") or (k.startswith("eval/") and rec["step"] == step) for k in rec)
            ):
                kept.append(json.dumps(rec) + "\n")
            else:
                dropped += 1
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
        self._metrics = path.open("a", encoding="utf-8")
        return dropped

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            for k, v in values.items():
                self.wandb_run.summary[k] = _plain(v)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Table(columns=columns, data=rows)})

    def finish(self, exit_code: int = 0) -> None:
        if not self._metrics.closed:
            self._metrics.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)
