"""The command-line interface (Typer). One module per command; no business logic here."""

from service_ambitions.cli.app import app, main

__all__ = ["app", "main"]
