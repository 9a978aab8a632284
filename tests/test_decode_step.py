"""The generator's decode step (decode_step.py) computes what tunix's forward computes: same
logits and the same cache, step after step, with LoRA adapters merged, trained embedding rows,
left-padded rows of different lengths, and local layers whose window the sequence crosses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from gemma_tool_use.config.schema import register_configs
from gemma_tool_use.generation.decode_step import decode_step, greedy, head_logits, lora_scale, prepare_weights
from gemma_tool_use.generation.generator import _init_cache
from gemma_tool_use.utils.paths import conf_dir

register_configs()


def _build(*overrides):
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.utils.mesh import build_mesh

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        # 6 layers: five local (window 8) and one global, as Gemma 3 alternates them
        cfg = compose(
            "config",
            overrides=["model=tiny", "model.arch.num_layers=6", "model.arch.sliding_window_size=8", *overrides],
        )
    return build_model(cfg.model, build_mesh(cfg.tpu), 0)


def _perturbed(model, seed=0):
    """Every LoRA matrix and trained row random (LoRA B starts at zero: nothing to merge)."""
    graphdef, state = nnx.split(model)
    key = jax.random.key(seed)

    def bump(path, x):
        name = "/".join(str(p) for p in path)
        if "lora" in name or "row_delta" in name:
            return x + 0.3 * jax.random.normal(jax.random.fold_in(key, hash(name) % 2**31), x.shape, x.dtype)
        return x

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(bump, state))


@pytest.fixture(scope="module")
def lora_model():
    return _perturbed(_build("model.lora.enabled=true", "model.train_token_ids=[105,106]"))


def _reference_and_fast(model, prompts, steps):
    """Prefill left-padded prompts with tunix's forward, then decode `steps` tokens twice from the
    same cache: tunix's module path and decode_step; returns both logit sequences and caches."""
    graphdef, state = nnx.split(model)
    cfg = model.config
    B, Tp = len(prompts), max(len(p) for p in prompts)
    S = Tp + steps
    tokens = np.zeros((B, Tp), np.int32)
    valid = np.zeros((B, Tp), bool)
    for r, p in enumerate(prompts):
        tokens[r, Tp - len(p) :] = p
        valid[r, Tp - len(p) :] = True

    @jax.jit
    def run(state, tokens, valid):
        m = nnx.merge(graphdef, state)
        positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
        key_valid = jnp.zeros((B, S), bool).at[:, :Tp].set(valid)
        mask = (jnp.arange(Tp)[:, None] >= jnp.arange(S)[None, :])[None] & key_valid[:, None, :]
        logits, cache = m(
            tokens, positions, _init_cache(cfg, B, S, jnp.float32), mask, logits_at=jnp.full((B, 1), Tp - 1, jnp.int32)
        )
        token, pos = greedy(logits[:, -1]), positions[:, -1] + 1
        ref_cache, fast_cache, ref_kv, fast_kv = cache, cache, key_valid, key_valid
        weights = prepare_weights(m)
        ref_logits, fast_logits = [], []
        for step in range(steps):  # both paths fed the reference's tokens
            w = Tp + step
            ref_kv = ref_kv.at[:, w].set(True)
            lr, ref_cache = m(
                token[:, None], pos[:, None], ref_cache, ref_kv[:, None, :], logits_at=jnp.zeros((B, 1), jnp.int32)
            )
            hidden, fast_cache = decode_step(m, weights, token, pos, fast_cache, fast_kv, w)
            fast_kv = fast_kv.at[:, w].set(True)
            ref_logits.append(lr[:, -1])
            fast_logits.append(head_logits(m, hidden))
            token, pos = greedy(lr[:, -1]), pos + 1
        return jnp.stack(ref_logits), jnp.stack(fast_logits), ref_cache, fast_cache

    return run(state, tokens, valid)


def test_decode_step_equals_tunix_forward_with_lora_rows_and_windows(lora_model):
    assert lora_scale(lora_model) == 2.0  # tiny: alpha 8 / rank 4
    prompts = [[2, 105, 10, 11, 12, 13], [2, 105, 106, 300, 301, 302, 303, 304, 305, 306, 307], [2, 7]]
    ref, fast, ref_cache, fast_cache = _reference_and_fast(lora_model, prompts, steps=10)  # 21 columns, window 8
    np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), rtol=2e-4, atol=2e-4)
    assert np.array_equal(np.argmax(fast, -1), np.argmax(ref, -1))
    assert float(jnp.std(ref)) > 0.1  # the logits are not degenerate
    for name in ref_cache:
        for part in ("k", "v"):
            np.testing.assert_allclose(
                np.asarray(fast_cache[name][part]), np.asarray(ref_cache[name][part]), rtol=2e-4, atol=2e-4
            )
        assert np.array_equal(fast_cache[name]["end_index"], ref_cache[name]["end_index"])


def test_the_adapters_are_applied(lora_model):
    """With the adapters' scale at 0 the step must differ from tunix's: it really applies them."""
    prompts = [[2, 105, 10, 11, 12, 13]]
    _, fast, _, _ = _reference_and_fast(lora_model, prompts, steps=2)
    lora_model.lora_scale = 0.0
    try:
        ref, without, _, _ = _reference_and_fast(lora_model, prompts, steps=2)
    finally:
        lora_model.lora_scale = 2.0
    assert not np.allclose(np.asarray(without), np.asarray(ref), atol=1e-3)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), rtol=2e-4, atol=2e-4)


def test_a_lora_model_without_its_scale_is_refused():
    model = _build("model.lora.enabled=true")
    del model.lora_scale
    with pytest.raises(ValueError, match="lora_scale"):
        lora_scale(model)


def test_greedy_is_the_first_maximum():
    x = jnp.asarray([[0.0, 3.0, 3.0, -1.0], [5.0, 1.0, 5.0, 5.0], [-2.0, -1.0, -3.0, -1.0]])
    assert greedy(x).tolist() == [1, 0, 1] == jnp.argmax(x, -1).tolist()
    r = jax.random.normal(jax.random.key(0), (16, 1000)).astype(jnp.bfloat16)  # bf16: many ties
    assert greedy(r).tolist() == jnp.argmax(r, -1).tolist()
