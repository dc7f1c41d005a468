"""Failure injection: every service ends written or quarantined, deterministically per seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service_ambitions.context import build_context
from service_ambitions.engine.engine import ProcessingEngine
from service_ambitions.llm.chaos import ChaosModel, FailureSpec, parse_failure_spec
from service_ambitions.settings import load_settings
from service_ambitions.store.quarantine import QuarantineStore, quarantine_dir_for
from tests.conftest import read_jsonl, service, write_jsonl


async def chaos_run(work: Path, count: int, spec: str) -> dict[str, Any]:
    work.mkdir()
    write_jsonl(work / "in.jsonl", [service(f"S{i:03d}", name=f"Service {i}") for i in range(count)])
    settings = load_settings(
        None,
        {
            "model": "offline",
            "model_fallbacks": {"offline": ["offline:backup"]},
            "inject_failures": spec,
            "cache_mode": "off",
            "concurrency": 16,
        },
    )
    context = build_context(settings)
    try:
        report = await ProcessingEngine(context).run(work / "in.jsonl", work / "out.jsonl")
    finally:
        context.close()
    written = [record["service"]["service_id"] for record in read_jsonl(work / "out.jsonl")[1:]]
    quarantined = {
        entry.service_id for entry in QuarantineStore(quarantine_dir_for(work / "out.jsonl")).entries()
    }
    models = context.gateway._built.values()
    injected: dict[str, int] = {}
    for model in models:
        assert isinstance(model, ChaosModel)
        for kind, number in model.injected.items():
            injected[kind] = injected.get(kind, 0) + number
    stats = context.gateway.stats
    return {
        "ok": report.services_ok,
        "failed": sorted(report.failed_ids),
        "written": written,
        "quarantined": quarantined,
        "requests": stats.model_requests,
        "reasks": stats.output_reasks,
        "max_attempts": stats.max_attempts,
        "injected": injected,
        "output": (work / "out.jsonl").read_bytes(),
    }


async def test_inject_failures_deterministic(isolated: Path) -> None:
    count = 200
    first = await chaos_run(isolated / "a", count, "p=0.05,seed=11")
    second = await chaos_run(isolated / "b", count, "p=0.05,seed=11")
    for key in ("ok", "failed", "requests", "reasks", "max_attempts", "injected", "output"):
        assert first[key] == second[key], key
    ids = {f"S{i:03d}" for i in range(count)}
    assert set(first["written"]) | set(first["failed"]) == ids  # every service: output or quarantined
    assert set(first["failed"]) <= first["quarantined"]
    assert not set(first["written"]) & set(first["failed"])
    assert first["max_attempts"] <= 3  # 1 + output_retries (2); each attempt tries 2 models at most
    assert sum(first["injected"].values()) > 100  # ~5 % of ~4,200 calls, each kind represented
    assert set(first["injected"]) == {"429", "500", "timeout", "malformed"}
    assert all(number > 0 for number in first["injected"].values())
    assert first["reasks"] > 0
    other = await chaos_run(isolated / "c", count, "p=0.05,seed=12")
    assert other["injected"] != first["injected"]


def test_parse_failure_spec() -> None:
    assert parse_failure_spec("p=0.05") == FailureSpec(0.05)
    assert parse_failure_spec("p=0.1,kinds=429,500,seed=3") == FailureSpec(0.1, ("429", "500"), 3)
    for bad in ("kinds=429", "p=2", "p=0.1,kinds=418", "p=0.1,colour=red", "0.1"):
        with pytest.raises(ValueError):
            parse_failure_spec(bad)
