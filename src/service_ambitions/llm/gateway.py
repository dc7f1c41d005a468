"""The LLM gateway: the one path every model call of a run takes.

``call`` = cache lookup → concurrency cap → timeout → pydantic-ai agent (structured output with
bounded re-asks) over the stage's model, wrapped in a ``FallbackModel`` when fallbacks are set.
Foreign exceptions are translated here, once, into :mod:`service_ambitions.errors` types.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from service_ambitions.errors import ModelCallError, StageError, StageTimeout
from service_ambitions.llm.providers import parse_model_id, resolve_model
from service_ambitions.store.cache import ResponseCache, cache_key

if TYPE_CHECKING:
    from pydantic_ai import Agent
    from pydantic_ai.models import Model
    from pydantic_ai.settings import ModelSettings

    from service_ambitions.settings import Settings

__all__ = ["CallResult", "Gateway", "GatewayStats"]

OutputT = TypeVar("OutputT", bound=BaseModel)


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
    output_reasks: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    failures: int = 0
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
        model_factory: Callable[[str, Settings], Any] = resolve_model,
    ) -> None:
        """Create the gateway.

        Args:
            settings: The run's settings.
            system_prompt: The system prompt shared by every call.
            cache: The response cache.
            models: Ready-made models by id, used before ``model_factory`` (tests inject fakes here).
            model_factory: Builds a model from its id.
        """
        self.settings = settings
        self.system_prompt = system_prompt
        self.system_digest = hashlib.sha256(system_prompt.encode()).hexdigest()
        self.cache = cache
        self.stats = GatewayStats()
        self._given = dict(models or {})
        self._factory = model_factory
        self._stage_models: dict[str, Model] = {}
        self._agents: dict[tuple[str, type[BaseModel]], Agent[None, Any]] = {}
        self._schema_digests: dict[type[BaseModel], str] = {}
        self._semaphore = asyncio.Semaphore(settings.llm_concurrency)

    # models -----------------------------------------------------------------------------------
    def _model(self, model_id: str) -> Model:
        if model_id in self._given:
            return self._given[model_id]
        model: Model = self._factory(model_id, self.settings)
        self._given[model_id] = model
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
                ModelServerError,
                ModelUnavailableError,
            )
            from pydantic_ai.models.fallback import FallbackModel  # noqa: PLC0415

            model = FallbackModel(
                model,
                *(self._model(model_id) for model_id in fallbacks),
                fallback_on=(ModelRateLimitError, ModelUnavailableError, ModelServerError, ModelConnectionError),
            )
        self._stage_models[stage] = model
        return model

    def model_settings(self, stage: str) -> ModelSettings:
        """Output-affecting and transport settings for a stage's requests."""
        settings: dict[str, Any] = {"request_timeout": self.settings.request_timeout}
        if self.settings.temperature is not None:
            settings["temperature"] = self.settings.temperature
        if self.settings.max_tokens is not None:
            settings["max_tokens"] = self.settings.max_tokens
        settings["seed"] = self.settings.seed
        provider = parse_model_id(self.settings.stage_model(stage)).provider
        if provider.startswith("openai") and self.settings.reasoning.effort:
            settings["openai_reasoning_effort"] = self.settings.reasoning.effort
        if provider.startswith("openai") and self.settings.reasoning.summary:
            settings["openai_reasoning_summary"] = self.settings.reasoning.summary
        return settings  # type: ignore[return-value]

    def _agent(self, stage: str, output_type: type[BaseModel]) -> Agent[None, Any]:
        agent = self._agents.get((stage, output_type))
        if agent is None:
            from pydantic_ai import Agent  # noqa: PLC0415

            agent = Agent(
                output_type=output_type,
                system_prompt=self.system_prompt,
                retries={"output": self.settings.output_retries, "tools": self.settings.output_retries},
            )
            self._agents[(stage, output_type)] = agent
        return agent

    def _digest(self, output_type: type[BaseModel]) -> str:
        digest = self._schema_digests.get(output_type)
        if digest is None:
            digest = self._schema_digests[output_type] = schema_digest(output_type)
        return digest

    def key(self, stage: str, output_type: type[BaseModel], user_prompt: str) -> str:
        """The cache key of a call."""
        model_id = self.settings.stage_model(stage)
        return cache_key(
            {
                "stage": stage,
                "model": parse_model_id(model_id).qualified,
                "fallbacks": self.settings.fallbacks_for(stage, model_id),
                "model_settings": {
                    key: value for key, value in self.model_settings(stage).items() if key != "request_timeout"
                },
                "output_retries": self.settings.output_retries,
                "system_prompt": self.system_digest,
                "schema": self._digest(output_type),
                "prompt": user_prompt,
            }
        )

    # calls ------------------------------------------------------------------------------------
    async def call(
        self,
        *,
        stage: str,
        service_id: str,
        user_prompt: str,
        output_type: type[OutputT],
    ) -> CallResult[OutputT]:
        """Answer one stage prompt with a validated ``output_type``.

        Raises:
            StageError: The answer never matched the schema within the re-ask bound.
            ModelCallError: The provider failed (after transport retries and fallbacks).
            StageTimeout: The call exceeded the stage's time budget.
        """
        self.stats.calls += 1
        self.stats.by_stage[stage] = self.stats.by_stage.get(stage, 0) + 1
        key = self.key(stage, output_type, user_prompt)
        payload = self.cache.get(key)
        if payload is not None:
            try:
                output = output_type.model_validate(payload["output"])
                return CallResult(output=output, model=str(payload["model"]), cached=True)
            except (KeyError, ValidationError):
                self.cache.stats.corrupt += 1
        result = await self._call_model(stage, service_id, user_prompt, output_type)
        self.cache.put(
            key,
            {
                "output": result.output.model_dump(mode="json", by_alias=True),
                "model": result.model,
                "usage": {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens},
            },
        )
        return result

    async def _call_model(
        self, stage: str, service_id: str, user_prompt: str, output_type: type[OutputT]
    ) -> CallResult[OutputT]:
        from pydantic_ai.exceptions import ModelAPIError, UnexpectedModelBehavior  # noqa: PLC0415

        model_id = self.settings.stage_model(stage)
        budget = float(getattr(self.settings.stage_timeouts, stage))
        agent = self._agent(stage, output_type)
        try:
            async with self._semaphore, asyncio.timeout(budget):
                run = await agent.run(
                    user_prompt, model=self.stage_model(stage), model_settings=self.model_settings(stage)
                )
        except TimeoutError:
            self.stats.failures += 1
            raise StageTimeout(
                f"no answer within the {budget:g} s budget", service_id=service_id, stage=stage, model_name=model_id
            ) from None
        except UnexpectedModelBehavior as exc:
            self.stats.failures += 1
            raise StageError(
                f"the model's answer did not match the schema after {self.settings.output_retries} re-ask(s): "
                f"{explain_failure(exc)}",
                service_id=service_id,
                stage=stage,
                model_name=model_id,
                attempt=self.settings.output_retries + 1,
                payload=getattr(exc, "body", None),
            ) from exc
        except ModelAPIError as exc:
            self.stats.failures += 1
            raise ModelCallError(
                f"model call failed: {type(exc).__name__}: {exc}",
                service_id=service_id,
                stage=stage,
                model_name=model_id,
            ) from exc
        usage = run.usage
        self.stats.model_requests += usage.requests
        self.stats.output_reasks += max(0, usage.requests - 1)
        self.stats.input_tokens += usage.input_tokens
        self.stats.output_tokens += usage.output_tokens
        response = run.response
        answered = response.model_name or model_id
        if response.provider_name and ":" not in answered:
            answered = f"{response.provider_name}:{answered}"
        return CallResult(
            output=run.output,
            model=answered,
            cached=False,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
        )
