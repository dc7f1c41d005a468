"""The command-line interface (Typer): one module per command, registered in ``app``.

Owns flags and their mapping onto settings, logging set-up, up-front path checks, the run summary and the
translation of typed errors into exit codes (``_common.exits``). No business logic: each command builds
settings and a context and calls one function of ``engine``, ``store``, ``report`` or ``content``.
"""

from service_ambitions.cli.app import app, main

__all__ = ["app", "main"]
