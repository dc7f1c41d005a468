"""``service-ambitions quarantine ls|show|rm``: inspect and clear what a run set aside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service_ambitions.cli._common import err, exits, setup_logging
from service_ambitions.errors import InputError, UsageError

if TYPE_CHECKING:
    from service_ambitions.store.quarantine import QuarantineStore

__all__ = ["quarantine_app"]

quarantine_app = typer.Typer(
    help="Inspect and clear quarantine entries (they belong to one output file).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
OutputOption = Annotated[
    Path,
    typer.Option("--output-file", help="The output file whose quarantine to use."),
]


def _store(output_file: Path) -> QuarantineStore:
    """The quarantine of ``output_file``; warnings (files that are not entries) go to stderr.

    Raises:
        InputError: Neither the output file nor its quarantine directory exists (a mistyped path).
    """
    # pydantic models: imported when a command runs, not for --help
    from service_ambitions.store.quarantine import QuarantineStore, quarantine_dir_for  # noqa: PLC0415

    setup_logging()
    directory = quarantine_dir_for(output_file)
    if not output_file.exists() and not directory.exists():
        raise InputError(f"output file {output_file} does not exist (nor its quarantine {directory})")
    return QuarantineStore(directory)


@quarantine_app.command("ls")
@exits
def ls(
    output_file: OutputOption = Path("evolutions.jsonl"),
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List entries: id, service, stage, kind and error.

    Files in the quarantine directory that are not entries are named in a warning and skipped. Exit 3
    when the output file does not exist (and has no quarantine directory).

    Example:

    \b
        service-ambitions quarantine ls --output-file out/evolutions.jsonl
    """
    entries = list(_store(output_file).entries())
    for entry in entries:
        if as_json:
            typer.echo(entry.model_dump_json(exclude={"payload"}))
        else:
            error = entry.error if len(entry.error) <= 100 else entry.error[:97] + "..."
            typer.echo(f"{entry.id}\t{entry.service_id or '-'}\t{entry.stage}\t{entry.kind}\t{error}")
    err(f"{len(entries)} quarantine entr{'y' if len(entries) == 1 else 'ies'} for {output_file}")


@quarantine_app.command("show")
@exits
def show(
    entry_id: Annotated[str, typer.Argument(help="Entry id (or a unique prefix).")],
    output_file: OutputOption = Path("evolutions.jsonl"),
) -> None:
    """Print one entry in full, payload included (JSON).

    Exit 2 when no entry matches or the prefix is ambiguous, 3 when the output file does not exist.
    """
    entry = _store(output_file).get(entry_id)
    if entry is None:
        raise UsageError(f"no quarantine entry {entry_id!r} (or the prefix is ambiguous) for {output_file}")
    typer.echo(json.dumps(entry.model_dump(mode="json"), indent=2, ensure_ascii=False))


@quarantine_app.command("rm")
@exits
def rm(
    entry_ids: Annotated[list[str] | None, typer.Argument(help="Entry ids (or unique prefixes).")] = None,
    service: Annotated[
        list[str] | None, typer.Option("--service", help="Remove every entry of this service.")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Remove every entry.")] = False,
    output_file: OutputOption = Path("evolutions.jsonl"),
) -> None:
    """Remove entries; `run --resume` then processes those services again.

    All or nothing: when an id matches no entry (or several), or a --service has none, nothing is removed
    and each is named (exit 2). Exit 3 when the output file does not exist (and has no quarantine).

    Examples:

    \b
        service-ambitions quarantine rm 3f2a9c1b0d4e
        service-ambitions quarantine rm --service SVC-ADM-001
        service-ambitions quarantine rm --all
    """
    from service_ambitions.store.quarantine import matching  # noqa: PLC0415

    if not (entry_ids or service or everything):
        raise UsageError("say what to remove: entry ids, --service S or --all")
    store = _store(output_file)
    entries = list(store.entries())
    chosen = {entry.id: entry for entry in entries} if everything else {}
    problems: list[str] = []
    for service_id in service or []:
        of_service = [entry for entry in entries if entry.service_id == service_id]
        if not of_service:
            problems.append(f"no entries for service {service_id!r}")
        chosen.update((entry.id, entry) for entry in of_service)
    for entry_id in entry_ids or []:
        matches = matching(entries, entry_id)
        if len(matches) == 1:
            chosen[matches[0].id] = matches[0]
        else:
            problems.append(f"{'ambiguous prefix' if matches else 'no entry'} {entry_id!r}")
    if problems:
        # All or nothing: a typo must not leave the quarantine half cleared.
        raise UsageError(f"removed nothing from the quarantine of {output_file}: " + "; ".join(problems))
    removed = store.discard(list(chosen.values()))
    typer.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'}")
