"""stage=serve: the OpenAI request/response translation, and a real server process answering the
official `openai` client (tiny model: protocol, batching, errors, shutdown; the real tuned model
in a slow test: a correct tool call)."""

import http.client
import json
import signal
import threading

import openai
import pytest

from gemma_tool_use.format.parse import parse_model_output
from gemma_tool_use.generation.tool_grammar import ToolChoice
from gemma_tool_use.serving.openai_api import RequestError, apply_stop, build_message, parse_request
from gemma_tool_use.serving.process import STDOUT_LOG, ServerDidNotStart, host_port, start_server

from conftest import REPO

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# every argument forced but two binary choices: even the random tiny model finishes a valid call
SWITCH = {
    "type": "function",
    "function": {
        "name": "set_mode",
        "description": "Switch the device",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"mode": {"type": "string", "enum": ["on", "off"]}, "loud": {"type": "boolean"}},
            "required": ["mode", "loud"],
        },
    },
}


# ------------------------------------------------------------------ translation (no model)


def test_request_becomes_the_project_conversation():
    body = {
        "model": "m",
        "tools": [WEATHER],
        "temperature": 0.5,
        "max_tokens": 40,
        "stop": "###",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Weather in Paris"}, {"type": "text", "text": "now?"}],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, light wind"},
        ],
    }
    req = parse_request(body, "m")
    assert req.conversation == {
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather of a city",
                "parameters": WEATHER["function"]["parameters"],
            }
        ],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris\nnow?"},
            {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "args": {"city": "Paris"}}]},
            {"role": "tool", "name": "get_weather", "content": {"temp_c": 18}},  # JSON stays JSON
            {"role": "tool", "name": "get_weather", "content": "sunny, light wind"},
        ],
    }
    assert (req.temperature, req.max_tokens, req.stop, req.stream) == (0.5, 40, ["###"], False)
    assert parse_request({**body, "tool_choice": "none"}, "m").conversation["tools"] == []
    assert req.tool_choice == ToolChoice("auto") and req.strict_tools == frozenset()


def test_tool_choice_and_strict_are_read():
    body = {"model": "m", "tools": [WEATHER, SWITCH], "messages": [{"role": "user", "content": "hi"}]}
    req = parse_request({**body, "tool_choice": "required"}, "m")
    assert req.tool_choice == ToolChoice("required") and req.strict_tools == frozenset({"set_mode"})
    assert all("strict" not in t for t in req.conversation["tools"])  # not part of the prompt
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert parse_request({**body, "tool_choice": named}, "m").tool_choice == ToolChoice("function", "get_weather")
    none = parse_request({**body, "tool_choice": "none"}, "m")
    assert none.tool_choice == ToolChoice("none") and none.strict_tools == frozenset()


def test_which_requests_are_decoded_under_a_grammar():
    """generation.constrain=none: only tool_choice required / a named function / strict functions
    (whose arguments alone are held to their schemas); constrain=tools: every request."""
    from types import SimpleNamespace

    from gemma_tool_use.generation.tool_grammar import tool_grammar
    from gemma_tool_use.serving.server import ChatServer

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    free, tools = SimpleNamespace(constrain="none"), SimpleNamespace(constrain="tools")
    plain = parse_request({**body, "tools": [WEATHER]}, "m")
    assert ChatServer._grammar(free, plain) is None
    assert ChatServer._grammar(tools, plain) == tool_grammar(plain.conversation["tools"])
    strict = parse_request({**body, "tools": [WEATHER, SWITCH]}, "m")
    offered = strict.conversation["tools"]
    assert ChatServer._grammar(free, strict) == tool_grammar(offered, loose=frozenset({"get_weather"}))
    required = parse_request({**body, "tools": [WEATHER], "tool_choice": "required"}, "m")
    assert ChatServer._grammar(free, required) == tool_grammar(
        required.conversation["tools"], ToolChoice("required"), loose=frozenset({"get_weather"})
    )
    none = parse_request({**body, "tools": [WEATHER], "tool_choice": "none"}, "m")
    assert ChatServer._grammar(free, none) is None and "tool_call" in ChatServer._grammar(tools, none)


@pytest.mark.parametrize(
    "patch, param, text",
    [
        ({"messages": []}, "messages", "non-empty list"),
        ({"n": 2}, "n", "'n' must be 1"),
        ({"tool_choice": "required"}, "tool_choice", "needs at least one tool"),
        ({"tool_choice": "any"}, "tool_choice", 'must be "auto", "none", "required"'),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
            "not in 'tools'",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]},
            "tools[0].function.strict",
            "must be a boolean",
        ),
        ({"temperature": 3}, "temperature", "in [0, 2]"),
        ({"max_tokens": 0}, "max_tokens", "integer in [1,"),
        ({"frobnicate": 1}, "frobnicate", "unknown parameter"),
        (
            {"tools": [{"type": "function", "function": {"description": "no name"}}]},
            "tools[0].function.name",
            "non-empty",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
                        ],
                    },
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
            "not valid JSON",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "nope", "content": "x"}]},
            "messages[1].tool_call_id",
            "answers no earlier assistant tool call",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content",
            "only text content parts",
        ),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "must be one of"),
    ],
)
def test_bad_requests_name_the_field(patch, param, text):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **patch}
    with pytest.raises(RequestError) as e:
        parse_request(body, "m")
    assert e.value.param == param and text in e.value.message and e.value.status == 400
    assert e.value.body()["error"]["type"] == "invalid_request_error"


def test_model_text_becomes_tool_calls_or_content():
    tools = [{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    text = (
        '<tool_call>\n{"name": "get_weather", "args": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "args": {"city": "Oslo"}}\n</tool_call>'
    )
    message, finish = build_message(text, parse_model_output(text, tools), "stop")
    assert finish == "tool_calls" and message["content"] is None
    assert [json.loads(c["function"]["arguments"]) for c in message["tool_calls"]] == [
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    assert len({c["id"] for c in message["tool_calls"]}) == 2 and all(
        c["id"].startswith("call_") for c in message["tool_calls"]
    )
    message, finish = build_message("No tool fits.", parse_model_output("No tool fits.", tools), "length")
    assert message["content"] == "No tool fits." and "tool_calls" not in message and finish == "length"
    assert apply_stop("abc###def##", ["##", "c#"]) == ("ab", True) and apply_stop("abc", ["x"]) == ("abc", False)


# ------------------------------------------------------------------ a real server process


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    overrides = [
        "model=tiny",
        "serve.model_name=tiny-tools",
        "serve.batch_window_ms=200",
        "generation.max_new_tokens=8",
        "generation.max_prompt_len=512",
    ]
    run_dir = tmp_path_factory.mktemp("serve")
    try:
        proc, url = start_server(overrides, run_dir, timeout_s=300)
    except ServerDidNotStart as e:
        pytest.fail(str(e))
    yield proc, url, run_dir
    if proc.poll() is None:
        proc.kill()


def _client(url):
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)


def test_openai_client_talks_to_the_server(server):
    proc, url, run_dir = server
    client = _client(url)
    assert [m.id for m in client.models.list().data] == ["tiny-tools"]
    r = client.chat.completions.create(
        model="tiny-tools", tools=[WEATHER], max_tokens=5, messages=[{"role": "user", "content": "Weather in Paris?"}]
    )
    choice = r.choices[0]
    assert r.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert 0 < r.usage.completion_tokens <= 5 and r.usage.prompt_tokens > 20  # cut to max_tokens, not the budget
    # streaming: the same answer as events (greedy: same text)
    events = list(
        client.chat.completions.create(
            model="tiny-tools",
            tools=[WEATHER],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Weather in Paris?"}],
        )
    )
    streamed = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    assert streamed == (choice.message.content or "")
    assert events[-1].usage.completion_tokens == r.usage.completion_tokens
    # errors come back as the client's typed exceptions with the server's message
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    # tool_choice "required" and a named function, honoured through the grammar (generation.constrain
    # is "none" here: the request alone asks for it)
    for tool_choice in ("required", {"type": "function", "function": {"name": "set_mode"}}):
        tools = [SWITCH] if tool_choice == "required" else [WEATHER, SWITCH]
        r = client.chat.completions.create(
            model="tiny-tools",
            tools=tools,
            tool_choice=tool_choice,
            max_tokens=64,
            messages=[{"role": "user", "content": "Turn it on"}],
        )
        calls = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls" and calls, r.choices[0].message
        assert {c.function.name for c in calls} == {"set_mode"}
        args = json.loads(calls[0].function.arguments)
        assert args["mode"] in ("on", "off") and isinstance(args["loud"], bool)
    with pytest.raises(openai.BadRequestError, match="not in 'tools'"):
        client.chat.completions.create(
            model="tiny-tools",
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "set_mode"}},
            messages=[{"role": "user", "content": "hi"}],
        )
    with pytest.raises(openai.BadRequestError, match="context limit"):
        client.chat.completions.create(model="tiny-tools", messages=[{"role": "user", "content": "word " * 600}])
    # raw HTTP: broken JSON, unknown route, wrong method; the server answers each and stays up
    host, port = host_port(url)
    for method, path, body, status in [
        ("POST", "/v1/chat/completions", b"{not json", 400),
        ("GET", "/v1/nothing", None, 404),
        ("DELETE", "/v1/models", None, 405),
    ]:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = json.loads(resp.read())
        assert resp.status == status and payload["error"]["message"], (method, path, payload)
    assert proc.poll() is None


def test_concurrent_requests_are_batched_and_none_is_dropped(server):
    proc, url, run_dir = server
    client = _client(url)
    questions = [f"Weather in city number {i}?" for i in range(12)]
    answers, errors = {}, []

    def ask(q):
        try:
            r = client.chat.completions.create(
                model="tiny-tools", tools=[WEATHER], max_tokens=6, messages=[{"role": "user", "content": q}]
            )
            answers[q] = r.choices[0].message.content
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    before = _health(url)
    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    after = _health(url)
    assert not errors and len(answers) == len(questions)
    assert after["requests"] - before["requests"] == len(questions)
    assert after["batches"] - before["batches"] < len(questions) and after["largest_batch"] > 1  # batched
    # a batched answer equals the same request alone (greedy)
    q = questions[3]
    alone = client.chat.completions.create(
        model="tiny-tools", tools=[WEATHER], max_tokens=6, messages=[{"role": "user", "content": q}]
    )
    assert alone.choices[0].message.content == answers[q]


def _health(url):
    conn = http.client.HTTPConnection(*host_port(url), timeout=60)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())


def test_sigterm_stops_the_server_cleanly(server):
    proc, url, run_dir = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert '"requests"' in (run_dir / STDOUT_LOG).read_text()  # the final counters were logged


@pytest.mark.slow
def test_tuned_model_answers_the_openai_client_with_a_correct_tool_call(tmp_path):
    adapter = REPO / "experiments" / "grpo_from_sft_short" / "start_adapter"
    overrides = ["model=gemma3_270m", f"model.lora_checkpoint={adapter}", "serve.model_name=tuned"]
    proc, url = start_server(overrides, tmp_path, timeout_s=600)
    try:
        client = _client(url)
        r = client.chat.completions.create(
            model="tuned",
            tools=[WEATHER],
            max_tokens=64,
            messages=[{"role": "user", "content": "What's the weather in Paris right now?"}],
        )
        [call] = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        assert json.loads(call.function.arguments)["city"].lower().startswith("paris")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
