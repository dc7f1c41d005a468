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

Every check happens at the head of the model's one FIFO queue (the :class:`RateLimiter`, whose
``hold`` is the probe window and the budget), so callers already queued can never slip past a budget
that ran out while they waited. A provider's ``remaining`` is what it had counted when it received
that request: the requests sent after it, still in flight, are taken off it.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from service_ambitions.llm.limiter import Clock, MonotonicClock, Permit, RateLimiter

__all__ = [
    "Admission",
    "HeaderLimits",
    "LimitMode",
    "ModelLimits",
    "parse_duration",
    "parse_rate_limit_headers",
]

LimitMode = Literal["learn", "fixed", "off"]
PROBE_WINDOW = 4
"""Requests let through before the provider's first answer says what the limits are."""
DEFAULT_429_PAUSE = 1.0
"""Pause after a 429 that says nothing about when to come back."""
DEFAULT_MAX_PAUSE = 60.0
"""Longest pause a 429 sets (the transport retries' ``max_wait`` by default)."""
_PROBE_RECHECK = 1.0  # seconds between checks of a closed probe window (an answer wakes it at once)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _number(text: str) -> float | None:
    """A finite, non-negative number, or None (junk, negative, ``inf``, ``nan``)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def parse_duration(text: str) -> float | None:
    """Seconds in an OpenAI-style duration (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``) or a bare number."""
    text = text.strip()
    if not text:
        return None
    number = _number(text)
    if number is not None:
        return number
    position = 0
    total = 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            return None
        value, unit = float(match.group(1)), match.group(2)
        total += value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        position = match.end()
    return total if position == len(text) and position and math.isfinite(total) else None


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
        with contextlib.suppress(TypeError, ValueError, IndexError):
            when = email.utils.parsedate_to_datetime(text)
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _int(value: str | None) -> int | None:
    number = _number(value.strip()) if value is not None else None
    return int(number) if number is not None else None


@dataclass(frozen=True)
class HeaderLimits:
    """What one response said about the account's limits (None: not said).

    ``tpm``, ``remaining_tokens`` and ``reset_tokens`` are the token limit admission keeps under:
    OpenAI's, or Anthropic's combined ``tokens-*`` (its most restrictive one in effect), else the
    tighter of Anthropic's input and output limits. ``input_tpm``/``output_tpm`` are Anthropic's own.
    """

    rpm: int | None = None
    tpm: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None
    retry_after: float | None = None
    input_tpm: int | None = None
    output_tpm: int | None = None

    @property
    def any(self) -> bool:
        """Whether the response carried any rate-limit information."""
        return any(value is not None for value in vars(self).values())


def parse_rate_limit_headers(headers: Mapping[str, str], *, now: datetime | None = None) -> HeaderLimits:
    """Read the rate-limit headers of a response (names case-insensitive; junk values ignored)."""
    lower = {key.lower(): value for key, value in headers.items()}
    now = now or datetime.now(UTC)

    def first(*names: str) -> str | None:
        return next((lower[name] for name in names if name in lower), None)

    def seconds(*names: str) -> float | None:
        value = first(*names)
        return _seconds_until(value, now) if value is not None else None

    retry_after: float | None = None
    if "retry-after-ms" in lower:
        milliseconds = _number(lower["retry-after-ms"].strip())
        retry_after = milliseconds / 1000 if milliseconds is not None else None
    if retry_after is None:
        retry_after = seconds("retry-after")
    anthropic = "anthropic-ratelimit"
    input_tpm = _int(lower.get(f"{anthropic}-input-tokens-limit"))
    output_tpm = _int(lower.get(f"{anthropic}-output-tokens-limit"))
    if f"{anthropic}-tokens-limit" in lower or (input_tpm is None and output_tpm is None):
        tokens = f"{anthropic}-tokens"
    elif output_tpm is not None and (input_tpm is None or output_tpm < input_tpm):
        tokens = f"{anthropic}-output-tokens"
    else:
        tokens = f"{anthropic}-input-tokens"
    return HeaderLimits(
        rpm=_int(first("x-ratelimit-limit-requests", f"{anthropic}-requests-limit")),
        tpm=_int(first("x-ratelimit-limit-tokens", f"{tokens}-limit")),
        remaining_requests=_int(first("x-ratelimit-remaining-requests", f"{anthropic}-requests-remaining")),
        remaining_tokens=_int(first("x-ratelimit-remaining-tokens", f"{tokens}-remaining")),
        reset_requests=seconds("x-ratelimit-reset-requests", f"{anthropic}-requests-reset"),
        reset_tokens=seconds("x-ratelimit-reset-tokens", f"{tokens}-reset"),
        retry_after=retry_after,
        input_tpm=input_tpm,
        output_tpm=output_tpm,
    )


@dataclass
class _Budget:
    """The provider's ``remaining`` figure, spent down by what we send until its reset."""

    left: int
    until: float


@dataclass(frozen=True)
class Admission:
    """One request let through: its rate permit and its place in the model's sending order."""

    permit: Permit
    requests_through: int
    """Requests sent up to and including this one."""
    tokens_through: int
    """Estimated tokens sent up to and including this one."""


class ModelLimits:
    """Admission for one model: configured caps, learned limits and the provider's remaining budget.

    Args:
        model_id: For messages and the summary.
        mode: ``learn`` adopts the provider's headers under the configured caps; ``fixed`` uses the
            configured limits only; ``off`` admits everything at once.
        rpm: Configured requests per minute (a hard cap), or None.
        tpm: Configured tokens per minute (a hard cap), or None.
        clock: Time source (tests inject a virtual one).
        max_pause: Longest pause a 429 sets, whatever its ``retry-after`` says (a daily quota's
            86400 s must not stop the model for a day): longer waits are the transport's and the
            fallback's business.
    """

    def __init__(
        self,
        model_id: str,
        *,
        mode: LimitMode = "learn",
        rpm: int | None = None,
        tpm: int | None = None,
        clock: Clock | None = None,
        max_pause: float = DEFAULT_MAX_PAUSE,
    ) -> None:
        self.model_id = model_id
        self.max_pause = max_pause
        self.mode: LimitMode = mode
        self.cap_rpm = rpm if mode != "off" else None
        self.cap_tpm = tpm if mode != "off" else None
        self.learned_rpm: int | None = None
        self.learned_tpm: int | None = None
        self.clock: Clock = clock or MonotonicClock()
        # Always there, even with no limit in force: its ledger counts what was sent before a limit
        # is learned, and it carries 429 pauses and the budget's hold.
        self.limiter = RateLimiter(self.rpm, self.tpm, clock=self.clock, hold=self._hold)
        self.observed = False
        self.headers_seen = False
        self.throttled_429 = 0
        self._probing = mode == "learn"
        self._probe_sent = 0
        self._requests_sent = 0
        self._tokens_sent = 0
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
        if (self.limiter.rpm, self.limiter.tpm) != (rpm, tpm):
            self.limiter.retune(rpm, tpm)

    # admission ----------------------------------------------------------------------------------
    async def acquire(self, tokens: int) -> Admission:
        """Wait until one request of ``tokens`` (estimated) may be sent now."""
        permit = await self.limiter.acquire(tokens)
        # Nothing awaits between the limiter's admission and here, so these counts are up to date
        # before the next caller's turn is checked.
        self._requests_sent += 1
        self._tokens_sent += tokens
        if self._probing:
            self._probe_sent += 1
        if self._requests_budget is not None:
            self._requests_budget.left -= 1
        if self._tokens_budget is not None:
            self._tokens_budget.left -= tokens
        return Admission(permit, self._requests_sent, self._tokens_sent)

    def _hold(self, tokens: int, now: float) -> float:
        """The limiter's extra wait: a closed probe window, or a budget spent before its reset."""
        if self._probing and self._probe_sent >= PROBE_WINDOW:
            return _PROBE_RECHECK
        wake = now
        for budget, need in ((self._requests_budget, 1), (self._tokens_budget, tokens)):
            if budget is not None and budget.until > now and budget.left < need:
                wake = max(wake, budget.until)
        return wake - now

    def pause(self, seconds: float) -> None:
        """Admit nothing for ``seconds`` (a 429 or a provider's retry-after), at most ``max_pause``.

        Nothing in ``off`` mode.
        """
        if self.mode != "off":
            self.limiter.pause(min(seconds, self.max_pause))

    def expect_no_headers(self) -> None:
        """The model sends no rate-limit headers (not over HTTP): nothing to probe for."""
        self._end_probe()

    # learning -----------------------------------------------------------------------------------
    def observe(self, status: int, headers: HeaderLimits, admission: Admission | None = None) -> None:
        """Take in what one response said (every attempt's response, 429s included).

        Args:
            status: The HTTP status.
            headers: Its rate-limit headers.
            admission: The request's admission: what was sent after it is taken off ``remaining``.
        """
        now = self.clock.now()
        if status == 429:
            self.throttled_429 += 1
            wait = headers.retry_after
            if wait is None:
                wait = _largest(headers.reset_requests, headers.reset_tokens)
            self.pause(wait if wait is not None else DEFAULT_429_PAUSE)
        if self.mode == "learn" and headers.any:
            self.headers_seen = True
            if headers.rpm:
                self.learned_rpm = headers.rpm
            if headers.tpm:
                self.learned_tpm = headers.tpm
            self._retune()
            after_requests = self._requests_sent - admission.requests_through if admission else 0
            after_tokens = self._tokens_sent - admission.tokens_through if admission else 0
            self._requests_budget = _merge(
                self._requests_budget, headers.remaining_requests, headers.reset_requests, now, after_requests
            )
            self._tokens_budget = _merge(
                self._tokens_budget, headers.remaining_tokens, headers.reset_tokens, now, after_tokens
            )
            self.limiter.wake()  # a new budget may let the head in earlier
        self.observed = True
        self._end_probe()

    def failed_before_answer(self) -> None:
        """A request that got no response at all (connection error) still ends the probe window."""
        self._end_probe()

    def _end_probe(self) -> None:
        if self._probing:
            self._probing = False
            self.limiter.wake()


def _merge(
    current: _Budget | None, remaining: int | None, reset: float | None, now: float, sent_after: int
) -> _Budget | None:
    """The provider's latest word on the budget; a lower figure within the same window wins.

    ``remaining`` is what the provider had left when it received the request, so what we sent after
    it (``sent_after``) is spent from it too. Answers arrive out of order, and ours are spent from
    ``left`` as they are sent, so a higher figure from an older answer must not undo what we know
    was sent since.
    """
    if remaining is None:
        return current
    left = remaining - sent_after
    if current is not None and current.until > now and current.left <= left:
        return current
    return _Budget(left=left, until=now + (reset if reset is not None else 1.0))


def _lowest(first: int | None, second: int | None) -> int | None:
    values = [value for value in (first, second) if value is not None]
    return min(values) if values else None


def _largest(first: float | None, second: float | None) -> float | None:
    values = [value for value in (first, second) if value is not None]
    return max(values) if values else None
