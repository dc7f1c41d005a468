"""The Typer application and the console-script entry point."""

from __future__ import annotations

from typing import Annotated

import typer

from service_ambitions.cli import export, merge, migrate, preflight, report, run, validate
from service_ambitions.cli.batch import batch_app
from service_ambitions.cli.cache import cache_app
from service_ambitions.cli.map import map_command
from service_ambitions.cli.quarantine import quarantine_app
from service_ambitions.cli.reverse import reverse

__all__ = ["app", "main"]

app = typer.Typer(
    name="service-ambitions",
    help=(
        "Ask an LLM how each business service evolves across maturity plateaus, which features each "
        "customer role gets, and which catalogue items support them. Writes validated JSONL.\n\n"
        "Exit codes: 0 ok; 1 services failed/quarantined under --strict or --fail-on-quarantine; "
        "2 usage or configuration error; 3 input problem or resume refused; 4 budget exhausted; "
        "5 cache integrity findings; 130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from service_ambitions import __version__  # noqa: PLC0415  (importlib.metadata: keeps --help fast)

        typer.echo(f"service-ambitions {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Service ambitions batch pipeline."""


app.command("run")(run.run)
app.command("merge")(merge.merge)
app.command("validate")(validate.validate)
app.command("preflight")(preflight.preflight)
app.command("migrate")(migrate.migrate)
app.command("map")(map_command)
app.command("reverse")(reverse)
app.command("report")(report.report)
app.command("export")(export.export)
app.add_typer(batch_app, name="batch")
app.add_typer(cache_app, name="cache")
app.add_typer(quarantine_app, name="quarantine")


def main() -> None:
    """Console-script entry point."""
    app()
