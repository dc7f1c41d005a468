"""Fallback models: on transient errors only, and provenance names the model that answered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai.exceptions import ModelAuthenticationError, ModelHTTPError, ModelRateLimitError
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, ToolCallPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from service_ambitions.context import build_context
from service_ambitions.engine.engine import ProcessingEngine
from service_ambitions.errors import ModelCallError
from service_ambitions.llm.gateway import Gateway
from service_ambitions.llm.offline import OfflineModel
from service_ambitions.settings import load_settings
from service_ambitions.store.cache import ResponseCache
from tests.conftest import service, write_jsonl


class Answer(BaseModel):
    value: int


def answering(name: str, calls: list[str]) -> FunctionModel:
    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(name)
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"value": 1})], model_name=name)

    return FunctionModel(answer, model_name=name)


def failing(error: Exception, calls: list[str]) -> FunctionModel:
    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append("primary")
        raise error

    return FunctionModel(answer, model_name="primary")


def gateway(tmp: Path, primary: FunctionModel, backup: FunctionModel) -> Gateway:
    settings = load_settings(
        None, {"model": "test:primary", "cache_mode": "off", "model_fallbacks": {"features": ["test:backup"]}}
    )
    return Gateway(
        settings,
        system_prompt="S",
        cache=ResponseCache(tmp / "c", mode="off"),
        models={"test:primary": primary, "test:backup": backup},
    )


async def test_fallback_on_429(tmp_path: Path) -> None:
    calls: list[str] = []
    limited = ModelHTTPError.for_category(
        ModelRateLimitError, status_code=429, model_name="primary", body={"error": "rate limited"}
    )
    gw = gateway(tmp_path, failing(limited, calls), answering("backup", calls))
    result = await gw.call(stage="features", service_id="S", user_prompt="hi", output_type=Answer)
    assert calls == ["primary", "backup"]
    assert result.model == "backup"


async def test_no_fallback_on_auth_error(tmp_path: Path) -> None:
    calls: list[str] = []
    denied = ModelHTTPError.for_category(
        ModelAuthenticationError, status_code=401, model_name="primary", body={"error": "invalid api key"}
    )
    gw = gateway(tmp_path, failing(denied, calls), answering("backup", calls))
    with pytest.raises(ModelCallError) as caught:
        await gw.call(stage="features", service_id="S", user_prompt="hi", output_type=Answer)
    assert calls == ["primary"]  # failed fast, the backup was never asked
    assert caught.value.kind == "model_error"
    assert caught.value.stage == "features"
    assert "ModelAuthenticationError" in str(caught.value)


async def test_model_attribution(isolated: Path) -> None:
    offline = OfflineModel()

    def plateau_of(messages: list[ModelMessage]) -> str:
        parts = [part for message in messages if isinstance(message, ModelRequest) for part in message.parts]
        text = "".join(str(part.content) for part in parts if isinstance(part, UserPromptPart))
        return next((line.split()[1] for line in text.splitlines() if line.startswith("PLATEAU: ")), "")

    async def primary(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if plateau_of(messages) == "2":
            raise ModelHTTPError.for_category(ModelRateLimitError, status_code=429, model_name="primary")
        response: ModelResponse = await offline.function(messages, info)  # type: ignore[misc]
        return ModelResponse(parts=response.parts, model_name="primary")

    async def backup(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        response: ModelResponse = await offline.function(messages, info)  # type: ignore[misc]
        return ModelResponse(parts=response.parts, model_name="backup")

    write_jsonl(isolated / "in.jsonl", [service("A")])
    settings = load_settings(
        None,
        {
            "model": "test:primary",
            "cache_mode": "off",
            "model_fallbacks": {"test:primary": ["test:backup"]},
        },
    )
    context = build_context(
        settings,
        models={
            "test:primary": FunctionModel(primary, model_name="primary"),
            "test:backup": FunctionModel(backup, model_name="backup"),
        },
    )
    try:
        report = await ProcessingEngine(context).run(isolated / "in.jsonl", isolated / "out.jsonl")
    finally:
        context.close()
    assert report.services_ok == 1
    record = json.loads((isolated / "out.jsonl").read_text().splitlines()[1])
    provenance: dict[str, Any] = record["provenance"]
    assert provenance["descriptions"] == "primary"
    second = provenance["plateaus"][1]
    assert second["features"] == "backup"
    assert set(second["mapping"].values()) == {"backup"}
    first = provenance["plateaus"][0]
    assert first["features"] == "primary"
    assert set(first["mapping"].values()) == {"primary"}
