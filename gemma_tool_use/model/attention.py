"""Attention over a whole causal sequence in query blocks, skipping the keys no query can see.

tunix's attention builds [B, T, N, T] logits and masks the upper triangle (and, in local layers,
everything beyond the sliding window) with a large negative number: half of those products, and
of the softmax and the backward pass over them, are thrown away. Here the queries go in blocks of
QUERY_BLOCK; block [q0, q1) attends to keys [k0, q1) only, k0 = 0 in global layers and
q0 - window + 1 in local ones. Shapes stay static (one unrolled block per slice), so XLA compiles
it like any other program. Skipping the invisible keys makes one layer's attention core,
forward + backward, faster than tunix's dense form at every training length measured, most at the
longest; blocks of 128 were chosen over 64 and 256, which were no better overall
(measured: experiments/train_step_bench/README.md, `scripts/bench_attention_blocks.py`).

The result is the same as tunix's up to summation order: a masked column adds exp(-huge) = 0 to
a softmax, so leaving it out changes nothing. Rows with no visible key at all (padding queries)
get a different (unused) output: tunix's softmax over an all-masked row is uniform over every
column, ours over the block's; no real position reads a padding position, and no loss does.

Used only where the caller says the mask is causal (`causal_blocks()`, entered by ToolGemma3 when
called with `causal_mask=True`: the training and GRPO losses) and there is no KV cache.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
from tunix.models.gemma3 import model as tunix_gemma3
from tunix.utils import sharding_utils

QUERY_BLOCK = 128

_causal = contextvars.ContextVar("gemma_tool_use_causal_blocks", default=False)


@contextlib.contextmanager
def causal_blocks(enabled: bool = True):
    """Within this block (at trace time), cache-free attention calls may assume a causal mask."""
    token = _causal.set(enabled)
    try:
        yield
    finally:
        _causal.reset(token)


def attend(query_scaled, key, value, attn_mask, *, window: int | None, block: int = QUERY_BLOCK):
    """Softmax attention [B, T, N, H] of queries [B, T, N, H] over keys/values [B, T, K, H]
    (K divides N: grouped-query), under a boolean mask [B, T, T] that must be causal, in query
    blocks that read only the keys they can see (window: the local layers' sliding window)."""
    T = query_scaled.shape[1]
    outs = []
    for q0 in range(0, T, block):
        q1 = min(q0 + block, T)
        k0 = 0 if window is None else max(0, q0 - window + 1)
        mask = attn_mask[:, q0:q1, k0:q1]
        if window is not None:
            mask = mask & ((jnp.arange(q0, q1)[:, None] - jnp.arange(k0, q1)[None, :]) < window)
        outs.append(_softmax_attention(query_scaled[:, q0:q1], key[:, k0:q1], value[:, k0:q1], mask))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


def _softmax_attention(q, k, v, mask):
    """tunix's attention maths on one block: grouped einsums, K_MASK fill, softmax in the logits'
    dtype, probabilities cast to the values' dtype."""
    b, t, n, h = q.shape
    kv = k.shape[2]
    logits = jnp.einsum("BTKGH,BSKH->BTKGS", q.reshape(b, t, kv, n // kv, h), k).reshape(b, t, n, -1)
    logits = jnp.where(mask[:, :, None, :], logits, tunix_gemma3.K_MASK)
    probs = jax.nn.softmax(logits, axis=-1).astype(k.dtype)
    out = jnp.einsum("BTKGS,BSKH->BTKGH", probs.reshape(b, t, kv, n // kv, -1), v)
    return out.reshape(b, t, n, h)


class CausalBlockAttention(tunix_gemma3.Attention):
    """tunix's Attention; under `causal_blocks()` and without a cache, `attend` does the core."""

    def block(self, x, segment_pos, cache, attn_mask):
        if cache is not None or not _causal.get() or x.shape[1] <= QUERY_BLOCK:
            return super().block(x, segment_pos, cache, attn_mask)
        if self.use_qkv_einsum:
            query, key, value = self.qkv_einsum(x)
        else:
            query = self.q_einsum(x)
            key, value = self.kv_einsum(x)
        query, key, value = (sharding_utils.shard(a, self.shd_config.act_btnh) for a in (query, key, value))
        query = self._query_norm(query)
        key = self._key_norm(key)
        rope = dict(
            head_dim=self.head_dim, base_frequency=self.rope_base_frequency, scale_factor=self.rope_scale_factor
        )
        query = tunix_gemma3.apply_rope(query, segment_pos, **rope) * self.query_pre_attn_scalar
        key = tunix_gemma3.apply_rope(key, segment_pos, **rope)
        window = self.sliding_window_size if self.attn_type == tunix_gemma3.AttentionType.LOCAL_SLIDING else None
        encoded = attend(query, key, value, attn_mask.astype(bool), window=window)
        return None, sharding_utils.shard(self.attn_vec_einsum(encoded), self.shd_config.act_btd)
