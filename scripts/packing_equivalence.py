"""Is a packed batch (data.pack_length) the same computation as padded rows on the real model?
Loss and LoRA gradients of the same conversations, padded one per row vs packed several per row
(each attending to itself, positions restarting), beside the noise floor of bf16 itself: the
padded batch with its rows reversed (mathematically the same mean loss).

    .venv/bin/python scripts/packing_equivalence.py --out experiments/packing/equivalence.json
    .venv/bin/python scripts/packing_equivalence.py --dtype float32 --out experiments/packing/equivalence_f32.json
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemma_tool_use.data.batching import collate, collate_packed, pack_rows, tokenize_conversations
from gemma_tool_use.data.conversations import load_jsonl_conversations
from gemma_tool_use.model.loading import load_tokenizer_for
from gemma_tool_use.training import loss as training_loss

from bench_common import real_model, run_facts

ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, default=12)
ap.add_argument("--pack-length", type=int, default=768)
ap.add_argument(
    "--dtype",
    default="bfloat16",
    choices=["bfloat16", "float32"],
    help="float32: the same comparison without bf16's rounding (should agree to ~1e-5)",
)
ap.add_argument("--out", required=True)
args = ap.parse_args()

cfg, mesh, model = real_model("model.train_token_ids=[105,106]", f"model.dtype={args.dtype}")
# LoRA B starts at zero; perturb the adapters so A's gradients are compared too
st = nnx.state(model, nnx.LoRAParam)
nnx.update(model, jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(3), x.shape, x.dtype), st))
tok = load_tokenizer_for(cfg.model)
ex = tokenize_conversations(load_jsonl_conversations("tiny/train.jsonl"), tok, max_length=args.pack_length).examples
ex = [ex[i % len(ex)] for i in range(args.rows)]
buckets = [256, 512, args.pack_length]
bins = pack_rows([len(e) for e in ex], args.pack_length, seed=0, epoch=0)
batches = {
    "padded": collate(ex, buckets),
    "padded, rows reversed": collate(ex[::-1], buckets),
    "packed": collate_packed([[ex[i] for i in b] for b in bins], buckets),
}
f = nnx.jit(
    lambda m, b: nnx.value_and_grad(training_loss.completion_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(m, **b)
)
res = {}
with mesh:
    for name, batch in batches.items():
        loss, grads = f(model, {k: jnp.asarray(v) for k, v in batch.items()})
        res[name] = (float(loss), [np.asarray(g, np.float32) for g in jax.tree.leaves(grads)])


def compare(a, b):
    rel = [np.linalg.norm(x - y) / (np.linalg.norm(x) + 1e-12) for x, y in zip(res[a][1], res[b][1])]
    return {
        "loss": [res[a][0], res[b][0]],
        "loss_rel_diff": abs(res[a][0] - res[b][0]) / res[a][0],
        "lora_grad_rel_diff_median": float(np.median(rel)),
        "lora_grad_rel_diff_max": float(max(rel)),
    }


out = {
    "rows": args.rows,
    "dtype": args.dtype,
    "shapes": {k: list(v["input_tokens"].shape) for k, v in batches.items()},
    "real_tokens": int(batches["padded"]["input_mask"].sum()),
    "packed vs padded": compare("padded", "packed"),
    "bf16 noise floor: padded rows reversed vs not": compare("padded", "padded, rows reversed"),
    **run_facts(),
}
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text(json.dumps(out, indent=2))
print(json.dumps(out, indent=2))
