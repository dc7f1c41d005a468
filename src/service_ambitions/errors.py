"""The exception tree and the exit-code table.

Every error the tool raises on purpose derives from :class:`ServiceAmbitionsError`
and maps to exactly one exit code::

    ServiceAmbitionsError
    ├── UsageError                     exit 2  bad flags, config, content or paths; before any model call
    │   ├── ConfigError                        a settings key is unknown or invalid (names key and source)
    │   ├── ContentError                       reference data or prompt files cannot be loaded (names file)
    │   ├── ProviderKeyMissing                 a real provider has no API key (names the variable)
    │   ├── PathError                          a path cannot be used or written (names it; also mid-run)
    │   └── OutputLocked                       another process holds the output's lock
    ├── InputError                     exit 3  the services file is missing/unreadable, or validation failed
    │   └── ResumeRefused                      --resume found output from different input/settings/schema
    ├── RunFailures                    exit 1  the run finished, but services have no record (or, under
    │   │                                      --fail-on-quarantine, something was quarantined)
    │   └── SystemicFailure                    stopped early: every call failed the same way (auth, ...)
    ├── BudgetExhausted                exit 4  run_budget_usd reached under budget_mode=enforce
    ├── IntegrityError                 exit 5  `cache validate` found problems
    ├── Interrupted                    exit 130 SIGINT/SIGTERM; finished records kept, resumable
    └── PipelineError                          one service failed; quarantined, the batch goes on
        ├── StageError                         a stage could not produce a valid answer
        │   ├── ModelCallError                 transport/provider failure after retries and fallbacks
        │   └── StageTimeout                   the stage exceeded its time budget
        └── MappingError                       a mapping answer broke a rule under --strict

``PipelineError`` never reaches the process exit: the engine turns it into a quarantine entry, and
the run ends with :class:`RunFailures` (exit 1) when any service got no record. An exception that
is not a ``PipelineError`` inside one service is quarantined too (kind ``internal``).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

__all__ = [
    "BudgetExhausted",
    "ConfigError",
    "ContentError",
    "ExitCode",
    "InputError",
    "IntegrityError",
    "Interrupted",
    "MappingError",
    "OutputLocked",
    "PathError",
    "ModelCallError",
    "PipelineError",
    "ProviderKeyMissing",
    "QuarantineKind",
    "ResumeRefused",
    "RunFailures",
    "ServiceAmbitionsError",
    "StageError",
    "StageTimeout",
    "SystemicFailure",
    "UsageError",
]


class ExitCode(IntEnum):
    """Process exit codes; fixed, documented in the README."""

    OK = 0
    """Every service was written (lenient problems may be quarantined)."""
    FAILURES = 1
    """Finished, but a service has no record, or something was quarantined with --fail-on-quarantine."""
    USAGE = 2
    """Usage, configuration or content error; nothing was sent to a model."""
    INPUT = 3
    """The input file is missing/unreadable, `validate` found problems, or --resume was refused."""
    BUDGET = 4
    """The run budget was exhausted under budget_mode=enforce (resumable)."""
    INTEGRITY = 5
    """`cache validate` found integrity problems."""
    INTERRUPTED = 130
    """Interrupted by SIGINT/SIGTERM; completed records were kept (resumable)."""


class QuarantineKind:
    """The kinds of quarantine entry (DOMAIN §6)."""

    INPUT_INVALID = "input_invalid"
    SCHEMA_MISMATCH = "schema_mismatch"
    UNKNOWN_IDS = "unknown_ids"
    FACET_VALIDATION = "facet_validation"
    TIMEOUT = "timeout"
    MODEL_ERROR = "model_error"
    BUDGET = "budget"
    INTERNAL = "internal"


class ServiceAmbitionsError(Exception):
    """Root of every error raised on purpose by service-ambitions."""

    exit_code: ExitCode = ExitCode.FAILURES


class UsageError(ServiceAmbitionsError):
    """Bad command line, configuration or content; detected before any model call."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A settings key is unknown or has an invalid value."""


class ContentError(UsageError):
    """Reference data or a prompt file is missing or malformed."""


class ProviderKeyMissing(UsageError):
    """A configured real provider has no API key in the environment."""


class PathError(UsageError):
    """A path cannot be used: wrong kind, not writable, same as another, or failing mid-run."""


class OutputLocked(UsageError):
    """Another process is writing the same output (its lock file is held)."""


class InputError(ServiceAmbitionsError):
    """The services file cannot be read, or validation found problems."""

    exit_code = ExitCode.INPUT


class ResumeRefused(InputError):
    """--resume found an output produced from different input, settings or schema."""


class RunFailures(ServiceAmbitionsError):
    """The run finished, but some services have no record (or quarantine failed the run)."""

    exit_code = ExitCode.FAILURES


class SystemicFailure(RunFailures):
    """The run stopped early: calls kept failing the same way (unreachable server, bad key, no quota)."""


class Interrupted(ServiceAmbitionsError):
    """SIGINT or SIGTERM; every finished record was kept, and ``--resume`` continues."""

    exit_code = ExitCode.INTERRUPTED


class BudgetExhausted(ServiceAmbitionsError):
    """The run budget is exhausted under budget_mode=enforce."""

    exit_code = ExitCode.BUDGET


class IntegrityError(ServiceAmbitionsError):
    """Integrity findings (cache validate)."""

    exit_code = ExitCode.INTEGRITY


class PipelineError(ServiceAmbitionsError):
    """One service failed; the engine quarantines it and goes on.

    Attributes:
        service_id: The failing service, when known.
        stage: ``descriptions``, ``features``, ``mapping`` or ``assemble``, when known.
        model_name: The model that was called, when known.
        attempt: The attempt number, when known.
        kind: The quarantine kind this error is filed under.
        payload: Extra data kept in the quarantine entry (e.g. the rejected answer).
    """

    default_kind = QuarantineKind.SCHEMA_MISMATCH

    def __init__(
        self,
        message: str,
        *,
        service_id: str | None = None,
        stage: str | None = None,
        model_name: str | None = None,
        attempt: int | None = None,
        kind: str | None = None,
        payload: object = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.service_id = service_id
        self.stage = stage
        self.model_name = model_name
        self.attempt = attempt
        self.kind = kind or self.default_kind
        self.payload = payload

    def __str__(self) -> str:
        where = ", ".join(
            f"{name}={value}"
            for name, value in (
                ("service", self.service_id),
                ("stage", self.stage),
                ("model", self.model_name),
                ("attempt", self.attempt),
            )
            if value is not None
        )
        return f"{self.message} ({where})" if where else self.message


class StageError(PipelineError):
    """A stage could not produce a valid answer."""


class ModelCallError(StageError):
    """The provider failed after transport retries and fallbacks.

    Attributes:
        systemic: Set when the failure would hit every call alike (``connection``: the server cannot be
            reached; ``authentication``: 401/403; ``quota``: the account is out of credit), so the
            engine can stop early instead of failing thousands of services the same way.
    """

    default_kind = QuarantineKind.MODEL_ERROR

    def __init__(self, message: str, *, systemic: str | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.systemic = systemic


class StageTimeout(StageError):
    """A stage exceeded its time budget."""

    default_kind = QuarantineKind.TIMEOUT


class MappingError(PipelineError):
    """A mapping answer broke a rule that is fatal under --strict."""
