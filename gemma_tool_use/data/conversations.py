"""Load canonical conversations ({"tools": [...], "messages": [...]}) from JSONL files.

Bad rows never crash a run: each is reported with its file and line number and skipped,
or raised as an error in strict mode."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gemma_tool_use.format.render import FormatError, validate_conversation
from gemma_tool_use.utils.errors import UserError
from gemma_tool_use.utils.files import iter_jsonl
from gemma_tool_use.utils.paths import RESOURCES_DIR

log = logging.getLogger(__name__)


class DataError(UserError, ValueError):
    """A data file or row is unusable (strict mode), or no usable rows remain."""


@dataclass
class LoadReport:
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    repaired: int = 0  # argument values converted to their schema type (e.g. "5" -> 5)
    examples: list[str] = field(default_factory=list)  # first few "file:line: reason"

    def note(self, where: str, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{where}: {reason}: {detail}")


def resolve_data_file(name: str) -> Path:
    """Absolute path, else bundled package data (resources/data/), else relative to cwd."""
    p = Path(name).expanduser()
    candidates = [p] if p.is_absolute() else [RESOURCES_DIR / "data" / p, Path.cwd() / p]
    if found := next((c for c in candidates if c.is_file()), None):
        return found
    raise DataError(f"data file not found: {name} (looked in: {', '.join(str(c) for c in candidates)})")


def load_jsonl_conversations(path: str | Path, *, strict: bool = False, report: LoadReport | None = None) -> list[dict]:
    path = resolve_data_file(str(path))
    report = report if report is not None else LoadReport()
    rows: list[dict] = []
    for lineno, row, error in iter_jsonl(path):
        reason = "malformed_json"
        try:
            if error is None:
                validate_conversation(row)
                rows.append(row)
                report.kept += 1
                continue
        except FormatError as e:
            reason, error = "invalid_conversation", str(e)
        if strict:
            raise DataError(f"{path}:{lineno}: {error}")
        report.note(f"{path}:{lineno}", reason, error)
    if report.dropped:
        log.warning(
            "%s: kept %d rows, dropped %s; e.g. %s",
            path,
            report.kept,
            dict(report.dropped),
            "; ".join(report.examples[:3]),
        )
    return rows
