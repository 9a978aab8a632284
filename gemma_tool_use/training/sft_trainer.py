"""The SFT trainer: tunix's PeftTrainer (checkpointing, resume, gradient accumulation, eval) with
what our runs need on top.

It carries the trained-token totals across restarts in each checkpoint's metadata, writes each
step's metrics as soon as the step is done (a kill loses no logged step), shows our progress line
instead of tunix's bar, stops only at safe points between steps (Ctrl-C / SIGTERM save the steps
done so far) and evaluates the final weights when the last step was not an eval step.
"""

from __future__ import annotations

import dataclasses

from tunix.sft import metrics_logger as tunix_metrics
from tunix.sft import peft_trainer

from gemma_tool_use.model.checkpoints import CheckpointError
from gemma_tool_use.training.metrics import (
    Throughput,
    TrackerMetricsLogger,
    peak_rss_gib,
)
from gemma_tool_use.utils.interrupt import raise_if_stop_requested
from gemma_tool_use.utils.progress import StepProgress


class _NoBar:
    """Stands in for tunix's progress bar (it creates one only where none is set)."""

    def update_metrics(self, *args, **kwargs):
        pass

    def update(self, *args, **kwargs):
        pass

    def close(self):
        pass


class SftTrainer(peft_trainer.PeftTrainer):
    """PeftTrainer that counts the tokens it trains on across restarts (the totals ride in each
    checkpoint's metadata), flushes each step's metrics as soon as they are complete, and ends
    with an evaluation of the final weights when the last step was not an eval step."""

    def __init__(self, *args, throughput: Throughput, start_step: int = 0, **kwargs):
        super().__init__(*args, **kwargs)  # restores the latest checkpoint, if any
        self.throughput = throughput
        self.start_step = start_step
        restored = self._restored_custom_metadata or {}
        throughput.tokens = int(restored.get("tokens_trained", 0))
        throughput.target_tokens = int(restored.get("target_tokens_trained", 0))
        if self._train_steps and int(restored.get("start_step", 0)) != start_step:
            # the optimizer's step count is offset by start_step: another offset misreads the schedule
            raise CheckpointError(
                f"checkpoint at step {self._train_steps} was taken with train.start_step="
                f"{int(restored.get('start_step', 0))}, not {start_step}; keep the value the run began with"
            )
        if not self._train_steps and start_step:
            # A run taken up from the adapter it saved at `start_step` (its checkpoints were lost):
            # tunix counts steps from here and skips the batches already trained on.
            accum = self.config.get_with_default("gradient_accumulation_steps", 1)
            self._train_steps, self._iter_steps = start_step, start_step * accum
        self._eval_ds = None
        self._last_eval_step = None
        self._closing = False  # save_now / close: no stop may be raised from inside them

    def custom_checkpoint_metadata(self) -> dict:
        return {
            "tokens_trained": self.throughput.tokens,
            "target_tokens_trained": self.throughput.target_tokens,
            "start_step": self.start_step,
        }

    def _prepare_inputs(self, input_data):
        if self._mode == tunix_metrics.Mode.TRAIN:  # eval batches are not trained tokens
            self.throughput.count(input_data)
        return input_data

    def train(self, train_ds, eval_ds=None, *args, **kwargs):
        self._eval_ds = eval_ds
        # Our progress (bar on a terminal, periodic log lines elsewhere) replaces tunix's bar,
        # which is silent outside a terminal and shows neither tokens/s, memory nor an ETA.
        self._pbar = _NoBar()
        self.progress = StepProgress(
            int(self.config.max_steps), self._train_steps, self.config.pbar_description or "train"
        )
        try:
            return super().train(train_ds, eval_ds, *args, **kwargs)
        finally:
            self.progress.close()

    def _may_update_pbar(self, metrics, step=None, loss=None):
        progress = getattr(self, "progress", None)
        if progress is not None and step is not None and self._mode == tunix_metrics.Mode.TRAIN:
            rate = self.throughput.sample_rate()
            progress.update(
                int(step),
                loss=None if loss is None else float(loss),
                tok_s=None if rate is None else round(rate, 1),
                rss_gib=round(peak_rss_gib(), 2),
            )
        super()._may_update_pbar(metrics, step=step, loss=loss)

    def _write_train_metrics(self):
        # tunix writes a step's metrics one step late (I/O overlap); a kill then loses the line of
        # the step a checkpoint holds. Write each finished step at once (a CPU step is synchronous).
        for attr in ("_prev_buffered_train_metrics", "_buffered_train_metrics"):
            buf = getattr(self, attr)
            if buf is not None:  # cleared only once written: a signal mid-write leaves it for save_now
                self._write_metrics(dataclasses.replace(buf, step=buf.step + 1))  # logged as the step it made
                self._may_update_pbar(self._tqdm_train_metrics, step=buf.step + 1, loss=buf.loss)
                setattr(self, attr, None)
        self._flush_metrics()
        if not self._closing:  # the step is complete (weights and optimizer written back): a safe point
            raise_if_stop_requested()

    def _run_eval(self, eval_ds, eval_step_fn):
        super()._run_eval(eval_ds, eval_step_fn)
        self._last_eval_step = self._train_steps
        self._flush_metrics()
        if not self._closing:  # between steps: a safe point
            raise_if_stop_requested()

    def _flush_metrics(self) -> None:
        if isinstance(self.metrics_logger, TrackerMetricsLogger):  # tunix's own logger has no buffer
            self.metrics_logger.flush()

    def save_now(self) -> None:
        """Checkpoint the steps done so far (Ctrl-C, SIGTERM): never lose trained work."""
        self._closing = True
        self._throttler.wait_for_all()
        if isinstance(self.metrics_logger, TrackerMetricsLogger):
            self.metrics_logger.discard_pending()  # a record torn by the signal is written whole below
        self._write_train_metrics()  # the last finished step's metrics line
        self._save_last_checkpoint()
        self.checkpoint_manager.close()

    def _save_last_checkpoint(self):
        # tunix's version drops the custom metadata: the token totals would restart at zero.
        last_saved_step = self.checkpoint_manager.latest_step()
        if last_saved_step is None or last_saved_step < self._train_steps:
            self.checkpoint_manager.save(
                self._train_steps,
                self.model,
                self.optimizer,
                save_only_lora_params=self._lora_enabled,
                force=True,
                custom_metadata=self.custom_checkpoint_metadata(),
            )

    def close(self):
        self._closing = True
        # Final numbers must describe the final weights: evaluate at the last step when the
        # schedule did not (max_steps not a multiple of eval_every_steps).
        if self._eval_ds and self._last_eval_step != self._train_steps and self._jitted_eval_step_fn is not None:
            self._write_train_metrics()
            self._run_eval(self._eval_ds, self._jitted_eval_step_fn)
        super().close()
