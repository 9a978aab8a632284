"""BFCL tables and plots: one evaluation's results.md and accuracy.png (beside the published
anchors), and several runs side by side (`python -m gemma_tool_use.report compare`:
bfcl_compare.{md,json,png}, one bar group per category).

Beside accuracy, the comparison shows how the outputs end (stopped on `<end_of_turn>` or at
max_new_tokens, with a decoded call, with parse errors) and splits irrelevance passes into clean
abstentions and decode failures, which BFCL counts alike. `entry_agreement` compares two runs
entry by entry (`report agree`), e.g. the same model before and after a speed change, and
`paired_change` says whether two models' difference on the same entries is more than chance
(entries gained and lost, McNemar's exact test): on a 50-entry category one entry is 2 points, and
a 7-point swing can be noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from gemma_tool_use.evaluation import bfcl
from gemma_tool_use.model.adapters import score_caveats
from gemma_tool_use.utils.files import read_jsonl
from gemma_tool_use.utils.markdown import markdown_table


def format_pct(v, digits: int = 2) -> str:
    """A fraction as a percentage for a table cell ('-' for None)."""
    return "-" if v is None else f"{100 * v:.{digits}f}"


def output_behaviour(bfcl_dir: str | Path) -> dict | None:
    """How a run's single-turn outputs end: the share that stopped on a stop id (the format's
    `<end_of_turn>`) rather than at max_new_tokens, that decode to at least one call, that carry
    parse errors; None when the per-entry files are absent. A model that has the calls right but
    never learned to end its turn shows here, not in the accuracy alone."""
    # multi-turn records hold whole dialogues instead of one stop_reason
    records = [r for f in sorted(Path(bfcl_dir).glob("*.jsonl")) for r in read_jsonl(f) if "stop_reason" in r]
    if not records:
        return None
    n = len(records)
    tokens = sorted(int(r.get("new_tokens") or 0) for r in records)
    return {
        "entries": n,
        "stopped": sum(r["stop_reason"] == "stop" for r in records) / n,
        "length": sum(r["stop_reason"] == "length" for r in records) / n,
        "with_call": sum(bool(r.get("decoded")) for r in records) / n,
        "parse_error": sum(bool(r.get("parse_errors")) for r in records) / n,
        "median_new_tokens": tokens[n // 2],
    }


# Kinds of failure, from bfcl-eval's error_type (first match wins): what a grammar can fix (the
# first two) and what it cannot.
FAILURE_KINDS = (
    ("decode failure", "ast_decoder"),
    ("type error", "type_error"),
    ("called (irrelevance)", "irrelevance_error"),
    ("missing optional", "missing_optional"),
    ("missing required", "missing_required"),
    ("unexpected argument", "unexpected_param"),
    ("wrong value", "value_error"),
    ("wrong count", "wrong_count"),
    ("wrong name", "wrong_func_name"),
    ("no match (parallel)", "cannot_find_match"),
)


def failure_kinds(bfcl_dir: str | Path) -> dict[str, dict[str, int]] | None:
    """Per category: entries, passes and failures by kind (FAILURE_KINDS, else "other"); None
    when the per-entry files are absent."""
    files = sorted(Path(bfcl_dir).glob("*.jsonl"))
    if not files:
        return None
    out = {}
    for f in files:
        counts = {"entries": 0, "pass": 0}
        for r in read_jsonl(f):
            counts["entries"] += 1
            if r.get("valid"):
                counts["pass"] += 1
                continue
            error = str(r.get("error_type") or "")
            kind = next((k for k, key in FAILURE_KINDS if key in error), "other")
            counts[kind] = counts.get(kind, 0) + 1
        out[f.stem] = counts
    return out


def _failure_table(failures: dict) -> list[str]:
    """Failures by kind, one row per category and run, as Markdown lines."""
    if not any(failures.values()):
        return []
    kinds = [k for k, _ in FAILURE_KINDS] + ["other"]
    kinds = [k for k in kinds if any(k in c for f in failures.values() if f for c in f.values())]
    cats = list(dict.fromkeys(c for f in failures.values() if f for c in f))
    rows = [
        [c, name, f[c]["entries"], f[c]["pass"], *(f[c].get(k, "") for k in kinds)]
        for c in cats
        for name, f in failures.items()
        if f and c in f
    ]
    return [
        "",
        "Failures by kind (bfcl-eval's error types):",
        "",
        markdown_table(["category", "run", "entries", "pass", *kinds], rows),
    ]


def irrelevance_split(bfcl_dir: str | Path) -> dict | None:
    """BFCL's irrelevance passes split by how they pass: a clean abstention (no `<tool_call>` in
    the text at all) or a decode failure (a call block BFCL's decoder could not read, which BFCL
    also counts as "no call"). None when bfcl/irrelevance.jsonl is absent."""
    f = Path(bfcl_dir) / "irrelevance.jsonl"
    if not f.is_file():
        return None
    records = read_jsonl(f)
    passed = [r for r in records if r.get("valid")]
    clean = sum(1 for r in passed if "<tool_call>" not in str(r.get("result", "")))
    n = len(records)
    return {
        "entries": n,
        "passed": len(passed),
        "clean_abstentions": clean,
        "decode_failures": len(passed) - clean,
        "clean_accuracy": clean / n if n else 0.0,
    }


def decoding_label(summary: dict) -> str:
    """'' for BFCL's own harness (unconstrained text); ' [constrained: <mode>]' for a run decoded
    under a grammar (generation.constrain), which tables must never show unlabelled beside the other."""
    mode = summary.get("constrain", "none")
    return "" if mode == "none" else f" [constrained: {mode}]"


def _load_summaries(summaries: dict[str, str | Path]) -> tuple[dict, dict]:
    """({run: its summary.json}, {run: the dir holding it}); a run dir or the file itself. A
    constrained run's name carries its label (decoding_label)."""
    loaded, dirs = {}, {}
    for name, path in summaries.items():
        p = Path(path)
        if p.is_dir():
            p = p / "summary.json"
        if not p.is_file():
            raise FileNotFoundError(f"{name}: no BFCL summary.json at {path}")
        summary = json.loads(p.read_text())
        name = name + decoding_label(summary)
        loaded[name], dirs[name] = summary, p.parent
    return loaded, dirs


def _category_rows(loaded: dict, cats: list[str], caveats: dict[str, dict]) -> tuple[list[list], dict]:
    """One table row per category (accuracy and counts of each run, marked where the run's
    `caveats` say), and the same as numbers."""
    rows, table = [], {}
    for c in cats:
        cells = []
        for name, s in loaded.items():
            v = s["categories"].get(c)
            table.setdefault(name, {})[c] = v and {k: v[k] for k in ("accuracy", "correct", "total_count")}
            mark = " *" if c in caveats[name] else ""  # this run's model trained on the category's domains
            cells.append("-" if v is None else f"{100 * v['accuracy']:.2f} ({v['correct']}/{v['total_count']}){mark}")
        rows.append([c, *cells])
    return rows, table


def _aggregate_keys(loaded: dict) -> list[str]:
    return list(
        dict.fromkeys(
            k
            for s in loaded.values()
            for k, v in s.get("aggregates", {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        )
    )


def _irrelevance_rows(splits: dict) -> list[list]:
    """BFCL passes undecodable calls too: the clean share is what abstains."""
    if not any(splits.values()):
        return []
    rows = []
    for key, label in (
        ("clean_abstentions", "irrelevance: clean abstentions (no call block)"),
        ("decode_failures", "irrelevance: decode failures (passed)"),
    ):
        cells = (
            "-" if not sp else f"{100 * sp[key] / sp['entries']:.2f} ({sp[key]}/{sp['entries']})"
            for sp in splits.values()
        )
        rows.append([label, *cells])
    return rows


def _behaviour_table(behaviour: dict) -> list[str]:
    """How each run's single-turn outputs end, as Markdown lines (none when no run has outputs)."""
    if not any(behaviour.values()):
        return []
    headers = [
        "run",
        "entries",
        "stopped at <end_of_turn>/<eos>",
        "hit max_new_tokens",
        ">= 1 decoded call",
        "parse errors",
        "median new tokens",
    ]
    rows = [
        [
            name,
            b["entries"],
            f"{format_pct(b['stopped'], 1)}%",
            f"{format_pct(b['length'], 1)}%",
            f"{format_pct(b['with_call'], 1)}%",
            f"{format_pct(b['parse_error'], 1)}%",
            b["median_new_tokens"],
        ]
        for name, b in behaviour.items()
        if b
    ]
    return ["", "How the outputs end (single-turn entries, from `bfcl/*.jsonl`):", "", markdown_table(headers, rows)]


def compare_bfcl(summaries: dict[str, str | Path], out_dir: str | Path) -> dict:
    """Per-category BFCL accuracy of several runs side by side (`bfcl_compare.{md,json,png}`).
    Categories missing from a run show as '-'; counts come from each summary.json."""
    loaded, dirs = _load_summaries(summaries)
    cats = list(dict.fromkeys(c for s in loaded.values() for c in s["categories"]))
    caveats = {name: summary_caveats(s) for name, s in loaded.items()}
    rows, table = _category_rows(loaded, cats, caveats)
    agg_keys = _aggregate_keys(loaded)
    agg_caveats = {name: bfcl.aggregate_caveats(c) for name, c in caveats.items()}
    rows += [
        [
            f"**{k}**",
            *(
                format_pct(v := s.get("aggregates", {}).get(k))
                + (" *" if v is not None and k in agg_caveats[name] else "")
                for name, s in loaded.items()
            ),
        ]
        for k in agg_keys
    ]
    splits = {name: irrelevance_split(dirs[name] / "bfcl") for name in loaded}
    rows += _irrelevance_rows(splits)
    behaviour = {name: output_behaviour(dirs[name] / "bfcl") for name in loaded}
    failures = {name: failure_kinds(dirs[name] / "bfcl") for name in loaded}
    notes = caveat_notes({c: why for run in caveats.values() for c, why in run.items()}, cats)
    lines = [
        markdown_table(["category", *loaded], rows),
        *(["", *notes] if notes else []),
        *_behaviour_table(behaviour),
        *_failure_table(failures),
    ]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bfcl_compare.md").write_text("\n".join(lines) + "\n")
    result = {
        "runs": {
            n: {
                "commit": s.get("commit"),
                "categories": table[n],
                "aggregates": {k: s.get("aggregates", {}).get(k) for k in agg_keys},
                "outputs": behaviour[n],
                "irrelevance_split": splits[n],
                "failures": failures[n],
            }
            for n, s in loaded.items()
        }
    }
    (out_dir / "bfcl_compare.json").write_text(json.dumps(result, indent=2))
    plot_bfcl_compare(loaded, cats, out_dir / "bfcl_compare.png")
    return result


def plot_bfcl_compare(loaded: dict, cats: list[str], out_png: Path, title: str | None = None) -> None:
    """Per-category accuracy of several BFCL summaries as grouped bars (one group per category)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cats) * max(1, len(loaded)) / 2), 4))
    width = 0.8 / max(1, len(loaded))
    for i, (name, s) in enumerate(loaded.items()):
        xs = [j + i * width for j in range(len(cats))]
        ys = [100 * s["categories"][c]["accuracy"] if c in s["categories"] else 0 for c in cats]
        ax.bar(xs, ys, width, label=name)
        for x, y, c in zip(xs, ys, cats):
            if c in s["categories"]:
                ax.text(x, y + 1, f"{y:.0f}", ha="center", fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cats))], cats, rotation=25, ha="right")
    ax.set_ylabel("BFCL accuracy (%)")
    ax.set_ylim(0, 105)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def entry_agreement(a_dir: str | Path, b_dir: str | Path) -> dict:
    """Per-entry agreement of two BFCL runs' JSONL folders (same entries, e.g. the same model
    before and after a speed change): per category, how many verdicts (`valid`) and raw texts
    (`result`) are equal, and the ids that differ. Only entries present in both are compared."""
    out = {"categories": {}, "verdicts_equal": 0, "texts_equal": 0, "compared": 0}
    for fa in sorted(Path(a_dir).glob("*.jsonl")):
        fb = Path(b_dir) / fa.name
        if not fb.is_file():
            continue
        a = {r["id"]: r for r in read_jsonl(fa)}
        b = {r["id"]: r for r in read_jsonl(fb)}
        ids = [i for i in a if i in b]
        flipped = [i for i in ids if bool(a[i]["valid"]) != bool(b[i]["valid"])]
        texts = [i for i in ids if a[i]["result"] != b[i]["result"]]
        out["categories"][fa.stem] = {
            "compared": len(ids),
            "verdicts_equal": len(ids) - len(flipped),
            "texts_equal": len(ids) - len(texts),
            "flipped": flipped,
            "flipped_to_valid": [i for i in flipped if b[i]["valid"]],
            "texts_differ": texts,
        }
        out["compared"] += len(ids)
        out["verdicts_equal"] += len(ids) - len(flipped)
        out["texts_equal"] += len(ids) - len(texts)
    return out


def sign_test_p(gained: int, lost: int) -> float:
    """Two-sided exact sign test (McNemar's exact test) on the entries whose verdict changed: the
    chance of a split at least this uneven if gains and losses were equally likely."""
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(gained, lost) + 1))
    # three significant digits, not four decimals: a large split's p (e.g. 2e-7) must not print as 0
    return float(f"{min(1.0, 2.0 * tail / 2**n):.3g}")


def paired_change(agree: dict) -> dict:
    """From run a to run b on the same entries (their `entry_agreement(a, b)`): per category and in
    all, the entries gained (wrong in a, right in b) and lost, the change in points and the sign
    test's p. Only entries present in both are compared."""
    out: dict = {"categories": {}}
    for cat, c in agree["categories"].items():
        gained = len(c["flipped_to_valid"])
        lost = len(c["flipped"]) - gained
        out["categories"][cat] = {
            "compared": c["compared"],
            "gained": gained,
            "lost": lost,
            "points": round(100.0 * (gained - lost) / c["compared"], 2) if c["compared"] else 0.0,
            "p_value": sign_test_p(gained, lost),
        }
    gained = sum(c["gained"] for c in out["categories"].values())
    lost = sum(c["lost"] for c in out["categories"].values())
    out.update(compared=agree["compared"], gained=gained, lost=lost, p_value=sign_test_p(gained, lost))
    return out


def summary_caveats(summary: dict) -> dict[str, str]:
    """category -> why its score is not clean: the ones the summary recorded, and those today's
    rules (adapters.score_caveats) give the data it records as training the model, so that a
    record written before a rule was added is labelled by it too."""
    return {**score_caveats(summary.get("trained_on") or []), **(summary.get("caveats") or {})}


def caveat_notes(caveats: dict[str, str], shown) -> list[str]:
    """The footnotes under a table: why the marked categories among `shown` are not clean, once each.
    (An aggregate is marked only with a marked category among its parts, so that covers it too.)"""
    return [f"\\* {why}" for why in sorted({why for c, why in caveats.items() if c in shown})]


def write_bfcl_report(out_dir: Path, summary: dict) -> None:
    """results.md (per category and BFCL v4 aggregates) and accuracy.png (per-category accuracy
    beside the published anchors) of one BFCL evaluation summary."""
    per, caveats = summary["categories"], summary_caveats(summary)
    lines = [
        markdown_table(
            ["category", "accuracy", "correct / total"],
            [
                [c + (" *" if c in caveats else ""), format_pct(v["accuracy"]), f"{v['correct']} / {v['total_count']}"]
                for c, v in per.items()
            ],
        )
    ]
    if notes := caveat_notes(caveats, per):
        lines += ["", *notes]
    agg, agg_caveats = summary["aggregates"], bfcl.aggregate_caveats(caveats)
    keys = [
        k for k in ("non_live", "simple", "live", "irrelevance", "multi_turn", "overall_agentic_not_run") if k in agg
    ]
    marked_value = {k for k in keys if k in agg_caveats and agg[k] is not None}  # n/a is not a score
    lines += [
        "",
        markdown_table(
            ["aggregate (BFCL v4)", "value"],
            [[k + (" *" if k in marked_value else ""), "n/a" if agg[k] is None else format_pct(agg[k])] for k in keys],
        ),
    ]
    if summary.get("not_run"):
        lines += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in summary["not_run"].items())]
    if summary.get("subset"):
        sub = summary["subset"]
        lines += [
            "",
            f"Subset: {sub['per_category']} fixed entries per category (seed {sub['seed']}, {sub['rule']}); "
            "not comparable to full-category scores or the leaderboard.",
        ]
    elif summary.get("partial"):
        lines += ["", "Partial: a subset of entries (eval.limit / eval.ids); not comparable to the leaderboard."]
    if decoding_label(summary):
        lines += [
            "",
            f"Decoding: constrained by the tool-call grammar (generation.constrain={summary['constrain']}), a "
            "different harness from BFCL's: not comparable to unconstrained scores or the leaderboard.",
        ]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cats = list(per)
    series = {"this run": [100 * per[c]["accuracy"] for c in cats]}
    for name, anchors in bfcl.PUBLISHED_ANCHORS.items():
        if any(c in anchors for c in cats):
            series[name] = [anchors.get(c, np.nan) for c in cats]
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(cats)), 5.5))
    width = 0.8 / len(series)
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(
            np.arange(len(cats)) + i * width - 0.4 + width / 2,
            vals,
            width,
            label=name,
            color="black" if name == "this run" else None,
        )
    ax.set_xticks(np.arange(len(cats)), cats, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"BFCL per-category accuracy: {summary['model']}{decoding_label(summary)}")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.28), frameon=False)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy.png", dpi=120)
    plt.close(fig)
