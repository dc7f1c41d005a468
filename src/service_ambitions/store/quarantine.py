"""The quarantine store: one JSON file per entry, in a directory that belongs to one output file."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from service_ambitions.store._atomic import atomic_write_bytes

__all__ = ["QuarantineEntry", "QuarantineStore", "quarantine_dir_for"]


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
        """All entries, ordered by service id then id."""
        if not self.directory.is_dir():
            return iter(())
        loaded = [
            QuarantineEntry.model_validate_json(path.read_bytes())
            for path in sorted(self.directory.glob("*.json"))
        ]
        return iter(sorted(loaded, key=lambda entry: (entry.service_id or "", entry.id)))

    def count(self) -> int:
        """How many entries the store holds."""
        return sum(1 for _ in self.directory.glob("*.json")) if self.directory.is_dir() else 0

    def get(self, entry_id: str) -> QuarantineEntry | None:
        """One entry by id (or unique id prefix)."""
        matches = [entry for entry in self.entries() if entry.id.startswith(entry_id)]
        return matches[0] if len(matches) == 1 else None

    def remove(self, entry_id: str) -> bool:
        """Delete one entry; True when it existed."""
        entry = self.get(entry_id)
        if entry is None:
            return False
        (self.directory / f"{entry.id}.json").unlink()
        return True
