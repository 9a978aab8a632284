"""Supervised training pieces shared by the SFT stages: loss, optimizer, trainer, metrics.

The loop itself is tunix's PeftTrainer (checkpointing, resume, gradient accumulation, eval);
we give it a completion-only loss that never builds full-vocabulary logits for positions that
carry no loss, and a metrics logger that feeds our Tracker instead of jax.monitoring's
process-global listeners (which leak between the jobs of a multirun).
"""

from __future__ import annotations

import resource
import time

import jax
import jax.numpy as jnp
import optax
from tunix.sft import metrics_logger as tunix_metrics
from tunix.sft import peft_trainer
from tunix.sft import utils as sft_utils


def completion_loss(model, input_tokens, input_mask, target_positions, target_ids, target_weights):
    """Mean next-token NLL over model-turn targets only.

    Logits are computed at the K gathered target positions ([B, K, V]) instead of every
    position ([B, T, V]); labels are integers (no one-hot over 262k classes)."""
    positions = sft_utils.build_positions_from_mask(input_mask)
    attention_mask = sft_utils.make_causal_attn_mask(input_mask)
    logits, _ = model(input_tokens, positions, None, attention_mask, logits_at=target_positions)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, target_ids[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * target_weights) / jnp.maximum(jnp.sum(target_weights), 1.0)


def learning_rate_schedule(optim_cfg, max_steps: int) -> optax.Schedule:
    warmup = min(int(optim_cfg.warmup_steps), max(max_steps - 1, 0))
    peak = float(optim_cfg.lr)
    if optim_cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        after = optax.cosine_decay_schedule(peak, max(max_steps - warmup, 1), alpha=float(optim_cfg.min_lr_ratio))
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(optim_cfg, max_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    if optim_cfg.name != "adamw":
        raise ValueError(f"optim.name={optim_cfg.name!r}: only 'adamw' is supported")
    schedule = learning_rate_schedule(optim_cfg, max_steps)

    def chain(learning_rate):
        parts = [optax.adamw(learning_rate, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay)]
        if optim_cfg.grad_clip_norm and optim_cfg.grad_clip_norm > 0:
            parts.insert(0, optax.clip_by_global_norm(optim_cfg.grad_clip_norm))
        return optax.chain(*parts)

    # inject_hyperparams exposes the current learning rate in the optimizer state (logged).
    return optax.inject_hyperparams(chain)(learning_rate=schedule), schedule


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def device_memory_gib() -> float | None:
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / (1 << 30)


class TrackerMetricsLogger(tunix_metrics.MetricsLogger):
    """Sends tunix's per-step metrics to our Tracker (one record per step and mode), adding
    throughput and memory to train records."""

    def __init__(self, tracker, throughput):
        super().__init__(None)  # no tunix backends: nothing registered process-wide
        self.tracker = tracker
        self.throughput = throughput
        self._pending: dict[str, float] = {}
        self._pending_key = None  # (step, mode)

    def log(self, metrics_prefix, metric_name, scalar_value, mode, step):
        prefix_metrics = self._metrics.setdefault(metrics_prefix, {})
        prefix_metrics.setdefault(mode, {}).setdefault(metric_name, []).append(scalar_value)
        key = (int(step), str(mode))
        if key != self._pending_key:
            self.flush()
            self._pending_key = key
        if str(mode) == "eval" and metric_name == "learning_rate":
            return  # tunix logs the optimizer's lr in eval mode too; it belongs to train
        self._pending[f"{mode}/{metric_name}"] = float(jnp.asarray(scalar_value))
        if str(mode) == "train" and metric_name == "loss":
            self._pending.update(self.throughput.sample())

    def flush(self) -> None:
        if self._pending:
            self.tracker.log(self._pending, step=self._pending_key[0])
        self._pending = {}

    def close(self):
        # Not super().close(): it clears jax.monitoring's process-global listeners.
        self.flush()


class Throughput:
    """Tokens/s and step time between consecutive logged train steps (wall clock)."""

    def __init__(self):
        self.tokens = 0
        self.target_tokens = 0
        self.steps = 0
        self._last = None  # (time, tokens, target_tokens, steps)

    def count(self, batch) -> None:
        self.tokens += int(batch["input_mask"].sum())
        self.target_tokens += int(batch["target_weights"].sum())
        self.steps += 1

    def sample(self) -> dict:
        now = (time.perf_counter(), self.tokens, self.target_tokens, self.steps)
        out = {"perf/peak_rss_gib": peak_rss_gib()}
        mem = device_memory_gib()
        if mem is not None:
            out["perf/device_peak_gib"] = mem
        if self._last is not None and now[3] > self._last[3]:
            dt = now[0] - self._last[0]
            out["perf/step_time_s"] = dt / (now[3] - self._last[3])
            out["perf/tokens_per_s"] = (now[1] - self._last[1]) / dt
            out["perf/target_tokens_per_s"] = (now[2] - self._last[2]) / dt
        self._last = now
        return out


class SftTrainer(peft_trainer.PeftTrainer):
    """PeftTrainer that counts the tokens it trains on (for throughput)."""

    def __init__(self, *args, throughput: Throughput, **kwargs):
        super().__init__(*args, **kwargs)
        self.throughput = throughput

    def _prepare_inputs(self, input_data):
        self.throughput.count(input_data)
        return input_data
