"""``service-ambitions batch status|collect|cancel|forget``: the provider batches of an output.

``run --mode batch`` records every batch it submits beside its output
(``<output>.batches.sqlite3``). These commands work on that record with the same settings (the same
models and keys): ``status`` checks each running batch once; ``collect`` also downloads the results
of those that ended, so a later ``run --mode batch --resume`` only assembles; ``cancel`` cancels the
running ones (their unanswered requests are submitted again by a later run); ``forget`` drops the
record of submissions a killed process left unrecorded, for providers whose batches cannot be
matched to requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from service_ambitions.cli._common import (
    ConfigOption,
    QuietOption,
    VerboseOption,
    build_redactor,
    err,
    exits,
    settings_from_flags,
    setup_logging,
)
from service_ambitions.errors import UsageError

if TYPE_CHECKING:
    from service_ambitions.llm.batching import BatchCoordinator
    from service_ambitions.observability.redaction import Redactor
    from service_ambitions.store.batches import BatchState

__all__ = ["batch_app"]

batch_app = typer.Typer(
    help="The provider batches of a --mode batch output: check, collect, cancel.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
OutputOption = Annotated[
    Path | None,
    typer.Option("--output-file", help="The output whose batches to work on. [default: evolutions.jsonl]"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per batch on stdout.")]


def _open(
    config: Path | None, output_file: Path | None, *, verbose: int, quiet: bool
) -> tuple[Any, Path, Redactor]:
    """The settings, the state file of the output (which must exist) and the redactor of the logs."""
    redactor = build_redactor()
    setup_logging(verbose=verbose, quiet=quiet, json_logs=False, trace_ids=False, redactor=redactor)
    settings = settings_from_flags(config, output_file=output_file)
    from service_ambitions.store.batches import state_path_for  # noqa: PLC0415

    path = state_path_for(settings.output_file)
    if not path.is_file():
        raise UsageError(f"{settings.output_file} has no batches ({path} does not exist)")
    return settings, path, redactor


def _on_batches(
    config: Path | None,
    output_file: Path | None,
    work: Callable[[BatchCoordinator], Awaitable[None]],
    *,
    verbose: int,
    quiet: bool,
    lock: str | None = None,
) -> None:
    """Run ``work(coordinator)`` over the output's batches, the run's models in batch mode.

    Args:
        config: The ``--config`` file.
        output_file: The output whose batches to work on.
        work: What to do with the coordinator.
        verbose: ``-v`` count.
        quiet: ``-q``.
        lock: Hold the output's lock under this command name (the commands that change the record).
    """
    settings, path, redactor = _open(config, output_file, verbose=verbose, quiet=quiet)
    from service_ambitions.store.lock import output_lock  # noqa: PLC0415

    with output_lock(settings.output_file, command=lock) if lock else contextlib.nullcontext():
        asyncio.run(_with_coordinator(settings, path, redactor, work))


async def _with_coordinator(
    settings: Any, path: Path, redactor: Redactor, work: Callable[[BatchCoordinator], Awaitable[None]]
) -> None:
    """Build the run's models in batch mode over the state, and run ``work(coordinator)``."""
    from service_ambitions.context import build_context  # noqa: PLC0415
    from service_ambitions.llm.batching import BatchCoordinator  # noqa: PLC0415
    from service_ambitions.store.batches import BatchState  # noqa: PLC0415

    settings = settings.model_copy(update={"mode": "batch" if settings.mode == "live" else settings.mode})
    context = build_context(settings, redactor=redactor)
    try:
        with BatchState(path) as state:
            coordinator = BatchCoordinator(state, max_resubmissions=settings.batch_max_resubmissions)
            context.gateway.use_batches(coordinator, mode=settings.mode)
            await work(coordinator)
    finally:
        context.close()


def _rows(state: BatchState) -> list[dict[str, Any]]:
    by_batch: dict[tuple[str, str], dict[str, int]] = {}
    for item in state.items():
        counts = by_batch.setdefault((item.model_id, item.batch_id), {})
        counts[item.status] = counts.get(item.status, 0) + 1
    return [
        {
            "batch_id": row.batch_id,
            "model": row.model_id,
            "wave": row.wave,
            "status": row.status,
            "requests": row.request_count,
            "submitted": datetime.fromtimestamp(row.submitted, tz=UTC).isoformat(timespec="seconds"),
            "collected": row.collected is not None,
            "results": by_batch.get((row.model_id, row.batch_id), {}),
        }
        for row in state.batches()
    ]


def _show(state: BatchState, *, as_json: bool) -> None:
    rows = _rows(state)
    for row in rows:
        if as_json:
            typer.echo(json.dumps(row, sort_keys=True))
        else:
            results = ", ".join(f"{count} {status}" for status, count in sorted(row["results"].items()))
            typer.echo(
                f"{row['batch_id']}\t{row['model']}\twave {row['wave']}\t{row['status']}\t"
                f"{row['requests']} request(s)\t{results or '-'}"
            )
    intents = state.intents()
    if intents and not as_json:
        err(f"{len(intents)} submission(s) not recorded yet: the next run reconciles them with the provider")


@batch_app.command("status")
@exits
def status(
    output_file: OutputOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Check each running batch once and list every batch of the output.

    Examples:

    \b
        service-ambitions batch status --output-file out/evolutions.jsonl
    """

    async def work(coordinator: BatchCoordinator) -> None:
        running = await coordinator.poll(collect=False)
        _show(coordinator.state, as_json=as_json)
        if not quiet:
            err(f"{running} batch(es) running")

    _on_batches(config, output_file, work, verbose=verbose, quiet=quiet)


@batch_app.command("collect")
@exits
def collect(
    output_file: OutputOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Download the results of the batches that ended (a later run --mode batch --resume assembles them).

    Examples:

    \b
        service-ambitions batch collect --output-file out/evolutions.jsonl
    """

    async def work(coordinator: BatchCoordinator) -> None:
        await coordinator.reconcile()
        running = await coordinator.poll(collect=True)
        _show(coordinator.state, as_json=as_json)
        if not quiet:
            err(
                f"{coordinator.stats.results_collected} result(s) collected from "
                f"{coordinator.stats.batches_collected} batch(es); {running} batch(es) running"
            )

    _on_batches(config, output_file, work, verbose=verbose, quiet=quiet, lock="batch collect")


@batch_app.command("cancel")
@exits
def cancel(
    output_file: OutputOption = None,
    config: ConfigOption = None,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Cancel the output's running batches; a later run submits their unanswered requests again.

    Requests a batch already answered may still be billed by the provider.

    Examples:

    \b
        service-ambitions batch cancel --output-file out/evolutions.jsonl
    """

    async def work(coordinator: BatchCoordinator) -> None:
        await coordinator.reconcile()
        cancelled = await coordinator.cancel()
        for row in cancelled:
            typer.echo(f"cancelled\t{row.batch_id}\t{row.model_id}\t{row.request_count} request(s)")
        if not quiet:
            err(f"{len(cancelled)} batch(es) cancelled")

    _on_batches(config, output_file, work, verbose=verbose, quiet=quiet, lock="batch cancel")


@batch_app.command("forget")
@exits
def forget(
    output_file: OutputOption = None,
    config: ConfigOption = None,
    quiet: QuietOption = False,
) -> None:
    """Drop the record of submissions a stopped process left unrecorded, so the next run submits them.

    Only needed for providers whose batches cannot be matched to requests (the run says so); check
    the provider's console for a stray batch first.
    """
    settings, path, _ = _open(config, output_file, verbose=0, quiet=quiet)
    from service_ambitions.store.batches import BatchState  # noqa: PLC0415
    from service_ambitions.store.lock import output_lock  # noqa: PLC0415

    with output_lock(settings.output_file, command="batch forget"), BatchState(path) as state:
        intents = state.intents()
        for intent in intents:
            state.drop_intent(intent)
    if not quiet:
        err(f"{len(intents)} unrecorded submission(s) forgotten")
