"""``service-ambitions quarantine ls|show|rm``: inspect and clear what a run set aside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from service_ambitions.cli._common import err, exits
from service_ambitions.errors import UsageError
from service_ambitions.store.quarantine import QuarantineStore, quarantine_dir_for

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
    return QuarantineStore(quarantine_dir_for(output_file))


@quarantine_app.command("ls")
@exits
def ls(
    output_file: OutputOption = Path("evolutions.jsonl"),
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List entries: id, service, stage, kind and error.

    Example:

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
    """Print one entry in full, payload included (JSON)."""
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

    Examples:

        service-ambitions quarantine rm 3f2a9c1b0d4e

        service-ambitions quarantine rm --service SVC-ADM-001

        service-ambitions quarantine rm --all
    """
    if not (entry_ids or service or everything):
        raise UsageError("say what to remove: entry ids, --service S or --all")
    store = _store(output_file)
    removed = 0
    if everything:
        for entry in list(store.entries()):
            removed += store.remove(entry.id)
    for service_id in service or []:
        for entry in [entry for entry in store.entries() if entry.service_id == service_id]:
            removed += store.remove(entry.id)
    for entry_id in entry_ids or []:
        if not store.remove(entry_id):
            raise UsageError(f"no quarantine entry {entry_id!r} (or an ambiguous prefix) for {output_file}")
        removed += 1
    typer.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'}")
