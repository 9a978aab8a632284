"""Rendered conversations -> fixed-shape training batches.

Shapes are bucketed so XLA compiles a handful of programs, not one per batch:
  * sequence length T: the smallest of `length_buckets` that fits the longest row;
  * loss slots: the batch's target tokens are dealt into B x K slots in order, whatever row
    they come from (`target_rows` names each slot's row), K the smallest of 1, 2, 3, 4, 6, 8,
    12, ... (2^i and 3 * 2^i) that holds them. The loss gathers hidden states at those slots only,
    so the vocabulary projection (the priciest op of a LoRA step) runs on little more than the
    real target count instead of B x the longest row's count, at the price of slightly more T x K
    shapes per epoch (slot fill per-row vs dealt, `scripts/loss_slot_fill.py`; measured:
    experiments/train_step_bench/README.md).
With `data.pack_length`, a row holds several conversations end to end (`packed_batches`): nearly
every position is a real token, attention stays within each conversation (`input_segments`) and
the positions restart at each one, so the loss of a packed row is that of its conversations apart.
The order is a pure function of (seed, epoch): a resumed run replays the same batches.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from gemma_tool_use.data.conversations import DataError
from gemma_tool_use.format.render import (
    DEFAULT_TOOL_SYSTEM_PROMPT,
    RenderedConversation,
    render_conversation,
)
from gemma_tool_use.model.tokenizer import PAD_ID, GemmaTokenizer

log = logging.getLogger(__name__)


@dataclass
class TokenizedSet:
    examples: list[RenderedConversation]
    dropped: Counter = field(default_factory=Counter)
    kept: list[int] = field(default_factory=list)  # index of each example's row in the input


def tokenize_conversations(
    convs: list[dict],
    tokenizer: GemmaTokenizer,
    *,
    max_length: int,
    overlength: str = "drop",
    system_prompt: str | None = None,
) -> TokenizedSet:
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


def loss_slots_per_row(n_targets: int, rows: int) -> int:
    """K for `n_targets` targets dealt over `rows` rows: the smallest 2^i or 3 * 2^i that holds
    them (at most 1/3 of the slots wasted, a few distinct shapes per epoch)."""
    need = max(-(-n_targets // rows), 1)
    k = 1 << max(need - 1, 0).bit_length()  # smallest power of two >= need
    return 3 * k // 4 if k >= 4 and 3 * k // 4 >= need else k


def collate(
    examples: list[RenderedConversation], length_buckets, *, per_row_slots: bool = False
) -> dict[str, np.ndarray]:
    """Right-padded batch with gathered loss targets.

    Slot (b, j) holds the token at target_positions[b, j] + 1 of row target_rows[b, j], predicted
    from that row's position target_positions[b, j], weighted by target_weights[b, j] (0 for
    padding slots). Slots are the batch's targets in row order, dealt B x K (see the module doc).
    `per_row_slots`: slot (b, j) belongs to row b (no target_rows; K the smallest of T/8, T/4,
    T/2, T that holds the longest row's targets), for losses that need per-row sums (GRPO)."""
    batch = collate_packed([[e] for e in examples], length_buckets, per_row_slots=per_row_slots)
    del batch["input_segments"]  # one conversation per row: input_mask says it all
    return batch


def collate_packed(
    rows: list[list[RenderedConversation]], length_buckets, *, per_row_slots: bool = False
) -> dict[str, np.ndarray]:
    """`collate` for rows of one or more conversations laid end to end, plus input_segments [B, T]:
    1, 2, ... for the conversation each token belongs to, 0 for padding. A target never crosses
    a boundary: a conversation's last token predicts nothing."""
    lengths = [sum(len(e) for e in row) for row in rows]
    T = pick_bucket(max(lengths), length_buckets)
    B = len(rows)
    tokens = np.full((B, T), PAD_ID, np.int32)
    segments = np.zeros((B, T), np.int32)
    pos, tgt = [], []  # per row: target positions and target ids
    for b, row in enumerate(rows):
        start, row_pos, row_tgt = 0, [], []
        for s, e in enumerate(row, start=1):
            n = len(e)
            tokens[b, start : start + n] = e.ids
            segments[b, start : start + n] = s
            idx = np.nonzero(e.loss_mask[1:])[0]  # position p predicts token p + 1
            row_pos.append(start + idx)
            row_tgt.append(e.ids[idx + 1])
            start += n
        pos.append(np.concatenate(row_pos).astype(np.int32))
        tgt.append(np.concatenate(row_tgt).astype(np.int32))
    batch = {"input_tokens": tokens, "input_mask": segments > 0, "input_segments": segments}
    counts = [len(p) for p in pos]
    if per_row_slots:
        K = next(k for k in (max(T // 8, 1), T // 4, T // 2, T) if k >= max(counts))
        slots = [np.zeros((B, K), np.int32), np.zeros((B, K), np.int32), np.zeros((B, K), np.float32)]
        for b, n in enumerate(counts):
            slots[0][b, :n], slots[1][b, :n], slots[2][b, :n] = pos[b], tgt[b], 1.0
        return {**batch, "target_positions": slots[0], "target_ids": slots[1], "target_weights": slots[2]}
    n, K = sum(counts), loss_slots_per_row(sum(counts), B)
    flat = {
        "target_rows": np.repeat(np.arange(B, dtype=np.int32), counts),
        "target_positions": np.concatenate(pos),
        "target_ids": np.concatenate(tgt),
        "target_weights": np.ones(n, np.float32),
    }
    return {**batch, **{key: np.pad(v, (0, B * K - n)).reshape(B, K) for key, v in flat.items()}}


def pack_rows(lengths, pack_length: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of rows packed into bins of at most `pack_length` tokens: first-fit decreasing
    over a random order (ties broken by it), so bins are nearly full; the bins come back shuffled.
    Pure function of (seed, epoch). A row longer than pack_length is an error (data.max_length
    must not exceed it)."""
    lengths = np.asarray(lengths)
    if lengths.size and lengths.max() > pack_length:
        raise DataError(f"a row of {int(lengths.max())} tokens does not fit data.pack_length={pack_length}")
    rng = np.random.default_rng([seed, epoch, 1])
    order = rng.permutation(len(lengths))
    order = order[np.argsort(-lengths[order], kind="stable")]
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order.tolist():
        n = int(lengths[i])
        # first bin with room; bins are few hundred per epoch, so a linear scan is cheap
        j = next((j for j, r in enumerate(room) if r >= n), None)
        if j is None:
            bins.append([i])
            room.append(pack_length - n)
        else:
            bins[j].append(i)
            room[j] -= n
    return [bins[i] for i in rng.permutation(len(bins))]


def packed_batches(lengths, batch_size: int, pack_length: int, seed: int, epoch: int) -> list[list[list[int]]]:
    """One epoch of batches of `batch_size` packed rows (pack_rows); the ragged tail is dropped,
    and a set that fills less than one batch repeats its bins."""
    bins = pack_rows(lengths, pack_length, seed, epoch)
    if len(bins) < batch_size:
        return [[bins[i % len(bins)] for i in range(batch_size)]]
    return [bins[s : s + batch_size] for s in range(0, len(bins) - batch_size + 1, batch_size)]


def length_grouped_batches(
    lengths, batch_size: int, seed: int, epoch: int, group_batches: int = 16
) -> list[np.ndarray]:
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
    return {key: v[process_index * k : (process_index + 1) * k] for key, v in batch.items()}


def train_batches(
    data: TokenizedSet,
    batch_size: int,
    length_buckets,
    seed: int,
    group_batches: int = 16,
    process_index: int = 0,
    process_count: int = 1,
    pack_length: int | None = None,
) -> Iterator[dict]:
    """Endless stream of `length_grouped_batches` epochs (`group_batches=1`: plain random batches).
    Each epoch drops the ragged tail of every window; a set smaller than one batch repeats rows.
    `batch_size` is the global batch; with several processes each yields its rows (process_rows).
    With `pack_length`, a batch is `batch_size` packed rows of up to pack_length tokens instead."""
    lengths = [len(e) for e in data.examples]
    for epoch in itertools.count():
        if pack_length:
            for bins in packed_batches(lengths, batch_size, pack_length, seed, epoch):
                rows = [[data.examples[i] for i in b] for b in bins]
                yield process_rows(collate_packed(rows, length_buckets), process_index, process_count)
            continue
        for idx in length_grouped_batches(lengths, batch_size, seed, epoch, group_batches):
            yield process_rows(collate([data.examples[i] for i in idx], length_buckets), process_index, process_count)


def eval_batches(
    data: TokenizedSet,
    batch_size: int,
    length_buckets,
    max_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> list[dict]:
    """Fixed validation batches (first rows, in order), so every evaluation sees the same data
    (this process's rows of each, as train_batches)."""
    ex = data.examples
    if len(ex) < batch_size:
        ex = [ex[i % len(ex)] for i in range(batch_size)]
    batches = [collate(ex[s : s + batch_size], length_buckets) for s in range(0, len(ex) - batch_size + 1, batch_size)]
    return [process_rows(b, process_index, process_count) for b in batches[:max_batches]]
