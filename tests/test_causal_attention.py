"""Query-block causal attention (causal_attention.py) computes tunix's attention, minus the keys
no query can see: the same outputs at every position that sees a key, the same loss and LoRA
gradients through the tiny model (local and global layers, packed rows, padding)."""

import numpy as np
import pytest


def _dense(q, k, v, mask, window):
    """tunix's dense maths: [T, T] logits, the sliding band applied, K_MASK fill, softmax."""
    import jax
    import jax.numpy as jnp
    from tunix.models.gemma3 import model as tunix_gemma3

    T = q.shape[1]
    if window is not None:
        t = jnp.arange(T)
        mask = mask & (jnp.abs(t[:, None] - t[None, :]) < window)
    b, _, n, h = q.shape
    kv = k.shape[2]
    logits = jnp.einsum("BTKGH,BSKH->BTKGS", q.reshape(b, T, kv, n // kv, h), k).reshape(b, T, n, T)
    probs = jax.nn.softmax(jnp.where(mask[:, :, None, :], logits, tunix_gemma3.K_MASK), axis=-1)
    return jnp.einsum("BTKGS,BSKH->BTKGH", probs.reshape(b, T, kv, n // kv, T), v).reshape(b, T, n, h)


@pytest.mark.parametrize("window", [None, 7, 16])
def test_blocks_equal_dense_attention_wherever_a_key_is_visible(window):
    import jax
    import jax.numpy as jnp

    from gemma_tool_use.model.attention import attend
    from gemma_tool_use.training.loss import packed_positions_and_mask

    B, T, N, K, H = 3, 45, 4, 2, 8  # T not a multiple of the block: a ragged last block
    rng = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(r, (B, T, n, H), jnp.float32) for r, n in zip(rng, (N, K, K)))
    segments = np.zeros((B, T), np.int32)
    segments[0, :] = 1  # one full row
    segments[1, :30] = 1  # right padding
    segments[2, :12], segments[2, 12:40] = 1, 2  # two packed conversations, then padding
    _, mask = packed_positions_and_mask(jnp.asarray(segments))
    want = _dense(q, k, v, mask, window)
    got = attend(q, k, v, mask, window=window, block=8)
    seen = np.asarray(mask.any(-1))  # query rows that see at least one key
    np.testing.assert_allclose(np.asarray(got)[seen], np.asarray(want)[seen], rtol=1e-5, atol=1e-5)
    if window is not None:  # the band is exact: one key more or less is another answer
        wrong = attend(q, k, v, mask, window=window + 1, block=8)
        assert np.abs(np.asarray(wrong)[seen] - np.asarray(want)[seen]).max() > 1e-3


def test_the_model_gives_the_same_loss_and_gradients_with_and_without_blocks():
    """Tiny model with 6 layers (5 local with a 64-token window, 1 global) at T = 320 (3 query
    blocks, the window crossed), LoRA on every projection, trained rows, a packed row and a
    padded one: causal_mask=True (blocks) against the dense path."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.model import attention as causal_attention
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.training import loss as training_loss
    from gemma_tool_use.utils.mesh import build_mesh
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", "model.arch.num_layers=6", "model.train_token_ids=[105,106]"])
    model = build_model(cfg.model, build_mesh(cfg.tpu), 0)
    # LoRA B starts at zero: give every adapter a value so its A has a gradient too
    lora = nnx.state(model, nnx.LoRAParam)
    nnx.update(model, jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape, x.dtype), lora))
    assert any(type(layer.attn) is causal_attention.CausalBlockAttention for layer in model.layers)

    rng = np.random.default_rng(0)
    B, T = 2, 320
    tokens = rng.integers(3, 1000, (B, T)).astype(np.int32)
    segments = np.zeros((B, T), np.int32)
    segments[0, :150], segments[0, 150:310] = 1, 2
    segments[1, :270] = 1
    slots = [
        (b, p) for b in range(B) for p in range(0, T - 1, 7) if segments[b, p] and segments[b, p] == segments[b, p + 1]
    ]
    rows, pos = np.array(slots, np.int32).T
    batch = {
        "input_tokens": tokens,
        "input_mask": segments > 0,
        "input_segments": segments,
        "target_rows": rows[None],
        "target_positions": pos[None],
        "target_ids": tokens[rows, pos + 1][None],
        "target_weights": np.ones((1, len(slots)), np.float32),
    }
    batch = {k: jnp.asarray(v) for k, v in batch.items()}

    positions, mask = training_loss.packed_positions_and_mask(batch["input_segments"])

    def loss(model, causal_mask):
        hidden, _ = model(
            batch["input_tokens"],
            positions,
            None,
            mask,
            logits_at=batch["target_positions"],
            logits_rows=batch["target_rows"],
            return_hidden=True,
            causal_mask=causal_mask,
        )
        return jnp.mean(training_loss.chunked_nll(model.embedder, hidden, batch["target_ids"]))

    def loss_and_grads(causal_mask: bool):
        value, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model, causal_mask)
        return float(value), jax.tree.leaves(grads)

    # the training loss takes the block path
    assert float(training_loss.completion_loss(model, **batch)) == pytest.approx(float(loss(model, True)), rel=1e-6)
    (lb, gb), (ld, gd) = loss_and_grads(True), loss_and_grads(False)
    assert np.isfinite(lb)
    np.testing.assert_allclose(lb, ld, rtol=1e-5)
    assert len(gb) == len(gd) > 0
    for x, y in zip(gb, gd):
        assert np.abs(np.asarray(y)).sum() > 0
        # f32 summation order only: each leaf equal to 1e-4 of its largest entry
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=1e-4 * np.abs(np.asarray(y)).max())
