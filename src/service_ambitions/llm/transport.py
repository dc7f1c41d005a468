"""Transport retries: one tenacity policy, in pydantic-ai's retrying HTTP transport.

Transient HTTP failures (429, 408, 5xx, connection errors and timeouts) are retried here, honouring
``Retry-After``/``retry-after-ms``, with ``transport_retries.attempts`` and ``max_wait`` from the
settings. The provider SDKs' own retries are switched off (``max_retries=0``) wherever this
transport is in place, so attempts are never multiplied. Content problems (an answer that does
not match the schema) are not retried here: the gateway re-asks for those.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx2
    from tenacity import RetryCallState

    from service_ambitions.settings import Settings

__all__ = ["RETRY_STATUSES", "SDK_RETRY_PROVIDERS", "TRANSPORT_PROVIDERS", "retrying_client"]

log = logging.getLogger("service_ambitions.transport")

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
# Providers whose pydantic-ai provider takes an httpx2 client (so our transport can sit under them).
TRANSPORT_PROVIDERS = frozenset(
    {"openai", "openai-chat", "openai-responses", "anthropic", "google", "mistral", "openrouter"}
)
# Providers whose SDK honours ModelSettings["max_retries"] (Stainless-generated clients).
SDK_RETRY_PROVIDERS = frozenset({"openai", "openai-chat", "openai-responses", "anthropic", "openrouter"})


def _retriable(exc: BaseException) -> bool:
    import httpx2  # noqa: PLC0415

    if isinstance(exc, httpx2.HTTPStatusError):
        return exc.response.status_code in RETRY_STATUSES
    return isinstance(exc, httpx2.TransportError)


def _validate(response: httpx2.Response) -> None:
    if response.status_code in RETRY_STATUSES:
        response.raise_for_status()


def _log_retry(state: RetryCallState, on_retry: Callable[[], None] | None = None) -> None:
    if on_retry is not None:
        on_retry()
    exc = state.outcome.exception() if state.outcome is not None else None
    status = getattr(getattr(exc, "response", None), "status_code", None)
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    url = getattr(getattr(exc, "request", None), "url", "")
    log.warning(
        "transport retry %d after %s from %s; waiting %.1f s",
        state.attempt_number,
        f"HTTP {status}" if status else type(exc).__name__,
        getattr(url, "host", url),
        wait,
    )


def retrying_client(
    settings: Settings,
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    wrapped: Any = None,
    on_retry: Callable[[], None] | None = None,
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` whose transport retries transient failures per the settings.

    Args:
        settings: Provides ``transport_retries`` and ``request_timeout``.
        sleep: How to wait between attempts (tests inject one that records instead of sleeping).
        wrapped: The transport underneath (tests pass an ``httpx2.MockTransport``).
        on_retry: Called once per retry (the run summary counts them).
    """
    import httpx2  # noqa: PLC0415
    from pydantic_ai.retries import AsyncHTTPX2TenacityTransport, RetryConfig, wait_retry_after  # noqa: PLC0415
    from tenacity import retry_if_exception, stop_after_attempt, wait_exponential  # noqa: PLC0415

    policy = settings.transport_retries
    config = RetryConfig(
        retry=retry_if_exception(_retriable),
        wait=wait_retry_after(
            fallback_strategy=wait_exponential(multiplier=0.5, max=policy.max_wait), max_wait=policy.max_wait
        ),
        stop=stop_after_attempt(policy.attempts),
        before_sleep=functools.partial(_log_retry, on_retry=on_retry),
        reraise=True,
    )
    if sleep is not None:
        config["sleep"] = sleep
    transport = AsyncHTTPX2TenacityTransport(config=config, wrapped=wrapped, validate_response=_validate)
    return httpx2.AsyncClient(
        transport=transport, timeout=httpx2.Timeout(settings.request_timeout, connect=10.0)
    )
