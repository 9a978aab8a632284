"""Drill `stage=serve`'s front door as a hostile crowd would, and record what happened.

    python scripts/serve_drill.py --out experiments/serve_drills/<name> -- \
        model=gemma3_270m model.lora_checkpoint=experiments/pipeline_cpu/3_grpo/adapter

Starts the server (the arguments after `--` go to `python -m gemma_tool_use stage=serve`, with a
key in $GEMMA_TOOL_USE_API_KEY), then, in order:
1. idle: --idle connections opened and left silent while --clients normal clients are answered;
2. slow: short bodies and half-sent headers, each answered 408 within serve.read_timeout_s;
3. keys: missing and wrong keys, each answered 401;
4. burst: more simultaneous requests than serve.max_queue: the rest 429, every admitted one answered;
5. soak: --soak requests from --clients concurrent clients, about a quarter of them invalid (broken
   JSON, unknown model, wrong key, oversized max_tokens): every valid one answered 200, every
   response once, the access log holding exactly one line per request;
6. SIGTERM in the middle of a wave of requests: each answered 200 or 503, the process exits 0.
The server's peak RSS and thread count are sampled from /proc throughout. drill.json holds the
figures; the server's access log is copied beside it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import select
import shutil
import signal
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from gemma_tool_use.serving.front_door import API_KEY_ENV  # noqa: E402
from gemma_tool_use.serving.process import host_port, start_server  # noqa: E402

KEY = "sk-drill-" + os.urandom(6).hex()
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CITIES = ["Paris", "Oslo", "Lima", "Kyoto", "Accra", "Quito", "Perth", "Minsk"]


class Sampler(threading.Thread):
    """Peak RSS (MiB) and OS thread count of a process, read from /proc every 0.2 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_rss_mib, self.peak_threads, self.stop = pid, 0.0, 0, threading.Event()

    def now(self) -> tuple[float, int]:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines() if ":" in line
        )
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])

    def run(self):
        while not self.stop.is_set():
            try:
                rss, threads = self.now()
            except (OSError, KeyError):
                return
            self.peak_rss_mib, self.peak_threads = max(self.peak_rss_mib, rss), max(self.peak_threads, threads)
            time.sleep(0.2)


def request(addr, method, path, body=None, key=KEY, raw: bytes | None = None, timeout=600, conn=None):
    """(status, headers, json body); a kept-alive `conn` is reused."""
    own = conn is None
    conn = conn or http.client.HTTPConnection(*addr, timeout=timeout)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read() or b"null")
    finally:
        if own:
            conn.close()


def chat(i: int, max_tokens: int) -> dict:
    return {
        "model": "drill",
        "tools": TOOLS,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": f"What's the weather in {CITIES[i % len(CITIES)]}? (request {i})"}],
    }


def start(args, run_dir: Path):
    overrides = [
        "serve.model_name=drill",
        f"serve.read_timeout_s={args.read_timeout}",
        f"serve.max_queue={args.max_queue}",
        *args.server_args,
    ]
    log = run_dir.parent / "server_stdout.log"
    proc, url = start_server(overrides, run_dir, env_extra={API_KEY_ENV: KEY}, log_file=log)
    return proc, host_port(url)


def drill_idle(addr, args) -> dict:
    """--idle silent connections held open while --clients normal requests are answered (after a
    warm-up round, so that compiling is not what the idle connections wait through)."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(lambda i: request(addr, "POST", "/v1/chat/completions", chat(i, 16)), range(args.clients)))
    warmup_s = time.monotonic() - t0
    t0 = time.monotonic()
    idle = [socket.create_connection(addr, timeout=120) for _ in range(args.idle)]
    opened_s = time.monotonic() - t0
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            seen.append(request(addr, "GET", "/health")[2])
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    with ThreadPoolExecutor(args.clients) as pool:
        answers = list(
            pool.map(lambda i: request(addr, "POST", "/v1/chat/completions", chat(i, 16)), range(args.clients))
        )
    normal_s = time.monotonic() - t0
    done.set()
    watcher.join()
    for s in idle:
        s.close()
    return {
        "idle_connections": args.idle,
        "seconds_to_open": round(opened_s, 2),
        "warmup_seconds": round(warmup_s, 1),
        "normal_requests": args.clients,
        "normal_answered_200": sum(a[0] == 200 for a in answers),
        "normal_seconds": round(normal_s, 1),
        "connections_open_while_answering": [
            min(h["connections_open"] for h in seen),
            max(h["connections_open"] for h in seen),
        ],
        "python_threads_max": max(h["threads"] for h in seen),
        "connections_refused": seen[-1]["connections_refused"],
    }


def _slow_one(addr, data: bytes, trickle: bool) -> tuple[bytes, float]:
    s, t0 = socket.create_connection(addr, timeout=120), time.monotonic()
    try:
        if trickle:  # a byte a second, until the server answers
            for b in data:
                s.sendall(bytes([b]))
                if select.select([s], [], [], 1.0)[0]:
                    break
        else:
            s.sendall(data)
    except OSError:
        pass
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass  # the server closed on bytes still arriving: what it answered is in `out`
    return out, time.monotonic() - t0


def drill_slow(addr, args) -> dict:
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: drill\r\nAuthorization: Bearer {KEY}\r\n"
    kinds = {
        "short_body": ((head + "Content-Length: 500\r\n\r\n").encode() + b'{"model": "drill", ', False),
        "half_headers": (head.encode(), False),
        "trickled_headers": (head.encode() * 4, True),
    }
    jobs = [(name, data, trickle) for name, (data, trickle) in kinds.items() for _ in range(args.slow_each)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda j: (j[0], *_slow_one(addr, j[1], j[2])), jobs))
    out = {}
    for name in kinds:
        mine = [(ans, took) for n, ans, took in results if n == name]
        out[name] = {
            "sent": len(mine),
            "answered_408": sum(a.startswith(b"HTTP/1.1 408") for a, _ in mine),
            "max_seconds": round(max(t for _, t in mine), 2),
        }
    out["read_timeout_s"] = args.read_timeout
    return out


def drill_keys(addr) -> dict:
    missing = request(addr, "POST", "/v1/chat/completions", chat(0, 8), key=None)
    wrong = request(addr, "POST", "/v1/chat/completions", chat(0, 8), key="sk-wrong")
    models = request(addr, "GET", "/v1/models", key=None)
    health = request(addr, "GET", "/health", key=None)
    return {
        "missing_key": missing[0],
        "wrong_key": wrong[0],
        "models_without_key": models[0],
        "health_without_key": health[0],
        "error_code": wrong[2]["error"]["code"],
    }


def drill_burst(addr, args) -> dict:
    n = args.max_queue * 2
    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(lambda i: request(addr, "POST", "/v1/chat/completions", chat(i, 8)), range(n)))
    statuses = Counter(a[0] for a in answers)
    return {"simultaneous": n, "max_queue": args.max_queue, "statuses": dict(statuses)}


def _soak_request(i: int, rnd: random.Random) -> tuple[str, dict]:
    """(kind, request kwargs): about three in four valid."""
    kind = rnd.choices(["valid", "bad_json", "unknown_model", "wrong_key", "too_long"], [12, 1, 1, 1, 1])[0]
    body = chat(i, 8)
    if kind == "bad_json":
        return kind, {"raw": b'{"model": "drill", "messages": [}'}
    if kind == "unknown_model":
        return kind, {"body": {**body, "model": "gpt-4o"}}
    if kind == "wrong_key":
        return kind, {"body": body, "key": "sk-wrong"}
    if kind == "too_long":
        return kind, {"body": {**body, "max_tokens": 10**6}}
    return kind, {"body": body}


PHASES = ["idle", "slow", "keys", "burst", "soak", "sigterm"]
EXPECTED = {"valid": 200, "bad_json": 400, "unknown_model": 404, "wrong_key": 401, "too_long": 400}


def drill_soak(addr, args, run_dir: Path) -> dict:
    access = run_dir / "access.jsonl"
    lines_before = len(access.read_text().splitlines())
    plan = [_soak_request(i, random.Random(i)) for i in range(args.soak)]
    per_client = [plan[c :: args.clients] for c in range(args.clients)]
    outcomes, ids = [], []
    lock = threading.Lock()

    def client(requests):
        conn = http.client.HTTPConnection(*addr, timeout=600)  # kept alive across the client's requests
        for kind, kw in requests:
            try:
                status, _, body = request(addr, "POST", "/v1/chat/completions", conn=conn, **kw)
            except (OSError, http.client.HTTPException) as e:
                status, body = f"error: {type(e).__name__}", None
                conn.close()
                conn = http.client.HTTPConnection(*addr, timeout=600)
            with lock:
                outcomes.append((kind, status))
                if status == 200:
                    ids.append(body["id"])
        conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(r,)) for r in per_client]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - t0
    time.sleep(0.5)
    logged = [json.loads(line) for line in access.read_text().splitlines()[lines_before:]]
    wrong = [(k, s) for k, s in outcomes if s != EXPECTED[k]]
    return {
        "requests": args.soak,
        "clients": args.clients,
        "by_kind": dict(Counter(k for k, _ in outcomes)),
        "unexpected_outcomes": len(wrong),
        "unexpected_examples": wrong[:10],
        "valid_answered_200": sum(1 for k, s in outcomes if k == "valid" and s == 200),
        "responses": len(outcomes),
        "distinct_completion_ids": len(set(ids)),
        "completions": len(ids),
        "access_log_lines": len(logged),
        "access_log_statuses": dict(Counter(r["status"] for r in logged)),
        "seconds": round(seconds, 1),
        "requests_per_s": round(args.soak / seconds, 2),
    }


def drill_sigterm(proc, addr, args) -> dict:
    n = min(args.max_queue, 32)
    results = []

    def ask(i):
        try:
            status, _, body = request(addr, "POST", "/v1/chat/completions", chat(i, 32), timeout=300)
            results.append(status if status == 200 else f"{status} {body['error']['code']}")
        except (OSError, http.client.HTTPException) as e:
            results.append(f"error: {type(e).__name__}")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(args.sigterm_after)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(600)
    code = proc.wait(600)
    return {
        "in_flight_requests": n,
        "sigterm_after_s": args.sigterm_after,
        "outcomes": dict(Counter(map(str, results))),
        "answered": len(results),
        "exit_code": code,
        "seconds_to_exit": round(time.monotonic() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--idle", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--soak", type=int, default=1000)
    ap.add_argument("--slow-each", type=int, default=4)
    ap.add_argument("--read-timeout", type=float, default=30.0)
    ap.add_argument("--max-queue", type=int, default=32)
    ap.add_argument("--sigterm-after", type=float, default=2.0)
    ap.add_argument("--phases", nargs="+", choices=PHASES, default=PHASES, help="in this order")
    ap.add_argument("server_args", nargs="*", help="after --: overrides for stage=serve")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.out / "server_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    t_start = time.monotonic()
    proc, addr = start(args, run_dir)
    sampler = Sampler(proc.pid)
    sampler.start()
    # a re-run of some phases (--phases) updates those in an earlier drill.json and keeps the rest
    old = args.out / "drill.json"
    report = json.loads(old.read_text()) if old.is_file() and args.phases != PHASES else {}
    report.update(server_args=args.server_args, startup_s=round(time.monotonic() - t_start, 1))
    phases = {
        "idle": lambda: drill_idle(addr, args),
        "slow": lambda: drill_slow(addr, args),
        "keys": lambda: drill_keys(addr),
        "burst": lambda: drill_burst(addr, args),
        "soak": lambda: drill_soak(addr, args, run_dir),
        "sigterm": lambda: drill_sigterm(proc, addr, args),
    }
    try:
        for name in args.phases:
            if name == "sigterm":
                report["peak_before_sigterm"] = {
                    "rss_mib": round(sampler.peak_rss_mib),
                    "os_threads": sampler.peak_threads,
                }
            print(f"[drill] {name} ...", flush=True)
            report[name] = {**phases[name](), "run_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            print(f"[drill] {name}: {json.dumps(report[name])}", flush=True)
    finally:
        sampler.stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    peak = {"rss_mib": round(sampler.peak_rss_mib), "os_threads": sampler.peak_threads}
    report["peak" if args.phases == PHASES else "peak_rerun_" + "_".join(args.phases)] = peak
    (args.out / "drill.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.phases == PHASES:
        shutil.copy(run_dir / "access.jsonl", args.out / "access.jsonl")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
