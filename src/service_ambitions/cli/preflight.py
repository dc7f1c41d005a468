"""``service-ambitions preflight``: is this machine ready to run? (keys, directories, content)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from service_ambitions.cli._common import ConfigOption, DataDirOption, err, exits, settings_from_flags
from service_ambitions.context import build_content
from service_ambitions.errors import ExitCode, ServiceAmbitionsError
from service_ambitions.llm.providers import check_provider_keys

__all__ = ["preflight"]


def _writable(directory: Path) -> str | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".preflight-"):
            pass
    except OSError as exc:
        return f"{directory} is not writable: {exc.strerror or exc}"
    return None


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
    """Check provider keys for the configured models, that directories are writable and content loads.

    Exit 0 when ready, 2 otherwise. Never calls a model.
    """
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
    for directory in (settings.cache_dir, settings.output_file.resolve().parent):
        problem = _writable(directory)
        if problem:
            problems.append(problem)
        else:
            checks.append(f"writable: {directory}")
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
        raise typer.Exit(int(ExitCode.USAGE))
    err(f"preflight: ready (pid {os.getpid()})")
