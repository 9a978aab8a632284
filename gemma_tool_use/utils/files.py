"""The project's one JSONL reader, its one sha256 helper, and atomic JSON writes.

Runs append JSONL (metrics.jsonl, bfcl/<category>.jsonl, predictions) and a kill can tear the
last line; datasets are JSONL written by others, where a bad line is a row to report, not a
crash. Both read through `iter_jsonl`, which never raises on content: each line comes back as
(line number, value or None, error or None).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from gemma_tool_use.utils.errors import UserError


class JsonlError(UserError, ValueError):
    """A JSONL file that cannot be read as a whole; the message names file:line."""


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            h.update(chunk)
    return h.hexdigest()


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, parsed value, None) per non-blank line, or (line number, None, reason) for a
    line that is not UTF-8 or not JSON. Reads bytes so one bad byte costs one line, not the file."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, None, f"not UTF-8 ({e.reason} at byte {e.start})"
                continue
            try:
                yield lineno, json.loads(text), None
            except (json.JSONDecodeError, RecursionError, ValueError) as e:
                yield lineno, None, f"not JSON ({str(e).splitlines()[0][:120]})"


def read_jsonl(path: str | os.PathLike) -> list:
    """Records of a JSONL file a run appends to: a torn last line (a kill mid-write) is dropped,
    a bad line anywhere else is a JsonlError naming file:line."""
    rows, bad = [], None
    for lineno, value, error in iter_jsonl(path):
        if bad is not None:  # the bad line was not the last one
            raise JsonlError(f"{path}:{bad[0]}: {bad[1]}")
        if error is not None:
            bad = (lineno, error)
            continue
        rows.append(value)
    return rows


def drop_torn_tail(path: str | os.PathLike) -> None:
    """Cut a partial last line (a kill mid-write) so that appended records stay parseable."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def write_json_atomic(path: str | os.PathLike, obj: Any, **dumps_kwargs) -> Path:
    """Write JSON through a temporary file and a rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, **dumps_kwargs), encoding="utf-8")
    os.replace(tmp, path)
    return path
