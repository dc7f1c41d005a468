"""Failure injection at the model boundary (``--inject-failures``), deterministic per seed.

A :class:`ChaosModel` wraps a model. Before each request it decides, from a hash of the seed, the
model name and the request's content, whether to fail it and how: ``429`` (rate limited, with a
retry-after), ``500`` (server error), ``timeout`` (request timed out) or ``malformed`` (an answer
that does not match the schema, so the gateway re-asks). Decisions depend only on content, never
on timing or order, so the same seed gives the same failures however the run is scheduled.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from pydantic_ai.exceptions import ModelHTTPError, ModelRateLimitError, ModelServerError, ModelTimeoutError
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
from pydantic_ai.models.wrapper import WrapperModel

from service_ambitions._failure_spec import KINDS, FailureSpec, parse_failure_spec

if TYPE_CHECKING:
    from pydantic_ai.models import Model, ModelRequestParameters
    from pydantic_ai.settings import ModelSettings

# The spec is parsed below ``settings`` (which validates it); re-exported for the callers of this module.
__all__ = ["KINDS", "ChaosModel", "FailureSpec", "parse_failure_spec"]


class ChaosModel(WrapperModel):
    """Wraps a model and fails a deterministic share of its requests."""

    def __init__(self, wrapped: Model, spec: FailureSpec) -> None:
        super().__init__(wrapped)
        self.spec = spec
        self.injected: dict[str, int] = dict.fromkeys(spec.kinds, 0)

    def _decide(self, messages: list[ModelMessage]) -> str | None:
        # Timestamps and generated ids are left out of the basis: they differ between runs.
        digest = hashlib.sha256(_stable_repr(messages, self.spec.seed, self.wrapped.model_name)).digest()
        roll = int.from_bytes(digest[:8], "big") / 2**64
        if roll >= self.spec.probability:
            return None
        return self.spec.kinds[digest[8] % len(self.spec.kinds)]

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """Fail the request as decided, or pass it on."""
        kind = self._decide(messages)
        if kind is not None:
            self.injected[kind] += 1
        name = self.wrapped.model_name
        if kind == "429":
            raise ModelHTTPError.for_category(
                ModelRateLimitError,
                status_code=429,
                model_name=name,
                body={"error": "injected"},
                retry_after=0.0,
            )
        if kind == "500":
            raise ModelHTTPError.for_category(
                ModelServerError, status_code=500, model_name=name, body={"error": "injected"}
            )
        if kind == "timeout":
            raise ModelTimeoutError(name, "injected request timeout")
        response = await super().request(messages, model_settings, model_request_parameters)
        if kind == "malformed":
            tool = (
                model_request_parameters.output_tools[0].name
                if model_request_parameters.output_tools
                else "x"
            )
            return ModelResponse(parts=[ToolCallPart(tool, {"injected": "malformed"})], model_name=name)
        return response


def _stable_repr(messages: list[ModelMessage], seed: int, model_name: str) -> bytes:
    """The content of the messages only (no timestamps, run ids or tool-call ids)."""
    pieces: list[Any] = [seed, model_name]
    for message in messages:
        for part in getattr(message, "parts", []):
            pieces.append(type(part).__name__)
            for attribute in ("content", "args", "tool_name"):
                value = getattr(part, attribute, None)
                if value is not None:
                    pieces.append(repr(value))
    return "\x1f".join(str(piece) for piece in pieces).encode()
