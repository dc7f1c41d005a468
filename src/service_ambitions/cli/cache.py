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
    from service_ambitions.store.cache import Finding, ResponseCache

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


def _echo(finding: Finding, *, as_json: bool, action: str | None = None) -> None:
    """One finding on stdout: ``kind<TAB>path<TAB>detail``, after ``action`` when given, or as JSON."""
    if as_json:
        data = {"kind": finding.kind, "path": str(finding.path), "detail": finding.detail}
        typer.echo(json.dumps(data if action is None else {"action": action, **data}))
    else:
        typer.echo(
            "\t".join([*([action] if action else []), finding.kind, str(finding.path), finding.detail])
        )


def _repair(cache: ResponseCache, *, command: str, as_json: bool = False, dry_run: bool = False) -> None:
    """Remove exactly the findings of `cache validate`, list each on stdout, and check the cache again.

    Raises:
        IntegrityError: Findings remain after the repair (another process is writing them, say).
    """
    repaired = cache.repair(dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for finding in repaired.findings:
        _echo(finding, as_json=as_json, action=verb)
    if repaired.manifest_moved is not None:
        err(f"{command}: moved the unusable manifest to {repaired.manifest_moved} and started a fresh one")
    if dry_run:
        err(f"{command}: would remove {len(repaired.findings)} finding(s) in {cache.directory}")
        return
    remaining = cache.validate()
    for finding in remaining:
        _echo(finding, as_json=as_json)
    if remaining:
        raise IntegrityError(f"{command}: {len(remaining)} finding(s) remain in {cache.directory}")
    err(
        f"{command}: removed {len(repaired.findings)} finding(s) ({repaired.purged.entries} "
        f"entr{'y' if repaired.purged.entries == 1 else 'ies'}, {repaired.purged.files} file(s), "
        f"{repaired.purged.bytes} bytes); {cache.directory} is clean"
    )


@cache_app.command("validate")
@exits
def validate(
    config: ConfigOption = None,
    cache_dir: CacheDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print findings as JSON lines.")] = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Remove exactly what is found (broken entries, stray files, an unusable manifest).",
        ),
    ] = False,
) -> None:
    """Verify every cache entry against its SHA-256; list corrupt, missing, orphan and temp files.

    Findings go to stdout (one per line); exit 0 when clean, 5 when there is any finding (an unusable
    manifest.sqlite3 is one). Changes nothing, unless --repair: then each finding is removed and listed
    as `removed<TAB>kind<TAB>path<TAB>detail`, the cache is checked again, and the exit is 0 when it is
    clean (5 when findings remain). Entries that verify are never removed. Exit 2 when there is no cache
    at the directory: it does not exist, is empty, is a file, or holds other files but no manifest.sqlite3.

    Examples:

    \b
        service-ambitions cache validate --cache-dir ~/.cache/service-ambitions
        service-ambitions cache validate --repair
    """
    cache = _open(config, cache_dir)
    try:
        if repair:
            _repair(cache, command="cache validate --repair", as_json=as_json)
            return
        findings = cache.validate()
    finally:
        cache.close()
    for finding in findings:
        _echo(finding, as_json=as_json)
    if findings:
        raise IntegrityError(
            f"cache validate: {len(findings)} finding(s) in {cache.directory} "
            "(`cache validate --repair` removes them)"
        )
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

    With no selector, removes exactly what `cache validate` reports, like `cache validate --repair`
    (each removal listed on stdout; exit 0 when the cache is clean afterwards, 5 when findings remain).
    An unusable manifest.sqlite3 is replaced by a fresh one (deleted under --all, else moved aside to
    manifest.sqlite3.corrupt-<n>); the payloads it described are then removed as orphans. Exit 2 when
    there is no cache at the directory (as for `cache validate`).

    Examples:

    \b
        service-ambitions cache purge --older-than 30d
        service-ambitions cache purge --max-size 500MB --dry-run
        service-ambitions cache purge
    """
    if not (older_than or max_size or everything):
        cache = _open(config, cache_dir)
        try:
            _repair(cache, command="cache purge", dry_run=dry_run)
        finally:
            cache.close()
        return
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
