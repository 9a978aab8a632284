"""A `stage=serve` child process, for load tests, drills and tests: start it, wait for its
`server.json`, get its URL back. Nothing here imports JAX: the server loads the model itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STDOUT_LOG = "server_stdout.log"  # in the run dir, unless start_server is given another file


class ServerDidNotStart(RuntimeError):
    """The server exited or missed its start deadline; the message ends with its last output."""


def start_server(
    overrides: list[str],
    run_dir: Path,
    *,
    env_extra: dict[str, str] | None = None,
    log_file: Path | None = None,
    timeout_s: float = 900.0,
) -> tuple[subprocess.Popen, str]:
    """(process, base URL `http://host:port/v1`) of `python -m gemma_tool_use stage=serve
    tracking=disabled serve.port=0 hydra.run.dir=<run_dir> <overrides>`, once it listens. Its
    output goes to `log_file` (default `<run_dir>/server_stdout.log`), never to a pipe: the access
    log writes a line per request, and a pipe nobody reads would stall the server when full."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "WANDB_"))}
    env.update(env_extra or {})
    cmd = [
        sys.executable,
        "-m",
        "gemma_tool_use",
        "stage=serve",
        "tracking=disabled",
        "serve.port=0",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    log_file = Path(log_file or Path(run_dir) / STDOUT_LOG)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    info, deadline = Path(run_dir) / "server.json", time.time() + timeout_s
    while not info.is_file():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            tail = log_file.read_text()[-3000:]
            raise ServerDidNotStart(f"stage=serve did not start (exit {proc.poll()}):\n{tail}")
        time.sleep(0.3)
    return proc, json.loads(info.read_text())["url"]


def host_port(url: str) -> tuple[str, int]:
    """("127.0.0.1", 8000) from "http://127.0.0.1:8000/v1"."""
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    return host, int(port)
