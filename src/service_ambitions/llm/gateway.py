"""The LLM gateway: the one path every model call of a run takes, assembled from one-job layers.

``call`` = answer cache (``answer_cache``, keys from ``keys``) → the request loop (``request_loop``:
a run-wide slot from ``slots``, the structured request with bounded re-asks, accounting in
``accounting``, error translation in ``failures``) → the stage's model. The gateway assembles that
model once per stage, the way pydantic-ai composes models: a ``FallbackModel`` over one stack of
wrappers per resolved model (see ``llm/stack.py``)::

    ConcurrencyLimitedModel     the model's own cap (models_rate_limits.<id>.concurrency)
    └── RateLimitedModel        a rate permit per request (models without our HTTP transport)
        └── SettingsModel       the model's provider settings
            └── ChaosModel      injected failures (--inject-failures)
                └── ConfiguredModel   output mode, configured id on responses, request counting
                    └── [WaveModel]   batch mode: answers from provider batches
                        └── provider model ── httpx2: tenacity retries ── RateLimitedTransport ── HTTP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from service_ambitions.llm.accounting import Accounting, GatewayStats
from service_ambitions.llm.admission import RateLimitedModel
from service_ambitions.llm.answer_cache import AnswerCache
from service_ambitions.llm.figures import (
    CallFigures,
    Progress,
    cache_counters,
    percentiles,
    prompt_cache_data,
)
from service_ambitions.llm.keys import CacheKeys
from service_ambitions.llm.limiter import Clock, MonotonicClock
from service_ambitions.llm.output_modes import ConfiguredModel
from service_ambitions.llm.providers import resolve_model
from service_ambitions.llm.ratelimits import ModelLimits
from service_ambitions.llm.request_loop import CallResult, OutputT, RequestLoop
from service_ambitions.llm.slots import RequestSlots
from service_ambitions.llm.stack import SettingsModel, over_our_transport, provider_settings
from service_ambitions.observability.metrics import RunMetrics

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic_ai.models import Model
    from pydantic_ai.settings import ModelSettings

    from service_ambitions.llm.batching import BatchCoordinator
    from service_ambitions.llm.cost import CostLedger
    from service_ambitions.settings import Settings
    from service_ambitions.store.cache import ResponseCache

__all__ = ["CallResult", "Gateway", "GatewayStats"]

log = logging.getLogger("service_ambitions.gateway")

_STAGES = ("descriptions", "features", "mapping")


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
        ledger: CostLedger | None = None,
    ) -> None:
        """Create the gateway.

        Args:
            settings: The run's settings.
            system_prompt: The system prompt shared by every call.
            cache: The response cache.
            models: Ready-made models by id, used before ``model_factory`` (tests inject fakes here).
            model_factory: Builds a model from its id.
            metrics: The run's metric instruments.
            clock: Clock of the rate limiters and the queue metrics (tests inject a virtual one).
            ledger: The run's cost ledger (shared with the engine's budget); a new one when omitted.
        """
        self.settings = settings
        self.system_prompt = system_prompt
        self.cache = cache
        self.metrics = metrics or RunMetrics()
        self.clock: Clock = clock or MonotonicClock()
        self._given = dict(models or {})
        self._factory = model_factory
        self._limits: dict[str, ModelLimits] = {}
        self._built: dict[str, Model] = {}
        self._stage_models: dict[str, Model] = {}
        self.metrics.observe_rate_limits(self.limits_in_force)
        self.keys = CacheKeys(settings, system_prompt)
        self.accounting = Accounting(settings, self.metrics, ledger)
        self.slots = RequestSlots(settings.llm_concurrency, self.metrics, self.clock)
        self.answers = AnswerCache(cache, self.metrics)
        self.requests = RequestLoop(
            settings,
            system_prompt,
            stage_model=self.stage_model,
            slots=self.slots,
            accounting=self.accounting,
        )
        # The run's figures, read by the engine and the summary (the same objects as the layers').
        self.stats: GatewayStats = self.accounting.stats
        self.ledger = self.accounting.ledger
        self.durations = self.accounting.durations
        self.system_digest = self.keys.system_digest
        self.batching: BatchCoordinator | None = None
        self._batch_mode = "live"

    # figures of the layers --------------------------------------------------------------------
    def figures(self) -> CallFigures:
        """An immutable snapshot of what the run's calls did (for the run report and the summary)."""
        stats = self.stats
        return CallFigures(
            calls=stats.calls,
            requests=stats.model_requests,
            output_reasks=stats.output_reasks,
            fallbacks=stats.fallbacks,
            transport_retries=self.transport_retries,
            failures=stats.failures,
            by_stage=dict(stats.by_stage),
            input_tokens=stats.input_tokens,
            output_tokens=stats.output_tokens,
            cost=self.ledger.snapshot(),
            prompt_cache=prompt_cache_data(self.ledger),
            rate_limits=self.limits_in_force(),
            latency_seconds={
                stage: percentiles(samples) for stage, samples in sorted(self.durations.items())
            },
            cache=cache_counters(self.cache.stats),
        )

    def progress(self) -> Progress:
        """Calls so far and their cost (cheap: for a progress display)."""
        return Progress(calls=self.stats.calls, cost_usd=self.ledger.total_usd)

    @property
    def transport_retries(self) -> int:
        """HTTP requests sent again by the transport (each is also a request in ``stats``)."""
        return self.accounting.transport_retries

    @property
    def waiting(self) -> int:
        """Requests waiting for an ``llm_concurrency`` slot."""
        return self.slots.waiting

    @property
    def in_flight(self) -> int:
        """Requests holding an ``llm_concurrency`` slot."""
        return self.slots.in_flight

    def admitted(self, *, stage: str, service_id: str, model_id: str) -> AbstractAsyncContextManager[str]:
        """Wait for a slot under ``llm_concurrency``; yields the request id (see ``llm/slots.py``)."""
        return self.slots.admitted(stage=stage, service_id=service_id, model_id=model_id)

    def prepare(self, model_ids: Iterable[str]) -> None:
        """Build the stacks of the models a command will call, before any work.

        A model that cannot be built (an unknown provider, a provider SDK that is not installed) is one
        usage error up front instead of a failure of every service.

        Raises:
            ConfigError: Naming the model and why.
        """
        for model_id in model_ids:
            self._model(model_id)

    # batch mode -------------------------------------------------------------------------------
    def use_batches(self, coordinator: BatchCoordinator, *, mode: str) -> None:
        """Send requests through provider batches (``batch``), or those of batch-capable models (``auto``).

        Every stage model is built now, so a model without a batch API is refused (``batch``) before
        anything is submitted.

        Raises:
            ConfigError: ``batch`` and a stage model (or fallback) has no batch API.
        """
        self.batching = coordinator
        self._batch_mode = mode
        self._built.clear()
        self._stage_models.clear()
        for stage in _STAGES:
            self.stage_model(stage)

    def _batched(self, model_id: str, model: Model) -> Model:
        """The model under batch mode: its requests wait in waves (``llm/batching.py``)."""
        from service_ambitions.llm.batching import WaveModel, supports_batches  # noqa: PLC0415

        assert self.batching is not None
        if self._batch_mode == "auto" and not supports_batches(model):
            log.info("model %s has no batch API: its requests are sent live (--mode auto)", model_id)
            return model
        return WaveModel(model, model_id, self.batching)

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
        """The model's own stack (see the module docstring and ``llm/stack.py``), built once per run."""
        built = self._built.get(model_id)
        if built is not None:
            return built
        limits = self.limits_for(model_id)
        accounting = self.accounting
        given = model_id in self._given
        over_http = not given and over_our_transport(model_id)
        if given:
            model = self._given[model_id]
        elif over_http:
            model = self._factory(
                model_id, self.settings, on_retry=accounting.count_transport_retry, limits=limits
            )
        else:
            model = self._factory(model_id, self.settings, on_retry=accounting.count_transport_retry)
        if self.batching is not None:
            model = self._batched(model_id, model)
        model = ConfiguredModel(
            model, model_id, self.settings.output_mode_for(model_id), on_request=accounting.count_request
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

    # what requests send and what keys record ---------------------------------------------------
    def model_settings(self, stage: str) -> ModelSettings:
        """The settings of a stage's primary model: what the cache key records (``llm/keys.py``)."""
        return self.keys.model_settings(stage)

    def request_settings(self, stage: str) -> ModelSettings:
        """What a stage's requests send: common settings, prompt-cache options (``llm/request_loop.py``)."""
        return self.requests.request_settings(stage)

    def _key_basis(self, stage: str) -> dict[str, Any]:
        """The parts of a stage's cache keys that do not depend on the call."""
        return self.keys.basis(stage)

    def key(self, stage: str, output_type: type[BaseModel], user_prompt: str) -> str:
        """The cache key of a call."""
        return self.keys.key(stage, output_type, user_prompt)

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
        cached = self.answers.lookup(key, stage, output_type, validation_context)
        if cached is not None:
            return cached
        result = await self.requests.answer(
            stage, service_id, user_prompt, output_type, validation_context, key=key
        )
        self.answers.store(key, result)
        return result
