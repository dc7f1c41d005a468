"""Stage budgets and the watchdog."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from service_ambitions.context import build_context
from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.engine.engine import ProcessingEngine
from service_ambitions.engine.pipeline import ServicePipeline
from service_ambitions.engine.watchdog import Watchdog
from service_ambitions.errors import StageTimeout
from service_ambitions.llm.offline import OfflineModel
from service_ambitions.settings import StageTimeouts, load_settings
from service_ambitions.store.quarantine import QuarantineStore, quarantine_dir_for
from tests.conftest import service, write_jsonl

MODEL = "test:slow"


def prompt_of(messages: list[ModelMessage]) -> str:
    parts = [part for message in messages if isinstance(message, ModelRequest) for part in message.parts]
    return "".join(
        part.content for part in parts if isinstance(part, UserPromptPart) and isinstance(part.content, str)
    )


def is_features(messages: list[ModelMessage]) -> bool:
    return "\nROLES: " in prompt_of(messages)


async def test_stage_timeout_cancels(isolated: Path) -> None:
    cancelled: list[str] = []
    offline = OfflineModel()

    async def slow(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        # The features answer for service A never comes: the stage budget must cancel it.
        if is_features(messages) and '"service_id":"A"' in prompt_of(messages):
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append("A")
                raise
        response: ModelResponse = await offline.function(messages, info)  # type: ignore[misc]
        return response

    write_jsonl(isolated / "in.jsonl", [service("A"), service("B")])
    settings = load_settings(None, {"model": MODEL, "cache_mode": "off", "stage_timeouts": {"features": 0.3}})
    context = build_context(settings, models={MODEL: FunctionModel(slow, model_name="slow")})
    try:
        report = await ProcessingEngine(context).run(isolated / "in.jsonl", isolated / "out.jsonl")
    finally:
        context.close()
    assert report.failed_ids == ("A",)
    assert report.services_ok == 1
    assert set(cancelled) == {"A"}  # the model calls were really cancelled, not left running
    entries = list(QuarantineStore(quarantine_dir_for(isolated / "out.jsonl")).entries())
    assert [(entry.service_id, entry.kind, entry.stage) for entry in entries] == [
        ("A", "timeout", "features")
    ]
    assert "0.3 s budget" in entries[0].error


async def test_watchdog_flags_swallowed_cancel(isolated: Path, caplog: pytest.LogCaptureFixture) -> None:
    offline = OfflineModel()

    async def stubborn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if is_features(messages):
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                await asyncio.sleep(0.4)  # swallows the cancellation and keeps going
        response: ModelResponse = await offline.function(messages, info)  # type: ignore[misc]
        return response

    settings = load_settings(None, {"model": MODEL, "cache_mode": "off"})
    context = build_context(settings, models={MODEL: FunctionModel(stubborn, model_name="stubborn")})
    watchdog = Watchdog(interval=0.02, grace=0.1, loop_budget=30)
    pipeline = ServicePipeline(
        context.content,
        context.gateway,
        plateau_concurrency=1,
        stage_timeouts=StageTimeouts(features=0.1),
        watchdog=watchdog,
    )
    watchdog.start(asyncio.get_running_loop())
    caplog.set_level(logging.ERROR, logger="service_ambitions.watchdog")
    try:
        with pytest.raises(StageTimeout):
            await pipeline.run(ServiceInput.model_validate(service("A")))
    finally:
        watchdog.stop()
        context.close()
    flagged = [report for report in watchdog.reports if report.kind == "ignores_cancel"]
    assert flagged
    assert flagged[0].stage == "features"
    assert "stubborn" in flagged[0].stack
    assert "after it was cancelled" in caplog.text


def test_watchdog_warns_near_budget(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    watchdog = Watchdog(clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="service_ambitions.watchdog")
    with watchdog.track("mapping", "S1", 10.0):
        now[0] = 109.0
        assert watchdog.check() == []
        now[0] = 109.6
        reports = watchdog.check()
        assert [report.kind for report in reports] == ["near_budget"]
        assert watchdog.check() == []  # warned once
    assert "has used 9.6 s of its 10 s budget" in caplog.text


def test_watchdog_reports_blocked_loop() -> None:
    now = [0.0]
    watchdog = Watchdog(clock=lambda: now[0], loop_budget=5.0)
    loop = asyncio.new_event_loop()
    try:
        watchdog._loop = loop
        watchdog._beat = 1.0
        now[0] = 7.0
        reports = watchdog.check()
    finally:
        loop.close()
    assert [report.kind for report in reports] == ["loop_blocked"]
