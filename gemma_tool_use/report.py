"""The command line over the project's reports: `python -m gemma_tool_use.report <command>`.

    python -m gemma_tool_use.report curves outputs/sft_small/<run>            # -> <run>/loss_curve.png
    python -m gemma_tool_use.report compare base=experiments/bfcl_baseline_base/summary.json \\
        sft_small=outputs/sft_small/<run>/bfcl_eval/summary.json --out experiments/bfcl_progress

    python -m gemma_tool_use.report collect outputs/sft_small/<run> experiments/<name>
    python -m gemma_tool_use.report agree experiments/<a>/bfcl outputs/eval/<run>/bfcl   # per-entry agreement,
        # and the entries gained and lost from a to b with the sign test's p (is the change chance?)
    python -m gemma_tool_use.report results outputs/eval/<run>      # results.md + accuracy.png again from
        # its summary.json, with today's labels (a category whose domains the model trained on)
    python -m gemma_tool_use.report decisions experiments/heldout_calls/prompts.jsonl \
        experiments/<run>/heldout/predictions.jsonl    # held-out call decisions, per turn, kind and source

The SFT stage draws the curve itself when training ends; `compare` is how experiments/ gets
its stage-by-stage table (Markdown + PNG, one bar group per category); `collect` copies the
small artifacts of a run or a pipeline dir (never checkpoints or weights) into experiments/.
The work is done elsewhere: training/curves.py, evaluation/bfcl_tables.py,
orchestration/collect.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gemma_tool_use.evaluation import call_decisions
from gemma_tool_use.evaluation.bfcl_tables import compare_bfcl, entry_agreement, paired_change, write_bfcl_report
from gemma_tool_use.orchestration.collect import collect_pipeline, collect_run
from gemma_tool_use.orchestration.heldout_scoring import SUMMARY_RATES
from gemma_tool_use.training.curves import plot_training_curves
from gemma_tool_use.utils.files import read_jsonl
from gemma_tool_use.utils.markdown import markdown_table


def _print_agreement(a: str, b: str, out: str | None) -> None:
    result = entry_agreement(a, b)
    change = paired_change(result)  # from the same reading of both folders
    if out:
        Path(out).write_text(json.dumps({**result, "change": change}, indent=1) + "\n")
    for cat, c in result["categories"].items():
        d = change["categories"][cat]
        print(
            f"{cat:20s} {c['verdicts_equal']:4d}/{c['compared']:<4d} verdicts equal, {c['texts_equal']:4d} texts equal;"
            f" a -> b: +{d['gained']} -{d['lost']} ({d['points']:+.1f} points, sign test p={d['p_value']:.3g});"
            f" flipped {c['flipped']}"
        )
    print(
        f"{'all':20s} {result['verdicts_equal']:4d}/{result['compared']:<4d} verdicts equal, "
        f"{result['texts_equal']:4d} texts equal; a -> b: +{change['gained']} -{change['lost']} "
        f"(sign test p={change['p_value']:.3g})"
    )


def _cell(counts: dict, col: str) -> str:
    """A count, 0 where the column applies but nothing counted (the record leaves zeros out), blank
    where it does not apply (no prompt of the row had calls due, or none had no call due)."""
    if col in counts:
        return str(counts[col])
    applies = counts.get("due") if col in call_decisions.DUE_COUNTS else counts.get("not_due")
    return "0" if applies else ""


def _decision_tables(record: dict) -> str:
    """Markdown: the overall rates, then the counts per turn, gold kind, source and how."""
    lines = [
        f"{record['prompts']} prompts: {record['calls_due']} with calls due, {record['no_call_due']} with none",
        "",
    ]
    lines += [f"- {label}: {record[key]}%" for key, label in SUMMARY_RATES if record.get(key) is not None]
    cols = call_decisions.GROUP_COUNTS
    for group in ("by_turn", "by_gold_kind", "by_source", "by_how"):
        if record.get(group):
            rows = [[name, *(_cell(counts, c) for c in cols)] for name, counts in record[group].items()]
            lines += ["", markdown_table([group[3:], *cols], rows)]
    return "\n".join(lines)


def _print_decisions(prompts: str, predictions: str, out: str | None) -> None:
    """Score a stage=predict run's predictions against the prompt file it read (the lines match)."""
    record = call_decisions.score(read_jsonl(Path(prompts)), read_jsonl(Path(predictions)))
    if out:
        Path(out).write_text(json.dumps(record, indent=1) + "\n")
    print(_decision_tables(record))


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
    r = sub.add_parser("results", help="rewrite an eval dir's results.md and accuracy.png from its summary.json")
    r.add_argument("eval_dir", help="the folder holding summary.json (an eval run, or a stage's bfcl_eval/)")
    d = sub.add_parser("decisions", help="held-out call decisions of a predict run's predictions.jsonl, per turn")
    d.add_argument("prompts", help="the predict input file (rows with tools, messages, gold)")
    d.add_argument("predictions", help="the predict run's predictions.jsonl")
    d.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args(argv)
    if args.cmd == "results":
        eval_dir = Path(args.eval_dir)
        if not (eval_dir / "summary.json").is_file():
            ap.error(f"{eval_dir / 'summary.json'}: no such file (give the folder an evaluation wrote)")
        write_bfcl_report(eval_dir, json.loads((eval_dir / "summary.json").read_text()))
        print(eval_dir / "results.md")
        return 0
    if args.cmd == "decisions":
        _print_decisions(args.prompts, args.predictions, args.out)
        return 0
    if args.cmd == "agree":
        _print_agreement(args.a, args.b, args.out)
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
