"""The pipeline: `python -m gemma_tool_use pipeline=<recipe>` runs stages N..M, one process each.

    python -m gemma_tool_use pipeline=cpu                                   # baseline, every stage
    python -m gemma_tool_use pipeline=cpu "pipeline.stages=[sft_full,grpo]" \\
        pipeline.resume_from=outputs/pipeline/cpu/1_sft_small               # a slice from a result

A recipe (conf/pipeline/<name>.yaml) maps each training stage to its overrides. Every stage runs
as `python -m gemma_tool_use stage=<stage> <common> <recipe overrides> <your overrides>` in its own
process (no JAX or W&B state shared) and in a fixed directory, `<pipeline dir>/<i>_<stage>/`
(i: the stage's place in the recipe, 0 the baseline eval), with W&B group `pipeline-<name>`.

Handoff is explicit: the first stage starts from `pipeline.resume_from` (or the base model), each
later one from the previous stage's exported adapter (`<dir>/adapter/`, adapters.py), passed as
`train.init_from`. BFCL runs after every training stage (and on the start, `0_baseline`) on
`pipeline.eval_categories`, on the full categories or on a fixed stratified subset
(`pipeline.eval_subset_per_category`; labelled as such everywhere).

State lives in `<pipeline dir>/pipeline_state.json`: a stage is recorded there when its process
exits 0. Paths inside the pipeline dir are recorded relative to it, so a finished dir can be
moved or committed (experiments/<name>/) and a later session continues it in place. Re-running the same command skips recorded stages and re-runs the interrupted one in
its own directory, where training and BFCL resume from their checkpoints / finished entries. A
recorded stage whose start differs from the one this command would give it is refused (use
another pipeline dir: `hydra.run.dir=...`). After each stage: pipeline_summary.{json,md,png}.
"""

from __future__ import annotations

import json
from pathlib import Path

from gemma_tool_use.utils.files import write_json_atomic

STATE = "pipeline_state.json"


def read_state(root: Path) -> dict:
    try:
        state = json.loads((root / STATE).read_text())
    except (OSError, ValueError):
        return {"stages": {}}
    for rec in state.get("stages", {}).values():  # states written with absolute paths under root
        for key in ("dir", "start", "adapter"):
            if rec.get(key):
                rec[key] = portable(root, rec[key])
    return state


def portable(root: Path, path: str) -> str:
    """`path` relative to the pipeline dir when it lies inside it, else as given."""
    p = Path(path)
    return str(p.relative_to(root)) if p.is_absolute() and p.is_relative_to(root) else path


def absolute(root: Path, path: str) -> str:
    return str(path if Path(path).is_absolute() else root / path)


def write_state(root: Path, state: dict) -> None:
    write_json_atomic(root / STATE, state)
