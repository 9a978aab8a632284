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
every prompt position (measured 2.0x slower and +2.9 GiB on an SFT step of this model), and its
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
import time

from omegaconf import DictConfig, OmegaConf

from gemma_tool_use.orchestration.runs import (
    adopt_start_model,
    resolve_init_from,
    run_dir_of,
    wandb_group,
)
from gemma_tool_use.training.grpo.grpo_loop import step_times, train
from gemma_tool_use.utils.mesh import build_mesh, prepare_runtime

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    init_from = resolve_init_from(cfg.train.init_from, cfg.model)  # before JAX: explicit and same architecture
    prepare_runtime(cfg.tpu)

    from omegaconf import open_dict

    from gemma_tool_use.format.render import DEFAULT_TOOL_SYSTEM_PROMPT
    from gemma_tool_use.model.loading import build_model, load_tokenizer_for
    from gemma_tool_use.training.grpo.rewards import build_reward_fns
    from gemma_tool_use.training.grpo.rollouts import (
        build_prompt_set,
        probe_prompts,
        prompt_rows,
    )
    from gemma_tool_use.utils.tracking import Tracker

    run_dir = run_dir_of(cfg)
    t_start = time.time()
    mesh = build_mesh(cfg.tpu)
    tokenizer = load_tokenizer_for(cfg.model)
    g = cfg.grpo
    train_rows, val_rows = prompt_rows(cfg.data, int(cfg.seed))
    system_prompt = cfg.data.system_prompt if cfg.data.system_prompt is not None else DEFAULT_TOOL_SYSTEM_PROMPT
    kw = dict(system_prompt=system_prompt, max_prompt_len=int(g.max_prompt_len), categories=set(g.categories))
    prompt_set = build_prompt_set(train_rows, tokenizer, **kw)
    held_out = build_prompt_set(val_rows, tokenizer, **kw)  # validation rows: tools never trained on
    probe = probe_prompts(held_out, int(g.probe_size), float(g.no_call_share), int(cfg.seed))
    calls, no_calls = prompt_set.split_by_gold()
    log.info("GRPO prompts: %d with gold calls, %d abstention; probe %d held-out-tool rows; left out %s",
             len(calls), len(no_calls), len(probe), dict(prompt_set.dropped))
    reward_fns = build_reward_fns(cfg.reward)

    with open_dict(cfg):
        cfg.model.lora_checkpoint = init_from
    adopt_start_model(cfg, init_from, run_dir)  # the run dir describes the adapters it trains
    config_dict = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    with Tracker(run_dir, cfg.tracking, config_dict, name=run_dir.name, group=wandb_group(cfg)) as tracker, mesh:
        model = build_model(cfg.model, mesh, cfg.seed)
        summary = {"stage": "grpo", "init_from": init_from, "prompts": {"calls": len(calls), "no_call": len(no_calls),
                                                                        "probe": len(probe)},
                   **train(cfg, model, tokenizer, prompt_set, probe, reward_fns, run_dir, tracker)}
        from gemma_tool_use.model.adapters import export_adapter
        from gemma_tool_use.utils.git import git_commit

        summary["adapter"] = str(export_adapter(model, run_dir / "adapter", cfg.model, step=summary["steps"],
                                                source=str(run_dir), commit=git_commit()))
        try:  # a plot is a convenience: never lose a finished run over it
            from gemma_tool_use.training.curves import plot_grpo_curves

            summary["reward_curve"] = str(plot_grpo_curves(run_dir, run_dir / "reward_curve.png"))
        except Exception as e:  # noqa: BLE001
            log.warning("could not draw the reward curve: %s", e)
        summary |= step_times(run_dir / "metrics.jsonl")
        if cfg.eval.run_after_training:
            from gemma_tool_use.evaluation.evaluate import evaluate_model

            # the training figures are on disk before BFCL starts: a failed or cut eval loses none
            (run_dir / "grpo_summary.json").write_text(json.dumps(summary, indent=2))
            bfcl_summary = evaluate_model(cfg, model, tokenizer, run_dir / "bfcl_eval", tracker, step=summary["steps"],
                                          model_label=f"{cfg.model.name} + {run_dir / 'adapter'} (step {summary['steps']})")
            summary["bfcl_categories"] = {c: v["accuracy"] for c, v in bfcl_summary["categories"].items()}
        summary["total_seconds"] = round(time.time() - t_start, 1)
        (run_dir / "grpo_summary.json").write_text(json.dumps(summary, indent=2))
        tracker.summary({k: v for k, v in summary.items() if not isinstance(v, dict)})
        log.info("done: %s", json.dumps(summary))
    probe_rows = [json.loads(x) for x in (run_dir / "probe.jsonl").read_text().splitlines()] if probe else []
    return probe_rows[-1]["probe/reward_mean"] if probe_rows else 0.0
