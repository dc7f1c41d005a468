"""Metrics, spans and the Prometheus endpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from logfire.testing import CaptureLogfire

from service_ambitions.context import build_context
from service_ambitions.engine.engine import ProcessingEngine
from service_ambitions.observability.metrics import METRIC_NAMES
from service_ambitions.settings import load_settings
from tests.conftest import SAMPLES, service, write_jsonl


async def small_run(tmp: Path, **overrides: Any) -> None:
    write_jsonl(tmp / "in.jsonl", [service("A"), service("B"), "{not json"])
    settings = load_settings(
        None,
        {"model": "offline", "offline": {"usd_per_million_tokens": 1.0}, "cache_dir": tmp / "c", **overrides},
    )
    context = build_context(settings)
    try:
        await ProcessingEngine(context).run(tmp / "in.jsonl", tmp / "out.jsonl")
    finally:
        context.close()


async def test_metric_names(isolated: Path, capfire: CaptureLogfire) -> None:
    await small_run(isolated, models_rate_limits={"offline": {"rpm": 6000, "tpm": 9_000_000}})
    metrics: list[dict[str, Any]] = capfire.get_collected_metrics()  # type: ignore[no-untyped-call]
    collected = {metric["name"]: metric for metric in metrics}
    expected = set(METRIC_NAMES) - {"sa_mapping_unknown_ids_total"}  # none dropped in this run
    limits = collected["sa_llm_rate_limit"]["data"]["data_points"]
    assert {
        (point["attributes"]["limit"], point["value"], point["attributes"]["source"]) for point in limits
    } == {
        ("rpm", 6000, "configured"),
        ("tpm", 9_000_000, "configured"),
    }
    assert expected <= set(collected)
    submitted = collected["sa_llm_queue_submitted_total"]["data"]["data_points"]
    assert sum(point["value"] for point in submitted) == 42
    inflight = collected["sa_llm_queue_inflight"]["data"]["data_points"]
    assert all(point["value"] == 0 for point in inflight)  # calls in flight, back to 0 at the end
    durations = collected["sa_llm_request_duration_seconds"]["data"]["data_points"]
    assert {point["attributes"]["outcome"] for point in durations} == {"ok"}
    services = collected["sa_engine_services_total"]["data"]["data_points"]
    assert {point["attributes"]["outcome"]: point["value"] for point in services} == {"ok": 2}


async def test_span_attributes(isolated: Path, capfire: CaptureLogfire) -> None:
    await small_run(isolated)
    spans = [
        span for span in capfire.exporter.exported_spans_as_dict() if span["name"] == "sa_llm_queue.submit"
    ]
    assert len(spans) == 42
    for span in spans:
        attributes = span["attributes"]
        assert attributes["stage"] in {"descriptions", "features", "mapping"}
        assert attributes["model_name"] == "offline"
        assert attributes["service_id"] in {"A", "B"}
        assert attributes["request_id"].startswith(attributes["service_id"] + ":" + attributes["stage"])
    assert len({span["attributes"]["request_id"] for span in spans}) == 42


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_metrics_endpoint(isolated: Path) -> None:
    lines = SAMPLES.read_text(encoding="utf-8").splitlines()
    (isolated / "services.jsonl").write_text("\n".join(lines * 2).replace('"SVC-', '"X-', len(lines)) + "\n")
    port = free_port()
    env = {**os.environ, "SA_OFFLINE__LATENCY_MS": "40", "SA_CACHE_MODE": "off"}
    command = [sys.executable, "-m", "service_ambitions", "run", "--metrics-port", str(port), "-q"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    body = ""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and 'stage="mapping"' not in body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    body = response.read().decode()
            except OSError:
                time.sleep(0.1)
    finally:
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "sa_llm_queue_submitted" in body
    assert "sa_llm_queue_inflight" in body
    assert 'stage="features"' in body
    assert "sa_llm_request_duration_seconds_bucket" in body
