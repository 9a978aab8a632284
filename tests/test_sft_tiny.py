"""Tiny end-to-end LoRA SFT on CPU: outputs, learning, trainable-only updates, resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, run_cli

STEPS = 12
COMMON = [
    "experiments=tiny_smoke",
    f"train.max_steps={STEPS}",
    "train.checkpoint_every_steps=3",
    "train.eval_every_steps=12",
    "optim.lr=1e-2",
]


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def signal_after_steps(args, run_dir, steps, sig):
    """Start the CLI, send `sig` once `steps` train steps are in metrics.jsonl; (process, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "WANDB_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gemma_tool_use", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 600  # a guard against a hang, not a speed requirement
    while proc.poll() is None and time.time() < deadline:
        if metrics.is_file() and sum(1 for line in metrics.read_text().splitlines() if "train/loss" in line) >= steps:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc, err


def train_losses(records):
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full_run")
    r = run_cli(*COMMON, f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-4000:]
    return run_dir


def test_end_to_end_run_writes_checkpoint_metrics_and_offline_wandb(full_run):
    run_dir = full_run  # no wall-clock bound: a busy 2-core machine makes any bound flaky
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    ckpts = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts[-1] == STEPS and (run_dir / "checkpoints" / str(STEPS) / "model_params").is_dir()
    records = read_metrics(run_dir)
    losses = train_losses(records)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert any("eval/loss" in r for r in records)
    assert any("perf/tokens_per_s" in r and r["perf/tokens_per_s"] > 0 for r in records)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["steps"] == STEPS and summary["tokens_per_s"] > 0
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "W&B offline run written, no network used"


def test_tiny_training_lowers_loss(full_run):
    losses = train_losses(read_metrics(full_run))
    first, last = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in (STEPS - 2, STEPS - 1, STEPS)])
    assert last < first - 1.0, (first, last)


def test_a_packed_run_trains_fuller_rows_and_learns(full_run, tmp_path):
    """data.pack_length: the stage trains packed rows (several conversations each), so a step
    carries more real tokens than a padded one, and the loss still falls."""
    steps = 8
    r = run_cli(
        *COMMON,
        f"train.max_steps={steps}",
        "train.checkpoint_every_steps=8",
        "train.eval_every_steps=8",
        "data.pack_length=512",
        f"hydra.run.dir={tmp_path}",
    )
    assert r.returncode == 0, r.stderr[-4000:]
    packed = json.loads((tmp_path / "train_summary.json").read_text())
    padded = json.loads((full_run / "train_summary.json").read_text())
    assert packed["steps"] == steps and packed["final_val_loss"] is not None
    # tiny rows average ~270 tokens: two rarely fit 512 padded, packing fits ~1.6 per row
    assert packed["tokens_trained"] / steps > 1.4 * padded["tokens_trained"] / padded["steps"]
    losses = train_losses(read_metrics(tmp_path))
    assert losses[steps] < losses[1] - 0.5, losses


def test_resume_after_kill_continues_the_same_curve(full_run, tmp_path):
    full_losses = train_losses(read_metrics(full_run))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "WANDB_"))}
    args = [sys.executable, "-m", "gemma_tool_use", *COMMON, f"hydra.run.dir={tmp_path}", "tracking=disabled"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "checkpoints" / "3"
    deadline = time.time() + 600  # a guard against a hang, not a speed requirement
    while not ckpt.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # a hard kill: no cleanup, no final checkpoint
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "run finished before it could be killed"
    assert not (tmp_path / "train_summary.json").exists()

    r = run_cli(*COMMON, f"hydra.run.dir={tmp_path}", "tracking=disabled")
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    resumed = summary["resumed_from_step"]
    assert 3 <= resumed < STEPS and summary["steps"] == STEPS
    after = {s: l for s, l in train_losses(read_metrics(tmp_path)).items() if s > resumed + 1}
    assert after, "no steps after resume"
    # Same weights, optimizer state and data order: the curve continues exactly.
    for step, loss in after.items():
        assert loss == pytest.approx(full_losses[step], abs=1e-4), step
    # One metrics line per step however the run was cut (the killed process wrote steps past its
    # checkpoint: they are redone, not repeated), and the token total counts both processes.
    train_steps = [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r]
    assert train_steps == list(range(1, STEPS + 1))
    full = json.loads((full_run / "train_summary.json").read_text())
    assert summary["tokens_trained"] == full["tokens_trained"] and summary["tokens_trained"] > 0
    # The summary describes the whole run, not only the resumed process's share of it.
    assert summary["processes"] == 2 and summary["train_seconds"] > summary["train_seconds_this_process"] > 0
    assert summary["final_train_loss"] == pytest.approx(train_losses(read_metrics(tmp_path))[STEPS])


def test_start_step_takes_up_a_lost_run_from_the_weights_it_saved(full_run, tmp_path):
    """train.start_step: a run whose run dir was lost (checkpoints, optimizer state) goes on from the
    weights it saved at step k (here its step-9 checkpoint; a committed adapter works the same),
    with the same step count, data order and learning rate; only Adam's moments start afresh, so
    step k+1 (computed before any update) repeats the full run's loss."""
    k, taken_up = 9, tmp_path / "taken_up"
    assert (full_run / "checkpoints" / str(k)).is_dir()
    resume = [*COMMON, f"train.init_from={full_run / 'checkpoints' / str(k)}", "tracking=disabled"]
    r = run_cli(*resume, f"train.start_step={k}", f"hydra.run.dir={taken_up}")
    assert r.returncode == 0, r.stderr[-4000:]
    assert json.loads((taken_up / "adapter" / "adapter_config.json").read_text())["step"] == STEPS
    records, full = read_metrics(taken_up), read_metrics(full_run)
    losses = train_losses(records)
    assert sorted(losses) == list(range(k + 1, STEPS + 1))
    assert losses[k + 1] == pytest.approx(train_losses(full)[k + 1], abs=1e-4)  # same weights, same batch
    lr = {rec["step"]: rec["train/learning_rate"] for rec in records if "train/learning_rate" in rec}
    full_lr = {rec["step"]: rec["train/learning_rate"] for rec in full if "train/learning_rate" in rec}
    assert lr and all(lr[s] == pytest.approx(full_lr[s]) for s in lr), (lr, full_lr)
    # its checkpoints remember the offset: resuming them with another start_step is refused
    r = run_cli(*resume, "train.start_step=3", f"hydra.run.dir={taken_up}")
    assert r.returncode != 0 and f"train.start_step={k}" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_sigterm_saves_the_current_step_and_final_metrics_describe_the_final_weights(tmp_path):
    """SIGTERM (schedulers, preemption, `timeout`) behaves like Ctrl-C: checkpoint, one-line
    message, prompt exit. The resumed run ends on a step that is not an eval step (5, evals every
    12): it still evaluates the final weights, and final_val_loss is that evaluation."""
    common = [
        "experiments=tiny_smoke",
        "train.max_steps=5",
        "train.checkpoint_every_steps=1000",
        "train.eval_every_steps=12",
        "tracking=disabled",
        f"hydra.run.dir={tmp_path}",
    ]
    proc, err = signal_after_steps(common, tmp_path, 2, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and "stopped (SIGTERM)" in err, err[-2000:]
    steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    done = [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r]
    assert steps and max(steps) == max(done) >= 2, (steps, done)
    # and the portable adapter of the steps done, to commit or take up elsewhere
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["step"] == max(steps)

    r = run_cli(*common)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    records = read_metrics(tmp_path)
    evals = {rec["step"]: rec["eval/loss"] for rec in records if "eval/loss" in rec}
    assert summary["steps"] == 5 and 5 in evals and summary["final_val_loss"] == pytest.approx(evals[5])
    assert [rec["step"] for rec in records if "train/loss" in rec] == [1, 2, 3, 4, 5]

    # Once more: resumed at its last step, the process trains nothing and re-evaluates. Its summary
    # still carries the run's train loss, seconds and memory (it once wrote null, 48 s and 4.9 GiB
    # for a 2-hour stage).
    r = run_cli(*common)
    assert r.returncode == 0, r.stderr[-4000:]
    again = json.loads((tmp_path / "train_summary.json").read_text())
    assert again["resumed_from_step"] == 5 and again["processes"] == 3 and again["tokens_per_s"] is None
    assert summary["final_train_loss"] is not None
    assert again["final_train_loss"] == pytest.approx(summary["final_train_loss"])
    assert again["train_seconds"] >= summary["train_seconds"] and again["peak_rss_gib"] >= summary["peak_rss_gib"]


def test_a_corrupt_latest_checkpoint_gives_way_to_the_newest_intact_one(full_run, tmp_path, caplog):
    import logging
    import shutil

    from gemma_tool_use.model.checkpoints import CheckpointError, checkpoint_problem, set_aside_corrupt_checkpoints

    src = full_run / "checkpoints"
    steps = sorted(int(p.name) for p in src.iterdir() if p.name.isdigit())
    assert len(steps) >= 2
    latest, earlier = steps[-1], steps[-2]
    cases = {
        "truncated array file": lambda d: next(p for p in (d / "model_params" / "d").iterdir()).write_bytes(b"x"),
        "empty _METADATA": lambda d: (d / "model_params" / "_METADATA").write_bytes(b""),
        "missing item": lambda d: shutil.rmtree(d / "optimizer_state"),
    }
    log = logging.getLogger("test")
    for name, corrupt in cases.items():
        root = tmp_path / name.replace(" ", "_") / "checkpoints"
        shutil.copytree(src, root)
        assert checkpoint_problem(root / str(latest)) is None
        corrupt(root / str(latest))
        assert checkpoint_problem(root / str(latest)), name
        with caplog.at_level(logging.WARNING):
            assert set_aside_corrupt_checkpoints(root, log) == earlier, name
        assert f"checkpoint {root / str(latest)} is corrupt" in caplog.text
        assert not (root / str(latest)).exists() and len(list(root.with_name("checkpoints_corrupt").iterdir())) == 1
        # none intact: a one-line error, and nothing is moved
        corrupt(root / str(earlier))
        with pytest.raises(CheckpointError, match="no intact checkpoint"):
            set_aside_corrupt_checkpoints(root, log)
        assert (root / str(earlier)).is_dir()


def _train_tiny_in_process(tokenizer, overrides, steps):
    """Build the tiny default model from the composed config, snapshot its parameters and run
    `steps` completion-loss steps on the bundled tiny data; returns (model, snapshot before)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from tunix.sft import peft_trainer
    from tunix.sft.metrics_logger import MetricsLogger

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.data.batching import tokenize_conversations, train_batches
    from gemma_tool_use.data.conversations import load_jsonl_conversations
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.training.loss import completion_loss
    from gemma_tool_use.training.metrics import Throughput
    from gemma_tool_use.training.optimizer import make_optimizer
    from gemma_tool_use.training.sft_trainer import SftTrainer
    from gemma_tool_use.utils.mesh import build_mesh
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", "data=tiny", *overrides])
    mesh = build_mesh(cfg.tpu)
    model = build_model(cfg.model, mesh, 0)
    snapshot = _snapshot(model)
    data = tokenize_conversations(load_jsonl_conversations("tiny/train.jsonl"), tokenizer, max_length=512)
    opt, _ = make_optimizer(cfg.optim, steps)
    with mesh:
        trainer = SftTrainer(
            model,
            opt,
            peft_trainer.TrainingConfig(eval_every_n_steps=100, max_steps=steps),
            metrics_logger=MetricsLogger(),
            throughput=Throughput(),
        ).with_loss_fn(completion_loss)
        trainer.train(train_batches(data, 2, [128, 256, 512], 0))
    return model, snapshot


def _snapshot(model):
    import jax
    from flax import nnx

    return {
        "frozen": jax.tree.map(np.asarray, nnx.state(model, nnx.Not(nnx.LoRAParam))),
        "lora": jax.tree.map(np.asarray, nnx.state(model, nnx.LoRAParam)),
        "table": np.asarray(model.embedder.input_embedding.value),
    }


def test_only_trainable_params_change(tokenizer):
    import jax

    model, before = _train_tiny_in_process(
        tokenizer, ["model.train_token_ids=[]", "optim.lr=1e-2", "optim.schedule=constant"], 5
    )
    after = _snapshot(model)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before["frozen"]), jax.tree.leaves(after["frozen"]))
    )
    changed = [
        not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before["lora"]), jax.tree.leaves(after["lora"]))
    ]
    assert len(changed) > 0 and all(changed), "every LoRA matrix (incl. MLP ones) receives updates"


def test_trainable_embedding_rows_train_and_match_a_merged_table(tokenizer):
    import jax.numpy as jnp

    model, before = _train_tiny_in_process(tokenizer, ["model.train_token_ids=[105,106]", "optim.lr=1e-2"], 4)
    delta = np.asarray(model.embedder.row_delta.value)
    assert np.abs(delta).sum() > 0, "the <start_of_turn>/<end_of_turn> rows were trained"
    assert np.array_equal(np.asarray(model.embedder.input_embedding.value), before["table"]), "the rest stays frozen"
    # Same logits as a plain model whose table has the delta merged into rows 105/106.
    x = jnp.asarray([[2, 105, 40, 41, 106, 107]])
    T = x.shape[1]
    args = (x, jnp.arange(T)[None], None, jnp.tril(jnp.ones((1, T, T), bool)))
    with_delta, _ = model(*args)
    merged = model.embedder.merged_table()
    model.embedder.input_embedding.value = merged
    model.embedder.row_delta.value = jnp.zeros_like(model.embedder.row_delta.value)
    plain, _ = model(*args)
    np.testing.assert_allclose(np.asarray(with_delta), np.asarray(plain), atol=1e-4)


def test_ctrl_c_saves_a_checkpoint_at_the_current_step(tmp_path):
    args = [
        "experiments=tiny_smoke",
        "train.max_steps=200",
        "train.checkpoint_every_steps=1000",
        "tracking=disabled",
        f"hydra.run.dir={tmp_path}",
    ]
    proc, err = signal_after_steps(args, tmp_path, 3, signal.SIGINT)
    log = (tmp_path / "gemma_tool_use.log").read_text()
    assert proc.returncode == 128 + signal.SIGINT and "checkpoint saved" in log, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps and max(steps) >= 3, "no interval checkpoint was due, yet the work is on disk"


def test_training_history_adds_up_every_process_and_skips_bfcl_and_thrown_away_time(tmp_path):
    from gemma_tool_use.training.metrics import PROCESS_START, training_history

    recs = [
        {"step": 0, "time": 100.0, PROCESS_START: 1},
        {"step": 0, "time": 110.0, "eval/loss": 2.0},
        {"step": 1, "time": 130.0, "train/loss": 1.5, "perf/peak_rss_gib": 3.0},
        {"step": 2, "time": 150.0, "train/loss": 1.2, "perf/peak_rss_gib": 7.5},
        # a second process, hours later, resumes at step 2
        {"step": 2, "time": 9000.0, PROCESS_START: 1},
        {"step": 3, "time": 9040.0, "train/loss": 1.1, "perf/peak_rss_gib": 5.0},
        {"step": 3, "time": 9050.0, "eval/loss": 1.4},
        {"step": 3, "time": 9900.0, "bfcl/simple_python": 0.4},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    h = training_history(path)
    assert h == {
        "processes": 2,
        "train_seconds": 100.0,
        "final_train_loss": 1.1,
        "final_val_loss": 1.4,
        "peak_rss_gib": 7.5,
    }
    assert training_history(tmp_path / "absent.jsonl")["train_seconds"] == 0
