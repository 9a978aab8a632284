"""The GRPO math for Stage 5: completion-only log-probs, group advantages, the clipped loss.

Pure, jit-friendly functions over fixed shapes. tunix's `grpo_loss_fn` cannot be used as is:
it computes full-vocabulary logits over prompt + completion and the entropy over
[B, C, 262144] (GRPO_NOTES.md). Here the log-probs come from the project's completion-only
head (`training_loss.chunked_nll`: hidden states gathered at the K target positions, vocabulary
projection in remat'd chunks), and the surrogate mirrors `grpo_loss_fn` line for line (clip,
log-ratio clamp, clip fraction, KL term) while reusing tunix's pure pieces:
`algo_core.compute_advantages` / `compute_drgrpo_advantages` / `compute_rloo_advantages`,
`common.aggregate_loss` and `common.compute_kl_divergence`.

Batch layout (as `rollouts.train_batch` builds it): input_tokens/input_mask [B, L] (prompt +
completion, right-padded), target_positions [B, K] (the position that predicts each completion
token), target_ids [B, K], completion_mask [B, K] (float, 0 on padding and on dropped rows),
advantages [B], optional old_logps / ref_logps [B, K].
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from tunix.rl import algo_core
from tunix.rl import common as rl_common
from tunix.sft import utils as sft_utils

from gemma_tool_use.training import loss as training_loss

ESTIMATORS = {
    "grpo": algo_core.compute_advantages,  # (r - mean) / (std(ddof=1) + 1e-6) per group
    "drgrpo": algo_core.compute_drgrpo_advantages,  # r - mean per group (no std normalisation)
    "rloo": algo_core.compute_rloo_advantages,  # r - mean of the other G-1 rewards
}
# tunix.rl.common.aggregate_loss's modes ("sequence-mean-token-scale" divides each sequence's
# sum by K, the padded completion width, i.e. Dr. GRPO's constant normaliser).
LOSS_AGG_MODES = (
    "token-mean",
    "sequence-mean-token-mean",
    "sequence-mean-token-scale",
    "seq-mean-token-sum",
    "sequence-mean-token-sum-norm",
)
LOG_RATIO_CLAMP = 20.0  # as tunix's grpo_loss_fn: exp() of the log-ratio never overflows
BATCH_KEYS = (
    "input_tokens",
    "input_mask",
    "target_positions",
    "target_ids",
    "completion_mask",
    "advantages",
    "old_logps",
    "ref_logps",
)


# ----------------------------------------------------------------------------------------------
# 1. Completion-only log-probs
# ----------------------------------------------------------------------------------------------


def completion_logps(
    model, input_tokens, input_mask, target_positions, target_ids, *, temperature: float = 1.0, chunk: int | None = None
):
    """log p(target_ids[b, k] | input_tokens[b, :target_positions[b, k] + 1]) as float32 [B, K].

    Never builds full-vocabulary logits at prompt positions: the model returns final-norm hidden
    states at the K target positions and `training_loss.chunked_nll` projects them in chunks. The
    hidden states are cast to float32 first, so the tied-head logits (and the log-probs) are
    float32 even for a bfloat16 model (a bf16 logit of 20 is only good to ~0.06, i.e. a 6%
    error on a policy ratio; XLA on CPU keeps the f32 product anyway, so the cast adds no work
    there; measured: experiments/grpo_from_sft_short_r3/README.md). `temperature` scales the
    logits as sampling did (logits / T is (h / T) @ W^T: exact); 1.0 leaves them alone. Padding
    slots hold finite garbage: mask them."""
    positions = sft_utils.build_positions_from_mask(input_mask)
    attention_mask = sft_utils.make_causal_attn_mask(input_mask)
    hidden, _ = model(
        input_tokens, positions, None, attention_mask, logits_at=target_positions, return_hidden=True, causal_mask=True
    )
    hidden = hidden.astype(jnp.float32)
    if temperature not in (0.0, 1.0):  # tunix's convention: T = 0 (greedy) means unscaled
        hidden = hidden / temperature
    return -training_loss.chunked_nll(model.embedder, hidden, target_ids, chunk).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# 2. Group advantages
# ----------------------------------------------------------------------------------------------


def _check_groups(rewards, num_generations: int) -> None:
    if rewards.ndim != 1 or rewards.shape[0] % num_generations:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {num_generations}")
    if num_generations < 2:
        raise ValueError(f"num_generations={num_generations}: a group needs at least 2 completions")


def zero_variance_groups(rewards, num_generations: int):
    """bool [N / G]: groups whose G rewards are all exactly equal (no learning signal)."""
    rewards = jnp.asarray(rewards, jnp.float32)
    _check_groups(rewards, num_generations)
    grouped = rewards.reshape(-1, num_generations)
    return jnp.all(grouped == grouped[:, :1], axis=1)


def group_advantages(rewards, num_generations: int, estimator: str = "grpo"):
    """Per-completion advantages [N] from rewards [N] (N = groups x G, each group contiguous),
    by tunix's estimator of that name. One deliberate difference: zero-variance groups get
    exactly 0. tunix's "grpo" divides float32 rounding noise of the group mean by (0 + 1e-6):
    eight equal rewards of 2.7 come out at -0.19 each, sixteen at -0.32."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"advantage estimator {estimator!r}: expected one of {sorted(ESTIMATORS)}")
    rewards = jnp.asarray(rewards, jnp.float32)
    _check_groups(rewards, num_generations)
    adv = ESTIMATORS[estimator](rewards, num_generations)
    flat = jnp.repeat(zero_variance_groups(rewards, num_generations), num_generations)
    return jnp.where(flat, 0.0, adv).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# 3. The clipped surrogate
# ----------------------------------------------------------------------------------------------


def _masked_mean(x, mask):
    mask = mask.astype(jnp.float32)
    return jnp.sum(x.astype(jnp.float32) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def policy_loss(
    logps,
    old_logps,
    advantages,
    completion_mask,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logps=None,
    loss_agg_mode: str = "sequence-mean-token-mean",
):
    """PPO-clipped policy-gradient loss as tunix's grpo_loss_fn computes it (no dual clip, no
    entropy), from per-token log-probs [B, K]. Returns (loss, aux) with scalar aux:
    pg_loss, kl (token-mean KL to the reference; 0 without one), kl_loss (aggregated like the
    loss), clip_fraction (share of completion tokens whose clipped term is the active one, i.e.
    that carry no gradient), clip_fraction_low/_high (those below 1-eps with A<0 / above
    1+eps_high with A>0), ratio_mean/_min/_max, ppo_kl (mean of old - new log-prob)."""
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode={loss_agg_mode!r}: expected one of {LOSS_AGG_MODES}")
    if beta and ref_logps is None:
        raise ValueError(f"beta={beta} needs reference log-probs (ref_logps)")
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    logps = logps.astype(jnp.float32)
    old_logps = old_logps.astype(jnp.float32)
    mask = completion_mask.astype(jnp.float32)
    adv = advantages.astype(jnp.float32)
    adv = adv if adv.ndim == 2 else adv[:, None]

    log_ratio = logps - old_logps
    ppo_kl = _masked_mean(-log_ratio, mask)
    ratio = jnp.exp(jnp.clip(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    pg_loss_1 = -adv * ratio
    pg_loss_2 = -adv * jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon_high)
    per_token_loss = jnp.maximum(pg_loss_1, pg_loss_2)
    clipped = pg_loss_2 > pg_loss_1
    loss = rl_common.aggregate_loss(per_token_loss, mask, loss_agg_mode)
    pg_loss = loss

    kl_mean = kl_loss = jnp.float32(0.0)
    if ref_logps is not None:
        kl = rl_common.compute_kl_divergence(logps, ref_logps, "low_var_kl")
        kl_mean = _masked_mean(kl, mask)
        kl_loss = rl_common.aggregate_loss(kl, mask, loss_agg_mode)
        if beta:
            loss = loss + beta * kl_loss

    adv_b = jnp.broadcast_to(adv, mask.shape)
    aux = {
        "pg_loss": pg_loss,
        "kl": kl_mean,
        "kl_loss": kl_loss,
        "clip_fraction": _masked_mean(clipped, mask),
        "clip_fraction_low": _masked_mean(clipped & (adv_b < 0), mask),
        "clip_fraction_high": _masked_mean(clipped & (adv_b > 0), mask),
        "ratio_mean": _masked_mean(ratio, mask),
        "ratio_min": jnp.min(jnp.where(mask > 0, ratio, jnp.inf)),
        "ratio_max": jnp.max(jnp.where(mask > 0, ratio, -jnp.inf)),
        "ppo_kl": ppo_kl,
    }
    return loss, aux


# ----------------------------------------------------------------------------------------------
# 4. The loss on the model, 5. the train step
# ----------------------------------------------------------------------------------------------


def grpo_loss(
    model,
    input_tokens,
    input_mask,
    target_positions,
    target_ids,
    completion_mask,
    advantages,
    old_logps=None,
    ref_logps=None,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    loss_agg_mode: str = "sequence-mean-token-mean",
    temperature: float = 1.0,
    chunk: int | None = None,
):
    """completion_logps + policy_loss, for nnx.value_and_grad(..., argnums=nnx.DiffState(0,
    nnx.LoRAParam), has_aux=True). old_logps None (one update per rollout, mu = 1) means the
    current log-probs under stop_gradient: ratio 1, gradient -A * grad(logp) aggregated."""
    logps = completion_logps(
        model, input_tokens, input_mask, target_positions, target_ids, temperature=temperature, chunk=chunk
    )
    old = jax.lax.stop_gradient(logps) if old_logps is None else old_logps
    ref = None if ref_logps is None else jax.lax.stop_gradient(ref_logps)
    return policy_loss(
        logps,
        old,
        advantages,
        completion_mask,
        epsilon=epsilon,
        epsilon_high=epsilon_high,
        beta=beta,
        ref_logps=ref,
        loss_agg_mode=loss_agg_mode,
    )


def loss_options(**given) -> dict:
    """The GRPO loss options: grpo_loss's keyword-only parameters (their defaults there), as given,
    typed and checked. The step builders below take exactly these."""
    defaults = {
        name: p.default for name, p in inspect.signature(grpo_loss).parameters.items() if p.kind is p.KEYWORD_ONLY
    }
    unknown = set(given) - set(defaults)
    if unknown:
        raise TypeError(f"unknown GRPO loss options {sorted(unknown)}; expected {sorted(defaults)}")
    opts = {**defaults, **given}
    if opts["loss_agg_mode"] not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode={opts['loss_agg_mode']!r}: expected one of {LOSS_AGG_MODES}")
    for name in ("epsilon", "beta", "temperature"):
        opts[name] = float(opts[name])
    if opts["epsilon_high"] is not None:
        opts["epsilon_high"] = float(opts["epsilon_high"])
    return opts


def _step_fns(**options):
    hyper = loss_options(**options)
    beta = hyper["beta"]

    def grads_of(model, batch):
        unknown = set(batch) - set(BATCH_KEYS)
        if unknown:
            raise ValueError(f"unexpected batch keys {sorted(unknown)}; expected {BATCH_KEYS}")
        if beta and batch.get("ref_logps") is None:
            raise ValueError(f"beta={beta} needs batch['ref_logps']")
        loss_fn = functools.partial(grpo_loss, **hyper)  # nnx transforms take positional arguments only
        grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.LoRAParam), has_aux=True)
        (loss, aux), grads = grad_fn(model, *(batch.get(k) for k in BATCH_KEYS))
        return loss, aux, grads

    return grads_of


def grpo_train_step(**options):
    """An nnx.jit-ed `(model, optimizer, batch) -> (loss, aux)` that applies one update to the
    trainable parameters (nnx.LoRAParam: LoRA adapters and trainable embedding rows) through
    `optimizer = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)` (flax 0.12:
    optimizer.update(model, grads)). batch keys: BATCH_KEYS, old_logps and ref_logps optional
    (absent or None). aux adds grad_norm. Recompiles only on a new shape or a new set of keys.
    `options`: the loss options (`loss_options`: epsilon, epsilon_high, beta, loss_agg_mode,
    temperature, chunk)."""
    grads_of = _step_fns(**options)

    def step(model, optimizer, batch):
        loss, aux, grads = grads_of(model, batch)
        optimizer.update(model, grads)
        return loss, {**aux, "grad_norm": optax.global_norm(grads)}

    return nnx.jit(step)


def micro_batch_weight(completion_mask, loss_agg_mode: str) -> float:
    """A micro-batch's share of the whole batch's loss normaliser, before dividing by the total:
    its completion tokens for "token-mean", else its rows with any completion token (tunix's
    aggregate_loss divides the other modes by the non-empty rows)."""
    import numpy as np

    m = np.asarray(completion_mask, np.float32)
    return float(m.sum()) if loss_agg_mode == "token-mean" else float((m.sum(-1) > 0).sum())


class AccumulatingStep:
    """One GRPO update over micro-batches: the gradient of each (a jitted grad step), weighted by
    its share of the loss normaliser (`micro_batch_weight`), summed, then one optimizer update.
    Equal, up to float summation order, to `grpo_train_step` on the whole batch, so the rollout
    batch size is not bounded by what one forward/backward fits in memory (a full rollout batch
    does not fit the 24 GiB dev machine at once: experiments/grpo_from_sft_short/README.md).
    Ratio/KL/clip statistics are weighted means; ratio_min/_max the extremes."""

    def __init__(self, **options):  # the loss options of `loss_options`
        options = loss_options(**options)
        self.loss_agg_mode = options["loss_agg_mode"]
        self._grads = nnx.jit(_step_fns(**options))
        self._scale_add = jax.jit(lambda acc, g, w: jax.tree.map(lambda a, b: a + w * b, acc, g))

        def apply(model, optimizer, grads):
            optimizer.update(model, grads)
            return optax.global_norm(grads)

        self._apply = nnx.jit(apply)

    def __call__(self, model, optimizer, micro_batches):
        weights = [micro_batch_weight(b["completion_mask"], self.loss_agg_mode) for b in micro_batches]
        total = sum(weights)
        if total <= 0:
            raise ValueError("no micro-batch has a completion token to train on")
        acc, loss, stats = None, 0.0, {}
        for b, w in zip(micro_batches, weights):
            if w == 0:
                continue
            share = w / total
            l, aux, grads = self._grads(model, b)
            acc = jax.tree.map(lambda g: share * g, grads) if acc is None else self._scale_add(acc, grads, share)
            loss += share * float(l)
            for k, v in aux.items():
                v = float(v)
                if k == "ratio_min":
                    stats[k] = min(stats.get(k, v), v)
                elif k == "ratio_max":
                    stats[k] = max(stats.get(k, v), v)
                else:
                    stats[k] = stats.get(k, 0.0) + share * v
        stats["grad_norm"] = float(self._apply(model, optimizer, acc))
        return loss, stats
