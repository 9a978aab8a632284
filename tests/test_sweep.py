"""`-m` sweeps: one isolated process per job, separate W&B runs in one group, a sweep summary."""

import json

from conftest import run_cli


def test_sweep_over_two_values_runs_two_isolated_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli("-m", "experiments=tiny_smoke", "train.max_steps=2", "model.lora.rank=2,4", f"hydra.sweep.dir={sweep}",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2
    results = [json.loads((j / "job_result.json").read_text()) for j in jobs]
    assert len({res["pid"] for res in results}) == 2, "each job ran in its own process"
    runs = [json.loads((j / "wandb_run.json").read_text()) for j in jobs]
    assert len({run["id"] for run in runs}) == 2 and {run["group"] for run in runs} == {"sweep"}
    assert [json.loads((j / "train_summary.json").read_text())["steps"] for j in jobs] == [2, 2]
    table = (sweep / "sweep_summary.md").read_text()
    assert "model.lora.rank" in table and table.count("| ok |") == 2
    assert (sweep / "sweep_summary.png").is_file()
    assert {j["overrides"]["model.lora.rank"] for j in json.loads((sweep / "sweep_summary.json").read_text())["jobs"]} == {"2", "4"}
