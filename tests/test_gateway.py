"""The gateway: bounded output re-asks, cache keys and cache integrity on the call path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from service_ambitions.errors import StageError
from service_ambitions.llm.gateway import Gateway
from service_ambitions.settings import load_settings
from service_ambitions.store.cache import ResponseCache


class Answer(BaseModel):
    value: int


def flaky(bad_answers: int, seen: list[list[ModelMessage]]) -> FunctionModel:
    """Answers ``value: "oops"`` ``bad_answers`` times, then a valid answer."""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(messages)
        value: Any = "oops" if len(seen) <= bad_answers else 7
        return ModelResponse(
            parts=[ToolCallPart(info.output_tools[0].name, {"value": value})], model_name="flaky"
        )

    return FunctionModel(answer, model_name="flaky")


def gateway(tmp: Path, model: FunctionModel, mode: str = "read", **overrides: Any) -> Gateway:
    settings = load_settings(
        None, {"model": "test:flaky", "cache_dir": tmp / "cache", "cache_mode": mode, **overrides}
    )
    cache = ResponseCache(settings.cache_dir, mode=settings.cache_mode)
    return Gateway(settings, system_prompt="SYSTEM", cache=cache, models={"test:flaky": model})


async def test_output_reask_then_success(isolated: Path) -> None:
    seen: list[list[ModelMessage]] = []
    gw = gateway(isolated, flaky(1, seen), output_retries=2)
    result = await gw.call(stage="features", service_id="S", user_prompt="hi", output_type=Answer)
    assert result.output.value == 7
    assert gw.stats.model_requests == 2
    assert gw.stats.output_reasks == 1
    retry = seen[1][-1]
    assert isinstance(retry, ModelRequest)
    part = retry.parts[0]
    assert isinstance(part, ToolReturnPart)
    assert part.outcome == "retried"
    assert "value" in json.dumps(part.content, default=str)


async def test_reasks_are_bounded(isolated: Path) -> None:
    seen: list[list[ModelMessage]] = []
    gw = gateway(isolated, flaky(10, seen), output_retries=2)
    with pytest.raises(StageError) as caught:
        await gw.call(stage="mapping", service_id="S", user_prompt="hi", output_type=Answer)
    assert len(seen) == 3
    assert caught.value.service_id == "S"
    assert caught.value.stage == "mapping"
    assert caught.value.attempt == 3
    assert "value" in str(caught.value)


async def test_cache_hit_costs_nothing_and_key_covers_inputs(isolated: Path) -> None:
    seen: list[list[ModelMessage]] = []
    model = flaky(0, seen)
    first = gateway(isolated, model)
    await first.call(stage="features", service_id="S", user_prompt="hi", output_type=Answer)
    again = gateway(isolated, model)
    hit = await again.call(stage="features", service_id="S", user_prompt="hi", output_type=Answer)
    assert hit.cached
    assert hit.model == "flaky"
    assert len(seen) == 1
    base = again.key("features", Answer, "hi")
    assert again.key("mapping", Answer, "hi") != base
    assert again.key("features", Answer, "hi!") != base
    changed_settings = gateway(isolated, model, temperature=0.5)
    assert changed_settings.key("features", Answer, "hi") != base
    other_system = Gateway(
        again.settings, system_prompt="OTHER", cache=again.cache, models={"test:flaky": model}
    )
    assert other_system.key("features", Answer, "hi") != base

    class Wider(BaseModel):
        value: int
        note: str = ""

    assert again.key("features", Wider, "hi") != base


async def test_corrupt_cache_entry_is_never_served(isolated: Path) -> None:
    seen: list[list[ModelMessage]] = []
    model = flaky(0, seen)
    gw = gateway(isolated, model)
    await gw.call(stage="features", service_id="S", user_prompt="hi", output_type=Answer)
    key = gw.key("features", Answer, "hi")
    path = gw.cache.path_for(key)
    path.write_bytes(path.read_bytes().replace(b"7", b"8"))
    fresh = gateway(isolated, model)
    result = await fresh.call(stage="features", service_id="S", user_prompt="hi", output_type=Answer)
    assert result.output.value == 7
    assert not result.cached
    assert fresh.cache.stats.corrupt == 1
    assert len(seen) == 2


@pytest.mark.parametrize(
    ("mode", "reads", "writes"), [("off", False, False), ("refresh", False, True), ("write", False, True)]
)
async def test_cache_modes(isolated: Path, mode: str, reads: bool, writes: bool) -> None:
    seen: list[list[ModelMessage]] = []
    model = flaky(0, seen)
    await gateway(isolated, model).call(
        stage="features", service_id="S", user_prompt="hi", output_type=Answer
    )
    gw = gateway(isolated, model, mode=mode)
    result = await gw.call(stage="features", service_id="S", user_prompt="other", output_type=Answer)
    assert result.cached is False
    again = await gateway(isolated, model).call(
        stage="features", service_id="S", user_prompt="other", output_type=Answer
    )
    assert again.cached is writes
    assert gw.cache.stats.hits == int(reads)
