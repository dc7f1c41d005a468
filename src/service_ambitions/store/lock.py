"""One process at a time per output: an advisory ``flock`` on ``<output>.lock``.

The kernel drops a ``flock`` when its holder exits, however it exits (SIGKILL included), so a lock
file left behind by a dead process is simply taken over by the next run: there is no stale state
to clean up. The holder writes its pid into the file so the refusal can name it. The file is never
truncated by a process that has not got the lock (``filelock`` opens with ``O_TRUNC`` before
locking, which would erase the holder's pid; hence these few lines of our own).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from service_ambitions.errors import OutputLocked, PathError

__all__ = ["lock_path_for", "output_lock"]


def lock_path_for(output: Path) -> Path:
    """The lock file of ``output``."""
    return output.with_name(output.name + ".lock")


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
        if text.isdigit():
            return f" (pid {text})"
    return ""


@contextlib.contextmanager
def output_lock(output: Path, *, command: str = "run") -> Iterator[Path]:
    """Hold the exclusive lock of ``output`` for the duration of the block.

    Raises:
        OutputLocked: Another live process holds it (names the output and the holder's pid).
        PathError: The lock file cannot be created (names it).
    """
    path = lock_path_for(output)
    fd = _acquire(path, output, command)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield path
    finally:
        # Unlink before unlocking: a process that opened the old file meanwhile notices (the inode
        # check in _acquire) and starts over on a new one, so two processes never both hold it.
        with contextlib.suppress(OSError):
            path.unlink()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _acquire(path: Path, output: Path, command: str) -> int:
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise PathError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputLocked(
                f"{output} is being written by another process{holder}; "
                f"refusing to {command} on it at the same time (lock {path})"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file as we opened it: try again on the new one
