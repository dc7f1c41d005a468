"""The output writer: header then records, each flushed before it counts as written.

A fresh run writes ``<output>.partial`` and renames it over the output only when the run is
complete, so an earlier complete output survives a failed, interrupted or killed rerun.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import IO

from service_ambitions.domain.output import Header, ServiceEvolution
from service_ambitions.errors import PathError
from service_ambitions.store._atomic import fsync_dir
from service_ambitions.store.quarantine import quarantine_dir_for

__all__ = ["OutputWriter", "discard_partial", "partial_path_for", "publish_partial", "write_error"]


def partial_path_for(output: Path) -> Path:
    """Where a fresh run writes until it is complete."""
    return output.with_name(output.name + ".partial")


def write_error(path: Path, exc: OSError) -> PathError:
    """A one-line error for a failed write, naming the file."""
    return PathError(f"cannot write {path}: {exc.strerror or exc}")


def discard_partial(output: Path) -> None:
    """Remove a partial output of ``output`` and its quarantine (a fresh run starts over)."""
    partial = partial_path_for(output)
    partial.unlink(missing_ok=True)
    shutil.rmtree(quarantine_dir_for(partial), ignore_errors=True)


def publish_partial(output: Path) -> None:
    """Rename the partial output (and its quarantine) over ``output`` (and its quarantine).

    Raises:
        PathError: The rename failed (names the files); both files are left as they were.
    """
    partial = partial_path_for(output)
    new_quarantine = quarantine_dir_for(partial)
    old_quarantine = quarantine_dir_for(output)
    try:
        os.replace(partial, output)
        if old_quarantine.exists():
            shutil.rmtree(old_quarantine)
        if new_quarantine.exists():
            os.replace(new_quarantine, old_quarantine)
    except OSError as exc:
        raise PathError(f"cannot rename {partial} to {output}: {exc.strerror or exc}") from None
    fsync_dir(output.parent)


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
        """Create (truncate) the file and write the header line.

        Raises:
            PathError: The file cannot be created or written (names it).
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("wb")
        except OSError as exc:
            raise write_error(self.path, exc) from None
        self._write_line(header.model_dump_json().encode("utf-8"))
        self._sync()

    def open_append(self) -> None:
        """Continue an existing file (resume); its header and records stay as they are."""
        try:
            self._handle = self.path.open("ab")
        except OSError as exc:
            raise write_error(self.path, exc) from None

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
        try:
            self._handle.write(data + b"\n")
            self._handle.flush()
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def _sync(self) -> None:
        if self._handle is not None:
            try:
                os.fsync(self._handle.fileno())
            except OSError as exc:
                raise write_error(self.path, exc) from None
            self._unsynced = 0

    def close(self) -> None:
        """Sync and close (the file is closed even when the last sync fails).

        Raises:
            PathError: The final sync failed (names the file).
        """
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                os.fsync(handle.fileno())
            except OSError as exc:
                raise write_error(self.path, exc) from None
            finally:
                # A failed flush on close loses unflushed bytes only; resume repairs a torn tail.
                with contextlib.suppress(OSError):
                    handle.close()
