"""Every plot and table the project writes: a run's training curve, a BFCL run's results table and
accuracy plot, BFCL before/after tables across runs, and a sweep's summary.

    python -m gemma_tool_use.report curves outputs/sft_small/<run>            # -> <run>/loss_curve.png
    python -m gemma_tool_use.report compare base=experiments/bfcl_baseline_base/summary.json \\
        sft_small=outputs/sft_small/<run>/bfcl_eval/summary.json --out experiments/bfcl_progress

    python -m gemma_tool_use.report collect outputs/sft_small/<run> experiments/<name>
    python -m gemma_tool_use.report agree experiments/<a>/bfcl outputs/eval/<run>/bfcl   # per-entry agreement

The SFT stage draws the curve itself when training ends; `compare` is how experiments/ gets
its stage-by-stage table (Markdown + PNG, one bar group per category); `collect` copies the
small artifacts of a run (never checkpoints or weights) into experiments/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from gemma_tool_use.files import read_jsonl


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured Markdown table (cells as given: format numbers before)."""
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _pct(v, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def plot_training_curves(metrics_path: str | Path, out_png: str | Path, title: str = "") -> Path:
    """Train loss (raw and smoothed), validation loss and learning rate against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(metrics_path)
    train = sorted((r["step"], r["train/loss"]) for r in rows if "train/loss" in r)
    val = sorted((r["step"], r["eval/loss"]) for r in rows if "eval/loss" in r)
    lr = sorted((r["step"], r["train/learning_rate"]) for r in rows if "train/learning_rate" in r)
    if not train and not val:
        raise ValueError(f"{metrics_path}: no train/loss or eval/loss records to plot")
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=1, label="train loss (per step)")
        k = min(len(losses), max(5, len(losses) // 10))  # moving mean over ~10% of the run
        smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, color="tab:blue", lw=2, label=f"train loss (mean of {k})")
    if val:
        ax.plot(*zip(*val), "o-", color="tab:red", lw=2, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (completion tokens)")
    ax.grid(alpha=0.3)
    if lr:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lr), color="gray", ls="--", lw=1, label="learning rate")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    handles = [h for a in fig.axes for h in a.get_legend_handles_labels()[0]]
    labels = [lab for a in fig.axes for lab in a.get_legend_handles_labels()[1]]
    ax.legend(handles, labels, fontsize=8, loc="upper right")
    ax.set_title(title or Path(metrics_path).parent.name)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def plot_grpo_curves(run_dir: str | Path, out_png: str | Path) -> Path:
    """A GRPO run: total reward per step (mean +- std over the step's completions) and each term,
    and on a second panel the probe set's greedy mean reward and exact-match rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "reward/total_mean" in r]
    probe = read_jsonl(run_dir / "probe.jsonl") if (run_dir / "probe.jsonl").is_file() else []
    if not rows:
        raise ValueError(f"{run_dir}/metrics.jsonl: no GRPO reward records to plot")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in rows]
    mean = [r["reward/total_mean"] for r in rows]
    std = [r.get("reward/total_std", 0.0) for r in rows]
    ax.plot(steps, mean, color="black", lw=2, label="total (mean)")
    ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color="gray",
                    alpha=0.2, label="total (+- std)")
    terms = sorted({k[len("reward/"):-len("_mean")] for r in rows for k in r
                    if k.startswith("reward/") and k.endswith("_mean") and k != "reward/total_mean"})
    for t in terms:
        ax.plot(steps, [r.get(f"reward/{t}_mean") for r in rows], lw=1, label=t)
    ax.set_xlabel("step")
    ax.set_ylabel("reward (rollouts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if probe:
        ps = [r["step"] for r in probe]
        bx.plot(ps, [r["probe/reward_mean"] for r in probe], "o-", label="probe mean reward (greedy)")
        bx.plot(ps, [r["probe/exact_match"] for r in probe], "s-", label="probe exact match")
        bx.legend(fontsize=7)
    bx.set_xlabel("step")
    bx.set_title("held-out-tool probe set")
    bx.grid(alpha=0.3)
    fig.suptitle(f"GRPO: {run_dir.name}")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


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
    return {"entries": n,
            "stopped": sum(r["stop_reason"] == "stop" for r in records) / n,
            "length": sum(r["stop_reason"] == "length" for r in records) / n,
            "with_call": sum(bool(r.get("decoded")) for r in records) / n,
            "parse_error": sum(bool(r.get("parse_errors")) for r in records) / n,
            "median_new_tokens": tokens[n // 2]}


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
    return {"entries": n, "passed": len(passed), "clean_abstentions": clean, "decode_failures": len(passed) - clean,
            "clean_accuracy": clean / n if n else 0.0}


def compare_bfcl(summaries: dict[str, str | Path], out_dir: str | Path) -> dict:
    """Per-category BFCL accuracy of several runs side by side (`bfcl_compare.{md,json,png}`).
    Categories missing from a run show as '-'; counts come from each summary.json."""
    loaded, dirs = {}, {}
    for name, path in summaries.items():
        p = Path(path)
        if p.is_dir():
            p = p / "summary.json"
        if not p.is_file():
            raise FileNotFoundError(f"{name}: no BFCL summary.json at {path}")
        loaded[name], dirs[name] = json.loads(p.read_text()), p.parent
    cats = list(dict.fromkeys(c for s in loaded.values() for c in s["categories"]))
    rows, table = [], {}
    for c in cats:
        cells = []
        for name, s in loaded.items():
            v = s["categories"].get(c)
            table.setdefault(name, {})[c] = v and {k: v[k] for k in ("accuracy", "correct", "total_count")}
            cells.append("-" if v is None else f"{100 * v['accuracy']:.2f} ({v['correct']}/{v['total_count']})")
        rows.append([c, *cells])
    agg_keys = list(dict.fromkeys(k for s in loaded.values() for k, v in s.get("aggregates", {}).items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool)))
    rows += [[f"**{k}**", *(_pct(s.get("aggregates", {}).get(k)) for s in loaded.values())] for k in agg_keys]
    splits = {name: irrelevance_split(dirs[name] / "bfcl") for name in loaded}
    if any(splits.values()):  # BFCL passes undecodable calls too: the clean share is what abstains
        for key, label in (("clean_abstentions", "irrelevance: clean abstentions (no call block)"),
                           ("decode_failures", "irrelevance: decode failures (passed)")):
            rows.append([label, *("-" if not sp else f"{100 * sp[key] / sp['entries']:.2f} ({sp[key]}/{sp['entries']})"
                                  for sp in splits.values())])
    lines = [markdown_table(["category", *loaded], rows)]
    behaviour = {name: output_behaviour(dirs[name] / "bfcl") for name in loaded}
    if any(behaviour.values()):
        lines += ["", "How the outputs end (single-turn entries, from `bfcl/*.jsonl`):", "",
                  markdown_table(["run", "entries", "stopped at <end_of_turn>/<eos>", "hit max_new_tokens",
                                  ">= 1 decoded call", "parse errors", "median new tokens"],
                                 [[name, b["entries"], f"{_pct(b['stopped'], 1)}%", f"{_pct(b['length'], 1)}%",
                                   f"{_pct(b['with_call'], 1)}%", f"{_pct(b['parse_error'], 1)}%",
                                   b["median_new_tokens"]] for name, b in behaviour.items() if b])]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bfcl_compare.md").write_text("\n".join(lines) + "\n")
    result = {"runs": {n: {"commit": s.get("commit"), "categories": table[n],
                           "aggregates": {k: s.get("aggregates", {}).get(k) for k in agg_keys},
                           "outputs": behaviour[n], "irrelevance_split": splits[n]}
                       for n, s in loaded.items()}}
    (out_dir / "bfcl_compare.json").write_text(json.dumps(result, indent=2))
    _plot_compare(loaded, cats, out_dir / "bfcl_compare.png")
    return result


def _plot_compare(loaded: dict, cats: list[str], out_png: Path, title: str | None = None) -> None:
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
        out["categories"][fa.stem] = {"compared": len(ids), "verdicts_equal": len(ids) - len(flipped),
                                      "texts_equal": len(ids) - len(texts), "flipped": flipped,
                                      "flipped_to_valid": [i for i in flipped if b[i]["valid"]],
                                      "texts_differ": texts}
        out["compared"] += len(ids)
        out["verdicts_equal"] += len(ids) - len(flipped)
        out["texts_equal"] += len(ids) - len(texts)
    return out


def write_bfcl_report(out_dir: Path, summary: dict) -> None:
    """results.md (per category and BFCL v4 aggregates) and accuracy.png (per-category accuracy
    beside the published anchors) of one BFCL evaluation summary."""
    from gemma_tool_use import bfcl

    per = summary["categories"]
    lines = [markdown_table(["category", "accuracy", "correct / total"],
                            [[c, _pct(v["accuracy"]), f"{v['correct']} / {v['total_count']}"] for c, v in per.items()])]
    agg = summary["aggregates"]
    keys = [k for k in ("non_live", "simple", "live", "irrelevance", "multi_turn", "overall_agentic_not_run") if k in agg]
    lines += ["", markdown_table(["aggregate (BFCL v4)", "value"], [[k, "n/a" if agg[k] is None else _pct(agg[k])] for k in keys])]
    if summary.get("not_run"):
        lines += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in summary["not_run"].items())]
    if summary.get("subset"):
        sub = summary["subset"]
        lines += ["", f"Subset: {sub['per_category']} fixed entries per category (seed {sub['seed']}, {sub['rule']}); "
                  "not comparable to full-category scores or the leaderboard."]
    elif summary.get("partial"):
        lines += ["", "Partial: a subset of entries (eval.limit / eval.ids); not comparable to the leaderboard."]
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
        ax.bar(np.arange(len(cats)) + i * width - 0.4 + width / 2, vals, width, label=name,
               color="black" if name == "this run" else None)
    ax.set_xticks(np.arange(len(cats)), cats, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"BFCL per-category accuracy: {summary['model']}")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.28), frameon=False)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy.png", dpi=120)
    plt.close(fig)


def _sweep_job_rows(sweep_dir: Path) -> list[dict]:
    rows = []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        swept = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides
                 if "=" in o and not o.startswith(("hydra.", "tracking.group"))}
        row = {"job": job.name, "overrides": swept, "status": "ok" if (job / "job_result.json").is_file() else "failed"}
        train = job / "train_summary.json"
        if train.is_file():
            t = json.loads(train.read_text())
            row.update({k: t.get(k) for k in ("final_val_loss", "final_train_loss", "tokens_per_s", "train_seconds")})
            row["bfcl"] = t.get("bfcl_categories")
        ev = job / "summary.json"
        if ev.is_file():
            row["bfcl"] = {c: v["accuracy"] for c, v in json.loads(ev.read_text())["categories"].items()}
        if row.get("bfcl"):
            row["bfcl_mean"] = sum(row["bfcl"].values()) / len(row["bfcl"])
        rows.append(row)
    return rows


def write_sweep_summary(sweep_dir: str | Path) -> dict:
    """One row per job of a multirun (its swept overrides, validation loss, BFCL numbers, throughput)
    as sweep_summary.{json,md}, and BFCL accuracy (or val loss) against the swept values as .png."""
    sweep_dir = Path(sweep_dir)
    rows = _sweep_job_rows(sweep_dir)
    all_keys = sorted({k for r in rows for k in r["overrides"]})
    varying = [k for k in all_keys if len({r["overrides"].get(k) for r in rows}) > 1]
    keys = varying or all_keys  # the swept values; overrides shared by every job are left out
    fmt = lambda v, p=3: "-" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))
    table = markdown_table(["job", *keys, "val loss", "BFCL mean", "tokens/s", "status"],
                           [[r["job"], *(r["overrides"].get(k, "") for k in keys), fmt(r.get("final_val_loss")),
                             _pct(r.get("bfcl_mean"), 1), fmt(r.get("tokens_per_s"), 0), r["status"]] for r in rows])
    summary = {"sweep_dir": str(sweep_dir), "swept": keys, "jobs": rows}
    (sweep_dir / "sweep_summary.json").write_text(json.dumps(summary, indent=2))
    (sweep_dir / "sweep_summary.md").write_text(table + "\n")
    _plot_sweep(sweep_dir, rows, keys)
    return summary


def _sort_key(value) -> tuple:
    """Numbers in numeric order, then names (e.g. experiments=a,b) alphabetically."""
    try:
        return (0, float(value or 0), "")
    except ValueError:
        return (1, 0.0, str(value))


def _plot_sweep(sweep_dir: Path, rows: list[dict], keys: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "bfcl_mean" if any(r.get("bfcl_mean") is not None for r in rows) else "final_val_loss"
    label = "BFCL accuracy (mean over categories, %)" if metric == "bfcl_mean" else "validation loss"
    pts = [r for r in rows if r.get(metric) is not None]
    if not pts or not keys:
        return
    x_key = next((k for k in keys if k.endswith("lora.rank")), keys[0])
    series_key = next((k for k in keys if k != x_key), None)
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = {}
    for r in pts:
        groups.setdefault(r["overrides"].get(series_key, "") if series_key else "", []).append(r)
    for name, rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: _sort_key(r["overrides"].get(x_key)))
        ys = [(100 * r[metric]) if metric == "bfcl_mean" else r[metric] for r in rs]
        ax.plot([r["overrides"].get(x_key) for r in rs], ys, marker="o", label=f"{series_key}={name}" if series_key else None)
    ax.set_xlabel(x_key)
    ax.set_ylabel(label)
    if series_key:
        ax.legend()
    ax.set_title(f"sweep: {sweep_dir.name}")
    fig.tight_layout()
    fig.savefig(sweep_dir / "sweep_summary.png", dpi=120)
    plt.close(fig)


# What a run leaves that belongs in experiments/<name>/: small, text or plots, and the portable
# adapter (LoRA + trained rows, a few MB: a later session continues from it, a user runs it);
# never base weights or optimizer state.
COLLECTED = ["adapter/adapter.safetensors", "adapter/adapter_config.json", "train_summary.json", "grpo_summary.json", "samples.jsonl", "probe.jsonl", "reward_curve.png",
             "metrics.jsonl", "loss_curve.png", "data_card.md", "data_card.json",
             "summary.json", "results.md", "accuracy.png", "bfcl_eval/summary.json", "bfcl_eval/results.md",
             "bfcl_eval/accuracy.png", "bfcl_eval/bfcl/*.jsonl", "bfcl/*.jsonl", ".hydra/overrides.yaml"]


def collect_run(run_dir: str | Path, dest: str | Path) -> list[Path]:
    """Copy a run's small artifacts (list above) into `dest`, plus its composed config as
    config_resolved.yaml; absolute paths to the run dir inside JSON files become <run dir>."""
    import shutil

    run_dir, dest = Path(run_dir).resolve(), Path(dest)
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no .hydra/config.yaml)")
    copied = []
    for pattern in COLLECTED:
        for src in sorted(run_dir.glob(pattern)):
            out = dest / src.relative_to(run_dir)
            if out.name == "overrides.yaml":
                out = dest / "overrides.yaml"
            out.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix == ".json":
                out.write_text(src.read_text().replace(str(run_dir), "<run dir>"))
            else:
                shutil.copyfile(src, out)
            copied.append(out)
    shutil.copyfile(run_dir / ".hydra" / "config.yaml", dest / "config_resolved.yaml")
    copied.append(dest / "config_resolved.yaml")
    return copied


def collect_pipeline(root: str | Path, dest: str | Path) -> list[Path]:
    """A pipeline dir's state, summary and each stage's small artifacts (collect_run), laid out as
    the pipeline dir itself: copied back to a pipeline dir (`cp -r <dest> outputs/pipeline/<name>`),
    the same command continues the chain after the recorded stages."""
    from gemma_tool_use.files import write_json_atomic
    from gemma_tool_use.pipeline import STATE, _read_state

    root, dest = Path(root).resolve(), Path(dest)
    if not (root / STATE).is_file():
        raise FileNotFoundError(f"{root} is not a pipeline directory (no {STATE})")
    state = _read_state(root)  # paths relative to the pipeline dir
    dest.mkdir(parents=True, exist_ok=True)
    write_json_atomic(dest / STATE, state)
    copied = [dest / STATE]
    for name in ("pipeline_summary.md", "pipeline_summary.json", "pipeline_summary.png"):
        if (root / name).is_file():
            out = dest / name
            out.write_bytes((root / name).read_bytes().replace(str(root).encode() + b"/", b""))
            copied.append(out)
    for name, rec in state.get("stages", {}).items():
        stage_dir = root / rec.get("dir", name)
        if (stage_dir / ".hydra" / "config.yaml").is_file():
            copied += collect_run(stage_dir, dest / name)
    return copied


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gemma_tool_use.report", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curves", help="loss/LR curve of one run dir (reads metrics.jsonl)")
    c.add_argument("run_dir")
    c.add_argument("--out", default=None, help="PNG path (default: <run_dir>/loss_curve.png)")
    m = sub.add_parser("compare", help="BFCL accuracy of runs side by side")
    m.add_argument("runs", nargs="+", help="name=path to a BFCL summary.json or the folder holding it")
    m.add_argument("--out", required=True, help="output folder")
    k = sub.add_parser("collect", help="copy a run's (or a pipeline dir's) small artifacts into experiments/<name>/")
    k.add_argument("run_dir")
    k.add_argument("dest")
    g = sub.add_parser("agree", help="per-entry agreement (verdicts, raw texts) of two BFCL runs' bfcl/ folders")
    g.add_argument("a")
    g.add_argument("b")
    g.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args(argv)
    if args.cmd == "agree":
        result = entry_agreement(args.a, args.b)
        text = json.dumps(result, indent=1)
        if args.out:
            Path(args.out).write_text(text + "\n")
        for cat, c in result["categories"].items():
            print(f"{cat:20s} {c['verdicts_equal']:4d}/{c['compared']:<4d} verdicts equal, {c['texts_equal']:4d} texts equal;"
                  f" flipped {c['flipped']}")
        print(f"{'all':20s} {result['verdicts_equal']:4d}/{result['compared']:<4d} verdicts equal, "
              f"{result['texts_equal']:4d} texts equal")
        return 0
    if args.cmd == "collect":
        collect = collect_pipeline if (Path(args.run_dir) / "pipeline_state.json").is_file() else collect_run
        for path in collect(args.run_dir, args.dest):
            print(path)
    elif args.cmd == "curves":
        run = Path(args.run_dir)
        print(plot_training_curves(run / "metrics.jsonl", args.out or run / "loss_curve.png"))
    else:
        pairs = {}
        for item in args.runs:
            if "=" not in item:
                ap.error(f"expected name=path, got {item!r}")
            name, path = item.split("=", 1)
            pairs[name] = path
        compare_bfcl(pairs, args.out)
        print((Path(args.out) / "bfcl_compare.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def write_pipeline_summary(root: str | Path, state: dict, bfcl: dict[str, dict | None]) -> dict:
    """`pipeline_summary.{json,md,png}` in the pipeline dir: BFCL per category and aggregate for
    the start and each stage, with deltas to the previous stage, wall time and peak memory per
    stage. Subset scores and full-category scores are never put in one table."""
    root = Path(root)
    stages = state.get("stages", {})
    scored = {n: s for n, s in bfcl.items() if s}

    def kind(s):
        sub = s.get("subset")
        return f"subset ({sub['per_category']} per category, seed {sub['seed']})" if sub else (
            "partial" if s.get("partial") else "full categories")

    groups: dict[str, list[str]] = {}
    for n, s in scored.items():
        groups.setdefault(kind(s), []).append(n)
    lines = [f"# Pipeline `{state.get('name')}`", "", f"Commit {state.get('commit')}; start: "
             f"{state.get('resume_from') or 'the base model'}.", ""]
    out = {"name": state.get("name"), "commit": state.get("commit"), "resume_from": state.get("resume_from"),
           "stages": {}, "bfcl": {}}
    for label, names in groups.items():
        cats = list(dict.fromkeys(c for n in names for c in scored[n]["categories"]))
        aggs = [k for k in ("non_live", "simple", "irrelevance", "live", "multi_turn")
                if any(isinstance(scored[n].get("aggregates", {}).get(k), (int, float)) for n in names)]
        headers = ["category"]
        for i, n in enumerate(names):
            headers += [n] if i == 0 else [n, "Δ"]

        def row(label_, values):
            cells, prev = [label_], None
            for i, v in enumerate(values):
                cells.append("-" if v is None else f"{100 * v:.2f}")
                if i:
                    cells.append("-" if v is None or prev is None else f"{100 * (v - prev):+.2f}")
                prev = v
            return cells

        rows = [row(c, [scored[n]["categories"].get(c, {}).get("accuracy") for n in names]) for c in cats]
        rows += [row(f"**{k}**", [scored[n].get("aggregates", {}).get(k) for n in names]) for k in aggs]
        splits = {n: irrelevance_split(root / stages[n]["dir"] / ("bfcl" if stages[n]["stage"] == "eval" else "bfcl_eval/bfcl"))
                  for n in names if n in stages}
        if any(splits.values()):
            rows.append(row("irrelevance: clean abstentions", [(splits.get(n) or {}).get("clean_accuracy") for n in names]))
        lines += [f"## BFCL, {label}", "", markdown_table(headers, rows), ""]
        for n in names:
            out["bfcl"][n] = {"kind": label, "categories": {c: v["accuracy"] for c, v in scored[n]["categories"].items()},
                              "aggregates": {k: scored[n].get("aggregates", {}).get(k) for k in aggs},
                              "irrelevance_split": splits.get(n)}
    rows = []
    for n, st in stages.items():
        rows.append([n, st.get("stage"), st.get("status"), "-" if st.get("seconds") is None else f"{st['seconds'] / 60:.1f}",
                     "-" if st.get("peak_rss_gib") is None else f"{st['peak_rss_gib']:.2f}", st.get("start") or "base"])
        out["stages"][n] = {k: st.get(k) for k in ("stage", "status", "seconds", "peak_rss_gib", "start", "adapter", "dir")}
    lines += ["## Stages", "", markdown_table(["stage dir", "stage", "status", "wall (min)", "peak RSS (GiB)", "start"], rows)]
    (root / "pipeline_summary.md").write_text("\n".join(lines) + "\n")
    (root / "pipeline_summary.json").write_text(json.dumps(out, indent=2))
    if scored:
        label, names = next(iter(groups.items()))
        _plot_compare({n: scored[n] for n in names}, list(dict.fromkeys(c for n in names for c in scored[n]["categories"])),
                      root / "pipeline_summary.png", f"pipeline {state.get('name')}: BFCL, {label}")
    return out
