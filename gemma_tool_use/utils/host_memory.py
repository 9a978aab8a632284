"""Host-memory setting applied at start-up, before JAX allocates: large blocks are mapped and
unmapped on their own instead of being carved from glibc's heap.

glibc serves a request above its mmap threshold (128 KiB at start) with its own mapping, but
each time such a block is freed it raises the threshold to that block's size (up to 32 MiB).
XLA:CPU's buffers are megabytes, so after the first step most of them come from the heap, and a
freed heap block is returned to the system only when nothing above it is still in use. Every new
shape (a length bucket, a loss-position count) then leaves a high-water mark behind that
the process keeps; over the cpu recipe's LoRA step shapes a fixed 1 MiB threshold avoids it, with
the same losses (measured: experiments/allocator_memory/README.md). A fixed threshold is what
`MALLOC_MMAP_THRESHOLD_=1048576` sets; `mallopt` sets it from inside the process.

The price: a mapped block comes back as fresh pages, which the kernel zeroes on first touch, in
every step: a training step gets slower and greedy generation slower still (measured:
experiments/allocator_memory/README.md). So it is applied where memory is the risk, the
training stages (GTU_MALLOC_TUNING=auto, the default), not to evaluation, prediction or serving,
whose peak is a few GiB; GTU_MALLOC_TUNING=1 applies it to every stage, 0 to none.

Left alone: another allocator preloaded (jemalloc, tcmalloc, mimalloc), the user's own
MALLOC_MMAP_THRESHOLD_, a libc that is not glibc.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def wants_tuning(training: bool) -> bool:
    """GTU_MALLOC_TUNING: auto (default) = training stages only (`training`), 1 = always, 0 = never."""
    mode = os.environ.get("GTU_MALLOC_TUNING", "auto").lower()
    if mode in ("0", "false", "no", "off"):
        return False
    if mode in ("1", "true", "yes", "on"):
        return True
    return training


def tune_malloc() -> str | None:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD_BYTES. Returns what was set, or None when
    it was left alone (see the module docstring; the caller decides with wants_tuning)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return None  # glibc applied the user's value at start-up
    if any(a in os.environ.get("LD_PRELOAD", "") for a in OTHER_ALLOCATORS):
        return None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return None
    return f"mallopt(M_MMAP_THRESHOLD, {MMAP_THRESHOLD_BYTES})" if ok == 1 else None
