"""Checks of the files, runs and checkpoints a config names, run after `check_config` and
before JAX is imported: a missing file is found in a fraction of a second instead of after
3-16 s of JAX start-up and model loading.

One function per concern: the weights and model paths (every stage), the training inputs
(training stages), and the inputs of eval, export, serve and predict. Each raises
ConfigValueError (or the named error of the module it asks, e.g. runs.HandoffError) naming the
key. Nothing here imports JAX, flax or tunix.
"""

from __future__ import annotations

from pathlib import Path

from gemma_tool_use.config.checks import _fail
from gemma_tool_use.config.schema import TRAINING_STAGES
from gemma_tool_use.data.conversations import DataError, resolve_data_file
from gemma_tool_use.evaluation.bfcl import check_categories
from gemma_tool_use.export.gguf_file import GGUF_TYPES
from gemma_tool_use.model.checkpoints import check_same_architecture
from gemma_tool_use.orchestration.runs import resolve_init_from


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or path.endswith(".gguf")


def _check_weights_path(source: str, path: str) -> None:
    """model.path for `source` (gguf, hf, kaggle): a local file/dir, or a hub id or handle."""
    local = Path(path).expanduser()
    if source == "gguf" and not local.is_file():
        _fail("model.path", f"GGUF file not found: {path}")
    if source == "hf" and not local.is_dir():
        if _looks_local(path) or local.exists() or path.count("/") != 1:
            _fail(
                "model.path",
                f"{path!r} is neither a Hugging Face checkpoint directory nor a hub id like 'google/gemma-3-270m'",
            )
    if source == "hf" and local.is_dir() and not any(local.glob("*.safetensors")):
        _fail("model.path", f"{path}: no *.safetensors files (a Hugging Face checkpoint dir has them)")
    if source == "kaggle" and not local.is_dir():
        if _looks_local(path) or local.exists() or path.count("/") < 3:
            _fail(
                "model.path",
                f"{path!r} is neither a local Orbax directory nor a kagglehub handle "
                "like 'google/gemma-3/flax/gemma3-270m'",
            )


def _check_model_paths(model) -> None:
    """The weights, tokenizer and LoRA checkpoint a config names (every stage)."""
    if model.path:
        _check_weights_path(str(model.source), model.path)
    if model.tokenizer_path and not Path(model.tokenizer_path).expanduser().is_file():
        _fail("model.tokenizer_path", f"file not found: {model.tokenizer_path}")
    if model.lora_checkpoint:
        if not Path(model.lora_checkpoint).expanduser().exists():
            _fail("model.lora_checkpoint", f"no such file or directory: {model.lora_checkpoint}")
        check_same_architecture(model.lora_checkpoint, model, "model.lora_checkpoint")


def _check_training_inputs(cfg, stage: str) -> None:
    """The run a training stage starts from and the data it reads."""
    if stage == "grpo" and not cfg.train.init_from:
        _fail(
            "train.init_from",
            "stage=grpo starts from an SFT run: give its run dir, checkpoint or experiment "
            "name (GRPO on the bare base has nothing to reward: it never ends its turn)",
        )
    if cfg.train.init_from:
        resolve_init_from(cfg.train.init_from, cfg.model)  # HandoffError naming train.init_from
    data = cfg.data
    if data.root and not Path(data.root).expanduser().is_dir():
        _fail("data.root", f"not an existing directory: {data.root}")
    for hub_id, local in data.hub_files.items():
        if not Path(local).expanduser().is_file():
            _fail(f"data.hub_files.{hub_id}", f"file not found: {local}")
    if not data.sources:  # JSONL conversations: resolved as the data package resolves them
        for key in ("train_files", "val_files"):
            for name in data[key]:
                try:
                    resolve_data_file(str(name))
                except DataError as e:
                    _fail(f"data.{key}", str(e))


def _check_export(export) -> None:
    bad = [k for k in export.types if k not in GGUF_TYPES]
    if bad or not export.types:
        _fail(
            "export.types",
            f"{list(bad or export.types)}: choose from {', '.join(GGUF_TYPES)} (K-quants such "
            "as Q4_K_M: run llama.cpp's llama-quantize on the f16 file)",
        )


def _check_serve(serve, generation) -> None:
    if not 0 <= int(serve.port) <= 65535:
        _fail("serve.port", f"must be in [0, 65535] (0 = any free port), got {serve.port}")
    for key in ("max_batch", "max_tokens_limit", "max_request_bytes", "max_connections", "max_queue", "workers"):
        if int(serve[key]) < 1:
            _fail(f"serve.{key}", f"must be >= 1, got {serve[key]}")
    if not float(serve.batch_window_ms) >= 0:  # also NaN
        _fail("serve.batch_window_ms", f"must be >= 0, got {serve.batch_window_ms}")
    for key in ("request_timeout_s", "read_timeout_s", "shutdown_grace_s"):
        if not 0 < float(serve[key]) < float("inf"):
            _fail(f"serve.{key}", f"must be a finite number of seconds > 0, got {serve[key]}")
    if serve.api_key is not None and not str(serve.api_key).strip():
        _fail("serve.api_key", "is empty: set a key, or null for none")
    if int(generation.max_new_tokens) > int(serve.max_tokens_limit):
        _fail(
            "generation.max_new_tokens",
            f"the default answer length {generation.max_new_tokens} > serve.max_tokens_limit={serve.max_tokens_limit}",
        )


def _check_predict(predict) -> None:
    if not predict.input_file:
        _fail("predict.input_file", 'is required for stage=predict (a JSONL of {"tools", "messages"} rows)')
    source = Path(predict.input_file).expanduser()
    if not source.is_file():
        _fail("predict.input_file", f"file not found: {predict.input_file}")
    out = predict.output_file
    if out and Path(out).expanduser().resolve() == source.resolve():
        _fail("predict.output_file", "is predict.input_file: writing predictions would overwrite the input")


def preflight(cfg) -> None:
    """Checks of the files and runs a config names, before JAX is imported (a missing file is
    found in a fraction of a second instead of after 3-16 s of JAX start-up and model loading).
    Raises ConfigValueError (or runs.HandoffError) naming the key."""
    stage = str(cfg.stage.name)
    _check_model_paths(cfg.model)
    if stage in TRAINING_STAGES:
        _check_training_inputs(cfg, stage)
    if stage == "eval" or (stage in TRAINING_STAGES and cfg.eval.run_after_training):
        check_categories(cfg.eval.categories)  # BfclError naming eval.categories
    if stage == "export":
        _check_export(cfg.export)
    if stage == "serve":
        _check_serve(cfg.serve, cfg.generation)
    if stage == "predict":
        _check_predict(cfg.predict)
