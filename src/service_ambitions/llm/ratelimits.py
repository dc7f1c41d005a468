"""Rate limits learned from the provider: header parsing and the per-model admission policy.

Providers say on every response what the account may send and how much of it is left:

* OpenAI, Groq, OpenRouter, Azure: ``x-ratelimit-limit-requests|tokens``, ``x-ratelimit-remaining-*``,
  ``x-ratelimit-reset-*`` as durations (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``);
* Anthropic: ``anthropic-ratelimit-requests|tokens|input-tokens|output-tokens-limit|remaining|reset``
  with RFC 3339 reset times;
* on a 429: ``retry-after`` (seconds or an HTTP date) and ``retry-after-ms``.

:class:`ModelLimits` turns that into admission for one model. A configured limit is a hard cap. In
``learn`` mode (the default) the provider's figures are adopted as they arrive and a sliding-minute
ledger keeps under them, while the ``remaining`` budget (which counts every process on the key, so
CI shards share the account without talking) holds admission until the provider's reset when it runs
out. Before the first answer only a small probe window is let through; a server that sends no
headers (a local one) gets no client-side limit at all unless one is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from service_ambitions.llm.limiter import Clock, MonotonicClock, Permit, RateLimiter

__all__ = ["HeaderLimits", "LimitMode", "ModelLimits", "parse_duration", "parse_rate_limit_headers"]

LimitMode = Literal["learn", "fixed", "off"]
PROBE_WINDOW = 4
"""Requests let through before the provider's first answer says what the limits are."""
DEFAULT_429_PAUSE = 1.0
"""Pause after a 429 that says nothing about when to come back."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str) -> float | None:
    """Seconds in an OpenAI-style duration (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``) or a bare number."""
    text = text.strip()
    if not text:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(text))
    position = 0
    total = 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            return None
        value, unit = float(match.group(1)), match.group(2)
        total += value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        position = match.end()
    return total if position == len(text) and position else None


def _seconds_until(text: str, now: datetime) -> float | None:
    """Seconds from ``now`` to an RFC 3339 or HTTP date, or a duration."""
    text = text.strip()
    duration = parse_duration(text)
    if duration is not None:
        return duration
    when: datetime | None = None
    with contextlib.suppress(ValueError):
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when is None:
        with contextlib.suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(text)
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        number = int(float(value.strip()))
        return number if number >= 0 else None
    return None


@dataclass(frozen=True)
class HeaderLimits:
    """What one response said about the account's limits (None: not said)."""

    rpm: int | None = None
    tpm: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None
    retry_after: float | None = None

    @property
    def any(self) -> bool:
        """Whether the response carried any rate-limit information."""
        return any(value is not None for value in vars(self).values())


def parse_rate_limit_headers(headers: Mapping[str, str], *, now: datetime | None = None) -> HeaderLimits:
    """Read the rate-limit headers of a response (names case-insensitive)."""
    lower = {key.lower(): value for key, value in headers.items()}
    now = now or datetime.now(UTC)

    def first(*names: str) -> str | None:
        return next((lower[name] for name in names if name in lower), None)

    def seconds(*names: str) -> float | None:
        value = first(*names)
        return _seconds_until(value, now) if value is not None else None

    retry_after: float | None = None
    if "retry-after-ms" in lower:
        milliseconds = _int(lower["retry-after-ms"])
        retry_after = milliseconds / 1000 if milliseconds is not None else None
    if retry_after is None:
        retry_after = seconds("retry-after")
    anthropic_tokens = "anthropic-ratelimit-tokens-limit" in lower
    token_prefix = "anthropic-ratelimit-tokens" if anthropic_tokens else "anthropic-ratelimit-input-tokens"
    return HeaderLimits(
        rpm=_int(first("x-ratelimit-limit-requests", "anthropic-ratelimit-requests-limit")),
        tpm=_int(first("x-ratelimit-limit-tokens", f"{token_prefix}-limit")),
        remaining_requests=_int(
            first("x-ratelimit-remaining-requests", "anthropic-ratelimit-requests-remaining")
        ),
        remaining_tokens=_int(first("x-ratelimit-remaining-tokens", f"{token_prefix}-remaining")),
        reset_requests=seconds("x-ratelimit-reset-requests", "anthropic-ratelimit-requests-reset"),
        reset_tokens=seconds("x-ratelimit-reset-tokens", f"{token_prefix}-reset"),
        retry_after=retry_after,
    )


@dataclass
class _Budget:
    """The provider's ``remaining`` figure, spent down by what we send until its reset."""

    left: int
    until: float


class ModelLimits:
    """Admission for one model: configured caps, learned limits and the provider's remaining budget.

    Args:
        model_id: For messages and the summary.
        mode: ``learn`` adopts the provider's headers under the configured caps; ``fixed`` uses the
            configured limits only; ``off`` admits everything at once.
        rpm: Configured requests per minute (a hard cap), or None.
        tpm: Configured tokens per minute (a hard cap), or None.
        clock: Time source (tests inject a virtual one).
    """

    def __init__(
        self,
        model_id: str,
        *,
        mode: LimitMode = "learn",
        rpm: int | None = None,
        tpm: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.model_id = model_id
        self.mode: LimitMode = mode
        self.cap_rpm = rpm if mode != "off" else None
        self.cap_tpm = tpm if mode != "off" else None
        self.learned_rpm: int | None = None
        self.learned_tpm: int | None = None
        self.clock: Clock = clock or MonotonicClock()
        self.limiter: RateLimiter | None = None
        self._retune()
        self.observed = False
        self.headers_seen = False
        self.throttled_429 = 0
        self._probing = mode == "learn"
        self._probe_sent = 0
        self._probe_done = asyncio.Event()
        self._requests_budget: _Budget | None = None
        self._tokens_budget: _Budget | None = None

    # what is in force ---------------------------------------------------------------------------
    @property
    def rpm(self) -> int | None:
        """Requests per minute in force."""
        return _lowest(self.cap_rpm, self.learned_rpm)

    @property
    def tpm(self) -> int | None:
        """Tokens per minute in force."""
        return _lowest(self.cap_tpm, self.learned_tpm)

    @property
    def source(self) -> str:
        """Where the limits in force come from: ``configured``, ``provider``, ``both`` or ``none``."""
        configured = self.cap_rpm is not None or self.cap_tpm is not None
        learned = self.learned_rpm is not None or self.learned_tpm is not None
        if configured and learned:
            return "configured cap + provider"
        return "configured" if configured else "provider" if learned else "none"

    def describe(self) -> dict[str, object]:
        """The limits in force, for the summary and metrics."""
        return {"rpm": self.rpm, "tpm": self.tpm, "source": self.source, "throttled_429": self.throttled_429}

    def _retune(self) -> None:
        rpm, tpm = self.rpm, self.tpm
        if rpm is None and tpm is None:
            self.limiter = None
        elif self.limiter is None:
            self.limiter = RateLimiter(rpm, tpm, clock=self.clock)
        elif (self.limiter.rpm, self.limiter.tpm) != (rpm, tpm):
            self.limiter.retune(rpm, tpm)

    # admission ----------------------------------------------------------------------------------
    async def acquire(self, tokens: int) -> Permit | None:
        """Wait until one request of ``tokens`` (estimated) may be sent now; None when nothing limits it."""
        while self._probing and self._probe_sent >= PROBE_WINDOW:
            await self._probe_done.wait()
        if self._probing:
            self._probe_sent += 1
        await self._wait_for_budget(tokens)
        limiter = self.limiter
        permit = await limiter.acquire(tokens) if limiter is not None else None
        if self._requests_budget is not None:
            self._requests_budget.left -= 1
        if self._tokens_budget is not None:
            self._tokens_budget.left -= tokens
        return permit

    async def _wait_for_budget(self, tokens: int) -> None:
        while True:
            now = self.clock.now()
            wake = now
            for budget, need in ((self._requests_budget, 1), (self._tokens_budget, tokens)):
                if budget is not None and budget.until > now and budget.left < need:
                    wake = max(wake, budget.until)
            if wake <= now:
                return
            await self.clock.sleep(wake - now)

    def pause(self, seconds: float) -> None:
        """Admit nothing for ``seconds`` (a 429 or a provider's retry-after)."""
        if self.limiter is None and self.mode != "off":
            # No limiter yet (nothing configured, nothing learned): hold admission through the budget.
            self._requests_budget = _Budget(left=0, until=self.clock.now() + seconds)
        if self.limiter is not None:
            self.limiter.pause(seconds)

    # learning -----------------------------------------------------------------------------------
    def observe(self, status: int, headers: HeaderLimits) -> None:
        """Take in what one response said (every attempt's response, 429s included)."""
        now = self.clock.now()
        if status == 429:
            self.throttled_429 += 1
            wait = headers.retry_after or _largest(headers.reset_requests, headers.reset_tokens)
            self.pause(wait if wait is not None else DEFAULT_429_PAUSE)
        if self.mode == "learn" and headers.any:
            self.headers_seen = True
            if headers.rpm:
                self.learned_rpm = headers.rpm
            if headers.tpm:
                self.learned_tpm = headers.tpm
            self._retune()
            self._requests_budget = _merge(
                self._requests_budget, headers.remaining_requests, headers.reset_requests, now
            )
            self._tokens_budget = _merge(
                self._tokens_budget, headers.remaining_tokens, headers.reset_tokens, now
            )
        self.observed = True
        if self._probing:
            self._probing = False
            self._probe_done.set()

    def failed_before_answer(self) -> None:
        """A request that got no response at all (connection error) still ends the probe window."""
        if self._probing:
            self._probing = False
            self._probe_done.set()


def _merge(current: _Budget | None, remaining: int | None, reset: float | None, now: float) -> _Budget | None:
    """The provider's latest word on the budget; a lower figure within the same window wins.

    Answers arrive out of order, and ours are spent from ``left`` as they are sent, so a higher figure
    from an older answer must not undo what we know was sent since.
    """
    if remaining is None:
        return current
    if current is not None and current.until > now and current.left <= remaining:
        return current
    return _Budget(left=remaining, until=now + (reset if reset is not None else 1.0))


def _lowest(first: int | None, second: int | None) -> int | None:
    values = [value for value in (first, second) if value is not None]
    return min(values) if values else None


def _largest(first: float | None, second: float | None) -> float | None:
    values = [value for value in (first, second) if value is not None]
    return max(values) if values else None
