"""Gemma 3 through tunix, with logits computed only where they are needed.

`ToolGemma3` is tunix's Gemma3 with one extra keyword, `logits_at` [B, K]: hidden states are
gathered at those positions before the final norm and the vocabulary projection, which holds most
of the model's FLOPs per position (the 262,144-row tied table is most of the 270M model's
parameters) and, over a full sequence, is a [B, T, 262144] tensor. Training uses it for the loss
positions, generation for the last prompt position at prefill. It stays tunix's `__call__` (same
signature), so qwix LoRA interception and tunix's sampler and trainers work unchanged.

Also here, what acts on the built model: trainable embedding rows (`TrainableRowsEmbedder`),
LoRA adapters (`apply_lora`), sharding on a mesh, and the remat-free graph the generator traces.
Building it from weights is model/loading.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from tunix.models.gemma3 import model as tunix_gemma3

from gemma_tool_use.model.attention import CausalBlockAttention, causal_blocks
from gemma_tool_use.utils.errors import UserError


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
        logits = jnp.einsum("...d,vd->...v", x, self.input_embedding.value)  # no transposed copy (training/loss.py)
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
        num_layers=a.num_layers,
        num_embed=a.num_embed,
        embed_dim=a.embed_dim,
        hidden_dim=a.hidden_dim,
        num_heads=a.num_heads,
        head_dim=a.head_dim,
        num_kv_heads=a.num_kv_heads,
        sliding_window_size=a.sliding_window_size,
        local_base_frequency=a.local_base_frequency,
        global_base_frequency=a.global_base_frequency,
        param_dtype=param_dtype(model_cfg),
        remat_config=tunix_gemma3.RematConfig[str(model_cfg.get("remat", "none")).upper()],
    )


def apply_test_friendly_init(model: nnx.Module, seed: int) -> None:
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
    emb.value = (emb.value.astype(jnp.float32) * ((2.0 / d**0.5) / jnp.std(emb.value.astype(jnp.float32)))).astype(
        emb.value.dtype
    )


def shard_model(model: nnx.Module, mesh) -> nnx.Module:
    """Place every variable according to its logical sharding annotation on `mesh`."""
    state = nnx.state(model)
    pspecs = nnx.get_partition_spec(state)
    sharded = jax.tree.map(
        lambda x, spec: jax.device_put(x, jax.sharding.NamedSharding(mesh, spec)) if hasattr(x, "shape") else x,
        state,
        pspecs,
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


def apply_lora(model: ToolGemma3, lora_cfg, seed: int) -> ToolGemma3:
    import qwix

    provider = qwix.LoraProvider(
        module_path=lora_cfg.target_modules,
        rank=int(lora_cfg.rank),
        alpha=float(lora_cfg.alpha),
        dropout=float(lora_cfg.dropout),
    )
    lora_model = qwix.apply_lora_to_model(
        model, provider, rngs=nnx.Rngs(params=seed, dropout=seed), **model.get_model_input()
    )
    # the generator's decode step (decode_step.py) applies the adapters itself and needs their
    # scale, which qwix keeps inside its interceptor
    lora_model.lora_scale = float(lora_cfg.alpha) / float(lora_cfg.rank)
    n_lora = count_params(lora_model, nnx.LoRAParam)
    if n_lora == 0:
        raise LoraTargetError(
            f"model.lora.target_modules={lora_cfg.target_modules!r} matches no module of the model; "
            "nothing to train (module paths look like layers/0/attn/q_einsum, layers/0/mlp/gate_proj)"
        )
    return lora_model


def count_params(model: nnx.Module, kind=nnx.Param) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, kind))))


def param_dtype(model_cfg):
    """The parameters' dtype: bfloat16 when model.dtype says so, else float32."""
    return jnp.bfloat16 if str(model_cfg.dtype) == "bfloat16" else jnp.float32
