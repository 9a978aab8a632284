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


# Loss positions per chunk of the vocabulary projection. A [positions, 262k] f32 logits block
# (plus its gradient) is ~2 GiB per 1,000 positions; above this size the loss runs a scan over
# chunks and recomputes each chunk's logits in the backward pass, so memory stays flat.
LOSS_CHUNK = 512


def completion_loss(model, input_tokens, input_mask, target_positions, target_ids, target_weights):
    """Mean next-token NLL over model-turn targets only.

    Hidden states are gathered at the K target positions ([B, K, D]) instead of every position,
    labels are integers (no one-hot over 262k classes), and the vocabulary projection runs in
    chunks of LOSS_CHUNK positions (see above)."""
    positions = sft_utils.build_positions_from_mask(input_mask)
    attention_mask = sft_utils.make_causal_attn_mask(input_mask)
    hidden, _ = model(input_tokens, positions, None, attention_mask, logits_at=target_positions, return_hidden=True)
    nll = chunked_nll(model.embedder, hidden, target_ids)
    return jnp.sum(nll * target_weights) / jnp.maximum(jnp.sum(target_weights), 1.0)


def _head_nll(table, row_ids, row_delta, h, targets):
    """-log p(target) for hidden states h [N, D] under the tied head (plus trained row deltas)."""
    logits = jnp.dot(h, table.T)
    if row_delta is not None:
        logits = logits.at[..., row_ids].add(jnp.dot(h, row_delta.T))
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - target_logit


def chunked_nll(embedder, hidden, target_ids, chunk: int | None = None):
    """Per-position NLL [B, K] of `target_ids` given final hidden states [B, K, D]."""
    chunk = LOSS_CHUNK if chunk is None else chunk
    table = embedder.input_embedding.value
    row_delta = getattr(embedder, "row_delta", None)
    row_ids = embedder.row_ids.value if row_delta is not None else None
    row_delta = row_delta.value if row_delta is not None else None
    B, K, D = hidden.shape
    n = B * K
    if n <= chunk:
        return _head_nll(table, row_ids, row_delta, hidden, target_ids)
    pad = -n % chunk
    h = jnp.pad(hidden.reshape(n, D), ((0, pad), (0, 0))).reshape(-1, chunk, D)
    t = jnp.pad(target_ids.reshape(n), (0, pad)).reshape(-1, chunk)
    step = jax.checkpoint(lambda hc, tc: _head_nll(table, row_ids, row_delta, hc, tc))
    _, nll = jax.lax.scan(lambda carry, xs: (carry, step(*xs)), None, (h, t))
    return nll.reshape(-1)[:n].reshape(B, K)


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
