"""The run-wide request slots: at most ``llm_concurrency`` model requests in flight, with queue metrics.

A slot is the first step of admission, taken before a request goes to its stage's model: each model's
own cap (``ConcurrencyLimitedModel``) and its rate permit (``llm/admission.py``) are taken below it,
the permit last, immediately before each HTTP attempt, so a backlog waiting here never turns into a
burst of permits taken minutes earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import TYPE_CHECKING

import logfire

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from service_ambitions.llm.limiter import Clock
    from service_ambitions.observability.metrics import RunMetrics

__all__ = ["RequestSlots"]


class RequestSlots:
    """``llm_concurrency`` slots shared by every stage, service and model of a run."""

    def __init__(self, limit: int, metrics: RunMetrics, clock: Clock) -> None:
        """Slots for ``limit`` requests at once, recording queue metrics with ``clock``'s times."""
        self._semaphore = asyncio.Semaphore(limit)
        self.metrics = metrics
        self.clock = clock
        self._sequence = itertools.count(1)
        self.waiting = 0
        """Requests waiting for a slot."""
        self.in_flight = 0
        """Requests holding a slot."""

    @contextlib.asynccontextmanager
    async def admitted(self, *, stage: str, service_id: str, model_id: str) -> AsyncIterator[str]:
        """Wait for a slot under ``llm_concurrency``; yields the request id (``<service>:<stage>:<n>``).

        Rate permits are taken later, immediately before each HTTP attempt (``llm/admission.py``):
        slot first, permit last, so a backlog never turns into a burst.
        """
        request_id = f"{service_id}:{stage}:{next(self._sequence)}"
        attributes = {"stage": stage, "model_name": model_id}
        metrics = self.metrics
        with logfire.span(
            "sa_llm_queue.submit",
            stage=stage,
            model_name=model_id,
            service_id=service_id,
            request_id=request_id,
        ):
            metrics.add(metrics.queue_submitted, 1, attributes)
            metrics.add(metrics.queue_depth, 1, attributes)
            self.waiting += 1
            submitted = self.clock.now()
            waiting = True
            try:
                async with self._semaphore:
                    waiting = False
                    self.waiting -= 1
                    metrics.add(metrics.queue_depth, -1, attributes)
                    metrics.record(metrics.queue_wait, self.clock.now() - submitted, attributes)
                    metrics.add(metrics.queue_inflight, 1, attributes)
                    self.in_flight += 1
                    try:
                        yield request_id
                    finally:
                        self.in_flight -= 1
                        metrics.add(metrics.queue_inflight, -1, attributes)
                        metrics.add(metrics.queue_completed, 1, attributes)
            finally:
                if waiting:
                    self.waiting -= 1
                    metrics.add(metrics.queue_depth, -1, attributes)
