"""HTTP/1.1 on an asyncio stream, as much as an API server needs: read one request under a
deadline (headers and body together), and write one response.

Why not the standard library's http.server: it gives every connection a thread of its own and reads
without a deadline, so idle or half-sent connections pin threads for good. Here a connection is a
coroutine, and `read_request` gives up when the whole request has not arrived by its deadline:
a client that trickles one byte a second cannot hold a connection longer than that either.
Chunked request bodies are refused (411): the OpenAI clients send Content-Length.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from http import HTTPStatus

from gemma_tool_use.serving.openai_api import RequestError

MAX_HEADER_BYTES = 64 * 1024  # request line and headers together
HEAD_END = b"\r\n\r\n"


class Idle(Exception):
    """The connection ended, or stayed silent until its deadline, before a request began: close it
    without an answer (an idle keep-alive connection is not a request)."""


class TooSlow(Exception):
    """A request began but its headers or body did not arrive by the deadline: 408, then close."""


@dataclass
class HttpRequest:
    method: str
    path: str  # without the query string, trailing "/" stripped
    headers: dict[str, str]  # lower-case names
    body: bytes
    keep_alive: bool
    started: float  # time.monotonic() when its first byte arrived


async def _within(awaitable, deadline: float):
    left = deadline - time.monotonic()
    if left <= 0:
        raise asyncio.TimeoutError
    return await asyncio.wait_for(awaitable, left)


async def read_request(reader: asyncio.StreamReader, writer, deadline: float, max_body_bytes: int) -> HttpRequest:
    """The next request on a connection, all of it by `deadline` (monotonic seconds). Raises Idle
    (nothing came: close quietly), TooSlow (408) or RequestError (a 4xx to answer, then close)."""
    try:
        first = await _within(reader.readexactly(1), deadline)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        raise Idle from None
    started = time.monotonic()
    try:
        head = first + await _within(reader.readuntil(HEAD_END), deadline)
    except asyncio.TimeoutError:
        raise TooSlow("headers") from None
    except asyncio.IncompleteReadError:
        raise Idle from None  # the client hung up mid-headers: nobody to answer
    except asyncio.LimitOverrunError:
        raise RequestError(f"request headers over {MAX_HEADER_BYTES} bytes", status=431) from None
    method, path, version, headers = _parse_head(head)
    keep_alive = _keep_alive(version, headers)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise RequestError("chunked request bodies are not accepted; send a Content-Length header", status=411)
    length = headers.get("content-length")
    if method == "POST" and (length is None or not length.strip().isdigit()):
        raise RequestError("a Content-Length header is required", status=411)
    size = int(length.strip()) if length and length.strip().isdigit() else 0
    if size > max_body_bytes:
        raise RequestError(f"request body of {size} bytes > serve.max_request_bytes={max_body_bytes}", status=413)
    if size and headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for this before a body over 1 KiB
    try:
        body = await _within(reader.readexactly(size), deadline) if size else b""
    except asyncio.TimeoutError:
        raise TooSlow("body") from None
    except asyncio.IncompleteReadError:
        raise Idle from None
    return HttpRequest(method, path, headers, body, keep_alive, started)


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise RequestError("malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise RequestError(f"unsupported protocol {version[:20]!r}", status=505)
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise RequestError(f"malformed header line {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    return method.upper(), target.split("?", 1)[0].rstrip("/") or "/", version, headers


def _keep_alive(version: str, headers: dict[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return connection == "keep-alive"
    return connection != "close"


def response_bytes(
    status: int,
    payload: bytes,
    content_type: str = "application/json",
    keep_alive: bool = True,
    extra_headers: dict[str, str] | None = None,
) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Server: gemma_tool_use",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(payload)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{k}: {v}" for k, v in (extra_headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def json_bytes(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")
