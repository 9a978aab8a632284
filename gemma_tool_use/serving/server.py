"""The model side of `stage=serve`: the batcher that runs every generation, and the chat logic
that turns an OpenAI request into token ids and a generation back into an OpenAI answer. The HTTP
side (connections, keys, timeouts, limits, the access log, shutdown) is serving/front_door.py.

Concurrent requests are batched: a single generation thread takes every request that arrives
within `serve.batch_window_ms` of the first (up to `serve.max_batch`), groups them by sampling
settings and runs each group as one continuous-batching generation; each answer goes back as soon
as its row finishes, not when the whole batch does. Requests that arrive meanwhile wait for the
next round. A request waits on a future, never on a thread of its own.

Tool choice: a request's grammar (tool_grammar.py) rides with it into the batch, one per row:
every request under `generation.constrain=tools`, otherwise only those with `tool_choice`
"required" or a named function, or with `strict` functions (ChatServer._grammar).

Compiles: generation programs are keyed by (max_new_tokens bucket, temperature, top_p). A
request's max_tokens is rounded up to a power of two (>= 32) for generation and the answer cut
to the requested length, and temperature/top_p are rounded to 2 decimals, so a long-running
server compiles a handful of programs, not one per distinct request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
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
    future: Future = field(default_factory=Future)  # its Generation, or the error that ended it


class ShuttingDown(RequestError):
    def __init__(self):
        super().__init__("the server is shutting down; retry on another instance", status=503, code="shutting_down")


class Batcher:
    """One thread runs every generation; requests queue for it and wait on a future for their row."""

    def __init__(self, generate: Callable, max_batch: int, window_s: float):
        self.generate, self.max_batch, self.window_s = generate, int(max_batch), float(window_s)
        self.queue: queue.Queue[Job] = queue.Queue()
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0, "errors": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="generation", daemon=True)
        self._thread.start()

    def submit(self, ids: list[int], params: SamplingParams, grammar: str | None = None) -> Future:
        """The request's future: its Generation, or an error (ShuttingDown once close() ran)."""
        job = Job(ids, params, grammar)
        if self._stop.is_set():
            job.future.set_exception(ShuttingDown())
        else:
            self.queue.put(job)
        return job.future

    def fail_waiting(self) -> int:
        """Answer every request still queued with ShuttingDown (shutdown past its grace); their count."""
        failed = 0
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                return failed
            failed += settle(job.future, error=ShuttingDown())

    def close(self, wait_s: float = 5.0) -> None:
        """Stop taking batches; requests still queued are answered ShuttingDown."""
        self._stop.set()
        self.fail_waiting()
        self._thread.join(timeout=wait_s)
        self.fail_waiting()  # anything queued while the thread finished its batch

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
            # a request that timed out or was failed at shutdown before its turn costs no generation
            batch = [job for job in self._take_batch() if not job.future.done()]
            if not batch:
                continue
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            groups: dict[SamplingParams, list[Job]] = {}
            for job in batch:
                groups.setdefault(job.params, []).append(job)
            for params, jobs in groups.items():

                def finish(gen: Generation, jobs=jobs) -> None:
                    settle(jobs[gen.index].future, result=gen)

                try:
                    self.generate([j.ids for j in jobs], params, finish, [j.grammar for j in jobs])
                except BaseException as e:  # noqa: BLE001 - answer the requests, keep the thread alive
                    log.exception("generation failed for a batch of %d request(s)", len(jobs))
                    self.stats["errors"] += 1
                    for job in jobs:
                        settle(job.future, error=e)
                self.stats["requests"] += len(jobs)


def settle(future: Future, result=None, error: BaseException | None = None) -> int:
    """Set a request's outcome once: a future already answered (failed at shutdown, then finished
    by the generation in flight) keeps its first outcome. 1 if this call set it."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
        return 1
    except Exception:  # noqa: BLE001 - InvalidStateError: answered already
        return 0


def _generation_budget(max_tokens: int) -> int:
    """Generation length for a request: a power of two >= 32 (few compiled programs)."""
    return max(32, 1 << (int(max_tokens) - 1).bit_length())


@dataclass
class Prepared:
    """A request ready for the batcher: its token ids, sampling settings and grammar."""

    req: object  # openai_api.ChatRequest
    ids: list[int]
    params: SamplingParams
    grammar: str | None
    max_tokens: int


class ChatServer:
    """The chat logic the front door calls: prepare(body) -> token ids for the batcher, then
    respond(prepared, generation) -> the OpenAI answer."""

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
        constrain: str = "none",
    ):
        self.tokenizer, self.batcher, self.model_name = tokenizer, batcher, model_name
        self.constrain = constrain  # generation.constrain: "tools" puts every request under its grammar
        self.render_kwargs = {} if system_prompt is None else {"system_prompt": system_prompt}
        self.max_prompt_len, self.default_max_tokens = int(max_prompt_len), int(default_max_tokens)
        self.max_tokens_limit, self.stop_ids = int(max_tokens_limit), tuple(stop_ids)
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

    def prepare(self, body) -> Prepared:
        """A parsed JSON body, checked and rendered to token ids; RequestError on bad input."""
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
        return Prepared(req, ids, params, self._grammar(req), max_tokens)

    def respond(self, prep: Prepared, gen: Generation) -> tuple[dict | list[dict], bool, int]:
        """(response object or stream events, is_stream, completion tokens) for a finished generation."""
        req, max_tokens = prep.req, prep.max_tokens
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
        n_prompt, n_new = len(prep.ids), len(token_ids)
        if req.stream:
            return completion_chunks(rid, req.model, message, finish, n_prompt, n_new, req.include_usage), True, n_new
        return completion_response(rid, req.model, message, finish, n_prompt, n_new), False, n_new
