"""Our completion-only loss against tunix's default loss on the same batch and model:
step time, tokens/s and peak memory of one LoRA train step on the real Gemma 3 270M.

    .venv/bin/python scripts/bench_train_step.py --loss ours --out experiments/train_step_bench/ours.json
    .venv/bin/python scripts/bench_train_step.py --loss tunix --out experiments/train_step_bench/tunix.json
    .venv/bin/python scripts/bench_train_step.py --loss ours --batch 8 --seq 768 --steps 2 --remat decoder \
        --out experiments/train_step_bench/remat_decoder_8x768.json
    .venv/bin/python scripts/bench_train_step.py --loss ours --profile --out experiments/train_step_bench/profile_4x256.json

One loss per process, so each peak-RSS figure belongs to one loss only.
"""

import argparse
import json
import resource
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loss", choices=["ours", "tunix"], required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--remat", choices=["none", "block", "decoder"], default="none")
    ap.add_argument("--profile", action="store_true", help="then profile one more step: time per op (XLA:CPU trace)")
    ap.add_argument("--out", required=True)
    return ap.parse_args()


def prepare_profile() -> str:
    """A scratch directory for the trace and the HLO dump; sets XLA_FLAGS, so call it before jax is imported."""
    import os
    import tempfile

    work = tempfile.mkdtemp(prefix="bench_train_step_")
    from bench_common import hlo_dump_flags

    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " " + hlo_dump_flags(f"{work}/hlo", ".*train.*")
    ).strip()
    return work


def make_batch(cfg, args) -> dict:
    """args.batch rows of tiny/train.jsonl (cycled) at length args.seq, padding tokens zeroed."""
    import numpy as np

    from gemma_tool_use.data.batching import collate, tokenize_conversations
    from gemma_tool_use.data.conversations import load_jsonl_conversations
    from gemma_tool_use.model.loading import load_tokenizer_for

    tok = load_tokenizer_for(cfg.model)
    rows = load_jsonl_conversations("tiny/train.jsonl")
    data = tokenize_conversations(rows, tok, max_length=args.seq)
    # tunix's loss below reads targets per row, so it gets per-row slots; ours gets collate's dealt slots
    batch = collate(
        [data.examples[i % len(data.examples)] for i in range(args.batch)],
        [args.seq],
        per_row_slots=args.loss == "tunix",
    )
    batch["input_tokens"] = np.where(batch["input_mask"], batch["input_tokens"], 0)
    return batch


def tunix_loss(model, input_tokens, input_mask, target_positions, target_ids, target_weights):
    # tunix's default: full-vocabulary logits at every position and a one-hot target.
    import jax
    import jax.numpy as jnp
    from tunix.sft import utils as sft_utils

    positions = sft_utils.build_positions_from_mask(input_mask)
    attn = sft_utils.make_causal_attn_mask(input_mask)
    logits, _ = model(input_tokens, positions, None, attn)
    logits = logits[:, :-1, :]
    loss_mask = (
        jnp.zeros(input_tokens.shape, jnp.float32)
        .at[jnp.arange(input_tokens.shape[0])[:, None], target_positions + 1]
        .max(target_weights)[:, 1:]
    )
    one_hot = jax.nn.one_hot(input_tokens[:, 1:], logits.shape[-1]) * loss_mask[..., None]
    return -jnp.sum(jax.nn.log_softmax(logits) * one_hot) / (jnp.sum(loss_mask) + 1e-8)


def time_steps(cfg, mesh, model, batch, args, work):
    """args.steps + 1 timed train steps (the first compiles), then one profiled step if asked.
    Returns (times, last loss)."""
    import jax

    from gemma_tool_use.training.loss import completion_loss

    from bench_common import lora_train_step

    times = []
    with mesh:
        step = lora_train_step(cfg, model, completion_loss if args.loss == "ours" else tunix_loss, args.steps + 2)
        for _ in range(args.steps + 1):
            t0 = time.perf_counter()
            loss, _, _ = step(batch)
            jax.block_until_ready(loss)
            times.append(time.perf_counter() - t0)
        if args.profile:
            jax.profiler.start_trace(f"{work}/trace")
            jax.block_until_ready(step(batch)[0])
            jax.profiler.stop_trace()
    return times, loss


def add_profile(out: dict, work: str) -> None:
    """The profiled step's time per op, in total and by kind."""
    from bench_common import op_table

    ops = op_table(f"{work}/trace", f"{work}/hlo")
    out["profiled_step_ms"] = round(sum(r["ms"] for r in ops), 1)
    out["profiled_ms_by_kind"] = {}
    for r in ops:
        out["profiled_ms_by_kind"][r["kind"]] = round(out["profiled_ms_by_kind"].get(r["kind"], 0) + r["ms"], 1)
    out["ops"] = ops


def main():
    args = parse_args()
    work = prepare_profile() if args.profile else None

    import numpy as np

    from bench_common import real_model, run_facts

    cfg, mesh, model = real_model(f"model.remat={args.remat}")
    batch = make_batch(cfg, args)
    times, loss = time_steps(cfg, mesh, model, batch, args, work)
    warm = times[1:]
    tokens = int(batch["input_mask"].sum())
    out = {
        "loss_fn": args.loss,
        "remat": args.remat,
        "batch": args.batch,
        "seq_len": args.seq,
        "tokens_per_step": tokens,
        "target_tokens_per_step": int(batch["target_weights"].sum()),
        "first_step_s_incl_compile": round(times[0], 2),
        "median_step_s": round(float(np.median(warm)), 3),
        "tokens_per_s": round(tokens / float(np.median(warm)), 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20), 2),
        "loss": float(loss),
        **run_facts(),
    }
    if args.profile:
        add_profile(out, work)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
