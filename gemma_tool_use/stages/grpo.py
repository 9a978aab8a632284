"""Stage 5: GRPO with tool-call rewards (`stage=grpo`).

Starts from an SFT run (`train.init_from`: a run dir, checkpoint or exact experiment name) and
trains the same parameters SFT trained: the LoRA adapters and the turn-marker embedding rows.
Each step: a seeded set of prompts from the training mix (a share of them with no fitting tool),
G sampled completions each from the *current* policy (the generator is re-synced after every
update), rewards as plain functions (gemma_tool_use/rewards.py, each logged on its own), group
advantages (tunix's GRPO / Dr.GRPO / RLOO), groups with equal rewards dropped and counted, and a
clipped policy-gradient update on completion-only log-probs (gemma_tool_use/grpo.py). The KL
reference, when grpo.beta > 0, is the starting SFT policy kept as its small adapter state.

Why not tunix's GRPOLearner: its rollout and its log-probs compute full-vocabulary logits at
every prompt position (on an SFT step of this model, that loss is slower and needs more
memory; measured: experiments/train_step_bench/README.md), and its
RLCluster keeps process-wide metrics listeners; this loop reuses tunix's pure functions
(advantages, aggregation, KL) and its checkpoint manager with the project's Generator and head.

Run dir: checkpoints/<step>/ (the SFT layout: `model.lora_checkpoint=<run dir>`, `stage=eval`
and `stage=predict` load it), metrics.jsonl (one line per step), samples.jsonl (completions with
their rewards), probe.jsonl, grpo_summary.json, reward_curve.png, bfcl_eval/ (after training).
Re-running with the same hydra.run.dir resumes with the same prompt order.
"""

from __future__ import annotations

import json
import logging

from omegaconf import DictConfig, open_dict

from gemma_tool_use.orchestration.runs import adopt_start_model, resolve_init_from
from gemma_tool_use.orchestration.stage_context import (
    draw_curve,
    export_trained_adapter,
    finish_training,
    open_stage,
    open_tracker,
)

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    init_from = resolve_init_from(cfg.train.init_from, cfg.model)  # before JAX: explicit and same architecture
    with open_stage(cfg, tracker=False) as ctx:
        from gemma_tool_use.model.loading import build_model
        from gemma_tool_use.training.curves import plot_grpo_curves
        from gemma_tool_use.training.grpo.grpo_loop import step_times, train
        from gemma_tool_use.training.grpo.rewards import build_reward_fns

        prompt_set, probe, counts = _prompts(ctx)
        reward_fns = build_reward_fns(cfg.reward)
        with open_dict(cfg):
            cfg.model.lora_checkpoint = init_from
        adopt_start_model(cfg, init_from, ctx.run_dir)  # the run dir describes the adapters it trains
        with open_tracker(ctx) as ctx.tracker:
            model = build_model(cfg.model, ctx.mesh, cfg.seed)
            summary = {
                "stage": "grpo",
                "init_from": init_from,
                "prompts": counts,
                **train(cfg, model, ctx.tokenizer, prompt_set, probe, reward_fns, ctx.run_dir, ctx.tracker),
            }
            summary["adapter"] = export_trained_adapter(ctx, model, summary["steps"])
            draw_curve(summary, "reward_curve", lambda: plot_grpo_curves(ctx.run_dir, ctx.run_dir / "reward_curve.png"))
            summary |= step_times(ctx.run_dir / "metrics.jsonl")
            finish_training(ctx, model, summary, summary_file="grpo_summary.json", step=summary["steps"])
    probe_path = ctx.run_dir / "probe.jsonl"
    probe_rows = [json.loads(x) for x in probe_path.read_text().splitlines()] if probe else []
    return probe_rows[-1]["probe/reward_mean"] if probe_rows else 0.0


def _prompts(ctx):
    """(the training prompt set, the probe of held-out-tool rows, their counts) from the data group."""
    from gemma_tool_use.format.render import DEFAULT_TOOL_SYSTEM_PROMPT
    from gemma_tool_use.training.grpo.rollouts import (
        build_prompt_set,
        probe_prompts,
        prompt_rows,
    )

    cfg, g = ctx.cfg, ctx.cfg.grpo
    train_rows, val_rows = prompt_rows(cfg.data, int(cfg.seed))
    system_prompt = cfg.data.system_prompt if cfg.data.system_prompt is not None else DEFAULT_TOOL_SYSTEM_PROMPT
    kw = dict(system_prompt=system_prompt, max_prompt_len=int(g.max_prompt_len), categories=set(g.categories))
    prompt_set = build_prompt_set(train_rows, ctx.tokenizer, **kw)
    held_out = build_prompt_set(val_rows, ctx.tokenizer, **kw)  # validation rows: tools never trained on
    probe = probe_prompts(held_out, int(g.probe_size), float(g.no_call_share), int(cfg.seed))
    calls, no_calls = prompt_set.split_by_gold()
    log.info(
        "GRPO prompts: %d with gold calls, %d abstention; probe %d held-out-tool rows; left out %s",
        len(calls),
        len(no_calls),
        len(probe),
        dict(prompt_set.dropped),
    )
    return prompt_set, probe, {"calls": len(calls), "no_call": len(no_calls), "probe": len(probe)}
