"""Building the model the config asks for: the base weights from their source (random init, a
Hugging Face safetensors dir, a Kaggle/Orbax checkpoint, or a GGUF file converted once), its
tokenizer, then LoRA and trainable rows with a trained start loaded on top (a portable adapter
or an SFT checkpoint, in the shape it was trained with), sharded on the mesh.

A checkpoint of another architecture is refused before any weight is loaded.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from flax import nnx
from tunix.models.gemma3 import model as tunix_gemma3

from gemma_tool_use.config.schema import WeightSource
from gemma_tool_use.model import weights
from gemma_tool_use.model.adapters import (
    is_adapter_dir,
    load_adapter,
    read_adapter_config,
)
from gemma_tool_use.model.checkpoints import (
    check_same_architecture,
    load_lora_checkpoint,
    resolve_lora_checkpoint,
)
from gemma_tool_use.model.gemma import (
    ToolGemma3,
    add_trainable_rows,
    apply_lora,
    apply_test_friendly_init,
    count_params,
    param_dtype,
    shard_model,
    tunix_config,
)
from gemma_tool_use.model.tokenizer import load_tokenizer
from gemma_tool_use.model.weights import WeightsError

log = logging.getLogger(__name__)


def build_random_model(model_cfg, seed: int) -> ToolGemma3:
    model = ToolGemma3(tunix_config(model_cfg), rngs=nnx.Rngs(params=seed))
    if model_cfg.test_friendly_init:
        apply_test_friendly_init(model, seed + 1)
    return model


def _check_arch(model_cfg, hf_dir: Path) -> None:
    """Compare model.arch with the checkpoint's config.json before loading (clear error)."""
    cfg_file = hf_dir / "config.json"
    if not cfg_file.is_file():
        return
    hf = json.loads(cfg_file.read_text())
    hf = hf.get("text_config", hf)
    a = model_cfg.arch
    pairs = {
        "num_layers": "num_hidden_layers",
        "embed_dim": "hidden_size",
        "hidden_dim": "intermediate_size",
        "num_heads": "num_attention_heads",
        "num_kv_heads": "num_key_value_heads",
        "head_dim": "head_dim",
        "num_embed": "vocab_size",
    }
    bad = [
        f"model.arch.{ours}={getattr(a, ours)} but {cfg_file} has {theirs}={hf[theirs]}"
        for ours, theirs in pairs.items()
        if theirs in hf and int(hf[theirs]) != int(getattr(a, ours))
    ]
    if bad:
        raise WeightsError("checkpoint does not match the configured architecture: " + "; ".join(bad))


def load_hf_dir(model_cfg, hf_dir: Path, mesh=None) -> ToolGemma3:
    """Hugging Face layout (safetensors) through tunix's loader, into our model class."""
    from tunix.models import safetensors_loader
    from tunix.models.gemma3 import params_safetensors as tunix_st

    _check_arch(model_cfg, hf_dir)
    cfg = tunix_config(model_cfg)
    # tunix's public create_model_from_safe_tensors hard-codes its Gemma3 class; its loader
    # takes the class, so we pass ours with tunix's (pinned-version) key mapping.
    return safetensors_loader.load_and_create_model(
        file_dir=str(hf_dir),
        model_class=ToolGemma3,
        config=cfg,
        key_mapping=tunix_st._get_key_and_transform_mapping,
        mesh=mesh,
        preprocess_fn=tunix_st._make_preprocess_fn(cfg),
        dtype=param_dtype(model_cfg),
    )


def as_tool_model(model: tunix_gemma3.Gemma3, model_cfg) -> ToolGemma3:
    """Move a tunix Gemma3's state into a ToolGemma3 (same variables, extra `logits_at`)."""
    target = nnx.eval_shape(lambda: ToolGemma3(tunix_config(model_cfg), rngs=nnx.Rngs(0)))
    nnx.update(target, nnx.state(model))
    return target


def load_orbax_dir(model_cfg, ckpt_dir: Path, mesh=None) -> ToolGemma3:
    """Kaggle/Orbax layout (upstream 'transformer/...' tree) through tunix's loader."""
    from tunix.models.gemma3 import params as tunix_params

    model = tunix_params.create_model_from_checkpoint(
        str(ckpt_dir), tunix_config(model_cfg), mesh, param_dtype(model_cfg)
    )
    return as_tool_model(model, model_cfg)


def checkpoint_dir(model_cfg) -> Path | None:
    """Where the configured source's files are (downloading/converting as needed)."""
    source = WeightSource(model_cfg.source)
    if source is WeightSource.random:
        return None
    if source is WeightSource.gguf:
        return weights.converted_gguf_dir(model_cfg.path)
    if source is WeightSource.hf:
        return weights.resolve_hf_dir(model_cfg.path or "google/gemma-3-270m")
    return weights.orbax_params_dir(weights.resolve_kaggle_dir(model_cfg.path or "google/gemma-3/flax/gemma3-270m"))


def build_base_model(model_cfg, seed: int, mesh=None) -> ToolGemma3:
    """The base model (before LoRA) from the configured weight source."""
    source = WeightSource(model_cfg.source)
    if source is WeightSource.random:
        return build_random_model(model_cfg, seed)
    t0 = time.time()
    where = checkpoint_dir(model_cfg)
    if source is WeightSource.kaggle:
        model = load_orbax_dir(model_cfg, where, mesh)
    else:
        model = load_hf_dir(model_cfg, where, mesh)
    log.info("loaded %s weights from %s in %.1fs", source.value, where, time.time() - t0)
    return model


def load_tokenizer_for(model_cfg):
    """model.tokenizer_path, else the checkpoint's tokenizer.model, else the offline GGUF's."""
    if model_cfg.tokenizer_path:
        return load_tokenizer(model_cfg.tokenizer_path)
    if WeightSource(model_cfg.source) is WeightSource.gguf and model_cfg.path:
        return load_tokenizer(model_cfg.path)
    if WeightSource(model_cfg.source) in (WeightSource.hf, WeightSource.kaggle):
        found = weights.find_tokenizer_file(checkpoint_dir(model_cfg))
        if found:
            return load_tokenizer(str(found))
    return load_tokenizer()


def build_model(model_cfg, mesh, seed: int) -> ToolGemma3:
    if model_cfg.lora_checkpoint:  # refuse another architecture's adapters before loading anything
        check_same_architecture(model_cfg.lora_checkpoint, model_cfg, "model.lora_checkpoint")
    model = build_base_model(model_cfg, seed, mesh)
    lora_cfg, rows, ckpt = model_cfg.lora, list(model_cfg.train_token_ids), None

    adapter = (
        model_cfg.lora_checkpoint if model_cfg.lora_checkpoint and is_adapter_dir(model_cfg.lora_checkpoint) else None
    )
    if adapter:  # a portable adapter (adapters.py): its own LoRA settings and rows
        from omegaconf import OmegaConf

        shape = read_adapter_config(adapter)["model"]
        lora_cfg, rows = OmegaConf.create(shape["lora"]), list(shape.get("train_token_ids") or [])
    elif model_cfg.lora_checkpoint:
        root, step, run_model = resolve_lora_checkpoint(model_cfg.lora_checkpoint)
        ckpt = (root, step)
        if run_model is not None:  # the checkpoint's own shape, whatever model.lora says now
            from omegaconf import OmegaConf

            lora_cfg = OmegaConf.create(run_model["lora"])
            rows = list(run_model.get("train_token_ids") or [])
    if lora_cfg.enabled:
        model = add_trainable_rows(model, rows)
        model = apply_lora(model, lora_cfg, seed + 7)
    if adapter:
        info = load_adapter(model, adapter)
        log.info("loaded the portable adapter %s (step %s of %s)", adapter, info.get("step"), info.get("source"))
    if ckpt:
        restored = load_lora_checkpoint(model, *ckpt, lora_only=bool(lora_cfg.enabled))
        log.info(
            "loaded %s from %s step %d",
            f"LoRA adapters (rank {lora_cfg.rank})" if lora_cfg.enabled else "fully fine-tuned weights",
            ckpt[0],
            restored,
        )
    model = shard_model(model, mesh)
    log.info(
        "model %s: %.2fM params, %.3fM LoRA params",
        model_cfg.name,
        count_params(model, nnx.Param) / 1e6,
        count_params(model, nnx.LoRAParam) / 1e6,
    )
    return model
