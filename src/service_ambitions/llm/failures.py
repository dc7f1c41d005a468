"""Error translation: pydantic-ai's exceptions become :mod:`service_ambitions.errors` types, once, here.

* pydantic-ai refusing a request (``UserError``, e.g. an output mode the model lacks): a
  ``ModelCallError``, systemic ``configuration``.
* ``ModelAPIError``, ``UnexpectedModelBehavior``, ``FallbackExceptionGroup``: a ``ModelCallError``, kind
  ``timeout`` when every failure timed out, else ``model_error``; ``systemic`` when every model tried
  failed a way that would hit every call.
* An answer that never matched the schema: the reason for the ``StageError`` (:func:`rejection`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from service_ambitions.errors import ModelCallError, QuarantineKind
from service_ambitions.llm.transport import describe_failure

if TYPE_CHECKING:
    from pydantic_ai.messages import ModelResponse

    from service_ambitions.llm.output_modes import AnswerRejected

__all__ = ["explain_failure", "failed_call", "refused_call", "rejection"]


def explain_failure(exc: BaseException) -> str:
    """The most specific reason in an exception chain (validation errors first)."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, ValidationError):
            return "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in node.errors(include_url=False)[:3]
            )
        node = node.__cause__ or node.__context__
    return str(exc)


def rejection(response: ModelResponse, rejected: AnswerRejected, cap: int | None) -> str:
    """Why the last answer was rejected, for people (pydantic-ai's wording for a cut-off answer)."""
    if response.finish_reason == "length":
        from pydantic_ai._output import truncated_output_message  # noqa: PLC0415

        return truncated_output_message(cap)
    return explain_failure(rejected)


def refused_call(
    exc: BaseException, *, mode: str, service_id: str, stage: str, model_id: str
) -> ModelCallError:
    """The error for a request pydantic-ai refused to send (raise it ``from exc``)."""
    return ModelCallError(
        f"pydantic-ai refused the request: {exc} (output_mode {mode} of {model_id}: "
        "see output_mode, models_output_mode)",
        systemic="configuration",
        service_id=service_id,
        stage=stage,
        model_name=model_id,
    )


def failed_call(exc: BaseException, *, service_id: str, stage: str, model_id: str) -> ModelCallError:
    """The error for a provider failure left after transport retries and fallbacks (raise it ``from exc``).

    Args:
        exc: A ``ModelAPIError``, ``UnexpectedModelBehavior`` or ``FallbackExceptionGroup``.
        service_id: The service of the call.
        stage: The stage of the call.
        model_id: The stage's configured model.
    """
    from pydantic_ai.exceptions import FallbackExceptionGroup  # noqa: PLC0415

    failures = list(exc.exceptions) if isinstance(exc, FallbackExceptionGroup) else [exc]
    # 429s have already paused their own model: in RateLimitedTransport for HTTP models, in
    # RateLimitedModel for the others (the only ones with limits to pause).
    described = [describe_failure(failure) for failure in failures]
    timed_out = all(failure.timed_out for failure in described)
    # Systemic (stop the run early) only when every model tried failed that way: a fallback
    # that merely shared a transient outage says nothing about the next call.
    systemic = described[-1].systemic if all(failure.systemic for failure in described) else None
    if len(described) == 1:
        message = f"model call failed: {described[0].text}"
    else:
        reasons = "; ".join(
            f"{getattr(failure, 'model_name', '?')}: {description.text}"
            for failure, description in zip(failures, described, strict=True)
        )
        message = f"model call failed on all {len(described)} models (fallbacks included): {reasons}"
    return ModelCallError(
        message,
        systemic=systemic,
        service_id=service_id,
        stage=stage,
        model_name=model_id,
        kind=QuarantineKind.TIMEOUT if timed_out else QuarantineKind.MODEL_ERROR,
    )
