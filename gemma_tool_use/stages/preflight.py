"""Typed configuration schema. Hydra merges conf/*.yaml onto these dataclasses, so an unknown
key, a wrong type or an invalid enum value fails at composition time, naming the key, before
JAX or any model is imported.

Adding an option: add a field here (with a type and a default), set it in the yaml of the
group that owns it, and use it through `cfg.<group>.<field>`. The "every config composes"
test picks up new group options and experiments automatically.
"""

from __future__ import annotations

from gemma_tool_use.config.checks import _fail
from gemma_tool_use.config.schema import TRAINING_STAGES


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or path.endswith(".gguf")


def preflight(cfg) -> None:
    """Checks of the files and runs a config names, before JAX is imported (a missing file is
    found in a fraction of a second instead of after 3-16 s of JAX start-up and model loading).
    Raises ConfigValueError (or runs.HandoffError) naming the key."""
    from pathlib import Path

    stage = str(cfg.stage.name)
    m = cfg.model

    # ------------------------------------------------------------------ weights
    source = str(m.source)
    if m.path:
        p = Path(m.path).expanduser()
        if source == "gguf" and not p.is_file():
            _fail("model.path", f"GGUF file not found: {m.path}")
        if source == "hf" and not p.is_dir():
            if _looks_local(m.path) or p.exists() or m.path.count("/") != 1:
                _fail("model.path", f"{m.path!r} is neither a Hugging Face checkpoint directory nor a hub id "
                      "like 'google/gemma-3-270m'")
        if source == "hf" and p.is_dir() and not any(p.glob("*.safetensors")):
            _fail("model.path", f"{m.path}: no *.safetensors files (a Hugging Face checkpoint dir has them)")
        if source == "kaggle" and not p.is_dir():
            if _looks_local(m.path) or p.exists() or m.path.count("/") < 3:
                _fail("model.path", f"{m.path!r} is neither a local Orbax directory nor a kagglehub handle "
                      "like 'google/gemma-3/flax/gemma3-270m'")
    if m.tokenizer_path and not Path(m.tokenizer_path).expanduser().is_file():
        _fail("model.tokenizer_path", f"file not found: {m.tokenizer_path}")
    if m.lora_checkpoint:
        if not Path(m.lora_checkpoint).expanduser().exists():
            _fail("model.lora_checkpoint", f"no such file or directory: {m.lora_checkpoint}")
        from gemma_tool_use.model.checkpoints import check_same_architecture

        check_same_architecture(m.lora_checkpoint, m, "model.lora_checkpoint")

    # ------------------------------------------------------------------ training inputs
    if stage in TRAINING_STAGES:
        if stage == "grpo" and not cfg.train.init_from:
            _fail("train.init_from", "stage=grpo starts from an SFT run: give its run dir, checkpoint or experiment "
                                     "name (GRPO on the bare base has nothing to reward: it never ends its turn)")
        if cfg.train.init_from:
            from gemma_tool_use.orchestration.runs import resolve_init_from

            resolve_init_from(cfg.train.init_from, m)  # HandoffError naming train.init_from
        d = cfg.data
        if d.root and not Path(d.root).expanduser().is_dir():
            _fail("data.root", f"not an existing directory: {d.root}")
        for hub_id, local in d.hub_files.items():
            if not Path(local).expanduser().is_file():
                _fail(f"data.hub_files.{hub_id}", f"file not found: {local}")
        if not d.sources:  # JSONL conversations: resolved as the data package resolves them
            from gemma_tool_use.data.conversations import DataError, resolve_data_file

            for key in ("train_files", "val_files"):
                for name in d[key]:
                    try:
                        resolve_data_file(str(name))
                    except DataError as e:
                        _fail(f"data.{key}", str(e))

    # ------------------------------------------------------------------ evaluation / prediction
    if stage == "eval" or (stage in TRAINING_STAGES and cfg.eval.run_after_training):
        from gemma_tool_use.evaluation.bfcl import check_categories

        check_categories(cfg.eval.categories)  # BfclError naming eval.categories
    if stage == "export":
        from gemma_tool_use.export.gguf_file import GGUF_TYPES

        bad = [k for k in cfg.export.types if k not in GGUF_TYPES]
        if bad or not cfg.export.types:
            _fail("export.types", f"{list(bad or cfg.export.types)}: choose from {', '.join(GGUF_TYPES)} (K-quants such "
                  "as Q4_K_M: run llama.cpp's llama-quantize on the f16 file)")
    if stage == "serve":
        s = cfg.serve
        if not 0 <= int(s.port) <= 65535:
            _fail("serve.port", f"must be in [0, 65535] (0 = any free port), got {s.port}")
        for key in ("max_batch", "max_tokens_limit", "max_request_bytes"):
            if int(s[key]) < 1:
                _fail(f"serve.{key}", f"must be >= 1, got {s[key]}")
        if float(s.batch_window_ms) < 0 or float(s.request_timeout_s) <= 0:
            _fail("serve.batch_window_ms" if float(s.batch_window_ms) < 0 else "serve.request_timeout_s",
                  "must be >= 0 (window) / > 0 (timeout)")
        if int(cfg.generation.max_new_tokens) > int(s.max_tokens_limit):
            _fail("generation.max_new_tokens", f"the default answer length {cfg.generation.max_new_tokens} > "
                  f"serve.max_tokens_limit={s.max_tokens_limit}")
    if stage == "predict":
        src = cfg.predict.input_file
        if not src:
            _fail("predict.input_file", 'is required for stage=predict (a JSONL of {"tools", "messages"} rows)')
        src = Path(src).expanduser()
        if not src.is_file():
            _fail("predict.input_file", f"file not found: {cfg.predict.input_file}")
        out = cfg.predict.output_file
        if out and Path(out).expanduser().resolve() == src.resolve():
            _fail("predict.output_file", "is predict.input_file: writing predictions would overwrite the input")
