"""Network faults never crash a run: the CLI as a real process against the fake OpenAI server.

Connection refused, reset, 5xx, 401 and stalls are retried (or not) by the transport, then the
service is quarantined and the batch goes on. The gateway marks failures that would hit every call
alike as ``systemic`` (checked in-process at the end).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai.models import Model, override_allow_model_requests
from pydantic_ai.models.fallback import FallbackModel
from pydantic_ai.models.openai import OpenAIResponsesModel
from pydantic_ai.models.wrapper import WrapperModel

from service_ambitions.errors import ModelCallError
from service_ambitions.llm.gateway import Gateway
from service_ambitions.settings import load_settings
from service_ambitions.store.cache import ResponseCache
from service_ambitions.testing.openai_server import Behaviour, FakeOpenAIServer, unused_port
from tests.conftest import SAMPLES, read_jsonl

KEY = "sk-test-network-faults-0123456789"
FAST_RETRIES = {
    "SA_TRANSPORT_RETRIES__ATTEMPTS": "3",
    "SA_TRANSPORT_RETRIES__MAX_WAIT": "0.05",
    "SA_CONCURRENCY": "1",
}


def run_cli(
    tmp: Path, env: dict[str, str], *, services: int = 1
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run ``service-ambitions run`` on the samples in a subprocess; returns the result and output path."""
    output = tmp / "out.jsonl"
    command = [
        sys.executable,
        "-m",
        "service_ambitions",
        "run",
        "--input-file",
        str(SAMPLES),
        "--output-file",
        str(output),
        "--model",
        "openai:gpt-5-mini",
        "--max-services",
        str(services),
        "--cache-mode",
        "off",
    ]
    environment = {**os.environ, "OPENAI_API_KEY": KEY, **FAST_RETRIES, **env}
    result = subprocess.run(
        command, env=environment, cwd=tmp, capture_output=True, text=True, timeout=120, check=False
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert "internal error" not in result.stderr, result.stderr
    assert KEY not in result.stderr + result.stdout
    assert result.returncode >= 0  # not killed by a signal
    header = read_jsonl(output)[0]
    assert header["record_type"] == "header"
    return result, output


def records(output: Path) -> list[dict[str, Any]]:
    return [line for line in read_jsonl(output) if line.get("record_type") != "header"]


def quarantined(output: Path) -> list[dict[str, Any]]:
    directory = output.with_name(output.name + ".quarantine")
    entries = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(directory.glob("*.json"))]
    for entry in entries:
        assert KEY not in json.dumps(entry)
    return entries


def test_connection_refused_quarantines_and_goes_on(tmp_path: Path) -> None:
    port = unused_port()
    result, output = run_cli(tmp_path, {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}, services=2)
    entries = quarantined(output)
    assert entries
    assert {entry["kind"] for entry in entries} == {"model_error"}
    assert all(
        f"cannot connect to 127.0.0.1:{port}: connection refused" in entry["error"] for entry in entries
    )
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in result.stderr
    assert "transport retry 1 after ConnectError (connection refused)" in result.stderr
    assert records(output) == []


@pytest.mark.parametrize("fault", ["refused", "401"])
def test_a_batch_failing_the_same_way_stops_early_with_one_message(tmp_path: Path, fault: str) -> None:
    """Three services in a row failing systemically stop admission: exit 1, resumable once fixed."""
    total = len(SAMPLES.read_text(encoding="utf-8").splitlines())
    if fault == "refused":
        result, output = run_cli(
            tmp_path, {"SA_BASE_URL": f"http://127.0.0.1:{unused_port()}/v1"}, services=total
        )
        requests = None
    else:
        with FakeOpenAIServer(Behaviour(faults=lambda _number: "401")) as server:
            result, output = run_cli(tmp_path, {"SA_BASE_URL": server.base_url}, services=total)
        requests = len(server.chat_requests())
    assert result.returncode == 1, result.stderr
    reason = "connection" if fault == "refused" else "authentication"
    assert result.stderr.count(f"stopped early: 3 services in a row failed the same way ({reason})") == 1
    failed = {entry["service_id"] for entry in quarantined(output)}
    assert len(failed) == 3 < total  # bounded: the rest were never tried
    if requests is not None:
        assert requests == 3  # one descriptions call per service, no retry of a 401
    # The services that failed for a systemic reason are retried by --resume once the cause is fixed.
    with FakeOpenAIServer() as server:
        environment = {**os.environ, "OPENAI_API_KEY": KEY, **FAST_RETRIES, "SA_BASE_URL": server.base_url}
        resumed = subprocess.run(
            [sys.executable, "-m", "service_ambitions", "run", "--input-file", str(SAMPLES), "--output-file",
             str(output), "--model", "openai:gpt-5-mini", "--cache-mode", "off", "--resume", "-q"],
            env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert len(records(output)) == total


def test_connection_reset_is_retried_and_the_record_written(tmp_path: Path) -> None:
    with FakeOpenAIServer(Behaviour(faults=["reset"])) as server:
        result, output = run_cli(tmp_path, {"SA_BASE_URL": server.base_url})
    assert len(records(output)) == 1
    assert quarantined(output) == []
    assert "transport retry 1 after" in result.stderr
    first, second = server.chat_requests()[:2]
    assert (first.fault, second.fault) == ("reset", "ok")
    assert first.body == second.body  # the same call, sent again
    assert server.errors == []


def test_server_errors_are_retried_on_the_same_call(tmp_path: Path) -> None:
    with FakeOpenAIServer(Behaviour(faults=["500", "500"])) as server:
        _, output = run_cli(tmp_path, {"SA_BASE_URL": server.base_url})
    assert len(records(output)) == 1
    requests = server.chat_requests()
    assert requests[0].body == requests[1].body == requests[2].body  # 3 requests for the first call
    assert requests[3].body != requests[0].body  # then the next call
    calls = len({json.dumps(request.body, sort_keys=True) for request in requests})
    assert len(requests) == calls + 2


def test_unauthorised_is_not_retried(tmp_path: Path) -> None:
    with FakeOpenAIServer(Behaviour(faults=lambda _number: "401")) as server:
        result, output = run_cli(tmp_path, {"SA_BASE_URL": server.base_url}, services=2)
    entries = quarantined(output)
    assert entries
    assert {entry["kind"] for entry in entries} == {"model_error"}
    assert all(
        "authentication failed (ModelAuthenticationError: HTTP 401 invalid_api_key" in entry["error"]
        for entry in entries
    )
    assert len(server.chat_requests()) == len(entries)  # one request per call: no transport retry
    assert "transport retry" not in result.stderr


def test_stall_past_request_timeout_is_retried_then_quarantined_as_timeout(tmp_path: Path) -> None:
    env = {"SA_REQUEST_TIMEOUT": "0.5", "SA_TRANSPORT_RETRIES__ATTEMPTS": "2"}
    with FakeOpenAIServer(Behaviour(faults=lambda _number: "stall", stall_seconds=10)) as server:
        result, output = run_cli(tmp_path, {"SA_BASE_URL": server.base_url, **env})
    (entry,) = quarantined(output)
    assert entry["kind"] == "timeout"
    assert "timed out waiting for 127.0.0.1" in entry["error"]
    assert len(server.chat_requests()) == 2  # the first attempt and one transport retry
    assert "transport retry 1 after ReadTimeout" in result.stderr


# In-process: what the engine will use to stop early ------------------------------------------------


class Answer(BaseModel):
    features: dict[str, Any]


def unwrapped(model: Model) -> Model:
    """The provider model under the gateway's per-model wrappers."""
    while isinstance(model, WrapperModel):
        model = model.wrapped
    return model


async def call(base_url: str, **overrides: Any) -> tuple[ModelCallError | None, Gateway]:
    """One features call through a Gateway over real HTTP; returns the error it raised, if any."""
    settings = load_settings(
        None,
        {
            "model": "openai:gpt-5-mini",
            "cache_mode": "off",
            "base_url": base_url,
            "openai_api_key": KEY,
            "transport_retries": {"attempts": 3, "max_wait": 0.05, "rate_limited_for": 0},
            **overrides,
        },
    )
    gateway = Gateway(settings, system_prompt="S", cache=ResponseCache(Path("cache"), mode="off"))
    model = gateway.stage_model("features")
    models = [unwrapped(each) for each in (model.models if isinstance(model, FallbackModel) else [model])]
    try:
        with override_allow_model_requests(True):
            await gateway.call(stage="features", service_id="S1", user_prompt="ROLES: []", output_type=Answer)
    except ModelCallError as exc:
        return exc, gateway
    finally:
        for each in models:
            assert isinstance(each, OpenAIResponsesModel)
            await each.client.close()  # its HTTP connections, before the server goes away
    return None, gateway


@pytest.mark.parametrize(
    ("fault", "systemic", "requests"),
    [
        ("401", "authentication", 1),
        ("403", "authentication", 1),
        ("quota", "quota", 1),  # a 429 with insufficient_quota: waiting will not help
        ("402", "quota", 1),
        ("500", None, 3),
        ("429", None, 3),
    ],
)
async def test_systemic_failures_are_marked(fault: str, systemic: str | None, requests: int) -> None:
    fallbacks = {"features": ["openai:gpt-5-nano"]}
    with FakeOpenAIServer(Behaviour(faults=lambda _number: fault)) as server:
        error, _ = await call(server.base_url, model_fallbacks=fallbacks if systemic else {})
    assert error is not None
    assert error.systemic == systemic
    assert len(server.chat_requests()) == requests  # auth and quota: neither retried nor fallen back
    assert "\n" not in error.message
    assert KEY not in str(error)


async def test_a_rate_limited_request_is_retried_past_its_attempts_within_a_time_bound() -> None:
    # Shards sharing a key race at each reset of the provider's window: a 429 says "wait", so a
    # request goes on after its 3 attempts while the waits add up to less than rate_limited_for.
    five_429s = Behaviour(faults=["429"] * 5)
    with FakeOpenAIServer(five_429s) as server:
        window = {"attempts": 3, "max_wait": 0.05, "rate_limited_for": 5}
        error, _ = await call(server.base_url, transport_retries=window)
    assert error is None
    assert len(server.chat_requests()) == 6
    always = Behaviour(faults=lambda _number: "429")
    with FakeOpenAIServer(always) as server:
        window = {"attempts": 3, "max_wait": 0.05, "rate_limited_for": 0.5}
        error, _ = await call(server.base_url, transport_retries=window)
    assert error is not None
    assert 3 < len(server.chat_requests()) < 100  # bounded by the time waited, not by the attempts


async def test_connection_refused_is_systemic() -> None:
    port = unused_port()
    error, gateway = await call(f"http://127.0.0.1:{port}/v1")
    assert error is not None
    assert error.systemic == "connection"
    assert error.kind == "model_error"
    assert error.message == f"model call failed: cannot connect to 127.0.0.1:{port}: connection refused"
    assert gateway.transport_retries == 2


async def test_unknown_host_is_systemic() -> None:
    error, _ = await call(
        "http://no-such-host.invalid/v1", transport_retries={"attempts": 1, "max_wait": 0.05}
    )
    assert error is not None
    assert error.systemic == "connection"
    assert "cannot resolve host no-such-host.invalid" in error.message


async def test_a_stall_once_is_retried() -> None:
    with FakeOpenAIServer(Behaviour(faults=["stall"], stall_seconds=10)) as server:
        error, _ = await call(server.base_url, request_timeout=0.3)
    assert error is None
    assert [request.fault for request in server.chat_requests()] == ["stall", "ok"]


def test_openai_base_url_alone_points_at_a_local_server(tmp_path: Path) -> None:
    """The providers' usual variable is enough: no key, no SA_BASE_URL, the compatible-server profile."""
    with FakeOpenAIServer(Behaviour(llama=True)) as server:
        environment = {key: value for key, value in os.environ.items() if key != "OPENAI_API_KEY"}
        environment.update({**FAST_RETRIES, "OPENAI_BASE_URL": server.base_url})
        output = tmp_path / "out.jsonl"
        result = subprocess.run(
            [sys.executable, "-m", "service_ambitions", "run", "--input-file", str(SAMPLES), "--output-file",
             str(output), "--model", "openai-chat:qwen", "--max-services", "1", "--cache-mode", "off"],
            env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(records(output)) == 1
    assert records(output)[0]["provenance"]["descriptions"] == "openai-chat:qwen"
