"""Shared CLI plumbing: logging set-up, settings from flags, error → exit-code translation."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer

from service_ambitions.errors import ExitCode, ServiceAmbitionsError

__all__ = [
    "ConfigOption",
    "DataDirOption",
    "DebugOption",
    "JsonLogsOption",
    "PromptDirOption",
    "QuietOption",
    "RolesFileOption",
    "VerboseOption",
    "check_run_paths",
    "exits",
    "nested",
    "settings_from_flags",
    "setup_logging",
]

if TYPE_CHECKING:
    from service_ambitions.observability.redaction import Redactor
    from service_ambitions.settings import Settings

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
DebugOption = Annotated[
    bool,
    typer.Option(
        "--debug",
        help="Let unexpected errors raise with their traceback (for bug reports; may show paths and data).",
    ),
]


_TRACE_KEYS = ("request_id", "provider_response_id")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("service_id", "stage", "model_name", *_TRACE_KEYS):
            if getattr(record, key, None) is not None:
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def __init__(self, *, trace_ids: bool) -> None:
        super().__init__("%(levelname)s %(message)s")
        self.trace_ids = trace_ids

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.trace_ids:
            ids = [f"{key}={getattr(record, key)}" for key in _TRACE_KEYS if getattr(record, key, None)]
            if ids:
                text += f" [{' '.join(ids)}]"
        return text


def _level(verbose: int, quiet: bool) -> int:
    if quiet:
        return logging.ERROR
    if verbose >= 2:
        return logging.DEBUG
    return logging.INFO if verbose else logging.WARNING


def build_redactor() -> Redactor:
    """The run's redactor, from the environment (``SA_REDACTION_PATTERNS`` adds patterns).

    Raises:
        ConfigError: An extra pattern does not compile (names it).
    """
    from service_ambitions.observability.redaction import Redactor  # noqa: PLC0415

    return Redactor.from_environment(os.environ)


def setup_logging(
    *,
    verbose: int = 0,
    quiet: bool = False,
    json_logs: bool = False,
    trace_ids: bool = False,
    redactor: Redactor | None = None,
) -> None:
    """Logs go to stderr only; stdout carries data. Every record is redacted before it is written."""
    from service_ambitions.observability.redaction import RedactingFilter  # noqa: PLC0415
    from service_ambitions.observability.tracing import RequestIdFilter  # noqa: PLC0415

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if json_logs else _TextFormatter(trace_ids=trace_ids))
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactingFilter(redactor or _safe_redactor()))
    root = logging.getLogger("service_ambitions")
    root.handlers[:] = [handler]
    root.setLevel(_level(verbose, quiet))
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
    # here, not at the top: pydantic-settings and the providers are slow to import (keeps --help fast)
    from service_ambitions.llm.providers import export_dotenv_provider_keys  # noqa: PLC0415
    from service_ambitions.settings import load_settings  # noqa: PLC0415

    export_dotenv_provider_keys()
    return load_settings(config, nested(**flags))


def _safe_redactor() -> Redactor:
    """The environment's redactor, or the built-in one when extra patterns are invalid."""
    from service_ambitions.errors import ConfigError  # noqa: PLC0415
    from service_ambitions.observability.redaction import Redactor  # noqa: PLC0415

    try:
        return Redactor.from_environment(os.environ)
    except ConfigError:
        return Redactor()


def err(message: str) -> None:
    """Write a message for people on stderr (redacted: error texts can quote keys)."""
    typer.echo(_safe_redactor().redact(message), err=True)


def exits(func: Callable[P, R]) -> Callable[P, R]:
    """Translate errors to their exit codes with a one-line message (never a traceback).

    The tool's own errors carry their exit code. An ``OSError`` that escaped is a path problem
    (exit 2). Anything else is a bug: one line naming it (exit 1), or, under ``--debug``, the
    exception itself with its traceback.
    """

    has_debug = "debug" in inspect.signature(func).parameters

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ServiceAmbitionsError as exc:
            err(f"error: {exc}")
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            err("interrupted")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except (typer.Exit, typer.Abort):
            raise
        except OSError as exc:
            if kwargs.get("debug"):
                raise
            where = f" {exc.filename}" if exc.filename else ""
            err(f"error: cannot use{where}: {exc.strerror or exc}")
            raise typer.Exit(int(ExitCode.USAGE)) from None
        except Exception as exc:
            if kwargs.get("debug"):
                raise
            hint = " (run again with --debug for the traceback)" if has_debug else ""
            err(f"internal error: {type(exc).__name__}: {exc}{hint}")
            raise typer.Exit(int(ExitCode.FAILURES)) from None

    return wrapper


def check_run_paths(
    settings: Settings,
    summary_json: Path | None,
    *,
    inputs: Mapping[str, Path | None] | None = None,
    output_to_stdout: bool = False,
) -> None:
    """Refuse, before anything is opened for writing, paths that would lose data or cannot work.

    Args:
        settings: Gives the output file, the cache directory and mode.
        summary_json: The ``--summary-json`` file, if any.
        inputs: The files the command reads, by option (default: ``--input-file``); ``-`` is stdin.
        output_to_stdout: ``--output-file -`` writes to stdout (``map``): no output file to check.

    Raises:
        PathError: The output or summary is one of the inputs (or each other), or a path cannot be written.
    """
    from service_ambitions.cli import _paths  # noqa: PLC0415
    from service_ambitions.store.quarantine import quarantine_dir_for  # noqa: PLC0415
    from service_ambitions.store.spool import STDIN  # noqa: PLC0415

    output = settings.output_file
    writes_file = not (output_to_stdout and output == Path("-"))
    named: dict[str, Path | None] = {"--output-file": output if writes_file else None}
    for option, path in (inputs if inputs is not None else {"--input-file": settings.input_file}).items():
        named[option] = None if path == STDIN else path
    named["--summary-json"] = summary_json
    _paths.check_distinct(named)
    if writes_file:
        _paths.check_writable_file("--output-file", output)
    _paths.check_writable_dir("quarantine", quarantine_dir_for(output))
    if summary_json is not None:
        _paths.check_writable_file("--summary-json", summary_json)
    if settings.cache_mode != "off":
        _paths.check_writable_dir("--cache-dir", settings.cache_dir)
