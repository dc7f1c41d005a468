"""Metric instruments of a run (OpenTelemetry through logfire; ``sa_*`` names).

Instruments are created once per run and handed down; with logfire unconfigured they cost next to
nothing. Telemetry never breaks a run: every recording goes through :meth:`RunMetrics.safely`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, ParamSpec

import logfire

__all__ = ["METRIC_NAMES", "RunMetrics"]

log = logging.getLogger("service_ambitions.metrics")
_P = ParamSpec("_P")

METRIC_NAMES = (
    "sa_llm_queue_depth",
    "sa_llm_queue_inflight",
    "sa_llm_queue_submitted_total",
    "sa_llm_queue_completed_total",
    "sa_llm_queue_wait_seconds",
    "sa_llm_request_duration_seconds",
    "sa_llm_tokens_total",
    "sa_llm_cached_tokens_total",
    "sa_llm_cost_usd_total",
    "sa_llm_rate_limit",
    "sa_cache_requests_total",
    "sa_engine_services_total",
    "sa_engine_stage_duration_seconds",
    "sa_engine_plateaus_inflight",
    "sa_engine_plateaus_submitted_total",
    "sa_engine_plateaus_completed_total",
    "sa_mapping_unknown_ids_total",
)


class RunMetrics:
    """The instruments named in ``METRIC_NAMES``."""

    def __init__(self, instance: logfire.Logfire | None = None) -> None:
        lf = instance or logfire.DEFAULT_LOGFIRE_INSTANCE
        self.logfire = lf
        self.queue_depth = lf.metric_up_down_counter(
            "sa_llm_queue_depth", unit="1", description="Model calls waiting for admission."
        )
        self.queue_inflight = lf.metric_up_down_counter(
            "sa_llm_queue_inflight", unit="1", description="Model calls in flight (admitted, not finished)."
        )
        self.queue_submitted = lf.metric_counter(
            "sa_llm_queue_submitted_total", unit="1", description="Model calls submitted to the gateway."
        )
        self.queue_completed = lf.metric_counter(
            "sa_llm_queue_completed_total", unit="1", description="Model calls finished (any outcome)."
        )
        self.queue_wait = lf.metric_histogram(
            "sa_llm_queue_wait_seconds", unit="s", description="Time from submission to admission."
        )
        self.request_duration = lf.metric_histogram(
            "sa_llm_request_duration_seconds", unit="s", description="Model request latency."
        )
        self.tokens = lf.metric_counter("sa_llm_tokens_total", unit="1", description="Tokens used.")
        self.cached_tokens = lf.metric_counter(
            "sa_llm_cached_tokens_total",
            unit="1",
            description="Input tokens served from the provider's prompt cache (part of the input tokens).",
        )
        self.cost = lf.metric_counter("sa_llm_cost_usd_total", unit="USD", description="Priced cost.")
        self.cache_requests = lf.metric_counter(
            "sa_cache_requests_total", unit="1", description="Cache lookups by result (hit, miss, corrupt)."
        )
        self.services = lf.metric_counter(
            "sa_engine_services_total", unit="1", description="Services finished, by outcome."
        )
        self.stage_duration = lf.metric_histogram(
            "sa_engine_stage_duration_seconds",
            unit="s",
            description="One stage of one service, re-asks included (mapping: all of a plateau's sets).",
        )
        self.plateaus_inflight = lf.metric_up_down_counter(
            "sa_engine_plateaus_inflight", unit="1", description="Plateau tasks running (each holds a slot)."
        )
        self.plateaus_submitted = lf.metric_counter(
            "sa_engine_plateaus_submitted_total", unit="1", description="Plateau tasks started."
        )
        self.plateaus_completed = lf.metric_counter(
            "sa_engine_plateaus_completed_total", unit="1", description="Plateau tasks finished, by outcome."
        )
        self.unknown_ids = lf.metric_counter(
            "sa_mapping_unknown_ids_total",
            unit="1",
            description="Mapping contributions naming unknown items.",
        )

    def observe_rate_limits(self, read: Callable[[], Mapping[str, Mapping[str, object]]]) -> None:
        """Export ``sa_llm_rate_limit`` (labels model_name, limit=rpm|tpm, source) from ``read()``.

        ``read`` returns, per model, the limits in force and where they came from (the gateway's
        ``limits_in_force``); it is called whenever metrics are collected.
        """
        from opentelemetry.metrics import CallbackOptions, Observation  # noqa: PLC0415

        def collect(_options: CallbackOptions) -> Iterable[Observation]:
            observations = []
            with self.safely():
                for model_name, limits in read().items():
                    for kind in ("rpm", "tpm"):
                        value = limits.get(kind)
                        if isinstance(value, int):
                            source = str(limits.get("source"))
                            attributes = {"model_name": model_name, "limit": kind, "source": source}
                            observations.append(Observation(value, attributes))
            return observations

        with self.safely():
            self.logfire.metric_gauge_callback(
                "sa_llm_rate_limit",
                [collect],
                unit="1/min",
                description="Rate limit in force per model (requests or tokens per minute) and its source.",
            )

    def plateau_task(self, task: Callable[_P, Awaitable[None]]) -> Callable[_P, Coroutine[Any, Any, None]]:
        """Wrap a plateau task so that it is counted in the ``sa_engine_plateaus_*`` metrics.

        Started: submitted and in flight; finished: no longer in flight, completed with ``outcome``
        ``ok``, ``error`` (it raised) or ``cancelled`` (a sibling failed, or the run was interrupted).
        """

        @functools.wraps(task)
        async def counted(*args: _P.args, **kwargs: _P.kwargs) -> None:
            self.add(self.plateaus_submitted, 1)
            self.add(self.plateaus_inflight, 1)
            outcome = "error"
            try:
                await task(*args, **kwargs)
                outcome = "ok"
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                self.add(self.plateaus_inflight, -1)
                self.add(self.plateaus_completed, 1, {"outcome": outcome})

        return counted

    @contextlib.contextmanager
    def safely(self) -> Iterator[None]:
        """Swallow and log telemetry failures: metrics must never fail a run."""
        try:
            yield
        except Exception:  # telemetry backends raise anything; the run goes on
            log.debug("telemetry failure ignored", exc_info=True)

    def add(self, instrument: Any, amount: float, attributes: Mapping[str, str] | None = None) -> None:
        """Add to a counter safely."""
        with self.safely():
            instrument.add(amount, attributes=dict(attributes or {}))

    def record(self, instrument: Any, value: float, attributes: Mapping[str, str] | None = None) -> None:
        """Record a histogram value safely."""
        with self.safely():
            instrument.record(value, attributes=dict(attributes or {}))
