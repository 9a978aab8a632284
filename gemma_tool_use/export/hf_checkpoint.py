"""Export a trained model (LoRA adapters and trainable embedding rows merged in, or a fully
fine-tuned model) as a Hugging Face Gemma3ForCausalLM checkpoint: model.safetensors,
config.json and tokenizer.model. Loadable by `model.source=hf` here and by transformers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx


def _merged(module, base: str, einsum: str, scale: float) -> np.ndarray:
    w = getattr(module, base).value.astype(jnp.float32)
    a = getattr(module, f"{base}_lora_a", None)
    if a is None:
        return np.asarray(w)
    b = getattr(module, f"{base}_lora_b")
    return np.asarray(w + scale * jnp.einsum(einsum, a.value.astype(jnp.float32), b.value.astype(jnp.float32)))


def merged_hf_tensors(model, lora_scale: float) -> dict[str, np.ndarray]:
    """Effective weights (base + alpha/rank * A@B) under Hugging Face names, float32."""
    emb = model.embedder
    table = emb.merged_table() if hasattr(emb, "merged_table") else emb.input_embedding.value
    out = {
        "model.embed_tokens.weight": np.asarray(table, np.float32),
        "model.norm.weight": np.asarray(model.final_norm.scale.value, np.float32),
    }
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        attn, mlp = layer.attn, layer.mlp
        q = _merged(attn.q_einsum, "w", "dr,rnh->ndh", lora_scale)  # (N, D, H)
        kv = _merged(attn.kv_einsum, "w", "dr,rckh->ckdh", lora_scale)  # (2, K, D, H)
        o = _merged(attn.attn_vec_einsum, "w", "nhr,rd->nhd", lora_scale)  # (N, H, D)
        n, d, h = q.shape
        out[p + "self_attn.q_proj.weight"] = q.transpose(0, 2, 1).reshape(n * h, d)
        out[p + "self_attn.k_proj.weight"] = kv[0].transpose(0, 2, 1).reshape(-1, d)
        out[p + "self_attn.v_proj.weight"] = kv[1].transpose(0, 2, 1).reshape(-1, d)
        out[p + "self_attn.o_proj.weight"] = o.reshape(n * h, d).T
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[p + f"mlp.{name}.weight"] = _merged(getattr(mlp, name), "kernel", "ir,ro->io", lora_scale).T
        out[p + "self_attn.q_norm.weight"] = np.asarray(attn._query_norm.scale.value, np.float32)
        out[p + "self_attn.k_norm.weight"] = np.asarray(attn._key_norm.scale.value, np.float32)
        for ours, theirs in (
            ("pre_attention_norm", "input_layernorm"),
            ("post_attention_norm", "post_attention_layernorm"),
            ("pre_ffw_norm", "pre_feedforward_layernorm"),
            ("post_ffw_norm", "post_feedforward_layernorm"),
        ):
            out[p + f"{theirs}.weight"] = np.asarray(getattr(layer, ours).scale.value, np.float32)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def lora_merge_scale(model, model_cfg) -> float:
    """alpha / rank when the model carries LoRA adapters, else 0 (nothing to merge)."""
    lora = model_cfg.lora
    has_lora = any(True for _ in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)))
    return float(lora.alpha) / float(lora.rank) if lora.enabled and has_lora else 0.0


def export_hf(model, model_cfg, out_dir: str | Path, tokenizer_file: str | Path | None = None) -> Path:
    from safetensors.numpy import save_file

    scale = lora_merge_scale(model, model_cfg)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = merged_hf_tensors(model, scale)
    save_file(tensors, str(tmp / "model.safetensors"))
    a = model_cfg.arch
    (tmp / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["Gemma3ForCausalLM"],
                "model_type": "gemma3_text",
                "vocab_size": a.num_embed,
                "hidden_size": a.embed_dim,
                "intermediate_size": a.hidden_dim,
                "num_hidden_layers": a.num_layers,
                "num_attention_heads": a.num_heads,
                "num_key_value_heads": a.num_kv_heads,
                "head_dim": a.head_dim,
                "sliding_window": a.sliding_window_size,
                "rope_theta": a.global_base_frequency,
                "rope_local_base_freq": a.local_base_frequency,
                "query_pre_attn_scalar": a.head_dim,
                "hidden_activation": "gelu_pytorch_tanh",
                "rms_norm_eps": 1e-6,
                "tie_word_embeddings": True,
                "torch_dtype": "float32",
                "exported_by": "gemma_tool_use.export",
            },
            indent=2,
        )
    )
    if tokenizer_file and Path(tokenizer_file).is_file():
        shutil.copy(tokenizer_file, tmp / "tokenizer.model")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
