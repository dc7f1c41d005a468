"""Engine metrics: stage durations and the plateau task counters."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from logfire.testing import CaptureLogfire
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, ToolCallPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from service_ambitions.context import build_context
from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.engine.engine import ProcessingEngine
from service_ambitions.engine.pipeline import ServicePipeline
from service_ambitions.errors import PipelineError, StageTimeout
from service_ambitions.llm.offline import OfflineModel
from service_ambitions.observability.metrics import RunMetrics
from service_ambitions.settings import StageTimeouts, load_settings
from tests.conftest import service, write_jsonl

MODEL = "test:engine-metrics"


def collected(capfire: CaptureLogfire) -> dict[str, list[dict[str, Any]]]:
    """Data points by metric name."""
    metrics: list[dict[str, Any]] = capfire.get_collected_metrics()  # type: ignore[no-untyped-call]
    return {metric["name"]: metric["data"]["data_points"] for metric in metrics}


def by(points: list[dict[str, Any]], *labels: str, value: str = "value") -> dict[tuple[str, ...], Any]:
    """Values (or histogram counts) keyed by the given labels, summed over the other labels."""
    totals: Counter[tuple[str, ...]] = Counter()
    for point in points:
        totals[tuple(point["attributes"].get(label, "") for label in labels)] += point[value]
    return dict(totals)


def prompt_of(messages: list[ModelMessage]) -> str:
    parts = [part for message in messages if isinstance(message, ModelRequest) for part in message.parts]
    return "".join(
        part.content for part in parts if isinstance(part, UserPromptPart) and isinstance(part.content, str)
    )


async def test_a_run_records_stages_and_plateaus(isolated: Path, capfire: CaptureLogfire) -> None:
    write_jsonl(isolated / "in.jsonl", [service("A"), service("B")])
    settings = load_settings(None, {"model": "offline", "cache_dir": isolated / "c"})
    context = build_context(settings)
    try:
        report = await ProcessingEngine(context).run(isolated / "in.jsonl", isolated / "out.jsonl")
    finally:
        context.close()
    assert report.services_ok == 2
    points = collected(capfire)
    # Per service: one descriptions stage, and per plateau (5) one features and one mapping stage; the
    # mapping stage of a plateau covers its calls to every catalogue (3), so it is counted once.
    durations = points["sa_engine_stage_duration_seconds"]
    assert by(durations, "stage", "outcome", value="count") == {
        ("descriptions", "ok"): 2,
        ("features", "ok"): 10,
        ("mapping", "ok"): 10,
    }
    assert all(point["sum"] >= 0 for point in durations)
    assert by(points["sa_engine_plateaus_submitted_total"]) == {(): 10}
    assert by(points["sa_engine_plateaus_completed_total"], "outcome") == {("ok",): 10}
    assert by(points["sa_engine_plateaus_inflight"]) == {(): 0}  # up while running, back to 0


async def test_remap_counts_its_plateaus(isolated: Path, capfire: CaptureLogfire) -> None:
    settings = load_settings(None, {"model": "offline", "cache_mode": "off"})
    context = build_context(settings)
    metrics = RunMetrics()
    try:
        pipeline = ServicePipeline(context.content, context.gateway, plateau_concurrency=2, metrics=metrics)
        result = await pipeline.run(ServiceInput.model_validate(service("A")))
        assert result.record is not None
        await pipeline.remap(result.record)
    finally:
        context.close()
    points = collected(capfire)
    assert by(points["sa_engine_plateaus_submitted_total"]) == {(): 10}  # 5 run, then 5 re-mapped
    assert by(points["sa_engine_plateaus_completed_total"], "outcome") == {("ok",): 10}
    stages = by(points["sa_engine_stage_duration_seconds"], "stage", value="count")
    assert stages == {("descriptions",): 1, ("features",): 5, ("mapping",): 10}


async def test_timeout_error_and_cancelled_outcomes(isolated: Path, capfire: CaptureLogfire) -> None:
    offline = OfflineModel()

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompt = prompt_of(messages)
        service_id = "A" if '"service_id":"A"' in prompt else "B"
        mapping, features = "\nCATALOGUE: " in prompt, "\nROLES: " in prompt
        if service_id == "A" and features:
            await asyncio.sleep(60)  # every features stage of A overruns its budget
        if service_id == "B" and features and "\nPLATEAU: 2 " in prompt:
            await asyncio.sleep(60)  # cancelled when plateau 1 of B fails
        if service_id == "B" and mapping and "\nPLATEAU: 1 " in prompt:
            return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"features": "none"})])
        response: ModelResponse = await offline.function(messages, info)  # type: ignore[misc]
        return response

    settings = load_settings(
        None, {"model": MODEL, "cache_mode": "off", "stage_timeouts": {"features": 0.2, "mapping": 60}}
    )
    context = build_context(settings, models={MODEL: FunctionModel(answer, model_name="scripted")})
    pipeline = ServicePipeline(
        context.content,
        context.gateway,
        plateau_concurrency=2,
        stage_timeouts=settings.stage_timeouts,
    )
    try:
        with pytest.raises(StageTimeout):
            await pipeline.run(ServiceInput.model_validate(service("A")))
        # (each collection holds what was recorded since the one before)
        first = collected(capfire)
        pipeline.timeouts = StageTimeouts(features=60, mapping=60)
        with pytest.raises(PipelineError) as caught:
            await pipeline.run(ServiceInput.model_validate(service("B")))
        assert not isinstance(caught.value, StageTimeout)
        second = collected(capfire)
    finally:
        context.close()
    # A: a features stage overran its budget; its plateau failed with it.
    durations = {
        (point["attributes"]["stage"], point["attributes"]["outcome"]): point
        for point in first["sa_engine_stage_duration_seconds"]
    }
    timed_out = durations[("features", "timeout")]
    assert timed_out["sum"] >= 0.2 * timed_out["count"]  # the whole budget was spent
    assert ("error",) in by(first["sa_engine_plateaus_completed_total"], "outcome")
    # B: plateau 1's mapping failed (re-asks included: one stage), and plateau 2's features were cancelled.
    stages = by(second["sa_engine_stage_duration_seconds"], "stage", "outcome", value="count")
    assert stages[("mapping", "error")] == 1
    assert stages[("features", "cancelled")] == 1
    completed = by(second["sa_engine_plateaus_completed_total"], "outcome")
    assert completed == {("error",): 1, ("cancelled",): 1}
    assert by(second["sa_engine_plateaus_submitted_total"]) == {(): 2}
    for points in (first, second):
        assert by(points["sa_engine_plateaus_inflight"]) == {(): 0}
