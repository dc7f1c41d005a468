"""Per-model RPM/TPM rate limiter: a FIFO queue in front of short-window buckets and a 60 s ledger.

One :class:`RateLimiter` per provider model. Callers are admitted strictly in arrival order: the head of
the queue blocks everyone behind it, so small requests never overtake (and starve) a large one. The head
is admitted when all of these allow it:

* a leaky bucket per limit holding ``window`` seconds of rate, empty at the start: bursts stay small
  (``aiolimiter.AsyncLimiter(n, 60)`` starts full and passes up to 2n in its first minute);
* a ledger of the last 60 s, so that no sliding minute goes over the limit, whatever the burst, the
  refunds or the pauses (a bucket alone would let ``window/60`` more through);
* no :meth:`RateLimiter.pause` in force (a 429's ``retry_after``);
* the caller's own ``hold`` allows it (the provider's remaining budget, see ``llm/ratelimits.py``).

Tokens are estimated before the call and corrected with :meth:`Permit.settle` after it, the way
providers meter them. A request larger than a bucket (or than the whole limit) goes once the bucket (or
the minute) is empty and leaves a debt that holds back those behind it: slow, never a deadlock.

Time comes from an injected :class:`Clock`: :class:`MonotonicClock` for real runs, :class:`VirtualClock`
for tests and benchmarks (simulated minutes in milliseconds, nothing sleeps for real).
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections import deque
from collections.abc import Callable, Coroutine
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


class _Bucket:
    """Leaky bucket: ``level`` drains at ``rate`` per second; a request fits while level + amount ≤ capacity.

    A request larger than the capacity fits once the bucket is empty and leaves a debt (a level above
    capacity) that holds back whoever comes next. A refund from :meth:`Permit.settle` is kept as credit
    (a level below empty) of up to one capacity, rather than lost when the bucket is low.
    """

    def __init__(self, per_minute: int, window: float, now: float) -> None:
        self.rate = per_minute / MINUTE
        self.capacity = self.rate * window
        self.level = 0.0
        self._last = now

    def _leak(self, now: float) -> None:
        if self.level > 0:
            self.level = max(0.0, self.level - (now - self._last) * self.rate)
        self._last = now

    def wait(self, amount: int, now: float) -> float:
        self._leak(now)
        excess = self.level - max(0.0, self.capacity - amount)
        return excess / self.rate if excess > 0 else 0.0

    def charge(self, amount: int, now: float) -> None:
        self._leak(now)
        self.level += amount

    def refund(self, amount: int, now: float) -> None:
        self._leak(now)
        self.level = max(self.level - amount, min(self.level, -self.capacity))


class _Ledger:
    """Charges of the last minute, so that no sliding 60 s window goes over the limits.

    Tokens are counted the way providers meter them: the estimate when a call is sent, the correction
    from :meth:`Permit.settle` when it is known. A refund lowers the sum only until it leaves the window,
    and a window sum must stay within the limit then too: admission is checked against the highest sum
    the window can reach as its entries expire (the running total minus the lowest cumulative total in
    the window), kept in a monotonic deque.
    """

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self._rpm = rpm
        self._tpm = tpm
        self._sent: deque[float] = deque()  # admission times
        self._charges: deque[tuple[float, int]] = deque()  # (time, cumulative tokens after it)
        self._total = 0  # cumulative tokens ever charged
        self._base = (-1, 0)  # (index, cumulative) just before the oldest charge in the window
        self._count = 0  # charges ever recorded; index of the next one
        self._lows: deque[tuple[int, int]] = deque([self._base])  # (index, cumulative), increasing

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0] + MINUTE <= now:
            self._sent.popleft()
        charges = self._charges
        while charges and charges[0][0] + MINUTE <= now:
            self._base = (self._base[0] + 1, charges.popleft()[1])
            # The newest charge is never dropped here, so the deque never runs empty.
            while self._lows[0][0] < self._base[0]:
                self._lows.popleft()

    def wait(self, tokens: int, now: float) -> float:
        self._expire(now)
        wake = now
        if self._rpm and len(self._sent) >= self._rpm:
            wake = self._sent[len(self._sent) - self._rpm] + MINUTE
        if self._tpm:
            # A request above the whole limit needs an empty minute rather than an impossible one.
            lowest = self._total + min(tokens, self._tpm) - self._tpm
            previous = None
            for index, cumulative in self._lows:
                if cumulative >= lowest:
                    break
                previous = index
            if previous is not None:
                # The low at `previous` leaves the window when the charge after it expires.
                wake = max(wake, self._charges[previous - self._base[0]][0] + MINUTE)
        return wake - now

    def retune(self, rpm: int | None, tpm: int | None) -> None:
        self._rpm, self._tpm = rpm, tpm

    def charge(self, now: float, tokens: int, *, sent: bool) -> None:
        # Recorded whatever the limits in force: a limit learned later (or retuned) must count what
        # was sent before it was known.
        if sent:
            self._sent.append(now)
        if tokens == 0:
            return
        self._total += tokens
        self._charges.append((now, self._total))
        entry = (self._count, self._total)
        self._count += 1
        while self._lows and self._lows[-1][1] >= self._total:
            self._lows.pop()
        self._lows.append(entry)


class Permit:
    """Proof of admission for one call; settle it with the tokens the call really used."""

    __slots__ = ("_admitted_at", "_limiter", "_tokens")

    def __init__(self, limiter: RateLimiter, admitted_at: float, tokens: int) -> None:
        self._limiter = limiter
        self._admitted_at = admitted_at
        self._tokens = tokens

    @property
    def admitted_at(self) -> float:
        """Clock time of admission."""
        return self._admitted_at

    @property
    def tokens(self) -> int:
        """Tokens charged: the estimate, then the last settled figure."""
        return self._tokens

    def settle(self, actual_tokens: int) -> None:
        """Replace the charge with real usage: refunds an over-estimate, charges an under-estimate.

        Settling again replaces the previous figure. Use 0 for a call the provider never processed.

        Raises:
            ValueError: If ``actual_tokens`` is negative.
        """
        if actual_tokens < 0:
            raise ValueError(f"actual_tokens must not be negative, got {actual_tokens}")
        delta, self._tokens = actual_tokens - self._tokens, actual_tokens
        if delta:
            self._limiter._correct(delta)


class RateLimiter:
    """RPM/TPM limiter for one model, admitting callers in arrival order.

    Args:
        rpm: Requests per minute, or None for no request limit.
        tpm: Tokens per minute, or None for no token limit.
        clock: Time source; real time by default.
        window: Seconds of rate each bucket holds, i.e. the largest burst. Short keeps traffic smooth;
            the 60 s ledger keeps every minute within the limits whatever the window.
        hold: ``hold(tokens, now)``: seconds the head of the queue must still wait for a reason of the
            caller's (0 when none). Checked with the limits, so nobody is admitted past it; call
            :meth:`wake` when what it depends on changes.
    """

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        *,
        clock: Clock | None = None,
        window: float = 2.0,
        hold: Callable[[int, float], float] | None = None,
    ) -> None:
        if (rpm is not None and rpm < 1) or (tpm is not None and tpm < 1):
            raise ValueError(f"rpm and tpm must be positive or None, got rpm={rpm}, tpm={tpm}")
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.rpm = rpm
        self.tpm = tpm
        self._window = window
        self._clock: Clock = clock or MonotonicClock()
        now = self._clock.now()
        self._requests = _Bucket(rpm, window, now) if rpm else None
        self._tokens = _Bucket(tpm, window, now) if tpm else None
        self._ledger = _Ledger(rpm, tpm)
        # The head's current sleep, cut short by a refund (which may let the head in earlier).
        self._sleeper: asyncio.Future[None] | None = None
        self._paused_until = now
        # asyncio.Lock hands over in acquisition order: it is the FIFO queue; its holder is the head.
        self._lock = asyncio.Lock()
        self._queued = 0
        self._hold = hold
        self.admitted = 0
        """Permits handed out so far (every one a request sent)."""

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
                    await self._nap(max(delay, _MIN_NAP))
                    now = self._clock.now()
                return self._admit(tokens, now)
        finally:
            self._queued -= 1

    def retune(self, rpm: int | None, tpm: int | None) -> None:
        """Change the limits in force (learned from the provider), keeping the last minute's ledger.

        Raises:
            ValueError: A limit is not positive.
        """
        if (rpm is not None and rpm < 1) or (tpm is not None and tpm < 1):
            raise ValueError(f"rpm and tpm must be positive or None, got rpm={rpm}, tpm={tpm}")
        now = self._clock.now()
        if rpm != self.rpm:
            self._requests = _Bucket(rpm, self._window, now) if rpm else None
        if tpm != self.tpm:
            self._tokens = _Bucket(tpm, self._window, now) if tpm else None
        self.rpm, self.tpm = rpm, tpm
        self._ledger.retune(rpm, tpm)
        self.wake()  # the head re-checks against the new limits

    def pause(self, seconds: float) -> None:
        """Admit no one for ``seconds`` from now (a 429's ``retry_after``); never shortens a pause."""
        self._paused_until = max(self._paused_until, self._clock.now() + seconds)

    def wake(self) -> None:
        """Make the waiting head check again now (what its ``hold`` depends on has changed)."""
        if self._sleeper is not None:
            self._sleeper.cancel()

    async def _nap(self, seconds: float) -> None:
        sleeper = self._sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            # wait() returns when the sleep ends or is cancelled by a refund; it only raises when this
            # task is cancelled, and then the sleep is cancelled too.
            await asyncio.wait((sleeper,))
        finally:
            self._sleeper = None
            sleeper.cancel()

    def _delay(self, tokens: int, now: float) -> float:
        delay = max(self._paused_until - now, self._ledger.wait(tokens, now))
        if self._hold is not None:
            delay = max(delay, self._hold(tokens, now))
        if self._requests is not None:
            delay = max(delay, self._requests.wait(1, now))
        if self._tokens is not None:
            delay = max(delay, self._tokens.wait(tokens, now))
        return delay

    def _admit(self, tokens: int, now: float) -> Permit:
        self.admitted += 1
        self._ledger.charge(now, tokens, sent=True)
        if self._requests is not None:
            self._requests.charge(1, now)
        if self._tokens is not None:
            self._tokens.charge(tokens, now)
        return Permit(self, now, tokens)

    def _correct(self, delta: int) -> None:
        now = self._clock.now()
        self._ledger.charge(now, delta, sent=False)
        if self._tokens is not None and delta > 0:
            self._tokens.charge(delta, now)
        elif self._tokens is not None:
            self._tokens.refund(-delta, now)
        if delta < 0 and self._sleeper is not None:
            self._sleeper.cancel()  # the head may fit now
