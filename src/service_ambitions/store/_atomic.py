"""Atomic file writes: temp file in the same directory, write, flush, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["TEMP_SUFFIX", "atomic_write_bytes", "atomic_writer", "fsync_dir"]

TEMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path, *, durable: bool = True) -> Iterator[IO[bytes]]:
    """A binary handle on a temp file that replaces ``path`` when the block succeeds.

    Readers see the old file or the complete new one, never a mix. When the block raises, the temp file
    is removed and ``path`` is left as it was. ``OSError`` from creating, writing or renaming propagates.

    Args:
        path: Destination file; its directory is created when missing.
        durable: Also fsync the file and its directory (skip for content that is verified on read).
    """
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a mix.

    Args:
        path: Destination file; its directory is created when missing.
        data: The full content.
        durable: Also fsync the file and its directory (skip for content that is verified on read).
    """
    with atomic_writer(path, durable=durable) as handle:
        handle.write(data)
