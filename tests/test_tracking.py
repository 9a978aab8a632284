"""Tracker: metrics.jsonl always; a W&B run that a resumed run (same run dir) continues."""

import json

from omegaconf import OmegaConf

from gemma_tool_use.config import TrackingConfig
from gemma_tool_use.tracking import Tracker


def test_same_run_dir_continues_the_same_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    cfg = OmegaConf.structured(TrackingConfig)
    with Tracker(tmp_path, cfg, {"a": 1}) as t:
        t.log({"train/loss": 2.0}, step=1)
    first = json.loads((tmp_path / "wandb_run.json").read_text())["id"]
    with Tracker(tmp_path, cfg, {"a": 1}) as t:  # the restart after a kill
        t.log({"train/loss": 1.0}, step=2)
    assert json.loads((tmp_path / "wandb_run.json").read_text())["id"] == first
    with Tracker(tmp_path / "other", cfg, {"a": 1}):
        pass
    assert json.loads((tmp_path / "other" / "wandb_run.json").read_text())["id"] != first
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
