"""One decode step of Gemma 3 (one new token per row) for the generator's while loop.

tunix's module path is exact but slow inside a `lax.while_loop` on XLA:CPU: a profile of the
real 270M at batch 8 (measured: experiments/decode_step/README.md, section 1) showed a step
spending much more than its matmuls' weight reads, on:
  * XLA re-laying the attention weights ([N, D, H] -> [D, N*H] and the like) inside the
    loop body, every step, for every layer (loop-invariant copies it does not hoist);
  * copies of the KV cache, 3 per layer and step, because the updated cache feeds
    both the attention (as [B, S, H]) and the loop output (as [B, S, 1, H]), and an in-place
    dynamic-update-slice can serve only one of them;
  * argmax over the 262k logits as a variadic (value, index) reduce;
  * narrow matmuls: at 8 rows a matmul costs its weight reads plus a fixed overhead, so gate
    and up as two matmuls cost far more than as one.
This module computes the same function from weights prepared once per generate call, outside
the loop (projections and their LoRA adapters in the layout the dots want, q/k/v and gate/up
fused), attends to the cached columns and the new token's own key/value separately so that the
cache write is the last use of the cache (XLA updates it in place), reads only the last
`sliding_window_size - 1` cached columns in the local layers, and picks the greedy token with
two plain reductions; no copies are left in the loop, and a step is much faster than the
module path's (measured: experiments/decode_step/README.md, section 2).

The prefill stays tunix's own forward (ToolGemma3.__call__), and so does training. The decode
step is checked against it: tests/test_decode_step.py (tiny model with LoRA and trained rows,
float32, global and local layers past the window).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from tunix.models.gemma3 import model as tunix_gemma3


def lora_scale(model) -> float:
    """alpha / rank of the model's LoRA adapters, which model.apply_lora records on the model
    (qwix keeps it in its interceptor, out of reach); 0 without adapters."""
    has_lora = any(True for _ in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)))
    scale = getattr(model, "lora_scale", None)
    if has_lora and scale is None:
        raise ValueError(
            "the model has LoRA adapters but no lora_scale attribute (alpha/rank): build it with "
            "gemma_tool_use.model.apply_lora"
        )
    return float(scale or 0.0)


def _lora(module, base: str):
    """(A, B) of a module's adapter, or None."""
    a = getattr(module, f"{base}_lora_a", None)
    return None if a is None else (a.value, getattr(module, f"{base}_lora_b").value)


def _block_diag(*bs):
    """[r1+r2, o1+o2] from B matrices [r_i, o_i]: one matmul applies two adapters side by side."""
    rows = sum(b.shape[0] for b in bs)
    out = jnp.zeros((rows, sum(b.shape[1] for b in bs)), bs[0].dtype)
    r = c = 0
    for b in bs:
        out = out.at[r : r + b.shape[0], c : c + b.shape[1]].set(b)
        r, c = r + b.shape[0], c + b.shape[1]
    return out


def prepare_weights(model) -> list[dict]:
    """Per layer, the arrays the decode step reads, in the layout its matmuls use:
    qkv [D, (N+2K)*H], o [N*H, D], gate_up [D, 2F], down [F, D], and each projection's LoRA adapter as (A [in, r], B [r, out]) under "lora/<name>".
    Call inside the jitted program, outside the loop: XLA then lays them out once per call.

    The adapters stay apart from the base weights, as qwix applies them in training: merged
    into bf16 weights, a LoRA delta ~1% of a weight would keep only a few of its bits (bf16
    has 8). Apart they cost nothing measurable on BFCL (measured: experiments/decode_step/README.md)."""
    scale = lora_scale(model)
    layers = []
    for layer in model.layers:
        attn, mlp = layer.attn, layer.mlp
        if attn.use_qkv_einsum:
            raise NotImplementedError(
                "decode_step: fused qkv_einsum (num_heads == num_kv_heads) is not a Gemma 3 270M "
                "layout; use the module path"
            )
        q, kv, o = attn.q_einsum.w.value, attn.kv_einsum.w.value, attn.attn_vec_einsum.w.value  # NDH, CKDH, NHD
        n, d, h = q.shape
        # q, k and v in one [D, (N + 2K) * H] matmul, gate and up in one [D, 2F]: at 8 rows a
        # matmul costs its weight reads plus a fixed overhead, and one wide op beats two narrow
        # ones (measured: experiments/decode_step/README.md, section 2)
        w = {
            "qkv": jnp.concatenate(
                [jnp.transpose(q, (1, 0, 2)).reshape(d, n * h), jnp.transpose(kv, (2, 0, 1, 3)).reshape(d, -1)], axis=1
            ),
            "o": o.reshape(n * h, d),
            "gate_up": jnp.concatenate([mlp.gate_proj.kernel.value, mlp.up_proj.kernel.value], axis=1),
            "down": mlp.down_proj.kernel.value,
        }
        # qwix's shapes: q a [D, r] b [r, N, H]; kv a [D, r] b [r, C, K, H]; o a [N, H, r] b [r, D];
        # Linear a [in, r] b [r, out]
        lq, lkv = _lora(attn.q_einsum, "w"), _lora(attn.kv_einsum, "w")
        if lq or lkv:
            dtype = q.dtype
            lq = lq or (jnp.zeros((d, 1), dtype), jnp.zeros((1, n, h), dtype))
            lkv = lkv or (jnp.zeros((d, 1), dtype), jnp.zeros((1, *kv.shape[:2], h), dtype))
            w["lora/qkv"] = (
                jnp.concatenate([lq[0], lkv[0]], axis=1),
                _block_diag(lq[1].reshape(lq[1].shape[0], -1), lkv[1].reshape(lkv[1].shape[0], -1)),
            )
        if lo := _lora(attn.attn_vec_einsum, "w"):
            w["lora/o"] = (lo[0].reshape(n * h, -1), lo[1])
        lg, lu = _lora(mlp.gate_proj, "kernel"), _lora(mlp.up_proj, "kernel")
        if lg or lu:
            f = mlp.gate_proj.kernel.value.shape[1]
            lg = lg or (jnp.zeros((d, 1), w["down"].dtype), jnp.zeros((1, f), w["down"].dtype))
            lu = lu or (jnp.zeros((d, 1), w["down"].dtype), jnp.zeros((1, f), w["down"].dtype))
            w["lora/gate_up"] = (jnp.concatenate([lg[0], lu[0]], axis=1), _block_diag(lg[1], lu[1]))
        if ld := _lora(mlp.down_proj, "kernel"):
            w["lora/down"] = ld
        w["lora_scale"] = scale
        layers.append(w)
    return layers


def _proj(x, w: dict, name: str):
    """x @ W plus its LoRA delta ((x @ A) @ B * alpha/rank), as qwix computes it."""
    y = x @ w[name]
    if f"lora/{name}" in w:
        a, b = w[f"lora/{name}"]
        y = y + ((x @ a) @ b) * w["lora_scale"]
    return y


def greedy(logits):
    """argmax over the last axis (the first maximum, as jnp.argmax) as a max and a min-reduce:
    XLA:CPU vectorises those, not the (value, index) reduce jnp.argmax lowers to."""
    best = jnp.max(logits, axis=-1, keepdims=True)
    ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.min(jnp.where(logits == best, ids, logits.shape[-1]), axis=-1)


def _attend(q, k_new, v_new, k_old, v_old, old_valid, scalar_dtype):
    """Softmax attention of q [B, K, G, H] over the old columns [B, S', K, H] (old_valid [B, S'])
    and the row's own new key/value [B, K, H], in float32."""
    # Scores as [B, K, S, G]: the cached keys are the dot's row-major left operand as stored
    # ([S, H] per row); [B, K, G, S] made XLA transpose the whole key cache every step.
    f32 = jnp.float32
    s_old = jnp.einsum("bskh,bkgh->bksg", k_old, q, preferred_element_type=f32)
    s_old = jnp.where(old_valid[:, None, :, None], s_old, -jnp.inf)
    s_new = jnp.einsum("bkgh,bkh->bkg", q, k_new, preferred_element_type=f32)[:, :, None, :]
    m = jnp.maximum(jnp.max(s_old, axis=2, keepdims=True), s_new)  # [B, K, 1, G]
    p_old, p_new = jnp.exp(s_old - m), jnp.exp(s_new - m)
    denom = jnp.sum(p_old, axis=2) + p_new[:, :, 0]  # [B, K, G]
    out = jnp.einsum("bksg,bskh->bkgh", p_old.astype(scalar_dtype), v_old, preferred_element_type=f32)
    out = out + p_new[:, :, 0, :, None] * v_new[:, :, None, :].astype(f32)
    return (out / denom[..., None]).astype(scalar_dtype)


def decode_step(model, weights: list[dict], token, position, cache, old_valid, write_col):
    """Run one token per row: token, position [B] int32; cache as ToolGemma3's (per layer k, v
    [B, S, K, H] and end_index); old_valid [B, S]: the cached columns each row may attend to
    (the write column excluded); write_col: the column (shared by all rows) the new key/value
    go to. Returns (final-norm hidden states [B, D], the updated cache)."""
    cfg = model.config
    B = token.shape[0]
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    G = N // K
    x = model.embedder.encode(token[:, None])[:, 0]  # [B, D]
    dtype = x.dtype
    new_cache = {}
    for i, (layer, w) in enumerate(zip(model.layers, weights)):
        attn = layer.attn
        c = cache[f"layer_{i}"]
        S = c["k"].shape[1]
        h = layer.pre_attention_norm(x)
        qkv = _proj(h, w, "qkv")
        q = qkv[:, : N * H].reshape(B, N, H)
        kv = qkv[:, N * H :].reshape(B, 2, K, H)
        q = attn._query_norm(q)
        k = attn._key_norm(kv[:, 0])
        pos = position[:, None]
        q = tunix_gemma3.apply_rope(
            q[:, None], pos, head_dim=H, base_frequency=attn.rope_base_frequency, scale_factor=attn.rope_scale_factor
        )[:, 0]
        k = tunix_gemma3.apply_rope(
            k[:, None], pos, head_dim=H, base_frequency=attn.rope_base_frequency, scale_factor=attn.rope_scale_factor
        )[:, 0]
        q = (q * attn.query_pre_attn_scalar).reshape(B, K, G, H)
        v = kv[:, 1]
        k_old, v_old, valid = c["k"], c["v"], old_valid
        window = attn.sliding_window_size if attn.attn_type == tunix_gemma3.AttentionType.LOCAL_SLIDING else None
        if window is not None and window - 1 < S:
            # the local layers see the window-1 columns left of the write column (and the new
            # token): read only those, not the whole cache
            start = jnp.maximum(write_col - (window - 1), 0)
            k_old = jax.lax.dynamic_slice_in_dim(k_old, start, window - 1, axis=1)
            v_old = jax.lax.dynamic_slice_in_dim(v_old, start, window - 1, axis=1)
            cols = start + jnp.arange(window - 1)
            valid = jax.lax.dynamic_slice_in_dim(valid, start, window - 1, axis=1) & (cols < write_col)[None]
        else:
            cols = jnp.arange(S)
            valid = valid & (cols < write_col)[None]
            if window is not None:
                valid = valid & (cols > write_col - window)[None]
        enc = _attend(q, k, v, k_old, v_old, valid, dtype)  # [B, K, G, H]
        # The cache write below must follow every read of the old cache, or XLA copies the
        # cache (twice) to keep the reads safe: nothing else orders them, so tie the written
        # values to the attention output.
        k, v, enc = jax.lax.optimization_barrier((k, v, enc))
        out = _proj(enc.reshape(B, N * H), w, "o")
        x = x + layer.post_attention_norm(out)
        hf = layer.pre_ffw_norm(x)
        gate, up = jnp.split(_proj(hf, w, "gate_up"), 2, axis=-1)
        x = x + layer.post_ffw_norm(_proj(nnx.gelu(gate) * up, w, "down"))
        # the cache write comes last: nothing reads the old cache after it, so it is in place
        at = (0, write_col, 0, 0)
        new_cache[f"layer_{i}"] = {
            "k": jax.lax.dynamic_update_slice(c["k"], k[:, None].astype(c["k"].dtype), at),
            "v": jax.lax.dynamic_update_slice(c["v"], v[:, None].astype(c["v"].dtype), at),
            "end_index": c["end_index"] + 1,
        }
    return model.final_norm(x), new_cache


def head_logits(model, hidden):
    """Logits [B, V] of final-norm hidden states [B, D] through the tied embedding (the model's
    own decode, on [B, 1, D]: the 2-D form of tunix's jnp.dot copies the transposed table)."""
    return model.embedder.decode(hidden[:, None])[:, 0]
