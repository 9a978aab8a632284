"""The optimizer of the training stages (SFT and GRPO): AdamW with optional global-norm gradient
clipping, and a linear warmup into a cosine decay (or a constant rate). The current learning rate
rides in the optimizer state, so it is logged with each step.
"""

from __future__ import annotations

import optax


def learning_rate_schedule(optim_cfg, max_steps: int) -> optax.Schedule:
    warmup = min(int(optim_cfg.warmup_steps), max(max_steps - 1, 0))
    peak = float(optim_cfg.lr)
    if optim_cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        after = optax.cosine_decay_schedule(peak, max(max_steps - warmup, 1), alpha=float(optim_cfg.min_lr_ratio))
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(
    optim_cfg, max_steps: int, start_step: int = 0
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule by run step). A run taken up at `start_step` (train.start_step) has a
    fresh optimizer state whose count starts at 0, so its rate is read `start_step` steps on."""
    if optim_cfg.name != "adamw":
        raise ValueError(f"optim.name={optim_cfg.name!r}: only 'adamw' is supported")
    schedule = learning_rate_schedule(optim_cfg, max_steps)
    by_count = (lambda count: schedule(count + start_step)) if start_step else schedule

    def chain(learning_rate):
        parts = [optax.adamw(learning_rate, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay)]
        if optim_cfg.grad_clip_norm and optim_cfg.grad_clip_norm > 0:
            parts.insert(0, optax.clip_by_global_norm(optim_cfg.grad_clip_norm))
        return optax.chain(*parts)

    # inject_hyperparams exposes the current learning rate in the optimizer state (logged).
    return optax.inject_hyperparams(chain)(learning_rate=by_count), schedule
