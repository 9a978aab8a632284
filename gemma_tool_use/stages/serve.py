"""`stage=serve`: the OpenAI-compatible server (gemma_tool_use/serve.py) on a loaded model.

    python -m gemma_tool_use stage=serve model=gemma3_270m \\
        model.lora_checkpoint=experiments/<run>/adapter serve.port=8000

The server starts listening once the model is loaded; `<run dir>/server.json` then holds its URL
(with `serve.port=0`, the port the system picked), the model id clients send, and the pid.
Ctrl-C or SIGTERM stops it (exit 0 after a clean shutdown).
"""

from __future__ import annotations

import json
import logging
import os

from omegaconf import DictConfig

from gemma_tool_use.orchestration.runs import served_model_name
from gemma_tool_use.orchestration.stage_context import open_stage

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    with open_stage(cfg, tracker=False) as ctx:
        from gemma_tool_use.generation.generator import Generator
        from gemma_tool_use.model.loading import build_model
        from gemma_tool_use.serving.server import Batcher, ChatServer, make_http_server

        g, s = cfg.generation, cfg.serve
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
            request_timeout_s=float(s.request_timeout_s),
            max_request_bytes=int(s.max_request_bytes),
            constrain=str(g.constrain),
        )
        server = make_http_server(app, str(s.host), int(s.port))
        host, port = server.server_address[:2]
        url = f"http://{host}:{port}/v1"
        (ctx.run_dir / "server.json").write_text(json.dumps({"url": url, "model": app.model_name, "pid": os.getpid()}))
        log.info("serving %s at %s (POST /chat/completions, GET /models); Ctrl-C stops", app.model_name, url)
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            log.info("stopping the server")
        finally:
            server.server_close()
            batcher.close()
            log.info("served %s", json.dumps(batcher.stats))
    return float(batcher.stats["requests"])
