"""``run --mode batch``'s side of the CLI: flag checks, the runner, and the pending summary."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from service_ambitions.cli._common import err
from service_ambitions.cli._summary import write_summary
from service_ambitions.errors import UsageError

if TYPE_CHECKING:
    from service_ambitions.context import RunContext
    from service_ambitions.engine.engine import ProcessingEngine
    from service_ambitions.engine.waves import WaveOutcome, WaveRunner
    from service_ambitions.settings import Settings
    from service_ambitions.store.batches import BatchState

__all__ = ["BatchRun", "RunMode", "batch_runner", "check_batch_flags"]

RunMode = Literal["live", "batch", "auto"]


def check_batch_flags(settings: Settings, *, no_wait: bool) -> None:
    """Refuse flag combinations batch mode cannot honour.

    Raises:
        UsageError: ``--no-wait`` without batch mode, or batch mode writing to stdout.
    """
    from service_ambitions.llm._names import is_offline  # noqa: PLC0415  (no llm package at --help)

    if no_wait and settings.mode == "live":
        raise UsageError("--no-wait needs --mode batch (or auto): a live run has nothing to leave running")
    if no_wait and any(is_offline(model_id) for model_id in settings.all_model_ids()):
        raise UsageError(
            "--no-wait: the offline model's batches exist only inside the process that makes them; "
            "run without --no-wait"
        )
    if settings.mode != "live" and str(settings.output_file) == "-":
        raise UsageError(
            "--mode batch needs an output file (not -): its batches are recorded beside it, to collect later"
        )


@dataclass
class BatchRun:
    """One invocation's waves, and how they ended."""

    runner: WaveRunner
    state: BatchState
    outcome: WaveOutcome | None = None

    async def run(self, input_path: Path, output_path: Path, *, max_services: int | None) -> None:
        """Run the waves; the state is closed when they stop (however they stop)."""
        try:
            self.outcome = await self.runner.run(input_path, output_path, max_services=max_services)
        finally:
            self.state.close()

    def summary(self) -> dict[str, Any]:
        """The batch part of the run summary."""
        outcome = self.outcome
        if outcome is None:
            return {"state": str(self.state.path)}
        stats = outcome.stats
        return {
            "state": str(self.state.path),
            "finished": outcome.finished,
            "passes": outcome.passes,
            "waves_submitted": stats.waves,
            "batches_submitted": stats.batches_submitted,
            "requests_submitted": stats.requests_submitted,
            "resubmitted": stats.resubmitted,
            "batches_collected": stats.batches_collected,
            "results_collected": stats.results_collected,
            "adopted": stats.adopted,
            "batches_running": outcome.running_batches,
            "requests_by_status": outcome.requests_by_status,
            "services_waiting": outcome.report.deferred if outcome.report is not None else None,
        }

    def report_pending(self, *, summary_json: Path | None, quiet: bool) -> None:
        """Say what is still running at the provider, and how to collect it."""
        data = {"batches": self.summary()}
        if summary_json is not None:
            write_summary(summary_json, data)
        if quiet:
            return
        outcome = self.outcome
        assert outcome is not None
        waiting = outcome.report.deferred if outcome.report is not None else None
        settings = self.runner.settings
        err(
            f"batch mode: {outcome.stats.requests_submitted} request(s) submitted now in "
            f"{outcome.stats.batches_submitted} batch(es); {outcome.running_batches} batch(es) running"
            + (f"; {waiting} service(s) waiting for answers" if waiting is not None else "")
            + f"\nrecorded in {self.state.path}\n"
            f"collect: service-ambitions run --mode {settings.mode} --resume "
            f"--input-file {settings.input_file} --output-file {settings.output_file} "
            "(with the same settings)"
        )
        sys.stderr.flush()


def _check_pending(state: BatchState, *, resume: bool, output: Path) -> None:
    if not resume and state.has_pending():
        raise UsageError(
            f"batches of {output} are still pending ({state.path}): run with --resume to "
            "collect them, or cancel them with service-ambitions batch cancel"
        )


def batch_runner(
    context: RunContext,
    engine: ProcessingEngine,
    *,
    make_engine: Callable[[], ProcessingEngine],
    wait: bool,
    resume: bool,
) -> BatchRun:
    """Set the gateway to batch mode over the output's batch state.

    Raises:
        UsageError: Batches of this output are pending and ``--resume`` was not given, or the state
            belongs to other settings with batches pending.
        ConfigError: ``--mode batch`` and a stage model has no batch API.
    """
    from service_ambitions.engine.identity import settings_digest  # noqa: PLC0415
    from service_ambitions.engine.waves import WaveRunner  # noqa: PLC0415
    from service_ambitions.llm.batching import BatchCoordinator  # noqa: PLC0415
    from service_ambitions.store.batches import BatchState, state_path_for  # noqa: PLC0415

    settings = context.settings
    path = state_path_for(settings.output_file)
    state = BatchState(path, run_id=settings_digest(settings, context.content))
    try:
        _check_pending(state, resume=resume, output=settings.output_file)
        coordinator = BatchCoordinator(state, max_resubmissions=settings.batch_max_resubmissions)
        context.gateway.use_batches(coordinator, mode=settings.mode)
    except BaseException:
        state.close()
        raise
    runner = WaveRunner(context, coordinator, engine, make_engine=make_engine, wait=wait)
    return BatchRun(runner=runner, state=state)
