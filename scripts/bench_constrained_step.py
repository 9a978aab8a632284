"""Decode-step time with and without the tool-call grammar, on the real model, at batch 8.

    .venv/bin/python scripts/bench_constrained_step.py \\
        --adapter experiments/pipeline_cpu/3_grpo/adapter --out experiments/constrained_decoding/step_time.json

Batches of 8 BFCL prompts per category (simple_python, multiple, parallel, irrelevance), greedy,
128 new tokens, each run twice (the second, compiled, is timed). A batch's decode steps are its
longest row's tokens (the static batch runs until its last row stops); the time of one step is
(time of the batch - time of the same batch at 1 new token) / (steps - 1), so prefill is left out.
The two modes write different answers, so each is timed over its own steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CATEGORIES = ("simple_python", "multiple", "parallel", "irrelevance")


def timed(generator, prompts, params, grammars):
    generator.generate_ids(prompts, params, grammars=grammars)  # compile (or warm) this shape
    t0 = time.perf_counter()
    out = generator.generate_ids(prompts, params, grammars=grammars)
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", type=int, default=2, help="batches of 8 per category")
    args = ap.parse_args()

    from gemma_tool_use.evaluation import bfcl
    from gemma_tool_use.format.render import render_conversation
    from gemma_tool_use.generation.generator import Generator, SamplingParams
    from gemma_tool_use.generation.tool_grammar import tool_grammar
    from gemma_tool_use.model.loading import load_tokenizer_for

    from bench_common import real_model, run_facts

    cfg, mesh, model = real_model(f"model.lora_checkpoint={args.adapter}", training=False)
    tok = load_tokenizer_for(cfg.model)
    generator = Generator(model, tok, batch_size=8, max_prompt_len=2048)
    full, one = SamplingParams(max_new_tokens=128), SamplingParams(max_new_tokens=1)
    rows = []
    for category in CATEGORIES:
        entries = bfcl.load_entries(category)[: 8 * args.batches]
        for b in range(args.batches):
            batch = entries[8 * b : 8 * b + 8]
            convs = [bfcl.entry_conversation(e) for e in batch]
            prompts = [render_conversation(c, tok, add_generation_prompt=True).ids for c in convs]
            for mode, grammars in (("none", None), ("tools", [tool_grammar(c["tools"]) for c in convs])):
                t_full, out = timed(generator, prompts, full, grammars)
                t_one, _ = timed(generator, prompts, one, grammars)
                steps = max(len(r.token_ids) + (r.stop_reason == "stop") for r in out)
                rows.append(
                    {
                        "category": category,
                        "batch": b,
                        "mode": mode,
                        "steps": steps,
                        "seconds": round(t_full, 3),
                        "prefill_and_first_step_s": round(t_one, 3),
                        "ms_per_step": round(1000 * (t_full - t_one) / max(1, steps - 1), 2),
                    }
                )
                print(rows[-1], flush=True)
    summary = {}
    for mode in ("none", "tools"):
        mine = [r for r in rows if r["mode"] == mode]
        decode_s = sum(r["seconds"] - r["prefill_and_first_step_s"] for r in mine)
        summary[mode] = {"ms_per_step": round(1000 * decode_s / sum(r["steps"] - 1 for r in mine), 2)}
    summary["ratio"] = round(summary["tools"]["ms_per_step"] / summary["none"]["ms_per_step"], 3)
    report = {"facts": run_facts(), "adapter": args.adapter, "batch": 8, "summary": summary, "batches": rows}
    report["grammar_warnings"] = generator.grammar_warnings
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
