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


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured Markdown table (cells as given: format numbers before)."""
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
