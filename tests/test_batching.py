"""Length-grouped batching: same rows every epoch, less padding, deterministic order."""

import numpy as np

from gemma_tool_use.data.batching import length_grouped_batches


def _lengths(n=1000, seed=0):
    # The sft_small shape: a third short, the rest between 256 and 1024 tokens.
    rng = np.random.default_rng(seed)
    return rng.integers(100, 1024, size=n)


def _padded_tokens(lengths, batches, buckets=(256, 512, 1024)):
    total = 0
    for b in batches:
        longest = lengths[b].max()
        total += len(b) * next(x for x in buckets if x >= longest)
    return total


def test_grouping_keeps_rows_and_cuts_padding():
    lengths = _lengths()
    grouped = length_grouped_batches(lengths, 8, seed=3, epoch=0, group_batches=16)
    plain = length_grouped_batches(lengths, 8, seed=3, epoch=0, group_batches=1)
    for batches in (grouped, plain):
        rows = np.concatenate(batches)
        assert all(len(b) == 8 for b in batches)
        assert len(set(rows.tolist())) == len(rows)  # no row twice within an epoch
        assert len(rows) >= len(lengths) - 16 * 8  # at most one ragged tail per window dropped
    assert _padded_tokens(lengths, grouped) < 0.8 * _padded_tokens(lengths, plain)


def test_grouped_order_is_a_pure_function_of_seed_and_epoch():
    lengths = _lengths()
    a = length_grouped_batches(lengths, 8, seed=1, epoch=2)
    b = length_grouped_batches(lengths, 8, seed=1, epoch=2)
    c = length_grouped_batches(lengths, 8, seed=1, epoch=3)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not all((x == y).all() for x, y in zip(a, c))
    # batches come in shuffled order, not longest-first
    first_longest = [int(lengths[x].max()) for x in a[:10]]
    assert first_longest != sorted(first_longest, reverse=True)


def test_tiny_set_repeats_rows_to_fill_one_batch():
    batches = length_grouped_batches(np.array([5, 9, 7]), 8, seed=0, epoch=0)
    assert len(batches) == 1 and len(batches[0]) == 8


def test_packing_fills_rows_keeps_every_conversation_once_and_is_deterministic():
    from gemma_tool_use.data.batching import pack_rows, packed_batches

    lengths = _lengths()
    bins = pack_rows(lengths, 1024, seed=3, epoch=0)
    rows = [i for b in bins for i in b]
    assert sorted(rows) == list(range(len(lengths)))  # every conversation once
    assert all(lengths[b].sum() <= 1024 for b in bins)
    fill = lengths.sum() / (1024 * len(bins))
    assert fill > 0.95, fill  # first-fit decreasing leaves little room
    # padded batching of the same rows pays for far more positions
    assert 1024 * len(bins) < 0.8 * _padded_tokens(lengths, length_grouped_batches(lengths, 8, 3, 0))
    again = pack_rows(lengths, 1024, seed=3, epoch=0)
    assert again == bins and pack_rows(lengths, 1024, seed=3, epoch=1) != bins
    batches = packed_batches(lengths, 8, 1024, seed=3, epoch=0)
    assert all(len(b) == 8 for b in batches) and len(batches) == len(bins) // 8


def test_packed_collate_marks_segments_and_keeps_targets_inside_each():
    from gemma_tool_use.chat_format import RenderedConversation
    from gemma_tool_use.data.batching import collate_packed

    a = RenderedConversation(np.array([2, 10, 11, 12], np.int32), np.array([0, 0, 1, 1], bool))
    b = RenderedConversation(np.array([2, 20, 21], np.int32), np.array([0, 1, 1], bool))
    batch = collate_packed([[a, b], [b]], [8])
    assert batch["input_segments"].tolist() == [[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 0, 0, 0, 0, 0]]
    assert batch["input_mask"].tolist()[0] == [True] * 7 + [False]
    w = batch["target_weights"].astype(bool)
    # a: positions 1, 2 predict 11, 12; b (starting at 4): positions 4, 5 predict 20, 21
    assert batch["target_positions"][0][w[0]].tolist() == [1, 2, 4, 5]
    assert batch["target_ids"][0][w[0]].tolist() == [11, 12, 20, 21]


def test_pack_length_shorter_than_a_row_is_a_clear_error():
    import pytest

    from gemma_tool_use.data.batching import pack_rows
    from gemma_tool_use.data.conversations import DataError

    with pytest.raises(DataError, match="data.pack_length=512"):
        pack_rows([100, 600], 512, seed=0, epoch=0)
