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
    from gemma_tool_use.data.batching import collate_packed
    from gemma_tool_use.format.render import RenderedConversation

    a = RenderedConversation(np.array([2, 10, 11, 12], np.int32), np.array([0, 0, 1, 1], bool))
    b = RenderedConversation(np.array([2, 20, 21], np.int32), np.array([0, 1, 1], bool))
    batch = collate_packed([[a, b], [b]], [8])
    assert batch["input_segments"].tolist() == [[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 0, 0, 0, 0, 0]]
    assert batch["input_mask"].tolist()[0] == [True] * 7 + [False]
    # a: positions 1, 2 predict 11, 12; b (starting at 4): positions 4, 5 predict 20, 21; then row 1's
    # b: positions 0, 1. Six targets dealt over 2 rows: 2 x 3 slots, no padding slot.
    assert batch["target_rows"].tolist() == [[0, 0, 0], [0, 1, 1]]
    assert batch["target_positions"].tolist() == [[1, 2, 4], [5, 0, 1]]
    assert batch["target_ids"].tolist() == [[11, 12, 20], [21, 20, 21]]
    assert batch["target_weights"].tolist() == [[1, 1, 1], [1, 1, 1]]


def test_loss_slots_are_dealt_over_the_batch_in_few_shapes():
    from gemma_tool_use.data.batching import collate, loss_slots_per_row
    from gemma_tool_use.format.render import RenderedConversation

    assert [loss_slots_per_row(n, 4) for n in (0, 1, 4, 5, 9, 12, 13, 17, 25, 147, 4 * 48, 4 * 48 + 1)] == [
        1,
        1,
        1,
        2,
        3,
        3,
        4,
        6,
        8,
        48,
        48,
        64,
    ]
    # every K is 2^i or 3 * 2^i, and at most a third of the slots are padding
    for n in range(1, 5000, 7):
        k = loss_slots_per_row(n, 8)
        assert k & (k - 1) == 0 or (k % 3 == 0 and (k // 3) & (k // 3 - 1) == 0)
        assert 8 * k >= n and (k == 1 or n > 8 * k * 2 / 3 - 8), (n, k)
    # one long row and three short ones: per-row slots would be 4 x 40; dealt slots are 4 x 12
    rows = [RenderedConversation(np.arange(2, 43, dtype=np.int32), np.array([0] + [1] * 40, bool))] + [
        RenderedConversation(np.arange(2, 6, dtype=np.int32), np.array([0, 0, 1, 1], bool))
    ] * 3
    batch = collate(rows, [64])
    assert batch["target_weights"].shape == (4, 12) and batch["target_weights"].sum() == 40 + 3 * 2
    w = batch["target_weights"] > 0
    tokens = batch["input_tokens"]
    got = tokens[batch["target_rows"][w], batch["target_positions"][w] + 1]
    assert (got == batch["target_ids"][w]).all()  # every slot names its row's next token
    assert sorted(zip(batch["target_rows"][w].tolist(), batch["target_positions"][w].tolist())) == [
        (0, p) for p in range(40)
    ] + [(r, p) for r in (1, 2, 3) for p in (1, 2)]


def test_pack_length_shorter_than_a_row_is_a_clear_error():
    import pytest

    from gemma_tool_use.data.batching import pack_rows
    from gemma_tool_use.data.conversations import DataError

    with pytest.raises(DataError, match="data.pack_length=512"):
        pack_rows([100, 600], 512, seed=0, epoch=0)


def test_per_row_slots_keep_each_rows_targets_in_its_own_row():
    from gemma_tool_use.data.batching import collate
    from gemma_tool_use.format.render import RenderedConversation

    long = RenderedConversation(np.arange(2, 43, dtype=np.int32), np.array([0] + [1] * 40, bool))
    short = RenderedConversation(np.arange(2, 6, dtype=np.int32), np.array([0, 0, 1, 1], bool))
    batch = collate([short, long], [64], per_row_slots=True)
    assert "target_rows" not in batch and batch["target_positions"].shape == (2, 64)  # 40 targets: T/2 < 40 <= T
    assert batch["target_positions"][0, :3].tolist() == [1, 2, 0] and batch["target_weights"][0].sum() == 2
    assert batch["target_positions"][1, :40].tolist() == list(range(40)) and batch["target_weights"][1].sum() == 40
