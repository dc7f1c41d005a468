"""``--help`` stays fast: importing the CLI app, or asking any command for its help, loads no heavy module.

The settings (pydantic-settings), the gateway (pydantic-ai and the provider SDKs), telemetry (logfire,
OpenTelemetry), the engine and the report (Jinja2, XlsxWriter) are imported inside the commands that use
them. Each check runs in a fresh interpreter, since this test process has imported everything already.
``scripts/bench.py`` measures the time itself.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from typing import Any

from typer import _click  # Typer vendors Click; get_command returns its Command
from typer.core import TyperGroup
from typer.main import get_command

from service_ambitions.cli.app import app
from service_ambitions.cli.migrate import migrate
from service_ambitions.domain.output import SCHEMA_VERSION

HEAVY = (
    "pydantic_settings",
    "logfire",
    "pydantic_ai",
    "openai",
    "anthropic",
    "google",
    "genai_prices",
    "httpx",
    "httpx2",
    "opentelemetry",
    "jinja2",
    "xlsxwriter",
    "service_ambitions.settings",
    "service_ambitions.context",
    "service_ambitions.llm",
    "service_ambitions.engine",
    "service_ambitions.report",
    "service_ambitions.content",
    "service_ambitions.domain",
)
"""Packages (and their submodules) that no ``--help`` may import."""

IMPORT_ONLY = ("pydantic",)
"""Not even imported with the app: defining a model loads pydantic's plugins, logfire's among them.
(Typer itself imports pydantic, plugins disabled, to build a command's options, so a command's
``--help`` does load it.)"""

PROBE = r"""
import contextlib, io, json, sys

heavy, commands, preload = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]


def loaded(names):
    return sorted(m for m in sys.modules if any(m == name or m.startswith(name + ".") for name in names))


import service_ambitions.cli.app

if preload:
    __import__(preload)
found = {"import": loaded(heavy["import"])}
from service_ambitions.cli.app import main

for command in commands:
    sys.argv = ["service-ambitions", *command, "--help"]
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main()
        except SystemExit:
            pass
    found[" ".join(command) or "(root)"] = loaded(heavy["help"])
print(json.dumps(found))
"""


def probe(commands: list[list[str]], *, preload: str = "") -> dict[str, list[str]]:
    """In a fresh interpreter: the heavy modules loaded by importing the app, then after each ``--help``."""
    heavy = {"import": [*HEAVY, *IMPORT_ONLY], "help": list(HEAVY)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(heavy), json.dumps(commands), preload],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, list[str]] = json.loads(result.stdout.splitlines()[-1])
    return found


def command_paths() -> list[list[str]]:
    """The program, then every command and sub-command, as the words that name it."""
    paths: list[list[str]] = [[]]

    def walk(command: Any, context: _click.Context, path: list[str]) -> None:
        for name in command.list_commands(context):
            child = command.get_command(context, name)
            paths.append([*path, name])
            if isinstance(child, TyperGroup):
                walk(child, _click.Context(child, info_name=name, parent=context), [*path, name])

    root = get_command(app)
    walk(root, _click.Context(root, info_name="service-ambitions"), [])
    return paths


def test_importing_the_app_and_every_help_loads_no_heavy_module() -> None:
    paths = command_paths()
    assert ["run"] in paths
    assert ["quarantine", "rm"] in paths
    found = probe(paths)
    assert len(found) == len(paths) + 1  # the import, then every command's --help
    assert {where: modules for where, modules in found.items() if modules} == {}


def test_the_probe_sees_a_heavy_import() -> None:
    found = probe([["run"]], preload="service_ambitions.settings")
    assert "pydantic_settings" in found["import"]
    assert "service_ambitions.settings" in found["run"]


def test_migrate_defaults_to_the_current_schema() -> None:
    # cli/migrate.py spells the version out rather than import the pydantic models for --help
    assert inspect.signature(migrate).parameters["to_version"].default == SCHEMA_VERSION
