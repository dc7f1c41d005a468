"""Validated answers in the response cache: the first and last step of every gateway call.

A verified hit is validated against the call's output type (as the final answer: its validators see
:data:`~service_ambitions.domain.responses.FINAL_ATTEMPT`); a payload that no longer validates is
counted as corrupt and the model is asked. A fresh answer is stored with the model that actually
answered and its usage. Each lookup counts ``sa_cache_requests_total`` as ``hit``, ``miss`` or
``corrupt`` (an entry the cache itself found damaged).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from service_ambitions.llm.request_loop import CallResult, OutputT, attempt_context

if TYPE_CHECKING:
    from service_ambitions.observability.metrics import RunMetrics
    from service_ambitions.store.cache import ResponseCache

__all__ = ["AnswerCache"]


class AnswerCache:
    """Reads and writes call results in a :class:`~service_ambitions.store.cache.ResponseCache`."""

    def __init__(self, cache: ResponseCache, metrics: RunMetrics) -> None:
        """Answers in ``cache``, lookups counted in ``metrics``."""
        self.cache = cache
        self.metrics = metrics

    def lookup(
        self,
        key: str,
        stage: str,
        output_type: type[OutputT],
        validation_context: Mapping[str, Any] | None = None,
    ) -> CallResult[OutputT] | None:
        """The cached answer under ``key``, validated; None when there is none that validates."""
        cache = self.cache
        corrupt_before = cache.stats.corrupt
        payload = cache.get(key)
        lookup = "hit" if payload is not None else "miss"
        if cache.stats.corrupt > corrupt_before:
            lookup = "corrupt"
        self.metrics.add(self.metrics.cache_requests, 1, {"result": lookup, "stage": stage})
        if payload is None:
            return None
        try:
            output = output_type.model_validate(
                payload["output"], context=attempt_context(validation_context, final=True)
            )
            return CallResult(output=output, model=str(payload["model"]), cached=True)
        except (KeyError, ValidationError):
            cache.stats.corrupt += 1
        return None

    def store(self, key: str, result: CallResult[Any]) -> None:
        """Keep a fresh answer, with the model that gave it and its usage."""
        self.cache.put(
            key,
            {
                "output": result.output.model_dump(mode="json", by_alias=True),
                "model": result.model,
                "usage": {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens},
            },
        )
