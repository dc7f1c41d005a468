"""The local OpenAI-compatible test server, over real HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import httpx2
import pytest

from service_ambitions.testing._limits import format_reset
from service_ambitions.testing.openai_server import Behaviour, FakeOpenAIServer, unused_port

SYSTEM = "You are a service designer."
USER = 'ROLES: [{"role_id": "learners", "name": "Learners"}]\nPLATEAU: 1 Foundational\nSERVICE_CONTEXT: {}'
TOOL = {"type": "function", "function": {"name": "final_result", "parameters": {"type": "object"}}}


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chat(**extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    return {"model": "gpt-5-mini", "messages": messages, **extra}


def post(server: FakeOpenAIServer, body: dict[str, Any], path: str = "/chat/completions") -> httpx2.Response:
    return httpx2.post(f"{server.base_url}{path}", json=body, headers={"authorization": "Bearer sk-test"})


def test_tool_call_answer_with_usage() -> None:
    with FakeOpenAIServer() as server:
        response = post(server, chat(tools=[TOOL], tool_choice="required"))
    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "final_result"
    features = json.loads(call["arguments"])["features"]
    assert list(features) == ["learners"]  # the offline model's features answer for the prompt's role
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == len(f"{SYSTEM}\n{USER}") // 4
    assert usage["completion_tokens"] > 0
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert server.errors == []


@pytest.mark.parametrize(
    "extra",
    [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}}}},
        {"response_format": {"type": "json_object"}},
        {},
        {"tools": [TOOL], "tool_choice": "none"},
    ],
)
def test_json_text_answer_without_a_tool_call(extra: dict[str, Any]) -> None:
    with FakeOpenAIServer() as server:
        response = post(server, chat(**extra))
    message = response.json()["choices"][0]["message"]
    assert "tool_calls" not in message
    assert "learners" in json.loads(message["content"])["features"]


def test_named_tool_choice_is_honoured() -> None:
    other = {"type": "function", "function": {"name": "other"}}
    with FakeOpenAIServer() as server:
        response = post(
            server,
            chat(tools=[other, TOOL], tool_choice={"type": "function", "function": {"name": "final_result"}}),
        )
    assert response.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "final_result"


def test_responses_api() -> None:
    body = {
        "model": "gpt-5-mini",
        "input": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
        "tools": [{"type": "function", "name": "final_result", "parameters": {}}],
        "tool_choice": "required",
    }
    with FakeOpenAIServer() as server:
        response = post(server, body, "/responses")
    item = response.json()["output"][0]
    assert (item["type"], item["name"], response.json()["status"]) == (
        "function_call",
        "final_result",
        "completed",
    )
    assert "learners" in json.loads(item["arguments"])["features"]
    assert response.json()["usage"]["input_tokens"] == len(f"{SYSTEM}\n{USER}") // 4


def test_rpm_window_headers_and_retry_after() -> None:
    clock = FakeClock()
    with FakeOpenAIServer(Behaviour(rpm=2, clock=clock)) as server:
        first = post(server, chat())
        clock.now += 20
        second = post(server, chat())
        limited = post(server, chat())
        clock.now += 40  # the first request leaves the window
        again = post(server, chat())
        limited_again = post(server, chat())
    assert [first.status_code, second.status_code, limited.status_code, again.status_code] == [
        200,
        200,
        429,
        200,
    ]
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-reset-requests"] == "40s"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert limited.headers["retry-after"] == "40"
    assert limited.headers["retry-after-ms"] == "40000"
    assert limited_again.status_code == 429
    assert limited_again.headers["retry-after"] == "20"  # the second request leaves at t+80
    assert "x-ratelimit-limit-tokens" not in first.headers
    assert server.counters.rate_limited == 2
    assert server.counters.max_requests_per_window == 4  # rejected requests count too


def test_tpm_limit() -> None:
    clock = FakeClock()
    tokens = len(f"{SYSTEM}\n{USER}") // 4
    with FakeOpenAIServer(Behaviour(tpm=tokens * 2, clock=clock)) as server:
        statuses = [post(server, chat()).status_code for _ in range(3)]
        clock.now += 61
        after = post(server, chat())
    assert statuses == [200, 200, 429]
    assert after.status_code == 200
    assert after.headers["x-ratelimit-limit-tokens"] == str(tokens * 2)
    assert after.headers["x-ratelimit-remaining-tokens"] == str(tokens)


def test_429_without_retry_after_and_without_headers() -> None:
    with FakeOpenAIServer(Behaviour(rpm=1, retry_after=False, clock=FakeClock())) as server:
        post(server, chat())
        limited = post(server, chat())
    assert limited.status_code == 429
    assert "retry-after" not in limited.headers
    assert "retry-after-ms" not in limited.headers
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"

    with FakeOpenAIServer(Behaviour(rpm=1, rate_limit_headers=False, clock=FakeClock())) as server:
        ok = post(server, chat())
        limited = post(server, chat())
    assert limited.status_code == 429
    assert not [name for name in {**ok.headers, **limited.headers} if name.startswith("x-ratelimit")]
    assert limited.headers["retry-after"] == "60"


def test_scripted_faults() -> None:
    faults = ["500", "503", "429", "quota", "401", "garbage", "truncated", "ok"]
    with FakeOpenAIServer(Behaviour(faults=faults)) as server:
        responses = [post(server, chat(tools=[TOOL])) for _ in faults]
    statuses = [response.status_code for response in responses]
    assert statuses == [500, 503, 429, 429, 401, 200, 200, 200]
    assert responses[2].headers["retry-after"] == "1"
    assert responses[3].json()["error"]["code"] == "insufficient_quota"
    assert "retry-after" not in responses[3].headers  # waiting does not fix a quota
    assert responses[4].json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(json.JSONDecodeError):
        responses[5].json()
    truncated = responses[6].json()["choices"][0]
    assert truncated["finish_reason"] == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(truncated["message"]["tool_calls"][0]["function"]["arguments"])
    assert responses[7].json()["choices"][0]["finish_reason"] == "tool_calls"
    assert [request.fault for request in server.chat_requests()] == faults
    assert server.counters.rate_limited == 2


def test_fault_function_of_the_request_number() -> None:
    with FakeOpenAIServer(Behaviour(faults=lambda number: "500" if number % 2 else "ok")) as server:
        statuses = [post(server, chat()).status_code for _ in range(4)]
    assert statuses == [500, 200, 500, 200]


def test_stall_holds_the_request_then_answers_the_next() -> None:
    with FakeOpenAIServer(Behaviour(faults=["stall"], stall_seconds=30)) as server:
        with pytest.raises(httpx2.ReadTimeout):
            httpx2.post(f"{server.base_url}/chat/completions", json=chat(), timeout=0.3)
        assert post(server, chat()).status_code == 200
    assert server.counters.requests == 2


def test_reset_closes_the_connection_abruptly() -> None:
    with FakeOpenAIServer(Behaviour(faults=["reset"])) as server:
        with pytest.raises((httpx2.ReadError, httpx2.RemoteProtocolError)):  # RST, not an HTTP answer
            post(server, chat())
        assert post(server, chat()).status_code == 200
    assert server.errors == []


def test_llama_mode() -> None:
    schema = {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}}}}
    named = {"type": "function", "function": {"name": "final_result"}}
    with FakeOpenAIServer(Behaviour(llama=True, rate_limit_headers=False)) as server:
        rejected = post(server, chat(**schema))
        required = post(server, chat(tools=[TOOL], tool_choice="required"))
        forced = post(server, chat(tools=[TOOL], tool_choice=named))
    assert rejected.status_code == 400
    assert "json_schema" in rejected.json()["error"]["message"]
    message = required.json()["choices"][0]["message"]
    assert "tool_calls" not in message
    assert message["content"].startswith("```json\n")
    assert (
        "learners"
        in json.loads(message["content"].removeprefix("```json\n").removesuffix("\n```"))["features"]
    )
    assert forced.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "final_result"


def test_request_log_and_models() -> None:
    clock = FakeClock()
    with FakeOpenAIServer(Behaviour(clock=clock)) as server:
        models = httpx2.get(f"{server.base_url}/models")
        clock.now += 5
        post(server, chat(tools=[TOOL]))
        missing = post(server, {}, "/embeddings")
    assert models.json()["data"][0]["id"] == "gpt-5-mini"
    assert missing.status_code == 404
    get, completion, embeddings = server.requests
    assert (get.method, get.path, get.body, get.time) == ("GET", "/v1/models", None, 1000.0)
    assert (completion.method, completion.path, completion.time) == ("POST", "/v1/chat/completions", 1005.0)
    assert completion.body["tools"] == [TOOL]
    assert completion.headers["authorization"] == "Bearer sk-test"
    assert embeddings.path == "/v1/embeddings"
    assert server.chat_requests() == [completion]
    assert server.counters.requests == 1


def test_prefix_cache() -> None:
    long_user = USER + "\n" + "x" * 8000  # > 1024 tokens
    body = chat()
    body["messages"][1]["content"] = long_user
    prompt_chars = len(f"{SYSTEM}\n{long_user}")
    with FakeOpenAIServer(Behaviour(prefix_cache=True)) as server:
        cold = post(server, body).json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        warm = post(server, body).json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        short = post(server, chat()).json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cold == 0
    assert warm == prompt_chars // 512 * 128
    assert short == 0


def test_unused_port_refuses_connections() -> None:
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"http://127.0.0.1:{unused_port()}/v1/models")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.02, "20ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"), (3725, "1h2m5s"), (0, "0s")],
)
def test_reset_durations_are_written_like_openai(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_standalone_server() -> None:
    command = [sys.executable, "-m", "service_ambitions.testing.openai_server", "--port", "0", "--rpm", "5"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        response = httpx2.post(f"{base_url}/chat/completions", json=chat())
        assert response.headers["x-ratelimit-limit-requests"] == "5"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "Traceback" not in stderr


def test_standalone_server_rejects_unknown_faults() -> None:
    command = [sys.executable, "-m", "service_ambitions.testing.openai_server", "--faults", "ok,explode"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "explode" in result.stderr
    assert "Traceback" not in result.stderr
