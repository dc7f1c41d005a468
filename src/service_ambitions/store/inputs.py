"""Streaming reader of the services file (DOMAIN §2.1), with limits that keep one hostile line to itself."""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.errors import InputError

__all__ = [
    "MAX_INT_DIGITS",
    "MAX_LINE_BYTES",
    "MAX_NESTING",
    "BadLine",
    "InputLine",
    "file_digest",
    "read_services",
]

_MIB = 1024 * 1024
MAX_LINE_BYTES = 4 * _MIB
"""Longest line read, without its line ending. A record is sent whole in every prompt of its service; 4 MiB is
about a million tokens, past any model's context window, so no usable record is refused, and a line without
newlines (a wrong file, a dump) is skipped in chunks instead of being held in memory."""
MAX_NESTING = 64
"""Deepest nesting of arrays and objects below the record object. Real records need 4 levels (jobs → job →
roles → role). The C JSON decoder recurses (10,000 ``[`` is a RecursionError), and so do pydantic's
serializer (it stops near 255 levels), the redactor and ``json.dumps`` later in the run: 64 keeps every one
of them far from its limit, and the check is a linear scan that does not recurse."""
MAX_INT_DIGITS = 4300
"""Longest integer literal: Python's own default ``int`` conversion limit, so the output (which keeps a
job's extra keys) can be read back by any Python ``json`` without raising."""

_SKIP_CHUNK = _MIB
# A JSON string, or the unterminated rest of one: possessive, so the scan is linear even on broken lines.
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# Only an escape can put a lone surrogate in a decoded string (the line itself is valid UTF-8).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# The id of a line we cannot parse, when it is the first key (for `quarantine rm --service`).
_LEADING_ID = re.compile(r'\A\s*\{\s*"service_id"\s*:\s*"([^"\\\n]{1,200})"')


@dataclass(frozen=True)
class InputLine:
    """A valid service and the line it came from."""

    line: int
    service: ServiceInput


@dataclass(frozen=True)
class BadLine:
    """A line that was skipped, and why."""

    line: int
    reason: str
    raw: str
    service_id: str | None = None


class _Refused(Exception):
    """A line breaks an input limit; never leaves this module (it becomes a :class:`BadLine`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _open_error(path: Path, exc: OSError) -> InputError:
    if isinstance(exc, FileNotFoundError):
        return InputError(f"input file {path} does not exist")
    if isinstance(exc, IsADirectoryError) or path.is_dir():  # Windows raises PermissionError
        return InputError(f"input file {path} is a directory, not a file")
    return InputError(f"cannot read input file {path}: {exc.strerror or exc}")


def file_digest(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise _open_error(path, exc) from None


def _explain(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "(record)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _lines(handle: IO[bytes]) -> Iterator[tuple[bytes, int]]:
    """Each line (at most ``MAX_LINE_BYTES + 2`` bytes of it) and its length without the line ending."""
    while chunk := handle.readline(MAX_LINE_BYTES + 2):
        size, last = len(chunk), chunk
        while size > MAX_LINE_BYTES + 1 and not last.endswith(b"\n"):  # too long: skip the rest, unkept
            last = handle.readline(_SKIP_CHUNK)
            if not last:
                break
            size += len(last)
        if last.endswith(b"\n"):
            size -= 2 if last.endswith(b"\r\n") else 1
        yield chunk, size


def _integer(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise _Refused(f"integer with more than {MAX_INT_DIGITS} digits")
    try:
        return int(text)
    except ValueError:  # the interpreter's limit was lowered (PYTHONINTMAXSTRDIGITS)
        raise _Refused(f"integer with too many digits ({len(text)} characters)") from None


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 24 else f"{text[:20]}..."
        raise _Refused(f"number {shown} is out of range (not a finite number)")
    return value


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON")


def _nesting(text: str) -> int:
    """How deep arrays and objects nest in ``text`` (1 for a flat object), ignoring brackets in strings."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _lone_surrogate(data: Any) -> str | None:
    """The first lone UTF-16 surrogate in any key or string of ``data``, walked without recursion."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if found := _SURROGATE.search(value):
                return found.group()
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return None


def _parse(text: str) -> Any:
    """Decode one line within the input limits.

    Raises:
        _Refused: A limit is broken (nesting, integer size, non-finite number, lone surrogate).
        json.JSONDecodeError: The line is not JSON.
    """
    if _nesting(text) > MAX_NESTING + 1:
        raise _Refused(f"nesting deeper than {MAX_NESTING} levels")
    data = json.loads(text, parse_int=_integer, parse_float=_float, parse_constant=_constant)
    if _SURROGATE_ESCAPE.search(text) and (found := _lone_surrogate(data)) is not None:
        raise _Refused(f"string with a lone surrogate \\u{ord(found):04x} (not valid Unicode)")
    return data


def read_services(path: Path, redact: Callable[[Any], Any] | None = None) -> Iterator[InputLine | BadLine]:
    """Yield each non-blank line of a JSONL services file as a service or a bad line.

    The file is streamed; only the set of ids seen is kept (to detect duplicates). ``redact``, when
    given, scrubs secrets from each record (and from each bad line) before anything else sees it
    (prompts, cache, output, quarantine). A line that breaks a limit (``MAX_LINE_BYTES``,
    ``MAX_NESTING``, ``MAX_INT_DIGITS``), holds NaN/Infinity or a lone surrogate is a bad line
    naming the limit; a UTF-8 byte order mark on the first line is ignored.

    Raises:
        InputError: The file is missing, a directory, or unreadable.
    """
    seen: set[str] = set()
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise _open_error(path, exc) from None
    with handle:
        for number, (raw_bytes, size) in enumerate(_lines(handle), start=1):
            item = _read_line(number, raw_bytes, size, redact, seen)
            if item is not None:
                yield item


def _read_line(
    number: int, raw_bytes: bytes, size: int, redact: Callable[[Any], Any] | None, seen: set[str]
) -> InputLine | BadLine | None:
    """One line as a service, a bad line, or None when it is blank."""

    def bad(reason: str, raw: str, service_id: str | None = None) -> BadLine:
        if redact is not None:
            raw = redact(raw)
            service_id = redact(service_id)
        return BadLine(number, reason, raw, service_id)

    if number == 1 and raw_bytes.startswith(codecs.BOM_UTF8):
        raw_bytes = raw_bytes[len(codecs.BOM_UTF8) :]
    if size > MAX_LINE_BYTES:
        start = _LEADING_ID.match(raw_bytes[:4096].decode("utf-8", "replace"))
        reason = f"line longer than {MAX_LINE_BYTES // _MIB} MiB ({size:,} bytes)"
        return bad(reason, "", start.group(1) if start else None)
    try:
        raw = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        return bad(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", repr(raw_bytes[:200]))
    if not raw.strip():
        return None
    try:
        data = _parse(raw)
    except _Refused as exc:
        start = _LEADING_ID.match(raw)
        return bad(exc.reason, raw.rstrip("\n"), start.group(1) if start else None)
    except json.JSONDecodeError as exc:
        return bad(f"invalid JSON: {exc.msg} at column {exc.colno}", raw.rstrip("\n"))
    if redact is not None:
        data = redact(data)
        raw = redact(raw)
    service_id = data.get("service_id") if isinstance(data, dict) else None
    if not isinstance(data, dict):
        return BadLine(number, "a service must be a JSON object", raw.rstrip("\n"))
    try:
        service = ServiceInput.model_validate(data)
    except ValidationError as exc:
        return BadLine(
            number,
            f"schema error: {_explain(exc)}",
            raw.rstrip("\n"),
            service_id if isinstance(service_id, str) else None,
        )
    if service.service_id in seen:
        return BadLine(
            number, f"duplicate service_id {service.service_id!r}", raw.rstrip("\n"), service.service_id
        )
    seen.add(service.service_id)
    return InputLine(number, service)
