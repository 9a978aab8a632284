"""Build a training mix: load sources -> validate -> decontaminate -> filter categories ->
split validation by tool -> augment -> cap -> data card. Deterministic for a seed.

The validation split holds out whole tools: each tool name goes to validation with
probability `val_tool_fraction` (by a seeded hash); rows whose tools are all held out form the
validation set, rows with none of them train, rows mixing both are dropped (counted), so no
validation tool is ever seen in training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from gemma_tool_use.data.conversations import DataError, LoadReport

log = logging.getLogger(__name__)


def data_root(configured: str | None) -> Path:
    """data.root, else $GEMMA_TOOL_USE_DATA, else the user cache (~/.cache/gemma_tool_use/datasets)."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("GEMMA_TOOL_USE_DATA")
    if env:
        return Path(env).expanduser()
    from gemma_tool_use.tokenizer import cache_root

    return cache_root() / "datasets"


@dataclass
class MixCard:
    name: str
    steps: dict = field(default_factory=dict)  # step -> {"rows", "by_source", "by_category"}
    dropped: dict = field(default_factory=dict)  # step -> {reason: count}
    augmentations: dict = field(default_factory=dict)
    token_lengths: dict = field(default_factory=dict)  # split -> histogram
    no_call_share: dict = field(default_factory=dict)

    def record(self, step: str, rows: list[dict]) -> None:
        self.steps[step] = {
            "rows": len(rows),
            "by_source": dict(sorted(Counter(r["meta"]["source"].split("+")[0] for r in rows).items())),
            "by_category": dict(sorted(Counter(r["meta"]["category"] for r in rows).items())),
        }

    def to_dict(self) -> dict:
        return {"name": self.name, "steps": self.steps, "dropped": self.dropped, "augmentations": self.augmentations,
                "token_lengths": self.token_lengths, "no_call_share": self.no_call_share}

    def to_markdown(self) -> str:
        lines = [f"# Data card: {self.name}", ""]
        for step, s in self.steps.items():
            lines.append(f"## {step}: {s['rows']} rows")
            lines.append("by source: " + ", ".join(f"{k} {v}" for k, v in s["by_source"].items()))
            lines.append("by category: " + ", ".join(f"{k} {v}" for k, v in s["by_category"].items()))
            if self.dropped.get(step):
                lines.append("dropped: " + ", ".join(f"{k} {v}" for k, v in self.dropped[step].items()))
            lines.append("")
        if self.augmentations:
            lines.append("augmentations added: " + ", ".join(f"{k} {v}" for k, v in self.augmentations.items()))
        for split, share in self.no_call_share.items():
            lines.append(f"no-call share ({split}): {share:.1%}")
        for split, hist in self.token_lengths.items():
            lines.append(f"token lengths ({split}): " + ", ".join(f"<={k}: {v}" for k, v in hist.items()))
        return "\n".join(lines) + "\n"


def _tool_hash(name: str, seed: int) -> float:
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_by_tool(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict], int]:
    if fraction <= 0:
        return rows, [], 0
    train, val, mixed = [], [], 0
    for r in rows:
        held = {_tool_hash(t["name"], seed) < fraction for t in r["tools"]} or {False}
        if held == {True}:
            val.append(r)
        elif held == {False}:
            train.append(r)
        else:
            mixed += 1
    return train, val, mixed


def load_sources(names, root: Path, strict: bool) -> tuple[list[dict], dict]:
    from gemma_tool_use.data import sources_local

    rows, dropped = [], {}
    for name in names:
        if name not in sources_local.LOCAL_SOURCES:
            raise DataError(f"data.sources: unknown source {name!r} (known: {', '.join(sorted(sources_local.LOCAL_SOURCES))})")
        report = LoadReport()
        got = sources_local.LOCAL_SOURCES[name](root, report, strict)
        rows.extend(got)
        if report.dropped:
            dropped[name] = dict(report.dropped)
        log.info("source %s: %d rows (dropped %s)", name, len(got), dict(report.dropped) or 0)
    return rows, dropped


def build_mix(data_cfg, seed: int) -> tuple[list[dict], list[dict], MixCard]:
    from gemma_tool_use.data.augment import augment_rows
    from gemma_tool_use.data.decontaminate import decontaminate

    card = MixCard(name=data_cfg.name)
    root = data_root(data_cfg.root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist (set data.root or GEMMA_TOOL_USE_DATA)")
    rows, load_dropped = load_sources(list(data_cfg.sources), root, bool(data_cfg.strict))
    card.record("loaded", rows)
    card.dropped["loaded"] = {f"{s}:{k}": v for s, d in load_dropped.items() for k, v in d.items()}
    if data_cfg.decontaminate:
        rows, dropped = decontaminate(rows)
        card.record("decontaminated", rows)
        card.dropped["decontaminated"] = dict(dropped)
    wanted = set(data_cfg.categories)
    if wanted:
        before = Counter(r["meta"]["category"] for r in rows)
        rows = [r for r in rows if r["meta"]["category"] in wanted]
        card.dropped["categories"] = {k: v for k, v in before.items() if k not in wanted}
        card.record("categories", rows)
    train, val, mixed = split_by_tool(rows, float(data_cfg.val_tool_fraction), seed)
    card.dropped["split"] = {"rows_mixing_train_and_val_tools": mixed}
    card.record("train_before_augmentation", train)
    card.record("val", val)
    aug_cfg = dict(data_cfg.augment)
    train, counts = augment_rows(train, aug_cfg, seed)
    card.augmentations = counts
    cap = data_cfg.max_rows_per_category
    if cap:
        rng = random.Random(seed)
        by_cat = defaultdict(list)
        for r in train:
            by_cat[r["meta"]["category"]].append(r)
        train = []
        for cat in sorted(by_cat):
            group = by_cat[cat]
            train += rng.sample(group, cap) if len(group) > cap else group
    random.Random(seed).shuffle(train)
    card.record("train", train)
    for split, rs in (("train", train), ("val", val)):
        card.no_call_share[split] = (sum(1 for r in rs if r["meta"]["category"] in ("irrelevance", "chat")) / len(rs)) if rs else 0.0
    return train, val, card


def mix_fingerprint(data_cfg, seed: int, tokenizer_source: str) -> str:
    from omegaconf import OmegaConf

    blob = json.dumps({"data": OmegaConf.to_container(data_cfg, resolve=True), "seed": seed,
                       "tokenizer": tokenizer_source, "version": 1}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
