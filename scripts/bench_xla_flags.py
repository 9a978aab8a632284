"""Our LoRA train step and prefill under XLA CPU option sets, each in a fresh process, so
one run says which XLA_FLAGS (if any) pay on this machine. Same inputs and workers as
scripts/bench_peer.py (ours only); flag sets alternate, repetition by repetition.

    .venv/bin/python scripts/bench_xla_flags.py --out experiments/xla_flags/result.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peer import parse_shape, spread, worker_command, write_inputs  # noqa: E402

from bench_common import ROOT, run_facts  # noqa: E402

FLAG_SETS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default=",".join(FLAG_SETS), help="names from FLAG_SETS, comma-separated")
    ap.add_argument("--tasks", default="train 4x256,prefill 4x256")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    inputs = out_path.with_suffix(".inputs.npz")
    tasks = [(t.split()[0], *parse_shape(t.split()[1])) for t in args.tasks.split(",")]
    write_inputs(
        inputs,
        [(b, t) for k, b, t in tasks if k == "train"],
        [(b, t) for k, b, t in tasks if k == "prefill"],
        [],
        "tiny/train.jsonl",
    )
    sets = args.sets.split(",")
    runs = {f"{k} {b}x{t}": {s: [] for s in sets} for k, b, t in tasks}
    t0 = time.time()
    for rep in range(args.reps):
        for task, b, t in tasks:
            for name in sets if rep % 2 == 0 else sets[::-1]:
                env = {**os.environ, "XLA_FLAGS": FLAG_SETS[name]}
                cmd = worker_command(sys.executable, "ours", task, b, t, inputs, args.steps)
                p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
                if p.returncode != 0:
                    r = {
                        "error": p.stderr.strip().splitlines()[-1][:300] if p.stderr.strip() else f"exit {p.returncode}"
                    }
                else:
                    r = json.loads(p.stdout.strip().splitlines()[-1])
                runs[f"{task} {b}x{t}"][name].append(r)
                shown = (
                    r.get("error")
                    or f"{statistics.median(r['seconds']):.3f} s, compile+first {r['first_call_s']:.1f} s"
                )
                print(f"[{time.time() - t0:6.0f} s] {task} {b}x{t} {name}: {shown}", flush=True)
    table = {}
    for key, by_set in runs.items():
        ok = {s: [statistics.median(r["seconds"]) for r in rs if "seconds" in r] for s, rs in by_set.items()}
        base = statistics.median(ok["default"]) if ok.get("default") else None
        table[key] = {
            s: (
                {"seconds": spread(v), "speedup_vs_default": round(base / statistics.median(v), 3) if base else None}
                if v
                else {"error": by_set[s][0].get("error")}
            )
            for s, v in ok.items()
        }
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "flag_sets": {s: FLAG_SETS[s] for s in sets},
        "results": table,
        "raw": runs,
        "wall_s": round(time.time() - t0, 1),
        **run_facts(),
    }
    out_path.write_text(json.dumps(report, indent=2))
    inputs.unlink()
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
