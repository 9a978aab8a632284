"""An OpenAI-compatible HTTP server on the project's Generator (`stage=serve`).

    POST /v1/chat/completions   tools in, tool_calls (or content) out; stream: true as SSE events
    GET  /v1/models             the one served model
    GET  /health                readiness and counters

Concurrent requests are batched: a single generation thread takes every request that arrives
within `serve.batch_window_ms` of the first (up to `serve.max_batch`), groups them by sampling
settings and runs each group as one continuous-batching generation; each answer goes back as soon
as its row finishes, not when the whole batch does. Requests that arrive meanwhile wait for the
next round. The HTTP side is the standard library's threading server: one thread per connection,
so slow clients never block generation.

Tool choice: a request's grammar (tool_grammar.py) rides with it into the batch, one per row:
every request under `generation.constrain=tools`, otherwise only those with `tool_choice`
"required" or a named function, or with `strict` functions (ChatServer._grammar).

Robustness: a bad request gets an OpenAI-style 4xx error body naming the field
(openai_api.RequestError); an unexpected failure answers that request with a 500 whose
message names the error (the traceback goes to the server log, not to the client), and the
server keeps serving. Bodies over `serve.max_request_bytes` get 413 before they are read.

Compiles: generation programs are keyed by (max_new_tokens bucket, temperature, top_p). A
request's max_tokens is rounded up to a power of two (>= 32) for generation and the answer cut
to the requested length, and temperature/top_p are rounded to 2 decimals, so a long-running
server compiles a handful of programs, not one per distinct request.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from gemma_tool_use.format.parse import parse_model_output
from gemma_tool_use.format.render import FormatError, render_conversation
from gemma_tool_use.generation.generator import Generation, SamplingParams
from gemma_tool_use.generation.tool_grammar import ToolChoiceError, tool_grammar
from gemma_tool_use.serving.openai_api import (
    RequestError,
    apply_stop,
    build_message,
    completion_chunks,
    completion_response,
    parse_request,
)

log = logging.getLogger(__name__)


@dataclass
class Job:
    ids: list[int]
    params: SamplingParams
    grammar: str | None = None  # the tool-call grammar its tokens must follow (None: unconstrained)
    submitted: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    result: Generation | None = None
    error: BaseException | None = None


class Batcher:
    """One thread runs every generation; requests queue for it and wait for their own row."""

    def __init__(self, generate: Callable, max_batch: int, window_s: float):
        self.generate, self.max_batch, self.window_s = generate, int(max_batch), float(window_s)
        self.queue: queue.Queue[Job] = queue.Queue()
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0, "errors": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="generation", daemon=True)
        self._thread.start()

    def submit(
        self, ids: list[int], params: SamplingParams, timeout_s: float, grammar: str | None = None
    ) -> Generation:
        job = Job(ids, params, grammar)
        self.queue.put(job)
        if not job.done.wait(timeout_s):
            raise RequestError(
                f"generation did not finish within serve.request_timeout_s={timeout_s:g}", status=503, code="timeout"
            )
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _take_batch(self) -> list[Job]:
        try:
            first = self.queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch, deadline = [first], time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                batch.append(self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._take_batch()
            if not batch:
                continue
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            groups: dict[SamplingParams, list[Job]] = {}
            for job in batch:
                groups.setdefault(job.params, []).append(job)
            for params, jobs in groups.items():

                def finish(gen: Generation, jobs=jobs) -> None:
                    job = jobs[gen.index]
                    job.result = gen
                    job.done.set()

                try:
                    self.generate([j.ids for j in jobs], params, finish, [j.grammar for j in jobs])
                except BaseException as e:  # noqa: BLE001 - answer the requests, keep the thread alive
                    log.exception("generation failed for a batch of %d request(s)", len(jobs))
                    self.stats["errors"] += 1
                    for job in jobs:
                        if not job.done.is_set():
                            job.error = e
                            job.done.set()
                self.stats["requests"] += len(jobs)


def _generation_budget(max_tokens: int) -> int:
    """Generation length for a request: a power of two >= 32 (few compiled programs)."""
    return max(32, 1 << (int(max_tokens) - 1).bit_length())


class ChatServer:
    """What the HTTP handler needs: the tokenizer, the batcher and the limits."""

    def __init__(
        self,
        tokenizer,
        batcher: Batcher,
        *,
        model_name: str,
        system_prompt: str | None,
        max_prompt_len: int,
        default_max_tokens: int,
        max_tokens_limit: int,
        stop_ids: tuple[int, ...],
        request_timeout_s: float,
        max_request_bytes: int,
        constrain: str = "none",
    ):
        self.tokenizer, self.batcher, self.model_name = tokenizer, batcher, model_name
        self.constrain = constrain  # generation.constrain: "tools" puts every request under its grammar
        self.render_kwargs = {} if system_prompt is None else {"system_prompt": system_prompt}
        self.max_prompt_len, self.default_max_tokens = int(max_prompt_len), int(default_max_tokens)
        self.max_tokens_limit, self.stop_ids = int(max_tokens_limit), tuple(stop_ids)
        self.request_timeout_s, self.max_request_bytes = float(request_timeout_s), int(max_request_bytes)
        self.started = int(time.time())

    def _grammar(self, req) -> str | None:
        """The request's tool-call grammar: always under generation.constrain=tools; otherwise only
        where the request asks for it (tool_choice required or a named function, strict functions,
        whose arguments alone are then held to their schemas)."""
        tools, choice = req.conversation["tools"], req.tool_choice
        if self.constrain == "none" and choice.mode in ("auto", "none") and not req.strict_tools:
            return None
        loose = frozenset() if self.constrain == "tools" else frozenset(t["name"] for t in tools) - req.strict_tools
        try:
            return tool_grammar(tools, choice, loose=loose)
        except ToolChoiceError as e:
            raise RequestError(str(e), "tool_choice") from None

    def models(self) -> dict:
        return {
            "object": "list",
            "data": [{"id": self.model_name, "object": "model", "created": self.started, "owned_by": "gemma_tool_use"}],
        }

    def chat(self, body) -> tuple[dict | list[dict], bool]:
        """(response object or stream events, is_stream) for a parsed JSON body; RequestError on bad input."""
        req = parse_request(body, self.model_name)
        if req.model != self.model_name:
            raise RequestError(
                f"model {req.model!r:.80} is not served here (this server serves {self.model_name!r}; GET /v1/models)",
                "model",
                status=404,
                code="model_not_found",
            )
        max_tokens = req.max_tokens or self.default_max_tokens
        if max_tokens > self.max_tokens_limit:
            raise RequestError(
                f"max_tokens {max_tokens} > this server's limit serve.max_tokens_limit={self.max_tokens_limit}",
                "max_tokens",
            )
        try:
            ids = render_conversation(
                req.conversation, self.tokenizer, add_generation_prompt=True, **self.render_kwargs
            ).ids.tolist()
        except (FormatError, ValueError, UnicodeError) as e:
            raise RequestError(f"messages: cannot render the conversation: {e}", "messages") from None
        if len(ids) > self.max_prompt_len:
            raise RequestError(
                f"the prompt has {len(ids)} tokens > this server's context limit "
                f"generation.max_prompt_len={self.max_prompt_len}",
                "messages",
                code="context_length_exceeded",
            )
        greedy = req.temperature <= 0
        params = SamplingParams(
            max_new_tokens=_generation_budget(max_tokens),
            temperature=0.0 if greedy else round(req.temperature, 2),
            top_p=1.0 if greedy else round(req.top_p, 2),
            seed=0 if greedy or req.seed is None else int(req.seed) % (1 << 31),
            stop_ids=self.stop_ids,
        )
        gen = self.batcher.submit(ids, params, self.request_timeout_s, self._grammar(req))
        token_ids, stop_reason = gen.token_ids, gen.stop_reason
        if len(token_ids) > max_tokens:  # generated to the rounded-up budget: cut to the request's
            token_ids, stop_reason = token_ids[:max_tokens], "length"
        text = self.tokenizer.decode(token_ids) if token_ids is not gen.token_ids else gen.text
        text, stopped = apply_stop(text, req.stop)
        if stopped:
            stop_reason = "stop"
        parsed = parse_model_output(text, req.conversation["tools"] or None)
        if not req.conversation["tools"]:
            parsed.calls = []  # no tool offered (or tool_choice none): a call-shaped text is content
        message, finish = build_message(text.strip(), parsed, stop_reason)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            return completion_chunks(rid, req.model, message, finish, len(ids), len(token_ids), req.include_usage), True
        return completion_response(rid, req.model, message, finish, len(ids), len(token_ids)), False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses connections
    server_version = "gemma_tool_use"

    @property
    def app(self) -> ChatServer:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, fmt, *args):  # the standard library prints every request to stderr
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"))

    def _error(self, e: RequestError) -> None:
        self._json(e.status, e.body())

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/models":
            self._json(200, self.app.models())
        elif path == "/v1/models/" + self.app.model_name:
            self._json(200, self.app.models()["data"][0])
        elif path == "/health":
            self._json(200, {"status": "ok", "model": self.app.model_name, **self.app.batcher.stats})
        else:
            self._error(RequestError(f"no route GET {path}", status=404, code="not_found"))

    def do_POST(self):  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path != "/v1/chat/completions":
                raise RequestError(
                    f"no route POST {path} (this server has /v1/chat/completions)", status=404, code="not_found"
                )
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise RequestError("a Content-Length header is required", status=411)
            if int(length) > self.app.max_request_bytes:
                self.close_connection = True  # the body is not read: the connection cannot be reused
                raise RequestError(
                    f"request body of {length} bytes > serve.max_request_bytes={self.app.max_request_bytes}", status=413
                )
            raw = self.rfile.read(int(length))
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                raise RequestError(f"the request body is not valid JSON: {e}"[:300]) from None
            result, stream = self.app.chat(body)
            if stream:
                events = "".join(f"data: {json.dumps(ev, ensure_ascii=False)}\n\n" for ev in result)
                self._send(200, (events + "data: [DONE]\n\n").encode("utf-8"), "text/event-stream")
            else:
                self._json(200, result)
        except RequestError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; nothing to answer
        except Exception as e:  # noqa: BLE001 - one request fails, the server stays up
            log.exception("internal error on %s", path)
            self._error(
                RequestError(f"internal error: {type(e).__name__}: {e}"[:500], status=500, code="internal_error")
            )

    def do_PUT(self):  # noqa: N802
        self._error(RequestError(f"method PUT not allowed on {self.path}", status=405, code="method_not_allowed"))

    do_DELETE = do_PATCH = do_PUT


def make_http_server(app: ChatServer, host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    server.app = app  # type: ignore[attr-defined]
    return server
