"""What the engine processes: a :class:`Batch` of :class:`Job` items, and where their records go.

``run`` makes a job per service of a services file (the whole pipeline); ``map`` makes a job per record
of an evolutions file (the mapping stage only). A job's record is cached as a whole under a key of the
run's settings and the job's own ``key_parts`` (:class:`RecordCache`), so a warm rerun writes its lines
verbatim. Records go to the output file (``store/writer.py``) or, for ``--output-file -``, to a stream
(:class:`StreamWriter`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from service_ambitions.context import RunContext
from service_ambitions.domain.output import Header
from service_ambitions.engine.identity import settings_digest
from service_ambitions.engine.pipeline import ServiceResult
from service_ambitions.engine.problems import Problem
from service_ambitions.errors import ResumeRefused
from service_ambitions.llm.providers import parse_model_id
from service_ambitions.store.cache import cache_key
from service_ambitions.store.inputs import BadLine
from service_ambitions.store.writer import write_error

__all__ = ["RECORD_FORMAT", "STDOUT", "Batch", "Job", "RecordCache", "StreamWriter", "Writer", "check_source"]

RECORD_FORMAT = 1
"""Bumped whenever assembly changes what a record holds for the same answers."""

STDOUT = Path("-")
"""The output path meaning "write the records to the engine's stream" (``map --output-file -``)."""


@dataclass(frozen=True)
class Job:
    """One item of a batch: the service it is for, and the work that makes its record.

    Attributes:
        line: The input line it came from (named in quarantine entries).
        service_id: The service (resume, quarantine, budget and logs go by it).
        key_parts: What the record depends on besides the run's settings and content: its record-cache
            key is these parts over the run's basis.
        work: Produces the record; raises :class:`~service_ambitions.errors.PipelineError` to fail this
            job only.
    """

    line: int
    service_id: str
    key_parts: dict[str, Any]
    work: Callable[[], Awaitable[ServiceResult]]


@dataclass
class Batch:
    """What a run processes: the header of its output, and its items in output order (read lazily)."""

    header: Header
    items: Iterable[Job | BadLine]


class Writer(Protocol):
    """Where the engine writes record lines, one owner per output."""

    def write_line(self, line: bytes) -> None:
        """Append one serialised record (no newline) and flush it."""

    def close(self) -> None:
        """Flush and release the output."""


class StreamWriter:
    """Writes the header and records to a stream (stdout), each line flushed; no file, no resume."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.records = 0

    def _write(self, data: bytes) -> None:
        try:
            self.stream.write(data + b"\n")
            self.stream.flush()
        except OSError as exc:
            raise write_error(STDOUT, exc) from None

    def start(self, header: Header) -> None:
        """Write the header line."""
        self._write(header.model_dump_json().encode("utf-8"))

    def write_line(self, line: bytes) -> None:
        """Write one record line."""
        self._write(line)
        self.records += 1

    def close(self) -> None:
        """The stream belongs to the caller: it is flushed after every line and never closed here."""


class RecordCache:
    """Whole records in the response cache, keyed by the run's output-affecting basis and the job."""

    def __init__(self, context: RunContext) -> None:
        self.cache = context.cache
        self.basis = {
            "kind": "record",
            "record_format": RECORD_FORMAT,
            "tool": context.tool_version,
            "git": context.git_sha,
            "settings": settings_digest(context.settings, context.content),
            "models": {
                stage: parse_model_id(model).cache_identity
                for stage, model in context.settings.stage_models().items()
            },
        }

    def key(self, job: Job) -> str:
        """The record-cache key of a job."""
        return cache_key({**self.basis, **job.key_parts})

    def get(self, key: str) -> ServiceResult | None:
        """The cached result, or None (miss, or an entry that is not a record: counted as corrupt)."""
        payload = self.cache.get(key)
        if payload is None:
            return None
        try:
            # The entry passed its SHA-256 check, so the line is byte for byte the validated record
            # this run's settings produced before; it is written back without re-validation.
            return ServiceResult(
                record=None,
                line=str(payload["line"]).encode("utf-8"),
                problems=[Problem(**problem) for problem in payload["problems"]],
                unknown_ids=int(payload["unknown_ids"]),
            )
        except (KeyError, TypeError, ValueError):
            self.cache.stats.corrupt += 1
            return None

    def put(self, key: str, result: ServiceResult) -> None:
        """Cache a finished result."""
        self.cache.put(
            key,
            {
                "line": result.line_bytes().decode("utf-8"),
                "problems": [dataclasses.asdict(problem) for problem in result.problems],
                "unknown_ids": result.unknown_ids,
            },
        )


def check_source(target: Path, expected: Header) -> None:
    """Refuse to resume an output made from another source file (``map``); checked before anything changes.

    Raises:
        ResumeRefused: The output's header names another source digest.
    """
    if expected.source_digest is None or not target.exists():
        return
    try:
        with target.open("rb") as handle:
            first = handle.readline()
        recorded = Header.model_validate_json(first).source_digest
    except (OSError, ValueError):
        return  # not a readable header: prepare_resume names the problem
    if recorded != expected.source_digest:
        raise ResumeRefused(f"cannot resume {target}: the source file changed (its digest differs)")
