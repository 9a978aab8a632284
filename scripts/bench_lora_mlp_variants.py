"""The MLP of 18 layers (gate, up, down; T x 640 -> 2048 -> 640, bf16), forward + backward, with
its LoRA adapters written several ways, to find the cheapest form for XLA:CPU.

    for v in frozen std fused_gate_up concat_k custom_vjp f32_accumulate broadcast_reduce; do
        .venv/bin/python scripts/bench_lora_mlp_variants.py $v; done
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot .venv/bin/python scripts/bench_lora_mlp_variants.py std

Prints the median of 3 calls after one warm-up, the loss and a gradient checksum (the variants
compute the same function; the checksums agree to bf16 noise). Results: experiments/train_step_bench/README.md.
"""

import sys
import time

import jax
import jax.numpy as jnp

MODE = sys.argv[1]
T = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
D, F, R, LAYERS = 640, 2048, 16, 18
BF = jnp.bfloat16
SCALE = jnp.asarray(2.0, BF)

key = jax.random.split(jax.random.key(0), 10)
x0 = jax.random.normal(key[0], (T, D), BF)
frozen = {
    n: jax.random.normal(k, (LAYERS, *s), BF) * 0.03
    for n, k, s in (("g", key[1], (D, F)), ("u", key[2], (D, F)), ("d", key[3], (F, D)))
}
adapters = {
    n: jax.random.normal(k, (LAYERS, *s), BF) * 0.03
    for n, k, s in (
        ("Ag", key[4], (D, R)),
        ("Au", key[5], (D, R)),
        ("Ad", key[6], (F, R)),
        ("Bg", key[7], (R, F)),
        ("Bu", key[8], (R, F)),
        ("Bd", key[9], (R, D)),
    )
}


@jax.custom_vjp
def lora_custom(x, W, A, B):
    return x @ W + (x @ A) @ (B * SCALE)


def _fwd(x, W, A, B):
    u = x @ A
    return x @ W + u @ (B * SCALE), (x, u, W, A, B)


def _bwd(res, dy):
    x, u, W, A, B = res
    du = dy @ (B * SCALE).T
    return dy @ W.T + du @ A.T, None, x.T @ du, (u.T @ dy) * SCALE


lora_custom.defvjp(_fwd, _bwd)


def lin(x, W, A, B):
    if MODE == "frozen":
        return x @ W
    if MODE in ("std", "fused_gate_up"):
        return x @ W + ((x @ A) @ B) * SCALE
    if MODE == "concat_k":  # the B product folded into the base matmul: [x, s xA] @ [W; B]
        return jnp.concatenate([x, (x @ A) * SCALE], 1) @ jnp.concatenate([W, B], 0)
    if MODE == "custom_vjp":
        return lora_custom(x, W, A, B)
    if MODE == "f32_accumulate":
        return (
            jnp.dot(x, W, preferred_element_type=jnp.float32)
            + jnp.dot(x @ A, B * SCALE, preferred_element_type=jnp.float32)
        ).astype(BF)
    if MODE == "broadcast_reduce":
        return x @ W + jnp.sum((x @ A)[:, :, None] * (B * SCALE)[None], axis=1)
    raise SystemExit(f"unknown variant {MODE}")


def loss(p, x, w):
    for i in range(LAYERS):
        if MODE == "fused_gate_up":
            A = jnp.concatenate([p["Ag"][i], p["Au"][i]], 1)
            B = jnp.zeros((2 * R, 2 * F), BF).at[:R, :F].set(p["Bg"][i]).at[R:, F:].set(p["Bu"][i])
            gu = lin(x, jnp.concatenate([w["g"][i], w["u"][i]], 1), A, B)
            g, u = gu[:, :F], gu[:, F:]
        else:
            g, u = lin(x, w["g"][i], p["Ag"][i], p["Bg"][i]), lin(x, w["u"][i], p["Au"][i], p["Bu"][i])
        x = x + lin(jax.nn.gelu(g) * u, w["d"][i], p["Ad"][i], p["Bd"][i]) * jnp.asarray(0.1, BF)
    return jnp.sum(jnp.square(x.astype(jnp.float32)))  # squares: a ones cotangent would fold away


step = jax.jit(jax.value_and_grad(loss, argnums=1 if MODE == "frozen" else (0, 1)))
out = step(adapters, x0, frozen)
jax.block_until_ready(out)
times = []
for _ in range(3):
    t0 = time.perf_counter()
    out = step(adapters, x0, frozen)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
check = None if MODE == "frozen" else float(jnp.abs(out[1][0]["Bg"].astype(jnp.float32)).sum())
print(f"{MODE} T={T}: {sorted(times)[1] * 1e3:.0f} ms, loss {float(out[0]):.1f}, |dBg| {check}", flush=True)
