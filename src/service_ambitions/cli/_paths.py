"""Up-front checks of the paths a command reads and writes, and one-line messages for OS errors.

Every check raises :class:`~service_ambitions.errors.PathError` (a ``UsageError``, exit 2) naming the
option (or what the path is, e.g. ``output file``), the path and the problem, before anything is opened
for writing. The checks never create or change what they look at: writability is probed with a
temporary file in the directory that would hold the path (the nearest existing ancestor when parents
are still to be created), which also catches read-only mounts and full disks that permission bits do
not show.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from service_ambitions.errors import PathError, ServiceAmbitionsError

__all__ = [
    "check_distinct",
    "check_readable_dir",
    "check_readable_file",
    "check_writable_dir",
    "check_writable_file",
    "describe_os_error",
]

_PSEUDO_ROOTS = (Path("/proc"), Path("/sys"))
"""Kernel pseudo file systems: nothing the tool writes can live there."""


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def describe_os_error(exc: OSError, *, path: Path | None = None, action: str = "write") -> str:
    """One line for an OS error met during a run: what could not be done, to which path, and why.

    Args:
        exc: The error.
        path: The path the user knows (e.g. the output file rather than its hidden temp file);
            default: the path the error names.
        action: The verb, e.g. ``write``, ``read``, ``create``.

    Example:
        ``cannot write /x/out.jsonl: No space left on device``
    """
    target: object = path if path is not None else exc.filename
    if target is None:
        return f"cannot {action}: {_strerror(exc)}"
    if path is None and exc.filename2 is not None:
        return f"cannot {action} {target} -> {exc.filename2}: {_strerror(exc)}"
    return f"cannot {action} {target}: {_strerror(exc)}"


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        return path.absolute()


def _spellings(path: Path) -> list[Path]:
    """The path as given, each hop of the symlink it may be, and where it finally resolves to.

    ``/dev/stdout`` → ``/proc/self/fd/1`` → wherever stdout goes: the middle hop is under /proc.
    """
    current = Path(os.path.normpath(path.absolute()))
    spellings = [current]
    for _ in range(40):  # the kernel's own limit on symlink hops
        if not os.path.islink(current):
            break
        try:
            target = Path(os.readlink(current))
        except OSError:
            break
        current = Path(os.path.normpath(current.parent / target))
        spellings.append(current)
    spellings.append(_resolved(path))
    return spellings


def _pseudo_root(path: Path) -> Path | None:
    for spelling in _spellings(path):
        for root in _PSEUDO_ROOTS:
            if spelling.is_relative_to(root):
                return root
    return None


def _refuse_pseudo(option: str, path: Path) -> None:
    root = _pseudo_root(path)
    if root is not None:
        raise PathError(f"cannot write {option} {path}: it is under {root}, a kernel file system")


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _nearest_existing(path: Path) -> Path:
    """The path itself or its closest ancestor that exists (what ``mkdir(parents=True)`` starts from)."""
    candidate = path.absolute()
    while not os.path.exists(candidate) and candidate != candidate.parent:
        candidate = candidate.parent
    return candidate


def _probe(option: str, path: Path, directory: Path) -> None:
    """Create, write, sync and remove a temporary file in ``directory``."""
    try:
        fd, name = tempfile.mkstemp(prefix=".sa-probe-", dir=directory)
    except OSError as exc:
        raise PathError(
            f"cannot write {option} {path}: {directory} is not writable ({_strerror(exc)})"
        ) from None
    try:
        try:
            os.write(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PathError(
            f"cannot write {option} {path}: writing in {directory} failed ({_strerror(exc)})"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _writable_parent(option: str, path: Path, directory: Path) -> None:
    """``directory`` holds (or will hold, once created) ``path``: it must be a writable directory."""
    existing = _nearest_existing(directory)
    if not os.path.isdir(existing):
        raise PathError(f"cannot write {option} {path}: {existing} is a file, not a directory")
    _probe(option, path, existing)


def check_writable_file(option: str, path: Path) -> None:
    """``path`` can be written: a regular file or nothing yet, in a writable (future) directory.

    The file may not exist yet, nor its parents (they are created on write). Devices, pipes and sockets
    are refused: the tool replaces files by renaming a temp file over them.

    Raises:
        PathError: Names the option, the path and the problem.
    """
    _refuse_pseudo(option, path)
    if os.path.isdir(path):
        raise PathError(f"cannot write {option} {path}: it is a directory, not a file")
    _writable_parent(option, path, path.absolute().parent)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PathError(f"cannot write {option} {path}: {_strerror(exc)}") from None
    if not stat.S_ISREG(mode):
        # files are replaced by renaming a temp file over them, which would replace a device node
        # (as root, /dev/full itself), and a pipe would never see the data
        raise PathError(f"cannot write {option} {path}: it is a {_kind(mode)}, not a regular file")
    # an existing file may be appended to (--resume): open it for writing without changing it
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except OSError as exc:
        raise PathError(f"cannot write {option} {path}: {_strerror(exc)}") from None


def check_writable_dir(option: str, path: Path) -> None:
    """``path`` is a writable directory, or can be created as one.

    Raises:
        PathError: Names the option, the path and the problem (e.g. "is a file, not a directory").
    """
    _refuse_pseudo(option, path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise PathError(f"cannot write {option} {path}: it is a file, not a directory")
    _writable_parent(option, path, path)


def check_readable_file(option: str, path: Path, *, error: type[ServiceAmbitionsError] = PathError) -> None:
    """``path`` is an existing file that can be opened for reading.

    Args:
        option: The option or setting that named the path.
        path: The file.
        error: The error to raise; :class:`~service_ambitions.errors.InputError` for the input file.

    Raises:
        PathError: (or ``error``) missing, a directory, or unreadable; names the option and path.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise error(f"{option} {path} does not exist") from None
    except NotADirectoryError:
        raise error(f"{option} {path}: {_nearest_existing(path.parent)} is a file, not a directory") from None
    except OSError as exc:
        raise error(f"cannot read {option} {path}: {_strerror(exc)}") from None
    if stat.S_ISDIR(mode):
        raise error(f"{option} {path} is a directory, not a file")
    if not stat.S_ISREG(mode):
        return  # a pipe or a device (/dev/stdin): opening it could block or consume data
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise error(f"cannot read {option} {path}: {_strerror(exc)}") from None


def check_readable_dir(option: str, path: Path) -> None:
    """``path`` is an existing directory whose entries can be listed.

    Raises:
        PathError: Missing, a file, or unreadable; names the option and path.
    """
    if not os.path.exists(path):
        raise PathError(f"{option} {path} does not exist")
    if not os.path.isdir(path):
        raise PathError(f"{option} {path} is a file, not a directory")
    try:
        with os.scandir(path):
            pass
    except OSError as exc:
        raise PathError(f"cannot read {option} {path}: {_strerror(exc)}") from None


def _same_file(first: Path, second: Path) -> bool:
    if _resolved(first) == _resolved(second):
        return True
    try:
        return os.path.samefile(first, second)  # hard links, bind mounts
    except OSError:
        return False  # one of them does not exist yet (or cannot be seen): the resolved paths decide


def check_distinct(named: Mapping[str, Path | None]) -> None:
    """No two of the paths are the same file (same resolved path, symlink or hard link).

    Args:
        named: Option name → path, in the order the options are listed; ``None`` entries are skipped.

    Raises:
        PathError: e.g. ``--output-file out.jsonl is the same file as --input-file services.jsonl``.
    """
    seen: list[tuple[str, Path]] = []
    for option, path in named.items():
        if path is None:
            continue
        for earlier_option, earlier in seen:
            if _same_file(path, earlier):
                raise PathError(f"{option} {path} is the same file as {earlier_option} {earlier}")
        seen.append((option, path))
