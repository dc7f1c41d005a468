"""Reading an existing evolutions (or features) file for ``map`` and ``reverse``.

Schema 1.1 files are streamed: line 1 is the header, each further line a record. A record line that
cannot be used (invalid JSON, a schema error, a repeated service id, a torn last line) is a
:class:`~service_ambitions.store.inputs.BadLine`, as in a services file, so one bad line costs one
record. Schema 1.0 files are migrated in memory (``store/migrate.py``), which validates every line
first; their notes (feature ids kept as they are, models not recorded) are in :attr:`EvolutionSource.notes`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.domain.output import Header, ServiceEvolution
from service_ambitions.domain.reference import Role
from service_ambitions.errors import InputError
from service_ambitions.store.inputs import BadLine, file_digest
from service_ambitions.store.migrate import MigrationNotes, MigrationOptions, read_v10

__all__ = ["EvolutionSource", "SourceRecord", "contains_service", "open_source"]

_RAW_KEPT = 10_000  # characters of a bad line kept in its quarantine entry


@dataclass(frozen=True)
class SourceRecord:
    """A valid record and the line it came from."""

    line: int
    record: ServiceEvolution


@dataclass
class EvolutionSource:
    """An evolutions file opened for reading.

    Attributes:
        path: The file.
        header: Its header (for a 1.0 file, the header its migration writes).
        version: The schema version read (``1.1`` or ``1.0``).
        digest: SHA-256 of the file's bytes (the ``source_digest`` of what is made from it).
        notes: What the in-memory migration of a 1.0 file kept as it was (None for 1.1).
    """

    path: Path
    header: Header
    version: str
    digest: str
    notes: MigrationNotes | None
    _records: Callable[[], Iterator[SourceRecord | BadLine]]

    def records(self) -> Iterator[SourceRecord | BadLine]:
        """The records in file order (bad lines of a 1.1 file included as such).

        Raises:
            InputError: The file cannot be read, or (1.0) has an invalid line.
        """
        return self._records()


def _open(path: Path) -> Any:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise InputError(f"input file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"input file {path} is a directory") from None
    except OSError as exc:
        raise InputError(f"cannot read input file {path}: {exc.strerror or exc}") from None


def _first_line(path: Path) -> tuple[int, Any]:
    """The first non-blank line, parsed."""
    with _open(path) as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                try:
                    return number, json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise InputError(f"{path}:{number}: invalid JSON: {exc}") from None
    raise InputError(f"{path}: empty file: no header and no records")


def _header(path: Path, number: int, data: Any) -> Header:
    try:
        return Header.model_validate(data)
    except ValidationError as exc:
        version = data.get("schema_version")
        if version and version != "1.1":
            raise InputError(
                f"{path} has schema version {version}; this tool reads 1.1 and 1.0 files "
                "(convert it with `migrate`)"
            ) from None
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "(header)"
        raise InputError(f"{path}:{number}: not a valid header: {where}: {first['msg']}") from None


def _v11_records(path: Path, redact: Callable[[Any], Any] | None) -> Iterator[SourceRecord | BadLine]:
    seen: set[str] = set()
    header_seen = False
    with _open(path) as handle:
        for number, raw_bytes in enumerate(handle, start=1):
            if not raw_bytes.strip():
                continue
            if not header_seen:
                header_seen = True
                continue
            yield _v11_line(number, raw_bytes, redact, seen)


def _v11_line(
    number: int, raw_bytes: bytes, redact: Callable[[Any], Any] | None, seen: set[str]
) -> SourceRecord | BadLine:
    raw = raw_bytes.decode("utf-8", "replace").rstrip("\n")
    kept = raw[:_RAW_KEPT] if redact is None else redact(raw[:_RAW_KEPT])
    if not raw_bytes.endswith(b"\n"):
        return BadLine(number, "the last line is incomplete (no newline): torn write?", kept)
    try:
        data = json.loads(raw_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return BadLine(number, f"invalid JSON: {exc}", kept)
    service = data.get("service") if isinstance(data, dict) else None
    service_id = service.get("service_id") if isinstance(service, dict) else None
    service_id = service_id if isinstance(service_id, str) else None
    if not isinstance(data, dict):
        return BadLine(number, "a record must be a JSON object", kept)
    if redact is not None and isinstance(service, dict):
        data["service"] = redact(service)  # as a services file is redacted when read
    try:
        record = ServiceEvolution.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "(record)"
        return BadLine(number, f"schema error: {where}: {first['msg']}", kept, service_id)
    if record.service.service_id in seen:
        return BadLine(number, f"duplicate service_id {record.service.service_id!r}", kept, service_id)
    seen.add(record.service.service_id)
    return SourceRecord(number, record)


def open_source(
    path: Path,
    *,
    roles: Sequence[Role] = (),
    tool_version: str,
    redact: Callable[[Any], Any] | None = None,
) -> EvolutionSource:
    """Open an evolutions file of schema 1.1, or 1.0 (migrated in memory).

    Args:
        path: The file.
        roles: Reference roles for 1.0 records that do not describe their roles.
        tool_version: Written to the header of a migrated 1.0 file.
        redact: Scrubs secrets from each record's service before anything else sees it.

    Raises:
        InputError: The file is missing, unreadable, empty, of another schema, or its first line is
            neither a 1.1 header nor a 1.0 record.
    """
    number, first = _first_line(path)
    digest = file_digest(path)
    if isinstance(first, dict) and first.get("record_type") == "header":
        header = _header(path, number, first)
        return EvolutionSource(path, header, "1.1", digest, None, lambda: _v11_records(path, redact))
    if isinstance(first, dict) and "meta" in first:
        legacy = read_v10(path, MigrationOptions(tool_version=tool_version, roles=roles))

        def migrated() -> Iterator[SourceRecord | BadLine]:
            for line, record in legacy.records():
                if redact is None:
                    yield SourceRecord(line, record)
                    continue
                service = ServiceInput.model_validate(redact(record.service.model_dump(mode="json")))
                yield SourceRecord(line, record.model_copy(update={"service": service}))

        return EvolutionSource(path, legacy.header, "1.0", digest, legacy.notes, migrated)
    raise InputError(
        f"{path}:{number}: not an evolutions file: the first line is neither a schema 1.1 header "
        "nor a schema 1.0 record"
    )


def contains_service(path: Path, service_id: str) -> bool:
    """Whether any line of an evolutions file holds a record of ``service_id`` (a cheap scan)."""
    with _open(path) as handle:
        for raw in handle:
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            service = data.get("service") if isinstance(data, dict) else None
            if isinstance(service, dict) and service.get("service_id") == service_id:
                return True
    return False
