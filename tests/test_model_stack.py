"""Every model, fallbacks included, has its own stack: its own provider settings, limits and cap."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic_ai.exceptions import ModelHTTPError, ModelServerError
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models import Model, override_allow_model_requests
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.models.wrapper import WrapperModel

from service_ambitions.errors import ModelCallError
from service_ambitions.llm.gateway import Gateway
from service_ambitions.settings import load_settings
from service_ambitions.store.cache import ResponseCache
from service_ambitions.testing.openai_server import Behaviour, FakeOpenAIServer


def unwrapped(model: Model) -> Model:
    while isinstance(model, WrapperModel):
        model = model.wrapped
    return model


class Answer(BaseModel):
    value: int


async def unavailable(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    raise ModelHTTPError.for_category(
        ModelServerError, status_code=503, model_name="gemini", body={"error": "unavailable"}
    )


async def test_an_openai_fallback_of_a_google_primary_sends_no_sdk_retries(tmp_path: Path) -> None:
    """The fallback's SDK retries are off (our transport retries), whatever the primary's provider takes."""
    settings = load_settings(
        None,
        {
            "model": "google:gemini-2.5-flash",
            "model_fallbacks": {"google:gemini-2.5-flash": ["openai-chat:gpt-5-mini"]},
            "cache_mode": "off",
            "openai_api_key": "sk-test-stack-0123456789",
            "transport_retries": {"attempts": 1, "max_wait": 0.05},
        },
    )
    with FakeOpenAIServer(Behaviour(faults=lambda _number: "500")) as server:
        settings = settings.model_copy(update={"base_url": server.base_url})
        gateway = Gateway(
            settings,
            system_prompt="S",
            cache=ResponseCache(tmp_path / "c", mode="off"),
            models={"google:gemini-2.5-flash": FunctionModel(unavailable, model_name="gemini")},
        )
        with override_allow_model_requests(True):
            try:
                await gateway.call(
                    stage="features", service_id="S1", user_prompt="ROLES: []", output_type=Answer
                )
            except ModelCallError as exc:
                error = exc
            finally:
                fallback = unwrapped(gateway._model("openai-chat:gpt-5-mini"))
                assert isinstance(fallback, OpenAIChatModel)
                await fallback.client.close()  # its connections, before the server goes away
        requests = len(server.chat_requests())
    assert "on all 2 models" in error.message
    # One attempt allowed by our transport and none by the SDK: with the SDK's own retries (2 by
    # default) the server would have seen 3 requests.
    assert requests == 1


def test_provider_settings_are_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-stack-0123456789")
    monkeypatch.setenv("GOOGLE_API_KEY", "google-test-key")
    settings = load_settings(None, {"model": "offline", "reasoning": {"effort": "low"}})
    gateway = Gateway(settings, system_prompt="S", cache=ResponseCache(Path("c"), mode="off"))
    openai = gateway._model("openai:gpt-5-mini")
    google = gateway._model("google:gemini-2.5-flash")
    assert openai.settings is not None
    assert openai.settings.get("max_retries") == 0
    assert openai.settings.get("openai_reasoning_effort") == "low"
    assert "max_retries" not in (google.settings or {})
    assert "openai_reasoning_effort" not in (google.settings or {})
