"""Where a greedy decode step of the real model spends its time, op by op (XLA:CPU profile).

    .venv/bin/python scripts/profile_decode.py --batch 8 --prompt 200 --new 64 --out experiments/decode_step/profile.json

Times `reps` generate calls of `new` tokens and of 1 token (the difference over new-1 steps is
the decode step), then runs one call under jax.profiler and sums, per op of the decode loop (ops
that ran new-1 or new times), the profiled time per step, grouped by the JAX op name XLA kept in
the optimized HLO (dumped with --xla_dump_to). Copies and transposes inside the loop body show
up here, as they did before decode_step.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

WORK = Path(tempfile.mkdtemp(prefix="profile_decode_"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import hlo_dump_flags  # noqa: E402

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + hlo_dump_flags(f"{WORK}/hlo", ".*jit_run.*")).strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=200)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lora", action="store_true", help="with (random) LoRA adapters and trained rows")
    ap.add_argument("--out")
    args = ap.parse_args()

    import jax
    import numpy as np

    from gemma_tool_use.generation.generator import Generator, SamplingParams
    from gemma_tool_use.model.loading import load_tokenizer_for

    from bench_common import op_table, real_model, run_facts

    cfg, mesh, model = real_model(f"model.lora.enabled={str(args.lora).lower()}", training=False)
    rng = np.random.default_rng(0)
    prompts = [[2] + rng.integers(1000, 200000, args.prompt - 1).tolist() for _ in range(args.batch)]
    gen = Generator(model, load_tokenizer_for(cfg.model), batch_size=args.batch)
    full = SamplingParams(max_new_tokens=args.new, stop_ids=(-1,))
    one = SamplingParams(max_new_tokens=1, stop_ids=(-1,))

    def timed(params):
        gen.generate_ids(prompts, params)  # compile
        ts = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            gen.generate_ids(prompts, params)
            ts.append(time.perf_counter() - t0)
        return ts

    with mesh:
        t_full, t_one = timed(full), timed(one)
        step_ms = (min(t_full) - min(t_one)) / (args.new - 1) * 1000
        for name, params in (("decode", full), ("prefill", one)):
            jax.profiler.start_trace(str(WORK / name))
            gen.generate_ids(prompts, params)
            jax.profiler.stop_trace()

    def per_call(rows: list[dict]) -> list[dict]:
        return [{**r, "ms": round(r["ms"] / r["runs_each"], 3)} for r in rows]

    # the decode loop body, per step (ops that ran new-1 or new times); and the one-token call:
    # prefill (+ one sample). The two programs compile in that order, both named jit_run.
    loop = per_call(op_table(f"{WORK}/decode", f"{WORK}/hlo", lambda c: c in (args.new - 1, args.new), module=0))
    prefill = op_table(f"{WORK}/prefill", f"{WORK}/hlo", lambda c: c == 1, module=1)
    result = {
        "batch": args.batch,
        "prompt_tokens": args.prompt,
        "new_tokens": args.new,
        "lora": args.lora,
        "generate_s": t_full,
        "prefill_plus_one_s": t_one,
        "decode_step_ms": round(step_ms, 2),
        "profiled_ms_per_step": round(sum(r["ms"] for r in loop), 2),
        "decode_ops": loop,
        "profiled_prefill_ms": round(sum(r["ms"] for r in prefill), 1),
        "prefill_ops": prefill,
        **run_facts(),
    }
    print(
        f"decode step {step_ms:.1f} ms (generate {min(t_full):.2f} s, prefill+1 {min(t_one):.2f} s); "
        f"profiled loop ops {result['profiled_ms_per_step']:.1f} ms/step:"
    )
    for r in loop[:20]:
        print(f"  {r['ms']:7.2f} ms  {r['ops']:4d} x  {r['op'][:70]:70s} {r['shape']}")
    print(f"prefill call: profiled {result['profiled_prefill_ms']:.0f} ms:")
    for r in prefill[:20]:
        print(f"  {r['ms']:7.1f} ms  {r['ops']:4d} x  {r['op'][:70]:70s} {r['shape']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
