"""The run summary: one data structure, shown on stderr and optionally written as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service_ambitions.store._atomic import atomic_write_bytes

if TYPE_CHECKING:
    from service_ambitions.engine.engine import RunReport
    from service_ambitions.settings import Settings

__all__ = ["render_summary", "summary_data", "write_summary"]


def summary_data(settings: Settings, report: RunReport) -> dict[str, Any]:
    """Everything the summary shows, JSON-serialisable: the run report, rendered."""
    calls = report.calls
    return {
        "run_id": report.run_id,
        "output": str(report.output),
        "services": {
            "ok": report.services_ok,
            "failed": report.services_failed,
            "input_invalid": report.input_invalid,
            "from_cache": report.from_cache,
            "resumed_after": report.resumed,
            "skipped": report.skipped,
            "failed_ids": list(report.failed_ids),
        },
        "quarantined": report.quarantined,
        "unknown_ids_dropped": report.unknown_ids,
        "model_calls": {
            "calls": calls.calls,
            "requests": calls.requests,
            "output_reasks": calls.output_reasks,
            "fallbacks": calls.fallbacks,
            "transport_retries": calls.transport_retries,
            "failures": calls.failures,
            "by_stage": dict(calls.by_stage),
        },
        "cache": dict(calls.cache),
        "tokens": {"input": calls.input_tokens, "output": calls.output_tokens},
        "cost": dict(calls.cost),
        "prompt_cache": dict(calls.prompt_cache),
        "rate_limits": dict(calls.rate_limits),
        "latency_seconds": {stage: dict(values) for stage, values in calls.latency_seconds.items()},
        "budget": {
            "usd": settings.run_budget_usd,
            "mode": settings.budget_mode,
            "exhausted": report.budget_exhausted,
        },
        "interrupted": report.interrupted,
        "wall_seconds": round(report.wall_seconds, 3),
    }


def _money(value: Any) -> str:
    return "unpriced" if value is None else f"${float(value):.4f}"


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.1%}"


def _prompt_cache_line(data: dict[str, Any]) -> str | None:
    """``prompt cache: 93.8% of 2052821 prompt tokens cached (descriptions 86.0%, ...)``, or nothing."""
    cache = data.get("prompt_cache")
    cost = data["cost"]
    if not cache or (cost.get("calls", 0) <= cost.get("synthetic_calls", 0) and not cache["cached_tokens"]):
        return None  # no real provider answered (offline runs, everything from the answer cache)
    stages = ", ".join(f"{stage} {_percent(item['hit_rate'])}" for stage, item in cache["by_stage"].items())
    return (
        f"  prompt cache: {_percent(cache['hit_rate'])} of {cache['prompt_tokens']} prompt tokens cached"
        + (f" ({stages})" if stages else "")
    )


def _rate_limits_line(limits: dict[str, dict[str, Any]]) -> str | None:
    """``rate limits: openai:gpt-5-mini 500 rpm / 200000 tpm (provider), 2 x 429`` per model called."""
    parts = []
    for model, item in limits.items():
        figures = " / ".join(f"{item[kind]} {kind}" for kind in ("rpm", "tpm") if item.get(kind))
        throttled = f", {item['throttled_429']} x 429" if item.get("throttled_429") else ""
        parts.append(f"{model} {figures or 'none'} ({item.get('source')}{throttled})")
    return "  rate limits: " + "; ".join(parts) if parts else None


def render_summary(data: dict[str, Any]) -> str:
    """The one-screen text summary."""
    services = data["services"]
    calls = data["model_calls"]
    cache = data["cache"]
    cost = data["cost"]
    lines = [
        f"run {data['run_id']}: wrote {services['ok']} record(s) to {data['output']}"
        + (
            f" (resumed after {services['resumed_after']}; {services['skipped']} skipped)"
            if services["resumed_after"]
            else ""
        ),
        f"  services: {services['ok']} ok, {services['failed']} failed, "
        f"{services['input_invalid']} invalid input line(s)",
        f"  quarantined: {data['quarantined']} entr{'y' if data['quarantined'] == 1 else 'ies'}"
        + (f" ({data['unknown_ids_dropped']} unknown id(s) dropped)" if data["unknown_ids_dropped"] else ""),
        f"  records from cache: {services['from_cache']}; model calls: {calls['calls']} "
        f"({cache['hits'] - services['from_cache']} cache hit(s), {calls['requests']} request(s), "
        f"{calls['output_reasks']} output re-ask(s), {calls['transport_retries']} transport retr"
        f"{'y' if calls['transport_retries'] == 1 else 'ies'}, {calls['fallbacks']} fallback(s))",
        f"  tokens in {data['tokens']['input']}, out {data['tokens']['output']}; "
        f"cost {_money(cost.get('total_usd'))}"
        + (f" ({cost['unpriced_calls']} unpriced call(s))" if cost.get("unpriced_calls") else ""),
    ]
    cache_line = _prompt_cache_line(data)
    if cache_line:
        lines.append(cache_line)
    limits_line = _rate_limits_line(data.get("rate_limits") or {})
    if limits_line:
        lines.append(limits_line)
    by_model = cost.get("by_model") or {}
    if by_model:
        lines.append(
            "  cost by model: "
            + ", ".join(f"{model} {_money(item.get('usd'))}" for model, item in by_model.items())
        )
    latency = data["latency_seconds"]
    if latency:
        lines.append(
            "  latency p50/p95: "
            + ", ".join(f"{stage} {values['p50']}/{values['p95']} s" for stage, values in latency.items())
        )
    if cache["corrupt"]:
        lines.append(
            f"  cache: {cache['corrupt']} corrupt entr{'y' if cache['corrupt'] == 1 else 'ies'} purged"
        )
    if data["budget"]["exhausted"]:
        lines.append(
            f"  budget: ${data['budget']['usd']} reached; stopped admitting services (resume to continue)"
        )
    batches = data.get("batches")
    if batches and "passes" in batches:
        lines.append(
            f"  batches: {batches['requests_submitted']} request(s) submitted now in "
            f"{batches['batches_submitted']} batch(es) over {batches['waves_submitted']} wave(s) "
            f"({batches['resubmitted']} resubmitted, {batches['adopted']} adopted); "
            f"{batches['results_collected']} result(s) collected; {batches['passes']} pass(es); "
            f"record: {batches['state']}"
        )
    lines.append(f"  wall time: {data['wall_seconds']:.2f} s")
    return "\n".join(lines)


def write_summary(path: Path, data: dict[str, Any]) -> None:
    """Write the summary JSON atomically."""
    atomic_write_bytes(path, json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8") + b"\n")
