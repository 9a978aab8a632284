"""Gemma 3 through tunix, with logits computed only where they are needed.

`ToolGemma3` is tunix's Gemma3 with one extra keyword, `logits_at` [B, K]: hidden states are
gathered at those positions before the final norm and the vocabulary projection, which is
~60% of the 270M model's FLOPs and, over a full sequence, a [B, T, 262144] tensor. Training
uses it for the loss positions, generation for the last prompt position at prefill.
It stays tunix's `__call__` (same signature), so qwix LoRA interception and tunix's sampler
and trainers work unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from tunix.models.gemma3 import model as tunix_gemma3

from gemma_tool_use import weights
from gemma_tool_use.causal_attention import CausalBlockAttention, causal_blocks
from gemma_tool_use.config import WeightSource
from gemma_tool_use.errors import UserError
from gemma_tool_use.weights import WeightsError

log = logging.getLogger(__name__)


class LoraTargetError(UserError, ValueError):
    """model.lora.target_modules matches no module of the built model (known only once it is built)."""


class ToolGemma3(tunix_gemma3.Gemma3):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for layer in self.layers:  # same variables; a causal call may skip the masked keys
            layer.attn.__class__ = CausalBlockAttention

    def __call__(
        self,
        last_tokens,
        positions=None,
        cache=None,
        attention_mask=None,
        output_hidden_states: bool = False,
        *,
        images=None,
        logits_at=None,  # [B, K] int positions; None = logits at every position
        logits_rows=None,  # [B, K] row of each logits_at position; None = its own row
        return_hidden: bool = False,  # final-norm hidden states instead of logits (chunked losses)
        causal_mask: bool = False,  # attention_mask is causal: attention skips the keys no query sees
    ):
        new_cache = None if cache is None else {}
        x = self._encode_and_get_inputs(tokens=last_tokens, images=images)
        with causal_blocks(causal_mask):  # read by the layers' attention while they trace
            for i, layer in enumerate(self.layers):
                name = f"layer_{i}"
                layer_cache, x = layer(x, positions, cache[name] if cache else None, attention_mask)
                if cache is not None:
                    new_cache[name] = layer_cache
        if logits_at is not None:
            # RMSNorm and the projection are per-position: gathering first is exact.
            if logits_rows is None:
                x = jnp.take_along_axis(x, logits_at.astype(jnp.int32)[..., None], axis=1)
            else:
                x = x[logits_rows.astype(jnp.int32), logits_at.astype(jnp.int32)]
        x = self.final_norm(x)
        if output_hidden_states:
            self.sow(nnx.Intermediate, "all_hidden_states", x)
        if return_hidden:
            return x, new_cache
        return self.embedder.decode(x), new_cache


class TrainableRowsEmbedder(tunix_gemma3.Embedder):
    """The tied embedding with a trainable delta on a few rows (typed LoRAParam, so tunix's
    PeftTrainer trains it beside the LoRA adapters and checkpoints it with them).

    The pretrained base never learned <start_of_turn>/<end_of_turn> (their rows sit among the
    unused tokens), and LoRA cannot move embedding rows: this lets SFT teach exactly those rows
    (input side and, through the tied head, output side) without unfreezing 168M parameters."""

    def __init__(self, base: tunix_gemma3.Embedder, row_ids, *, rngs=None):
        self.input_embedding = base.input_embedding
        self.shd_config = base.shd_config
        self.row_ids = nnx.Variable(jnp.asarray(row_ids, jnp.int32))
        d = base.input_embedding.value.shape[1]
        self.row_delta = nnx.LoRAParam(jnp.zeros((len(row_ids), d), base.input_embedding.value.dtype))

    def _delta_for(self, tokens):
        hit = tokens[..., None] == self.row_ids.value  # [..., k]
        return jnp.einsum("...k,kd->...d", hit.astype(self.row_delta.value.dtype), self.row_delta.value)

    def encode(self, x):
        e = self.input_embedding[(x,)] + self._delta_for(x)
        return e * jnp.sqrt(e.shape[-1]).astype(e.dtype)

    def decode(self, x):
        logits = jnp.einsum("...d,vd->...v", x, self.input_embedding.value)  # no transposed copy (training.py)
        return logits.at[..., self.row_ids.value].add(jnp.einsum("...d,kd->...k", x, self.row_delta.value))

    def merged_table(self):
        return self.input_embedding.value.at[self.row_ids.value].add(self.row_delta.value)


def add_trainable_rows(model: "ToolGemma3", row_ids) -> "ToolGemma3":
    if row_ids:
        model.embedder = TrainableRowsEmbedder(model.embedder, list(row_ids))
    return model


def tunix_config(model_cfg) -> tunix_gemma3.ModelConfig:
    a = model_cfg.arch
    return tunix_gemma3.ModelConfig(
        num_layers=a.num_layers, num_embed=a.num_embed, embed_dim=a.embed_dim,
        hidden_dim=a.hidden_dim, num_heads=a.num_heads, head_dim=a.head_dim,
        num_kv_heads=a.num_kv_heads, sliding_window_size=a.sliding_window_size,
        local_base_frequency=a.local_base_frequency, global_base_frequency=a.global_base_frequency,
        param_dtype=_dtype(model_cfg),
        remat_config=tunix_gemma3.RematConfig[str(model_cfg.get("remat", "none")).upper()],
    )


def _test_friendly_init(model: nnx.Module, seed: int) -> None:
    """Replace all-zero Params (tunix's MLP kernels and norm scales) by small random values and
    rescale the embedding to std 2/sqrt(d) (logits with a spread LoRA can reshape)."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    key = jax.random.key(seed)
    out = []
    for i, leaf in enumerate(leaves):
        if hasattr(leaf, "shape") and leaf.size and not bool(jnp.any(leaf != 0)):
            leaf = (0.05 * jax.random.normal(jax.random.fold_in(key, i), leaf.shape)).astype(leaf.dtype)
        out.append(leaf)
    nnx.update(model, jax.tree_util.tree_unflatten(treedef, out))
    emb = model.embedder.input_embedding
    d = emb.value.shape[-1]
    emb.value = (emb.value.astype(jnp.float32) * ((2.0 / d**0.5) / jnp.std(emb.value.astype(jnp.float32)))).astype(emb.value.dtype)


def shard_model(model: nnx.Module, mesh) -> nnx.Module:
    """Place every variable according to its logical sharding annotation on `mesh`."""
    state = nnx.state(model)
    pspecs = nnx.get_partition_spec(state)
    sharded = jax.tree.map(
        lambda x, spec: jax.device_put(x, jax.sharding.NamedSharding(mesh, spec)) if hasattr(x, "shape") else x,
        state, pspecs,
    )
    nnx.update(model, sharded)
    return model


def graphdef_without_remat(model: nnx.Module):
    """The model's graph with activation recomputation switched off: for sampling.

    model.remat is a training setting (memory for compute in the backward pass), and tunix
    applies it with nnx.remat inside each layer's __call__, which cannot run inside the
    generator's decode loop (a jax while_loop whose body merges the model: nnx refuses the
    nested transform with a TraceContextError). Recomputation has no use without gradients, so
    the generator traces this graph instead; the variables, and so the state, are the same.
    The model itself is left as it was."""
    none = tunix_gemma3.RematConfig.NONE
    changed = []
    for _, module in model.iter_modules():
        if getattr(module, "remat_config", none) != none:
            changed.append((module, "remat_config", module.remat_config))
        cfg = getattr(module, "config", None)
        if cfg is not None and getattr(cfg, "remat_config", none) != none:
            changed.append((module, "config", cfg))
    if not changed:
        return nnx.graphdef(model)
    try:
        for module, attr, value in changed:
            # a new config object, not a mutated one: the training graph keeps its own
            new = none if attr == "remat_config" else dataclasses.replace(value, remat_config=none)
            setattr(module, attr, new)
        return nnx.graphdef(model)
    finally:
        for module, attr, value in changed:
            setattr(module, attr, value)


def build_random_model(model_cfg, seed: int) -> ToolGemma3:
    model = ToolGemma3(tunix_config(model_cfg), rngs=nnx.Rngs(params=seed))
    if model_cfg.test_friendly_init:
        _test_friendly_init(model, seed + 1)
    return model


def _dtype(model_cfg):
    return jnp.bfloat16 if str(model_cfg.dtype) == "bfloat16" else jnp.float32


def _check_arch(model_cfg, hf_dir: Path) -> None:
    """Compare model.arch with the checkpoint's config.json before loading (clear error)."""
    cfg_file = hf_dir / "config.json"
    if not cfg_file.is_file():
        return
    hf = json.loads(cfg_file.read_text())
    hf = hf.get("text_config", hf)
    a = model_cfg.arch
    pairs = {"num_layers": "num_hidden_layers", "embed_dim": "hidden_size", "hidden_dim": "intermediate_size",
             "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
             "num_embed": "vocab_size"}
    bad = [f"model.arch.{ours}={getattr(a, ours)} but {cfg_file} has {theirs}={hf[theirs]}"
           for ours, theirs in pairs.items() if theirs in hf and int(hf[theirs]) != int(getattr(a, ours))]
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
        file_dir=str(hf_dir), model_class=ToolGemma3, config=cfg,
        key_mapping=tunix_st._get_key_and_transform_mapping, mesh=mesh,
        preprocess_fn=tunix_st._make_preprocess_fn(cfg), dtype=_dtype(model_cfg),
    )


def as_tool_model(model: tunix_gemma3.Gemma3, model_cfg) -> ToolGemma3:
    """Move a tunix Gemma3's state into a ToolGemma3 (same variables, extra `logits_at`)."""
    target = nnx.eval_shape(lambda: ToolGemma3(tunix_config(model_cfg), rngs=nnx.Rngs(0)))
    nnx.update(target, nnx.state(model))
    return target


def load_orbax_dir(model_cfg, ckpt_dir: Path, mesh=None) -> ToolGemma3:
    """Kaggle/Orbax layout (upstream 'transformer/...' tree) through tunix's loader."""
    from tunix.models.gemma3 import params as tunix_params

    model = tunix_params.create_model_from_checkpoint(str(ckpt_dir), tunix_config(model_cfg), mesh, _dtype(model_cfg))
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
    from gemma_tool_use.tokenizer import load_tokenizer

    if model_cfg.tokenizer_path:
        return load_tokenizer(model_cfg.tokenizer_path)
    if WeightSource(model_cfg.source) is WeightSource.gguf and model_cfg.path:
        return load_tokenizer(model_cfg.path)
    if WeightSource(model_cfg.source) in (WeightSource.hf, WeightSource.kaggle):
        found = weights.find_tokenizer_file(checkpoint_dir(model_cfg))
        if found:
            return load_tokenizer(str(found))
    return load_tokenizer()


def apply_lora(model: ToolGemma3, lora_cfg, seed: int) -> ToolGemma3:
    import qwix

    provider = qwix.LoraProvider(
        module_path=lora_cfg.target_modules, rank=int(lora_cfg.rank),
        alpha=float(lora_cfg.alpha), dropout=float(lora_cfg.dropout),
    )
    lora_model = qwix.apply_lora_to_model(model, provider, rngs=nnx.Rngs(params=seed, dropout=seed), **model.get_model_input())
    # the generator's decode step (decode_step.py) applies the adapters itself and needs their
    # scale, which qwix keeps inside its interceptor
    lora_model.lora_scale = float(lora_cfg.alpha) / float(lora_cfg.rank)
    n_lora = count_params(lora_model, nnx.LoRAParam)
    if n_lora == 0:
        raise LoraTargetError(f"model.lora.target_modules={lora_cfg.target_modules!r} matches no module of the model; "
                              "nothing to train (module paths look like layers/0/attn/q_einsum, layers/0/mlp/gate_proj)")
    return lora_model


def count_params(model: nnx.Module, kind=nnx.Param) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, kind))))


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
    from gemma_tool_use.runs import run_model_config

    return p, step, run_model_config(p)


def load_lora_checkpoint(model, root: Path, step: int | None, lora_only: bool = True) -> int:
    """Restore trained parameters (LoRA adapters + trainable rows, or every parameter after full
    fine-tuning) from an SFT checkpoint directory; the optimizer state is not touched. Without an
    explicit step, a latest checkpoint that does not read back gives way to the newest intact one."""
    from tunix.sft.checkpoint_manager import CheckpointManager

    from gemma_tool_use.training import checkpoint_problem, newest_intact_checkpoint

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


def build_model(model_cfg, mesh, seed: int) -> ToolGemma3:
    if model_cfg.lora_checkpoint:  # refuse another architecture's adapters before loading anything
        from gemma_tool_use.runs import check_same_architecture

        check_same_architecture(model_cfg.lora_checkpoint, model_cfg, "model.lora_checkpoint")
    model = build_base_model(model_cfg, seed, mesh)
    lora_cfg, rows, ckpt = model_cfg.lora, list(model_cfg.train_token_ids), None
    from gemma_tool_use.adapters import is_adapter_dir, load_adapter, read_adapter_config

    adapter = model_cfg.lora_checkpoint if model_cfg.lora_checkpoint and is_adapter_dir(model_cfg.lora_checkpoint) else None
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
        log.info("loaded %s from %s step %d", f"LoRA adapters (rank {lora_cfg.rank})" if lora_cfg.enabled
                 else "fully fine-tuned weights", ckpt[0], restored)
    model = shard_model(model, mesh)
    log.info("model %s: %.2fM params, %.3fM LoRA params", model_cfg.name,
             count_params(model, nnx.Param) / 1e6, count_params(model, nnx.LoRAParam) / 1e6)
    return model
