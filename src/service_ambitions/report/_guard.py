"""All or nothing for ``report`` and ``export``: SIGTERM handled like Ctrl-C, no trace left on failure.

While a command writes, SIGTERM raises ``KeyboardInterrupt`` as SIGINT does, so the ``finally`` and
``except`` blocks that remove staging areas and temporary files run; a second SIGTERM is ignored until the
command ends, so it cannot cut that cleanup short. When the command fails, the directories it created
itself are removed again (only when empty: nothing the user put there is touched).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from service_ambitions.errors import Interrupted

__all__ = ["all_or_nothing"]


def _missing(directory: Path) -> list[Path]:
    """``directory`` and its ancestors that do not exist yet, deepest first."""
    missing: list[Path] = []
    candidate = directory.absolute()
    while not os.path.lexists(candidate) and candidate != candidate.parent:
        missing.append(candidate)
        candidate = candidate.parent
    return missing


def _remove_empty(directories: list[Path]) -> None:
    for directory in directories:
        with contextlib.suppress(OSError):  # not empty (or already gone): not ours to remove
            directory.rmdir()


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cleanup that follows must run to its end
    raise KeyboardInterrupt


@contextlib.contextmanager
def all_or_nothing(directory: Path, what: str) -> Iterator[None]:
    """Run the block with SIGTERM as ``KeyboardInterrupt``; on failure remove the directories it created.

    Args:
        directory: The directory the command writes into (created when missing).
        what: What is not written when interrupted, e.g. ``the report``.

    Raises:
        Interrupted: SIGINT or SIGTERM (exit 130); nothing was changed on disk.
    """
    created = _missing(directory)
    main = threading.current_thread() is threading.main_thread()  # signals can only be set there
    previous = signal.signal(signal.SIGTERM, _terminate) if main else None
    try:
        yield
    except KeyboardInterrupt:
        _remove_empty(created)
        raise Interrupted(f"interrupted: nothing was changed on disk ({what} was not written)") from None
    except BaseException:
        _remove_empty(created)
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
