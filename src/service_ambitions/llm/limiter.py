"""Per-model RPM/TPM rate limiter: FIFO admission in front of short-window buckets and a 60 s ledger.

One :class:`RateLimiter` per provider model. Callers are admitted strictly in arrival order (the head of
the queue blocks everyone behind it, so a large request is never starved by small ones). A caller is
admitted when all of these allow it:

* a leaky bucket per limit with capacity ``limit/60 · window`` (a short window keeps bursts small and
  smooth, unlike ``aiolimiter.AsyncLimiter(n, 60)``, which starts full and passes ~2× n in a minute);
* a ledger of the admissions of the last 60 s, so that no sliding minute goes over the limit, even
  after a burst, a refund or a pause (the bucket alone would allow ``window/60`` over);
* no :meth:`RateLimiter.pause` in force (a 429 with ``retry_after``).

Tokens are estimated before the call and corrected afterwards with :meth:`Permit.settle`. A request
larger than a bucket (or than the whole limit) waits until the bucket (or the ledger) is empty and then
goes through, leaving a debt that holds back those behind it: never a deadlock.

Time comes from an injected :class:`Clock`: :class:`MonotonicClock` for real runs, :class:`VirtualClock`
for tests and benchmarks (simulated minutes in milliseconds, no real sleeping).
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = ["Clock", "MonotonicClock", "Permit", "RateLimiter", "VirtualClock"]

T = TypeVar("T")
MINUTE = 60.0
# A positive wait is never shorter than this: float residues must not spin the loop without time passing.
_MIN_NAP = 1e-6


class Clock(Protocol):
    """Source of time for the limiter."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock's scale."""
        ...


class MonotonicClock:
    """Real time: ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        """Seconds since an arbitrary point, never going back."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep for real."""
        await asyncio.sleep(seconds)


class VirtualClock:
    """Simulated time: an event loop on which waiting takes no real time.

    When every task is waiting, the loop's selector would block until the next timer; instead the clock
    jumps to that timer. Run coroutines with :meth:`run` (or a loop from :meth:`new_event_loop`); there,
    ``asyncio.sleep``, ``asyncio.timeout`` and :meth:`sleep` all follow virtual time.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        """Current virtual time in seconds."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait in virtual time.

        Raises:
            RuntimeError: When called on a loop not made by this clock (it would sleep for real).
        """
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("VirtualClock.sleep must run on the clock's own event loop")
        await asyncio.sleep(seconds)

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """A new event loop driven by this clock (usable as ``asyncio.Runner(loop_factory=...)``)."""
        self._loop = _VirtualLoop(self)
        return self._loop

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """Run ``main`` to completion on a new virtual-time loop."""
        with asyncio.Runner(loop_factory=self.new_event_loop) as runner:
            return runner.run(main)

    def _advance(self, seconds: float) -> None:
        self._now += seconds


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # The loop asks to block only when nothing is ready, for exactly the time to its next timer.
        # None means no timer at all: keep blocking for real (e.g. waiting on an executor thread).
        if timeout is not None and timeout > 0:
            self._clock._advance(timeout)
            timeout = 0
        return super().select(timeout)


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(_VirtualSelector(clock))
        self._clock = clock

    def time(self) -> float:
        return self._clock.now()


@dataclass(slots=True)
class _Entry:
    """One admission, as the ledger and its permit see it."""

    time: float
    tokens: int
    live: bool = True  # still inside the ledger's 60 s


class _Bucket:
    """Leaky bucket: ``level`` drains at ``rate`` per second; a request fits while level + amount ≤ capacity."""

    def __init__(self, per_minute: int, window: float, now: float) -> None:
        self.rate = per_minute / MINUTE
        self.capacity = self.rate * window
        self.level = 0.0
        self._last = now

    def _leak(self, now: float) -> None:
        self.level = max(0.0, self.level - (now - self._last) * self.rate)
        self._last = now

    def wait(self, amount: int, now: float) -> float:
        self._leak(now)
        # An amount above capacity fits once the bucket is empty; its overflow is a debt paid by the queue.
        excess = self.level - max(0.0, self.capacity - amount)
        return excess / self.rate if excess > 0 else 0.0

    def add(self, amount: int, now: float) -> None:
        self._leak(now)
        # A refund cannot take the level below empty: unused past capacity is gone, not banked.
        self.level = max(0.0, self.level + amount)


class _Ledger:
    """Admissions of the last minute, to keep every sliding 60 s window within the limits."""

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self._rpm = rpm
        self._tpm = tpm
        self._entries: deque[_Entry] = deque()
        self._tokens = 0

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries and entries[0].time + MINUTE <= now:
            entry = entries.popleft()
            entry.live = False
            self._tokens -= entry.tokens

    def wait(self, tokens: int, now: float) -> float:
        self._expire(now)
        need_requests = len(self._entries) + 1 - self._rpm if self._rpm else 0
        # A request above the whole limit needs an empty minute rather than an impossible one.
        need_tokens = self._tokens + min(tokens, self._tpm) - self._tpm if self._tpm else 0
        freed_requests = freed_tokens = 0
        wake = now
        for entry in self._entries:
            if freed_requests >= need_requests and freed_tokens >= need_tokens:
                break
            freed_requests += 1
            freed_tokens += entry.tokens
            wake = entry.time + MINUTE
        return wake - now

    def add(self, entry: _Entry) -> None:
        self._entries.append(entry)
        self._tokens += entry.tokens

    def adjust(self, entry: _Entry, delta: int) -> None:
        if entry.live:
            self._tokens += delta


class Permit:
    """Proof of admission for one call; settle it with the tokens the call really used."""

    __slots__ = ("_entry", "_limiter")

    def __init__(self, limiter: RateLimiter, entry: _Entry) -> None:
        self._limiter = limiter
        self._entry = entry

    @property
    def admitted_at(self) -> float:
        """Clock time of admission."""
        return self._entry.time

    @property
    def tokens(self) -> int:
        """Tokens currently charged: the estimate, or the last settled figure."""
        return self._entry.tokens

    def settle(self, actual_tokens: int) -> None:
        """Replace the charge with real usage: refunds an over-estimate, charges an under-estimate.

        Settling again replaces the previous figure. Use 0 for a call the provider never processed.

        Raises:
            ValueError: If ``actual_tokens`` is negative.
        """
        self._limiter._settle(self._entry, actual_tokens)


class RateLimiter:
    """RPM/TPM limiter for one model, admitting callers in arrival order.

    Args:
        rpm: Requests per minute, or None for no request limit.
        tpm: Tokens per minute, or None for no token limit.
        clock: Time source; real time by default.
        window: Seconds of rate each bucket holds, i.e. the largest burst. Short keeps traffic smooth;
            the 60 s ledger keeps every minute within the limits whatever the window.
    """

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        *,
        clock: Clock | None = None,
        window: float = 1.0,
    ) -> None:
        if (rpm is not None and rpm < 1) or (tpm is not None and tpm < 1):
            raise ValueError(f"rpm and tpm must be positive or None, got rpm={rpm}, tpm={tpm}")
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.rpm = rpm
        self.tpm = tpm
        self._clock: Clock = clock or MonotonicClock()
        now = self._clock.now()
        self._requests = _Bucket(rpm, window, now) if rpm else None
        self._tokens = _Bucket(tpm, window, now) if tpm else None
        self._ledger = _Ledger(rpm, tpm)
        # Waits are cut into naps of at most this, so that refunds from settle() are noticed promptly.
        self._max_nap = max(window, 0.1)
        self._paused_until = now
        # asyncio.Lock hands over in acquisition order: it is the FIFO queue; its holder is the head.
        self._lock = asyncio.Lock()
        self._queued = 0

    @property
    def queued(self) -> int:
        """Callers waiting for admission, the head included."""
        return self._queued

    async def acquire(self, tokens: int) -> Permit:
        """Wait for this caller's turn and for capacity, then charge ``tokens``.

        Args:
            tokens: Estimated tokens of the call (prompt characters / 4 + maximum output tokens).

        Returns:
            The permit, to be settled with real usage after the call.

        Raises:
            ValueError: If ``tokens`` is negative.
        """
        if tokens < 0:
            raise ValueError(f"tokens must not be negative, got {tokens}")
        self._queued += 1
        try:
            async with self._lock:
                now = self._clock.now()
                while (delay := self._delay(tokens, now)) > 0:
                    await self._clock.sleep(min(max(delay, _MIN_NAP), self._max_nap))
                    now = self._clock.now()
                return self._admit(tokens, now)
        finally:
            self._queued -= 1

    def pause(self, seconds: float) -> None:
        """Admit no one for ``seconds`` from now (a 429's ``retry_after``); never shortens a pause."""
        self._paused_until = max(self._paused_until, self._clock.now() + seconds)

    def _delay(self, tokens: int, now: float) -> float:
        delay = max(self._paused_until - now, self._ledger.wait(tokens, now))
        if self._requests is not None:
            delay = max(delay, self._requests.wait(1, now))
        if self._tokens is not None:
            delay = max(delay, self._tokens.wait(tokens, now))
        return delay

    def _admit(self, tokens: int, now: float) -> Permit:
        entry = _Entry(now, tokens)
        self._ledger.add(entry)
        if self._requests is not None:
            self._requests.add(1, now)
        if self._tokens is not None:
            self._tokens.add(tokens, now)
        return Permit(self, entry)

    def _settle(self, entry: _Entry, actual_tokens: int) -> None:
        if actual_tokens < 0:
            raise ValueError(f"actual_tokens must not be negative, got {actual_tokens}")
        delta = actual_tokens - entry.tokens
        entry.tokens = actual_tokens
        self._ledger.adjust(entry, delta)
        if self._tokens is not None:
            self._tokens.add(delta, self._clock.now())
