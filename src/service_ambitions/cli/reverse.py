"""``service-ambitions reverse``: a features file and cache entries from an existing evolutions file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service_ambitions.cli._common import (
    ConfigOption,
    DataDirOption,
    JsonLogsOption,
    PromptDirOption,
    QuietOption,
    RolesFileOption,
    VerboseOption,
    build_redactor,
    err,
    exits,
    settings_from_flags,
    setup_logging,
)
from service_ambitions.cli._options import (
    CacheDirOption,
    CacheMode,
    ContextIdOption,
    DescriptionsModelOption,
    FeaturesModelOption,
    InspirationOption,
    MappingModelOption,
)
from service_ambitions.errors import InputError

if TYPE_CHECKING:
    from service_ambitions.engine.reverse import ReverseReport

__all__ = ["reverse"]

_LISTED = 10  # service ids named per reason


def _summary(report: ReverseReport, source: Path, output: Path) -> list[str]:
    lines = [f"reverse: {report.records} record(s) from {source} written to {output} (features, no mappings)"]
    lines.extend(f"reverse: {source}:{bad.line}: skipped: {bad.reason}" for bad in report.bad_lines)
    if report.cache_off:
        lines.append("reverse: --cache-mode off: nothing was stored in the cache")
    else:
        seeded = sum(report.seeded.values())
        by_stage = ", ".join(f"{label} {count}" for label, count in sorted(report.seeded.items()))
        lines.append(
            f"reverse: cache: {seeded} answer(s) stored"
            + (f" ({by_stage})" if by_stage else "")
            + f", {report.present} already there"
        )
    for label, reason in sorted(report.not_matching.items()):
        lines.append(f"reverse: not stored: {label} answers: {reason}")
    for reason, services in sorted(report.unreproducible.items()):
        shown = ", ".join(services[:_LISTED]) + (
            f" and {len(services) - _LISTED} more" if len(services) > _LISTED else ""
        )
        lines.append(f"reverse: skipped for {len(services)} record(s): {reason} ({shown})")
    if report.notes is not None:
        lines.extend(
            f"reverse: {source} is schema 1.0 (migrated in memory): {line}" for line in report.notes.summary()
        )
    return lines


@exits
def reverse(
    input_file: Annotated[
        Path,
        typer.Option("--input-file", help="The evolutions file (schema 1.1, or 1.0: migrated in memory)."),
    ] = Path("evolutions.jsonl"),
    output_file: Annotated[
        Path, typer.Option("--output-file", help="The features file to write (what `map` reads).")
    ] = Path("features.jsonl"),
    config: ConfigOption = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model for every stage, as `run` would use it.")
    ] = None,
    descriptions_model: DescriptionsModelOption = None,
    features_model: FeaturesModelOption = None,
    mapping_model: MappingModelOption = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed, as `run` would use it.")] = None,
    cache_mode: Annotated[
        CacheMode | None,
        typer.Option(
            "--cache-mode", help="read (default) and write keep entries already there; refresh replaces them."
        ),
    ] = None,
    cache_dir: CacheDirOption = None,
    data_dir: DataDirOption = None,
    prompt_dir: PromptDirOption = None,
    roles_file: RolesFileOption = None,
    context_id: ContextIdOption = None,
    inspiration: InspirationOption = None,
    json_logs: JsonLogsOption = False,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Rebuild a features file and the answer cache from an existing evolutions file; calls no model.

    Every record goes to the features file (descriptions and features as they are, without mappings).
    The descriptions, features and mapping answers the file implies are stored in the answer cache under
    the keys a `run` with the current settings computes, so that a later `run` (or `map`) with the same
    input, settings and content reuses them: no model call at all, or only the mapping calls when the
    catalogues changed. Stages whose models, settings, prompts or content differ from the file's are
    reported and not stored, and so are answers that would not read back exactly as recorded.
    Exit 0; 3 when the input is missing or not an evolutions file, or a line of it could not be read
    (the other records are written); 2 for a path that cannot be written.

    Examples:

    \b
        service-ambitions reverse --input-file evolutions.jsonl --output-file features.jsonl
        service-ambitions reverse --cache-dir shared-cache && service-ambitions run --cache-dir shared-cache
    """
    from service_ambitions.cli import _paths  # noqa: PLC0415
    from service_ambitions.engine.reverse import reverse_file  # noqa: PLC0415
    from service_ambitions.store.lock import output_lock  # noqa: PLC0415

    redactor = build_redactor()
    setup_logging(verbose=verbose, quiet=quiet, json_logs=json_logs, redactor=redactor)
    settings = settings_from_flags(
        config,
        model=model,
        models__descriptions=descriptions_model,
        models__features=features_model,
        models__mapping=mapping_model,
        seed=seed,
        cache_mode=cache_mode,
        cache_dir=cache_dir,
        data_dir=data_dir,
        prompt_dir=prompt_dir,
        roles_file=roles_file,
        context_id=context_id,
        inspiration=inspiration,
    )
    _paths.check_readable_file("--input-file", input_file, error=InputError)
    _paths.check_distinct({"--output-file": output_file, "--input-file": input_file})
    _paths.check_writable_file("--output-file", output_file)
    if settings.cache_mode != "off":
        _paths.check_writable_dir("--cache-dir", settings.cache_dir)
    from service_ambitions.context import build_context  # noqa: PLC0415

    # reverse computes cache keys and calls no model: no provider key is needed.
    context = build_context(settings, redactor=redactor, keys_for=())
    try:
        with output_lock(output_file, command="reverse"):
            report = reverse_file(context, input_file, output_file)
    finally:
        context.close()
    if not quiet:
        for line in _summary(report, input_file, output_file):
            err(line)
    if report.bad_lines:
        raise InputError(
            f"{len(report.bad_lines)} line(s) of {input_file} could not be read and were left out "
            f"(first: line {report.bad_lines[0].line}); the other records were written to {output_file}"
        )
