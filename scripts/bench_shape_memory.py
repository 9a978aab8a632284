"""Resident memory of a training process as it meets new batch shapes, under a chosen allocator.

A real run compiles one LoRA train step per (length, loss positions) shape it meets, and its RSS
climbed at each new shape (sft_small: 22.6 GiB peak at 8 x <=768, where one 8 x 768 step alone
peaks at 12.6 GiB). This script replays such a sequence of shapes in one process on the real
Gemma 3 270M and records, after each step, the resident set now (VmRSS) and its peak (VmHWM):

    .venv/bin/python scripts/bench_shape_memory.py --out experiments/shape_memory/glibc_default.json
    MALLOC_MMAP_THRESHOLD_=1048576 .venv/bin/python scripts/bench_shape_memory.py \
        --out experiments/shape_memory/glibc_mmap_1m.json
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 .venv/bin/python scripts/bench_shape_memory.py \
        --out experiments/shape_memory/jemalloc.json

Each batch is made of real rows (the bundled tiny set) padded to the shape, so the numbers are
those of real steps; the losses are printed so runs under different allocators can be compared.
"""

import argparse
import json
import os
import time
from pathlib import Path


def proc_status_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / (1 << 20)  # kB -> GiB
    raise KeyError(field)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    # The cpu recipe's buckets (256, 512, 768), each with the loss-position counts collate picks
    # (T/8, T/4, T/2), in the order a length-grouped epoch meets them, then the first shapes again.
    # (Since 2026-12-05 collate deals a batch's targets over its rows, so training batches have fewer
    # slots than these per-row counts; the shapes stay as recorded for comparison with old runs.)
    ap.add_argument(
        "--shapes",
        default="256x64,512x64,512x128,768x96,768x192,768x384,256x32,512x64,768x192",
        help="TxK list: sequence length x loss positions per row",
    )
    ap.add_argument("--remat", choices=["none", "block", "decoder"], default="none")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import jax
    import numpy as np

    from gemma_tool_use.data.batching import tokenize_conversations
    from gemma_tool_use.data.conversations import load_jsonl_conversations
    from gemma_tool_use.model.loading import load_tokenizer_for

    from bench_common import lora_train_step, real_model, run_facts

    cfg, mesh, model = real_model(f"model.remat={args.remat}")
    tok = load_tokenizer_for(cfg.model)
    rows = tokenize_conversations(load_jsonl_conversations("tiny/train.jsonl"), tok, max_length=4096).examples
    rng = np.random.default_rng(0)

    def batch_of(T: int, K: int) -> dict:
        # Real token sequences tiled to length T; K loss positions per row spread over the row.
        B = args.batch
        tokens = np.zeros((B, T), np.int32)
        for b in range(B):
            ids = np.concatenate([rows[(b + i) % len(rows)].ids for i in range(T // 64 + 2)])[:T]
            tokens[b] = ids
        mask = np.ones((B, T), bool)
        pos = np.sort(np.stack([rng.choice(T - 1, K, replace=False) for _ in range(B)]), axis=1).astype(np.int32)
        tgt = np.take_along_axis(tokens, pos + 1, axis=1)
        return {
            "input_tokens": tokens,
            "input_mask": mask,
            "target_positions": pos,
            "target_ids": tgt,
            "target_weights": np.ones((B, K), np.float32),
        }

    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    records = []
    base = {"rss_gib": proc_status_gib("VmRSS"), "hwm_gib": proc_status_gib("VmHWM")}
    with mesh:
        step = lora_train_step(cfg, model)
        for T, K in shapes:
            t0 = time.perf_counter()
            loss, _, _ = step(batch_of(T, K))
            jax.block_until_ready(loss)
            rec = {
                "shape": f"{args.batch}x{T}, K={K}",
                "seconds": round(time.perf_counter() - t0, 1),
                "loss": round(float(loss), 4),
                "rss_gib": round(proc_status_gib("VmRSS"), 2),
                "hwm_gib": round(proc_status_gib("VmHWM"), 2),
            }
            records.append(rec)
            print(json.dumps(rec), flush=True)
    out = {
        "allocator_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"},
        "remat": args.remat,
        "after_model_load": {k: round(v, 2) for k, v in base.items()},
        "steps": records,
        "peak_rss_gib": max(r["hwm_gib"] for r in records),
        "final_rss_gib": records[-1]["rss_gib"],
        **run_facts(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("allocator_env", "peak_rss_gib", "final_rss_gib")}))


if __name__ == "__main__":
    main()
