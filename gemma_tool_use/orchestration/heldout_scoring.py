"""Score a model on a held-out tool-calling set (data/heldout_calls) in a `stage=predict` child, for
the learning curve's points and the pipeline's stages alike.

    <out dir>/                 the stage=predict run dir (predictions.jsonl, decisions.json, ...)
    <out dir>/heldout.json     {"prompts_file", "prompts_sha256", **decisions}: the record

A record is reused while the prompt file's sha256 is the one it was scored on; a changed set is
scored again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from gemma_tool_use.utils.files import sha256_file, write_json_atomic

RECORD = "heldout.json"


def recorded(out_dir: Path, prompts: Path) -> dict | None:
    """The record in out_dir if it was scored on this very prompt file, else None."""
    try:
        record = json.loads((out_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("prompts_sha256") == sha256_file(prompts) else None


def score_heldout(
    prompts_file: str, out_dir: Path, model_args: list[str], run: Callable[[list[str], str], None], what: str
) -> dict:
    """The record of the model `model_args` name (model.lora_checkpoint=..., and model/decoding
    overrides) on the prompt file: reused when recorded, else predicted by `run` (which runs
    `python -m gemma_tool_use <args>` and raises when it fails) and written."""
    prompts = Path(prompts_file).expanduser().absolute()
    if (done := recorded(out_dir, prompts)) is not None:
        return done
    run(["stage=predict", *model_args, f"predict.input_file={prompts}", f"hydra.run.dir={out_dir}"], what)
    decisions = json.loads((out_dir / "decisions.json").read_text())
    record = {"prompts_file": str(prompts_file), "prompts_sha256": sha256_file(prompts), **decisions}
    write_json_atomic(out_dir / RECORD, record, indent=2)
    return record


# The rates a summary table shows, and the several-call requests' right functions (the call count
# and the choice of tools together: what the SFT models miss most).
SUMMARY_RATES = (
    ("false_refusal_rate", "false refusals (calls due)"),
    ("false_call_rate", "false calls (no call fits)"),
    ("count_right_rate", "right number of calls"),
    ("names_right_rate", "right functions"),
    ("exact_rate", "exact calls"),
)


def several_calls_right(record: dict) -> float | None:
    """% of several-call prompts answered with the right functions, as many times each."""
    k = (record.get("by_gold_kind") or {}).get("several_calls") or {}
    return round(100.0 * k["names_right"] / k["prompts"], 2) if k.get("prompts") and "names_right" in k else None
