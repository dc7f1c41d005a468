"""Observability: secret redaction, metrics, telemetry, request ids and the progress display.

Owns the :class:`Redactor` every sink goes through (``redaction``), the ``sa_*`` metric instruments
(``metrics``), logfire and the Prometheus endpoint (``telemetry``), request ids on log records
(``tracing``) and the terminal progress bar (``progress``). Depends on ``errors`` only, so every layer may
use it; telemetry never fails a run.

The package root re-exports only the redaction API, which every sink needs; import the others from their
modules (metrics and telemetry pull in logfire).
"""

from service_ambitions.observability.redaction import PATTERNS_VARIABLE, RedactingFilter, Redactor

__all__ = ["PATTERNS_VARIABLE", "RedactingFilter", "Redactor"]
