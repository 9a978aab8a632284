"""Training checkpoints on disk: their integrity, restoring trained parameters from them, and the
model section of the run that wrote them.

A checkpoint that does not read back (truncated array file, empty _METADATA, missing item) is
found by reading its arrays; before a resume it is set aside into `<checkpoints>_corrupt/`, never
deleted, and the newest intact one is used. `run_model_config` and `check_same_architecture`
read a run's .hydra/config.yaml (or a portable adapter's config) as plain YAML/JSON, so a handoff
to another architecture is refused before JAX loads: JAX, orbax and tunix are imported only by
the functions that read arrays.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from gemma_tool_use.model.adapters import is_adapter_dir, read_adapter_config
from gemma_tool_use.model.weights import WeightsError
from gemma_tool_use.utils.errors import UserError

log = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """No intact checkpoint to resume from; the message names the directory."""


def checkpoint_problem(step_dir) -> str | None:
    """Why a checkpoint step dir cannot be restored (one line), or None when every item in it
    reads back: a truncated array file, an empty _METADATA or a missing item is found here, by
    reading the arrays as stored (no model needed: a few MB for LoRA adapters)."""
    import warnings

    import jax
    import orbax.checkpoint as ocp

    step_dir = Path(step_dir)
    items = ["model_params"]
    try:
        meta = json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())
        items = sorted(meta.get("item_handlers") or items)
    except (OSError, ValueError) as e:
        return f"_CHECKPOINT_METADATA unreadable ({type(e).__name__})"
    checkpointer = ocp.PyTreeCheckpointer()
    for item in items:
        if not (step_dir / item).is_dir():
            return f"{item}/ missing"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                jax.block_until_ready(checkpointer.restore(step_dir / item))
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for bad files
            return f"{item}/ unreadable ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
    return None


def newest_intact_checkpoint(ckpt_root, log=None) -> tuple[int | None, list[tuple[int, str]]]:
    """(the newest step whose checkpoint reads back, or None; the newer corrupt ones as (step,
    problem)), newest first. With `log`, each corrupt one is warned about as it is found."""
    root = Path(ckpt_root)
    bad = []
    for step in sorted((int(p.name) for p in root.glob("*") if p.name.isdigit() and p.is_dir()), reverse=True):
        problem = checkpoint_problem(root / str(step))
        if problem is None:
            return step, bad
        bad.append((step, problem))
        if log is not None:
            log.warning("checkpoint %s is corrupt (%s); trying an earlier one", root / str(step), problem)
    return None, bad


def set_aside_corrupt_checkpoints(ckpt_root, log) -> int | None:
    """Before resuming: newest-first, move checkpoints that do not read back into
    `<checkpoints>_corrupt/` (kept, never deleted) so the trainer resumes from the newest intact
    one, with a warning naming each. Returns that step (None: no checkpoints). Raises
    CheckpointError, moving nothing, when none is intact."""
    import shutil

    root = Path(ckpt_root)
    step, bad = newest_intact_checkpoint(root)
    if step is None and bad:
        raise CheckpointError(
            f"{root}: no intact checkpoint to resume from ("
            + "; ".join(f"step {b}: {why}" for b, why in bad)
            + "); move the directory away to start afresh"
        )
    for b, why in bad:
        dest = root.with_name(root.name + "_corrupt") / f"{b}_{int(time.time())}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(root / str(b)), dest)
        log.warning("checkpoint %s is corrupt (%s): moved to %s; resuming from step %d", root / str(b), why, dest, step)
    return step


def resolve_lora_checkpoint(path: str) -> tuple[Path, int | None, dict | None]:
    """(checkpoints root, step or None for latest, the run's model config if known)."""
    p = Path(path).expanduser().absolute()  # orbax wants absolute paths
    if not p.exists():
        raise WeightsError(f"model.lora_checkpoint={path!r} does not exist")
    step = None
    if p.name.isdigit() and p.parent.name == "checkpoints":
        step, p = int(p.name), p.parent
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if not any(c.name.isdigit() for c in p.iterdir()):
        raise WeightsError(f"model.lora_checkpoint={path!r}: no checkpoints/<step> directories found")
    return p, step, run_model_config(p)


def load_lora_checkpoint(model, root: Path, step: int | None, lora_only: bool = True) -> int:
    """Restore trained parameters (LoRA adapters + trainable rows, or every parameter after full
    fine-tuning) from an SFT checkpoint directory; the optimizer state is not touched. Without an
    explicit step, a latest checkpoint that does not read back gives way to the newest intact one."""
    from tunix.sft.checkpoint_manager import CheckpointManager

    if step is None:
        step, _ = newest_intact_checkpoint(root, log)
        if step is None:
            raise WeightsError(f"{root}: no intact checkpoint to load")
    elif problem := checkpoint_problem(root / str(step)):
        raise WeightsError(f"{root / str(step)}: corrupt checkpoint ({problem})")
    manager = CheckpointManager(root_directory=str(root))
    restored, _ = manager.maybe_restore(model, step=step, restore_only_lora_params=lora_only)
    manager.close()
    if not restored:
        raise WeightsError(f"no LoRA checkpoint could be restored from {root}")
    return restored


class HandoffError(UserError, ValueError):
    """The checkpoint a stage should start from is missing, ambiguous or of another model."""


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
        raise HandoffError(
            f"{key}={checkpoint}: trained on model {trained.get('name')!r}, not the configured "
            f"{model_cfg.name!r} (arch: {shown})"
        )
