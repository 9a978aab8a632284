"""Run directories, the handoff of a checkpoint from one stage to the next, and W&B grouping.

Every stage runner asks this module where its run lives (`run_dir_of`), which W&B group it
belongs to (`wandb_group`) and which checkpoint it starts from (`resolve_init_from`), so that
stages never import each other. Nothing here imports JAX: a bad handoff fails before JAX loads.

A handoff is explicit, never a search by similarity: `train.init_from` is a run dir or a
checkpoint path, or the exact name of an experiment (`experiments/<name>.yaml`) that has exactly
one run under outputs/ or multirun/. A checkpoint whose model architecture differs from the
configured one is refused (a tiny smoke run is never the start of a real-model stage).
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit() -> str | None:
    """The commit of the code that runs (recorded at the start of a run, not when it ends)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
