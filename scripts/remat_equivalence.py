"""Are model.remat=decoder, and the causal attention blocks (causal_attention.py), the same
computation as the plain path on the real model at the recipe's shape? Loss and LoRA gradients of
one 8 x 768 batch under each, beside the noise floor of bf16 itself: the same batch with its rows
reversed (mathematically the same mean loss).

    .venv/bin/python scripts/remat_equivalence.py          # ~8 min on the 2-core EPYC
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from gemma_tool_use.config.schema import register_configs
from gemma_tool_use.data.batching import collate, tokenize_conversations
from gemma_tool_use.data.conversations import load_jsonl_conversations
from gemma_tool_use.model import attention as causal_attention
from gemma_tool_use.model.loading import build_model, load_tokenizer_for
from gemma_tool_use.training import loss as training_loss
from gemma_tool_use.utils.mesh import build_mesh
from gemma_tool_use.utils.paths import conf_dir

register_configs()


def loss_and_grads(setting, reverse_rows, blocks=True):
    # a query block as long as the batch: the dense (tunix) attention path
    causal_attention.QUERY_BLOCK = 128 if blocks else 10**9
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["model=gemma3_270m", f"model.remat={setting}"])
    model = build_model(cfg.model, build_mesh(cfg.tpu), 0)
    # LoRA B starts at zero; perturb it so A's gradients are compared too
    st = nnx.state(model, nnx.LoRAParam)
    st = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(3), x.shape, x.dtype), st)
    nnx.update(model, st)
    tok = load_tokenizer_for(cfg.model)
    data = tokenize_conversations(load_jsonl_conversations("tiny/train.jsonl"), tok, max_length=768)
    batch = collate([data.examples[i] for i in range(8)], [768], per_row_slots=True)  # rows reverse whole
    batch = {k: jnp.asarray(v[::-1] if reverse_rows else v) for k, v in batch.items()}
    f = nnx.jit(
        lambda m, b: nnx.value_and_grad(training_loss.completion_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(m, **b)
    )
    loss, grads = f(model, batch)
    return float(loss), [np.asarray(g, np.float32) for g in jax.tree.leaves(grads)]


def compare(name, a, b):
    rel = [np.linalg.norm(x - y) / (np.linalg.norm(x) + 1e-12) for x, y in zip(a[1], b[1])]
    print(
        f"{name}: loss {a[0]:.6f} vs {b[0]:.6f} (rel {abs(a[0] - b[0]) / a[0]:.1e}), "
        f"LoRA grad rel diff median {np.median(rel):.3f} max {max(rel):.3f}",
        flush=True,
    )


base = loss_and_grads("none", False)
compare("remat decoder vs none", base, loss_and_grads("decoder", False))
compare("attention blocks vs dense (none)", base, loss_and_grads("none", False, blocks=False))
compare("bf16 noise floor: rows reversed vs not (none)", base, loss_and_grads("none", True))
