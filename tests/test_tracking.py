"""Tracker: metrics.jsonl always; a W&B run that a resumed run (same run dir) continues."""

import json

from omegaconf import OmegaConf

from gemma_tool_use.config.schema import TrackingConfig
from gemma_tool_use.utils.tracking import Tracker


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


def test_resume_drops_records_of_redone_steps_and_reruns(tmp_path):
    """A killed run wrote steps 1-5 but its checkpoint is step 3: after the resume the file keeps
    one line per step (4-5 are written again), drops the validation at step 3 (it runs again at
    the restart), the BFCL numbers (re-logged when the evaluation ends) and a torn last line."""
    lines = [
        {"step": 0, "eval/loss": 3.0},
        *({"step": s, "train/loss": 1.0 / s} for s in range(1, 6)),
        {"step": 3, "eval/loss": 2.0},
        {"step": 5, "bfcl/simple_python": 0.5},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 6, "tra')
    cfg = OmegaConf.structured(TrackingConfig)
    cfg.mode = "disabled"
    with Tracker(tmp_path, cfg, {}) as t:
        assert t.drop_records_after(3) == 5
        t.log({"train/loss": 0.2}, step=4)
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], sorted(r)) for r in kept] == [
        (0, ["eval/loss", "step"]),
        (1, ["step", "train/loss"]),
        (2, ["step", "train/loss"]),
        (3, ["step", "train/loss"]),
        (4, ["step", "time", "train/loss"]),
    ]
