"""Provider prompt caching: request settings, the cache point in the user message, cached tokens.

Providers cache the longest prompt *prefix* they have seen recently and bill it at a fraction of the
input price. The stage templates are laid out static-first for that (``content/render.py``): system
prompt, then the stage's fixed instructions and data, then ``SERVICE_CONTEXT:`` and the per-plateau
data. What the providers need besides the layout:

- OpenAI caches every prompt of 1024 tokens or more by itself; ``prompt_cache_key`` routes requests
  that share a prefix to the same cache, so one key per stage keeps the stage's prefix warm.
- Anthropic caches only at explicit breakpoints: one on the system prompt
  (``anthropic_cache_instructions``) and, in the user message, a :class:`~pydantic_ai.messages.CachePoint`
  after its fixed part (:func:`user_prompt_content`). Nothing after the service is marked: it is never
  read back, and a cache write costs more than plain input.

None of this changes an answer, so none of it belongs in a response-cache key: the gateway sends
these settings with each request (``Gateway.request_settings``), not in the stage's ``model_settings``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic_ai.messages import UserContent
    from pydantic_ai.usage import RequestUsage

__all__ = [
    "OPENAI_PROVIDERS",
    "SERVICE_MARKER",
    "cache_key",
    "cache_settings",
    "cache_write_tokens",
    "cached_tokens",
    "split_static",
    "user_prompt_content",
]

OPENAI_PROVIDERS = frozenset({"openai", "openai-chat", "openai-responses"})
_CACHE_POINT_PROVIDERS = frozenset({"anthropic"})
SERVICE_MARKER = "SERVICE_CONTEXT: "
"""Starts the line of the per-service data; everything before its first occurrence is the fixed part."""


def cache_key(stage: str) -> str:
    """The OpenAI ``prompt_cache_key`` of a stage: stable across runs and services."""
    return f"service-ambitions:{stage}"


def cache_settings(provider: str, stage: str) -> dict[str, Any]:
    """The pydantic-ai model settings that turn on a provider's prompt caching for a stage.

    Args:
        provider: The provider of the model (``openai``, ``openai-chat``, ``anthropic``...).
        stage: The pipeline stage.

    Returns:
        ``{"openai_prompt_cache_key": ...}`` for OpenAI, ``{"anthropic_cache_instructions": True}`` (a
        5-minute breakpoint on the system prompt) for Anthropic, nothing for other providers (those
        that cache do it without request settings, or not at all).
    """
    if provider in OPENAI_PROVIDERS:
        return {"openai_prompt_cache_key": cache_key(stage)}
    if provider in _CACHE_POINT_PROVIDERS:
        return {"anthropic_cache_instructions": True}
    return {}


def split_static(user_prompt: str) -> tuple[str, str]:
    """Split a user message before its ``SERVICE_CONTEXT:`` line: ``(fixed part, per-service part)``.

    The fixed part is ``""`` when the message starts with the service (a template without a
    ``{service_context}`` slot) or has none. Joined, the two parts are the message unchanged.
    """
    if user_prompt.startswith(SERVICE_MARKER):
        return "", user_prompt
    index = user_prompt.find("\n" + SERVICE_MARKER)
    if index < 0:
        return "", user_prompt
    return user_prompt[: index + 1], user_prompt[index + 1 :]


def user_prompt_content(user_prompt: str, providers: Iterable[str]) -> str | Sequence[UserContent]:
    """The content of a request's user message part.

    For a provider that caches only at breakpoints (Anthropic), the message goes in two text parts
    with a :class:`~pydantic_ai.messages.CachePoint` after the fixed one, so the fixed part is cached
    across services; the text is unchanged. For every other provider it is the plain string.

    Args:
        user_prompt: The user message.
        providers: The providers of the stage's models (the primary and its fallbacks).
    """
    if _CACHE_POINT_PROVIDERS.isdisjoint(providers):
        return user_prompt
    fixed, rest = split_static(user_prompt)
    if not fixed:
        return user_prompt
    from pydantic_ai.messages import CachePoint  # noqa: PLC0415

    return [fixed, CachePoint(), rest]


def cached_tokens(usage: RequestUsage | None) -> int:
    """Input tokens of a response served from the provider's prompt cache (included in its input tokens)."""
    return int(getattr(usage, "cache_read_tokens", 0) or 0)


def cache_write_tokens(usage: RequestUsage | None) -> int:
    """Input tokens of a response written to the provider's prompt cache (Anthropic bills them higher)."""
    return int(getattr(usage, "cache_write_tokens", 0) or 0)
