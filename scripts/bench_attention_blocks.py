"""One layer's attention core, forward + backward, dense (tunix's maths) vs causal query blocks.

    .venv/bin/python scripts/bench_attention_blocks.py --out experiments/train_step_bench/attention_blocks.json

Shapes of the 270M model (4 query heads, 1 kv head of 256), bf16, a causal mask; the local
layers' 512-token window as a second case. Median of 5 jitted calls after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", default="256,768,1024")
    ap.add_argument("--blocks", default="64,128,256")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from gemma_tool_use.model.attention import _softmax_attention, attend

    from bench_common import run_facts

    def dense(q, k, v, mask, window):
        T = q.shape[1]
        if window is not None:
            t = jnp.arange(T)
            mask = mask & ((t[:, None] - t[None, :]) < window)
        return _softmax_attention(q, k, v, mask)

    rows = []
    for T in map(int, args.seq.split(",")):
        key = jax.random.split(jax.random.key(0), 3)
        q = jax.random.normal(key[0], (args.batch, T, 4, 256), jnp.bfloat16)
        k, v = (jax.random.normal(r, (args.batch, T, 1, 256), jnp.bfloat16) for r in key[1:])
        mask = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (args.batch, T, T))
        for window in (None, 512):
            variants = [("dense", lambda q, k, v, w: dense(q, k, v, mask, w))] + [
                (f"blocks {b}", lambda q, k, v, w, b=b: attend(q, k, v, mask, window=w, block=b))
                for b in map(int, args.blocks.split(","))
            ]
            for name, f in variants:
                g = jax.jit(
                    jax.value_and_grad(
                        lambda q, k, v, f=f, w=window: jnp.sum(f(q, k, v, w).astype(jnp.float32) ** 2),
                        argnums=(0, 1, 2),
                    )
                )
                jax.block_until_ready(g(q, k, v))
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    jax.block_until_ready(g(q, k, v))
                    times.append(time.perf_counter() - t0)
                rows.append(
                    {"seq": T, "window": window, "variant": name, "median_ms": round(statistics.median(times) * 1e3, 1)}
                )
                print(rows[-1], flush=True)
    Path(args.out).write_text(json.dumps({"batch": args.batch, **run_facts(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
