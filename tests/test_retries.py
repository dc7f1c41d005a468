"""Transport retries through pydantic-ai's retry transport, over an httpx2 MockTransport."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydantic import BaseModel
from pydantic_ai.models import override_allow_model_requests
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from service_ambitions.errors import ModelCallError
from service_ambitions.llm.gateway import Gateway
from service_ambitions.llm.transport import retrying_client
from service_ambitions.settings import load_settings
from service_ambitions.store.cache import ResponseCache


class Answer(BaseModel):
    value: int


def completion(arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-5-mini",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "final_result", "arguments": json.dumps(arguments)},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def gateway_over(
    tmp: Path, responses: list[httpx2.Response], sleeps: list[float], **overrides: Any
) -> Gateway:
    settings = load_settings(None, {"model": "openai:gpt-5-mini", "cache_mode": "off", **overrides})
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return responses[min(len(seen), len(responses)) - 1]

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = retrying_client(settings, sleep=fake_sleep, wrapped=httpx2.MockTransport(handler))
    model = OpenAIChatModel(
        "gpt-5-mini", provider=OpenAIProvider(api_key="sk-test-not-real", http_client=client)
    )
    gateway = Gateway(
        settings,
        system_prompt="S",
        cache=ResponseCache(tmp / "c", mode="off"),
        models={"openai:gpt-5-mini": model},
    )
    gateway.seen = seen  # type: ignore[attr-defined]
    return gateway


async def test_retry_after_honoured(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sleeps: list[float] = []
    responses = [
        httpx2.Response(429, headers={"retry-after": "3"}, json={"error": {"message": "slow down"}}),
        httpx2.Response(503, headers={"retry-after-ms": "1500"}, json={"error": {"message": "busy"}}),
        httpx2.Response(200, json=completion({"value": 7})),
    ]
    gateway = gateway_over(tmp_path, responses, sleeps)
    caplog.set_level(logging.WARNING, logger="service_ambitions.transport")
    with override_allow_model_requests(True):
        result = await gateway.call(stage="features", service_id="S1", user_prompt="hi", output_type=Answer)
    assert result.output.value == 7
    assert sleeps == [3.0, 1.5]  # Retry-After, then retry-after-ms
    assert len(gateway.seen) == 3  # type: ignore[attr-defined]
    assert gateway.stats.model_requests == 1  # one logical request; the retries were below it
    assert gateway.stats.output_reasks == 0
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0].startswith("transport retry 1 after HTTP 429")
    assert all("transport retry" in message for message in messages)


async def test_retries_are_bounded_and_auth_is_not_retried(tmp_path: Path) -> None:
    sleeps: list[float] = []
    busy = httpx2.Response(500, json={"error": {"message": "down"}})
    gateway = gateway_over(tmp_path, [busy] * 10, sleeps, transport_retries={"attempts": 3, "max_wait": 5})
    with override_allow_model_requests(True), pytest.raises(ModelCallError):
        await gateway.call(stage="features", service_id="S1", user_prompt="hi", output_type=Answer)
    assert len(gateway.seen) == 3  # type: ignore[attr-defined]
    assert len(sleeps) == 2
    assert all(wait <= 5 for wait in sleeps)

    denied = httpx2.Response(401, json={"error": {"message": "bad key", "type": "invalid_request_error"}})
    sleeps.clear()
    gateway = gateway_over(tmp_path, [denied], sleeps)
    with override_allow_model_requests(True), pytest.raises(ModelCallError) as caught:
        await gateway.call(stage="features", service_id="S1", user_prompt="hi", output_type=Answer)
    assert len(gateway.seen) == 1  # type: ignore[attr-defined]
    assert sleeps == []
    assert "401" in str(caught.value) or "Authentication" in str(caught.value)
