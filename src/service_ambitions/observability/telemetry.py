"""Logfire set-up for the CLI and the optional Prometheus ``/metrics`` endpoint on 127.0.0.1.

logfire is local by default: it sends nothing unless ``LOGFIRE_TOKEN`` is set
(``send_to_logfire='if-token-present'``); our own handler writes the console logs on stderr. Any
failure here is logged and ignored: telemetry never fails a run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["telemetry"]

log = logging.getLogger("service_ambitions.telemetry")


_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _histogram_views() -> list[Any]:
    """Explicit buckets for our histograms: Prometheus cannot read logfire's default exponential ones."""
    from opentelemetry.sdk.metrics import Histogram  # noqa: PLC0415
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View  # noqa: PLC0415

    return [
        View(
            instrument_type=Histogram,
            instrument_name="sa_*",
            aggregation=ExplicitBucketHistogramAggregation(boundaries=_SECONDS_BUCKETS),
        )
    ]


@contextlib.contextmanager
def telemetry(*, version: str, metrics_port: int | None = None) -> Iterator[int | None]:
    """Configure logfire for the duration of a command; yields the bound metrics port (or None)."""
    server: Any = None
    bound: int | None = None
    readers: list[Any] = []
    shutdown: Callable[[], object] | None = None
    try:
        import logfire  # noqa: PLC0415

        if metrics_port is not None:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
            from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

            registry = CollectorRegistry()
            readers.append(PrometheusMetricReader(registry=registry))
            server, _thread = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
            bound = int(server.server_port)
            log.info("metrics: serving Prometheus /metrics on http://127.0.0.1:%d/metrics", bound)
        instance = logfire.configure(
            send_to_logfire="if-token-present",
            console=False,
            service_name="service-ambitions",
            service_version=version,
            inspect_arguments=False,
            metrics=logfire.MetricsOptions(additional_readers=readers, views=_histogram_views())
            if readers
            else None,
        )
        shutdown = instance.force_flush
    except Exception as exc:  # telemetry must never stop a run
        log.warning("telemetry disabled: %s", exc)
    try:
        yield bound
    finally:
        with contextlib.suppress(Exception):
            if shutdown is not None:
                shutdown()
        if server is not None:
            with contextlib.suppress(Exception):
                server.shutdown()
                server.server_close()
