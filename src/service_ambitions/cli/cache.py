"""``service-ambitions cache validate|purge``: check and trim the response cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service_ambitions._units import parse_duration, parse_size
from service_ambitions.cli._common import ConfigOption, err, exits, settings_from_flags
from service_ambitions.errors import IntegrityError, UsageError

if TYPE_CHECKING:
    from service_ambitions.store.cache import ResponseCache

__all__ = ["cache_app"]

cache_app = typer.Typer(
    help="Check and trim the response cache.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
CacheDirOption = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Cache directory. [default: from settings]", show_default=False),
]


def _open(config: Path | None, cache_dir: Path | None) -> ResponseCache:
    """The existing cache the flags name; never creates one."""
    from service_ambitions.store.cache import ResponseCache  # noqa: PLC0415

    settings = settings_from_flags(config, cache_dir=cache_dir)
    return ResponseCache.existing(settings.cache_dir)


@cache_app.command("validate")
@exits
def validate(
    config: ConfigOption = None,
    cache_dir: CacheDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print findings as JSON lines.")] = False,
) -> None:
    """Verify every cache entry against its SHA-256; list corrupt, missing, orphan and temp files.

    Findings go to stdout (one per line); exit 0 when clean, 5 when there is any finding (an unusable
    manifest.sqlite3 is one: `cache purge` rebuilds it). Changes nothing. Exit 2 when there is no cache at
    the directory: it does not exist, is empty, is a file, or holds other files but no manifest.sqlite3.

    Example:
        service-ambitions cache validate --cache-dir ~/.cache/service-ambitions
    """
    cache = _open(config, cache_dir)
    try:
        findings = cache.validate()
    finally:
        cache.close()
    for finding in findings:
        if as_json:
            typer.echo(
                json.dumps({"kind": finding.kind, "path": str(finding.path), "detail": finding.detail})
            )
        else:
            typer.echo(f"{finding.kind}\t{finding.path}\t{finding.detail}")
    if findings:
        raise IntegrityError(f"cache validate: {len(findings)} finding(s) in {cache.directory}")
    err(f"cache validate: 0 finding(s) in {cache.directory}")


@cache_app.command("purge")
@exits
def purge(
    config: ConfigOption = None,
    cache_dir: CacheDirOption = None,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Remove entries unused for this long (e.g. 7d, 12h).")
    ] = None,
    max_size: Annotated[
        str | None,
        typer.Option("--max-size", help="Then remove least recently used entries down to this size."),
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Remove every entry.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would be removed; remove nothing.")
    ] = False,
) -> None:
    """Remove old or excess cache entries (corrupt entries and stray files are always removed).

    An unusable manifest.sqlite3 is replaced by a fresh one (deleted under --all, else moved aside to
    manifest.sqlite3.corrupt-<n>); the payloads it described are then removed as orphans. Exit 2 when
    there is no cache at the directory (as for `cache validate`).

    Examples:
        service-ambitions cache purge --older-than 30d

        service-ambitions cache purge --max-size 500MB --dry-run
    """
    if not (older_than or max_size or everything):
        raise UsageError("say what to purge: --older-than, --max-size and/or --all")
    try:
        age = parse_duration(older_than) if older_than else None
        size = parse_size(max_size) if max_size else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cache = _open(config, cache_dir)
    try:
        problem = cache.manifest_problem
        if problem is not None and dry_run:
            err(f"cache purge: the manifest {cache.manifest_path} {problem}; would start a fresh one")
        elif problem is not None:
            existed = os.path.lexists(cache.manifest_path)
            moved = cache.rebuild_manifest(keep_old=not everything)
            fate = f"moved it to {moved} and " if moved else "removed it and " if existed else ""
            err(f"cache purge: the manifest {cache.manifest_path} {problem}; {fate}started a fresh one")
        result = cache.purge(older_than=age, max_size=size, everything=everything, dry_run=dry_run)
    finally:
        cache.close()
    verb = "would remove" if dry_run else "removed"
    typer.echo(
        f"{verb} {result.entries} entr{'y' if result.entries == 1 else 'ies'}, {result.bytes} bytes"
        + (f", {result.files} stray file(s)" if result.files else "")
    )
