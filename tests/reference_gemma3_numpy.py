"""An independent float32 numpy Gemma 3 (text) forward pass over Hugging Face-named weights,
written from the architecture description (not from tunix), to check our JAX model."""

import numpy as np


def rms_norm(x, w, eps=1e-6):
    x = x.astype(np.float32)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (1.0 + w)


def rope(x, positions, base):
    # x: [T, heads, H]; rotate-half convention (first half / second half).
    half = x.shape[-1] // 2
    inv = base ** (-np.arange(half, dtype=np.float64) * 2.0 / x.shape[-1])
    ang = (positions[:, None].astype(np.float64) * inv[None, :])[:, None, :]
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def forward(
    w,
    ids,
    *,
    num_layers,
    num_heads,
    num_kv_heads,
    head_dim,
    sliding_window,
    local_base=10_000.0,
    global_base=1_000_000.0,
    logits_at=None,
):
    """Logits [len(logits_at), vocab] for one unpadded sequence `ids`."""
    ids = np.asarray(ids)
    T = len(ids)
    emb = w["model.embed_tokens.weight"]
    d = emb.shape[1]
    h = emb[ids].astype(np.float32) * np.float32(np.sqrt(d))
    pos = np.arange(T)
    i, j = np.meshgrid(pos, pos, indexing="ij")
    causal = j <= i
    for layer in range(num_layers):
        p = f"model.layers.{layer}."
        is_global = (layer + 1) % 6 == 0  # 5 local : 1 global
        a = rms_norm(h, w[p + "input_layernorm.weight"])
        q = (a @ w[p + "self_attn.q_proj.weight"].T).reshape(T, num_heads, head_dim)
        k = (a @ w[p + "self_attn.k_proj.weight"].T).reshape(T, num_kv_heads, head_dim)
        v = (a @ w[p + "self_attn.v_proj.weight"].T).reshape(T, num_kv_heads, head_dim)
        q = rms_norm(q, w[p + "self_attn.q_norm.weight"])
        k = rms_norm(k, w[p + "self_attn.k_norm.weight"])
        base = global_base if is_global else local_base
        q = rope(q, pos, base) * np.float32(head_dim**-0.5)
        k = rope(k, pos, base)
        mask = causal if is_global else causal & (i - j < sliding_window)
        group = num_heads // num_kv_heads
        out = np.empty((T, num_heads, head_dim), np.float32)
        for n in range(num_heads):
            s = q[:, n, :] @ k[:, n // group, :].T
            s = np.where(mask, s, -np.inf)
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            out[:, n, :] = (s / s.sum(axis=-1, keepdims=True)) @ v[:, n // group, :]
        o = out.reshape(T, num_heads * head_dim) @ w[p + "self_attn.o_proj.weight"].T
        h = h + rms_norm(o, w[p + "post_attention_layernorm.weight"])
        a = rms_norm(h, w[p + "pre_feedforward_layernorm.weight"])
        m = gelu_tanh(a @ w[p + "mlp.gate_proj.weight"].T) * (a @ w[p + "mlp.up_proj.weight"].T)
        h = h + rms_norm(m @ w[p + "mlp.down_proj.weight"].T, w[p + "post_feedforward_layernorm.weight"])
    sel = np.arange(T) if logits_at is None else np.asarray(logits_at)
    return rms_norm(h[sel], w["model.norm.weight"]) @ emb.T
