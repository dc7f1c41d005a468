"""The report's output directory: which files it owns, and replacing them all at once at the end.

A report directory holds a manifest, ``.service-ambitions-report.json``, listing the files the report
wrote. A new report is written into a hidden staging directory inside the output directory; only when every
page is written are its files moved into place, the files of the previous report that the new one no longer
has (pages of services that left the file) removed, and the manifest replaced. Nothing else in the directory
is touched. A directory that is not empty and has no manifest is refused unless ``force`` is set (then the
report's files are added to it, and the other files stay).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from service_ambitions.errors import PathError

__all__ = ["MANIFEST", "STAGING_PREFIX", "ReportDir", "describe"]

log = logging.getLogger("service_ambitions.report")

MANIFEST = ".service-ambitions-report.json"
STAGING_PREFIX = ".sa-report-staging-"


def describe(exc: OSError, path: Path | None = None, action: str = "write") -> str:
    """One line for an OS error: what could not be done, to which path, and why."""
    target = path if path is not None else exc.filename
    return f"cannot {action} {target}: {exc.strerror or exc}"


def _owned(relative: str) -> bool:
    """A manifest entry the report may replace or remove: a plain relative path inside the directory."""
    path = PurePosixPath(relative)
    return bool(relative) and not path.is_absolute() and ".." not in path.parts and path.name != MANIFEST


def _previous_files(manifest: Path) -> list[str]:
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        files = data["files"] if isinstance(data, dict) else None
    except (OSError, ValueError, KeyError) as exc:
        files, problem = None, str(exc)
    else:
        problem = "no list of files"
    if not isinstance(files, list):
        log.warning("report: %s is unreadable (%s); its files are replaced, none removed", manifest, problem)
        return []
    return [name for name in files if isinstance(name, str) and _owned(name)]


class ReportDir:
    """An output directory being written: stage files with :meth:`write`, then :meth:`commit`."""

    def __init__(self, path: Path, *, force: bool = False, option: str = "--output-dir") -> None:
        """Check the directory and open a staging area in it.

        Raises:
            PathError: ``path`` is a file, cannot be created, or is a non-empty directory holding no
                report (and ``force`` is not set). The CLI probes writability before.
        """
        self.path = path
        if path.exists() and not path.is_dir():
            raise PathError(f"cannot write {option} {path}: it is a file, not a directory")
        self.previous: list[str] = []
        if path.is_dir():
            entries = [entry for entry in os.listdir(path) if not entry.startswith(STAGING_PREFIX)]
            if MANIFEST in entries:
                self.previous = _previous_files(path / MANIFEST)
            elif entries and not force:
                raise PathError(
                    f"{option} {path} is not empty and holds no report (no {MANIFEST}); choose a new or "
                    "empty directory, or pass --force to add the report's files to it (other files are kept)"
                )
        try:
            path.mkdir(parents=True, exist_ok=True)
            for entry in os.listdir(path):  # left by a report that was killed
                if entry.startswith(STAGING_PREFIX):
                    shutil.rmtree(path / entry, ignore_errors=True)
            self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=path))
        except OSError as exc:
            raise PathError(describe(exc, path, "create")) from None
        self.written: list[str] = []

    def write(self, relative: str, text: str | Iterable[str]) -> None:
        """Stage one file (``relative`` uses ``/``) from its text or from chunks of it."""
        target = self.staging / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("w", encoding="utf-8", newline="\n") as handle:
                handle.writelines([text] if isinstance(text, str) else text)
        except OSError as exc:
            raise PathError(describe(exc, self.path / relative)) from None
        self.written.append(relative)

    def commit(self, manifest: dict[str, object]) -> None:
        """Move the staged files into place, remove the previous report's leftovers, write the manifest."""
        try:
            for relative in self.written:
                destination = self.path / relative
                if destination.is_dir() and not destination.is_symlink():
                    raise PathError(f"cannot write {destination}: it is a directory, not a file")
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.staging / relative, destination)
            kept = set(self.written)
            for relative in self.previous:
                if relative not in kept:
                    self._remove(relative)
            body = json.dumps({**manifest, "files": sorted(kept)}, indent=1, ensure_ascii=False) + "\n"
            temporary = self.staging / MANIFEST
            temporary.write_text(body, encoding="utf-8")
            os.replace(temporary, self.path / MANIFEST)
        except OSError as exc:
            raise PathError(describe(exc)) from None
        finally:
            self.discard()

    def _remove(self, relative: str) -> None:
        stale = self.path / relative
        if stale.is_symlink() or not stale.is_file():
            return  # the report never writes links or directories: not ours
        stale.unlink()
        parent = stale.parent
        while parent != self.path and parent.is_relative_to(self.path):
            with contextlib.suppress(OSError):  # not empty: other files live there
                parent.rmdir()
            parent = parent.parent

    def discard(self) -> None:
        """Remove the staging area (after a commit, or when the report failed)."""
        shutil.rmtree(self.staging, ignore_errors=True)
