"""The request loop of one call: a slot, a structured request, bounded re-asks, error translation.

This is what an ``Agent`` does for the output mode of each model (``llm/output_modes.py``), driven
through pydantic-ai's direct API: the same request parameters, answer processing and retry parts,
without the agent graph's per-call CPU cost (see docs/architecture.md). Unlike the agent, a cut-off or
oversized answer is re-asked for without being sent back. Each attempt takes its own slot
(``llm/slots.py``) and is accounted (``llm/accounting.py``); foreign exceptions are translated once
(``llm/failures.py``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from service_ambitions.domain.responses import FINAL_ATTEMPT
from service_ambitions.errors import StageError
from service_ambitions.llm.accounting import answered_by, reasking
from service_ambitions.llm.deferral import BatchCall, batch_call
from service_ambitions.llm.failures import failed_call, refused_call, rejection
from service_ambitions.llm.output_modes import (
    AnswerRejected,
    answer_payload,
    read_answer,
    reask,
    request_parameters,
)
from service_ambitions.llm.prompt_cache import cache_settings, user_prompt_content
from service_ambitions.llm.providers import output_cap, parse_model_id
from service_ambitions.llm.stack import common_settings
from service_ambitions.observability.tracing import current_request

if TYPE_CHECKING:
    from pydantic_ai.messages import ModelMessage, ModelResponse
    from pydantic_ai.models import Model
    from pydantic_ai.settings import ModelSettings

    from service_ambitions.llm.accounting import Accounting
    from service_ambitions.llm.slots import RequestSlots
    from service_ambitions.settings import Settings

__all__ = ["CallResult", "OutputT", "RequestLoop", "attempt_context"]

log = logging.getLogger("service_ambitions.gateway")

OutputT = TypeVar("OutputT", bound=BaseModel)


@dataclass(frozen=True)
class CallResult(Generic[OutputT]):
    """A validated answer and who produced it."""

    output: OutputT
    model: str
    cached: bool
    input_tokens: int = 0
    output_tokens: int = 0


def attempt_context(context: Mapping[str, Any] | None, *, final: bool) -> dict[str, Any] | None:
    """The validation context of one answer: the caller's, plus whether it is the last one accepted."""
    return None if context is None else {**context, FINAL_ATTEMPT: final}


@contextlib.contextmanager
def _marked(request_id: str, call: BatchCall) -> Iterator[None]:
    """Mark a model request for the layers below: logs and traces, re-ask counting, batch ids."""
    marker = current_request.set((request_id, call.service_id))
    reasked = reasking.set(call.attempt > 1)
    batched = batch_call.set(call)
    try:
        yield
    finally:
        batch_call.reset(batched)
        reasking.reset(reasked)
        current_request.reset(marker)


class RequestLoop:
    """Sends a call's requests to its stage's model until an answer validates or the re-asks run out."""

    def __init__(
        self,
        settings: Settings,
        system_prompt: str,
        *,
        stage_model: Callable[[str], Model],
        slots: RequestSlots,
        accounting: Accounting,
    ) -> None:
        """Create the loop.

        Args:
            settings: The run's settings.
            system_prompt: The system prompt of every request.
            stage_model: The model a stage's requests go to (its stack, behind fallbacks).
            slots: The run-wide request slots.
            accounting: Where requests are counted and responses priced.
        """
        self.settings = settings
        self.system_prompt = system_prompt
        self.stage_model = stage_model
        self.slots = slots
        self.accounting = accounting
        self._common = common_settings(settings)
        self._request_settings: dict[str, ModelSettings] = {}

    def stage_providers(self, stage: str) -> list[str]:
        """The providers of a stage's model and its fallbacks."""
        primary = self.settings.stage_model(stage)
        return [
            parse_model_id(model_id).provider
            for model_id in (primary, *self.settings.fallbacks_for(stage, primary))
        ]

    def request_settings(self, stage: str) -> ModelSettings:
        """What a stage's requests send: the common settings plus the prompt-cache options of its providers.

        Prompt-cache options never change an answer, so they are not in the stage's ``model_settings``
        (the cache key). Their keys are provider-prefixed: each model of a fallback chain reads only its own.
        """
        cached = self._request_settings.get(stage)
        if cached is None:
            merged: Any = dict(self._common)
            for provider in self.stage_providers(stage):
                merged.update(cache_settings(provider, stage))
            cached = self._request_settings[stage] = merged
        return cached

    async def answer(
        self,
        stage: str,
        service_id: str,
        user_prompt: str,
        output_type: type[OutputT],
        validation_context: Mapping[str, Any] | None = None,
        *,
        key: str = "",
    ) -> CallResult[OutputT]:
        """A validated answer from the stage's model, pydantic-ai's exceptions translated.

        Raises:
            StageError: The answer never matched the schema within the re-ask bound.
            ModelCallError: pydantic-ai refused the request, or the provider failed (after transport
                retries and fallbacks).
        """
        from pydantic_ai.exceptions import (  # noqa: PLC0415
            FallbackExceptionGroup,
            ModelAPIError,
            UnexpectedModelBehavior,
            UserError,
        )

        model_id = self.settings.stage_model(stage)
        try:
            output, response, usage = await self._structured(
                stage, service_id, user_prompt, output_type, validation_context, key=key
            )
        except UserError as exc:  # pydantic-ai refused the request, e.g. an output mode the model lacks
            self.accounting.stats.failures += 1
            mode = self.settings.output_mode_for(model_id)
            raise refused_call(exc, mode=mode, service_id=service_id, stage=stage, model_id=model_id) from exc
        except (ModelAPIError, UnexpectedModelBehavior, FallbackExceptionGroup) as exc:
            self.accounting.stats.failures += 1
            raise failed_call(exc, service_id=service_id, stage=stage, model_id=model_id) from exc
        return CallResult(
            output=output,
            model=answered_by(response, model_id),
            cached=False,
            input_tokens=usage[0],
            output_tokens=usage[1],
        )

    async def _structured(
        self,
        stage: str,
        service_id: str,
        user_prompt: str,
        output_type: type[OutputT],
        validation_context: Mapping[str, Any] | None = None,
        *,
        key: str = "",
    ) -> tuple[OutputT, ModelResponse, tuple[int, int]]:
        """One request, plus bounded re-asks when the answer does not validate."""
        from pydantic_ai.direct import model_request  # noqa: PLC0415
        from pydantic_ai.messages import ModelRequest, SystemPromptPart, UserPromptPart  # noqa: PLC0415

        model = self.stage_model(stage)
        parameters = request_parameters(output_type)
        settings = self.request_settings(stage)
        messages: list[ModelMessage] = [
            ModelRequest(
                parts=[
                    SystemPromptPart(self.system_prompt),
                    UserPromptPart(user_prompt_content(user_prompt, self.stage_providers(stage))),
                ]
            )
        ]
        stats = self.accounting.stats
        metrics = self.accounting.metrics
        slots = self.slots
        tokens_in = tokens_out = 0
        attempts = self.settings.output_retries + 1
        attempt = 0
        model_id = self.settings.stage_model(stage)
        while True:
            attempt += 1
            async with slots.admitted(stage=stage, service_id=service_id, model_id=model_id) as request_id:
                started = time.perf_counter()
                outcome = "error"
                try:
                    with _marked(request_id, BatchCall(key, attempt, stage, service_id)):
                        response = await model_request(
                            model, messages, model_settings=settings, model_request_parameters=parameters
                        )
                    outcome = "ok"
                finally:
                    metrics.record(
                        metrics.request_duration,
                        time.perf_counter() - started,
                        {"stage": stage, "model_name": model_id, "outcome": outcome},
                    )
            log.debug(
                "model call %s (%s) answered by %s",
                request_id,
                stage,
                response.model_name,
                extra={
                    "request_id": request_id,
                    "service_id": service_id,
                    "stage": stage,
                    "provider_response_id": response.provider_response_id,
                },
            )
            if self.settings.allow_prompt_logging:
                log.debug("prompt of %s:\n%s", request_id, user_prompt)
                log.debug("answer of %s:\n%s", request_id, answer_payload(response))
            stats.max_attempts = max(stats.max_attempts, attempt)
            self.accounting.record(stage, service_id, model_id, response, time.perf_counter() - started)
            tokens_in += response.usage.input_tokens
            tokens_out += response.usage.output_tokens
            context = attempt_context(validation_context, final=attempt == attempts)
            answered = response.model_id or model_id
            mode = self.settings.output_mode_for(answered)
            try:
                output = read_answer(response, output_type, mode, context)
            except AnswerRejected as rejected:
                cap = output_cap(answered, self.settings)
                if attempt == attempts:
                    stats.failures += 1
                    raise StageError(
                        f"the model's answer did not match the schema after {attempts - 1} re-ask(s): "
                        f"{rejection(response, rejected, cap)}",
                        service_id=service_id,
                        stage=stage,
                        model_name=model_id,
                        attempt=attempt,
                        payload=answer_payload(response),
                    ) from rejected
                messages, dropped = reask(
                    messages, response, rejected, attempt=attempt, max_retries=attempts - 1, cap=cap
                )
                if dropped:
                    log.info(
                        "re-asking %s (%s) without its answer: it was %s",
                        request_id,
                        stage,
                        dropped,
                        extra={"request_id": request_id, "service_id": service_id, "stage": stage},
                    )
                continue
            return output, response, (tokens_in, tokens_out)
