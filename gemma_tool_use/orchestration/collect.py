"""`python -m gemma_tool_use.report collect`: the small artifacts of a run or a pipeline dir copied
into experiments/<name>/ (summaries, curves, BFCL entries, data card, config and the portable
adapter; never base weights, checkpoints or optimizer state).

A collected pipeline dir keeps the pipeline's layout: copied back under outputs/, the same
command continues the chain after the recorded stages.
"""

from __future__ import annotations

from pathlib import Path

from gemma_tool_use.orchestration.pipeline_state import STATE, read_state
from gemma_tool_use.utils.files import write_json_atomic

# What a run leaves that belongs in experiments/<name>/: small, text or plots, and the portable
# adapter (LoRA + trained rows, a few MB: a later session continues from it, a user runs it);
# never base weights or optimizer state.
COLLECTED = [
    "adapter/adapter.safetensors",
    "adapter/adapter_config.json",
    "train_summary.json",
    "grpo_summary.json",
    "samples.jsonl",
    "probe.jsonl",
    "reward_curve.png",
    "metrics.jsonl",
    "loss_curve.png",
    "data_card.md",
    "data_card.json",
    "summary.json",
    "results.md",
    "accuracy.png",
    "bfcl_eval/summary.json",
    "bfcl_eval/results.md",
    "bfcl_eval/accuracy.png",
    "bfcl_eval/bfcl/*.jsonl",
    "bfcl/*.jsonl",
    # a pipeline stage's held-out tool-calling set (heldout_scoring): the record the pipeline summary
    # reads back, the decisions and each prompt's raw output
    "heldout/heldout.json",
    "heldout/decisions.json",
    "heldout/predictions.jsonl",
    ".hydra/overrides.yaml",
]


def collect_run(run_dir: str | Path, dest: str | Path) -> list[Path]:
    """Copy a run's small artifacts (list above) into `dest`, plus its composed config as
    config_resolved.yaml; absolute paths to the run dir inside JSON files become <run dir>."""
    import shutil

    run_dir, dest = Path(run_dir).resolve(), Path(dest)
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no .hydra/config.yaml)")
    copied = []
    for pattern in COLLECTED:
        for src in sorted(run_dir.glob(pattern)):
            out = dest / src.relative_to(run_dir)
            if out.name == "overrides.yaml":
                out = dest / "overrides.yaml"
            out.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix == ".json":
                out.write_text(src.read_text().replace(str(run_dir), "<run dir>"))
            else:
                shutil.copyfile(src, out)
            copied.append(out)
    shutil.copyfile(run_dir / ".hydra" / "config.yaml", dest / "config_resolved.yaml")
    copied.append(dest / "config_resolved.yaml")
    return copied


def collect_pipeline(root: str | Path, dest: str | Path) -> list[Path]:
    """A pipeline dir's state, summary and each stage's small artifacts (collect_run), laid out as
    the pipeline dir itself: copied back to a pipeline dir (`cp -r <dest> outputs/pipeline/<name>`),
    the same command continues the chain after the recorded stages."""
    root, dest = Path(root).resolve(), Path(dest)
    if not (root / STATE).is_file():
        raise FileNotFoundError(f"{root} is not a pipeline directory (no {STATE})")
    state = read_state(root)  # paths relative to the pipeline dir
    dest.mkdir(parents=True, exist_ok=True)
    write_json_atomic(dest / STATE, state)
    copied = [dest / STATE]
    for name in ("pipeline_summary.md", "pipeline_summary.json", "pipeline_summary.png"):
        if (root / name).is_file():
            out = dest / name
            out.write_bytes((root / name).read_bytes().replace(str(root).encode() + b"/", b""))
            copied.append(out)
    for name, rec in state.get("stages", {}).items():
        stage_dir = root / rec.get("dir", name)
        if (stage_dir / ".hydra" / "config.yaml").is_file():
            copied += collect_run(stage_dir, dest / name)
    return copied
