"""Run directories, the handoff of a checkpoint from one stage to the next, and W&B grouping.

Every stage runner asks this module where its run lives (`run_dir_of`), which W&B group it
belongs to (`wandb_group`), which checkpoint it starts from (`resolve_init_from`, then
`adopt_start_model` for that checkpoint's adapter shape) and, when serving or exporting, the
model's name (`served_model_name`), so that stages never import each other. Nothing here imports
JAX: a bad handoff fails before JAX loads.

A handoff is explicit, never a search by similarity: `train.init_from` is a run dir or a
checkpoint path, or the exact name of an experiment (`experiments/<name>.yaml`) that has exactly
one run under outputs/ or multirun/. A checkpoint whose model architecture differs from the
configured one is refused (model/checkpoints.py; a tiny smoke run is never the start of a
real-model stage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gemma_tool_use.model.checkpoints import (
    HandoffError,
    check_same_architecture,
    run_model_config,
)

# Where Hydra puts runs (conf/config.yaml: hydra.run.dir / hydra.sweep.dir), relative to the cwd.
RUN_ROOTS = (Path("outputs"), Path("multirun"))


def run_dir_of(cfg) -> Path:
    """The Hydra output dir of this job; `cfg.run_dir` (or outputs/manual) outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # called outside a Hydra app (tests, notebooks)
        return Path(cfg.get("run_dir") or "outputs/manual")


def wandb_group(cfg) -> str | None:
    """`tracking.group`, else the sweep dir's name for a multirun job (its jobs share a group)."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.tracking.group:
        return cfg.tracking.group
    try:
        hc = HydraConfig.get()
        if str(hc.mode) == "RunMode.MULTIRUN":
            return Path(hc.sweep.dir).name
    except ValueError:
        pass
    return None


def _has_checkpoints(run: Path) -> bool:
    return any(c.name.isdigit() for c in (run / "checkpoints").glob("*"))


def runs_of_experiment(name: str, roots=RUN_ROOTS) -> list[Path]:
    """Run dirs whose command line selected exactly `experiments=<name>`."""
    runs = []
    for base in roots:
        for overrides in Path(base).glob("**/.hydra/overrides.yaml"):
            try:
                items = yaml.safe_load(overrides.read_text()) or []
            except (OSError, yaml.YAMLError):
                continue
            if f"experiments={name}" in items:
                runs.append(overrides.parent.parent)
    return sorted(runs)


def resolve_init_from(value: str, model_cfg: Any = None, key: str = "train.init_from", roots=RUN_ROOTS) -> str:
    """A checkpoint path or run dir as given, or the one run of the experiment named exactly
    `value`. With `model_cfg`, a checkpoint of another architecture is refused."""
    p = Path(value).expanduser()
    if p.exists():
        found = p
    elif "/" in value or value.startswith("."):
        raise HandoffError(f"{key}={value!r}: no such file or directory")
    else:
        runs = runs_of_experiment(value, roots)
        finished = [r for r in runs if _has_checkpoints(r)]
        if not finished:
            where = " or ".join(f"{r}/" for r in roots)
            seen = f" ({len(runs)} run(s) without checkpoints)" if runs else ""
            raise HandoffError(
                f"{key}={value!r}: not a path, and no run of experiment '{value}' with checkpoints "
                f"under {where}{seen}; give a run dir or checkpoint path, or null to start from the base"
            )
        if len(finished) > 1:
            raise HandoffError(
                f"{key}={value!r}: {len(finished)} runs of experiment '{value}' have checkpoints ("
                + ", ".join(map(str, finished))
                + "); give the run dir to use"
            )
        found = finished[0]
    if model_cfg is not None:
        check_same_architecture(found, model_cfg, key)
    return str(found)


def adopt_start_model(cfg, init_from: str, run_dir: Path) -> None:
    """A stage that continues a checkpoint trains adapters of the checkpoint's shape (its LoRA
    settings and trained embedding rows, whatever model.lora / model.train_token_ids say): write
    that shape into cfg and into the run's .hydra/config.yaml, so that the run dir, loaded later as
    model.lora_checkpoint, describes its own checkpoints."""
    from omegaconf import OmegaConf, open_dict

    start = run_model_config(init_from)
    if not start:
        return
    with open_dict(cfg):
        if "lora" in start:
            cfg.model.lora = OmegaConf.merge(cfg.model.lora, start["lora"])
        cfg.model.train_token_ids = list(start.get("train_token_ids") or [])
    saved = Path(run_dir) / ".hydra" / "config.yaml"
    if saved.is_file():
        doc = yaml.safe_load(saved.read_text()) or {}
        doc.setdefault("model", {})["lora"] = OmegaConf.to_container(cfg.model.lora, resolve=True)
        doc["model"]["train_token_ids"] = list(cfg.model.train_token_ids)
        saved.write_text(yaml.safe_dump(doc, sort_keys=False))


def served_model_name(cfg) -> str:
    """The id a served or exported model goes by: serve.model_name, else <model>[+<run>]."""
    if cfg.serve.model_name:
        return str(cfg.serve.model_name)
    name = str(cfg.model.name)
    if cfg.model.lora_checkpoint:
        ckpt = Path(str(cfg.model.lora_checkpoint)).expanduser()
        tail = ckpt.parent.name if ckpt.name in ("adapter", "checkpoints") else ckpt.name
        name += f"+{tail}"
    return name
