"""Training metrics: per-step records for our Tracker, throughput and memory, and a run's figures
read back from metrics.jsonl across the processes that trained it.

`TrackerMetricsLogger` feeds tunix's per-step metrics to our Tracker instead of jax.monitoring's
process-global listeners (which leak between the jobs of a multirun). `Throughput` measures
tokens/s and step time between logged steps; `training_history` sums a resumed run's processes.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from tunix.sft import metrics_logger as tunix_metrics

from gemma_tool_use.utils.files import read_jsonl


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
    return {
        "processes": len(segments),
        "train_seconds": round(seconds, 2),
        "final_train_loss": last("train/loss"),
        "final_val_loss": last("eval/loss"),
        "peak_rss_gib": round(max(rss), 2) if rss else None,
    }


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
