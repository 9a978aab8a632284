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
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from gemma_tool_use.data.augment import augment_rows
from gemma_tool_use.data.conversations import DataError, LoadReport
from gemma_tool_use.data.decontaminate import contamination_reason, decontaminate
from gemma_tool_use.data.sources import HUB_SOURCES, fetch, load_source, seal_tools
from gemma_tool_use.model.tokenizer import cache_root

log = logging.getLogger(__name__)


def data_root(configured: str | None) -> Path:
    """data.root, else $GEMMA_TOOL_USE_DATA, else the user cache (~/.cache/gemma_tool_use/datasets)."""
    if chosen := configured or os.environ.get("GEMMA_TOOL_USE_DATA"):
        return Path(chosen).expanduser()

    return cache_root() / "datasets"


@dataclass
class MixCard:
    name: str
    steps: dict = field(default_factory=dict)  # step -> {"rows", "by_source", "by_category"}
    dropped: dict = field(default_factory=dict)  # step -> {reason: count}
    augmentations: dict = field(default_factory=dict)
    token_lengths: dict = field(default_factory=dict)  # split -> histogram
    no_call_share: dict = field(default_factory=dict)
    licenses: dict = field(default_factory=dict)  # source -> licence of its data

    def record(self, step: str, rows: list[dict]) -> None:
        self.steps[step] = {
            "rows": len(rows),
            "by_source": dict(sorted(Counter(r["meta"]["source"].split("+")[0] for r in rows).items())),
            "by_category": dict(sorted(Counter(r["meta"]["category"] for r in rows).items())),
        }

    def to_markdown(self) -> str:
        def counts(d: dict) -> str:
            return ", ".join(f"{k} {v}" for k, v in d.items())

        lines = [f"# Data card: {self.name}", ""]
        for step, s in self.steps.items():
            lines += [
                f"## {step}: {s['rows']} rows",
                f"by source: {counts(s['by_source'])}",
                f"by category: {counts(s['by_category'])}",
            ]
            lines += [f"dropped: {counts(self.dropped[step])}"] if self.dropped.get(step) else []
            lines.append("")
        if self.licenses:
            lines.append(f"licences: {'; '.join(f'{k}: {v}' for k, v in self.licenses.items())}")
        if self.augmentations:
            lines.append(f"augmentations added: {counts(self.augmentations)}")
        lines += [f"no-call share ({split}): {share:.1%}" for split, share in self.no_call_share.items()]
        for split, hist in self.token_lengths.items():
            lines.append(
                f"token lengths ({split}): "
                + ", ".join(f"{k if k.startswith('>') else '<=' + k}: {v}" for k, v in hist.items())
            )
        lines += [
            f"dropped at {step}: {counts(self.dropped[step])}"
            for step in ("tokenize_train", "tokenize_val")
            if self.dropped.get(step)
        ]
        return "\n".join(lines) + "\n"


def split_by_tool(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict], int]:
    """(train, val, rows mixing both), by a seeded hash of each tool name (uniform in [0, 1))."""
    if fraction <= 0:
        return rows, [], 0

    def held_out(name: str) -> bool:
        return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") / 2**64 < fraction

    train, val, mixed = [], [], 0
    for r in rows:
        held = {held_out(t["name"]) for t in r["tools"]} or {False}
        if held == {True}:
            val.append(r)
        elif held == {False}:
            train.append(r)
        else:
            mixed += 1
    return train, val, mixed


def load_sources(names, root: Path, strict: bool, hub_files=None) -> tuple[list[dict], dict]:
    """Rows of the named sources (data/sources: local names, or "hub:<id>[:<config>]")."""
    rows, dropped = [], {}
    for name in names:
        report = LoadReport()
        got = load_source(name, root, report, strict, hub_files)
        rows.extend(got)
        if report.dropped:
            dropped[name] = dict(report.dropped)
        log.info("source %s: %d rows (dropped %s)", name, len(got), dict(report.dropped) or 0)
    return rows, dropped


def tool_pool(names, root: Path, strict: bool) -> list[dict]:
    """Tool schemas for procedural rows and distractors: "seal_tools/tool.jsonl" (3.6k schemas
    with parameters), "toolalpaca/public_apis.json" (1.4k API descriptions, no parameters)."""
    pool = []
    for name in names:
        if name not in ("seal_tools/tool.jsonl", "toolalpaca/public_apis.json"):
            raise DataError(
                f"data.tool_pools: unknown pool {name!r} (seal_tools/tool.jsonl, toolalpaca/public_apis.json)"
            )
        fetch.ensure_files(root, [name])
        if name == "seal_tools/tool.jsonl":
            pool += list(seal_tools.catalog(root / name, strict).values())
            continue
        for e in json.loads((root / name).read_text())["entries"]:
            fname = "_".join(re.findall(r"[A-Za-z0-9]+", e["API"])).lower()
            if fname:
                pool.append(
                    {
                        "name": fname,
                        "description": f"{e['Description']} ({e['Category']} API).",
                        "parameters": {"type": "object", "properties": {}},
                    }
                )
    return pool


def build_mix(data_cfg, seed: int) -> tuple[list[dict], list[dict], MixCard]:
    card = MixCard(name=data_cfg.name)
    root = data_root(data_cfg.root)
    root.mkdir(parents=True, exist_ok=True)  # missing files are fetched from their pinned upstream
    rows, load_dropped = load_sources(list(data_cfg.sources), root, bool(data_cfg.strict), dict(data_cfg.hub_files))
    card.record("loaded", rows)
    card.dropped["loaded"] = {f"{s}:{k}": v for s, d in load_dropped.items() for k, v in d.items()}
    card.licenses = {name: source_license(name) for name in data_cfg.sources}
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
    if caps := dict(data_cfg.get("max_rows_per_source") or {}):  # after the split: val draws on every row
        train, card.dropped["source_caps"] = cap_sources(train, caps, seed)
        val, card.dropped["source_caps_val"] = cap_sources(val, {k: max(1, v // 10) for k, v in caps.items()}, seed)
    card.record("train_before_augmentation", train)
    card.record("val", val)
    pool = tool_pool(list(data_cfg.tool_pools), root, bool(data_cfg.strict)) if data_cfg.tool_pools else None
    if pool:  # procedural rows and distractors must not bring back BFCL tools, nor validation tools
        held = {t["name"] for r in val for t in r["tools"]}
        pool = [
            t
            for t in pool
            if t["name"] not in held
            and not (data_cfg.decontaminate and contamination_reason({"tools": [t], "messages": []}))
        ]
    train, card.augmentations = augment_rows(train, dict(data_cfg.augment), seed, tool_pool=pool)
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
        card.no_call_share[split] = no_call_share(rs)
    return train, val, card


def source_license(name: str) -> str:
    """The licence of a source's data (data/sources: fetch.LICENSES by folder, HUB_SOURCES by id)."""
    if name.startswith("hub:"):
        spec = HUB_SOURCES.get(name[4:].partition(":")[0])
        return spec.license if spec else "unknown"
    return fetch.LICENSES.get(name.split("/")[0], "unknown")


def cap_sources(rows: list[dict], caps: dict[str, int], seed: int) -> tuple[list[dict], dict]:
    """At most caps[source] rows of each capped source (a seeded sample, in the rows' order);
    (rows, {source: rows dropped})."""
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_source[r["meta"]["source"]].append(i)
    drop, dropped = set(), {}
    for source, cap in caps.items():
        idx = by_source.get(source, [])
        if len(idx) > cap:
            keep = set(random.Random(f"{seed}:{source}").sample(idx, cap))
            drop |= set(idx) - keep
            dropped[source] = len(idx) - cap
    return [r for i, r in enumerate(rows) if i not in drop], dropped


def no_call_share(rows: list[dict]) -> float:
    """Share of rows whose answer is text, not a call (refusals with tools present, chat)."""
    return (sum(1 for r in rows if r["meta"]["category"] in ("irrelevance", "chat")) / len(rows)) if rows else 0.0


_ADDED_AUGMENTATIONS = {"other_tools": 0.0}


def mix_fingerprint(data_cfg, seed: int, tokenizer_source: str) -> str:
    from omegaconf import OmegaConf

    # version 2: cached cards carry the train_tokenized step; 3: one data-source framework (data/sources),
    # one refusal text, jsonschema argument checks; 4: BFCL function names decontaminated, per-source caps;
    # 5: join_same_tool ends each joined request with punctuation
    data = OmegaConf.to_container(data_cfg, resolve=True)
    # options added since version 5 leave the key alone while at their default (the same rows), so
    # adding one does not rebuild every cached mix
    augment = data.get("augment") or {}
    for k, default in _ADDED_AUGMENTATIONS.items():
        if augment.get(k, default) == default:
            augment.pop(k, None)
    blob = json.dumps(
        {
            "data": data,
            "seed": seed,
            "tokenizer": tokenizer_source,
            "version": 5,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
