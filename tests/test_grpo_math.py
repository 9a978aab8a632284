"""The GRPO math (gemma_tool_use/grpo.py): advantages as tunix computes them, completion-only
log-probs = full-vocabulary log-probs, the clipped loss = tunix's grpo_loss_fn, its gradient at
one iteration = -A * grad(logp), clipping and KL behaviour, and a train step that moves only the
trainable parameters. Tiny model, CPU."""

import types

import numpy as np
import pytest

AGG_MODES = ["token-mean", "sequence-mean-token-mean", "sequence-mean-token-scale"]


def _tiny_model(rows=(105, 106), seed=0):
    import jax
    from flax import nnx
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.utils.mesh import build_mesh
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", "model.dtype=float32", f"model.train_token_ids={list(rows)}"])
    model = build_model(cfg.model, build_mesh(cfg.tpu), seed)
    # LoRA B and the row deltas start at zero: give every trainable leaf a value, so that every
    # one of them has a gradient and the row deltas change the logits.
    state = nnx.state(model, nnx.LoRAParam)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    key = jax.random.key(seed + 1)
    leaves = [0.05 * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype) for i, x in enumerate(leaves)]
    nnx.update(model, jax.tree_util.tree_unflatten(treedef, leaves))
    return model


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture(scope="module")
def batch():
    """4 rows = 2 groups of 2; row 2 dropped (all-zero completion mask), row 3 shorter
    (right-padded input, fewer completion tokens); ids 105/106 among inputs and targets."""
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    B, T, K = 4, 16, 6
    tokens = rng.integers(3, 1000, (B, T)).astype(np.int32)
    tokens[:, 2], tokens[:, 9] = 105, 106
    input_mask = np.ones((B, T), bool)
    input_mask[3, 12:] = False
    positions = np.stack([np.arange(8, 8 + K)] * B).astype(np.int32)  # prompt of 9 tokens, then the completion
    positions[3] = np.arange(5, 5 + K)
    targets = tokens[np.arange(B)[:, None], positions + 1]
    targets[0, 0], targets[1, K - 1] = 106, 105  # the trainable rows are targets too
    cmask = np.ones((B, K), np.float32)
    cmask[0, 5:] = 0
    cmask[2] = 0
    cmask[3, 4:] = 0
    return dict(
        input_tokens=jnp.asarray(tokens),
        input_mask=jnp.asarray(input_mask),
        target_positions=jnp.asarray(positions),
        target_ids=jnp.asarray(targets),
        completion_mask=jnp.asarray(cmask),
        advantages=jnp.asarray([1.3, -0.7, 0.5, -1.1], jnp.float32),
    )


def _inputs(batch):
    return {k: batch[k] for k in ("input_tokens", "input_mask", "target_positions", "target_ids")}


def _lora_grads(fn, model):
    from flax import nnx

    grads = nnx.grad(fn, argnums=nnx.DiffState(0, nnx.LoRAParam), has_aux=False)(model)
    return [np.asarray(g, np.float64) for g in __import__("jax").tree.leaves(grads)]


def _assert_grads_close(a, b, rtol=1e-4):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        scale = max(np.abs(x).max(), np.abs(y).max(), 1e-12)
        np.testing.assert_allclose(x, y, rtol=0, atol=rtol * scale)


# ---------------------------------------------------------------------------------------------
# advantages
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["grpo", "drgrpo", "rloo"])
def test_advantages_equal_tunix_and_zero_variance_groups_are_found(estimator):
    import jax.numpy as jnp
    from tunix.rl import algo_core

    from gemma_tool_use.training.grpo import objective as grpo

    tunix_fn = {
        "grpo": algo_core.compute_advantages,
        "drgrpo": algo_core.compute_drgrpo_advantages,
        "rloo": algo_core.compute_rloo_advantages,
    }[estimator]
    rng = np.random.default_rng(1)
    for G in (2, 4, 8):
        r = jnp.asarray(rng.normal(size=3 * G) * 2, jnp.float32)
        np.testing.assert_allclose(grpo.group_advantages(r, G, estimator), tunix_fn(r, G), rtol=1e-5, atol=1e-6)
        assert not np.asarray(grpo.zero_variance_groups(r, G)).any()
    # groups 0 and 2 flat (2.7 x 8 is where tunix's "grpo" turns rounding noise into -0.19 each)
    r = np.concatenate([np.full(8, 2.7), rng.normal(size=8), np.full(8, -1.3)]).astype(np.float32)
    flat = np.asarray(grpo.zero_variance_groups(jnp.asarray(r), 8))
    assert flat.tolist() == [True, False, True]
    adv = np.asarray(grpo.group_advantages(jnp.asarray(r), 8, estimator))
    assert (adv[:8] == 0).all() and (adv[16:] == 0).all()
    np.testing.assert_allclose(adv[8:16], np.asarray(tunix_fn(jnp.asarray(r), 8))[8:16], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        grpo.group_advantages(jnp.zeros(6), 4, estimator)
    with pytest.raises(ValueError):
        grpo.group_advantages(jnp.zeros(6), 1, estimator)


# ---------------------------------------------------------------------------------------------
# log-probs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk,temperature", [(None, 1.0), (5, 0.7)])
def test_completion_logps_equal_full_vocabulary_logps(model, batch, chunk, temperature):
    import jax
    import jax.numpy as jnp
    from tunix.sft import utils as sft_utils

    from gemma_tool_use.training.grpo import objective as grpo

    got = grpo.completion_logps(model, **_inputs(batch), temperature=temperature, chunk=chunk)
    assert got.shape == batch["target_ids"].shape and got.dtype == jnp.float32
    mask = batch["input_mask"]
    logits, _ = model(
        batch["input_tokens"], sft_utils.build_positions_from_mask(mask), None, sft_utils.make_causal_attn_mask(mask)
    )
    assert logits.shape[-1] == 262144 and logits.dtype == jnp.float32
    logp = jax.nn.log_softmax(logits / temperature, axis=-1)
    at = jnp.take_along_axis(logp, batch["target_positions"][..., None], axis=1)
    want = jnp.take_along_axis(at, batch["target_ids"][..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# the loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", AGG_MODES)
def test_one_iteration_gradient_is_minus_advantage_times_grad_logp(model, batch, mode):
    from tunix.rl import common as rl_common

    from gemma_tool_use.training.grpo import objective as grpo

    adv, cmask = batch["advantages"], batch["completion_mask"]

    def surrogate(m):
        loss, aux = grpo.grpo_loss(
            m,
            **_inputs(batch),
            completion_mask=cmask,
            advantages=adv,
            old_logps=None,
            ref_logps=None,
            epsilon=0.2,
            beta=0.0,
            loss_agg_mode=mode,
        )
        return loss

    def direct(m):
        logps = grpo.completion_logps(m, **_inputs(batch))
        return rl_common.aggregate_loss(-adv[:, None] * logps, cmask, mode)

    _assert_grads_close(_lora_grads(surrogate, model), _lora_grads(direct, model))
    # the value too: ratio 1, so the loss is -(aggregated A)
    loss, aux = grpo.grpo_loss(model, **_inputs(batch), completion_mask=cmask, advantages=adv, loss_agg_mode=mode)
    np.testing.assert_allclose(float(aux["ratio_mean"]), 1.0, rtol=1e-6)
    assert float(aux["clip_fraction"]) == 0.0 and float(aux["kl"]) == 0.0


def test_kl_to_an_identical_reference_is_zero_and_changes_no_gradient(model, batch):
    import jax

    from gemma_tool_use.training.grpo import objective as grpo

    ref = jax.lax.stop_gradient(grpo.completion_logps(model, **_inputs(batch)))

    def loss_with(beta, ref_logps):
        def f(m):
            loss, _ = grpo.grpo_loss(
                m,
                **_inputs(batch),
                completion_mask=batch["completion_mask"],
                advantages=batch["advantages"],
                old_logps=None,
                ref_logps=ref_logps,
                beta=beta,
            )
            return loss

        return f

    _, aux = grpo.grpo_loss(
        model,
        **_inputs(batch),
        completion_mask=batch["completion_mask"],
        advantages=batch["advantages"],
        ref_logps=ref,
        beta=0.5,
    )
    assert abs(float(aux["kl"])) < 1e-6 and abs(float(aux["kl_loss"])) < 1e-6
    _assert_grads_close(_lora_grads(loss_with(0.5, ref), model), _lora_grads(loss_with(0.0, None), model))
    with pytest.raises(ValueError, match="ref_logps"):
        grpo.grpo_loss(
            model, **_inputs(batch), completion_mask=batch["completion_mask"], advantages=batch["advantages"], beta=0.1
        )


def test_clipped_tokens_carry_no_gradient_and_epsilon_high_is_honoured():
    import jax
    import jax.numpy as jnp

    from gemma_tool_use.training.grpo import objective as grpo

    # ratios per token (row 0: A>0, row 1: A<0); eps 0.2, eps_high 0.28 -> [0.8, 1.28]
    ratios = np.array([[1.5, 1.25, 0.5, 1.0, 1.35], [0.5, 0.85, 1.5, 0.7, 1.0]], np.float32)
    adv = jnp.asarray([1.0, -2.0])
    mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], jnp.float32)  # row 1, col 4 is padding
    logps = jnp.asarray(np.log(np.random.default_rng(2).uniform(0.05, 0.9, ratios.shape)), jnp.float32)
    old = logps - jnp.log(ratios)

    def run(eps_high):
        f = lambda lp: grpo.policy_loss(
            lp, old, adv, mask, epsilon=0.2, epsilon_high=eps_high, loss_agg_mode="token-mean"
        )
        (loss, aux), g = jax.value_and_grad(f, has_aux=True)(logps)
        return aux, np.asarray(g)

    # A>0 clipped above 1+eps_high; A<0 clipped below 1-eps; the other side keeps its gradient
    aux, g = run(0.28)
    clipped = np.array([[1, 0, 0, 0, 1], [1, 0, 0, 1, 0]], bool)
    assert (g[clipped] == 0).all()
    assert (g[~clipped & (np.asarray(mask) > 0)] != 0).all() and g[1, 4] == 0
    np.testing.assert_allclose(float(aux["clip_fraction"]), 4 / 9, rtol=1e-6)
    np.testing.assert_allclose(float(aux["clip_fraction_high"]), 2 / 9, rtol=1e-6)
    np.testing.assert_allclose(float(aux["clip_fraction_low"]), 2 / 9, rtol=1e-6)
    np.testing.assert_allclose(float(aux["ratio_max"]), 1.5, rtol=1e-5)
    # unclipped tokens: d(-A r / n)/d logp = -A r / n
    n = 9
    for b, k in zip(*np.nonzero(~clipped & (np.asarray(mask) > 0))):
        np.testing.assert_allclose(g[b, k], -float(adv[b]) * ratios[b, k] / n, rtol=1e-5)
    # symmetric eps (0.2): the 1.25 ratio with A>0 is clipped as well
    aux, g = run(None)
    assert g[0, 1] == 0 and np.isclose(float(aux["clip_fraction"]), 5 / 9)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_policy_loss_equals_tunix_grpo_loss_fn(mode):
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from tunix.rl import algo_core
    from tunix.rl import common as rl_common

    from gemma_tool_use.training.grpo import objective as grpo

    class FixedLogits(nnx.Module):  # its logits are a parameter: tunix's loss runs on it as on a model
        def __init__(self, logits):
            self.logits = nnx.Param(logits)

        def __call__(self, tokens, positions=None, cache=None, attention_mask=None):
            return self.logits.value, None

    rng = np.random.default_rng(3)
    B, P, C, V = 4, 3, 5, 11
    prompt = jnp.asarray(rng.integers(1, V, (B, P)), jnp.int32)
    completion = jnp.asarray(rng.integers(1, V, (B, C)), jnp.int32)
    cmask = jnp.asarray(rng.random((B, C)) > 0.25, jnp.float32).at[2].set(0)
    adv = jnp.asarray(rng.normal(size=B), jnp.float32)
    fixed = FixedLogits(jnp.asarray(rng.normal(size=(B, P + C, V)), jnp.float32))

    def our_logps(logits):
        lp = jax.nn.log_softmax(logits[:, P - 1 : P + C - 1], axis=-1)
        return jnp.take_along_axis(lp, completion[..., None], axis=-1)[..., 0]

    lp0 = our_logps(fixed.logits.value)
    old = lp0 + jnp.asarray(rng.normal(scale=0.4, size=(B, C)), jnp.float32)  # ratios spread over the clip
    ref = lp0 + jnp.asarray(rng.normal(scale=0.3, size=(B, C)), jnp.float32)
    cfg = types.SimpleNamespace(
        beta=0.07,
        epsilon=0.2,
        epsilon_high=0.28,
        loss_algo="grpo",
        loss_agg_mode=mode,
        temperature=1.0,
        kl_loss_mode="low_var_kl",
        kl_clamp_value=None,
    )
    example = rl_common.TrainExample(
        prompt_ids=prompt,
        prompt_mask=jnp.ones_like(prompt),
        completion_ids=completion,
        completion_mask=cmask,
        advantages=adv,
        ref_per_token_logps=ref,
        old_per_token_logps=old,
    )
    (t_loss, t_aux), t_grads = nnx.value_and_grad(algo_core.grpo_loss_fn, has_aux=True)(
        fixed, example, cfg, pad_id=0, eos_id=-1
    )

    def ours(logits):
        return grpo.policy_loss(
            our_logps(logits),
            old,
            adv,
            cmask,
            epsilon=0.2,
            epsilon_high=0.28,
            beta=0.07,
            ref_logps=ref,
            loss_agg_mode=mode,
        )

    (loss, aux), grads = jax.value_and_grad(ours, has_aux=True)(fixed.logits.value)
    assert float(aux["clip_fraction"]) > 0
    np.testing.assert_allclose(float(loss), float(t_loss), rtol=1e-5, atol=1e-6)
    for mine, theirs in [
        ("pg_loss", "pg_loss"),
        ("kl", "kl"),
        ("kl_loss", "kl_loss"),
        ("clip_fraction", "pg_clipfrac"),
        ("ratio_mean", "is_ratio/mean"),
        ("ratio_min", "is_ratio/min"),
        ("ratio_max", "is_ratio/max"),
        ("ppo_kl", "ppo_kl"),
    ]:
        np.testing.assert_allclose(float(aux[mine]), float(t_aux[theirs]), rtol=1e-5, atol=1e-6, err_msg=mine)
    np.testing.assert_allclose(np.asarray(grads), np.asarray(t_grads.logits.value), rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# the train step
# ---------------------------------------------------------------------------------------------


def test_train_step_moves_only_the_trainable_parameters(batch):
    import jax
    import optax
    from flax import nnx

    from gemma_tool_use.training.grpo import objective as grpo

    model = _tiny_model(seed=5)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.LoRAParam)

    def snapshot(kind):
        return jax.tree.map(lambda x: np.array(x), jax.tree.leaves(nnx.state(model, kind)))

    lora0, rest0 = snapshot(nnx.LoRAParam), snapshot(nnx.Not(nnx.LoRAParam))
    step = grpo.grpo_train_step(epsilon=0.2, beta=0.0, loss_agg_mode="sequence-mean-token-mean")
    loss, aux = step(model, optimizer, dict(batch))  # mu = 1, no reference: no old/ref log-probs in the batch
    assert np.isfinite(float(loss)) and float(aux["grad_norm"]) > 0
    lora1, rest1 = snapshot(nnx.LoRAParam), snapshot(nnx.Not(nnx.LoRAParam))
    row_delta = np.asarray(model.embedder.row_delta.value)
    assert len(lora1) == len(lora0) > 2 and row_delta.shape[0] == 2
    assert all(not np.array_equal(a, b) for a, b in zip(lora0, lora1)), "every trainable leaf moves"
    assert any(np.array_equal(np.asarray(a), row_delta) for a in lora1)
    assert len(rest0) == len(rest1) > 0
    assert all(np.array_equal(a, b) for a, b in zip(rest0, rest1)), "nothing else moves"

    # a KL reference needs its log-probs in the batch (refused while tracing, before compiling)
    step_kl = grpo.grpo_train_step(epsilon=0.2, epsilon_high=0.3, beta=0.04, loss_agg_mode="token-mean")
    with pytest.raises(ValueError, match="ref_logps"):
        step_kl(model, optimizer, dict(batch))
    with pytest.raises(ValueError, match="unexpected batch keys"):
        step(model, optimizer, dict(batch, target_weights=batch["completion_mask"]))


@pytest.mark.parametrize("mode", ["token-mean", "sequence-mean-token-mean"])
def test_micro_batched_update_equals_the_whole_batch(batch, mode):
    """AccumulatingStep over 2-row micro-batches (one of them padded with a zero-weight row, as the
    stage pads the last one) writes the same parameters as grpo_train_step on all 4 rows, and the
    loss equals the whole batch's."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from gemma_tool_use.training.grpo import objective as grpo

    whole, micro = _tiny_model(seed=7), _tiny_model(seed=7)
    opt_w = nnx.Optimizer(whole, optax.sgd(1.0), wrt=nnx.LoRAParam)
    opt_m = nnx.Optimizer(micro, optax.sgd(1.0), wrt=nnx.LoRAParam)
    loss_w, aux_w = grpo.grpo_train_step(loss_agg_mode=mode)(whole, opt_w, dict(batch))
    # rows {0, 1} and {3, 3 with a zero mask}: row 2 is the dropped one (all-zero completion mask)
    first = {k: v[jnp.asarray([0, 1])] for k, v in batch.items()}
    second = {k: v[jnp.asarray([3, 3])] for k, v in batch.items()}
    second["completion_mask"] = second["completion_mask"].at[1].set(0.0)
    loss_m, aux_m = grpo.AccumulatingStep(loss_agg_mode=mode)(micro, opt_m, [first, second])
    np.testing.assert_allclose(loss_m, float(loss_w), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(aux_m["grad_norm"], float(aux_w["grad_norm"]), rtol=1e-4)
    for a, b in zip(jax.tree.leaves(nnx.state(whole, nnx.LoRAParam)), jax.tree.leaves(nnx.state(micro, nnx.LoRAParam))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)  # f32 summation order
    with pytest.raises(ValueError, match="no micro-batch"):
        grpo.AccumulatingStep(loss_agg_mode=mode)(
            micro, opt_m, [dict(second, completion_mask=0 * second["completion_mask"])]
        )


def test_step_prompts_weight_several_call_prompts_and_stay_a_function_of_the_step():
    from gemma_tool_use.training.grpo.rollouts import Prompt, PromptSet, step_prompts

    def p(i, n_calls):
        return Prompt([i], [], [], [{"name": "f", "args": {"i": i, "k": k}} for k in range(n_calls)], "c")

    ps = PromptSet([p(i, i % 3) for i in range(30)])  # 10 no-call, 10 one-call, 10 two-call prompts
    for step in range(5):
        got = step_prompts(ps, step, 8, 0.25, 0, several_calls_share=0.5)
        assert all(len(x.gold_calls) >= 2 for x in got[3:6])  # 3 of the 6 call prompts drawn from several
        assert sum(not x.gold_calls for x in got) == 2 and all(x.gold_calls for x in got[:6])
        assert got == step_prompts(ps, step, 8, 0.25, 0, several_calls_share=0.5)  # resumable: same prompts
    plain = step_prompts(ps, 3, 8, 0.25, 0)
    assert plain == step_prompts(ps, 3, 8, 0.25, 0, several_calls_share=0.0)
    only_one = PromptSet([p(i, 1) for i in range(10)])  # no several-call prompt: the share is ignored
    assert len(step_prompts(only_one, 0, 4, 0.0, 0, several_calls_share=1.0)) == 4
