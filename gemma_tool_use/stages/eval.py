"""Stage 2: `stage=eval`, BFCL evaluation of any model the framework loads (base weights, or
SFT/GRPO LoRA adapters via model.lora_checkpoint).

The run dir receives what `gemma_tool_use.evaluation.evaluate_model` writes (bfcl/<category>.jsonl,
summary.json, results.md, accuracy.png). Re-running with the same hydra.run.dir resumes:
finished entries are not generated again.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from gemma_tool_use.orchestration.runs import run_dir_of, wandb_group
from gemma_tool_use.utils.mesh import build_mesh, prepare_runtime


def run(cfg: DictConfig) -> float:
    from gemma_tool_use.evaluation import bfcl

    bfcl.check_categories(cfg.eval.categories)  # config error before JAX starts
    prepare_runtime(cfg.tpu)

    from gemma_tool_use.evaluation.evaluate import evaluate_model
    from gemma_tool_use.model.loading import build_model, load_tokenizer_for
    from gemma_tool_use.utils.tracking import Tracker

    run_dir = run_dir_of(cfg)
    mesh = build_mesh(cfg.tpu)
    tokenizer = load_tokenizer_for(cfg.model)
    config_dict = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    with Tracker(run_dir, cfg.tracking, config_dict, name=run_dir.name, group=wandb_group(cfg)) as tracker, mesh:
        model = build_model(cfg.model, mesh, cfg.seed)
        summary = evaluate_model(cfg, model, tokenizer, run_dir, tracker)
    accs = [v["accuracy"] for v in summary["categories"].values()]
    return sum(accs) / len(accs) if accs else 0.0
