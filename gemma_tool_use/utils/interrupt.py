"""Stopping a run from outside: Ctrl-C (SIGINT) and SIGTERM (schedulers, preemption, `timeout`)
behave the same. Both become `Stopped` (a KeyboardInterrupt), so a training loop saves a
checkpoint of the current step, trackers finish, and the process exits promptly.

Inside a training loop the signal must not interrupt a step: the jitted step donates the
optimizer state, and an exception between donation and write-back deletes it (measured: a SIGTERM
landing there made the final save fail with "Array has been deleted"). There the handler only
marks the run (`deferred_stops`) and the loop raises at the end of the step
(`raise_if_stop_requested`), with model and optimizer consistent.
"""

from __future__ import annotations

import contextlib
import signal

_defer = False
_pending: str | None = None


class Stopped(KeyboardInterrupt):
    """The run was asked to stop by a signal; `signal_name` says which."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name

    @property
    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))


def _on_signal(signum, frame):
    global _pending
    name = signal.Signals(signum).name
    if _defer:
        _pending = _pending or name
        return
    raise Stopped(name)


def install_stop_handlers() -> None:
    """SIGINT and SIGTERM raise Stopped in the main thread (or mark the run, inside deferred_stops)."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def raise_if_stop_requested() -> None:
    """At a safe point: raise the Stopped that a signal asked for, if one did."""
    global _pending
    if _pending is not None:
        name, _pending = _pending, None
        raise Stopped(name)


@contextlib.contextmanager
def deferred_stops():
    """Inside, a signal only marks the run; raise_if_stop_requested() raises it at a safe point,
    and leaving the block raises one that is still pending."""
    global _defer
    previous, _defer = _defer, True
    try:
        yield
    finally:
        _defer = previous
    raise_if_stop_requested()


@contextlib.contextmanager
def signals_ignored():
    """Ignore SIGINT/SIGTERM while the final checkpoint is written: a second Ctrl-C (or a
    scheduler repeating SIGTERM) must not tear it. The run is stopping anyway."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
