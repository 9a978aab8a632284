"""Run directories, the handoff of a checkpoint from one stage to the next, and W&B grouping.

Every stage runner asks this module where its run lives (`run_dir_of`), which W&B group it
belongs to (`wandb_group`) and which checkpoint it starts from (`resolve_init_from`), so that
stages never import each other. Nothing here imports JAX: a bad handoff fails before JAX loads.

A handoff is explicit, never a search by similarity: `train.init_from` is a run dir or a
checkpoint path, or the exact name of an experiment (`experiments/<name>.yaml`) that has exactly
one run under outputs/ or multirun/. A checkpoint whose model architecture differs from the
configured one is refused (a tiny smoke run is never the start of a real-model stage).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from gemma_tool_use.errors import UserError

# Where Hydra puts runs (conf/config.yaml: hydra.run.dir / hydra.sweep.dir), relative to the cwd.
RUN_ROOTS = (Path("outputs"), Path("multirun"))


class HandoffError(UserError, ValueError):
    """The checkpoint a stage should start from is missing, ambiguous or of another model."""


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


def git_commit() -> str | None:
    """The commit of the code that runs (recorded at the start of a run, not when it ends)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_root_of(path: Path) -> Path | None:
    """The run dir (the one holding .hydra/) of a run dir, its checkpoints/ dir or checkpoints/<step>."""
    for p in (path, path.parent, path.parent.parent):
        if (p / ".hydra" / "config.yaml").is_file():
            return p
    return None


def run_model_config(path: str | Path) -> dict | None:
    """The `model` section a checkpoint was trained with (from its run's .hydra/config.yaml, or a
    portable adapter's adapter_config.json), or None when the checkpoint does not sit in a run
    dir. Plain YAML/JSON read: no Hydra, no JAX."""
    from gemma_tool_use.adapters import is_adapter_dir, read_adapter_config

    if is_adapter_dir(path):  # a portable adapter carries its own model section
        return read_adapter_config(path)["model"]
    root = run_root_of(Path(path).expanduser())
    if root is None:
        return None
    try:
        return (yaml.safe_load((root / ".hydra" / "config.yaml").read_text()) or {}).get("model")
    except (OSError, yaml.YAMLError) as e:
        raise HandoffError(f"{root / '.hydra' / 'config.yaml'}: unreadable run config ({e})") from None


def check_same_architecture(checkpoint: str | Path, model_cfg: Any, key: str) -> None:
    """Refuse a checkpoint trained on another architecture than `model_cfg.arch`."""
    trained = run_model_config(checkpoint)
    if not trained or "arch" not in trained:
        return
    want = {k: v for k, v in dict(model_cfg.arch).items()}
    diff = {k: (trained["arch"].get(k), v) for k, v in want.items() if trained["arch"].get(k) != v}
    if diff:
        shown = ", ".join(f"{k} {a} != {b}" for k, (a, b) in sorted(diff.items()))
        raise HandoffError(f"{key}={checkpoint}: trained on model {trained.get('name')!r}, not the configured "
                           f"{model_cfg.name!r} (arch: {shown})")


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
            raise HandoffError(f"{key}={value!r}: not a path, and no run of experiment '{value}' with checkpoints "
                               f"under {where}{seen}; give a run dir or checkpoint path, or null to start from the base")
        if len(finished) > 1:
            raise HandoffError(f"{key}={value!r}: {len(finished)} runs of experiment '{value}' have checkpoints ("
                               + ", ".join(map(str, finished)) + "); give the run dir to use")
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
