"""Progress of a long phase (training steps, GRPO steps): step, loss, tokens/s, memory, ETA.

On a terminal it is a tqdm bar; in a log or a pipe (a pipeline stage, nohup, CI) it is a log
line at most every `interval_s` seconds and at the last step, so a 1.5-hour run is never silent
and never floods a log. A pipeline stage's position ("pipeline cpu, stage 2/4: 2_sft_full",
from the GTU_PIPELINE_POSITION environment variable the pipeline sets) heads the bar / lines.
The ETA is the mean step time of this process times the steps left (the first step, which
compiles, is left out of the mean once there are others).
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("gemma_tool_use.progress")

POSITION_ENV = "GTU_PIPELINE_POSITION"


def format_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s"


class StepProgress:
    def __init__(
        self, total: int, initial: int = 0, desc: str = "train", interval_s: float = 30.0, tty: bool | None = None
    ):
        self.total, self.step, self.desc, self.interval_s = int(total), int(initial), desc, float(interval_s)
        self.position = os.environ.get(POSITION_ENV)
        self._times: list[float] = []
        self._t_last = time.perf_counter()
        self._t_logged = 0.0
        self._bar = None
        if tty if tty is not None else sys.stderr.isatty():
            from tqdm import tqdm

            if self.position:
                print(self.position, file=sys.stderr, flush=True)
            self._bar = tqdm(total=self.total, initial=self.step, desc=desc, dynamic_ncols=True, file=sys.stderr)

    def eta_s(self) -> float | None:
        times = self._times[1:] if len(self._times) > 1 else self._times
        if not times:
            return None
        return sum(times) / len(times) * max(0, self.total - self.step)

    def line(self, metrics: dict) -> str:
        parts = [f"{self.desc} step {self.step}/{self.total}"]
        for k, v in metrics.items():
            if v is None:
                continue
            parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        parts.append(f"ETA {format_seconds(self.eta_s())}")
        return (f"[{self.position}] " if self.position else "") + " | ".join(parts)

    def update(self, step: int, **metrics) -> str:
        """The phase reached `step`; metrics e.g. loss=, tok_s=, rss_gib=. Returns the line."""
        now = time.perf_counter()
        if step > self.step:
            self._times.append((now - self._t_last) / (step - self.step))
        self._t_last, n, self.step = now, step - self.step, step
        text = self.line(metrics)
        if self._bar is not None:
            self._bar.set_postfix(
                {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in metrics.items() if v is not None},
                refresh=False,
            )
            self._bar.update(max(0, n))
        elif now - self._t_logged >= self.interval_s or step >= self.total:
            self._t_logged = now
            log.info("%s", text)
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
