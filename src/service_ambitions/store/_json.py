"""Compact JSON through orjson, byte for byte what the standard library writes and reads.

:func:`dumps` returns exactly ``json.dumps(value, ensure_ascii=False, separators=(",", ":"),
sort_keys=sort_keys).encode("utf-8")`` (or raises what that raises), and :func:`loads` returns exactly
``json.loads(data)``; orjson does the work whenever its answer is provably the same. Where the two differ,
the standard library is used:

- floats below 1e-4 (orjson writes ``0.00001`` and ``1e-7`` for ``1e-05`` and ``1e-07``), NaN and
  Infinity (orjson writes ``null``), and every type but ``dict``, ``list``, ``tuple``, ``str``, ``int``,
  ``bool`` and ``None`` themselves (orjson writes enums, UUIDs, dates and dataclasses, which the standard
  library refuses; subclasses are left to the standard library too): found by one walk of the value
  before encoding;
- integers beyond 64 bits, keys that are not ``str``, nesting past orjson's 254 levels, lone surrogates:
  orjson raises, and the standard library then writes (or refuses) them as before;
- decoding: whatever orjson refuses (NaN, Infinity, ``1e400``, lone surrogate escapes, a byte order mark,
  UTF-16) is decoded by the standard library, and so is a value holding floats (orjson rounds integers
  past 64 bits to floats) that does not re-encode to the very bytes read (such an integer; another
  writer's spacing or escapes).

Output records, headers and quarantine entries are not encoded here: pydantic's ``model_dump_json`` writes
them at least as fast as ``model_dump`` plus orjson would (``scripts/bench.py --codec``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

__all__ = ["dumps", "loads", "stdlib_dumps", "stdlib_loads"]

_SCALARS = frozenset({str, int, bool, type(None)})
# Deeper values go to the standard library (orjson itself stops at 254 levels).
_MAX_DEPTH = 200
# orjson writes every finite float of at least this magnitude as ``repr`` does (tests/test_json_encoding.py).
_SMALLEST_PLAIN_FLOAT = 1e-4
# A walk of the decoded value costs about what re-encoding this many bytes does: long documents of few nodes
# (a cached record: one long string) are walked, the others re-encoded.
_BYTES_PER_WALKED_NODE = 256


def stdlib_dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """The reference encoding: compact, UTF-8, non-ASCII unescaped, keys in insertion (or sorted) order."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys).encode("utf-8")


def stdlib_loads(data: bytes) -> Any:
    """The reference decoding."""
    return json.loads(data)


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """:func:`stdlib_dumps`, through orjson when that is byte-identical.

    Raises:
        TypeError: A value JSON cannot hold, as the standard library raises it.
        ValueError: A circular reference, as the standard library raises it.
        UnicodeEncodeError: A string with a lone surrogate (a ``ValueError`` too).
    """
    if _plain(value, 0):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
        except orjson.JSONEncodeError:  # integers past 64 bits, keys that are not str, lone surrogates, depth
            pass
    return stdlib_dumps(value, sort_keys=sort_keys)


def loads(data: bytes, *, exact: bool = True) -> Any:
    """:func:`stdlib_loads`, through orjson when that gives the same value.

    Args:
        data: One JSON document (a trailing newline is fine).
        exact: ``False`` skips the check of numbers, for callers that read only strings: numbers may then
            differ (integers past 64 bits come back as floats); strings, keys and structure are always what
            the standard library reads.

    Raises:
        ValueError: ``data`` is not JSON (``json.JSONDecodeError``) or not UTF-8 (as the standard library
            raises it).
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return stdlib_loads(data)
    if not exact or _floatless(value, len(data) // _BYTES_PER_WALKED_NODE):
        # Without floats, orjson's value is the standard library's: its strings are, and so is every
        # integer it kept as an integer (it rounds longer ones to floats).
        return value
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:  # nested past 254 levels
        return stdlib_loads(data)
    # Re-encoding to the same bytes proves the value is the one the standard library reads: every float
    # is written at its shortest round-trip form and every integer kept had at most 64 bits.
    if data == encoded or (len(data) == len(encoded) + 1 and data[-1:] == b"\n" and data.startswith(encoded)):
        return value
    return stdlib_loads(data)


def _floatless(value: Any, budget: int) -> bool:
    """Whether ``value`` holds no float, if it has at most ``budget`` nodes (``False`` past that)."""
    if type(value) is not dict and type(value) is not list:
        return type(value) is not float
    stack = [value]
    while stack:
        node = stack.pop()
        children = node.values() if type(node) is dict else node
        budget -= len(children)
        if budget < 0:
            return False
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append(child)
            elif kind is float:
                return False
    return True


def _plain(value: Any, depth: int) -> bool:
    """Whether orjson encodes ``value`` exactly as the standard library does (recursive: fastest here)."""
    kind = type(value)
    if kind is dict:
        children: Any = value.values()
    elif kind is list or kind is tuple:
        children = value
    elif kind is float:
        return bool(value == 0.0 or _SMALLEST_PLAIN_FLOAT <= abs(value) < math.inf)
    else:
        return kind in _SCALARS
    if depth >= _MAX_DEPTH:
        return False
    depth += 1
    for child in children:  # noqa: SIM110 (all() over a generator takes twice as long)
        if type(child) not in _SCALARS and not _plain(child, depth):
            return False
    return True
