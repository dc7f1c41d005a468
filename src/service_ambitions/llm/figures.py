"""What a run's model calls did, as one immutable snapshot (``Gateway.figures()``).

The engine puts it in its :class:`~service_ambitions.engine.engine.RunReport`, and the CLI renders the
report: nothing outside ``llm/`` reads the gateway's counters, ledger or samples.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service_ambitions.llm.cost import CostLedger, SpendTotals
    from service_ambitions.store.cache import CacheStats

__all__ = ["CallFigures", "Progress", "percentiles", "prompt_cache_data"]


@dataclass(frozen=True)
class Progress:
    """The figures a progress display shows, cheap to take after every service."""

    calls: int
    cost_usd: Decimal


@dataclass(frozen=True)
class CallFigures:
    """Counts, usage, cost, latencies, cache and limiter figures of a run's model calls."""

    calls: int = 0
    """Gateway calls (cache hits included)."""
    requests: int = 0
    """Requests sent to models: first answers, re-asks, fallback attempts and transport retries."""
    output_reasks: int = 0
    fallbacks: int = 0
    transport_retries: int = 0
    failures: int = 0
    by_stage: Mapping[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Mapping[str, Any] = field(default_factory=dict)
    """The cost ledger's snapshot (totals, by model, stage and service, prices)."""
    prompt_cache: Mapping[str, Any] = field(default_factory=dict)
    rate_limits: Mapping[str, Any] = field(default_factory=dict)
    """The limits in force per model, and where each came from."""
    latency_seconds: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    """p50 and p95 of answered requests, per stage."""
    cache: Mapping[str, int] = field(default_factory=dict)
    """The answer cache's counters: hits, misses, corrupt, expired, writes, evictions."""


def percentiles(samples: list[float]) -> dict[str, float | None]:
    """p50 and p95 of latency samples (rounded to 0.1 ms)."""
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


def cache_counters(stats: CacheStats) -> dict[str, int]:
    """The answer cache's counters of this run."""
    return {
        "hits": stats.hits,
        "misses": stats.misses,
        "corrupt": stats.corrupt,
        "expired": stats.expired,
        "writes": stats.writes,
        "evictions": stats.evictions,
    }
