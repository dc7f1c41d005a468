"""Problems found in a service's answers: quarantined when lenient, fatal under ``--strict``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Problem"]


@dataclass(frozen=True)
class Problem:
    """One finding about a service's answers.

    Attributes:
        kind: Quarantine kind (``unknown_ids``, ``facet_validation``, ``schema_mismatch``...).
        stage: The stage that produced the answer.
        error: A one-line human explanation.
        payload: Details kept in the quarantine entry (plateau, field, offending ids...).
        warning_only: Logged, never quarantined and never fatal (e.g. answers for unknown feature ids).
    """

    kind: str
    stage: str
    error: str
    payload: dict[str, Any] = field(default_factory=dict)
    warning_only: bool = False
