"""The SFT loss: mean next-token NLL over model-turn targets only (completion-only), and the
chunked tied-head NLL it shares with GRPO's log-probabilities (training/grpo/objective.py).

It never builds full-vocabulary logits for positions that carry no loss: the model returns final
hidden states at the target positions only (`logits_at`, model/gemma.py), and the tied
vocabulary projection runs over them in chunks of LOSS_CHUNK positions whose logits are
recomputed in the backward pass, so memory stays flat however many targets a batch holds.
Packed rows (data/batching.py) get per-segment positions and a mask that keeps each
conversation to itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from tunix.sft import utils as sft_utils

# Loss positions per chunk of the vocabulary projection. A [positions, 262,144] f32 logits block
# takes 1 MiB per position, as much again for its gradient; above this size the loss runs a scan
# over chunks and recomputes each chunk's logits in the backward pass, so memory stays flat.
LOSS_CHUNK = 512


def completion_loss(
    model, input_tokens, input_mask, target_positions, target_ids, target_weights, input_segments=None, target_rows=None
):
    """Mean next-token NLL over model-turn targets only.

    Hidden states are gathered at the K target positions ([B, K, D]) instead of every position,
    labels are integers (no one-hot over 262k classes), and the vocabulary projection runs in
    chunks of LOSS_CHUNK positions (see above). With `input_segments` (packed rows, see
    data/batching.py), each conversation attends to itself only and its positions start at 0.
    `target_rows` [B, K]: the row each slot's position belongs to (batching deals a batch's targets
    over all rows); None: slot (b, k) is in row b."""
    if input_segments is None:
        positions = sft_utils.build_positions_from_mask(input_mask)
        attention_mask = sft_utils.make_causal_attn_mask(input_mask)
    else:
        positions, attention_mask = packed_positions_and_mask(input_segments)
    hidden, _ = model(
        input_tokens,
        positions,
        None,
        attention_mask,
        logits_at=target_positions,
        logits_rows=target_rows,
        return_hidden=True,
        causal_mask=True,
    )
    nll = chunked_nll(model.embedder, hidden, target_ids)
    return jnp.sum(nll * target_weights) / jnp.maximum(jnp.sum(target_weights), 1.0)


def packed_positions_and_mask(segments):
    """Positions (restarting at 0 with each segment) and the causal attention mask [B, T, T]
    that keeps each segment to itself, from segment ids [B, T] (0 = padding, attends nowhere)."""
    T = segments.shape[-1]
    idx = jnp.arange(T, dtype=jnp.int32)
    first = jnp.concatenate([jnp.ones_like(segments[:, :1], bool), segments[:, 1:] != segments[:, :-1]], axis=1)
    start = jax.lax.cummax(jnp.where(first, idx, 0), axis=1)
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, :, None] > 0)
    return idx - start, same & (idx[:, None] >= idx[None, :])


def _head_nll(table, row_ids, row_delta, h, targets):
    """-log p(target) for hidden states h [N, D] under the tied head (plus trained row deltas)."""
    # einsum, not jnp.dot(h, table.T): for 2-D h, XLA:CPU copies the transposed 262k x 640 table on
    # every call and picks a slower bf16 kernel (timings: experiments/peer_bench/README.md, section 3).
    logits = jnp.einsum("...d,vd->...v", h, table)
    if row_delta is not None:
        logits = logits.at[..., row_ids].add(jnp.einsum("...d,kd->...k", h, row_delta))
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - target_logit


def chunked_nll(embedder, hidden, target_ids, chunk: int | None = None):
    """Per-position NLL [B, K] of `target_ids` given final hidden states [B, K, D]."""
    chunk = LOSS_CHUNK if chunk is None else chunk
    table = embedder.input_embedding.value
    row_delta = getattr(embedder, "row_delta", None)
    row_ids = embedder.row_ids.value if row_delta is not None else None
    row_delta = row_delta.value if row_delta is not None else None
    B, K, D = hidden.shape
    n = B * K
    if n <= chunk:
        return _head_nll(table, row_ids, row_delta, hidden, target_ids)
    chunk = -(-n // -(-n // chunk))  # as many chunks as needed, evened out: 768 = 2 x 384, not 2 x 512
    pad = -n % chunk
    h = jnp.pad(hidden.reshape(n, D), ((0, pad), (0, 0))).reshape(-1, chunk, D)
    t = jnp.pad(target_ids.reshape(n), (0, pad)).reshape(-1, chunk)
    step = jax.checkpoint(lambda hc, tc: _head_nll(table, row_ids, row_delta, hc, tc))
    _, nll = jax.lax.scan(lambda carry, xs: (carry, step(*xs)), None, (h, t))
    return nll.reshape(-1)[:n].reshape(B, K)
