"""The :class:`ProcessingEngine`: streams a batch of jobs through the pipeline, bounded, in input order.

A run is a :class:`Batch`: a header and a stream of :class:`Job` items (and bad input lines). A job is
one service and the coroutine that makes its record: the whole pipeline for ``run``
(:meth:`ProcessingEngine._batch`), the mapping stage over an existing record for ``map``
(``engine/remap.py`` overrides ``_batch``). Everything else is shared: resume, bounded admission,
budget, record cache, reorder buffer, writer, quarantine, failure accounting and the report.

Capacity (``concurrency``) is acquired *before* a job's task is spawned and released only when
its record has been written, so at most ``concurrency`` jobs are in flight or waiting in the
reorder buffer: memory stays O(concurrency) whatever the input size.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import IO

from service_ambitions.content.render import service_json
from service_ambitions.context import RunContext
from service_ambitions.domain.output import Header
from service_ambitions.domain.shard import Shard
from service_ambitions.engine.answers import stage_digests
from service_ambitions.engine.batch import STDOUT, Batch, Job, RecordCache, StreamWriter, Writer, check_source
from service_ambitions.engine.estimate import estimate_service_cost
from service_ambitions.engine.identity import run_id_for, settings_digest
from service_ambitions.engine.pipeline import ServicePipeline, ServiceResult
from service_ambitions.engine.problems import Problem
from service_ambitions.engine.watchdog import Watchdog
from service_ambitions.errors import (
    BudgetExhausted,
    MappingError,
    ModelCallError,
    PipelineError,
    QuarantineKind,
    ServiceAmbitionsError,
    UsageError,
)
from service_ambitions.llm.cost import Reservation
from service_ambitions.llm.deferral import Deferred
from service_ambitions.llm.figures import CallFigures, Progress
from service_ambitions.store.inputs import BadLine, file_digest, read_services
from service_ambitions.store.quarantine import QuarantineStore, quarantine_dir_for
from service_ambitions.store.resume import prepare_resume
from service_ambitions.store.writer import OutputWriter, discard_partial, partial_path_for, publish_partial

__all__ = ["STDOUT", "Batch", "Job", "ProcessingEngine", "RunReport", "RunTally", "run_id_for"]

log = logging.getLogger("service_ambitions.engine")

SYSTEMIC_FAILURE_LIMIT = 3
"""Consecutive services failing the same systemic way (no connection, bad key, no quota) before the
run stops admitting: one clear message instead of thousands of identical failures."""


@dataclass
class RunTally:
    """What a run has done so far (the engine's counters while it runs; frozen into a RunReport)."""

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
    completed: bool = False
    """Every admitted service of the input was processed (no interrupt, budget or systemic stop)."""
    systemic: str | None = None
    """Why the run stopped early because every call failed alike (e.g. the server is unreachable)."""
    written_to: Path | None = None
    """Where the records are: the output, or ``<output>.partial`` when an earlier output was kept."""
    services_seen: int = 0
    skipped_failed: int = 0
    """Services a resume skipped because an earlier run quarantined them without a record."""
    deferred: int = 0
    """Services waiting for an answer from a provider batch (``--mode batch``): finished in a later wave."""

    def freeze(self, calls: CallFigures) -> RunReport:
        """The immutable report of the run, with the figures of its model calls."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        return RunReport(**{**values, "failed_ids": tuple(self.failed_ids)}, calls=calls)


@dataclass(frozen=True)
class RunReport:
    """What a run did, immutable: the CLI renders it into the summary and the exit code.

    The counts of :class:`RunTally`, plus the figures of the run's model calls (usage, cost, latencies,
    cache and limiter figures), so nothing outside ``llm/`` reads the gateway.
    """

    run_id: str
    output: Path
    services_ok: int = 0
    services_failed: int = 0
    input_invalid: int = 0
    problems: int = 0
    quarantined: int = 0
    unknown_ids: int = 0
    wall_seconds: float = 0.0
    failed_ids: tuple[str, ...] = ()
    resumed: int = 0
    skipped: int = 0
    from_cache: int = 0
    interrupted: bool = False
    budget_exhausted: bool = False
    budget_warned: bool = False
    repaired_bytes: int = 0
    completed: bool = False
    """Every admitted service of the input was processed (no interrupt, budget or systemic stop)."""
    systemic: str | None = None
    """Why the run stopped early because every call failed alike (e.g. the server is unreachable)."""
    written_to: Path | None = None
    """Where the records are: the output, or ``<output>.partial`` when an earlier output was kept."""
    services_seen: int = 0
    skipped_failed: int = 0
    """Services a resume skipped because an earlier run quarantined them without a record."""
    deferred: int = 0
    """Services waiting for an answer from a provider batch (``--mode batch``): finished in a later wave."""

    calls: CallFigures = field(default_factory=CallFigures)
    """What the run's model calls did (``Gateway.figures()``)."""

    @property
    def without_record(self) -> int:
        """Services of this output that have no record: failed now, or skipped as failed before."""
        return self.services_failed + self.skipped_failed


@dataclass
class _Slot:
    result: ServiceResult | None = None
    done: bool = False


class ProcessingEngine:
    """Runs a batch: input file in, output file (+ quarantine) out."""

    def __init__(
        self,
        context: RunContext,
        *,
        debug: bool = False,
        stream: IO[bytes] | None = None,
        shard: Shard | None = None,
    ) -> None:
        """Create the engine.

        Args:
            context: The run's collaborators.
            debug: Let unexpected errors inside a job raise instead of quarantining the job.
            stream: Where the records go when the output path is ``-`` (:data:`STDOUT`).
            shard: Process only the services this shard owns (``run --shard K/N``); the header says so.
        """
        self.context = context
        self.shard = shard
        self.debug = debug
        self.stream = stream
        self._systemic_streak: tuple[str, int, str] | None = None
        self.report: RunReport | None = None
        """The report of the last run, once it ended (however it ended)."""
        self.tally: RunTally | None = None
        """The counts of the run in progress."""
        self.on_progress: Callable[[RunTally, Progress], None] | None = None
        self._pre_estimate: Decimal | None = None
        self.settings = context.settings
        self.watchdog = Watchdog(loop_budget=max(self.settings.stage_timeouts.model_dump().values()))
        self.pipeline = ServicePipeline(
            context.content,
            context.gateway,
            plateau_concurrency=self.settings.plateau_concurrency,
            stage_timeouts=self.settings.stage_timeouts,
            watchdog=self.watchdog,
            metrics=context.metrics,
        )
        self.records = RecordCache(context)

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
            stage_digests=stage_digests(self.context.content, self.context.gateway),
        )

    def _batch(self, input_path: Path) -> Batch:
        """The batch of a services file: every service through the whole pipeline."""
        input_digest = file_digest(input_path)
        run_id = run_id_for(
            input_digest, settings_digest(self.settings, self.context.content), self.settings.seed
        )
        return Batch(header=self.header(input_digest, run_id), items=self._service_jobs(input_path))

    def _service_jobs(self, input_path: Path) -> Iterator[Job | BadLine]:
        for item in read_services(input_path, redact=self.context.redactor.redact_obj):
            if isinstance(item, BadLine):
                yield item
                continue
            yield Job(
                line=item.line,
                service_id=item.service.service_id,
                key_parts={"service": service_json(item.service)},
                work=partial(self.pipeline.run, item.service),
            )

    def _job_estimate(self) -> Decimal:
        """The pre-run cost estimate of one job (the first budget reservations use it)."""
        return estimate_service_cost(self.context)

    async def run(
        self, input_path: Path, output_path: Path, *, max_services: int | None = None, resume: bool = False
    ) -> RunReport:
        """Process every service of ``input_path`` into ``output_path``.

        Args:
            input_path: The services file (``map``'s :class:`~service_ambitions.engine.remap.RemapEngine`:
                the evolutions or features file whose records it maps).
            output_path: The output file (its quarantine lives beside it); ``-`` writes the records to the
                engine's ``stream`` (no partial file, no resume).
            max_services: Process at most this many services (in this run).
            resume: Continue an existing output instead of replacing it.

        Raises:
            InputError: The input file cannot be read.
            ResumeRefused: ``resume`` and the output was made from other input, settings or schema.
            UsageError: ``resume`` with ``-`` as the output.
        """
        started = time.perf_counter()
        batch = self._batch(input_path)
        if self.shard is not None:
            batch = _sharded(batch, self.shard)
        report = RunTally(run_id=batch.header.run_id, output=output_path)
        writer, target, quarantine, skip = self._open_output(batch.header, output_path, report, resume=resume)
        self.watchdog.start(asyncio.get_running_loop())
        self.tally = report
        try:
            await self._process(batch.items, writer, quarantine, report, max_services, skip)
        except asyncio.CancelledError:
            # Interrupted: cancelled services were not written (a resume redoes them, from the cache
            # where their calls finished); every finished record was written before we got here.
            report.interrupted = True
            raise
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        finally:
            self.watchdog.stop()
            try:
                writer.close()
            finally:
                report.quarantined = quarantine.count()
                report.wall_seconds = time.perf_counter() - started
                report.written_to = self._settle(target, output_path, report)
                self.report = report.freeze(self.context.gateway.figures())
        if report.services_seen == 0 and not skip:
            of = f"shard {self.shard} of " if self.shard is not None else ""
            log.warning("%sinput %s holds no services: the output has a header only", of, input_path)
        assert self.report is not None
        return self.report

    def _open_output(
        self, header: Header, output_path: Path, report: RunTally, *, resume: bool
    ) -> tuple[Writer, Path, QuarantineStore, set[str]]:
        """The writer, the file it writes, its quarantine and the services to skip (resume).

        Raises:
            ResumeRefused: ``resume`` and the output was made from other input, settings or schema.
            UsageError: ``resume`` with records on stdout, or stdout without a stream.
        """
        redact = self.context.redactor.redact_obj
        if output_path == STDOUT:
            if resume:
                raise UsageError("--resume needs an output file: records written to stdout cannot be resumed")
            if self.stream is None:
                raise UsageError("this command cannot write its records to stdout (--output-file -)")
            stream = StreamWriter(self.stream)
            quarantine = QuarantineStore(quarantine_dir_for(STDOUT), redact=redact)
            quarantine.reset()
            stream.start(header)
            return stream, STDOUT, quarantine, set()
        partial_output = partial_path_for(output_path)
        # A resume continues the run in progress: the partial output when a fresh run left one.
        target = partial_output if resume and partial_output.exists() else output_path
        if resume:
            check_source(target, header)
            quarantine = QuarantineStore(quarantine_dir_for(target), redact=redact)
            state = prepare_resume(target, header, quarantine)
            if state.header is not None:
                writer = OutputWriter(target)
                report.resumed = len(state.done)
                report.skipped_failed = len(state.quarantined)
                report.repaired_bytes = state.repaired_bytes
                writer.open_append()
                log.info(
                    "resuming %s: %d record(s) done, %d quarantined service(s) skipped",
                    target,
                    len(state.done),
                    len(state.quarantined),
                )
                return writer, target, quarantine, state.skip
        # A fresh run never touches an existing output: it writes the partial file and renames
        # it over the output at the end.
        discard_partial(output_path)
        writer = OutputWriter(partial_output)
        quarantine = QuarantineStore(quarantine_dir_for(partial_output), redact=redact)
        quarantine.reset()
        writer.start(header)
        return writer, partial_output, quarantine, set()

    @staticmethod
    def _settle(target: Path, output: Path, report: RunTally) -> Path:
        """Publish a partial output when the run is complete or there is no earlier output to keep."""
        if target == output:  # resumed in place, or written to stdout
            return output
        if report.completed or (not output.exists() and not report.deferred):
            publish_partial(output)
            return output
        if report.deferred:  # a wave of batch mode: the next pass writes the output afresh
            return target
        log.warning(
            "the run did not complete: %s was kept as it was; this run's records are in %s "
            "(run again with --resume to finish them)",
            output,
            target,
        )
        return target

    async def _process(
        self,
        items: Iterable[Job | BadLine],
        writer: Writer,
        quarantine: QuarantineStore,
        report: RunTally,
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
                    self.on_progress(report, self.context.gateway.progress())

        async def one(index: int, job: Job, hold: Reservation | None) -> None:
            slot = slots[index]
            try:
                slot.result = await self._service(job, quarantine, report)
            finally:
                if hold is not None:
                    spent = self.context.ledger.by_service.get(job.service_id)
                    hold.settle(spent.usd if spent is not None else None)
                slot.done = True
                drain()

        stopped = False
        async with asyncio.TaskGroup() as group:
            for item in items:
                report.services_seen += 1
                if isinstance(item, BadLine):
                    self._bad_line(item, quarantine, report)
                    continue
                if item.service_id in skip:
                    report.skipped += 1
                    continue
                if max_services is not None and scheduled >= max_services:
                    break
                admitted, hold = await self._admit(capacity, item.service_id, report)
                if not admitted:
                    stopped = True
                    break
                slots[scheduled] = _Slot()
                group.create_task(one(scheduled, item, hold))
                scheduled += 1
        report.completed = not stopped and report.systemic is None and not report.deferred

    async def _admit(
        self, capacity: asyncio.Semaphore, service_id: str, report: RunTally
    ) -> tuple[bool, Reservation | None]:
        """Wait for capacity, then admit unless the run must stop (systemic failures, budget)."""
        await capacity.acquire()
        if report.systemic is None:
            try:
                return True, self._admit_within_budget(service_id, report)
            except BudgetExhausted:
                pass
        capacity.release()
        return False, None

    def _admit_within_budget(self, service_id: str, report: RunTally) -> Reservation | None:
        """Hold this service's estimated cost; stop admitting when the budget would be crossed.

        Raises:
            BudgetExhausted: ``budget_mode: enforce`` and spent + in flight + this estimate exceeds it.
        """
        budget = self.settings.run_budget_usd
        if budget is None:
            return None
        ledger = self.context.ledger
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
                raise BudgetExhausted(f"the ${budget} run budget is spent")
            if not report.budget_warned:
                report.budget_warned = True
                log.warning("budget: the run is about to pass its $%s budget (budget_mode: warn)", budget)
        return ledger.reserve(estimate, service_id=service_id)

    def _service_estimate(self, report: RunTally) -> Decimal:
        """Expected cost of one service: the average so far, or a pre-run estimate from prompt sizes."""
        ledger = self.context.ledger
        finished = report.services_ok + report.services_failed
        if finished and ledger.total_usd > 0:
            return ledger.total_usd / finished
        if self._pre_estimate is None:
            self._pre_estimate = self._job_estimate()
        return self._pre_estimate

    def _bad_line(self, item: BadLine, quarantine: QuarantineStore, report: RunTally) -> None:
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

    async def _service(self, job: Job, quarantine: QuarantineStore, report: RunTally) -> ServiceResult | None:
        service_id = job.service_id
        key = self.records.key(job)
        try:
            result = self.records.get(key)
            if result is None:
                result = await job.work()
                self.records.put(key, result)
            else:
                report.from_cache += 1
            report.unknown_ids += result.unknown_ids
            self._check_strict(
                service_id, self._record_problems(service_id, job.line, result.problems, quarantine, report)
            )
        except Deferred:
            report.deferred += 1
            return None
        except PipelineError as exc:
            self._failed(job, exc, quarantine, report)
            return None
        except Exception as exc:
            if self.debug:
                raise
            # A bug must cost one service, not the batch: quarantine it with its (redacted) traceback.
            internal = PipelineError(
                f"internal error: {type(exc).__name__}: {exc}",
                service_id=service_id,
                stage="pipeline",
                kind=QuarantineKind.INTERNAL,
                payload={"traceback": traceback.format_exception(exc)},
            )
            self._failed(job, internal, quarantine, report)
            return None
        self._systemic_streak = None
        report.services_ok += 1
        metrics = self.context.metrics
        metrics.add(metrics.services, 1, {"outcome": "ok"})
        if result.unknown_ids:
            metrics.add(metrics.unknown_ids, result.unknown_ids)
        log.info("service %s finished", service_id, extra={"service_id": service_id})
        return result

    @staticmethod
    def _check_strict(service_id: str, fatal: list[Problem]) -> None:
        """Under --strict, problems fail the service.

        Raises:
            MappingError: Naming the first problem; every problem is in the payload.
        """
        if fatal:
            raise MappingError(
                f"--strict: {len(fatal)} problem(s); first: {fatal[0].error}",
                service_id=service_id,
                stage=fatal[0].stage,
                kind=fatal[0].kind,
                payload={"problems": [problem.error for problem in fatal]},
            )

    def _failed(self, job: Job, exc: PipelineError, quarantine: QuarantineStore, report: RunTally) -> None:
        service_id = job.service_id
        metrics = self.context.metrics
        metrics.add(metrics.services, 1, {"outcome": "failed"})
        report.services_failed += 1
        report.failed_ids.append(service_id)
        log.error("service %s failed at %s: %s", service_id, exc.stage, exc.message)
        payload = exc.payload
        systemic = exc.systemic if isinstance(exc, ModelCallError) else None
        if systemic is not None:
            payload = {"systemic": systemic, "answer": payload}
        quarantine.add(
            service_id=service_id,
            stage=exc.stage or "pipeline",
            kind=exc.kind,
            error=str(exc),
            payload=payload,
            run_id=report.run_id,
            line=job.line,
        )
        self._count_systemic(systemic, exc.message, report)

    def _count_systemic(self, systemic: str | None, message: str, report: RunTally) -> None:
        """Stop admitting after SYSTEMIC_FAILURE_LIMIT services in a row failed the same systemic way."""
        if systemic is None:
            self._systemic_streak = None
            return
        streak = self._systemic_streak
        count = streak[1] + 1 if streak is not None and streak[0] == systemic else 1
        self._systemic_streak = (systemic, count, message)
        if count >= SYSTEMIC_FAILURE_LIMIT and report.systemic is None:
            report.systemic = f"{count} services in a row failed the same way ({systemic}): {message}"
            log.error("stopping: %s", report.systemic)

    def _record_problems(
        self,
        service_id: str,
        line: int,
        problems: list[Problem],
        quarantine: QuarantineStore,
        report: RunTally,
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


def _sharded(batch: Batch, shard: Shard) -> Batch:
    """The part of ``batch`` that ``shard`` owns (bad lines included), under a header naming the shard."""
    items = (item for item in batch.items if shard.owns(item.service_id))
    return Batch(header=batch.header.model_copy(update={"shard": shard}), items=items)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed task group: the tool's own error first, else the first one."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    for exc in leaves:
        if isinstance(exc, ServiceAmbitionsError):
            return exc
    return leaves[0]
