"""Parsing of human-friendly durations and sizes used by settings and commands."""

from __future__ import annotations

import re

__all__ = ["parse_duration", "parse_size"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$", re.IGNORECASE)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_BYTES = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_duration(value: str | float) -> float:
    """Parse ``90``, ``"90s"``, ``"15m"``, ``"12h"``, ``"7d"`` or ``"2w"`` into seconds."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration (examples: 90, 90s, 15m, 12h, 7d, 2w)")
    return float(match.group(1)) * _SECONDS[(match.group(2) or "s").lower()]


def parse_size(value: str | int) -> int:
    """Parse ``1048576``, ``"500MB"`` or ``"2GiB"`` into bytes."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size (examples: 1048576, 500MB, 2GiB)")
    return int(float(match.group(1)) * _BYTES[(match.group(2) or "b").lower()])
