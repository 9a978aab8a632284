"""Bounded load test of `stage=serve` with the official openai client.

Starts a server process on a free port with the given model overrides, sends REQUESTS chat
completions from CLIENTS concurrent threads (a fixed mix of tool questions, some with no fitting
tool), and writes <out>/summary.json: latency percentiles, throughput, errors, how many answers
called the expected tool (or abstained where no tool fits), and the server's batching counters.

    .venv/bin/python scripts/serve_load.py --out experiments/serve_load --clients 8 --requests 200 -- \\
        model=gemma3_270m model.lora_checkpoint=experiments/grpo_from_sft_short/start_adapter
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from gemma_tool_use.serving.process import host_port, start_server  # noqa: E402


def fn(name, desc, props, required):
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": desc,
            "parameters": {"type": "object", "properties": props, "required": required},
        },
    }


WEATHER = fn("get_weather", "Current weather of a city", {"city": {"type": "string"}}, ["city"])
CONVERT = fn(
    "convert_currency",
    "Convert an amount between currencies",
    {"amount": {"type": "number"}, "from_currency": {"type": "string"}, "to_currency": {"type": "string"}},
    ["amount", "from_currency", "to_currency"],
)
TIMEZONE = fn("get_local_time", "Current local time in a city", {"city": {"type": "string"}}, ["city"])
STOCK = fn("get_stock_price", "Latest price of a stock ticker", {"ticker": {"type": "string"}}, ["ticker"])

# (question, tools offered, expected tool name or None = no tool fits)
CASES = [
    ("What's the weather in Paris right now?", [WEATHER, TIMEZONE], "get_weather"),
    ("Is it raining in Tokyo?", [WEATHER, STOCK], "get_weather"),
    ("Convert 250 US dollars to euros.", [CONVERT, WEATHER], "convert_currency"),
    ("How much is 1000 yen in British pounds?", [CONVERT], "convert_currency"),
    ("What time is it in Sydney?", [TIMEZONE, WEATHER], "get_local_time"),
    ("Current local time in Nairobi please.", [TIMEZONE, CONVERT], "get_local_time"),
    ("What's Apple's stock price?", [STOCK, CONVERT], "get_stock_price"),
    ("Give me the latest price of MSFT.", [STOCK], "get_stock_price"),
    ("Write a haiku about autumn leaves.", [WEATHER, STOCK], None),
    ("Who wrote Pride and Prejudice?", [CONVERT, TIMEZONE], None),
]


def health(url: str) -> dict:
    conn = http.client.HTTPConnection(*host_port(url), timeout=60)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("overrides", nargs="*")
    return ap.parse_args()


def ask(client: openai.OpenAI, i: int, max_tokens: int) -> dict:
    """Send request i (case i modulo CASES) and return its record: outcome, tools called and latency."""
    question, tools, expected = CASES[i % len(CASES)]
    t0 = time.perf_counter()
    rec = {"i": i, "expected": expected}
    try:
        r = client.chat.completions.create(
            model="served",
            tools=tools,
            max_tokens=max_tokens,
            messages=[{"role": "user", "content": question}],
        )
        calls = r.choices[0].message.tool_calls or []
        rec |= {
            "ok": True,
            "finish": r.choices[0].finish_reason,
            "tools_called": [c.function.name for c in calls],
            "completion_tokens": r.usage.completion_tokens,
        }
    except Exception as e:  # noqa: BLE001 - counted, never dropped silently
        rec |= {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
    rec["latency_s"] = time.perf_counter() - t0
    return rec


def run_clients(client: openai.OpenAI, n_clients: int, n_requests: int, max_tokens: int) -> tuple[list[dict], float]:
    """Send n_requests from n_clients concurrent threads; returns the records and the wall time."""
    records, lock, counter = [], threading.Lock(), iter(range(n_requests))

    def worker():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            rec = ask(client, i, max_tokens)
            with lock:
                records.append(rec)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records, time.perf_counter() - t0


def summarize(
    args: argparse.Namespace, records: list[dict], wall: float, load_s: float, before: dict, after: dict
) -> dict:
    ok = [r for r in records if r["ok"]]
    lat = sorted(r["latency_s"] for r in ok)

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 3) if lat else None

    right = sum(1 for r in ok if (r["tools_called"][:1] == [r["expected"]] if r["expected"] else not r["tools_called"]))
    return {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "server_start_s": round(load_s, 1),
        "clients": args.clients,
        "requests": args.requests,
        "answered": len(ok),
        "errors": len(records) - len(ok),
        "dropped": args.requests - len(records),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 3),
        "completion_tokens_per_s": round(sum(r["completion_tokens"] for r in ok) / wall, 1),
        "latency_s": {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "max": round(lat[-1], 3) if lat else None,
            "mean": round(statistics.mean(lat), 3) if lat else None,
        },
        "expected_behaviour": {"right": right, "of": len(ok)},
        "server": {
            "batches": after["batches"] - before["batches"],
            "requests": after["requests"] - before["requests"],
            "largest_batch": after["largest_batch"],
        },
        "overrides": args.overrides,
    }


def write_outputs(out: Path, summary: dict, records: list[dict]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with (out / "requests.jsonl").open("w") as f:
        for r in sorted(records, key=lambda r: r["i"]):
            f.write(json.dumps(r) + "\n")


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    run_dir = Path(tempfile.mkdtemp(prefix="serve_load_"))
    proc, url = start_server(["serve.model_name=served", *args.overrides], run_dir)
    load_s = time.time() - t_start
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=900)
    # warm-up: compile the programs before timing (one request per prompt bucket is enough here)
    client.chat.completions.create(
        model="served",
        tools=CASES[0][1],
        max_tokens=args.max_tokens,
        messages=[{"role": "user", "content": CASES[0][0]}],
    )
    before = health(url)
    records, wall = run_clients(client, args.clients, args.requests, args.max_tokens)
    after = health(url)
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)
    summary = summarize(args, records, wall, load_s, before, after)
    write_outputs(out, summary, records)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
