"""stage=serve's front door on the tiny model, tried as a hostile client would: API keys, slow and
idle connections (408 / quiet close), the connection and queue bounds (503 / 429) with a bounded
thread count, the access log, and SIGTERM under load."""

import http.client
import json
import signal
import socket
import threading
import time

import openai
import pytest
from test_serve import WEATHER

from gemma_tool_use.serving.front_door import API_KEY_ENV, exposure_warning
from gemma_tool_use.serving.process import ServerDidNotStart, host_port, start_server

KEY = "sk-test-7f3a"
READ_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 24
MAX_QUEUE = 3
MARKER = "zebra-marker-4411"  # a prompt word that must never reach the access log


def test_exposure_warning_only_for_a_non_loopback_host_without_a_key():
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("localhost", None) is None
    assert exposure_warning("::1", None) is None and exposure_warning("0.0.0.0", "k") is None
    for host in ("0.0.0.0", "10.1.2.3", "::", "myhost.example"):
        assert API_KEY_ENV in exposure_warning(host, None)


@pytest.mark.parametrize(
    "override, key",
    [
        ("serve.read_timeout_s=0", "serve.read_timeout_s"),
        ("serve.max_connections=0", "serve.max_connections"),
        ("serve.max_queue=0", "serve.max_queue"),
        ("serve.shutdown_grace_s=nan", "serve.shutdown_grace_s"),
        ("serve.api_key=' '", "serve.api_key"),
    ],
)
def test_front_door_settings_are_checked(override, key):
    from hydra import compose, initialize_config_dir

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.orchestration.preflight import preflight
    from gemma_tool_use.utils.errors import UserError
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["stage=serve", "model=tiny", override])
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        preflight(cfg)


# ------------------------------------------------------------------ a real server process


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("door")
    overrides = [
        "model=tiny",
        "serve.model_name=tiny-tools",
        "serve.batch_window_ms=1500",  # requests wait together: the queue bound is reached
        f"serve.read_timeout_s={READ_TIMEOUT_S}",
        f"serve.max_connections={MAX_CONNECTIONS}",
        f"serve.max_queue={MAX_QUEUE}",
        "serve.shutdown_grace_s=1",
        "generation.max_new_tokens=8",
        "generation.max_prompt_len=512",
    ]
    try:  # the key from the environment: never in the run's saved config
        proc, url = start_server(overrides, run_dir, env_extra={API_KEY_ENV: KEY}, timeout_s=300)
    except ServerDidNotStart as e:
        pytest.fail(str(e))
    yield proc, url, host_port(url), run_dir
    if proc.poll() is None:
        proc.kill()


def _request(addr, method, path, body=None, key=KEY, timeout=60):
    conn = http.client.HTTPConnection(*addr, timeout=timeout)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), json.loads(resp.read() or b"null")


def _chat(marker=""):
    return {
        "model": "tiny-tools",
        "tools": [WEATHER],
        "max_tokens": 4,
        "messages": [{"role": "user", "content": f"Weather in Paris? {marker}"}],
    }


def _raw(addr, data: bytes) -> socket.socket:
    s = socket.create_connection(addr, timeout=30)
    if data:
        s.sendall(data)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_keys_guard_every_route_but_health(door):
    proc, url, addr, run_dir = door
    status, _, body = _request(addr, "GET", "/health", key=None)
    assert status == 200 and body["status"] == "ok"
    for key, text in ((None, "no API key provided"), ("sk-wrong", "incorrect API key")):
        status, headers, body = _request(addr, "GET", "/v1/models", key=key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key" and text in body["error"]["message"]
        assert headers["WWW-Authenticate"].startswith("Bearer") and KEY not in json.dumps(body)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["tiny-tools"]
    r = client.chat.completions.create(**_chat(MARKER))
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert KEY not in (run_dir / ".hydra" / "config.yaml").read_text()


def test_slow_requests_get_408_and_idle_connections_close_quietly(door):
    proc, url, addr, run_dir = door
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
    cases = {
        "short body": (head + "Content-Length: 100\r\n\r\n").encode() + b'{"model": ',
        "half the headers": head.encode(),
    }
    for name, data in cases.items():
        t0 = time.monotonic()
        s = _raw(addr, data)
        answer = _read_all(s)  # the server answers, then closes
        took = time.monotonic() - t0
        assert answer.startswith(b"HTTP/1.1 408") and b"serve.read_timeout_s" in answer, (name, answer[:300])
        assert READ_TIMEOUT_S - 0.2 < took < READ_TIMEOUT_S + 5, (name, took)
    # a client trickling a byte every 0.3 s is held to the same deadline
    s, t0 = _raw(addr, b""), time.monotonic()
    try:
        for byte in head.encode():
            s.sendall(bytes([byte]))
            time.sleep(0.3)
    except OSError:
        pass  # the server closed the connection after answering 408
    s.settimeout(10)
    assert _read_all(s).startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < READ_TIMEOUT_S + 5
    # an idle connection: closed after the timeout without an answer
    s, t0 = _raw(addr, b""), time.monotonic()
    assert _read_all(s) == b"" and READ_TIMEOUT_S - 0.2 < time.monotonic() - t0 < READ_TIMEOUT_S + 5


def test_malformed_http_gets_a_clean_answer_and_the_server_stays_up(door):
    proc, url, addr, run_dir = door
    auth = f"Authorization: Bearer {KEY}\r\n"
    cases = {
        b"HTTP/1.1 431": f"GET /v1/models HTTP/1.1\r\n{auth}X-Big: {'a' * 70_000}\r\n\r\n".encode(),
        b"HTTP/1.1 411": f"POST /v1/chat/completions HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n".encode(),
        b"HTTP/1.1 413": f"POST /v1/chat/completions HTTP/1.1\r\n{auth}Content-Length: 99999999\r\n\r\n".encode(),
        b"HTTP/1.1 400": b"NONSENSE\r\n\r\n",
        b"HTTP/1.1 505": b"GET / HTTP/2.0\r\n\r\n",
    }
    for status, data in cases.items():
        s = _raw(addr, data)
        try:
            answer = _read_all(s)
        except ConnectionResetError:
            answer = b""
        assert answer.startswith(status), (status, answer[:200])
    assert _request(addr, "GET", "/health")[0] == 200


def test_connections_over_the_bound_get_503_and_threads_stay_bounded(door):
    proc, url, addr, run_dir = door
    idle = [_raw(addr, b"") for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.3)
    conn = http.client.HTTPConnection(*addr, timeout=30)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 503 and body["error"]["code"] == "overloaded" and resp.getheader("Retry-After") == "1"
    assert "serve.max_connections=24" in body["error"]["message"]
    for s in idle:
        s.close()
    time.sleep(0.5)
    status, _, health = _request(addr, "GET", "/health")
    assert status == 200 and health["connections_refused"] >= 1
    # 24+ connections were held by a handful of threads (a thread per connection would be 25+)
    assert health["threads"] <= 12, health


def test_the_queue_bound_answers_429_and_every_admitted_request_is_answered(door):
    proc, url, addr, run_dir = door
    results = []

    def ask(i):
        results.append(_request(addr, "POST", "/v1/chat/completions", _chat(f"{MARKER} {i}"), timeout=120))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    statuses = sorted(r[0] for r in results)
    assert len(results) == 8 and set(statuses) <= {200, 429} and statuses.count(200) >= MAX_QUEUE, statuses
    refused = [r for r in results if r[0] == 429]
    assert refused and all(r[2]["error"]["code"] == "rate_limit_exceeded" and r[1]["Retry-After"] for r in refused)


def test_one_access_log_line_per_request_without_prompt_text(door):
    proc, url, addr, run_dir = door
    before = len((run_dir / "access.jsonl").read_text().splitlines())
    _request(addr, "GET", "/v1/models")
    _request(addr, "POST", "/v1/chat/completions", _chat(MARKER))
    text = (run_dir / "access.jsonl").read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == before + 2 and MARKER not in text
    last = lines[-1]
    assert last["path"] == "/v1/chat/completions" and last["status"] == 200
    assert last["prompt_tokens"] > 10 and 0 < last["completion_tokens"] <= 4 and last["seconds"] > 0
    assert {401, 408, 429, 503, 200} <= {rec["status"] for rec in lines}


def test_sigterm_under_load_answers_every_request_and_exits(door):
    """SIGTERM while requests wait for their batch (serve.shutdown_grace_s=1 < the 1.5 s window):
    each admitted request is answered, generated or a clean 503; the process exits 0."""
    proc, url, addr, run_dir = door
    results = []

    def ask(i):
        try:
            results.append(_request(addr, "POST", "/v1/chat/completions", _chat(str(i)), timeout=60))
        except Exception as e:  # noqa: BLE001
            results.append(("error", repr(e), None))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(MAX_QUEUE)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert proc.wait(30) == 0 and time.monotonic() - t0 < 20
    assert len(results) == MAX_QUEUE
    for status, _, body in results:
        assert status == 200 or (status == 503 and body["error"]["code"] == "shutting_down"), (status, body)
    with pytest.raises(OSError):
        socket.create_connection(addr, timeout=5)  # no longer listening
