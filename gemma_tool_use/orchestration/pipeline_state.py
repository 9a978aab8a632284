"""The pipeline's state file, `<pipeline dir>/pipeline_state.json`: the pipeline's name, commit and
start, and one record per stage (status, start, dir, adapter, command, wall time, peak memory).

Paths inside the pipeline dir are recorded relative to it, so a finished dir can be moved or
committed (experiments/<name>/) and a later session continues it in place; a state written with
absolute paths under the dir reads back the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from gemma_tool_use.utils.files import write_json_atomic

STATE = "pipeline_state.json"


def read_state(root: Path) -> dict:
    """The recorded state, its paths made portable; an empty one when the file is absent or unreadable."""
    try:
        state = json.loads((root / STATE).read_text())
    except (OSError, ValueError):
        return {"stages": {}}
    for rec in state.get("stages", {}).values():  # states written with absolute paths under root
        for key in ("dir", "start", "adapter"):
            if rec.get(key):
                rec[key] = portable(root, rec[key])
    return state


def portable(root: Path, path: str) -> str:
    """`path` relative to the pipeline dir when it lies inside it, else as given."""
    p = Path(path)
    return str(p.relative_to(root)) if p.is_absolute() and p.is_relative_to(root) else path


def absolute(root: Path, path: str) -> str:
    """A recorded path as an absolute one (relative paths are under the pipeline dir)."""
    return str(path if Path(path).is_absolute() else root / path)


def write_state(root: Path, state: dict) -> None:
    write_json_atomic(root / STATE, state)
