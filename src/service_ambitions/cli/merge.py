"""``service-ambitions merge``: combine the outputs of ``run --shard K/N`` into one output, in input order."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service_ambitions.cli import _paths
from service_ambitions.cli._common import (
    JsonLogsOption,
    QuietOption,
    VerboseOption,
    build_redactor,
    err,
    exits,
    setup_logging,
)
from service_ambitions.errors import InputError, RunFailures
from service_ambitions.store.lock import output_lock
from service_ambitions.store.spool import STDIN, spooled_input

if TYPE_CHECKING:
    from service_ambitions.store.merge import MergeReport

__all__ = ["merge"]


@exits
def merge(
    shard_outputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="SHARD_OUTPUTS",
            help="The output files of `run --shard K/N` (each with its quarantine beside it), in any order.",
            show_default=False,
        ),
    ],
    input_file: Annotated[
        Path,
        typer.Option("--input-file", help="The services file the shards were made from ('-' for stdin)."),
    ] = Path("services.jsonl"),
    output_file: Annotated[Path, typer.Option("--output-file", help="The merged output file.")] = Path(
        "evolutions.jsonl"
    ),
    allow_missing: Annotated[
        bool,
        typer.Option(
            "--allow-missing",
            help="Input services with no record in any shard (failed, or in a shard not given): exit 0.",
        ),
    ] = False,
    json_logs: JsonLogsOption = False,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Merge shard outputs into one output in input order, with one header and one quarantine.

    The shards must come from one run (same settings, schema, catalogues and input: exit 3 names what
    differs); their records are copied byte for byte, so the result equals an unsharded run's records.
    Input services with no record are listed on stderr (exit 1 unless --allow-missing); a service
    recorded twice, or in the wrong shard, is an error (exit 3).

    Examples:

    \b
        service-ambitions merge out/shard-*.jsonl --input-file services.jsonl --output-file evolutions.jsonl
        service-ambitions merge a.jsonl b.jsonl --input-file services.jsonl --allow-missing
    """
    from service_ambitions.store.merge import merge_shards  # noqa: PLC0415  (pydantic models: keeps --help fast)

    redactor = build_redactor()
    setup_logging(verbose=verbose, quiet=quiet, json_logs=json_logs, redactor=redactor)
    _check_paths(shard_outputs, input_file, output_file)
    with output_lock(output_file, command="merge"), spooled_input(input_file) as input_path:
        report = merge_shards(
            shard_outputs, input_path, output_file, input_name=input_file, redact=redactor.redact_obj
        )
    _finish(report, allow_missing=allow_missing, quiet=quiet)


def _check_paths(shards: list[Path], input_file: Path, output_file: Path) -> None:
    """The output is none of the inputs and can be written; every input exists.

    Raises:
        PathError: The output is an input, or it (or its quarantine) cannot be written.
        InputError: The input or a shard output is missing or unreadable.
    """
    from service_ambitions.store.quarantine import quarantine_dir_for  # noqa: PLC0415  (keeps --help fast)

    named: dict[str, Path | None] = {"--input-file": None if input_file == STDIN else input_file}
    for number, path in enumerate(shards, start=1):
        named[f"shard output #{number}"] = path
    named["--output-file"] = output_file  # last: the refusal names it first
    _paths.check_distinct(named)
    _paths.check_writable_file("--output-file", output_file)
    _paths.check_writable_dir("quarantine", quarantine_dir_for(output_file))
    if input_file != STDIN:
        _paths.check_readable_file("--input-file", input_file, error=InputError)
    for path in shards:
        _paths.check_readable_file("shard output", path, error=InputError)


def _finish(report: MergeReport, *, allow_missing: bool, quiet: bool) -> None:
    """List what is missing and summarise on stderr; exit 1 when services are missing (unless allowed).

    Raises:
        RunFailures: Services have no record and ``--allow-missing`` is not given.
    """
    count = report.shards[0].count if report.shards else 0
    if not (quiet and allow_missing):
        for shard in report.absent:
            err(f"warning: shard {shard} was not given: its services are missing")
        for item in report.missing:
            err(f"missing: {item.service_id} ({item.reason})")
    if not quiet:
        err(
            f"merged {report.records} record(s) from {len(report.shards)} of {count} shard(s) into "
            f"{report.output}; {report.quarantined} quarantine entr(ies); {len(report.missing)} missing"
        )
    if report.missing and not allow_missing:
        raise RunFailures(
            f"{len(report.missing)} input service(s) have no record in the shards (listed above); "
            f"{report.output} holds the others; pass --allow-missing to accept that"
        )
