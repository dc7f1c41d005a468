"""``service-ambitions preflight``: is this machine ready to run? (keys, directories, content)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from service_ambitions.cli._common import ConfigOption, DataDirOption, err, exits, settings_from_flags
from service_ambitions.cli._paths import check_writable_dir, check_writable_file
from service_ambitions.errors import ServiceAmbitionsError, UsageError

__all__ = ["preflight"]


def _path_problems(output_file: Path, cache_dir: Path) -> tuple[list[str], list[str]]:
    """Check what a run writes: the output file, then its quarantine directory, and the cache directory.

    Returns:
        The checks passed and the problems found, one line each.
    """
    from service_ambitions.store.quarantine import quarantine_dir_for  # noqa: PLC0415

    checks: list[tuple[str, Path, Callable[[str, Path], None]]] = [
        ("--output-file", output_file, check_writable_file),
        ("quarantine directory", quarantine_dir_for(output_file), check_writable_dir),
        ("--cache-dir", cache_dir, check_writable_dir),
    ]
    passed: list[str] = []
    problems: list[str] = []
    for option, path, check in checks:
        if option == "quarantine directory" and problems:
            continue  # it sits next to the output: the output's problem says it all
        try:
            check(option, path)
        except ServiceAmbitionsError as exc:
            problems.append(str(exc))
        else:
            passed.append(f"writable: {option} {path}")
    return passed, problems


@exits
def preflight(
    config: ConfigOption = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Check this model instead of the configured one.")
    ] = None,
    output_file: Annotated[Path | None, typer.Option("--output-file", help="Output file to check.")] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Cache directory to check.")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Check provider keys for the configured models, that output and cache paths are writable, and content.

    Writability is probed with a temporary file; nothing is created. Exit 0 when ready, 2 otherwise.
    Never calls a model.
    """
    # imported here, not at the top: the content, providers and their SDKs are slow to import
    from service_ambitions.context import build_content  # noqa: PLC0415
    from service_ambitions.llm.providers import check_provider_keys  # noqa: PLC0415

    settings = settings_from_flags(
        config, model=model, output_file=output_file, cache_dir=cache_dir, data_dir=data_dir
    )
    problems: list[str] = []
    checks: list[str] = []
    try:
        check_provider_keys(settings)
        checks.append(f"provider keys: present for {sorted(set(settings.stage_models().values()))}")
    except ServiceAmbitionsError as exc:
        problems.append(str(exc))
    passed, failed = _path_problems(settings.output_file, settings.cache_dir)
    checks += passed
    problems += failed
    try:
        content = build_content(settings)
        checks.append(
            f"content: {len(content.plateaus)} plateaus, {len(content.roles)} roles, "
            + ", ".join(f"{cat.field} ({len(cat.items)} items)" for cat in content.catalogues)
        )
    except ServiceAmbitionsError as exc:
        problems.append(str(exc))
    for line in checks:
        err(f"ok    {line}")
    for line in problems:
        err(f"FAIL  {line}")
    if problems:
        raise UsageError(f"preflight: {len(problems)} check(s) failed; not ready")
    err(f"preflight: ready (pid {os.getpid()})")
