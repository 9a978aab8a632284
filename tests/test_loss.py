"""The completion loss: chunked vocabulary projection = one-shot projection, value and gradient."""

import numpy as np
import pytest


@pytest.mark.parametrize("rows", [[], [105, 106]])
def test_chunked_loss_matches_the_unchunked_loss_and_gradients(rows):
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.training import loss as training_loss
    from gemma_tool_use.utils.mesh import build_mesh
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", f"model.train_token_ids={rows}"])
    model = build_model(cfg.model, build_mesh(cfg.tpu), 0)
    rng = np.random.default_rng(0)
    B, T, K = 2, 16, 7
    tokens = jnp.asarray(rng.integers(3, 1000, (B, T)), jnp.int32)
    tokens = tokens.at[:, 3].set(105).at[:, 9].set(106)
    batch = dict(
        input_tokens=tokens,
        input_mask=jnp.ones((B, T), bool),
        target_positions=jnp.asarray(rng.integers(0, T, (B, K)), jnp.int32),
        target_ids=jnp.asarray(rng.integers(0, 1000, (B, K)), jnp.int32).at[0, 0].set(106),
        target_weights=jnp.asarray(rng.random((B, K)) > 0.3, jnp.float32),
    )

    def value_and_grads(chunk):
        training_loss.LOSS_CHUNK = chunk
        loss, grads = nnx.value_and_grad(training_loss.completion_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(
            model, **batch
        )
        return float(loss), jax.tree.leaves(grads)

    try:
        one_shot = value_and_grads(10_000)
        chunked = value_and_grads(4)  # 14 positions -> 4 chunks, the last one padded
    finally:
        training_loss.LOSS_CHUNK = 512
    assert np.isfinite(one_shot[0])
    np.testing.assert_allclose(chunked[0], one_shot[0], rtol=1e-5)
    assert len(one_shot[1]) == len(chunked[1]) > 0
    for a, b in zip(one_shot[1], chunked[1]):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2e-3, atol=1e-5)
    assert any(np.abs(np.asarray(g, np.float32)).sum() > 0 for g in one_shot[1])


@pytest.mark.parametrize("remat", ["block", "decoder"])
def test_remat_changes_memory_not_the_loss_or_gradients(remat):
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.training import loss as training_loss
    from gemma_tool_use.utils.mesh import build_mesh
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    rng = np.random.default_rng(1)
    B, T, K = 2, 16, 5
    batch = dict(
        input_tokens=jnp.asarray(rng.integers(3, 1000, (B, T)), jnp.int32),
        input_mask=jnp.ones((B, T), bool),
        target_positions=jnp.asarray(rng.integers(0, T, (B, K)), jnp.int32),
        target_ids=jnp.asarray(rng.integers(0, 1000, (B, K)), jnp.int32),
        target_weights=jnp.ones((B, K), jnp.float32),
    )
    out = {}
    for setting in ("none", remat):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = compose("config", overrides=["model=tiny", f"model.remat={setting}"])
        model = build_model(cfg.model, build_mesh(cfg.tpu), 0)
        loss, grads = nnx.value_and_grad(training_loss.completion_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(
            model, **batch
        )
        graphdef, state = nnx.split(model)
        jaxpr = str(
            jax.make_jaxpr(
                lambda st: nnx.value_and_grad(training_loss.completion_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(
                    nnx.merge(graphdef, st), **batch
                )[0]
            )(state)
        )
        out[setting] = (float(loss), jax.tree.leaves(grads), jaxpr.count("remat") + jaxpr.count("checkpoint"))
    assert out["none"][2] == 0 and out[remat][2] > 0  # the setting reaches the model
    np.testing.assert_allclose(out[remat][0], out["none"][0], rtol=1e-6)
    for a, b in zip(out["none"][1], out[remat][1]):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-4, atol=1e-6)


def test_a_packed_row_has_the_loss_and_gradients_of_its_conversations_apart():
    """Sequence packing changes the layout, not the maths: two conversations in one row (each
    attending to itself, positions restarting) give the loss and LoRA gradients of two padded
    rows. Lengths beyond the tiny model's 64-token sliding window check the local layers too."""
    from gemma_tool_use.data.batching import collate, collate_packed

    model = _tiny_model_with_rows()
    rng = np.random.default_rng(2)

    a, b, c = (_conversation(rng, n, t) for n, t in ((90, 60), (75, 30), (40, 20)))
    unpacked = collate([a, b, c], [128, 256])
    packed = collate_packed([[a, b], [c]], [128, 256])
    assert packed["input_tokens"].shape == (2, 256) and unpacked["input_tokens"].shape == (3, 128)
    assert packed["target_weights"].sum() == unpacked["target_weights"].sum()

    def value_and_grads(batch):
        return _loss_and_grads(model, batch)

    (lu, gu), (lp, gp) = value_and_grads(unpacked), value_and_grads(packed)
    np.testing.assert_allclose(lp, lu, rtol=1e-5)
    assert len(gu) == len(gp) > 0
    for x, y in zip(gu, gp):
        np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(x, np.float32), rtol=1e-3, atol=1e-6)
    # without the segment ids the second conversation would see the first: a different loss
    leaky = {k: v for k, v in packed.items() if k != "input_segments"}
    assert abs(value_and_grads(leaky)[0] - lu) > 1e-4


def test_slots_dealt_over_rows_give_the_loss_and_gradients_of_per_row_slots():
    """Batching deals a batch's targets over all rows (`target_rows`) so the vocabulary head runs on
    few padding slots. The same targets laid out one row each (slot (b, k) in row b, no target_rows,
    the layout GRPO still uses) must give the same loss and LoRA + trained-row gradients."""
    from gemma_tool_use.data.batching import collate

    model = _tiny_model_with_rows()
    rng = np.random.default_rng(5)

    dealt = collate([_conversation(rng, n, t, end_token=True) for n, t in ((60, 5), (20, 15), (30, 25))], [64])
    w = dealt["target_weights"] > 0
    assert (dealt["target_rows"][w] != np.arange(3)[:, None].repeat(w.shape[1], 1)[w]).any()  # slots do cross rows
    per_row = {k: dealt[k] for k in ("input_tokens", "input_mask")}
    K = max(int((dealt["target_rows"][w] == b).sum()) for b in range(3))
    for key in ("target_positions", "target_ids", "target_weights"):
        per_row[key] = np.zeros((3, K), dealt[key].dtype)
        for b in range(3):
            mine = w & (dealt["target_rows"] == b)
            per_row[key][b, : mine.sum()] = dealt[key][mine]
    assert per_row["target_weights"].size > dealt["target_weights"].size  # 3 x 55 slots vs 3 x 24

    def value_and_grads(batch):
        return _loss_and_grads(model, batch)

    (ld, gd), (lr, gr) = value_and_grads(dealt), value_and_grads(per_row)
    np.testing.assert_allclose(ld, lr, rtol=1e-6)
    assert len(gd) == len(gr) > 0 and any(np.abs(np.asarray(g, np.float32)).sum() > 0 for g in gd)
    for x, y in zip(gd, gr):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=1e-4, atol=1e-7)
    # the rows matter: every slot read from row 0 instead is another loss
    wrong = dict(dealt, target_rows=np.zeros_like(dealt["target_rows"]))
    assert abs(value_and_grads(wrong)[0] - lr) > 1e-3


def _tiny_model_with_rows():
    """The tiny model with trained rows for <start_of_turn>/<end_of_turn> (105, 106)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.utils.mesh import build_mesh
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", "model.train_token_ids=[105,106]"])
    return build_model(cfg.model, build_mesh(cfg.tpu), 0)


def _conversation(rng, n, first_target, end_token=False):
    """n random tokens, <bos> first, targets from `first_target` on (after a 105)."""
    from gemma_tool_use.format.render import RenderedConversation

    mask = np.zeros(n, bool)
    mask[first_target:] = True
    ids = rng.integers(3, 1000, n).astype(np.int32)
    ids[0], ids[first_target - 1] = 2, 105
    if end_token:
        ids[-1] = 106
    return RenderedConversation(ids, mask)


def _loss_and_grads(model, batch):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from gemma_tool_use.training import loss as training_loss

    loss, grads = nnx.value_and_grad(training_loss.completion_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(
        model, **{k: jnp.asarray(v) for k, v in batch.items()}
    )
    return float(loss), jax.tree.leaves(grads)
