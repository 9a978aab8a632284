"""Training curves as PNG from a run's metrics.jsonl: SFT loss (raw, smoothed, validation) with the
learning rate, and GRPO rewards (total and per term) with the probe set's scores.

The SFT and GRPO stages draw their curve when training ends; `python -m gemma_tool_use.report
curves <run dir>` draws an SFT run's loss curve again (e.g. for an interrupted run).
"""

from __future__ import annotations

from pathlib import Path

from gemma_tool_use.utils.files import read_jsonl


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
        smooth = [
            sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1]) for i in range(len(losses))
        ]
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
    ax.fill_between(
        steps,
        [m - s for m, s in zip(mean, std)],
        [m + s for m, s in zip(mean, std)],
        color="gray",
        alpha=0.2,
        label="total (+- std)",
    )
    terms = sorted(
        {
            k[len("reward/") : -len("_mean")]
            for r in rows
            for k in r
            if k.startswith("reward/") and k.endswith("_mean") and k != "reward/total_mean"
        }
    )
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


def _plot_decisions(ax, rows: list[int], pts: list[dict], key: str, ylabel: str) -> None:
    """Decision rates of the points that have them (point[key]: evaluation/call_decisions.score)."""
    dec = [(r, p[key]) for r, p in zip(rows, pts) if p.get(key)]
    if dec:
        for rate, label in (
            ("false_refusal_rate", "false refusals (calls due)"),
            ("false_call_rate", "false calls (no call due)"),
            ("count_right_rate", "right number of calls"),
            ("exact_rate", "exact calls"),
        ):
            ax.plot([r for r, _ in dec], [d[rate] for _, d in dec], "o-", ms=3, label=label)
        several = [(r, d.get("by_gold_kind", {}).get("several_calls")) for r, d in dec]
        several = [(r, k) for r, k in several if k and k.get("prompts") and "names_right" in k]
        if several:  # the several-call requests' right functions: the call count learned, not guessed
            ax.plot(
                [r for r, _ in several],
                [100.0 * k["names_right"] / k["prompts"] for _, k in several],
                "s--",
                ms=3,
                label="several-call requests: right functions",
            )
        ax.legend(fontsize=7)
    ax.set_xlabel("rows trained")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def change_labels(curve: dict) -> list[tuple[float, float, str, bool]]:
    """(x, y, text, significant) per interval of the curve's recorded `changes`: the subset entries
    gained and lost between two points and the sign test's p, placed between them on the mean line;
    significant when p < 0.05."""
    where = {p.get("step"): (p["rows_trained"], p["bfcl_subset_mean"]) for p in curve["points"]}
    out = []
    for c in curve.get("changes") or []:
        a, b = where.get(c["from_step"]), where.get(c["to_step"])
        if a and b:
            text = f"+{c['gained']} -{c['lost']}\np={c['p_value']:.2g}"
            out.append(((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, text, c["p_value"] < 0.05))
    return out


def plot_learning_curve(curve: dict, out_png: str | Path) -> Path:
    """BFCL subset accuracy per category against rows trained (left), and the call decisions, false
    refusals and false calls, beside them: on the held-out-tool validation split, and on the held-out
    tool-calling set (data/heldout_calls) where the points have it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = curve["points"]
    if not pts:
        raise ValueError("no points to plot")
    rows = [p["rows_trained"] for p in pts]
    heldout = any(p.get("heldout") for p in pts)
    fig, axes = plt.subplots(1, 3 if heldout else 2, figsize=(18 if heldout else 12, 4.5))
    ax = axes[0]
    for cat in pts[-1]["bfcl_subset"]:
        ax.plot(rows, [p["bfcl_subset"].get(cat) for p in pts], "o-", lw=1.5, ms=3, label=cat)
    ax.plot(rows, [p["bfcl_subset_mean"] for p in pts], "k--", lw=2, label="mean")
    for x, y, text, significant in change_labels(curve):  # is the move more than chance?
        ax.annotate(text, (x, y), fontsize=6, ha="center", va="bottom", weight="bold" if significant else "normal")
    ax.set_xlabel("rows trained")
    ax.set_ylabel(f"BFCL accuracy, % ({curve['subset_per_category']} fixed entries per category)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _plot_decisions(axes[1], rows, pts, "decisions", "% of held-out-tool validation prompts")
    if heldout:
        _plot_decisions(axes[2], rows, pts, "heldout", "% of the held-out tool-calling set (test splits)")
    fig.suptitle(f"learning curve ({curve.get('stopped_because') or 'running'})")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
