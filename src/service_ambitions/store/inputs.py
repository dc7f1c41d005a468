"""Streaming reader of the services file (DOMAIN §2.1)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.errors import InputError

__all__ = ["BadLine", "InputLine", "file_digest", "read_services"]


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


def _open_error(path: Path, exc: OSError) -> InputError:
    if isinstance(exc, FileNotFoundError):
        return InputError(f"input file {path} does not exist")
    if isinstance(exc, IsADirectoryError):
        return InputError(f"input file {path} is a directory")
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


def read_services(path: Path, redact: Callable[[Any], Any] | None = None) -> Iterator[InputLine | BadLine]:
    """Yield each non-blank line of a JSONL services file as a service or a bad line.

    The file is streamed; only the set of ids seen is kept (to detect duplicates). ``redact``, when
    given, scrubs secrets from each record before anything else sees it (prompts, cache, output).

    Raises:
        InputError: The file is missing or unreadable.
    """
    seen: set[str] = set()
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise _open_error(path, exc) from None
    with handle:
        for number, raw_bytes in enumerate(handle, start=1):
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield BadLine(
                    number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})", repr(raw_bytes[:200])
                )
                continue
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield BadLine(number, f"invalid JSON: {exc.msg} at column {exc.colno}", raw.rstrip("\n"))
                continue
            if redact is not None:
                data = redact(data)
                raw = redact(raw)
            service_id = data.get("service_id") if isinstance(data, dict) else None
            if not isinstance(data, dict):
                yield BadLine(number, "a service must be a JSON object", raw.rstrip("\n"))
                continue
            try:
                service = ServiceInput.model_validate(data)
            except ValidationError as exc:
                yield BadLine(
                    number,
                    f"schema error: {_explain(exc)}",
                    raw.rstrip("\n"),
                    service_id if isinstance(service_id, str) else None,
                )
                continue
            if service.service_id in seen:
                yield BadLine(
                    number,
                    f"duplicate service_id {service.service_id!r}",
                    raw.rstrip("\n"),
                    service.service_id,
                )
                continue
            seen.add(service.service_id)
            yield InputLine(number, service)
