"""A multirun sweep's summary: one row per job (its swept overrides, validation loss, BFCL
accuracy, throughput, status) as sweep_summary.{json,md}, and BFCL accuracy (or validation loss)
against the swept values as sweep_summary.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gemma_tool_use.evaluation.bfcl_tables import format_pct
from gemma_tool_use.utils.markdown import markdown_table


def _sweep_job_rows(sweep_dir: Path) -> list[dict]:
    rows = []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        swept = {
            o.split("=", 1)[0]: o.split("=", 1)[1]
            for o in overrides
            if "=" in o and not o.startswith(("hydra.", "tracking.group"))
        }
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
    table = markdown_table(
        ["job", *keys, "val loss", "BFCL mean", "tokens/s", "status"],
        [
            [
                r["job"],
                *(r["overrides"].get(k, "") for k in keys),
                fmt(r.get("final_val_loss")),
                format_pct(r.get("bfcl_mean"), 1),
                fmt(r.get("tokens_per_s"), 0),
                r["status"],
            ]
            for r in rows
        ],
    )
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
        ax.plot(
            [r["overrides"].get(x_key) for r in rs],
            ys,
            marker="o",
            label=f"{series_key}={name}" if series_key else None,
        )
    ax.set_xlabel(x_key)
    ax.set_ylabel(label)
    if series_key:
        ax.legend()
    ax.set_title(f"sweep: {sweep_dir.name}")
    fig.tight_layout()
    fig.savefig(sweep_dir / "sweep_summary.png", dpi=120)
    plt.close(fig)
