"""Supervised training pieces shared by the SFT stages: loss, optimizer, trainer, metrics.

The loop itself is tunix's PeftTrainer (checkpointing, resume, gradient accumulation, eval);
we give it a completion-only loss that never builds full-vocabulary logits for positions that
carry no loss, and a metrics logger that feeds our Tracker instead of jax.monitoring's
process-global listeners (which leak between the jobs of a multirun).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time

import jax
import jax.numpy as jnp
import optax
from tunix.sft import metrics_logger as tunix_metrics
from tunix.sft import peft_trainer
from tunix.sft import utils as sft_utils

from gemma_tool_use.errors import UserError
from gemma_tool_use.interrupt import raise_if_stop_requested


# Loss positions per chunk of the vocabulary projection. A [positions, 262k] f32 logits block
# (plus its gradient) is ~2 GiB per 1,000 positions; above this size the loss runs a scan over
# chunks and recomputes each chunk's logits in the backward pass, so memory stays flat.
LOSS_CHUNK = 512


def completion_loss(model, input_tokens, input_mask, target_positions, target_ids, target_weights,
                    input_segments=None, target_rows=None):
    """Mean next-token NLL over model-turn targets only.

    Hidden states are gathered at the K target positions ([B, K, D]) instead of every position,
    labels are integers (no one-hot over 262k classes), and the vocabulary projection runs in
    chunks of LOSS_CHUNK positions (see above). With `input_segments` (packed rows, see
    data/batching.py), each conversation attends to itself only and its positions start at 0.
    `target_rows` [B, K]: the row each slot's position belongs to (batching deals a batch's targets
    over all rows); None: slot (b, k) is in row b."""
    if input_segments is None:
        positions = sft_utils.build_positions_from_mask(input_mask)
        attention_mask = sft_utils.make_causal_attn_mask(input_mask)
    else:
        positions, attention_mask = packed_positions_and_mask(input_segments)
    hidden, _ = model(input_tokens, positions, None, attention_mask, logits_at=target_positions,
                      logits_rows=target_rows, return_hidden=True, causal_mask=True)
    nll = chunked_nll(model.embedder, hidden, target_ids)
    return jnp.sum(nll * target_weights) / jnp.maximum(jnp.sum(target_weights), 1.0)


def packed_positions_and_mask(segments):
    """Positions (restarting at 0 with each segment) and the causal attention mask [B, T, T]
    that keeps each segment to itself, from segment ids [B, T] (0 = padding, attends nowhere)."""
    T = segments.shape[-1]
    idx = jnp.arange(T, dtype=jnp.int32)
    first = jnp.concatenate([jnp.ones_like(segments[:, :1], bool), segments[:, 1:] != segments[:, :-1]], axis=1)
    start = jax.lax.cummax(jnp.where(first, idx, 0), axis=1)
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, :, None] > 0)
    return idx - start, same & (idx[:, None] >= idx[None, :])


def _head_nll(table, row_ids, row_delta, h, targets):
    """-log p(target) for hidden states h [N, D] under the tied head (plus trained row deltas)."""
    # einsum, not jnp.dot(h, table.T): for 2-D h, XLA:CPU copies the transposed 262k x 640 table on
    # every call and picks a slower bf16 kernel (measured: 512 positions 1.32 s vs 0.70 s, forward).
    logits = jnp.einsum("...d,vd->...v", h, table)
    if row_delta is not None:
        logits = logits.at[..., row_ids].add(jnp.einsum("...d,kd->...k", h, row_delta))
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
    chunk = -(-n // -(-n // chunk))  # as many chunks as needed, evened out: 768 = 2 x 384, not 2 x 512
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


PROCESS_START = "run/process_start"  # metrics.jsonl marker: a process began (or resumed) training here


def training_history(metrics_path) -> dict:
    """The whole run's figures from metrics.jsonl, every process that trained it included: the
    counters of a process cover only its own steps, so a run resumed at its last step would
    otherwise report no train loss, seconds of a validation and the memory of a BFCL pass.

    Training seconds add up each process's span, from its PROCESS_START marker (or, in runs
    written before the marker, its first record) to its last train or eval record; the time of
    steps that a kill threw away (dropped on resume) is not counted."""
    from pathlib import Path

    from gemma_tool_use.files import read_jsonl

    path = Path(metrics_path)
    recs = [r for r in read_jsonl(path) if isinstance(r, dict)] if path.is_file() else []
    recs = [r for r in recs if not any(k.startswith("bfcl/") for k in r)]
    segments: list[list[dict]] = []
    for r in recs:
        if r.get(PROCESS_START) or not segments:
            segments.append([])
        segments[-1].append(r)
    seconds = sum(seg[-1]["time"] - seg[0]["time"] for seg in segments if len(seg) > 1)
    last = lambda key: next((float(r[key]) for r in reversed(recs) if key in r), None)
    rss = [float(r["perf/peak_rss_gib"]) for r in recs if "perf/peak_rss_gib" in r]
    return {"processes": len(segments), "train_seconds": round(seconds, 2),
            "final_train_loss": last("train/loss"), "final_val_loss": last("eval/loss"),
            "peak_rss_gib": round(max(rss), 2) if rss else None}


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

    def discard_pending(self) -> None:
        self._pending, self._pending_key = {}, None

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

    def sample_rate(self) -> float | None:
        """Tokens/s since the previous call (for the progress line; `sample` feeds the metrics)."""
        now = (time.perf_counter(), self.tokens)
        prev, self._last_rate = getattr(self, "_last_rate", None), now
        if prev is None or now[0] <= prev[0]:
            return None
        return (now[1] - prev[1]) / (now[0] - prev[0])

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


class _NoBar:
    """Stands in for tunix's progress bar (it creates one only where none is set)."""

    def update_metrics(self, *args, **kwargs):
        pass

    def update(self, *args, **kwargs):
        pass

    def close(self):
        pass


class CheckpointError(UserError, RuntimeError):
    """No intact checkpoint to resume from; the message names the directory."""


def checkpoint_problem(step_dir) -> str | None:
    """Why a checkpoint step dir cannot be restored (one line), or None when every item in it
    reads back: a truncated array file, an empty _METADATA or a missing item is found here, by
    reading the arrays as stored (no model needed: a few MB for LoRA adapters)."""
    import warnings
    from pathlib import Path

    import orbax.checkpoint as ocp

    step_dir = Path(step_dir)
    items = ["model_params"]
    try:
        meta = json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())
        items = sorted(meta.get("item_handlers") or items)
    except (OSError, ValueError) as e:
        return f"_CHECKPOINT_METADATA unreadable ({type(e).__name__})"
    checkpointer = ocp.PyTreeCheckpointer()
    for item in items:
        if not (step_dir / item).is_dir():
            return f"{item}/ missing"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                jax.block_until_ready(checkpointer.restore(step_dir / item))
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for bad files
            return f"{item}/ unreadable ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
    return None


def newest_intact_checkpoint(ckpt_root, log=None) -> tuple[int | None, list[tuple[int, str]]]:
    """(the newest step whose checkpoint reads back, or None; the newer corrupt ones as (step,
    problem)), newest first. With `log`, each corrupt one is warned about as it is found."""
    from pathlib import Path

    root = Path(ckpt_root)
    bad = []
    for step in sorted((int(p.name) for p in root.glob("*") if p.name.isdigit() and p.is_dir()), reverse=True):
        problem = checkpoint_problem(root / str(step))
        if problem is None:
            return step, bad
        bad.append((step, problem))
        if log is not None:
            log.warning("checkpoint %s is corrupt (%s); trying an earlier one", root / str(step), problem)
    return None, bad


def set_aside_corrupt_checkpoints(ckpt_root, log) -> int | None:
    """Before resuming: newest-first, move checkpoints that do not read back into
    `<checkpoints>_corrupt/` (kept, never deleted) so the trainer resumes from the newest intact
    one, with a warning naming each. Returns that step (None: no checkpoints). Raises
    CheckpointError, moving nothing, when none is intact."""
    import shutil
    from pathlib import Path

    root = Path(ckpt_root)
    step, bad = newest_intact_checkpoint(root)
    if step is None and bad:
        raise CheckpointError(f"{root}: no intact checkpoint to resume from (" + "; ".join(
            f"step {b}: {why}" for b, why in bad) + "); move the directory away to start afresh")
    for b, why in bad:
        dest = root.with_name(root.name + "_corrupt") / f"{b}_{int(time.time())}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(root / str(b)), dest)
        log.warning("checkpoint %s is corrupt (%s): moved to %s; resuming from step %d", root / str(b), why, dest, step)
    return step


class SftTrainer(peft_trainer.PeftTrainer):
    """PeftTrainer that counts the tokens it trains on across restarts (the totals ride in each
    checkpoint's metadata), flushes each step's metrics as soon as they are complete, and ends
    with an evaluation of the final weights when the last step was not an eval step."""

    def __init__(self, *args, throughput: Throughput, **kwargs):
        super().__init__(*args, **kwargs)  # restores the latest checkpoint, if any
        self.throughput = throughput
        restored = self._restored_custom_metadata or {}
        throughput.tokens = int(restored.get("tokens_trained", 0))
        throughput.target_tokens = int(restored.get("target_tokens_trained", 0))
        self._eval_ds = None
        self._last_eval_step = None
        self._closing = False  # save_now / close: no stop may be raised from inside them

    def custom_checkpoint_metadata(self) -> dict:
        return {"tokens_trained": self.throughput.tokens, "target_tokens_trained": self.throughput.target_tokens}

    def _prepare_inputs(self, input_data):
        if self._mode == tunix_metrics.Mode.TRAIN:  # eval batches are not trained tokens
            self.throughput.count(input_data)
        return input_data

    def train(self, train_ds, eval_ds=None, *args, **kwargs):
        from gemma_tool_use.progress import StepProgress

        self._eval_ds = eval_ds
        # Our progress (bar on a terminal, periodic log lines elsewhere) replaces tunix's bar,
        # which is silent outside a terminal and shows neither tokens/s, memory nor an ETA.
        self._pbar = _NoBar()
        self.progress = StepProgress(int(self.config.max_steps), self._train_steps, self.config.pbar_description or "train")
        try:
            return super().train(train_ds, eval_ds, *args, **kwargs)
        finally:
            self.progress.close()

    def _may_update_pbar(self, metrics, step=None, loss=None):
        progress = getattr(self, "progress", None)
        if progress is not None and step is not None and self._mode == tunix_metrics.Mode.TRAIN:
            rate = self.throughput.sample_rate()
            progress.update(int(step), loss=None if loss is None else float(loss),
                            tok_s=None if rate is None else round(rate, 1), rss_gib=round(peak_rss_gib(), 2))
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
            self.checkpoint_manager.save(self._train_steps, self.model, self.optimizer,
                                         save_only_lora_params=self._lora_enabled, force=True,
                                         custom_metadata=self.custom_checkpoint_metadata())

    def close(self):
        self._closing = True
        # Final numbers must describe the final weights: evaluate at the last step when the
        # schedule did not (max_steps not a multiple of eval_every_steps).
        if self._eval_ds and self._last_eval_step != self._train_steps and self._jitted_eval_step_fn is not None:
            self._write_train_metrics()
            self._run_eval(self._eval_ds, self._jitted_eval_step_fn)
        super().close()
