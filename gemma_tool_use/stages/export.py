"""`stage=export`: a tuned model as GGUF files for llama.cpp / Ollama (gemma_tool_use/export_gguf.py).

    python -m gemma_tool_use stage=export model=gemma3_270m \\
        model.lora_checkpoint=experiments/<run>/adapter "export.types=[f16,q8_0]"

Writes to the run dir: `<name>-<type>.gguf` per type, `Modelfile` (Ollama), and
`export_summary.json` (sizes, and each file read back and compared tensor by tensor).
Serve a file with `llama-server -m <file> --jinja` (the chat template renders this project's tool
format) or `ollama create gemma-tools -f Modelfile`.
"""

from __future__ import annotations

import json
import logging
import time

from omegaconf import DictConfig

from gemma_tool_use.orchestration.runs import served_model_name
from gemma_tool_use.orchestration.stage_context import open_stage

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    kinds = [str(k) for k in cfg.export.types]  # checked by preflight, before JAX started
    with open_stage(cfg, tokenizer=False, tracker=False) as ctx:
        from gemma_tool_use.export.gguf_file import modelfile, roundtrip_errors, write_gguf
        from gemma_tool_use.export.hf_checkpoint import lora_merge_scale, merged_hf_tensors
        from gemma_tool_use.model.loading import build_model
        from gemma_tool_use.model.tokenizer import default_gguf_path

        model = build_model(cfg.model, ctx.mesh, cfg.seed)
    run_dir = ctx.run_dir
    name = str(cfg.export.name or served_model_name(cfg)).replace("/", "_")
    tensors = merged_hf_tensors(model, lora_merge_scale(model, cfg.model))
    summary = {
        "name": name,
        "source": {"model": str(cfg.model.name), "lora_checkpoint": cfg.model.lora_checkpoint},
        "files": {},
    }
    for kind in kinds:
        t0 = time.time()
        path = write_gguf(
            tensors,
            cfg.model.arch,
            run_dir / f"{name}-{kind}.gguf",
            kind,
            name=name,
            tokenizer_gguf=default_gguf_path(),
            system_prompt=cfg.data.system_prompt,
        )
        check = roundtrip_errors(path, tensors)
        summary["files"][kind] = {
            "path": str(path),
            "bytes": path.stat().st_size,
            "seconds": round(time.time() - t0, 1),
            **check,
        }
        log.info(
            "wrote %s (%.1f MB), read back: max relative tensor error %.2e",
            path,
            path.stat().st_size / 1e6,
            check["max_rel_error"],
        )
    first = f"{name}-{kinds[0]}.gguf"
    (run_dir / "Modelfile").write_text(modelfile(first, cfg.data.system_prompt))
    (run_dir / "export_summary.json").write_text(json.dumps(summary, indent=2))
    log.info(
        "llama.cpp: llama-server -m %s --jinja | Ollama: ollama create %s -f %s",
        run_dir / first,
        name,
        run_dir / "Modelfile",
    )
    return float(max(f["max_rel_error"] for f in summary["files"].values()))
