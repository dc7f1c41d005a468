"""Observability: redaction of secrets for every sink (logs, exceptions, stored state)."""

from service_ambitions.observability.redaction import PATTERNS_VARIABLE, RedactingFilter, Redactor

__all__ = ["PATTERNS_VARIABLE", "RedactingFilter", "Redactor"]
