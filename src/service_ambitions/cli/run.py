"""``service-ambitions run``: process a services file into ``evolutions.jsonl``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service_ambitions.cli._batches import BatchRun, RunMode, batch_runner, check_batch_flags
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
    DescriptionsModelOption,
    FeaturesModelOption,
    InspirationOption,
    LlmConcurrencyOption,
    MappingModelOption,
    ProgressOption,
    RunBudgetUsdOption,
    ShardOption,
    StrictOption,
    SummaryJsonOption,
    TraceIdsOption,
    parse_shard,
)
from service_ambitions.cli._summary import render_summary, summary_data, write_summary
from service_ambitions.errors import (
    BudgetExhausted,
    InputError,
    Interrupted,
    PathError,
    RunFailures,
    SystemicFailure,
    UsageError,
)
from service_ambitions.observability.telemetry import telemetry
from service_ambitions.store.lock import output_lock
from service_ambitions.store.spool import spooled_input

if TYPE_CHECKING:
    from service_ambitions.context import RunContext
    from service_ambitions.domain.shard import Shard
    from service_ambitions.engine.engine import ProcessingEngine, RunReport, RunTally
    from service_ambitions.llm.figures import Progress
    from service_ambitions.observability.redaction import Redactor
    from service_ambitions.settings import Settings

__all__ = ["run"]


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
    descriptions_model: DescriptionsModelOption = None,
    features_model: FeaturesModelOption = None,
    mapping_model: MappingModelOption = None,
    concurrency: ConcurrencyOption = None,
    llm_concurrency: LlmConcurrencyOption = None,
    rate_limit: Annotated[
        list[str] | None,
        typer.Option(
            "--rate-limit",
            help="Per-model limits, repeatable: MODEL=rpm:500,tpm:200000[,concurrency:8].",
        ),
    ] = None,
    max_services: Annotated[
        int | None, typer.Option("--max-services", min=1, help="Process at most N services.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed passed to models that accept one.")] = None,
    shard: ShardOption = None,
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
    strict: StrictOption = None,
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
    cache_dir: CacheDirOption = None,
    data_dir: DataDirOption = None,
    prompt_dir: PromptDirOption = None,
    roles_file: RolesFileOption = None,
    context_id: ContextIdOption = None,
    inspiration: InspirationOption = None,
    estimate: Annotated[
        bool,
        typer.Option(
            "--estimate", help="Print a pre-run cost estimate from input and prompt sizes; call nothing."
        ),
    ] = False,
    run_budget_usd: RunBudgetUsdOption = None,
    budget_mode: BudgetModeOption = None,
    summary_json: SummaryJsonOption = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus /metrics on 127.0.0.1:PORT while running.",
        ),
    ] = None,
    progress: ProgressOption = True,
    allow_prompt_logging: AllowPromptLoggingOption = False,
    json_logs: JsonLogsOption = False,
    trace_ids: TraceIdsOption = False,
    inject_failures: Annotated[
        str | None,
        typer.Option(
            "--inject-failures",
            help="Inject failures at the model boundary, for testing resilience: "
            "p=0.05[,kinds=429,500,timeout,malformed][,seed=N].",
        ),
    ] = None,
    mode: Annotated[
        RunMode | None,
        typer.Option(
            "--mode",
            help="live (default): requests are sent as they come. batch: through the providers' batch "
            "APIs (half price, results within 24 h), in waves; refused for models without one. auto: batch "
            "where the model has a batch API, live otherwise.",
        ),
    ] = None,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="With --mode batch: submit the next wave and exit 0 without waiting; collect later with "
            "--mode batch --resume (or `batch status`).",
        ),
    ] = False,
    debug: DebugOption = False,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Run the pipeline over a services file and write one validated record per service.

    Examples:

    \b
        service-ambitions run --input-file samples/services.jsonl --model offline
        service-ambitions run --config config/app.yaml --model openai:gpt-5-mini --concurrency 16
        service-ambitions run --model openai:gpt-5-mini --mode batch --no-wait
        service-ambitions run --model openai:gpt-5-mini --mode batch --resume
    """
    redactor = build_redactor()
    setup_logging(verbose=verbose, quiet=quiet, json_logs=json_logs, trace_ids=trace_ids, redactor=redactor)
    settings = settings_from_flags(
        config,
        input_file=input_file,
        output_file=output_file,
        model=model,
        models__descriptions=descriptions_model,
        models__features=features_model,
        models__mapping=mapping_model,
        concurrency=concurrency,
        llm_concurrency=llm_concurrency,
        models_rate_limits=parse_rate_limits(rate_limit) if rate_limit else None,
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
        run_budget_usd=run_budget_usd,
        budget_mode=budget_mode,
        allow_prompt_logging=allow_prompt_logging or None,
        mode=mode,
    )
    own = parse_shard(shard)
    check_run_paths(settings, summary_json)
    check_batch_flags(settings, no_wait=no_wait)
    context, make_engine = _start(settings, redactor, debug=debug, shard=own)
    try:
        if dry_run or estimate:
            with spooled_input(settings.input_file) as input_path:
                if dry_run:
                    _plan(context, settings, input_path, max_services, own)
                if estimate:
                    _estimate(context, settings, input_path, max_services)
            return
        engine = make_engine()
        waves: BatchRun | None = None
        with (
            output_lock(settings.output_file),
            spooled_input(settings.input_file) as input_path,
            telemetry(version=context.tool_version, metrics_port=metrics_port),
            _progress_for(engine, context, input_path, max_services, enabled=progress, json_logs=json_logs),
        ):
            if settings.mode != "live":
                waves = batch_runner(
                    context,
                    engine,
                    make_engine=make_engine,
                    wait=not no_wait,
                    resume=resume,
                )
            try:
                interrupted = asyncio.run(
                    _run_until_signal(engine, input_path, settings, max_services, resume=resume, waves=waves)
                )
            except PathError as exc:
                where = engine.report.written_to if engine.report is not None else None
                if where is None:
                    raise
                raise PathError(
                    f"{exc}; the records written before it are in {where} (run again with --resume)"
                ) from None
        report = engine.report
        if waves is not None:
            report = waves.outcome.report if waves.outcome is not None else waves.runner.engine.report
        if waves is not None and not interrupted and waves.outcome is not None and not waves.outcome.finished:
            waves.report_pending(summary_json=summary_json, quiet=quiet)
            if report is None or (not report.budget_exhausted and report.systemic is None):
                return  # exit 0: the batches run at the provider; --resume collects them
        if report is None:  # interrupted before the run started: nothing was written
            if waves is not None:
                raise Interrupted("interrupted: the submitted batches are recorded; --resume collects them")
            raise Interrupted("interrupted before any service started")
        data = summary_data(settings, report)
        if waves is not None:
            data["batches"] = waves.summary()
        if summary_json is not None:
            write_summary(summary_json, data)
        if not quiet:
            err(render_summary(data))
    finally:
        context.close()
    if interrupted:
        raise Interrupted(
            f"interrupted: every finished record was written to {report.written_to}; "
            "run again with --resume to continue"
        )
    _raise_for_outcome(settings, report)


def _start(
    settings: Settings, redactor: Redactor, *, debug: bool, shard: Shard | None
) -> tuple[RunContext, Callable[[], ProcessingEngine]]:
    """The run's context, and what makes its engines (batch mode makes one per pass)."""
    # here, not at the top: the engine, the models and their SDKs are slow to import (keeps --help fast)
    from service_ambitions.context import build_context  # noqa: PLC0415
    from service_ambitions.engine.engine import ProcessingEngine  # noqa: PLC0415

    context = build_context(settings, redactor=redactor)
    return context, lambda: ProcessingEngine(context, debug=debug, shard=shard)


async def _run_until_signal(
    engine: ProcessingEngine,
    input_path: Path,
    settings: Settings,
    max_services: int | None,
    *,
    resume: bool,
    waves: BatchRun | None = None,
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
        if waves is not None:
            await waves.run(input_path, settings.output_file, max_services=max_services)
        else:
            await engine.run(input_path, settings.output_file, max_services=max_services, resume=resume)
    except asyncio.CancelledError:
        if not received:
            raise
        return True
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
    return False


def parse_rate_limits(values: list[str]) -> dict[str, dict[str, int]]:
    """``openai:gpt-5-mini=rpm:500,tpm:200000`` → ``{"openai:gpt-5-mini": {"rpm": 500, "tpm": 200000}}``.

    Raises:
        UsageError: A value is not written MODEL=key:number[,key:number].
    """
    limits: dict[str, dict[str, int]] = {}
    for value in values:
        model, sep, spec = value.rpartition("=")
        if not sep or not model:
            raise UsageError(f"--rate-limit {value!r}: expected MODEL=rpm:N,tpm:N[,concurrency:N]")
        entry: dict[str, int] = {}
        for part in spec.split(","):
            key, colon, number = part.strip().partition(":")
            if not colon or key not in ("rpm", "tpm", "concurrency") or not number.isdigit():
                raise UsageError(f"--rate-limit {value!r}: {part!r} is not rpm:N, tpm:N or concurrency:N")
            entry[key] = int(number)
        limits[model] = entry
    return limits


def _raise_for_outcome(settings: Settings, report: RunReport) -> None:
    """Turn the run's outcome into its error class (and so its exit code); return when all is well.

    Raises:
        BudgetExhausted: The budget stopped admission (exit 4).
        SystemicFailure: Every call failed the same way, so the run stopped early (exit 1).
        RunFailures: Some service has no record, or --fail-on-quarantine and something was quarantined.
    """
    if report.budget_exhausted:
        raise BudgetExhausted(
            f"the run budget was reached; {report.services_ok} service(s) written to {report.written_to}; "
            "raise run_budget_usd and run again with --resume"
        )
    if report.systemic is not None:
        raise SystemicFailure(f"stopped early: {report.systemic}; fix the cause and run again with --resume")
    if report.without_record:
        raise RunFailures(
            f"{report.without_record} service(s) have no record (quarantined); "
            f"see: service-ambitions quarantine ls --output-file {settings.output_file}"
        )
    if settings.fail_on_quarantine and report.quarantined:
        raise RunFailures(f"{report.quarantined} quarantine entr(ies) and --fail-on-quarantine is set")


def _plan(
    context: RunContext, settings: Settings, input_path: Path, max_services: int | None, shard: Shard | None
) -> None:
    from service_ambitions.store.inputs import BadLine, read_services  # noqa: PLC0415

    valid = invalid = 0
    for item in read_services(input_path):
        service_id = item.service_id if isinstance(item, BadLine) else item.service.service_id
        if shard is not None and not shard.owns(service_id):
            continue
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
        f"dry run: {valid} service(s) to process{f' in shard {shard}' if shard is not None else ''} "
        f"({invalid} invalid line(s) would be quarantined); "
        f"{per_service} model calls per service, {valid * per_service} at most (cache hits cost nothing); "
        f"models {settings.stage_models()}; output {settings.output_file}"
    )


def _count_services(path: Path, max_services: int | None) -> int | None:
    """Lines of the input, counted in fixed-size blocks (for the progress bar and the estimate).

    Blank lines are counted too: an upper bound is fine for a progress bar, and this never holds
    more than one block however long a line is.
    """
    count = 0
    last = b"\n"
    try:
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                count += block.count(b"\n")
                last = block[-1:]
    except OSError:
        return None
    count += last != b"\n"  # a last line without a newline
    return min(count, max_services) if max_services is not None else count


@contextlib.contextmanager
def _progress_for(
    engine: ProcessingEngine,
    context: RunContext,
    input_path: Path,
    max_services: int | None,
    *,
    enabled: bool,
    json_logs: bool,
) -> Iterator[None]:
    from service_ambitions.observability.progress import RunProgress, progress_wanted  # noqa: PLC0415

    if not progress_wanted(sys.stderr, enabled=enabled, json_logs=json_logs):
        yield  # no display: do not read the input an extra time just to count it
        return
    # A shard's share of the lines is known only once they are read: no total, rather than a wrong one.
    total = _count_services(input_path, max_services) if engine.shard is None else None
    display = RunProgress(sys.stderr, total)

    def update(tally: RunTally, calls: Progress) -> None:
        done = tally.services_ok + tally.services_failed
        display.update(done=done, calls=calls.calls, cost=calls.cost_usd)

    engine.on_progress = update
    with display:
        yield


def _estimate(context: RunContext, settings: Settings, input_path: Path, max_services: int | None) -> None:
    from service_ambitions.engine.estimate import estimate_calls  # noqa: PLC0415

    if not input_path.exists():
        raise InputError(f"input file {settings.input_file} does not exist")
    services = _count_services(input_path, max_services) or 0
    rows = estimate_calls(context)
    total: Decimal | None = Decimal(0)
    typer.echo(f"estimate for {services} service(s) (no cache hits assumed):")
    for row in rows:
        usd = row.usd * services if row.usd is not None else None
        total = total + usd if total is not None and usd is not None else None
        typer.echo(
            f"  {row.stage:<13} {row.model:<32} {row.calls * services:>8} calls  "
            f"{row.input_tokens * services:>12} in  {row.output_tokens * services:>11} out  "
            + (f"${usd:.4f}" if usd is not None else "unpriced")
        )
    typer.echo(
        f"  total: {'$' + format(total, '.4f') if total is not None else 'unknown (a model is unpriced)'}"
    )
