"""Stage 2: `stage=eval`, BFCL evaluation of any model the framework loads (base weights, or
SFT/GRPO LoRA adapters via model.lora_checkpoint).

The run dir receives what `gemma_tool_use.evaluation.evaluate_model` writes (bfcl/<category>.jsonl,
summary.json, results.md, accuracy.png). Re-running with the same hydra.run.dir resumes:
finished entries are not generated again.
"""

from __future__ import annotations

from omegaconf import DictConfig

from gemma_tool_use.orchestration.stage_context import open_stage


def run(cfg: DictConfig) -> float:
    with open_stage(cfg) as ctx:  # eval.categories were checked by preflight, before JAX started
        from gemma_tool_use.evaluation.evaluate import evaluate_model
        from gemma_tool_use.model.loading import build_model

        model = build_model(cfg.model, ctx.mesh, cfg.seed)
        summary = evaluate_model(cfg, model, ctx.tokenizer, ctx.run_dir, ctx.tracker)
    accs = [v["accuracy"] for v in summary["categories"].values()]
    return sum(accs) / len(accs) if accs else 0.0
