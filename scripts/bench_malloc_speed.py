"""The speed price of host_memory.tune_malloc: our LoRA step 4x256 and greedy generation at batch 8,
alternating processes with GTU_MALLOC_TUNING=1 and 0 (bench_peer.py workers, same inputs).

    .venv/bin/python scripts/bench_malloc_speed.py   # ~5 min; writes /tmp/malloc_ab.json
"""

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, "scripts")
from bench_peer import worker_command, write_inputs

inputs = Path("/tmp/malloc_ab_inputs.npz")
write_inputs(inputs, [(4, 256)], [], [8], "tiny/train.jsonl")
res = {}
for order in [("1", "0"), ("0", "1")]:
    for task, b, t in (("train", 4, 256), ("generate", 8, 200)):
        for tun in order:
            env = {**os.environ, "GTU_MALLOC_TUNING": tun}
            p = subprocess.run(
                worker_command(sys.executable, "ours", task, b, t, inputs, 3 if task == "train" else 2),
                capture_output=True,
                text=True,
                env=env,
            )
            r = json.loads(p.stdout.strip().splitlines()[-1])
            res.setdefault(f"{task} tuning={tun}", []).append(r["seconds"])
            print(
                task,
                "tuning",
                tun,
                [round(x, 3) for x in r["seconds"]],
                "peak",
                round(r["peak_rss_gib"], 2),
                flush=True,
            )
json.dump(res, open("/tmp/malloc_ab.json", "w"), indent=1)
