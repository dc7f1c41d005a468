"""Observability: redaction, metrics, request tracing.

The package root re-exports only the redaction API, which every sink needs; import metrics and tracing
from their modules (metrics pulls in logfire).
"""

from service_ambitions.observability.redaction import PATTERNS_VARIABLE, RedactingFilter, Redactor

__all__ = ["PATTERNS_VARIABLE", "RedactingFilter", "Redactor"]
