"""Bookkeeping of the fake OpenAI server: a sliding-window rate limit and a prompt prefix cache.

Neither is thread-safe on its own; the server calls them under its lock.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass

__all__ = ["CACHE_BLOCK_TOKENS", "CACHE_MIN_TOKENS", "WINDOW_SECONDS", "Decision", "PrefixCache", "Window"]

WINDOW_SECONDS = 60.0
CACHE_MIN_TOKENS = 1024
CACHE_BLOCK_TOKENS = 128
_CHARS_PER_TOKEN = 4


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*``: ``20ms``, ``1s``, ``1.5s``, ``6m0s``."""
    seconds = max(0.0, seconds)
    if 0 < seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


@dataclass(frozen=True)
class Decision:
    """The outcome of one admission: whether it passed, and the numbers for the headers."""

    allowed: bool
    remaining_requests: int | None
    remaining_tokens: int | None
    reset_requests: float
    reset_tokens: float
    retry_after: float


class Window:
    """Requests and tokens admitted over the last 60 seconds, against optional RPM and TPM limits."""

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._admitted: deque[tuple[float, int]] = deque()
        self._received: deque[float] = deque()
        self.max_in_window = 0
        """Most requests received (admitted or not) within any 60 s window."""

    def _expire(self, now: float) -> None:
        while self._admitted and self._admitted[0][0] <= now - WINDOW_SECONDS:
            self._admitted.popleft()
        while self._received and self._received[0] <= now - WINDOW_SECONDS:
            self._received.popleft()

    def admit(self, now: float, tokens: int) -> Decision:
        """Admit one request of ``tokens`` at ``now`` if both limits allow it, and record it."""
        self._expire(now)
        self._received.append(now)
        self.max_in_window = max(self.max_in_window, len(self._received))
        used = sum(spent for _, spent in self._admitted)
        over_requests = self.rpm is not None and len(self._admitted) >= self.rpm
        over_tokens = self.tpm is not None and used + tokens > self.tpm and bool(self._admitted)
        allowed = not (over_requests or over_tokens)
        if allowed:
            self._admitted.append((now, tokens))
            used += tokens
        reset_requests = self._admitted[0][0] + WINDOW_SECONDS - now if self._admitted else 0.0
        reset_tokens = self._tokens_free_at(now, tokens) - now if over_tokens else reset_requests
        retry_after = max(reset_requests if over_requests else 0.0, reset_tokens if over_tokens else 0.0)
        return Decision(
            allowed=allowed,
            remaining_requests=None if self.rpm is None else max(0, self.rpm - len(self._admitted)),
            remaining_tokens=None if self.tpm is None else max(0, self.tpm - used),
            reset_requests=reset_requests,
            reset_tokens=reset_tokens,
            retry_after=retry_after,
        )

    def _tokens_free_at(self, now: float, tokens: int) -> float:
        """When enough admitted tokens will have left the window for ``tokens`` more."""
        assert self.tpm is not None
        used = sum(spent for _, spent in self._admitted)
        for at, spent in self._admitted:
            used -= spent
            if used + tokens <= self.tpm:
                return at + WINDOW_SECONDS
        return now


class PrefixCache:
    """OpenAI-style prompt caching: the longest prompt prefix seen before, in 128-token blocks.

    As OpenAI documents it: only prompts of at least 1024 tokens are cached or served from the cache,
    and a hit is at least 1024 tokens (then grows in 128-token steps), so a shorter common prefix
    counts as a miss. A token is taken to be 4 characters.
    """

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def cached_tokens(self, prompt: str) -> int:
        """Tokens of ``prompt`` served from the cache (0 below 1024 tokens); remembers its prefixes."""
        if len(prompt) // _CHARS_PER_TOKEN < CACHE_MIN_TOKENS:
            return 0  # too short to be cached at all
        block = CACHE_BLOCK_TOKENS * _CHARS_PER_TOKEN
        blocks = len(prompt) // block
        digest = hashlib.sha256()
        hits = 0
        missed = False
        for index in range(blocks):
            digest.update(prompt[index * block : (index + 1) * block].encode())
            key = digest.copy().digest()
            if key in self._seen and not missed:
                hits += 1
            else:
                missed = True
                self._seen.add(key)
        cached = hits * CACHE_BLOCK_TOKENS
        return cached if cached >= CACHE_MIN_TOKENS else 0
