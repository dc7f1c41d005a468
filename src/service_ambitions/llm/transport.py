"""Transport retries: one tenacity policy, in pydantic-ai's retrying HTTP transport.

Transient HTTP failures (429, 408, 5xx, connection errors and timeouts) are retried here, honouring
``Retry-After``/``retry-after-ms``, with ``transport_retries.attempts`` and ``max_wait`` from the
settings. The provider SDKs' own retries are switched off (``max_retries=0``) wherever this
transport is in place, so attempts are never multiplied. Content problems (an answer that does
not match the schema) are not retried here: the gateway re-asks for those. Neither are 401/403 and
an exhausted quota (a 429 with ``insufficient_quota``): waiting does not fix them.

:func:`describe_failure` turns what is left after the retries into one line for people, and says
whether the failure is *systemic* (would hit every call alike).
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx2
    from tenacity import RetryCallState

    from service_ambitions.llm.ratelimits import ModelLimits
    from service_ambitions.settings import Settings

__all__ = [
    "RETRY_STATUSES",
    "SDK_RETRY_PROVIDERS",
    "TRANSPORT_PROVIDERS",
    "Failure",
    "describe_failure",
    "retrying_client",
]

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


_MOST_ATTEMPTS = 100
"""Attempts of one rate-limited request at most, however short its waits."""


def _stop(attempts: int, rate_limited_for: float) -> Callable[[Any], bool]:
    """Tenacity's stop condition: ``attempts`` attempts, but a 429 goes on for ``rate_limited_for`` seconds.

    A 429 says "not now", not "no": when several processes share a key, each reset of the provider's
    window is a race some of them lose, so a rate-limited request keeps waiting (as the provider's
    ``Retry-After`` says) within a bounded time instead of failing its service after a few attempts.
    """

    def stop(state: Any) -> bool:
        if state.attempt_number < attempts:
            return False
        outcome = state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        status = getattr(getattr(error, "response", None), "status_code", None)
        # ``idle_for`` is the time waited between attempts (what the waits said, whatever the clock).
        return not (
            status == 429 and state.idle_for < rate_limited_for and state.attempt_number < _MOST_ATTEMPTS
        )

    return stop


def _out_of_quota(response: httpx2.Response) -> bool:
    """OpenAI's (and compatible servers') 429 for an account without credit: waiting will not help."""
    try:
        return response.status_code == 429 and b"insufficient_quota" in response.content
    except RuntimeError:  # ResponseNotRead: a streamed body we did not read
        return False


def _validate(response: httpx2.Response) -> None:
    if response.status_code in RETRY_STATUSES and not _out_of_quota(response):
        response.raise_for_status()


class _ReadErrorBodies:
    """Reads the (small) body of error responses, so the retry decision and the final error see it.

    Without it the retrying transport closes a retried response unread, and the provider's error
    code (``insufficient_quota``, ``invalid_api_key``) is lost.
    """

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response: httpx2.Response = await self.wrapped.handle_async_request(request)
        if response.status_code >= 400:
            await response.aread()
        return response

    async def aclose(self) -> None:
        await self.wrapped.aclose()

    async def __aenter__(self) -> _ReadErrorBodies:
        await self.wrapped.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.wrapped.__aexit__(*exc_info)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        yield node
        node = node.__cause__ or node.__context__


def _address(exc: BaseException | None, request: Any = None) -> str:
    """``host:port`` of the request a transport error belongs to (httpx2's ``.request`` may be unset)."""
    for node in _chain(exc) if exc is not None else iter(()):
        if request is not None:
            break
        try:
            request = getattr(node, "request", None)
        except RuntimeError:  # httpx2 raises this when the request was never attached
            request = None
    url = getattr(request, "url", None)
    host = getattr(url, "host", None)
    if not host:
        return "the provider"
    port = getattr(url, "port", None) or {"https": 443, "http": 80}.get(str(getattr(url, "scheme", "")), "")
    return f"{host}:{port}" if port else str(host)


def _reason(exc: BaseException) -> str:
    """A short lower-case reason for a transport error: ``connection refused``, ``timed out``..."""
    for node in _chain(exc):
        if isinstance(node, socket.gaierror):
            return "name not resolved"
        if isinstance(node, ConnectionRefusedError):
            return "connection refused"
        if isinstance(node, ConnectionResetError):
            return "connection reset by peer"
        if isinstance(node, TimeoutError):
            return "timed out"
        if isinstance(node, OSError) and node.strerror:
            return node.strerror.lower()
    text = " ".join(str(exc).split()).rstrip(".")
    return text[:1].lower() + text[1:] if text else type(exc).__name__


def _log_retry(state: RetryCallState, on_retry: Callable[[], None] | None = None) -> None:
    if on_retry is not None:
        on_retry()
    exc = state.outcome.exception() if state.outcome is not None else None
    status = getattr(getattr(exc, "response", None), "status_code", None)
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    # The retried function's argument is the request: an httpx2 transport error has none attached yet.
    request = state.args[0] if state.args else None
    log.warning(
        "transport retry %d after %s from %s; waiting %.1f s",
        state.attempt_number,
        f"HTTP {status}" if status else f"{type(exc).__name__} ({_reason(exc) if exc else 'no error'})",
        _address(exc, request),
        wait,
    )


@dataclass(frozen=True)
class Failure:
    """A model call failure, described for people.

    Attributes:
        text: One line, no secrets: ``cannot connect to 127.0.0.1:8000: connection refused``.
        systemic: ``connection``, ``authentication`` or ``quota`` when every call would fail alike.
        timed_out: The failure was a timeout (quarantined as ``timeout``).
    """

    text: str
    systemic: str | None = None
    timed_out: bool = False


def _provider_message(body: object) -> str:
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message") if isinstance(error, dict) else error
    return " ".join(str(message).split())[:200] if message else ""


def describe_failure(exc: BaseException) -> Failure:
    """Describe a pydantic-ai model error (after transport retries) in one line, and classify it."""
    import httpx2  # noqa: PLC0415
    from pydantic_ai.exceptions import (  # noqa: PLC0415
        ModelAuthenticationError,
        ModelHTTPError,
        ModelQuotaExceededError,
        ModelRequestTimeout,
        ModelTimeoutError,
    )

    if isinstance(exc, ModelRequestTimeout):
        return Failure(f"no answer within {exc.timeout:g} s", timed_out=True)
    if isinstance(exc, ModelHTTPError):
        code = exc.provider_error_code
        detail = f"{type(exc).__name__}: HTTP {exc.status_code}{f' {code}' if code else ''}"
        message = _provider_message(exc.body)
        text = f"{detail}: {message}" if message else detail
        if isinstance(exc, ModelAuthenticationError) or exc.status_code in {401, 403}:
            return Failure(f"authentication failed ({text})", systemic="authentication")
        if isinstance(exc, ModelQuotaExceededError) or exc.status_code == 402 or code == "insufficient_quota":
            return Failure(f"quota exhausted ({text})", systemic="quota")
        return Failure(text)
    transport = next((node for node in _chain(exc) if isinstance(node, httpx2.TransportError)), None)
    if transport is not None or isinstance(exc, ModelTimeoutError):
        address, reason = _address(exc), _reason(transport or exc)
        if isinstance(transport, httpx2.TimeoutException) or isinstance(exc, ModelTimeoutError):
            phase = "connecting to" if isinstance(transport, httpx2.ConnectTimeout) else "waiting for"
            return Failure(f"timed out {phase} {address}", timed_out=True)
        if isinstance(transport, httpx2.ConnectError):
            if reason == "name not resolved":
                return Failure(
                    f"cannot resolve host {address.rpartition(':')[0] or address}", systemic="connection"
                )
            return Failure(f"cannot connect to {address}: {reason}", systemic="connection")
        return Failure(f"connection to {address} failed: {reason}")
    text = " ".join(str(exc).split())
    return Failure(f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__)


def retrying_client(
    settings: Settings,
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    wrapped: Any = None,
    on_retry: Callable[[], None] | None = None,
    limits: ModelLimits | None = None,
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` whose transport retries transient failures per the settings.

    ``request_timeout`` bounds each attempt (connect capped at 10 s), so a stalled attempt is retried.

    Args:
        settings: Provides ``transport_retries`` and ``request_timeout``.
        sleep: How to wait between attempts (tests inject one that records instead of sleeping).
        wrapped: The transport underneath (tests pass an ``httpx2.MockTransport``).
        on_retry: Called once per retry (the run summary counts them).
        limits: The model's admission (``llm/ratelimits.py``): every attempt takes a permit just
            before it is sent and every answer's rate-limit headers update it.
    """
    import httpx2  # noqa: PLC0415
    from pydantic_ai.retries import AsyncHTTPX2TenacityTransport, RetryConfig, wait_retry_after  # noqa: PLC0415
    from tenacity import retry_if_exception, wait_exponential  # noqa: PLC0415

    policy = settings.transport_retries
    config = RetryConfig(
        retry=retry_if_exception(_retriable),
        wait=wait_retry_after(
            fallback_strategy=wait_exponential(multiplier=0.5, max=policy.max_wait), max_wait=policy.max_wait
        ),
        stop=_stop(policy.attempts, policy.rate_limited_for),
        before_sleep=functools.partial(_log_retry, on_retry=on_retry),
        reraise=True,
    )
    if sleep is not None:
        config["sleep"] = sleep
    transport = AsyncHTTPX2TenacityTransport(config=config, wrapped=wrapped, validate_response=_validate)
    below: Any = transport.wrapped
    if limits is not None:
        from service_ambitions.llm.admission import RateLimitedTransport  # noqa: PLC0415

        below = RateLimitedTransport(below, limits)
    transport.wrapped = _ReadErrorBodies(below)  # type: ignore[assignment]
    return httpx2.AsyncClient(
        transport=transport, timeout=httpx2.Timeout(settings.request_timeout, connect=10.0)
    )
