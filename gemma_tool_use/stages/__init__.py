"""Stage runners, one module each. `stage=<name>` on the command line picks one.

sft_small, sft_full  -> stages/sft.py      (LoRA SFT, then optional BFCL eval)
eval                 -> stages/eval.py     (BFCL evaluation)
predict              -> stages/predict.py  (JSONL in, parsed tool calls out)
grpo                 -> stages/grpo.py     (GRPO with tool-call rewards)
serve                -> stages/serve.py    (OpenAI-compatible HTTP server)
export               -> stages/export.py   (GGUF for llama.cpp / Ollama)
"""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from gemma_tool_use.utils.errors import UserError
from gemma_tool_use.utils.interrupt import install_stop_handlers


class StageNotBuilt(UserError, RuntimeError):
    """The selected stage has no runner yet."""

    exit_code = 3


# stage name -> "module:function"; None = planned, not built yet.
STAGES: dict[str, str | None] = {
    "sft_small": "gemma_tool_use.stages.sft:run",
    "sft_full": "gemma_tool_use.stages.sft:run",
    "eval": "gemma_tool_use.stages.eval:run",
    "predict": "gemma_tool_use.stages.predict:run",
    "grpo": "gemma_tool_use.stages.grpo:run",
    "serve": "gemma_tool_use.stages.serve:run",
    "export": "gemma_tool_use.stages.export:run",
}


def run_stage(cfg: DictConfig):
    name = str(cfg.stage.name)  # StageName prints as its value
    target = STAGES.get(name)
    if target is None:
        built = ", ".join(k for k, v in STAGES.items() if v)
        raise StageNotBuilt(f"stage '{name}' is not built yet (built stages: {built})")
    install_stop_handlers()  # SIGTERM stops a run like Ctrl-C: checkpoint, finish the tracker, exit
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(cfg)
