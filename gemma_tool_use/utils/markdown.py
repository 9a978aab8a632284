"""Markdown tables for the reports (results.md, bfcl_compare.md, sweep and pipeline summaries)."""

from __future__ import annotations


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured Markdown table (cells as given: format numbers before)."""
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
