"""`-m` sweeps: one isolated process per job, separate W&B runs in one group, a sweep summary."""

import json

from conftest import run_cli


def test_sweep_over_two_values_runs_two_isolated_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli(
        "-m",
        "experiments=tiny_smoke",
        "train.max_steps=2",
        "model.lora.rank=2,4",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2
    results = [json.loads((j / "job_result.json").read_text()) for j in jobs]
    assert len({res["pid"] for res in results}) == 2, "each job ran in its own process"
    runs = [json.loads((j / "wandb_run.json").read_text()) for j in jobs]
    assert len({run["id"] for run in runs}) == 2 and {run["group"] for run in runs} == {"sweep"}
    assert [json.loads((j / "train_summary.json").read_text())["steps"] for j in jobs] == [2, 2]
    table = "\n".join(" ".join(line.split()) for line in (sweep / "sweep_summary.md").read_text().splitlines())
    assert "model.lora.rank" in table and table.count("| ok |") == 2
    assert (sweep / "sweep_summary.png").is_file()
    assert {
        j["overrides"]["model.lora.rank"] for j in json.loads((sweep / "sweep_summary.json").read_text())["jobs"]
    } == {"2", "4"}


def test_summary_of_a_multirun_over_experiments(tmp_path):
    """`-m experiments=a,b` (e.g. ft_compare): the experiment is the swept value, plotted by name."""
    from gemma_tool_use.orchestration.sweeps import write_sweep_summary

    for i, (name, acc) in enumerate([("ft_compare_lora_rows", 0.4), ("ft_compare_full", 0.2)]):
        job = tmp_path / f"{i}_job"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- experiments={name}\n- hydra.sweep.dir=x\n")
        (job / "job_result.json").write_text("{}")
        (job / "train_summary.json").write_text(
            json.dumps({"final_val_loss": 0.5, "tokens_per_s": 100.0, "bfcl_categories": {"simple_python": acc}})
        )
    summary = write_sweep_summary(tmp_path)
    assert summary["swept"] == ["experiments"]
    table = "\n".join(" ".join(line.split()) for line in (tmp_path / "sweep_summary.md").read_text().splitlines())
    assert "| 0_job | ft_compare_lora_rows | 0.500 | 40.0 |" in table and table.count("| ok |") == 2
    assert (tmp_path / "sweep_summary.png").is_file()
