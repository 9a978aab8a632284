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

import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from gemma_tool_use.orchestration import stage_context
from gemma_tool_use.orchestration.runs import adopt_start_model, resolve_init_from
from gemma_tool_use.orchestration.stage_context import StageContext, open_stage, open_tracker
from gemma_tool_use.utils.interrupt import signals_ignored

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    # The handoff is resolved (and a checkpoint of another architecture refused) before JAX loads.
    init_from = resolve_init_from(cfg.train.init_from, cfg.model) if cfg.train.init_from else None
    with open_stage(cfg, tracker=False) as ctx:
        import jax

        from gemma_tool_use.data.prepare import prepare_training_data
        from gemma_tool_use.model.loading import build_model
        from gemma_tool_use.training.sft_loop import train_sft

        # Multi-host: the run dir's files (metrics, W&B, card, summary, adapter) belong to process
        # 0; the others log under process_<i>/ with tracking off.
        proc, nproc = jax.process_index(), jax.process_count()
        own_dir = ctx.run_dir if proc == 0 else ctx.run_dir / f"process_{proc}"
        if proc:
            with open_dict(cfg):
                cfg.tracking.mode = "disabled"
        train_set, val_set, data_card = prepare_training_data(cfg, ctx.tokenizer, own_dir)
        log.info(
            "data %s: %d train rows, %d val rows",
            cfg.data.name,
            len(train_set.examples),
            len(val_set.examples) if val_set else 0,
        )
        if init_from:  # e.g. sft_full starting from an sft_small run (weights only, fresh optimizer)
            with open_dict(cfg):
                cfg.model.lora_checkpoint = init_from
            adopt_start_model(cfg, init_from, ctx.run_dir)  # the run dir describes the adapters it trains
            log.info("initialising from %s", init_from)
        model = build_model(cfg.model, ctx.mesh, cfg.seed)
        with open_tracker(ctx, own_dir) as ctx.tracker:
            if data_card:
                ctx.tracker.summary(
                    {
                        "data/train_rows": data_card["steps"]["train_tokenized"]["rows"],
                        "data/no_call_share": data_card["no_call_share"]["train_tokenized"],
                    }
                )
            try:
                summary = train_sft(
                    cfg, model, train_set, val_set, ctx.run_dir, ctx.tracker, own_dir=own_dir, proc=proc, nproc=nproc
                )
            except KeyboardInterrupt as e:
                _keep_adapter_of_a_stopped_run(ctx, model, getattr(e, "stopped_at_step", None), proc)
                raise
            if cfg.model.lora.enabled:
                summary["adapter"] = stage_context.export_trained_adapter(ctx, model, summary["steps"], write=proc == 0)
            if nproc > 1 and not _process_zero_goes_on(cfg, ctx.run_dir, proc, nproc, summary["steps"]):
                return _objective(summary)
            _finish(ctx, model, summary)
    return _objective(summary)


def _keep_adapter_of_a_stopped_run(ctx: StageContext, model, step: int | None, proc: int) -> None:
    """A stopped run's portable adapter at the step it reached: a few MB that can be committed and
    taken up elsewhere (train.start_step) if the run dir and its checkpoints are lost."""
    if not step or not ctx.cfg.model.lora.enabled:
        return
    with signals_ignored():  # a second Ctrl-C must not tear the adapter files
        stage_context.export_trained_adapter(ctx, model, step, write=proc == 0)
    log.warning("wrote %s/adapter at step %d (the steps done so far)", ctx.run_dir, step)


def _objective(summary: dict) -> float:
    """What a sweep minimises: the final validation loss, else the final training loss."""
    return summary["final_val_loss"] if summary["final_val_loss"] is not None else summary["final_train_loss"]


def _process_zero_goes_on(cfg, run_dir: Path, proc: int, nproc: int, step: int) -> bool:
    """In a multi-process run the rest (plots, BFCL in one process, the summary) is process 0's;
    what needs a single process is skipped with a warning saying how to run it."""
    log.info("process %d of %d: done at step %d", proc, nproc, step)
    if proc:
        return False
    adapter = run_dir / "adapter"
    single_process = {  # the option's group, key, and how to do it by hand
        ("eval", "run_after_training"): f"run stage=eval with model.lora_checkpoint={adapter}",
        ("train", "export_merged"): f"merge from {adapter} in one process",
    }
    for (group, key), instead in single_process.items():
        if cfg[group][key]:
            log.warning("%s.%s is skipped in a %d-process run: %s", group, key, nproc, instead)
            with open_dict(cfg):
                cfg[group][key] = False
    return True


def _finish(ctx: StageContext, model, summary: dict) -> None:
    """Loss curve, merged HF weights (train.export_merged), BFCL and train_summary.json."""
    from gemma_tool_use.export.hf_checkpoint import export_hf
    from gemma_tool_use.training.curves import plot_training_curves

    cfg, run_dir = ctx.cfg, ctx.run_dir
    stage_context.draw_curve(
        summary,
        "loss_curve",
        lambda: plot_training_curves(
            run_dir / "metrics.jsonl", run_dir / "loss_curve.png", f"{cfg.stage.name}: {cfg.model.name}"
        ),
    )
    if cfg.train.export_merged:
        source = ctx.tokenizer.source if Path(ctx.tokenizer.source).is_file() else None
        summary["merged_hf"] = str(export_hf(model, cfg.model, run_dir / "merged_hf", source))
    stage_context.finish_training(
        ctx,
        model,
        summary,
        summary_file="train_summary.json",
        step=summary["steps"],
        seconds_key="total_seconds_this_process",
    )
