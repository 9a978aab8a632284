"""What a LoRA adapter adds to one projection, forward + backward, in JAX (XLA:CPU) and in PyTorch.

    .venv/bin/python scripts/bench_lora_linear.py --peer-python /work/peer-venv/bin/python \
        --out experiments/train_step_bench/lora_linear.json

One bf16 projection of the 270M model's MLP (640 -> 2048 and 2048 -> 640), T rows, LoRA rank 16
in the usual unmerged form y = x W + (x A) B * s, gradients for x, A and B (W frozen), against
the same projection without the adapter (gradient for x only). A chain of 18 such layers per
call, so the timings are of a size where dispatch does not matter. Median of 5 calls after one
warm-up; each side in its own process, the sides one after the other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

LAYERS, RANK, SCALE = 18, 16, 2.0
SHAPES = [(640, 2048), (2048, 640)]


def run_jax(T: int) -> dict:
    import jax
    import jax.numpy as jnp

    out = {}
    for d_in, d_out in SHAPES:
        key = jax.random.split(jax.random.key(0), 4)
        x = jax.random.normal(key[0], (T, d_in), jnp.bfloat16)
        W = jax.random.normal(key[1], (LAYERS, d_in, d_out), jnp.bfloat16) * 0.02
        A = jax.random.normal(key[2], (LAYERS, d_in, RANK), jnp.bfloat16) * 0.02
        B = jax.random.normal(key[3], (LAYERS, RANK, d_out), jnp.bfloat16) * 0.02
        P = jax.random.normal(key[0], (LAYERS, d_out, d_in), jnp.bfloat16) * 0.02  # back to d_in, frozen

        def loss(adapters, x, frozen, lora):  # frozen weights are arguments: constants would be folded
            W, P = frozen
            for i in range(LAYERS):
                y = x @ W[i]
                if lora:
                    y = y + ((x @ adapters[0][i]) @ adapters[1][i]) * jnp.asarray(SCALE, jnp.bfloat16)
                x = y @ P[i]
            # squares: a cotangent of ones would let XLA fold the backward into row sums
            return jnp.sum(jnp.square(x.astype(jnp.float32)))

        for lora in (False, True):
            f = jax.jit(jax.grad(loss, argnums=(0, 1) if lora else 1), static_argnums=3)
            jax.block_until_ready(f((A, B), x, (W, P), lora))
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                jax.block_until_ready(f((A, B), x, (W, P), lora))
                times.append(time.perf_counter() - t0)
            out[f"{d_in}->{d_out} {'lora' if lora else 'frozen'}"] = statistics.median(times) * 1e3
    return out


def run_torch(T: int) -> dict:
    import torch

    torch.manual_seed(0)
    out = {}
    for d_in, d_out in SHAPES:
        x0 = torch.randn(T, d_in, dtype=torch.bfloat16)
        W = torch.randn(LAYERS, d_in, d_out, dtype=torch.bfloat16) * 0.02
        A = (torch.randn(LAYERS, d_in, RANK, dtype=torch.bfloat16) * 0.02).requires_grad_()
        B = (torch.randn(LAYERS, RANK, d_out, dtype=torch.bfloat16) * 0.02).requires_grad_()
        P = torch.randn(LAYERS, d_out, d_in, dtype=torch.bfloat16) * 0.02
        for lora in (False, True):

            def call():
                x = x0.clone().requires_grad_()
                h = x
                for i in range(LAYERS):
                    y = h @ W[i]
                    if lora:
                        y = y + ((h @ A[i]) @ B[i]) * SCALE
                    h = y @ P[i]
                h.float().square().sum().backward()
                A.grad = B.grad = None

            call()
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            out[f"{d_in}->{d_out} {'lora' if lora else 'frozen'}"] = statistics.median(times) * 1e3
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["jax", "torch"])
    ap.add_argument("--rows", default="1024,6144", help="T values (4 x 256 and 8 x 768 positions)")
    ap.add_argument("--peer-python", default=sys.executable)
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = [int(t) for t in args.rows.split(",")]
    if args.worker:
        if args.worker == "torch":
            import torch

            torch.set_num_threads(2)
        fn = run_jax if args.worker == "jax" else run_torch
        print(json.dumps({str(t): fn(t) for t in rows}))
        return
    results = {}
    for side, python in (("jax", sys.executable), ("torch", args.peer_python)):
        proc = subprocess.run([python, __file__, "--worker", side, "--rows", args.rows], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    table = []
    for t in map(str, rows):
        for shape in (f"{a}->{b}" for a, b in SHAPES):
            row = {"rows": int(t), "projection": shape}
            for side in results:
                frozen, lora = results[side][t][f"{shape} frozen"], results[side][t][f"{shape} lora"]
                row[side] = {
                    "frozen_ms": round(frozen, 1),
                    "lora_ms": round(lora, 1),
                    "adapter_share": round(lora / frozen - 1, 3),
                }
            table.append(row)
            print(row, flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import run_facts

    if args.out:
        Path(args.out).write_text(
            json.dumps({**run_facts(), "layers": LAYERS, "rank": RANK, "rows": table}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
