"""``service-ambitions map``: map the features of an existing file again, against the current catalogues."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, cast

import typer

from service_ambitions.cli._common import (
    ConfigOption,
    DataDirOption,
    DebugOption,
    JsonLogsOption,
    PromptDirOption,
    QuietOption,
    RolesFileOption,
    VerboseOption,
    build_redactor,
    check_run_paths,
    err,
    exits,
    settings_from_flags,
    setup_logging,
)
from service_ambitions.cli._options import (
    AllowPromptLoggingOption,
    BudgetModeOption,
    CacheDirOption,
    CacheMode,
    ConcurrencyOption,
    ContextIdOption,
    InspirationOption,
    LlmConcurrencyOption,
    MappingModelOption,
    ProgressOption,
    RunBudgetUsdOption,
    StrictOption,
    SummaryJsonOption,
    TraceIdsOption,
)
from service_ambitions.cli._summary import render_summary, summary_data, write_summary
from service_ambitions.cli.run import (
    _progress_for,
    _raise_for_outcome,
    _run_until_signal,
    parse_rate_limits,
)
from service_ambitions.errors import InputError, Interrupted, PathError, UsageError

if TYPE_CHECKING:
    from service_ambitions.engine.remap import RemapEngine
    from service_ambitions.settings import Settings

__all__ = ["map_command"]

DEFAULT_INPUT = Path("features.jsonl")
DEFAULT_OUTPUT = Path("mapped.jsonl")
STDOUT = Path("-")


class _StdoutClosed(Exception):
    """The consumer of the records on stdout closed its end (``map --output-file - | head``)."""


class _Stdout:
    """stdout's binary stream for the records, noting whether its reader closed the pipe.

    The writer turns the ``BrokenPipeError`` into a ``PathError``; this is how ``map`` tells it apart.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.reader_gone = False

    def write(self, data: bytes) -> int:
        try:
            return self.stream.write(data)
        except BrokenPipeError:
            self.reader_gone = True
            raise

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self.reader_gone = True
            raise


def _silence_stdout() -> None:
    """Point stdout's descriptor at devnull, so the flush at interpreter exit cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)


def _check_paths(
    settings: Settings,
    input_file: Path,
    service_file: Path | None,
    summary_json: Path | None,
    *,
    input_flag: str = "--input-file",
) -> None:
    """Refuse, before anything is written, paths that would lose data or cannot work.

    Raises:
        InputError: The input or the service file is missing or unreadable.
        PathError: The output is one of the inputs, or an output location cannot be written.
    """
    from service_ambitions.cli import _paths  # noqa: PLC0415
    from service_ambitions.store.spool import STDIN  # noqa: PLC0415

    if input_file != STDIN:
        _paths.check_readable_file(input_flag, input_file, error=InputError)
    if service_file is not None:
        _paths.check_readable_file("--service-file", service_file, error=InputError)
    check_run_paths(
        settings,
        summary_json,
        inputs={input_flag: input_file, "--service-file": service_file},
        output_to_stdout=True,
    )


def _drive(
    engine: RemapEngine,
    input_path: Path,
    settings: Settings,
    max_services: int | None,
    *,
    resume: bool,
    progress: bool,
    json_logs: bool,
    stdout: _Stdout | None = None,
) -> bool:
    """Run the engine under the output lock, telemetry and progress bar; True when interrupted.

    Raises:
        _StdoutClosed: The records go to stdout and its reader closed the pipe.
        PathError: The output cannot be written (naming where the records written before it are).
    """
    from service_ambitions.observability.telemetry import telemetry  # noqa: PLC0415
    from service_ambitions.store.lock import output_lock  # noqa: PLC0415

    output = settings.output_file
    context = engine.context
    lock = output_lock(output, command="map") if output != STDOUT else contextlib.nullcontext(output)
    with (
        lock,
        telemetry(version=context.tool_version, metrics_port=None),
        _progress_for(engine, context, input_path, max_services, enabled=progress, json_logs=json_logs),
    ):
        try:
            return asyncio.run(_run_until_signal(engine, input_path, settings, max_services, resume=resume))
        except PathError as exc:
            if stdout is not None and stdout.reader_gone:
                raise _StdoutClosed from None
            where = engine.report.written_to if engine.report is not None else None
            if where is None or where == STDOUT:
                raise
            raise PathError(
                f"{exc}; the records written before it are in {where} (run again with --resume)"
            ) from None


@exits
def map_command(
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input-file",
            help="Evolutions or features file (schema 1.1, or 1.0: migrated in memory); - for stdin. "
            "[default: features.jsonl]",
            show_default=False,
        ),
    ] = None,
    features_file: Annotated[
        Path | None,
        typer.Option("--features-file", help="Another name for --input-file.", show_default=False),
    ] = None,
    output_file: Annotated[
        Path | None,
        typer.Option(
            "--output-file", help="Output JSONL file; - writes the records to stdout. [default: mapped.jsonl]"
        ),
    ] = None,
    service_id: Annotated[
        str | None, typer.Option("--service-id", help="Map this service only.", show_default=False)
    ] = None,
    service_file: Annotated[
        Path | None,
        typer.Option(
            "--service-file",
            help="Services JSONL whose records replace the services of the input, matched by service_id.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model for every stage: provider:model, or 'offline'.")
    ] = None,
    mapping_model: MappingModelOption = None,
    concurrency: ConcurrencyOption = None,
    llm_concurrency: LlmConcurrencyOption = None,
    rate_limit: Annotated[
        list[str] | None,
        typer.Option(
            "--rate-limit", help="Per-model limits, repeatable: MODEL=rpm:500,tpm:200000[,concurrency:8]."
        ),
    ] = None,
    max_services: Annotated[
        int | None, typer.Option("--max-services", min=1, help="Map at most N services.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed passed to models that accept one.")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the existing output: skip services already written or quarantined. Refused "
            "(exit 3) when the input, the service file, output-affecting settings or catalogues changed.",
        ),
    ] = False,
    strict: StrictOption = None,
    strict_mapping: Annotated[
        bool, typer.Option("--strict-mapping", help="The same as --strict (mapping is the only stage).")
    ] = False,
    fail_on_quarantine: Annotated[
        bool | None,
        typer.Option(
            "--fail-on-quarantine", help="Exit 1 at the end if anything was quarantined (output is complete)."
        ),
    ] = None,
    cache_mode: Annotated[
        CacheMode | None, typer.Option("--cache-mode", help="off | read (default) | refresh | write.")
    ] = None,
    cache_dir: CacheDirOption = None,
    data_dir: DataDirOption = None,
    prompt_dir: PromptDirOption = None,
    roles_file: RolesFileOption = None,
    context_id: ContextIdOption = None,
    inspiration: InspirationOption = None,
    run_budget_usd: RunBudgetUsdOption = None,
    budget_mode: BudgetModeOption = None,
    summary_json: SummaryJsonOption = None,
    progress: ProgressOption = True,
    allow_prompt_logging: AllowPromptLoggingOption = False,
    json_logs: JsonLogsOption = False,
    trace_ids: TraceIdsOption = False,
    inject_failures: Annotated[
        str | None,
        typer.Option(
            "--inject-failures",
            help="Inject failures at the model boundary: p=0.05[,kinds=429,500,timeout,malformed][,seed=N].",
        ),
    ] = None,
    debug: DebugOption = False,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Map the features of an existing evolutions or features file again, with the current catalogues.

    Descriptions and features are kept exactly; only the mapping stage runs, for every plateau and
    mapping set, through the same cache, limits, strictness, quarantine and assembly as `run`. The
    output is a schema 1.1 file whose header records the current catalogue hash and the source file's
    digest. With unchanged catalogues and a warm cache it makes no model call. Exit codes as for `run`.

    Examples:

    \b
        service-ambitions map --input-file evolutions.jsonl --output-file mapped.jsonl
        service-ambitions reverse && service-ambitions map --service-id SVC-001 --output-file -
    """
    from service_ambitions.context import build_context  # noqa: PLC0415
    from service_ambitions.engine.remap import RemapEngine, load_services  # noqa: PLC0415
    from service_ambitions.engine.source import contains_service  # noqa: PLC0415
    from service_ambitions.store.spool import spooled_input  # noqa: PLC0415

    redactor = build_redactor()
    setup_logging(verbose=verbose, quiet=quiet, json_logs=json_logs, trace_ids=trace_ids, redactor=redactor)
    if input_file is not None and features_file is not None and input_file != features_file:
        raise UsageError(
            "--input-file and --features-file name the same input option; give one of them "
            f"(got {input_file} and {features_file})"
        )
    source = input_file or features_file or DEFAULT_INPUT
    output = output_file or DEFAULT_OUTPUT
    if resume and output == STDOUT:
        raise UsageError("--resume needs an output file: records written to stdout (-) cannot be resumed")
    settings = settings_from_flags(
        config,
        input_file=source,
        output_file=output,
        model=model,
        models__mapping=mapping_model,
        concurrency=concurrency,
        llm_concurrency=llm_concurrency,
        models_rate_limits=parse_rate_limits(rate_limit) if rate_limit else None,
        seed=seed,
        strict=True if strict_mapping else strict,
        fail_on_quarantine=fail_on_quarantine,
        cache_mode=cache_mode,
        cache_dir=cache_dir,
        data_dir=data_dir,
        prompt_dir=prompt_dir,
        roles_file=roles_file,
        context_id=context_id,
        inspiration=inspiration,
        inject_failures=inject_failures,
        run_budget_usd=run_budget_usd,
        budget_mode=budget_mode,
        allow_prompt_logging=allow_prompt_logging or None,
    )
    input_flag = "--features-file" if input_file is None and features_file is not None else "--input-file"
    _check_paths(settings, source, service_file, summary_json, input_flag=input_flag)
    services, services_digest = (
        load_services(service_file, redact=redactor.redact_obj) if service_file is not None else ({}, None)
    )
    mapping = settings.stage_model("mapping")
    # map calls only the mapping stage: keys for the descriptions and features models are not needed.
    context = build_context(
        settings, redactor=redactor, keys_for=[mapping, *settings.fallbacks_for("mapping", mapping)]
    )
    try:
        with spooled_input(source) as input_path:
            if service_id is not None and not contains_service(input_path, service_id):
                raise InputError(f"service {service_id!r} is not in {source}")
            stdout = _Stdout(sys.stdout.buffer) if output == STDOUT else None
            engine = RemapEngine(
                context,
                debug=debug,
                # _Stdout has what the records' writer uses of a stream (write, flush).
                stream=cast("IO[bytes]", stdout) if stdout is not None else None,
                service_id=service_id,
                services=services,
                services_digest=services_digest,
            )
            try:
                interrupted = _drive(
                    engine,
                    input_path,
                    settings,
                    max_services,
                    resume=resume,
                    progress=progress,
                    json_logs=json_logs,
                    stdout=stdout,
                )
            except _StdoutClosed:
                # Whoever reads the records stopped reading: not an error of ours. Stop quietly.
                _silence_stdout()
                return
        report = engine.report
        if report is None:  # interrupted before the run started: nothing was written
            raise Interrupted("interrupted before any service started")
        data = summary_data(settings, report)
        if summary_json is not None:
            write_summary(summary_json, data)
        if not quiet:
            err(render_summary(data))
        if engine.source is not None and engine.source.notes is not None:
            for line in engine.source.notes.summary():
                err(f"map: {source} is schema 1.0 (migrated in memory): {line}")
        if service_file is not None:
            err(f"map: {engine.replaced} record(s) were mapped with their service from {service_file}")
    finally:
        context.close()
    if interrupted:
        raise Interrupted(
            f"interrupted: every finished record was written to {report.written_to}; "
            "run again with --resume to continue"
        )
    _raise_for_outcome(settings, report)
