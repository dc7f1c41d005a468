"""The run summary: one data structure, shown on stderr and optionally written as JSON."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service_ambitions.store._atomic import atomic_write_bytes

if TYPE_CHECKING:
    from service_ambitions.context import RunContext
    from service_ambitions.engine.engine import RunReport
    from service_ambitions.llm.cost import CostLedger, SpendTotals

__all__ = ["prompt_cache_data", "render_summary", "summary_data", "write_summary"]


def _percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p95": None}
    if len(samples) == 1:
        return {"p50": round(samples[0], 4), "p95": round(samples[0], 4)}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": round(cuts[49], 4), "p95": round(cuts[94], 4)}


def _cache_share(totals: SpendTotals) -> dict[str, Any]:
    prompt = totals.input_tokens
    return {
        "prompt_tokens": prompt,
        "cached_tokens": totals.cache_read_tokens,
        "cache_write_tokens": totals.cache_write_tokens,
        "hit_rate": round(totals.cache_read_tokens / prompt, 4) if prompt else None,
    }


def prompt_cache_data(ledger: CostLedger) -> dict[str, Any]:
    """Prompt tokens of the model requests and the share the provider served from its prompt cache."""
    return {
        **_cache_share(ledger.total),
        "by_stage": {stage: _cache_share(totals) for stage, totals in sorted(ledger.by_stage.items())},
    }


def summary_data(context: RunContext, report: RunReport) -> dict[str, Any]:
    """Everything the summary shows, JSON-serialisable."""
    gateway = context.gateway
    cache = context.cache.stats
    stats = gateway.stats
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
            "calls": stats.calls,
            "requests": stats.model_requests,
            "output_reasks": stats.output_reasks,
            "fallbacks": stats.fallbacks,
            "transport_retries": gateway.transport_retries,
            "failures": stats.failures,
            "by_stage": dict(stats.by_stage),
        },
        "cache": {
            "hits": cache.hits,
            "misses": cache.misses,
            "corrupt": cache.corrupt,
            "expired": cache.expired,
            "writes": cache.writes,
            "evictions": cache.evictions,
        },
        "tokens": {"input": stats.input_tokens, "output": stats.output_tokens},
        "cost": gateway.ledger.snapshot(),
        "prompt_cache": prompt_cache_data(gateway.ledger),
        "rate_limits": gateway.limits_in_force(),
        "latency_seconds": {
            stage: _percentiles(samples) for stage, samples in sorted(gateway.durations.items())
        },
        "budget": {
            "usd": context.settings.run_budget_usd,
            "mode": context.settings.budget_mode,
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
    lines.append(f"  wall time: {data['wall_seconds']:.2f} s")
    return "\n".join(lines)


def write_summary(path: Path, data: dict[str, Any]) -> None:
    """Write the summary JSON atomically."""
    atomic_write_bytes(path, json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8") + b"\n")
