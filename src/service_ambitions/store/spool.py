"""Inputs that can be read only once (``-``, pipes, FIFOs, ``<(cat f)``) made into regular files.

A run reads its input twice: once for the digest that goes into the header (written first), once
to process it. A pipe would be empty the second time, so it is copied once, digesting as it goes,
into a private temporary file that the run then reads like any other file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from service_ambitions.errors import InputError

__all__ = ["STDIN", "readable_input", "spooled_input"]

STDIN = Path("-")
"""``--input-file -`` reads the services from standard input."""


def readable_input(path: Path) -> Path:
    """The path to open for ``path``: ``-`` is standard input."""
    return Path("/dev/stdin") if path == STDIN else path


def _is_stream(path: Path) -> bool:
    """A FIFO, pipe, socket or character device: readable once. Anything else the reader handles."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False  # let the reader report the missing or unreadable file with its own message
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


@contextlib.contextmanager
def spooled_input(path: Path) -> Iterator[Path]:
    """Yield a regular file with the content of ``path``; pipes and FIFOs are copied once.

    Raises:
        InputError: The stream cannot be read or the copy cannot be written.
    """
    source = readable_input(path)
    if path != STDIN and not _is_stream(source):
        yield source
        return
    name = "standard input" if path == STDIN else str(path)
    fd, spool = tempfile.mkstemp(prefix="service-ambitions-input-", suffix=".jsonl")
    try:
        try:
            with os.fdopen(fd, "wb") as target:
                if path == STDIN:
                    shutil.copyfileobj(sys.stdin.buffer, target, 1 << 20)
                else:
                    with source.open("rb") as stream:
                        shutil.copyfileobj(stream, target, 1 << 20)
        except OSError as exc:
            raise InputError(f"cannot read input {name}: {exc.strerror or exc}") from None
        yield Path(spool)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(spool)
