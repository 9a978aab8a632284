"""The pipeline's summary, pipeline_summary.{json,md,png} in the pipeline dir, rewritten after each
stage: BFCL per category and aggregate for the start and each stage with deltas to the previous
one, and each stage's wall time and peak memory. Subset scores and full-category scores, and
constrained and unconstrained ones, are never put in one table.
"""

from __future__ import annotations

import json
from pathlib import Path

from gemma_tool_use.evaluation import bfcl
from gemma_tool_use.evaluation.bfcl_tables import (
    caveat_notes,
    decoding_label,
    irrelevance_split,
    plot_bfcl_compare,
    summary_caveats,
)
from gemma_tool_use.orchestration.heldout_scoring import SUMMARY_RATES, several_calls_right
from gemma_tool_use.utils.markdown import markdown_table


def _score_kind(s: dict) -> str:
    """Which scores may share a table: the same entries, decoded the same way (a constrained run
    is labelled, decoding_label)."""
    sub = s.get("subset")
    kind = (
        f"subset ({sub['per_category']} per category, seed {sub['seed']})"
        if sub
        else ("partial" if s.get("partial") else "full categories")
    )
    return kind + decoding_label(s)


def _delta_row(label: str, values: list) -> list[str]:
    """A table row: each value in %, and after the first, its change from the one before."""
    cells, prev = [label], None
    for i, v in enumerate(values):
        cells.append("-" if v is None else f"{100 * v:.2f}")
        if i:
            cells.append("-" if v is None or prev is None else f"{100 * (v - prev):+.2f}")
        prev = v
    return cells


def _bfcl_section(root: Path, stages: dict, scored: dict, kind: str, names: list[str]) -> tuple[list[str], dict]:
    """(Markdown lines, JSON entries per stage) of one group of comparable BFCL scores."""
    cats = list(dict.fromkeys(c for n in names for c in scored[n]["categories"]))
    aggs = [
        k
        for k in ("non_live", "simple", "irrelevance", "live", "multi_turn")
        if any(isinstance(scored[n].get("aggregates", {}).get(k), (int, float)) for n in names)
    ]
    headers = ["category"]
    for i, n in enumerate(names):
        headers += [n] if i == 0 else [n, "Δ"]
    # a category (and an aggregate of it) that any stage's model was trained on the domains of is
    # marked, with why beneath the table (adapters.score_caveats)
    per_stage = {n: summary_caveats(scored[n]) for n in names}
    caveats = {c: why for n in names for c, why in per_stage[n].items()}
    agg_caveats = bfcl.aggregate_caveats(caveats)  # apart: "irrelevance" names a category and an aggregate

    def mark(name: str, marked: dict) -> str:
        return name + (" *" if name in marked else "")

    rows = [
        _delta_row(mark(c, caveats), [scored[n]["categories"].get(c, {}).get("accuracy") for n in names]) for c in cats
    ]
    rows += [
        _delta_row(f"**{mark(k, agg_caveats)}**", [scored[n].get("aggregates", {}).get(k) for n in names]) for k in aggs
    ]
    splits = {
        n: irrelevance_split(root / stages[n]["dir"] / ("bfcl" if stages[n]["stage"] == "eval" else "bfcl_eval/bfcl"))
        for n in names
        if n in stages
    }
    if any(splits.values()):
        rows.append(
            _delta_row("irrelevance: clean abstentions", [(splits.get(n) or {}).get("clean_accuracy") for n in names])
        )
    notes = caveat_notes(caveats, cats)
    lines = [f"## BFCL, {kind}", "", markdown_table(headers, rows), "", *notes]
    lines += [""] if notes else []
    out = {
        n: {
            "kind": kind,
            "caveats": per_stage[n],
            "categories": {c: v["accuracy"] for c, v in scored[n]["categories"].items()},
            "aggregates": {k: scored[n].get("aggregates", {}).get(k) for k in aggs},
            "irrelevance_split": splits.get(n),
        }
        for n in names
    }
    return lines, out


def _heldout_section(records: dict[str, dict]) -> tuple[list[str], dict]:
    """(Markdown lines, JSON entries) of the held-out tool-calling set's rates per stage, with
    deltas; stages scored on another version of the set (its sha256) get their own table."""
    lines, out = [], {}
    by_set: dict[str, list[str]] = {}
    for n, r in records.items():
        by_set.setdefault(r.get("prompts_sha256", ""), []).append(n)
    for sha, names in by_set.items():
        first = records[names[0]]
        rows = [
            _delta_row(label, [None if records[n].get(k) is None else records[n][k] / 100 for n in names])
            for k, label in SUMMARY_RATES
        ]
        several = [several_calls_right(records[n]) for n in names]
        rows.append(
            _delta_row("several-call requests: right functions", [None if v is None else v / 100 for v in several])
        )
        headers = ["rate, %"]
        for i, n in enumerate(names):
            headers += [n] if i == 0 else [n, "Δ"]
        lines += [
            f"## Held-out tool calling: {first.get('prompts_file')} ({first.get('prompts')} prompts, sha256 {sha[:12]})",
            "",
            markdown_table(headers, rows),
            "",
        ]
        for n in names:
            out[n] = {k: records[n].get(k) for k in ("prompts_file", "prompts_sha256", "prompts")}
            out[n] |= {k: records[n].get(k) for k, _ in SUMMARY_RATES}
            out[n]["several_calls_right_rate"] = several_calls_right(records[n])
    return lines, out


def write_pipeline_summary(
    root: str | Path, state: dict, bfcl: dict[str, dict | None], heldout: dict[str, dict | None] | None = None
) -> dict:
    """`pipeline_summary.{json,md,png}` in the pipeline dir: BFCL per category and aggregate for
    the start and each stage, with deltas to the previous stage, call decisions on the held-out
    tool-calling set where scored, wall time and peak memory per stage. Subset scores and
    full-category scores are never put in one table."""
    root = Path(root)
    stages = state.get("stages", {})
    scored = {n: s for n, s in bfcl.items() if s}
    groups: dict[str, list[str]] = {}
    for n, s in scored.items():
        groups.setdefault(_score_kind(s), []).append(n)
    lines = [
        f"# Pipeline `{state.get('name')}`",
        "",
        f"Commit {state.get('commit')}; start: {state.get('resume_from') or 'the base model'}.",
        "",
    ]
    out = {
        "name": state.get("name"),
        "commit": state.get("commit"),
        "resume_from": state.get("resume_from"),
        "stages": {},
        "bfcl": {},
    }
    for label, names in groups.items():
        section, entries = _bfcl_section(root, stages, scored, label, names)
        lines += section
        out["bfcl"].update(entries)
    if records := {n: r for n, r in (heldout or {}).items() if r}:
        section, out["heldout"] = _heldout_section(records)
        lines += section
    rows = []
    for n, st in stages.items():
        rows.append(
            [
                n,
                st.get("stage"),
                st.get("status"),
                "-" if st.get("seconds") is None else f"{st['seconds'] / 60:.1f}",
                "-" if st.get("peak_rss_gib") is None else f"{st['peak_rss_gib']:.2f}",
                st.get("start") or "base",
            ]
        )
        out["stages"][n] = {
            k: st.get(k) for k in ("stage", "status", "seconds", "peak_rss_gib", "start", "adapter", "dir")
        }
    lines += [
        "## Stages",
        "",
        markdown_table(["stage dir", "stage", "status", "wall (min)", "peak RSS (GiB)", "start"], rows),
    ]
    (root / "pipeline_summary.md").write_text("\n".join(lines) + "\n")
    (root / "pipeline_summary.json").write_text(json.dumps(out, indent=2))
    if scored:
        label, names = next(iter(groups.items()))
        plot_bfcl_compare(
            {n: scored[n] for n in names},
            list(dict.fromkeys(c for n in names for c in scored[n]["categories"])),
            root / "pipeline_summary.png",
            f"pipeline {state.get('name')}: BFCL, {label}",
        )
    return out
