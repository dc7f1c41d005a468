"""The stack of wrappers around each resolved model, fallbacks included.

Every model a run may call gets its own stack, assembled once::

    ConcurrencyLimitedModel   the model's own concurrency cap (models_rate_limits.<id>.concurrency)
    └── RateLimitedModel      rate permit per request (models without our HTTP transport only)
        └── SettingsModel     this model's provider settings (SDK retries off, reasoning, timeout)
            └── ChaosModel    injected failures (--inject-failures)
                └── provider model ── httpx2 client: tenacity retries ── RateLimitedTransport ── HTTP

``FallbackModel`` goes above the per-model stacks, so a fallback is admitted under its own limits
and cap and sends its own provider's settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import merge_model_settings

from service_ambitions.llm.providers import parse_model_id
from service_ambitions.llm.transport import SDK_RETRY_PROVIDERS, TRANSPORT_PROVIDERS

if TYPE_CHECKING:
    from pydantic_ai.messages import ModelMessage, ModelResponse
    from pydantic_ai.models import Model, ModelRequestParameters
    from pydantic_ai.settings import ModelSettings

    from service_ambitions.settings import Settings

__all__ = ["SettingsModel", "common_settings", "over_our_transport", "provider_settings"]


def over_our_transport(model_id: str) -> bool:
    """Whether the model's HTTP goes through our retrying, rate-limited transport."""
    return parse_model_id(model_id).provider in TRANSPORT_PROVIDERS


def common_settings(settings: Settings) -> dict[str, Any]:
    """Request settings that are the same for every model (they change the answer)."""
    common: dict[str, Any] = {"seed": settings.seed}
    if settings.temperature is not None:
        common["temperature"] = settings.temperature
    if settings.max_tokens is not None:
        common["max_tokens"] = settings.max_tokens
    return common


def provider_settings(model_id: str, settings: Settings) -> dict[str, Any]:
    """Settings one model's provider takes, and only that provider."""
    provider = parse_model_id(model_id).provider
    own: dict[str, Any] = {}
    if provider not in TRANSPORT_PROVIDERS and provider != "offline":
        # request_timeout bounds one HTTP attempt; our client carries it where it is in place.
        # (pydantic-ai's own ``request_timeout`` is one deadline over every attempt, so a stalled
        # attempt could never be retried.)
        own["timeout"] = settings.request_timeout
    if provider in SDK_RETRY_PROVIDERS:
        own["max_retries"] = 0  # our transport retries; the SDK must not multiply attempts
    if provider.startswith("openai") and settings.reasoning.effort:
        own["openai_reasoning_effort"] = settings.reasoning.effort
    if provider.startswith("openai") and settings.reasoning.summary:
        own["openai_reasoning_summary"] = settings.reasoning.summary
    return own


class SettingsModel(WrapperModel):
    """A model with settings of its own, layered under each request's settings (as ``Model(settings=)``)."""

    def __init__(self, wrapped: Model, settings: ModelSettings) -> None:
        super().__init__(wrapped)
        self._own = settings

    @property
    def settings(self) -> ModelSettings | None:
        """The wrapped model's settings with this model's own on top."""
        return merge_model_settings(self.wrapped.settings, self._own)

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """Send with this model's settings merged in."""
        merged = merge_model_settings(self._own, model_settings)
        return await self.wrapped.request(messages, merged, model_request_parameters)
