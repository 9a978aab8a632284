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
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

WORK = Path(tempfile.mkdtemp(prefix="profile_decode_"))
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={WORK}/hlo --xla_dump_hlo_module_re=.*jit_run.*"
                           " --xla_dump_hlo_pass_re=^$").strip()
sys.path.insert(0, str(Path(__file__).resolve().parent))


def hlo_op_names(which: int) -> dict[str, tuple[str, str]]:
    """HLO instruction -> (JAX op name, shape) in the `which`-th compiled generate program (0: the
    max_new_tokens one, 1: the one-token one; they compile in that order)."""
    files = sorted(glob.glob(f"{WORK}/hlo/module_*.jit_run.cpu_after_optimizations.txt"))
    out = {}
    for line in open(files[which]) if len(files) > which else []:
        m = re.match(r"\s+(?:ROOT )?%(\S+) = (\S+) (.*)", line)
        if m:
            name = re.search(r'op_name="([^"]*)"', m.group(3))
            kind = re.search(r"(fusion|copy|dot|convert)\(", m.group(3))
            out[m.group(1)] = (re.sub(r".*/while/body/", "", name.group(1)) if name else (kind.group(1) if kind else "?"),
                               m.group(2))
    return out


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

    from bench_common import real_model, run_facts
    from gemma_tool_use.generate import Generator, SamplingParams
    from gemma_tool_use.model import load_tokenizer_for

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
        traces = {}
        for name, params in (("decode", full), ("prefill", one)):
            jax.profiler.start_trace(str(WORK / name))
            gen.generate_ids(prompts, params)
            jax.profiler.stop_trace()
            traces[name] = sorted(glob.glob(f"{WORK}/{name}/plugins/profile/*/*.trace.json.gz"))[-1]
    def grouped(trace: str, keep, names) -> list[dict]:
        """Profiled ms per call of the ops `keep(count)` selects, grouped by JAX op name."""
        total, count = collections.Counter(), collections.Counter()
        for e in json.load(gzip.open(trace))["traceEvents"]:
            if e.get("ph") == "X" and e.get("args", {}).get("hlo_op"):
                total[e["name"]] += e["dur"]
                count[e["name"]] += 1
        ms, n_ops = collections.Counter(), collections.Counter()
        for op, us in total.items():
            if keep(count[op]):
                key = names.get(op, ("?", "?"))
                key = (f"{re.sub(r'[._]?[0-9]+$', '', op)}: {key[0]}", key[1])
                ms[key] += us / count[op] / 1000
                n_ops[key] += 1
        return [{"op": k[0], "shape": k[1], "ops": n_ops[k], "ms": round(v, 3)} for k, v in ms.most_common()]

    # the decode loop body, per step; and the one-token call: prefill (+ one sample)
    loop = grouped(traces["decode"], lambda c: c in (args.new - 1, args.new), hlo_op_names(0))
    prefill = grouped(traces["prefill"], lambda c: c == 1, hlo_op_names(1))
    result = {"batch": args.batch, "prompt_tokens": args.prompt, "new_tokens": args.new, "lora": args.lora,
              "generate_s": t_full, "prefill_plus_one_s": t_one, "decode_step_ms": round(step_ms, 2),
              "profiled_ms_per_step": round(sum(r["ms"] for r in loop), 2), "decode_ops": loop,
              "profiled_prefill_ms": round(sum(r["ms"] for r in prefill), 1), "prefill_ops": prefill, **run_facts()}
    print(f"decode step {step_ms:.1f} ms (generate {min(t_full):.2f} s, prefill+1 {min(t_one):.2f} s); "
          f"profiled loop ops {result['profiled_ms_per_step']:.1f} ms/step:")
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
