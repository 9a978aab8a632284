"""The SFT loop of stages 3-4: tunix's PeftTrainer (as `SftTrainer`) driven over the run's
bucketed batches, resumed from the run dir's newest intact checkpoint, stopped between steps by
Ctrl-C or SIGTERM with the steps done so far saved, and summed up in the run's figures.

Data parallel over processes (multi-host): every process builds the same global batches and
feeds its own rows (`proc` of `nproc`); checkpoints are written collectively (Orbax: once).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import orbax.checkpoint as ocp
from tunix.sft import peft_trainer

from gemma_tool_use.data.batching import eval_batches, train_batches
from gemma_tool_use.model.checkpoints import (
    CheckpointError,
    set_aside_corrupt_checkpoints,
)
from gemma_tool_use.training.loss import completion_loss
from gemma_tool_use.training.metrics import (
    PROCESS_START,
    Throughput,
    TrackerMetricsLogger,
    peak_rss_gib,
    training_history,
)
from gemma_tool_use.training.optimizer import make_optimizer
from gemma_tool_use.training.sft_trainer import SftTrainer
from gemma_tool_use.utils.interrupt import deferred_stops, signals_ignored

log = logging.getLogger(__name__)


def trainer_config(cfg, run_dir: Path) -> peft_trainer.TrainingConfig:
    """tunix's TrainingConfig from the train group: steps, accumulation, checkpoints under the run dir.
    The loop ends at train.stop_after_steps when set (the schedule still spans train.max_steps)."""
    accum = int(cfg.train.grad_accum_steps)
    stop_after = cfg.train.get("stop_after_steps")
    return peft_trainer.TrainingConfig(
        eval_every_n_steps=int(cfg.train.eval_every_steps),
        max_steps=min(int(cfg.train.max_steps), int(stop_after)) if stop_after else int(cfg.train.max_steps),
        gradient_accumulation_steps=accum if accum > 1 else None,
        checkpoint_root_directory=str((run_dir / "checkpoints").absolute()),
        checkpointing_options=ocp.CheckpointManagerOptions(
            save_interval_steps=int(cfg.train.checkpoint_every_steps),
            max_to_keep=int(cfg.train.max_checkpoints_to_keep),
        ),
        pbar_description=str(cfg.stage.name),
    )


def resumable_step(cfg, run_dir: Path) -> int | None:
    """The step a resume starts from (None: a fresh run); corrupt checkpoints are set aside, and a
    run dir with checkpoints is refused when train.resume=false."""
    if not cfg.train.resume and any((run_dir / "checkpoints").glob("*")):
        raise CheckpointError(f"{run_dir}/checkpoints exists and train.resume=false; use a fresh hydra.run.dir")
    return set_aside_corrupt_checkpoints(run_dir / "checkpoints", log)


def build_trainer(cfg, model, run_dir: Path, tracker, throughput: Throughput):
    """(SftTrainer with the completion-only loss, its TrainingConfig, the lr schedule)."""
    start_step = int(cfg.train.get("start_step") or 0)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.max_steps, start_step)
    training_config = trainer_config(cfg, run_dir)
    resume_step = resumable_step(cfg, run_dir)
    try:
        trainer = SftTrainer(
            model,
            optimizer,
            training_config,
            metrics_logger=TrackerMetricsLogger(tracker, throughput),
            throughput=throughput,
            start_step=start_step,
        )
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - the checkpoint reads back, so it is of another shape
        if resume_step is None:
            raise
        raise CheckpointError(
            f"{run_dir}/checkpoints/{resume_step} does not fit the configured model (was "
            f"model.lora.* or model.train_token_ids changed?): {str(e).splitlines()[0][:200]}"
        ) from e
    return trainer.with_loss_fn(completion_loss), training_config, schedule


def train_sft(
    cfg, model, train_set, val_set, run_dir: Path, tracker, *, own_dir: Path, proc: int = 0, nproc: int = 1
) -> dict:
    """Train `model` in place for train.max_steps steps (resuming from run_dir's checkpoints);
    returns the run's figures over every process that trained it."""
    throughput = Throughput()
    trainer, training_config, schedule = build_trainer(cfg, model, run_dir, tracker, throughput)
    start_step, start_tokens = trainer.train_steps, throughput.tokens
    if start_step:
        dropped = tracker.drop_records_after(start_step)
        log.info("resumed from checkpoint at step %d (%d metrics records of redone steps dropped)", start_step, dropped)
    tracker.log({PROCESS_START: 1}, step=start_step)  # where this process's share of the training time begins
    buckets = list(cfg.data.length_buckets)
    train_iter = train_batches(
        train_set,
        int(cfg.train.batch_size),
        buckets,
        int(cfg.seed),
        int(cfg.train.length_group_batches),
        proc,
        nproc,
        cfg.data.pack_length,
    )
    val = (
        eval_batches(val_set, int(cfg.train.batch_size), buckets, int(cfg.train.eval_batches), proc, nproc)
        if val_set
        else None
    )
    t_train = time.time()
    try:
        with deferred_stops():  # a signal stops the loop between steps, never inside one
            trainer.train(train_iter, val)
    except KeyboardInterrupt as e:
        # Ctrl-C or SIGTERM loses nothing: save the steps done since the last checkpoint, then stop.
        with signals_ignored():
            trainer.save_now()
        log.warning(
            "stopped (%s) at step %d; checkpoint saved, re-run with hydra.run.dir=%s to resume",
            getattr(e, "signal_name", "SIGINT"),
            trainer.train_steps,
            run_dir,
        )
        e.stopped_at_step = trainer.train_steps  # the stage writes the portable adapter of these steps
        raise
    train_seconds = time.time() - t_train
    trainer.metrics_logger.flush()
    # The run's figures over every process that trained it (a resumed run's counters hold only its own steps).
    history = training_history(own_dir / "metrics.jsonl")
    steps_here = trainer.train_steps - start_step
    return {
        "stage": training_config.pbar_description,
        "steps": trainer.train_steps,
        "resumed_from_step": start_step,
        "final_train_loss": history["final_train_loss"],
        "final_val_loss": history["final_val_loss"],
        "train_seconds": history["train_seconds"],  # all processes
        "processes": history["processes"],
        "train_seconds_this_process": round(train_seconds, 2),
        "tokens_trained": throughput.tokens,
        "target_tokens_trained": throughput.target_tokens,
        # tokens of every process (they ride in the checkpoints); speed of this one, None if it trained no step
        "tokens_per_s": (
            round((throughput.tokens - start_tokens) / train_seconds, 1)
            if steps_here > 0 and train_seconds > 0
            else None
        ),
        "peak_rss_gib": round(max(peak_rss_gib(), history["peak_rss_gib"] or 0.0), 2),
        "final_lr": float(schedule(trainer.train_steps)),
        "checkpoint_dir": training_config.checkpoint_root_directory,
    }
