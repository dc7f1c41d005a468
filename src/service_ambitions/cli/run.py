"""``service-ambitions run``: process a services file into ``evolutions.jsonl``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated, Literal

import typer

from service_ambitions.cli._common import (
    ConfigOption,
    DataDirOption,
    JsonLogsOption,
    PromptDirOption,
    QuietOption,
    RolesFileOption,
    VerboseOption,
    err,
    exits,
    settings_from_flags,
    setup_logging,
)
from service_ambitions.context import RunContext, build_context
from service_ambitions.engine.engine import ProcessingEngine, RunReport
from service_ambitions.errors import ExitCode
from service_ambitions.settings import Settings
from service_ambitions.store.inputs import BadLine, read_services

__all__ = ["run"]

CacheMode = Literal["off", "read", "refresh", "write"]


@exits
def run(
    input_file: Annotated[
        Path | None, typer.Option("--input-file", help="Services JSONL file. [default: services.jsonl]")
    ] = None,
    output_file: Annotated[
        Path | None, typer.Option("--output-file", help="Output JSONL file. [default: evolutions.jsonl]")
    ] = None,
    config: ConfigOption = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model for every stage: provider:model, or 'offline'.")
    ] = None,
    descriptions_model: Annotated[
        str | None, typer.Option("--descriptions-model", help="Model for the descriptions stage.")
    ] = None,
    features_model: Annotated[
        str | None, typer.Option("--features-model", help="Model for the features stage.")
    ] = None,
    mapping_model: Annotated[
        str | None, typer.Option("--mapping-model", help="Model for the mapping stage.")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="Services processed at once.")
    ] = None,
    max_services: Annotated[
        int | None, typer.Option("--max-services", min=1, help="Process at most N services.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed passed to models that accept one.")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the existing output: skip services already written or quarantined. "
            "Refused (exit 3) when the input, output-affecting settings or schema changed.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Check settings, content and input; print the plan; call nothing."),
    ] = False,
    strict: Annotated[
        bool | None,
        typer.Option("--strict/--lenient", help="Any unknown id, facet violation or gap fails that service."),
    ] = None,
    fail_on_quarantine: Annotated[
        bool | None,
        typer.Option(
            "--fail-on-quarantine",
            "--strict-mapping",
            help="Exit 1 at the end if anything was quarantined (output is still complete).",
        ),
    ] = None,
    cache_mode: Annotated[
        CacheMode | None, typer.Option("--cache-mode", help="off | read (default) | refresh | write.")
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Response cache directory.")] = None,
    data_dir: DataDirOption = None,
    prompt_dir: PromptDirOption = None,
    roles_file: RolesFileOption = None,
    context_id: Annotated[
        str | None, typer.Option("--context-id", help="Situational context file name (without .md).")
    ] = None,
    inspiration: Annotated[str | None, typer.Option("--inspiration", help="Inspirations file name.")] = None,
    json_logs: JsonLogsOption = False,
    trace_ids: Annotated[
        bool, typer.Option("--trace-ids", help="Add request ids (and provider response ids) to model logs.")
    ] = False,
    inject_failures: Annotated[
        str | None,
        typer.Option(
            "--inject-failures",
            help="Inject failures at the model boundary, for testing resilience: "
            "p=0.05[,kinds=429,500,timeout,malformed][,seed=N].",
        ),
    ] = None,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Run the pipeline over a services file and write one validated record per service.

    Examples:
        service-ambitions run --input-file samples/services.jsonl --model offline

        service-ambitions run --config config/app.yaml --model openai:gpt-5-mini --concurrency 16
    """
    setup_logging(verbose=verbose, quiet=quiet, json_logs=json_logs, trace_ids=trace_ids)
    settings = settings_from_flags(
        config,
        input_file=input_file,
        output_file=output_file,
        model=model,
        models__descriptions=descriptions_model,
        models__features=features_model,
        models__mapping=mapping_model,
        concurrency=concurrency,
        seed=seed,
        strict=strict,
        fail_on_quarantine=fail_on_quarantine,
        cache_mode=cache_mode,
        cache_dir=cache_dir,
        data_dir=data_dir,
        prompt_dir=prompt_dir,
        roles_file=roles_file,
        context_id=context_id,
        inspiration=inspiration,
        inject_failures=inject_failures,
    )
    context = build_context(settings)
    try:
        if dry_run:
            _plan(context, settings, max_services)
            return
        engine = ProcessingEngine(context)
        interrupted = asyncio.run(_run_until_signal(engine, settings, max_services, resume=resume))
        report = engine.report
        if report is None:  # interrupted before the run started: nothing was written
            raise typer.Exit(int(ExitCode.INTERRUPTED))
        _summary(context, report, quiet=quiet)
    finally:
        context.close()
    if interrupted:
        err("interrupted: every finished record was written; run again with --resume to continue")
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    code = _exit_code(settings, report)
    if code != ExitCode.OK:
        raise typer.Exit(int(code))


async def _run_until_signal(
    engine: ProcessingEngine, settings: Settings, max_services: int | None, *, resume: bool
) -> bool:
    """Run the engine; SIGINT/SIGTERM stop admission and cancel in-flight work. True when interrupted."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if not received and main is not None:
            main.cancel()
        received.append(signum)

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not main thread / Windows
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
    try:
        await engine.run(settings.input_file, settings.output_file, max_services=max_services, resume=resume)
    except asyncio.CancelledError:
        if not received:
            raise
        return True
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
    return False


def _exit_code(settings: Settings, report: RunReport) -> ExitCode:
    if settings.strict and report.services_failed:
        return ExitCode.FAILURES
    if settings.fail_on_quarantine and report.quarantined:
        return ExitCode.FAILURES
    return ExitCode.OK


def _plan(context: RunContext, settings: Settings, max_services: int | None) -> None:
    valid = invalid = 0
    for item in read_services(settings.input_file):
        if isinstance(item, BadLine):
            invalid += 1
            err(f"{settings.input_file}:{item.line}: {item.reason}")
        else:
            valid += 1
    if max_services is not None:
        valid = min(valid, max_services)
    plateaus = len(context.content.plateaus)
    sets = len(context.content.catalogues)
    per_service = 1 + plateaus * (1 + sets)
    err(
        f"dry run: {valid} service(s) to process ({invalid} invalid line(s) would be quarantined); "
        f"{per_service} model calls per service, {valid * per_service} at most (cache hits cost nothing); "
        f"models {settings.stage_models()}; output {settings.output_file}"
    )


def _summary(context: RunContext, report: RunReport, *, quiet: bool) -> None:
    if quiet:
        return
    cache = context.cache.stats
    stats = context.gateway.stats
    lines = [
        f"run {report.run_id}: wrote {report.services_ok} record(s) to {report.output}"
        + (f" (resumed after {report.resumed}; {report.skipped} skipped)" if report.resumed else ""),
        f"  services: {report.services_ok} ok, {report.services_failed} failed, "
        f"{report.input_invalid} invalid input line(s)",
        f"  quarantined: {report.quarantined} entr{'y' if report.quarantined == 1 else 'ies'}"
        + (f" ({report.unknown_ids} unknown id(s) dropped)" if report.unknown_ids else ""),
        f"  records from cache: {report.from_cache}; "
        f"model calls: {stats.calls} ({cache.hits - report.from_cache} cache hit(s), "
        f"{stats.model_requests} request(s), "
        f"{stats.output_reasks} output re-ask(s)); tokens in {stats.input_tokens}, out {stats.output_tokens}",
        f"  wall time: {report.wall_seconds:.2f} s",
    ]
    if report.repaired_bytes:
        lines.append(f"  repaired: a torn last line ({report.repaired_bytes} bytes) was moved to *.broken")
    if cache.corrupt:
        lines.append(f"  cache: {cache.corrupt} corrupt entr{'y' if cache.corrupt == 1 else 'ies'} purged")
    err("\n".join(lines))
