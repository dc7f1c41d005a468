"""Rate admission at the moment of sending, per model.

The concurrency slot is taken first (the gateway's ``llm_concurrency`` and the model's own cap);
the rate permit is taken last, immediately before each request leaves, so a backlog waiting for a
slot can never turn into a burst of permits taken minutes earlier.

* Models behind our HTTP transport (real providers): :class:`RateLimitedTransport` sits under the
  tenacity retry transport, so every HTTP attempt, retries included, takes its own permit, and every
  response (429s included) feeds the provider's rate-limit headers to the model's :class:`ModelLimits`.
* Other models (the offline model, test fakes): :class:`RateLimitedModel`, a pydantic-ai
  ``WrapperModel``, takes the permit around each request. They send no headers, so there is no
  probe window for them; a rate-limit error they raise pauses their own model at once.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from pydantic_ai.exceptions import ModelRateLimitError
from pydantic_ai.models.wrapper import WrapperModel

from service_ambitions.llm.ratelimits import HeaderLimits, ModelLimits, parse_rate_limit_headers

if TYPE_CHECKING:
    import httpx2
    from pydantic_ai.messages import ModelMessage, ModelResponse
    from pydantic_ai.models import Model, ModelRequestParameters
    from pydantic_ai.settings import ModelSettings

__all__ = ["DEFAULT_OUTPUT_ALLOWANCE", "RateLimitedModel", "RateLimitedTransport", "estimate_request_tokens"]

DEFAULT_OUTPUT_ALLOWANCE = 2048
"""Output tokens assumed for a request that states no cap (settled with real usage afterwards)."""
_OUTPUT_CAP_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def estimate_request_tokens(prompt_chars: int, max_tokens: int | None) -> int:
    """Tokens a request will be metered for, before it is sent: characters ÷ 4 plus the output cap."""
    return prompt_chars // 4 + (max_tokens or DEFAULT_OUTPUT_ALLOWANCE)


def _body_estimate(body: bytes) -> int:
    cap: int | None = None
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        cap = next((int(data[key]) for key in _OUTPUT_CAP_KEYS if isinstance(data.get(key), int)), None)
    return estimate_request_tokens(len(body), cap)


def _usage_tokens(body: bytes) -> int | None:
    """Total tokens from an OpenAI- or Anthropic-style JSON answer, when it says."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [
        usage.get(key) for key in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")
    ]
    numbers = [part for part in parts if isinstance(part, int)]
    return sum(numbers) if numbers else None


_BATCH_PATHS = re.compile(r"/(files|batches)(/|$)")


class RateLimitedTransport:
    """An httpx2 transport that admits each HTTP attempt under a model's limits and learns from answers."""

    def __init__(self, wrapped: Any, limits: ModelLimits) -> None:
        self.wrapped = wrapped
        self.limits = limits

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Take a permit, send, read the rate-limit headers, settle the permit with real usage.

        Batch API calls (files, batches) pass straight through: they are not model requests, and the
        providers meter them apart.
        """
        if _BATCH_PATHS.search(request.url.path):
            response: httpx2.Response = await self.wrapped.handle_async_request(request)
            return response
        body = request.content if request.method == "POST" else b""
        admission = await self.limits.acquire(_body_estimate(body))
        try:
            response = await self.wrapped.handle_async_request(request)
        except BaseException:
            admission.permit.settle(0)
            self.limits.failed_before_answer()
            raise
        self.limits.observe(response.status_code, parse_rate_limit_headers(response.headers), admission)
        if response.status_code >= 400:
            admission.permit.settle(0)  # not processed: providers do not meter refused requests
        elif self.limits.tpm is not None and "json" in response.headers.get("content-type", ""):
            # Real usage matters only under a token limit (no need to read and parse every answer
            # twice otherwise; a limit learned later starts from the estimates, which are higher).
            await response.aread()
            used = _usage_tokens(response.content)
            if used is not None:
                admission.permit.settle(used)
        return response

    async def aclose(self) -> None:
        """Close the transport underneath."""
        await self.wrapped.aclose()


class RateLimitedModel(WrapperModel):
    """Takes the model's rate permit immediately before each request (models without HTTP transport)."""

    def __init__(self, wrapped: Model, limits: ModelLimits, *, max_tokens: int | None = None) -> None:
        super().__init__(wrapped)
        self.limits = limits
        self.max_tokens = max_tokens
        limits.expect_no_headers()

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """Admit, pass the request on, settle the permit with the answer's usage."""
        chars = sum(len(str(getattr(part, "content", ""))) for message in messages for part in message.parts)
        admission = await self.limits.acquire(estimate_request_tokens(chars, self.max_tokens))
        try:
            response = await super().request(messages, model_settings, model_request_parameters)
        except BaseException as exc:
            admission.permit.settle(0)
            if isinstance(exc, ModelRateLimitError) or getattr(exc, "status_code", None) == 429:
                # Pause this model (not the primary of a fallback chain) before anyone else is sent.
                retry_after = getattr(exc, "retry_after", None)
                self.limits.observe(429, HeaderLimits(retry_after=retry_after), admission)
            else:
                self.limits.failed_before_answer()
            raise
        self.limits.observe(200, HeaderLimits(), admission)
        admission.permit.settle(response.usage.input_tokens + response.usage.output_tokens)
        return response
