"""Stages 3-4: LoRA SFT (`stage=sft_small`, `stage=sft_full`).

Run dir (Hydra's output dir) after a run:
    .hydra/              composed config and overrides
    checkpoints/<step>/  Orbax checkpoints (trainable params + optimizer state)
    metrics.jsonl        one line per logged step (train/eval loss, lr, grad norm, tokens/s, memory)
    train_summary.json   final numbers
    wandb/               offline W&B run (tracking.mode=offline)
Re-running with the same `hydra.run.dir=<run dir>` resumes from the latest checkpoint with the
same data order.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gemma_tool_use.orchestration.runs import (
    adopt_start_model,
    resolve_init_from,
    run_dir_of,
    wandb_group,
)
from gemma_tool_use.utils.mesh import build_mesh, prepare_runtime

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    # The handoff is resolved (and a checkpoint of another architecture refused) before JAX loads.
    init_from = resolve_init_from(cfg.train.init_from, cfg.model) if cfg.train.init_from else None
    prepare_runtime(cfg.tpu)  # before JAX starts: simulated devices, multi-host init

    import jax
    import orbax.checkpoint as ocp
    from omegaconf import open_dict
    from tunix.sft import peft_trainer

    from gemma_tool_use.data.batching import eval_batches, train_batches
    from gemma_tool_use.data.prepare import prepare_training_data
    from gemma_tool_use.model.checkpoints import (
        CheckpointError,
        set_aside_corrupt_checkpoints,
    )
    from gemma_tool_use.model.loading import build_model, load_tokenizer_for
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
    from gemma_tool_use.utils.tracking import Tracker

    run_dir = run_dir_of(cfg)
    t_start = time.time()
    mesh = build_mesh(cfg.tpu)
    tokenizer = load_tokenizer_for(cfg.model)
    # Data parallel over processes (multi-host): every process builds the same global batches and
    # feeds its rows; checkpoints are written collectively (Orbax: once); the run dir's files
    # (metrics, W&B, card, summary, adapter) belong to process 0, the others log under process_<i>/.
    proc, nproc = jax.process_index(), jax.process_count()
    own_dir = run_dir if proc == 0 else run_dir / f"process_{proc}"
    if proc:
        with open_dict(cfg):
            cfg.tracking.mode = "disabled"

    train_set, val_set, data_card = prepare_training_data(cfg, tokenizer, own_dir)
    buckets = list(cfg.data.length_buckets)
    log.info("data %s: %d train rows, %d val rows", cfg.data.name, len(train_set.examples),
             len(val_set.examples) if val_set else 0)

    if init_from:  # e.g. sft_full starting from an sft_small run (weights only, fresh optimizer)
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.model.lora_checkpoint = init_from
        adopt_start_model(cfg, init_from, run_dir)  # the run dir describes the adapters it trains
        log.info("initialising from %s", cfg.model.lora_checkpoint)
    model = build_model(cfg.model, mesh, cfg.seed)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.max_steps)
    accum = int(cfg.train.grad_accum_steps)
    training_config = peft_trainer.TrainingConfig(
        eval_every_n_steps=int(cfg.train.eval_every_steps),
        max_steps=int(cfg.train.max_steps),
        gradient_accumulation_steps=accum if accum > 1 else None,
        checkpoint_root_directory=str((run_dir / "checkpoints").absolute()),
        checkpointing_options=ocp.CheckpointManagerOptions(
            save_interval_steps=int(cfg.train.checkpoint_every_steps),
            max_to_keep=int(cfg.train.max_checkpoints_to_keep),
        ),
        pbar_description=str(cfg.stage.name),
    )
    if not cfg.train.resume and any((run_dir / "checkpoints").glob("*")):
        raise CheckpointError(f"{run_dir}/checkpoints exists and train.resume=false; use a fresh hydra.run.dir")
    resume_step = set_aside_corrupt_checkpoints(run_dir / "checkpoints", log)

    config_dict = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    throughput = Throughput()
    with Tracker(own_dir, cfg.tracking, config_dict, name=run_dir.name, group=wandb_group(cfg)) as tracker, mesh:
        if data_card:
            tracker.summary({"data/train_rows": data_card["steps"]["train_tokenized"]["rows"],
                             "data/no_call_share": data_card["no_call_share"]["train_tokenized"]})
        try:
            trainer = SftTrainer(model, optimizer, training_config,
                                 metrics_logger=TrackerMetricsLogger(tracker, throughput), throughput=throughput)
        except Exception as e:  # noqa: BLE001 - the checkpoint reads back, so it is of another shape
            if resume_step is None:
                raise
            raise CheckpointError(f"{run_dir}/checkpoints/{resume_step} does not fit the configured model (was "
                                  f"model.lora.* or model.train_token_ids changed?): {str(e).splitlines()[0][:200]}") from e
        trainer = trainer.with_loss_fn(completion_loss)
        start_step = trainer.train_steps
        start_tokens = throughput.tokens
        if start_step:
            dropped = tracker.drop_records_after(start_step)
            log.info("resumed from checkpoint at step %d (%d metrics records of redone steps dropped)",
                     start_step, dropped)
        tracker.log({PROCESS_START: 1}, step=start_step)  # where this process's share of the training time begins
        train_iter = train_batches(train_set, int(cfg.train.batch_size), buckets, int(cfg.seed),
                                   int(cfg.train.length_group_batches), proc, nproc, cfg.data.pack_length)
        val = (eval_batches(val_set, int(cfg.train.batch_size), buckets, int(cfg.train.eval_batches), proc, nproc)
               if val_set else None)
        t_train = time.time()
        try:
            with deferred_stops():  # a signal stops the loop between steps, never inside one
                trainer.train(train_iter, val)
        except KeyboardInterrupt as e:
            # Ctrl-C or SIGTERM loses nothing: save the steps done since the last checkpoint, then stop.
            with signals_ignored():
                trainer.save_now()
            log.warning("stopped (%s) at step %d; checkpoint saved, re-run with hydra.run.dir=%s to resume",
                        getattr(e, "signal_name", "SIGINT"), trainer.train_steps, run_dir)
            raise
        train_seconds = time.time() - t_train

        trainer.metrics_logger.flush()
        # The run's figures over every process that trained it (a resumed run's counters hold only its own steps).
        history = training_history(own_dir / "metrics.jsonl")
        steps_here = trainer.train_steps - start_step
        summary = {
            "stage": training_config.pbar_description,
            "steps": trainer.train_steps,
            "resumed_from_step": start_step,
            "final_train_loss": history["final_train_loss"],
            "final_val_loss": history["final_val_loss"],
            "train_seconds": history["train_seconds"],  # all processes
            "processes": history["processes"],
            "train_seconds_this_process": round(train_seconds, 2),
            "total_seconds_this_process": round(time.time() - t_start, 2),
            "tokens_trained": throughput.tokens,
            "target_tokens_trained": throughput.target_tokens,
            # tokens of every process (they ride in the checkpoints); speed of this one, None if it trained no step
            "tokens_per_s": (round((throughput.tokens - start_tokens) / train_seconds, 1)
                             if steps_here > 0 and train_seconds > 0 else None),
            "peak_rss_gib": round(max(peak_rss_gib(), history["peak_rss_gib"] or 0.0), 2),
            "final_lr": float(schedule(trainer.train_steps)),
            "checkpoint_dir": training_config.checkpoint_root_directory,
        }
        if cfg.model.lora.enabled:  # the portable adapter: the next stage's start, the user's takeaway
            from gemma_tool_use.model.adapters import export_adapter
            from gemma_tool_use.utils.git import git_commit

            summary["adapter"] = str(export_adapter(model, run_dir / "adapter", cfg.model, step=trainer.train_steps,
                                                    source=str(run_dir), commit=git_commit(), write=proc == 0))
        if nproc > 1:  # the rest is process 0's: plots, BFCL (single-process generation), the summary
            log.info("process %d of %d: done at step %d", proc, nproc, trainer.train_steps)
            if proc:
                return summary["final_val_loss"] if summary["final_val_loss"] is not None else summary["final_train_loss"]
            if cfg.eval.run_after_training:
                log.warning("eval.run_after_training is skipped in a %d-process run: run stage=eval with "
                            "model.lora_checkpoint=%s", nproc, run_dir / "adapter")
                with open_dict(cfg):
                    cfg.eval.run_after_training = False
            if cfg.train.export_merged:
                log.warning("train.export_merged is skipped in a %d-process run: merge from %s in one process",
                            nproc, run_dir / "adapter")
                with open_dict(cfg):
                    cfg.train.export_merged = False
        try:  # a plot is a convenience: never lose a finished run over it
            from gemma_tool_use.training.curves import plot_training_curves

            summary["loss_curve"] = str(plot_training_curves(run_dir / "metrics.jsonl", run_dir / "loss_curve.png",
                                                              f"{cfg.stage.name}: {cfg.model.name}"))
        except Exception as e:  # noqa: BLE001
            log.warning("could not draw the loss curve: %s", e)
        if cfg.train.export_merged:
            from gemma_tool_use.export.hf_checkpoint import export_hf

            out = export_hf(model, cfg.model, run_dir / "merged_hf", tokenizer.source if Path(tokenizer.source).is_file() else None)
            summary["merged_hf"] = str(out)
        if cfg.eval.run_after_training:  # BFCL on the trained model; its summary lands beside the checkpoint
            from gemma_tool_use.evaluation.evaluate import evaluate_model

            # the training figures are on disk before BFCL starts: a failed or cut eval loses none
            (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
            bfcl_summary = evaluate_model(cfg, model, tokenizer, run_dir / "bfcl_eval", tracker, step=trainer.train_steps,
                                          model_label=f"{cfg.model.name} + {run_dir / 'adapter'} (step {trainer.train_steps})")
            summary["bfcl"] = {k: v for k, v in bfcl_summary["aggregates"].items() if k != "missing"}
            summary["bfcl_categories"] = {c: v["accuracy"] for c, v in bfcl_summary["categories"].items()}
        (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        tracker.summary({k: v for k, v in summary.items() if not isinstance(v, dict)})
        log.info("done: %s", json.dumps(summary))
    return summary["final_val_loss"] if summary["final_val_loss"] is not None else summary["final_train_loss"]
