"""The :class:`ProcessingEngine`: streams services through the pipeline, bounded, in input order.

Capacity (``concurrency``) is acquired *before* a service task is spawned and released only when
its record has been written, so at most ``concurrency`` services are in flight or waiting in the
reorder buffer: memory stays O(concurrency) whatever the input size.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from service_ambitions.content.render import service_json
from service_ambitions.context import RunContext, settings_digest
from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.domain.output import Header
from service_ambitions.engine.estimate import estimate_service_cost
from service_ambitions.engine.pipeline import ServicePipeline, ServiceResult
from service_ambitions.engine.problems import Problem
from service_ambitions.engine.watchdog import Watchdog
from service_ambitions.errors import PipelineError, QuarantineKind
from service_ambitions.llm.cost import Reservation
from service_ambitions.llm.providers import parse_model_id
from service_ambitions.store.cache import cache_key
from service_ambitions.store.inputs import BadLine, InputLine, file_digest, read_services
from service_ambitions.store.quarantine import QuarantineStore, quarantine_dir_for
from service_ambitions.store.resume import prepare_resume
from service_ambitions.store.writer import OutputWriter

__all__ = ["ProcessingEngine", "RunReport", "run_id_for"]

log = logging.getLogger("service_ambitions.engine")

RECORD_FORMAT = 1
"""Bumped whenever assembly changes what a record holds for the same answers."""


@dataclass
class RunReport:
    """What a run did; the CLI turns it into the summary and the exit code."""

    run_id: str
    output: Path
    services_ok: int = 0
    services_failed: int = 0
    input_invalid: int = 0
    problems: int = 0
    quarantined: int = 0
    unknown_ids: int = 0
    wall_seconds: float = 0.0
    failed_ids: list[str] = field(default_factory=list)
    resumed: int = 0
    skipped: int = 0
    from_cache: int = 0
    interrupted: bool = False
    budget_exhausted: bool = False
    budget_warned: bool = False
    repaired_bytes: int = 0


def run_id_for(input_digest: str, settings_digest: str, seed: int) -> str:
    """A run id derived from what the run is made of (reruns share it)."""
    basis = f"{input_digest}|{settings_digest}|{seed}"
    return hashlib.sha256(basis.encode()).hexdigest()[:16]


class BudgetStop(Exception):
    """Admission stopped: the budget would be crossed."""


@dataclass
class _Slot:
    result: ServiceResult | None = None
    done: bool = False


class ProcessingEngine:
    """Runs a batch: input file in, output file (+ quarantine) out."""

    def __init__(self, context: RunContext) -> None:
        self.context = context
        self.report: RunReport | None = None
        self.on_progress: Callable[[RunReport], None] | None = None
        self._pre_estimate: Decimal | None = None
        self.settings = context.settings
        self.watchdog = Watchdog(loop_budget=max(self.settings.stage_timeouts.model_dump().values()))
        self.pipeline = ServicePipeline(
            context.content,
            context.gateway,
            plateau_concurrency=self.settings.plateau_concurrency,
            stage_timeouts=self.settings.stage_timeouts,
            watchdog=self.watchdog,
        )
        self._record_basis = {
            "kind": "record",
            "record_format": RECORD_FORMAT,
            "tool": context.tool_version,
            "git": context.git_sha,
            "settings": settings_digest(self.settings, context.content),
            "models": {
                stage: parse_model_id(model).cache_identity
                for stage, model in self.settings.stage_models().items()
            },
        }

    def _record_key(self, service: ServiceInput) -> str:
        return cache_key({**self._record_basis, "service": service_json(service)})

    def _cached_result(self, key: str) -> ServiceResult | None:
        payload = self.context.cache.get(key)
        if payload is None:
            return None
        try:
            # The entry passed its SHA-256 check, so the line is byte for byte the validated record
            # this run's settings produced before; it is written back without re-validation.
            return ServiceResult(
                record=None,
                line=str(payload["line"]).encode("utf-8"),
                problems=[Problem(**problem) for problem in payload["problems"]],
                unknown_ids=int(payload["unknown_ids"]),
            )
        except (KeyError, TypeError, ValueError):
            self.context.cache.stats.corrupt += 1
            return None

    def _store_result(self, key: str, result: ServiceResult) -> None:
        self.context.cache.put(
            key,
            {
                "line": result.line_bytes().decode("utf-8"),
                "problems": [dataclasses.asdict(problem) for problem in result.problems],
                "unknown_ids": result.unknown_ids,
            },
        )

    def header(self, input_digest: str, run_id: str) -> Header:
        """The header line of the output."""
        settings = self.settings
        return Header(
            tool_version=self.context.tool_version,
            git_sha=self.context.git_sha,
            run_id=run_id,
            seed=settings.seed,
            models=settings.stage_models(),
            synthetic=self.context.synthetic,
            mapping_sets=[catalogue.field for catalogue in self.context.content.catalogues],
            catalogue_hash=self.context.content.catalogue_hash,
            input_digest=input_digest,
            settings={**settings.output_affecting(), "content_digest": self.context.content.digest},
        )

    async def run(
        self, input_path: Path, output_path: Path, *, max_services: int | None = None, resume: bool = False
    ) -> RunReport:
        """Process every service of ``input_path`` into ``output_path``.

        Args:
            input_path: The services file.
            output_path: The output file (its quarantine lives beside it).
            max_services: Process at most this many services (in this run).
            resume: Continue an existing output instead of replacing it.

        Raises:
            InputError: The input file cannot be read.
            ResumeRefused: ``resume`` and the output was made from other input, settings or schema.
        """
        started = time.perf_counter()
        input_digest = file_digest(input_path)
        run_id = run_id_for(
            input_digest, settings_digest(self.settings, self.context.content), self.settings.seed
        )
        report = RunReport(run_id=run_id, output=output_path)
        header = self.header(input_digest, run_id)
        quarantine = QuarantineStore(quarantine_dir_for(output_path), redact=self.context.redactor.redact_obj)
        writer = OutputWriter(output_path)
        skip: set[str] = set()
        state = prepare_resume(output_path, header, quarantine) if resume else None
        if state is not None and state.header is not None:
            skip = state.skip
            report.resumed = len(state.done)
            report.repaired_bytes = state.repaired_bytes
            writer.open_append()
            log.info(
                "resuming %s: %d record(s) done, %d quarantined service(s) skipped",
                output_path,
                len(state.done),
                len(state.quarantined),
            )
        else:
            quarantine.reset()
            writer.start(header)
        self.watchdog.start(asyncio.get_running_loop())
        self.report = report
        try:
            await self._process(input_path, writer, quarantine, report, max_services, skip)
        except asyncio.CancelledError:
            # Interrupted: cancelled services were not written (a resume redoes them, from the cache
            # where their calls finished); every finished record was written before we got here.
            report.interrupted = True
            raise
        finally:
            self.watchdog.stop()
            writer.close()
            report.quarantined = quarantine.count()
            report.wall_seconds = time.perf_counter() - started
        return report

    async def _process(
        self,
        input_path: Path,
        writer: OutputWriter,
        quarantine: QuarantineStore,
        report: RunReport,
        max_services: int | None,
        skip: set[str],
    ) -> None:
        capacity = asyncio.Semaphore(self.settings.concurrency)
        slots: dict[int, _Slot] = {}
        next_to_write = 0
        scheduled = 0

        def drain() -> None:
            nonlocal next_to_write
            while (slot := slots.get(next_to_write)) is not None and slot.done:
                del slots[next_to_write]
                next_to_write += 1
                if slot.result is not None:
                    writer.write_line(slot.result.line_bytes())
                capacity.release()
                if self.on_progress is not None:
                    self.on_progress(report)

        async def one(index: int, item: InputLine, hold: Reservation | None) -> None:
            slot = slots[index]
            try:
                slot.result = await self._service(item, quarantine, report)
            finally:
                if hold is not None:
                    spent = self.context.gateway.ledger.by_service.get(item.service.service_id)
                    hold.settle(spent.usd if spent is not None else None)
                slot.done = True
                drain()

        async with asyncio.TaskGroup() as group:
            for item in read_services(input_path, redact=self.context.redactor.redact_obj):
                if isinstance(item, BadLine):
                    self._bad_line(item, quarantine, report)
                    continue
                if item.service.service_id in skip:
                    report.skipped += 1
                    continue
                if max_services is not None and scheduled >= max_services:
                    break
                await capacity.acquire()
                try:
                    hold = self._admit_within_budget(item.service.service_id, report)
                except BudgetStop:
                    capacity.release()
                    break
                slots[scheduled] = _Slot()
                group.create_task(one(scheduled, item, hold))
                scheduled += 1

    def _admit_within_budget(self, service_id: str, report: RunReport) -> Reservation | None:
        """Hold this service's estimated cost; stop admitting when the budget would be crossed.

        Raises:
            BudgetStop: ``budget_mode: enforce`` and spent + in flight + this estimate exceeds it.
        """
        budget = self.settings.run_budget_usd
        if budget is None:
            return None
        ledger = self.context.gateway.ledger
        estimate = self._service_estimate(report)
        if ledger.would_exceed(Decimal(str(budget)), estimate):
            if self.settings.budget_mode == "enforce":
                report.budget_exhausted = True
                log.error(
                    "budget: spent $%s with $%s in flight; the next service (~$%s) would pass "
                    "the $%s budget; finishing what is in flight and stopping (resumable)",
                    ledger.total_usd.quantize(Decimal("0.0001")),
                    ledger.in_flight_usd.quantize(Decimal("0.0001")),
                    estimate.quantize(Decimal("0.0001")),
                    budget,
                )
                raise BudgetStop
            if not report.budget_warned:
                report.budget_warned = True
                log.warning("budget: the run is about to pass its $%s budget (budget_mode: warn)", budget)
        return ledger.reserve(estimate, service_id=service_id)

    def _service_estimate(self, report: RunReport) -> Decimal:
        """Expected cost of one service: the average so far, or a pre-run estimate from prompt sizes."""
        ledger = self.context.gateway.ledger
        finished = report.services_ok + report.services_failed
        if finished and ledger.total_usd > 0:
            return ledger.total_usd / finished
        if self._pre_estimate is None:
            self._pre_estimate = estimate_service_cost(self.context)
        return self._pre_estimate

    def _bad_line(self, item: BadLine, quarantine: QuarantineStore, report: RunReport) -> None:
        report.input_invalid += 1
        log.warning("input line %d skipped: %s", item.line, item.reason)
        quarantine.add(
            service_id=item.service_id,
            stage="input",
            kind=QuarantineKind.INPUT_INVALID,
            error=f"line {item.line}: {item.reason}",
            payload=item.raw[:10_000],
            run_id=report.run_id,
            line=item.line,
        )

    async def _service(
        self, item: InputLine, quarantine: QuarantineStore, report: RunReport
    ) -> ServiceResult | None:
        service_id = item.service.service_id
        key = self._record_key(item.service)
        try:
            result = self._cached_result(key)
            if result is None:
                result = await self.pipeline.run(item.service)
                self._store_result(key, result)
            else:
                report.from_cache += 1
        except PipelineError as exc:
            metrics = self.context.gateway.metrics
            metrics.add(metrics.services, 1, {"outcome": "failed"})
            report.services_failed += 1
            report.failed_ids.append(service_id)
            log.error("service %s failed at %s: %s", service_id, exc.stage, exc.message)
            quarantine.add(
                service_id=service_id,
                stage=exc.stage or "pipeline",
                kind=exc.kind,
                error=str(exc),
                payload=exc.payload,
                run_id=report.run_id,
                line=item.line,
            )
            return None
        report.unknown_ids += result.unknown_ids
        fatal = self._record_problems(service_id, item.line, result.problems, quarantine, report)
        if fatal:
            metrics = self.context.gateway.metrics
            metrics.add(metrics.services, 1, {"outcome": "failed"})
            report.services_failed += 1
            report.failed_ids.append(service_id)
            log.error("service %s failed under --strict: %s", service_id, fatal[0].error)
            quarantine.add(
                service_id=service_id,
                stage=fatal[0].stage,
                kind=fatal[0].kind,
                error=f"--strict: {len(fatal)} problem(s); first: {fatal[0].error}",
                payload={"problems": [problem.error for problem in fatal]},
                run_id=report.run_id,
                line=item.line,
            )
            return None
        report.services_ok += 1
        metrics = self.context.gateway.metrics
        metrics.add(metrics.services, 1, {"outcome": "ok"})
        if result.unknown_ids:
            metrics.add(metrics.unknown_ids, result.unknown_ids)
        log.info("service %s finished", service_id, extra={"service_id": service_id})
        return result

    def _record_problems(
        self,
        service_id: str,
        line: int,
        problems: list[Problem],
        quarantine: QuarantineStore,
        report: RunReport,
    ) -> list[Problem]:
        """Log and quarantine problems; return those that fail the service under --strict."""
        fatal: list[Problem] = []
        for problem in problems:
            if problem.warning_only:
                log.warning("service %s: %s", service_id, problem.error)
                continue
            report.problems += 1
            log.warning("service %s (%s): %s", service_id, problem.kind, problem.error)
            quarantine.add(
                service_id=service_id,
                stage=problem.stage,
                kind=problem.kind,
                error=problem.error,
                payload=problem.payload,
                run_id=report.run_id,
                line=line,
            )
            if self.settings.strict:
                fatal.append(problem)
        return fatal
