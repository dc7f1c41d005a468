"""The LLM gateway: the one path every model call of a run takes.

``call`` = cache lookup → concurrency cap → timeout → pydantic-ai agent (structured output with
bounded re-asks) over the stage's model, wrapped in a ``FallbackModel`` when fallbacks are set.
Foreign exceptions are translated here, once, into :mod:`service_ambitions.errors` types.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import logfire
from pydantic import BaseModel, ValidationError

from service_ambitions.domain.responses import FINAL_ATTEMPT
from service_ambitions.errors import ModelCallError, QuarantineKind, StageError
from service_ambitions.llm._names import is_offline
from service_ambitions.llm.admission import RateLimitedModel
from service_ambitions.llm.cost import CostLedger, Price, price_response
from service_ambitions.llm.limiter import Clock, MonotonicClock
from service_ambitions.llm.output_modes import (
    AnswerRejected,
    ConfiguredModel,
    answer_payload,
    read_answer,
    reask,
    request_parameters,
)
from service_ambitions.llm.prompt_cache import (
    cache_settings,
    cache_write_tokens,
    cached_tokens,
    user_prompt_content,
)
from service_ambitions.llm.providers import output_cap, parse_model_id, resolve_model
from service_ambitions.llm.ratelimits import ModelLimits
from service_ambitions.llm.stack import SettingsModel, common_settings, over_our_transport, provider_settings
from service_ambitions.llm.transport import describe_failure
from service_ambitions.observability.metrics import RunMetrics
from service_ambitions.observability.tracing import current_request
from service_ambitions.store.cache import ResponseCache, cache_key

if TYPE_CHECKING:
    from pydantic_ai.messages import ModelMessage, ModelResponse
    from pydantic_ai.models import Model, ModelRequestParameters
    from pydantic_ai.settings import ModelSettings

    from service_ambitions.settings import Settings

__all__ = ["CallResult", "Gateway", "GatewayStats"]

log = logging.getLogger("service_ambitions.gateway")

OutputT = TypeVar("OutputT", bound=BaseModel)
# Model settings that change how a request travels, not what the answer says: kept out of cache keys.
_TRANSPORT_SETTINGS = frozenset({"request_timeout", "timeout", "max_retries"})
_REASKING: ContextVar[bool] = ContextVar("sa_reasking", default=False)
"""Set while a re-ask is being sent, so its transport retries count as re-asks too."""


@dataclass(frozen=True)
class CallResult(Generic[OutputT]):
    """A validated answer and who produced it."""

    output: OutputT
    model: str
    cached: bool
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class GatewayStats:
    """Counters of one run."""

    calls: int = 0
    model_requests: int = 0
    """Requests sent to models: first answers, re-asks, fallback attempts and transport retries."""
    output_reasks: int = 0
    """Requests that re-asked after a rejected answer (counted like ``model_requests``)."""
    input_tokens: int = 0
    output_tokens: int = 0
    failures: int = 0
    max_attempts: int = 0
    fallbacks: int = 0
    """Most requests one call needed (first answer plus output re-asks)."""
    by_stage: dict[str, int] = field(default_factory=dict)


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


def schema_digest(output_type: type[BaseModel]) -> str:
    """Digest of an output schema (part of the cache key)."""
    schema = json.dumps(output_type.model_json_schema(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(schema.encode()).hexdigest()


class Gateway:
    """One per run, shared by all stages and services."""

    def __init__(
        self,
        settings: Settings,
        *,
        system_prompt: str,
        cache: ResponseCache,
        models: Mapping[str, Model] | None = None,
        model_factory: Callable[..., Any] = resolve_model,
        metrics: RunMetrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Create the gateway.

        Args:
            settings: The run's settings.
            system_prompt: The system prompt shared by every call.
            cache: The response cache.
            models: Ready-made models by id, used before ``model_factory`` (tests inject fakes here).
            model_factory: Builds a model from its id.
            metrics: The run's metric instruments.
            clock: Clock of the rate limiters (tests inject a virtual one).
        """
        self.settings = settings
        self.system_prompt = system_prompt
        self.system_digest = hashlib.sha256(system_prompt.encode()).hexdigest()
        self.cache = cache
        self.stats = GatewayStats()
        self._given = dict(models or {})
        self._factory = model_factory
        self._stage_models: dict[str, Model] = {}
        self._stage_settings: dict[str, ModelSettings] = {}
        self._key_bases: dict[str, dict[str, Any]] = {}
        self._schema_digests: dict[type[BaseModel], str] = {}
        self._semaphore = asyncio.Semaphore(settings.llm_concurrency)
        self.metrics = metrics or RunMetrics()
        self.clock: Clock = clock or MonotonicClock()
        self._limits: dict[str, ModelLimits] = {}
        self.metrics.observe_rate_limits(self.limits_in_force)
        self._built: dict[str, Model] = {}
        self._common = common_settings(settings)
        self._request_settings: dict[str, ModelSettings] = {}
        self._sequence = itertools.count(1)
        self.ledger = CostLedger()
        self.transport_retries = 0
        self.durations: dict[str, list[float]] = {}
        self.waiting = 0
        self.in_flight = 0

    def _count_request(self) -> None:
        """One request handed to a model (``ConfiguredModel``)."""
        self.stats.model_requests += 1
        if _REASKING.get():
            self.stats.output_reasks += 1

    def _count_transport_retry(self) -> None:
        """One more HTTP request for the request being sent: a transport retry."""
        self.transport_retries += 1
        self._count_request()

    # models -----------------------------------------------------------------------------------
    def limits_for(self, model_id: str) -> ModelLimits:
        """The admission state of one model: configured caps, learned limits, remaining budget."""
        limits = self._limits.get(model_id)
        if limits is None:
            configured = self.settings.rate_limit_for(model_id)
            limits = self._limits[model_id] = ModelLimits(
                model_id,
                mode=self.settings.rate_limits,
                rpm=configured.rpm if configured else None,
                tpm=configured.tpm if configured else None,
                clock=self.clock,
                max_pause=self.settings.transport_retries.max_wait,
            )
        return limits

    def limits_in_force(self) -> dict[str, dict[str, object]]:
        """Per model called: the limits in force and where they came from (for the summary)."""
        return {model_id: limits.describe() for model_id, limits in sorted(self._limits.items())}

    def _model(self, model_id: str) -> Model:
        """The model's own stack (see ``llm/stack.py``), built once per run."""
        built = self._built.get(model_id)
        if built is not None:
            return built
        limits = self.limits_for(model_id)
        given = model_id in self._given
        over_http = not given and over_our_transport(model_id)
        if given:
            model = self._given[model_id]
        elif over_http:
            model = self._factory(
                model_id, self.settings, on_retry=self._count_transport_retry, limits=limits
            )
        else:
            model = self._factory(model_id, self.settings, on_retry=self._count_transport_retry)
        model = ConfiguredModel(
            model, model_id, self.settings.output_mode_for(model_id), on_request=self._count_request
        )
        if self.settings.inject_failures:
            from service_ambitions.llm.chaos import ChaosModel, parse_failure_spec  # noqa: PLC0415

            model = ChaosModel(model, parse_failure_spec(self.settings.inject_failures))
        own = provider_settings(model_id, self.settings)
        if own:
            model = SettingsModel(model, own)  # type: ignore[arg-type]
        if not over_http and (limits.cap_rpm or limits.cap_tpm):
            model = RateLimitedModel(model, limits, max_tokens=self.settings.max_tokens)
        configured = self.settings.rate_limit_for(model_id)
        if configured is not None and configured.concurrency:
            from pydantic_ai.models.concurrency import ConcurrencyLimitedModel  # noqa: PLC0415

            model = ConcurrencyLimitedModel(model, configured.concurrency)
        self._built[model_id] = model
        return model

    def stage_model(self, stage: str) -> Model:
        """The model a stage calls: the configured one, behind a FallbackModel when fallbacks exist."""
        cached = self._stage_models.get(stage)
        if cached is not None:
            return cached
        primary_id = self.settings.stage_model(stage)
        fallbacks = self.settings.fallbacks_for(stage, primary_id)
        model = self._model(primary_id)
        if fallbacks:
            from pydantic_ai.exceptions import (  # noqa: PLC0415
                ModelConnectionError,
                ModelRateLimitError,
                ModelRequestTimeout,
                ModelServerError,
                ModelUnavailableError,
            )
            from pydantic_ai.models.fallback import FallbackModel  # noqa: PLC0415

            model = FallbackModel(
                model,
                *(self._model(model_id) for model_id in fallbacks),
                fallback_on=(
                    ModelRateLimitError,
                    ModelUnavailableError,
                    ModelServerError,
                    ModelConnectionError,  # includes ModelTimeoutError (one attempt timed out)
                    ModelRequestTimeout,
                ),
            )
        self._stage_models[stage] = model
        return model

    def model_settings(self, stage: str) -> ModelSettings:
        """The settings of a stage's primary model: what the cache key records (built once per stage).

        Requests carry only the settings common to every model; each model's stack adds its own
        provider's settings, so a fallback never sends the primary's (see ``llm/stack.py``).
        """
        cached = self._stage_settings.get(stage)
        if cached is None:
            primary = self.settings.stage_model(stage)
            merged: Any = {**common_settings(self.settings), **provider_settings(primary, self.settings)}
            cached = self._stage_settings[stage] = merged
        return cached

    def _stage_providers(self, stage: str) -> list[str]:
        """The providers of a stage's model and its fallbacks."""
        primary = self.settings.stage_model(stage)
        return [
            parse_model_id(model_id).provider
            for model_id in (primary, *self.settings.fallbacks_for(stage, primary))
        ]

    def request_settings(self, stage: str) -> ModelSettings:
        """What a stage's requests send: the common settings plus the prompt-cache options of its providers.

        Prompt-cache options never change an answer, so they are not in ``model_settings`` (the cache key).
        Their keys are provider-prefixed: each model of a fallback chain reads only its own.
        """
        cached = self._request_settings.get(stage)
        if cached is None:
            merged: Any = dict(self._common)
            for provider in self._stage_providers(stage):
                merged.update(cache_settings(provider, stage))
            cached = self._request_settings[stage] = merged
        return cached

    def _parameters(self, output_type: type[BaseModel]) -> ModelRequestParameters:
        """An ``Agent``'s request parameters for ``output_type``; each model resolves the output mode."""
        return request_parameters(output_type)

    def _digest(self, output_type: type[BaseModel]) -> str:
        digest = self._schema_digests.get(output_type)
        if digest is None:
            digest = self._schema_digests[output_type] = schema_digest(output_type)
        return digest

    def _key_basis(self, stage: str) -> dict[str, Any]:
        """The parts of a stage's cache keys that do not depend on the call (built once per stage)."""
        basis = self._key_bases.get(stage)
        if basis is None:
            model_id = self.settings.stage_model(stage)
            basis = self._key_bases[stage] = {
                "stage": stage,
                "model": parse_model_id(model_id).cache_identity,
                "fallbacks": [
                    parse_model_id(fallback).cache_identity
                    for fallback in self.settings.fallbacks_for(stage, model_id)
                ],
                "model_settings": {
                    key: value
                    for key, value in self.model_settings(stage).items()
                    if key not in _TRANSPORT_SETTINGS
                },
                "output_retries": self.settings.output_retries,
                "system_prompt": self.system_digest,
            }
            modes = {
                model: self.settings.output_mode_for(model)
                for model in (model_id, *self.settings.fallbacks_for(stage, model_id))
            }
            if set(modes.values()) != {"auto"}:  # keys of the default mode stay as they were
                basis["output_mode"] = modes
        return basis

    def key(self, stage: str, output_type: type[BaseModel], user_prompt: str) -> str:
        """The cache key of a call."""
        return cache_key(
            {**self._key_basis(stage), "schema": self._digest(output_type), "prompt": user_prompt}
        )

    # calls ------------------------------------------------------------------------------------
    async def call(
        self,
        *,
        stage: str,
        service_id: str,
        user_prompt: str,
        output_type: type[OutputT],
        validation_context: Mapping[str, Any] | None = None,
    ) -> CallResult[OutputT]:
        """Answer one stage prompt with a validated ``output_type``.

        Args:
            stage: The stage (selects the model, settings and time budget).
            service_id: The service the call is for.
            user_prompt: The user content of the request.
            output_type: The answer schema.
            validation_context: Per-call data for the schema's validators (not part of the cache key:
                the prompt already holds it). The gateway adds :data:`FINAL_ATTEMPT`, true on the
                last answer it will accept and on cached answers.

        Raises:
            StageError: The answer never matched the schema within the re-ask bound.
            ModelCallError: The provider failed (after transport retries and fallbacks).
            StageTimeout: The call exceeded the stage's time budget.
        """
        self.stats.calls += 1
        self.stats.by_stage[stage] = self.stats.by_stage.get(stage, 0) + 1
        key = self.key(stage, output_type, user_prompt)
        corrupt_before = self.cache.stats.corrupt
        payload = self.cache.get(key)
        lookup = "hit" if payload is not None else "miss"
        if self.cache.stats.corrupt > corrupt_before:
            lookup = "corrupt"
        self.metrics.add(self.metrics.cache_requests, 1, {"result": lookup, "stage": stage})
        if payload is not None:
            try:
                output = output_type.model_validate(
                    payload["output"], context=_attempt_context(validation_context, final=True)
                )
                return CallResult(output=output, model=str(payload["model"]), cached=True)
            except (KeyError, ValidationError):
                self.cache.stats.corrupt += 1
        result = await self._call_model(stage, service_id, user_prompt, output_type, validation_context)
        self.cache.put(
            key,
            {
                "output": result.output.model_dump(mode="json", by_alias=True),
                "model": result.model,
                "usage": {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens},
            },
        )
        return result

    @contextlib.asynccontextmanager
    async def admitted(self, *, stage: str, service_id: str, model_id: str) -> AsyncIterator[str]:
        """Wait for a slot under ``llm_concurrency``; yields the request id.

        Rate permits are taken later, immediately before each HTTP attempt (``llm/admission.py``):
        slot first, permit last, so a backlog never turns into a burst.
        """
        request_id = f"{service_id}:{stage}:{next(self._sequence)}"
        attributes = {"stage": stage, "model_name": model_id}
        with logfire.span(
            "sa_llm_queue.submit",
            stage=stage,
            model_name=model_id,
            service_id=service_id,
            request_id=request_id,
        ):
            self.metrics.add(self.metrics.queue_submitted, 1, attributes)
            self.metrics.add(self.metrics.queue_depth, 1, attributes)
            self.waiting += 1
            submitted = self.clock.now()
            waiting = True
            try:
                async with self._semaphore:
                    waiting = False
                    self.waiting -= 1
                    self.metrics.add(self.metrics.queue_depth, -1, attributes)
                    self.metrics.record(self.metrics.queue_wait, self.clock.now() - submitted, attributes)
                    self.metrics.add(self.metrics.queue_inflight, 1, attributes)
                    self.in_flight += 1
                    try:
                        yield request_id
                    finally:
                        self.in_flight -= 1
                        self.metrics.add(self.metrics.queue_inflight, -1, attributes)
                        self.metrics.add(self.metrics.queue_completed, 1, attributes)
            finally:
                if waiting:
                    self.waiting -= 1
                    self.metrics.add(self.metrics.queue_depth, -1, attributes)

    def _account(
        self, stage: str, service_id: str, model_id: str, response: ModelResponse, seconds: float
    ) -> None:
        """Price a response, and record its tokens, cost and latency."""
        usage = response.usage
        answered = answered_by(response, model_id)
        if is_offline(answered) or (is_offline(model_id) and not response.provider_name):
            rate = Decimal(str(self.settings.offline.usd_per_million_tokens))
            tokens = usage.input_tokens + usage.output_tokens
            price = Price(usd=rate * tokens / 1_000_000, synthetic=True)
        else:
            price = price_response(response, model_id)
        cached = cached_tokens(usage)
        self.ledger.record(
            stage,
            answered,
            service_id,
            price,
            usage.input_tokens,
            usage.output_tokens,
            cache_read_tokens=cached,
            cache_write_tokens=cache_write_tokens(usage),
        )
        samples = self.durations.setdefault(stage, [])
        if len(samples) < 200_000:  # enough for percentiles; bounded whatever the run size
            samples.append(seconds)
        attributes = {"stage": stage, "model_name": answered}
        self.metrics.add(self.metrics.tokens, usage.input_tokens, {**attributes, "direction": "input"})
        self.metrics.add(self.metrics.tokens, usage.output_tokens, {**attributes, "direction": "output"})
        self.metrics.add(self.metrics.cached_tokens, cached, attributes)
        if price.usd:
            self.metrics.add(self.metrics.cost, float(price.usd), attributes)
        if (response.model_id or model_id) != model_id:
            self.stats.fallbacks += 1  # a fallback model answered

    async def _call_model(
        self,
        stage: str,
        service_id: str,
        user_prompt: str,
        output_type: type[OutputT],
        validation_context: Mapping[str, Any] | None = None,
    ) -> CallResult[OutputT]:
        from pydantic_ai.exceptions import (  # noqa: PLC0415
            FallbackExceptionGroup,
            ModelAPIError,
            UnexpectedModelBehavior,
            UserError,
        )

        model_id = self.settings.stage_model(stage)
        try:
            output, response, usage = await self._structured(
                stage, service_id, user_prompt, output_type, validation_context
            )
        except UserError as exc:  # pydantic-ai refused the request, e.g. an output mode the model lacks
            self.stats.failures += 1
            mode = self.settings.output_mode_for(model_id)
            raise ModelCallError(
                f"pydantic-ai refused the request: {exc} (output_mode {mode} of {model_id}: "
                "see output_mode, models_output_mode)",
                systemic="configuration",
                service_id=service_id,
                stage=stage,
                model_name=model_id,
            ) from exc
        except (ModelAPIError, UnexpectedModelBehavior, FallbackExceptionGroup) as exc:
            self.stats.failures += 1
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
            raise ModelCallError(
                message,
                systemic=systemic,
                service_id=service_id,
                stage=stage,
                model_name=model_id,
                kind=QuarantineKind.TIMEOUT if timed_out else QuarantineKind.MODEL_ERROR,
            ) from exc
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
    ) -> tuple[OutputT, ModelResponse, tuple[int, int]]:
        """One request, plus bounded re-asks when the answer does not validate.

        This is what an ``Agent`` does for the output mode of each model (``llm/output_modes.py``),
        driven through pydantic-ai's direct API: the same request parameters, answer processing and
        retry parts, without the agent graph's per-call CPU cost (see docs/architecture.md). Unlike the
        agent, a cut-off or oversized answer is re-asked for without being sent back.
        """
        from pydantic_ai.direct import model_request  # noqa: PLC0415
        from pydantic_ai.messages import ModelRequest, SystemPromptPart, UserPromptPart  # noqa: PLC0415

        model = self.stage_model(stage)
        parameters = self._parameters(output_type)
        settings = self.request_settings(stage)
        messages: list[ModelMessage] = [
            ModelRequest(
                parts=[
                    SystemPromptPart(self.system_prompt),
                    UserPromptPart(user_prompt_content(user_prompt, self._stage_providers(stage))),
                ]
            )
        ]
        tokens_in = tokens_out = 0
        attempts = self.settings.output_retries + 1
        attempt = 0
        model_id = self.settings.stage_model(stage)
        while True:
            attempt += 1
            async with self.admitted(stage=stage, service_id=service_id, model_id=model_id) as request_id:
                started = time.perf_counter()
                outcome = "error"
                marker = current_request.set((request_id, service_id))
                reasking = _REASKING.set(attempt > 1)
                try:
                    response = await model_request(
                        model, messages, model_settings=settings, model_request_parameters=parameters
                    )
                    outcome = "ok"
                finally:
                    _REASKING.reset(reasking)
                    current_request.reset(marker)
                    self.metrics.record(
                        self.metrics.request_duration,
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
            self.stats.max_attempts = max(self.stats.max_attempts, attempt)
            self._account(stage, service_id, model_id, response, time.perf_counter() - started)
            tokens_in += response.usage.input_tokens
            tokens_out += response.usage.output_tokens
            self.stats.input_tokens += response.usage.input_tokens
            self.stats.output_tokens += response.usage.output_tokens
            context = _attempt_context(validation_context, final=attempt == attempts)
            answered = response.model_id or model_id
            mode = self.settings.output_mode_for(answered)
            try:
                output = read_answer(response, output_type, mode, context)
            except AnswerRejected as rejected:
                cap = output_cap(answered, self.settings)
                if attempt == attempts:
                    self.stats.failures += 1
                    raise StageError(
                        f"the model's answer did not match the schema after {attempts - 1} re-ask(s): "
                        f"{_rejection(response, rejected, cap)}",
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


def answered_by(response: ModelResponse, model_id: str) -> str:
    """Who answered, for provenance and the summary.

    The configured id of the model that answered (``openai-chat:qwen``, or a fallback's id), which
    ``ConfiguredModel`` stamps on its responses; a model that names no provider (the offline model, test
    doubles) by the name it reports.
    """
    configured = response.model_id or model_id
    return configured if response.provider_name else response.model_name or configured


def _rejection(response: ModelResponse, rejected: AnswerRejected, cap: int | None) -> str:
    """Why the last answer was rejected, for people (pydantic-ai's wording for a cut-off answer)."""
    if response.finish_reason == "length":
        from pydantic_ai._output import truncated_output_message  # noqa: PLC0415

        return truncated_output_message(cap)
    return explain_failure(rejected)


def _attempt_context(context: Mapping[str, Any] | None, *, final: bool) -> dict[str, Any] | None:
    """The validation context of one answer: the caller's, plus whether it is the last one accepted."""
    return None if context is None else {**context, FINAL_ATTEMPT: final}
