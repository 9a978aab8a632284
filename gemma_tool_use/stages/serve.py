"""`stage=serve`: the OpenAI-compatible server (serving/front_door.py, serving/server.py) on a loaded model.

    python -m gemma_tool_use stage=serve model=gemma3_270m \\
        model.lora_checkpoint=experiments/<run>/adapter serve.port=8000

The server starts listening once the model is loaded; `<run dir>/server.json` then holds its URL
(with `serve.port=0`, the port the system picked), the model id clients send, and the pid.
Ctrl-C or SIGTERM stops it: requests in flight get serve.shutdown_grace_s to finish, the rest a
503, and the process exits 0. `<run dir>/access.jsonl` holds one line per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

from omegaconf import DictConfig

from gemma_tool_use.orchestration.runs import served_model_name
from gemma_tool_use.orchestration.stage_context import open_stage

log = logging.getLogger(__name__)


def _limits(s: DictConfig):
    from gemma_tool_use.serving.front_door import API_KEY_ENV, DoorLimits

    return DoorLimits(
        api_key=(s.api_key or os.environ.get(API_KEY_ENV) or "").strip() or None,
        read_timeout_s=float(s.read_timeout_s),
        request_timeout_s=float(s.request_timeout_s),
        max_request_bytes=int(s.max_request_bytes),
        max_connections=int(s.max_connections),
        max_queue=int(s.max_queue),
        shutdown_grace_s=float(s.shutdown_grace_s),
        workers=int(s.workers),
        log_prompts=bool(s.log_prompts),
    )


def run(cfg: DictConfig) -> float:
    with open_stage(cfg, tracker=False) as ctx:
        from gemma_tool_use.generation.generator import Generator
        from gemma_tool_use.model.loading import build_model
        from gemma_tool_use.serving.front_door import FrontDoor, exposure_warning
        from gemma_tool_use.serving.server import Batcher, ChatServer

        g, s = cfg.generation, cfg.serve
        limits = _limits(s)
        model = build_model(cfg.model, ctx.mesh, cfg.seed)
        generator = Generator.from_config(model, ctx.tokenizer, g, batch_size=int(s.max_batch), overlength="error")
        batcher = Batcher(
            lambda ids, params, on_result, grammars: generator.generate_ids(
                ids, params, on_result=on_result, grammars=grammars
            ),
            max_batch=int(s.max_batch),
            window_s=float(s.batch_window_ms) / 1000,
        )
        app = ChatServer(
            ctx.tokenizer,
            batcher,
            model_name=served_model_name(cfg),
            system_prompt=cfg.data.system_prompt,
            max_prompt_len=int(g.max_prompt_len),
            default_max_tokens=int(g.max_new_tokens),
            max_tokens_limit=int(s.max_tokens_limit),
            stop_ids=tuple(g.stop_ids),
            constrain=str(g.constrain),
        )
        door = FrontDoor(app, limits, ctx.run_dir / "access.jsonl")
        warning = exposure_warning(str(s.host), limits.api_key)
        if warning:
            log.warning(warning)

        def listening(address) -> None:
            url = f"http://{address[0]}:{address[1]}/v1"
            info = {"url": url, "model": app.model_name, "pid": os.getpid(), "api_key_required": bool(limits.api_key)}
            (ctx.run_dir / "server.json").write_text(json.dumps(info))
            log.info("serving %s at %s (POST /chat/completions, GET /models); Ctrl-C stops", app.model_name, url)

        try:
            asyncio.run(door.serve(str(s.host), int(s.port), listening))
        except KeyboardInterrupt:
            log.info("stopped before the server was up")
        finally:
            batcher.close(wait_s=1.0)
            log.info("served %s", json.dumps(door.health()))
    return float(batcher.stats["requests"])
