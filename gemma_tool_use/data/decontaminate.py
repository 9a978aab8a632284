"""Decontamination against BFCL, using the data shipped inside bfcl-eval.

A training row is dropped when
  * a user message equals a BFCL question after normalisation (case, punctuation, spacing),
    or shares a run of QUERY_NGRAM consecutive words with one (near-duplicate questions);
  * a tool it offers, or a call it makes, has the name of a BFCL function (also with BFCL's dots
    written as underscores, as its handlers send them): a model that saw a function name in
    training may be scored on it;
  * a tool's description equals a BFCL function description after normalisation (if it has
    at least MIN_DESC_WORDS words), or the tool has a BFCL function's name and shares at least
    half of that description's DESC_NGRAM-word runs (a lightly edited copy of a BFCL doc).
Every drop is counted by reason; the index covers every BFCL category bfcl-eval ships
(non-live, live, irrelevance/relevance, multi-turn, including held-out functions).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from gemma_tool_use.evaluation import bfcl

QUERY_NGRAM = 10
DESC_NGRAM = 5
MIN_DESC_WORDS = 5

# Every category BFCL scores, single- and multi-turn: training rows must overlap none of them.
BFCL_CATEGORIES = bfcl.SINGLE_TURN + bfcl.MULTI_TURN


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class BfclIndex:
    queries: set[str] = field(default_factory=set)
    query_ngrams: set[tuple] = field(default_factory=set)
    descriptions: set[str] = field(default_factory=set)
    desc_ngrams_by_name: dict[str, list[set]] = field(default_factory=dict)
    function_names: set[str] = field(default_factory=set)
    n_entries: int = 0


@lru_cache(maxsize=1)
def bfcl_index() -> BfclIndex:
    """The index of every category, from the original docs (hints=False: no language notes appended)."""
    index = BfclIndex()
    for category in BFCL_CATEGORIES:
        for entry in bfcl.load_entries(category, hints=False):
            index.n_entries += 1
            for norm in (
                normalize(m.get("content", ""))
                for turn in entry.get("question", [])
                for m in turn
                if m.get("role") == "user"
            ):
                if norm:
                    index.queries.add(norm)
                    index.query_ngrams |= ngrams(norm.split(), QUERY_NGRAM)
            held_out = [f for fs in (entry.get("missed_function") or {}).values() for f in fs]
            for f in [*entry.get("function", []), *held_out]:
                if f.get("name"):
                    index.function_names |= {f["name"], f["name"].replace(".", "_")}
                norm = normalize(f.get("description") or "")
                if len(norm.split()) >= MIN_DESC_WORDS:
                    index.descriptions.add(norm)
                if grams := ngrams(norm.split(), DESC_NGRAM):
                    index.desc_ngrams_by_name.setdefault(f.get("name", ""), []).append(grams)
    return index


def contamination_reason(row: dict, index: BfclIndex | None = None) -> str | None:
    """Why `row` overlaps BFCL (a reason string), or None if it is clean."""
    index = index or bfcl_index()
    for m in row.get("messages", []):
        if m.get("role") != "user" or not isinstance(m.get("content"), str):
            continue
        norm = normalize(m["content"])
        if norm in index.queries:
            return "bfcl_query_exact"
        if ngrams(norm.split(), QUERY_NGRAM) & index.query_ngrams:
            return "bfcl_query_near"
    called = {c.get("name") for m in row.get("messages", []) for c in m.get("tool_calls") or []}
    if any(name in index.function_names for name in called | {t.get("name") for t in row.get("tools", [])}):
        return "bfcl_function_name"
    for tool in row.get("tools", []):
        norm = normalize(tool.get("description", ""))
        if norm in index.descriptions:
            return "bfcl_tool_description_exact"
        grams = ngrams(norm.split(), DESC_NGRAM)
        for ref in index.desc_ngrams_by_name.get(tool.get("name", ""), []):
            if grams and len(grams & ref) >= 0.5 * len(ref):
                return "bfcl_tool_near"
    return None


def decontaminate(rows: list[dict], index: BfclIndex | None = None) -> tuple[list[dict], Counter]:
    """(clean rows, dropped counts by reason)."""
    index = index or bfcl_index()
    reasons = [contamination_reason(row, index) for row in rows]
    return [row for row, reason in zip(rows, reasons) if not reason], Counter(filter(None, reasons))
