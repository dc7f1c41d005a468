"""The output writer: header then records, each flushed before it counts as written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from service_ambitions.domain.output import Header, ServiceEvolution

__all__ = ["OutputWriter"]


class OutputWriter:
    """Owns one output file. Records are written whole, one line each, and flushed.

    ``fsync`` runs at most every ``sync_every`` records and on close: a process crash loses
    nothing that was flushed; a power cut loses at most the records since the last sync.
    """

    def __init__(self, path: Path, *, sync_every: int = 64) -> None:
        self.path = path
        self.sync_every = sync_every
        self.records = 0
        self._handle: IO[bytes] | None = None
        self._unsynced = 0

    def start(self, header: Header) -> None:
        """Create (truncate) the file and write the header line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("wb")
        self._write_line(header.model_dump_json().encode("utf-8"))
        self._sync()

    def open_append(self) -> None:
        """Continue an existing file (resume); its header and records stay as they are."""
        self._handle = self.path.open("ab")

    def write(self, record: ServiceEvolution) -> None:
        """Append one record and flush it."""
        self.write_line(record.model_dump_json().encode("utf-8"))

    def write_line(self, line: bytes) -> None:
        """Append one already serialised record (no newline) and flush it."""
        self._write_line(line)
        self.records += 1
        self._unsynced += 1
        if self._unsynced >= self.sync_every:
            self._sync()

    def _write_line(self, data: bytes) -> None:
        if self._handle is None:
            raise RuntimeError("the writer is not started")
        self._handle.write(data + b"\n")
        self._handle.flush()

    def _sync(self) -> None:
        if self._handle is not None:
            os.fsync(self._handle.fileno())
            self._unsynced = 0

    def close(self) -> None:
        """Sync and close."""
        if self._handle is not None:
            self._sync()
            self._handle.close()
            self._handle = None
