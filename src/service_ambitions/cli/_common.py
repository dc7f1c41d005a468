"""Shared CLI plumbing: logging set-up, settings from flags, error → exit-code translation."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from service_ambitions.errors import ExitCode, ServiceAmbitionsError
from service_ambitions.settings import Settings, load_settings

__all__ = [
    "ConfigOption",
    "DataDirOption",
    "JsonLogsOption",
    "PromptDirOption",
    "QuietOption",
    "RolesFileOption",
    "VerboseOption",
    "exits",
    "nested",
    "settings_from_flags",
    "setup_logging",
]

P = ParamSpec("P")
R = TypeVar("R")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", help="YAML settings file (default: config/app.yaml when present).", show_default=False
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        "--mapping-data-dir",
        help="Reference data directory (plateaus, roles, catalogues, definitions). Default: the bundled one.",
        show_default=False,
    ),
]
PromptDirOption = Annotated[
    Path | None,
    typer.Option(
        "--prompt-dir", help="Prompt directory (templates, contexts, inspirations).", show_default=False
    ),
]
RolesFileOption = Annotated[
    Path | None,
    typer.Option("--roles-file", help="roles.json, or a directory holding it.", show_default=False),
]
VerboseOption = Annotated[
    int, typer.Option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
]
QuietOption = Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")]
JsonLogsOption = Annotated[bool, typer.Option("--json-logs", help="Log JSON lines on stderr, for machines.")]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("service_id", "stage", "model_name", "request_id"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(*, verbose: int = 0, quiet: bool = False, json_logs: bool = False) -> None:
    """Logs go to stderr only; stdout carries data."""
    level = (
        logging.ERROR
        if quiet
        else logging.DEBUG
        if verbose >= 2
        else logging.INFO
        if verbose
        else logging.WARNING
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if json_logs else logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger("service_ambitions")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def nested(**values: Any) -> dict[str, Any]:
    """Drop unset flags; ``models__features=x`` becomes ``{"models": {"features": x}}``."""
    result: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        node = result
        *parents, leaf = key.split("__")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return result


def settings_from_flags(config: Path | None, **flags: Any) -> Settings:
    """Settings with command-line flags applied on top of every other source."""
    from service_ambitions.llm.providers import export_dotenv_provider_keys  # noqa: PLC0415

    export_dotenv_provider_keys()
    return load_settings(config, nested(**flags))


def err(message: str) -> None:
    """Write a message for people on stderr."""
    typer.echo(message, err=True)


def exits(func: Callable[P, R]) -> Callable[P, R]:
    """Translate the tool's errors to their exit codes, with a one-line message (never a traceback)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ServiceAmbitionsError as exc:
            err(f"error: {exc}")
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            err("interrupted: completed records were kept")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None

    return wrapper
