"""The quarantine store: one JSON file per entry, in a directory that belongs to one output file.

Every file is ``<id>.json`` holding one :class:`QuarantineEntry`. Anything else found in the directory (a
file that is not JSON, not UTF-8 or not an entry, an entry whose id is not its file name, a directory, a
file with another suffix) is skipped by every reader, and named in one warning per read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from service_ambitions.store._atomic import atomic_write_bytes

__all__ = ["QuarantineEntry", "QuarantineStore", "matching", "quarantine_dir_for"]

log = logging.getLogger("service_ambitions.quarantine")


def quarantine_dir_for(output: Path) -> Path:
    """``evolutions.jsonl`` → ``evolutions.jsonl.quarantine/`` next to it."""
    return output.with_name(output.name + ".quarantine")


class QuarantineEntry(BaseModel):
    """What failed, where, and why (DOMAIN §6)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    service_id: str | None
    stage: str
    kind: str
    error: str
    payload: Any = None
    run_id: str
    line: int | None = None


class QuarantineStore:
    """Entries for one output file."""

    def __init__(self, directory: Path, redact: Callable[[Any], Any] | None = None) -> None:
        self.directory = directory
        self.written = 0
        self._redact = redact

    def reset(self) -> None:
        """Remove every entry (a fresh run replaces its output and its quarantine)."""
        if self.directory.exists():
            shutil.rmtree(self.directory)

    def add(
        self,
        *,
        service_id: str | None,
        stage: str,
        kind: str,
        error: str,
        run_id: str,
        payload: Any = None,
        line: int | None = None,
    ) -> QuarantineEntry:
        """Write one entry atomically; its id is derived from its content (stable across reruns)."""
        if self._redact is not None:
            error = self._redact(error)
            payload = self._redact(payload)
        basis = json.dumps(
            [service_id, stage, kind, error, line, payload], ensure_ascii=False, sort_keys=True, default=str
        )
        entry_id = hashlib.sha256(basis.encode()).hexdigest()[:12]
        entry = QuarantineEntry(
            id=entry_id,
            service_id=service_id,
            stage=stage,
            kind=kind,
            error=error,
            payload=payload,
            run_id=run_id,
            line=line,
        )
        data = entry.model_dump_json(indent=2).encode("utf-8") + b"\n"
        atomic_write_bytes(self.directory / f"{entry_id}.json", data)
        self.written += 1
        return entry

    def entries(self) -> Iterator[QuarantineEntry]:
        """All valid entries, ordered by service id then id; never raises.

        Files that are not entries are skipped and named in one warning.
        """
        return iter(self._load(warn=True))

    def _load(self, *, warn: bool) -> list[QuarantineEntry]:
        try:
            paths = sorted(self.directory.iterdir()) if self.directory.is_dir() else []
        except OSError as exc:
            log.warning("cannot read the quarantine directory %s: %s", self.directory, exc.strerror)
            return []
        loaded: list[QuarantineEntry] = []
        skipped: list[str] = []
        for path in paths:
            problem = None
            if path.is_dir():
                problem = "a directory"
            elif path.suffix != ".json":
                problem = "not a .json file"
            else:
                try:
                    entry = QuarantineEntry.model_validate_json(path.read_bytes())
                except OSError as exc:
                    problem = f"unreadable: {exc.strerror}"
                except ValidationError as exc:
                    problem = _describe(exc)
                else:
                    if path.name == f"{entry.id}.json":
                        loaded.append(entry)
                        continue
                    problem = f"holds entry {entry.id!r}, not {path.stem!r}"
            skipped.append(f"{path.name} ({problem})")
        if skipped and warn:
            log.warning(
                "quarantine %s: skipped %d file(s) that are not quarantine entries: %s",
                self.directory,
                len(skipped),
                "; ".join(skipped),
            )
        return sorted(loaded, key=lambda entry: (entry.service_id or "", entry.id))

    def count(self) -> int:
        """How many valid entries the store holds (files that are not entries are not counted)."""
        return len(self._load(warn=False))

    def get(self, entry_id: str) -> QuarantineEntry | None:
        """One entry by id (or unique id prefix)."""
        matches = matching(self.entries(), entry_id)
        return matches[0] if len(matches) == 1 else None

    def remove(self, entry_id: str) -> bool:
        """Delete one entry; True when it existed."""
        entry = self.get(entry_id)
        if entry is None:
            return False
        self.discard([entry])
        return True

    def discard(self, entries: list[QuarantineEntry]) -> int:
        """Delete these entries (as returned by :meth:`entries`); return how many files were removed."""
        removed = 0
        for entry in entries:
            # Gone already (another `rm`) is what was asked for.
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{entry.id}.json").unlink()
                removed += 1
        return removed


def matching(entries: Iterable[QuarantineEntry], entry_id: str) -> list[QuarantineEntry]:
    """The entries whose id is ``entry_id`` or starts with it."""
    return [entry for entry in entries if entry.id.startswith(entry_id)]


def _describe(exc: ValidationError) -> str:
    """Why a file is not an entry (its first problem), for the skip warning."""
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return str(first["msg"])  # also what a file that is not UTF-8 gets
    where = ".".join(str(part) for part in first["loc"]) or "top level"
    return f"not a quarantine entry: {where}: {first['msg']}"
