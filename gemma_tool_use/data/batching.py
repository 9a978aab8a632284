"""Rendered conversations -> fixed-shape training batches.

Shapes are bucketed so XLA compiles a handful of programs, not one per batch:
  * sequence length T: the smallest of `length_buckets` that fits the longest row;
  * loss positions K: the smallest of T/8, T/4, T/2, T that fits the row with the most
    target tokens. The loss gathers hidden states at those K positions only, so the
    vocabulary projection runs on K, not T, positions.
The order is a pure function of (seed, epoch): a resumed run replays the same batches.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from gemma_tool_use.chat_format import DEFAULT_TOOL_SYSTEM_PROMPT, RenderedConversation, render_conversation
from gemma_tool_use.data.conversations import DataError
from gemma_tool_use.tokenizer import PAD_ID, GemmaTokenizer

log = logging.getLogger(__name__)


@dataclass
class TokenizedSet:
    examples: list[RenderedConversation]
    dropped: Counter = field(default_factory=Counter)
    kept: list[int] = field(default_factory=list)  # index of each example's row in the input


def tokenize_conversations(convs: list[dict], tokenizer: GemmaTokenizer, *, max_length: int,
                           overlength: str = "drop", system_prompt: str | None = None) -> TokenizedSet:
    out = TokenizedSet([])
    prompt = system_prompt if system_prompt is not None else DEFAULT_TOOL_SYSTEM_PROMPT
    for i, conv in enumerate(convs):
        r = render_conversation(conv, tokenizer, system_prompt=prompt)
        if len(r) > max_length:
            if overlength == "error":
                raise DataError(f"row {i}: {len(r)} tokens > data.max_length={max_length}")
            out.dropped["overlength"] += 1
            continue
        if not r.loss_mask.any():
            out.dropped["no_target_tokens"] += 1
            continue
        out.examples.append(r)
        out.kept.append(i)
    if out.dropped:
        log.info("tokenized %d rows, dropped %s", len(out.examples), dict(out.dropped))
    if not out.examples:
        raise DataError(f"no usable rows after tokenization (dropped: {dict(out.dropped)})")
    return out


def pick_bucket(n: int, buckets) -> int:
    if (b := next((b for b in buckets if n <= b), None)) is None:
        raise DataError(f"length {n} exceeds the largest bucket {buckets[-1]}")
    return int(b)


def collate(examples: list[RenderedConversation], length_buckets) -> dict[str, np.ndarray]:
    """Right-padded batch with gathered loss targets.

    Target j of row b: the token at target_positions[b, j] + 1, predicted from position
    target_positions[b, j], weighted by target_weights[b, j] (0 for padding slots)."""
    T = pick_bucket(max(len(e) for e in examples), length_buckets)
    n_targets = [int(e.loss_mask[1:].sum()) for e in examples]
    K = next(k for k in (max(T // 8, 1), T // 4, T // 2, T) if k >= max(n_targets))
    B = len(examples)
    tokens = np.full((B, T), PAD_ID, np.int32)
    valid = np.zeros((B, T), bool)
    pos = np.zeros((B, K), np.int32)
    tgt = np.zeros((B, K), np.int32)
    w = np.zeros((B, K), np.float32)
    for b, e in enumerate(examples):
        n = len(e)
        tokens[b, :n] = e.ids
        valid[b, :n] = True
        idx = np.nonzero(e.loss_mask[1:])[0]  # position p predicts token p + 1
        pos[b, : len(idx)] = idx
        tgt[b, : len(idx)] = e.ids[idx + 1]
        w[b, : len(idx)] = 1.0
    return {"input_tokens": tokens, "input_mask": valid, "target_positions": pos,
            "target_ids": tgt, "target_weights": w}


def length_grouped_batches(lengths, batch_size: int, seed: int, epoch: int,
                           group_batches: int = 16) -> list[np.ndarray]:
    """One epoch of shuffled batches whose rows have similar lengths.

    A random permutation is cut into windows of `group_batches` batches; each window is
    sorted by length and cut into batches, and the batch order is shuffled again. With
    random batches of 8, almost every batch holds one row > 512 tokens and pads to the
    1024 bucket; grouped, most batches stay in their own bucket (HF's group_by_length).
    Pure function of (seed, epoch), so a resumed run replays the same batches."""
    lengths = np.asarray(lengths)
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if n < batch_size:
        return [np.resize(order, batch_size)]
    window = batch_size * max(1, group_batches)
    batches = []
    for w in range(0, n, window):
        chunk = order[w : w + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[s : s + batch_size] for s in range(0, len(chunk) - batch_size + 1, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def process_rows(batch: dict, process_index: int, process_count: int) -> dict:
    """This process's rows of a global batch (data parallel over processes): the global batch is
    built the same way in every process (same order, same length bucket, so the same shape), and
    process i feeds rows [i*B/n, (i+1)*B/n); `jax.make_array_from_process_local_data` (tunix's
    shard_input) joins them into the global array."""
    if process_count == 1:
        return batch
    rows = len(batch["input_tokens"])
    if rows % process_count:
        raise ValueError(f"batch of {rows} rows does not split over {process_count} processes")
    k = rows // process_count
    return {key: v[process_index * k:(process_index + 1) * k] for key, v in batch.items()}


def train_batches(data: TokenizedSet, batch_size: int, length_buckets, seed: int,
                  group_batches: int = 16, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
    """Endless stream of `length_grouped_batches` epochs (`group_batches=1`: plain random batches).
    Each epoch drops the ragged tail of every window; a set smaller than one batch repeats rows.
    `batch_size` is the global batch; with several processes each yields its rows (process_rows)."""
    lengths = [len(e) for e in data.examples]
    for epoch in itertools.count():
        for idx in length_grouped_batches(lengths, batch_size, seed, epoch, group_batches):
            yield process_rows(collate([data.examples[i] for i in idx], length_buckets), process_index, process_count)


def eval_batches(data: TokenizedSet, batch_size: int, length_buckets, max_batches: int,
                 process_index: int = 0, process_count: int = 1) -> list[dict]:
    """Fixed validation batches (first rows, in order), so every evaluation sees the same data
    (this process's rows of each, as train_batches)."""
    ex = data.examples
    if len(ex) < batch_size:
        ex = [ex[i % len(ex)] for i in range(batch_size)]
    batches = [collate(ex[s : s + batch_size], length_buckets)
               for s in range(0, len(ex) - batch_size + 1, batch_size)]
    return [process_rows(b, process_index, process_count) for b in batches[:max_batches]]
