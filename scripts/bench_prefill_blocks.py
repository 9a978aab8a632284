"""Generation's prefill on the real 270M model (base weights), dense attention vs causal query
blocks (causal_attention.py): batches of 8 prompts at 384, 512 and 1,024 tokens, the first fifth
of each row left padding, logits at the last position, an empty cache as wide as the prompt.
Median of 3 calls after one warm-up, the two settings alternating twice.

    .venv/bin/python scripts/bench_prefill_blocks.py      # ~4 min on the 2-core EPYC
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_common import real_model  # noqa: E402
from flax import nnx  # noqa: E402

from gemma_tool_use.generate import _init_cache  # noqa: E402
from gemma_tool_use.model import tunix_config  # noqa: E402

cfg, mesh, model = real_model("model.lora.enabled=false")
mcfg = tunix_config(cfg.model)
for B, T in ((8, 384), (8, 512), (8, 1024)):
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(3, 1000, (B, T)), jnp.int32)
    valid = np.ones((B, T), bool); valid[:, : T // 5] = False  # some left padding
    valid = jnp.asarray(valid)
    positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
    mask = jnp.tril(jnp.ones((T, T), bool))[None] & valid[:, None, :]
    res = {}
    for causal in (False, True, False, True):
        f = nnx.jit(lambda m, t, p, msk, c=causal: m(t, p, _init_cache(mcfg, B, T, jnp.bfloat16), msk,
                                                      logits_at=jnp.full((B, 1), T - 1, jnp.int32), causal_mask=c))
        jax.block_until_ready(f(model, tokens, positions, mask))
        ts = []
        for _ in range(3):
            t0 = time.perf_counter(); out = f(model, tokens, positions, mask); jax.block_until_ready(out); ts.append(time.perf_counter() - t0)
        res.setdefault(causal, []).append(sorted(ts)[1])
        last = out[0]
    print(B, T, {k: [round(x * 1e3) for x in v] for k, v in res.items()}, flush=True)
