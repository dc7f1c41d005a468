"""``run --mode batch``: the pipeline in waves over provider batch APIs.

A wave is one pass of the ordinary engine over the input. Every call is answered from the output's
collected batch results (``llm/batching.py``) or queued; a service with a queued call is *deferred*
(no record, no quarantine) and finished by a later pass. Between passes the queue is submitted as
provider batches and the runner waits for them (or, with ``--no-wait``, exits and a later
``--resume`` collects them). The stages' dependencies make the waves: descriptions for every pending
service, then the features of every plateau, then the mappings; a re-ask or a resubmitted request
joins the next wave.

The pass that defers nothing is an ordinary complete run: its records are written in input order and
published as the output, byte for byte what a live run with the same answers writes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

from service_ambitions.context import RunContext
from service_ambitions.engine.engine import ProcessingEngine, RunReport
from service_ambitions.engine.estimate import output_allowance
from service_ambitions.llm._names import is_offline
from service_ambitions.llm.batching import BatchCoordinator, WaveStats
from service_ambitions.llm.cost import estimate_usd

__all__ = ["WaveOutcome", "WaveRunner"]

log = logging.getLogger("service_ambitions.batches")

_CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class WaveOutcome:
    """How a batch-mode invocation ended."""

    report: RunReport | None
    """The last pass's report (None when the invocation only waited for or collected batches)."""
    finished: bool
    """The last pass deferred nothing: the output is complete (as a live run's would be)."""
    running_batches: int
    """Batches still running at the provider (``--no-wait``)."""
    submitted_now: int
    """Requests this invocation submitted."""
    stats: WaveStats
    passes: int
    requests_by_status: dict[str, int]


class WaveRunner:
    """Runs passes of the engine and waves of batches until the output is complete."""

    def __init__(
        self,
        context: RunContext,
        coordinator: BatchCoordinator,
        engine: ProcessingEngine,
        *,
        make_engine: Callable[[], ProcessingEngine],
        wait: bool,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        """Create the runner.

        Args:
            context: The run's collaborators (its gateway already uses ``coordinator``).
            coordinator: The output's batches.
            engine: The engine of the first pass (its progress callback is kept for later passes).
            make_engine: Builds the engine of each later pass.
            wait: Wait for submitted batches; False submits and returns (``--no-wait``).
            sleep: How to wait between checks (tests pass a fake).
        """
        self.context = context
        self.coordinator = coordinator
        self.engine = engine
        self.make_engine = make_engine
        self.wait = wait
        self.sleep = sleep
        self.settings = context.settings

    async def run(
        self, input_path: Path, output_path: Path, *, max_services: int | None = None
    ) -> WaveOutcome:
        """Pass, submit, wait, collect, until a pass defers nothing (or the budget or ``--no-wait`` stops)."""
        coordinator = self.coordinator
        await coordinator.reconcile()
        passes = 0
        report: RunReport | None = None
        while True:
            running = await self._collect()
            if running:
                return self._outcome(report, finished=False, running=running, passes=passes)
            if passes:
                self.engine = self._next_engine()
            report = await self.engine.run(input_path, output_path, max_services=max_services)
            passes += 1
            if not report.deferred or report.budget_exhausted or report.systemic is not None:
                return self._outcome(report, finished=not report.deferred, running=0, passes=passes)
            if not coordinator.queued:  # every deferral waits on a recorded batch: a bug if reached
                raise RuntimeError(f"{report.deferred} service(s) deferred with nothing queued or running")
            if not self._within_budget():
                stopped = replace(report, budget_exhausted=True)
                return self._outcome(stopped, finished=False, running=0, passes=passes)
            log.info(
                "wave %d: %d service(s) wait for %d request(s); submitting",
                coordinator.wave,
                report.deferred,
                coordinator.queued,
            )
            await coordinator.submit()
            if not self.wait:
                return self._outcome(
                    report,
                    finished=False,
                    running=len(coordinator.state.batches(pending_only=True)),
                    passes=passes,
                )

    async def _collect(self) -> int:
        """Check the running batches until they end (or once, with ``--no-wait``); how many still run."""
        delay = self.settings.batch_poll_interval
        running = await self.coordinator.poll()
        while running and self.wait:
            log.info("%d batch(es) running; next check in %.0f s", running, delay)
            await self.sleep(delay)
            delay = min(delay * 1.5, self.settings.batch_max_poll_interval)
            running = await self.coordinator.poll()
        return running

    def _next_engine(self) -> ProcessingEngine:
        engine = self.make_engine()
        engine.on_progress = self.engine.on_progress
        return engine

    def _within_budget(self) -> bool:
        """Check the next wave against ``run_budget_usd`` (batch prices); False stops before submitting."""
        budget = self.settings.run_budget_usd
        if budget is None:
            return True
        wave = self.coordinator.estimate_queue(self._estimate)
        spent = self.coordinator.state.submitted_usd()
        if wave is None:
            log.warning("budget: a model of the next wave is unpriced; its cost is not counted")
            wave = Decimal(0)
        limit = Decimal(str(budget))
        if spent + wave <= limit:
            self.coordinator.state.add_submitted_usd(wave)
            return True
        if self.settings.budget_mode == "warn":
            log.warning(
                "budget: the next wave (~$%s) passes the $%s budget (budget_mode: warn)", wave, budget
            )
            self.coordinator.state.add_submitted_usd(wave)
            return True
        log.error(
            "budget: $%s submitted so far; the next wave (~$%s at batch prices) would pass the $%s budget: "
            "not submitted (raise run_budget_usd and run again with --resume)",
            spent.quantize(Decimal("0.0001")),
            wave.quantize(Decimal("0.0001")),
            budget,
        )
        return False

    def _estimate(self, model_id: str, stage: str, body: str) -> Decimal | None:
        """Expected batch-price cost of one queued request, from its encoded size."""
        if is_offline(model_id):
            return Decimal(0)
        return estimate_usd(
            model_id,
            len(body) // _CHARS_PER_TOKEN,
            output_allowance(self.settings, stage),
            processing="batch",
        )

    def _outcome(self, report: RunReport | None, *, finished: bool, running: int, passes: int) -> WaveOutcome:
        return WaveOutcome(
            report=report,
            finished=finished,
            running_batches=running,
            submitted_now=self.coordinator.stats.requests_submitted,
            stats=self.coordinator.stats,
            passes=passes,
            requests_by_status=self.coordinator.state.counts(),
        )
