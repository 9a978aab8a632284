"""Run exported GGUF files through llama.cpp and compare with our own greedy generation.

llama.cpp comes from npm: node-llama-cpp ships prebuilt CPU binaries of it (no compiler needed;
PyPI has only llama-cpp-python's source, which builds for minutes on 2 cores).

    npm install --prefix /tmp/nlc node-llama-cpp@3.22.1
    .venv/bin/python scripts/llama_cpp_check.py --node-dir /tmp/nlc --out experiments/export_gguf_r3 \\
        --gguf outputs/export/r3/*.gguf -- model=gemma3_270m model.lora_checkpoint=<the adapter exported>

For a fixed set of tool conversations it writes <out>/llama_cpp_check.json: our greedy text
(stage=predict with the overrides after `--`, i.e. the unmerged model in JAX) and llama.cpp's greedy
text from each GGUF, whether the texts are equal, and whether the parsed tool calls are equal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gemma_tool_use.format.parse import parse_model_output  # noqa: E402 - after the sys.path line
from gemma_tool_use.format.render import render_text  # noqa: E402


def tool(name, desc, props, required):
    return {
        "name": name,
        "description": desc,
        "parameters": {"type": "object", "properties": props, "required": required},
    }


WEATHER = tool("get_weather", "Current weather of a city", {"city": {"type": "string"}}, ["city"])
CONVERT = tool(
    "convert_currency",
    "Convert an amount between currencies",
    {"amount": {"type": "number"}, "from_currency": {"type": "string"}, "to_currency": {"type": "string"}},
    ["amount", "from_currency", "to_currency"],
)
AREA = tool(
    "calculate_triangle_area",
    "Area of a triangle from its base and height",
    {"base": {"type": "number"}, "height": {"type": "number"}},
    ["base", "height"],
)
BMI = tool(
    "determine_body_mass_index",
    "Body mass index from weight (kg) and height (m)",
    {"weight": {"type": "number"}, "height": {"type": "number"}},
    ["weight", "height"],
)
STOCK = tool("get_stock_price", "Latest price of a stock ticker", {"ticker": {"type": "string"}}, ["ticker"])


def conv(tools, *turns):
    return {"tools": tools, "messages": [{"role": "user", "content": turns[0]}]}


CONVERSATIONS = [
    conv([WEATHER], "What's the weather like in Paris right now?"),
    conv([WEATHER, CONVERT], "How much is 250 US dollars in euros?"),
    conv([AREA, BMI], "What is the area of a triangle with base 10 m and height 5 m?"),
    conv([BMI], "What is the area of a triangle with base 10 m and height 5 m?"),  # no tool fits
    conv([WEATHER, STOCK], "Get me the weather in Tokyo and in Berlin."),
    conv([STOCK, CONVERT], "What's Apple's stock price? Ticker AAPL."),
    {
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Is it raining in London?"},
            {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "args": {"city": "London"}}]},
            {"role": "tool", "name": "get_weather", "content": {"city": "London", "sky": "rain", "temp_c": 11}},
        ],
    },
]


def calls_of(text: str, tools) -> list | None:
    parsed = parse_model_output(text, tools)
    return None if parsed.errors else [(c["name"], json.dumps(c["args"], sort_keys=True)) for c in parsed.calls]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", nargs="+", required=True)
    ap.add_argument("--node-dir", required=True, help="a dir whose node_modules holds node-llama-cpp")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("overrides", nargs="*", help="stage=predict overrides (the model and adapter exported)")
    return ap.parse_args()


def run_ours(work: Path, max_new_tokens: int, overrides: list[str]) -> tuple[list[dict], float]:
    """Our greedy generation of CONVERSATIONS via stage=predict; returns its rows and the seconds it took."""
    (work / "prompts.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    t0 = time.time()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gemma_tool_use",
            "stage=predict",
            f"predict.input_file={work / 'prompts.jsonl'}",
            f"predict.output_file={work / 'ours.jsonl'}",
            f"generation.max_new_tokens={max_new_tokens}",
            "tracking=disabled",
            f"hydra.run.dir={work / 'predict'}",
            *overrides,
        ],
        check=True,
        cwd=REPO,
    )
    ours = [json.loads(line) for line in (work / "ours.jsonl").read_text().splitlines()]
    return ours, time.time() - t0


def prepare_llama_cpp(work: Path, node_dir: str) -> Path:
    """Write the prompts llama.cpp reads and put the generation script next to node_modules; returns the script."""
    # llama.cpp adds the BOS itself (see the .mjs); the rest is the text our tokenizer reads
    prompts = [render_text(c, add_generation_prompt=True).removeprefix("<bos>") for c in CONVERSATIONS]
    (work / "prompts.json").write_text(json.dumps(prompts))
    script = Path(node_dir) / "llama_cpp_generate.mjs"  # node resolves imports next to the script
    shutil.copy(REPO / "scripts" / "llama_cpp_generate.mjs", script)
    return script


def compare_rows(ours: list[dict], results: list[dict]) -> list[dict]:
    rows = []
    for c, mine, theirs in zip(CONVERSATIONS, ours, results):
        a, b = mine["raw_text"], theirs["text"]
        rows.append(
            {
                "ours": a,
                "llama_cpp": b,
                "text_equal": a.strip() == b.strip(),
                "calls_equal": calls_of(a, c["tools"]) == calls_of(b, c["tools"]),
                "calls": calls_of(b, c["tools"]),
            }
        )
    return rows


def check_gguf(g: str, script: Path, work: Path, ours: list[dict], max_new_tokens: int) -> dict:
    """Generate with llama.cpp from GGUF file g, compare with ours, print a line and return the file's entry."""
    r = subprocess.run(
        ["node", str(script), str(Path(g).absolute()), str(work / "prompts.json"), str(max_new_tokens)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    got = json.loads(r.stdout.strip().splitlines()[-1])
    rows = compare_rows(ours, got["results"])
    entry = {
        "llama_cpp": got["llama_cpp"],
        "seconds": got["seconds"],
        "rows": rows,
        "text_equal": sum(r["text_equal"] for r in rows),
        "calls_equal": sum(r["calls_equal"] for r in rows),
    }
    print(
        f"{Path(g).name}: texts equal {entry['text_equal']}/{len(rows)}, "
        f"calls equal {entry['calls_equal']}/{len(rows)} ({got['seconds']:.1f} s)",
        flush=True,
    )
    return entry


def main() -> int:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="llama_cpp_check_"))
    ours, ours_seconds = run_ours(work, args.max_new_tokens, args.overrides)
    script = prepare_llama_cpp(work, args.node_dir)
    files = {}
    for g in args.gguf:
        files[Path(g).name] = check_gguf(g, script, work, ours, args.max_new_tokens)
    summary = {
        "conversations": len(CONVERSATIONS),
        "max_new_tokens": args.max_new_tokens,
        "overrides": args.overrides,
        "node_llama_cpp": json.loads((Path(args.node_dir) / "node_modules/node-llama-cpp/package.json").read_text())[
            "version"
        ],
        "ours_seconds_incl_load": round(ours_seconds, 1),
        "files": files,
    }
    (out / "llama_cpp_check.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(f["calls_equal"] == len(CONVERSATIONS) for f in files.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
