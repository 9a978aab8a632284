"""Measure the real Gemma 3 270M on this machine: conversion and load time, peak memory,
generation speed at several batch sizes, and a few greedy generations of the base model.

    .venv/bin/python scripts/bench_real_model.py --out experiments/gemma3_270m_base/bench.json
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--new-tokens", type=int, default=64)
    return ap.parse_args()


def git_commit():
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def time_gguf_conversion():
    """First-time GGUF conversion into a fresh cache (what a new user pays once), in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GEMMA_TOOL_USE_CACHE=tmp)
        t0 = time.time()
        subprocess.run(
            [sys.executable, "-c", "from gemma_tool_use.model.weights import converted_gguf_dir; converted_gguf_dir()"],
            env=env,
            check=True,
        )
        return round(time.time() - t0, 1)


def compose_config():
    from hydra import compose, initialize_config_dir

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=["model=gemma3_270m", "model.lora.enabled=false"])


def load_model(cfg, report):
    """Build the model and tokenizer from the cache; records load time, memory and the jax version."""
    import jax

    # imported before the model is built; the helpers below use them
    from gemma_tool_use.format.render import render_conversation  # noqa: F401
    from gemma_tool_use.generation.generator import Generator, SamplingParams  # noqa: F401
    from gemma_tool_use.model.loading import build_model, load_tokenizer_for
    from gemma_tool_use.utils.mesh import build_mesh

    mesh = build_mesh(cfg.tpu)
    t0 = time.time()
    model = build_model(cfg.model, mesh, 0)
    tok = load_tokenizer_for(cfg.model)
    report["load_from_cache_s"] = round(time.time() - t0, 1)
    report["peak_rss_after_load_gib"] = round(rss_gib(), 2)
    report["jax"] = jax.__version__
    return model, tok


def bench_generation(model, tok, args):
    """Generation speed: prompts of ~200 tokens (bucket 256), greedy, fixed new tokens."""
    from gemma_tool_use.generation.generator import Generator, SamplingParams

    text = "Tool-calling models read a list of functions and decide which one to call. " * 14
    base = tok.encode(text, add_bos=True)[:200]
    speed = []
    gen = Generator(
        model,
        tok,
        batch_size=max(int(b) for b in args.batch_sizes.split(",")),
        prompt_buckets=(256,),
        max_prompt_len=512,
    )
    params = SamplingParams(max_new_tokens=args.new_tokens, stop_ids=(-1,))
    for b in (int(x) for x in args.batch_sizes.split(",")):
        gen.batch_size = b
        prompts = [base[: 200 - i] for i in range(b)]
        t0 = time.time()
        gen.generate_ids(prompts, params)
        first = time.time() - t0
        t0 = time.time()
        gen.generate_ids(prompts, params)
        warm = time.time() - t0
        speed.append(
            {
                "batch": b,
                "prompt_tokens": 200,
                "new_tokens": args.new_tokens,
                "first_call_s_incl_compile": round(first, 1),
                "warm_s": round(warm, 2),
                "new_tokens_per_s": round(b * args.new_tokens / warm, 1),
            }
        )
        print(speed[-1], flush=True)
    return gen, speed


def greedy_samples(gen, tok):
    """Greedy generations of the base model (pretrained, not instruction-tuned)."""
    from gemma_tool_use.format.render import render_conversation
    from gemma_tool_use.generation.generator import SamplingParams

    gen.batch_size = 4
    plain = ["The capital of France is", "def is_prime(n):\n", "Gemma is a family of"]
    chat = {
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            }
        ],
        "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
    }
    prompts = [tok.encode(p, add_bos=True) for p in plain] + [
        render_conversation(chat, tok, add_generation_prompt=True).ids.tolist()
    ]
    outs = gen.generate_ids(prompts, SamplingParams(max_new_tokens=40))
    return [
        {"prompt": p, "output": o.text, "stop": o.stop_reason}
        for p, o in zip(plain + ["<tool-calling chat prompt, get_weather, 'What's the weather in Paris?'>"], outs)
    ]


def main():
    args = parse_args()
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "commit": git_commit(),
    }
    report["gguf_conversion_s"] = time_gguf_conversion()
    cfg = compose_config()
    model, tok = load_model(cfg, report)
    gen, speed = bench_generation(model, tok, args)
    report["generation"] = speed
    report["peak_rss_gib"] = round(rss_gib(), 2)
    report["greedy_samples"] = greedy_samples(gen, tok)
    Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
