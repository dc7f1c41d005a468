"""Content-addressed response cache with a SQLite manifest (DOMAIN §5).

Layout under ``cache_dir``::

    manifest.sqlite3            key -> sha256, size, created, accessed   (WAL mode, safe across processes)
    entries/ab/abcdef....json   one payload per key

Every read is verified against the manifest's SHA-256: a mismatch (or a missing payload) is purged,
counted as ``corrupt`` and treated as a miss, never served. Payload files are written atomically
(temp file + rename) but not fsynced: a torn payload after a power cut fails verification and is
simply recomputed, so per-entry fsync would cost throughput for no safety.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from service_ambitions.store._atomic import TEMP_SUFFIX, atomic_write_bytes

__all__ = ["CACHE_FORMAT_VERSION", "CacheStats", "Finding", "PurgeResult", "ResponseCache", "cache_key"]

CACHE_FORMAT_VERSION = 1
CacheMode = Literal["off", "read", "refresh", "write"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    accessed REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_accessed ON entries(accessed);
"""


def cache_key(parts: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of everything that changes an answer."""
    canonical = json.dumps(
        {"cache_format": CACHE_FORMAT_VERSION, **parts},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class CacheStats:
    """Counters of one run."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    expired: int = 0
    writes: int = 0
    evictions: int = 0


@dataclass(frozen=True)
class Finding:
    """One integrity problem found by :meth:`ResponseCache.validate`."""

    kind: str
    """``hash_mismatch``, ``missing_payload``, ``orphan_file`` or ``temp_file``."""
    path: Path
    detail: str


@dataclass(frozen=True)
class PurgeResult:
    """What a purge removed (or would remove, in a dry run)."""

    entries: int
    bytes: int
    files: int = 0


class ResponseCache:
    """The on-disk cache of model answers; one instance per run."""

    def __init__(
        self,
        directory: Path,
        *,
        mode: CacheMode = "read",
        max_bytes: int = 0,
        ttl_seconds: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.mode = mode
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.stats = CacheStats()
        self._db: sqlite3.Connection | None = None
        self._total_bytes = 0
        # Last-access times of hits, written in batches: one transaction per hit would make the
        # manifest, not the model, the bottleneck of a warm run.
        self._touched: dict[str, float] = {}
        self._last_flush = clock()
        if mode != "off":
            self._open()

    def _open(self) -> None:
        (self.directory / "entries").mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.directory / "manifest.sqlite3", timeout=30.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=30000")
        db.executescript(_SCHEMA)
        self._db = db
        self._total_bytes = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])

    def close(self) -> None:
        """Write pending access times and close the manifest."""
        if self._db is not None:
            self.flush()
            self._db.close()
            self._db = None

    def flush(self) -> None:
        """Write the batched last-access times in one transaction."""
        if self._db is not None and self._touched:
            rows = [(accessed, key) for key, accessed in self._touched.items()]
            self._touched.clear()
            with self._db:
                self._db.executemany("UPDATE entries SET accessed = ? WHERE key = ?", rows)
        self._last_flush = self.clock()

    def path_for(self, key: str) -> Path:
        """Where the payload of ``key`` lives."""
        return self.directory / "entries" / key[:2] / f"{key}.json"

    @property
    def db(self) -> sqlite3.Connection:
        """The open manifest."""
        if self._db is None:
            raise RuntimeError("the cache is off")
        return self._db

    def get(self, key: str) -> dict[str, Any] | None:
        """Return the verified payload for ``key``, or ``None`` (miss, expired or corrupt)."""
        if self.mode in ("off", "refresh", "write"):
            return None
        row = self.db.execute("SELECT sha256, created FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.stats.misses += 1
            return None
        expected, created = row
        now = self.clock()
        if self.ttl_seconds and now - created > self.ttl_seconds:
            self._remove(key)
            self.stats.expired += 1
            self.stats.misses += 1
            return None
        try:
            data = self.path_for(key).read_bytes()
        except OSError:
            data = None
        payload = None
        if data is not None and hashlib.sha256(data).hexdigest() == expected:
            with contextlib.suppress(ValueError):
                payload = json.loads(data)
        if not isinstance(payload, dict):
            self._remove(key)
            self.stats.corrupt += 1
            self.stats.misses += 1
            return None
        self._touched[key] = now
        if len(self._touched) >= 512 or now - self._last_flush > 1.0:
            self.flush()
        self.stats.hits += 1
        return payload

    def put(self, key: str, payload: dict[str, Any]) -> None:
        """Store ``payload`` under ``key`` (mode ``write`` keeps an existing entry)."""
        if self.mode == "off":
            return
        if self.mode == "write":
            exists = self.db.execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone()
            if exists:
                return
        # Key order is kept: records are written back byte for byte as they were produced.
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        atomic_write_bytes(self.path_for(key), data, durable=False)
        now = self.clock()
        previous = self.db.execute("SELECT size FROM entries WHERE key = ?", (key,)).fetchone()
        self.db.execute(
            "INSERT OR REPLACE INTO entries(key, sha256, size, created, accessed) VALUES (?, ?, ?, ?, ?)",
            (key, hashlib.sha256(data).hexdigest(), len(data), now, now),
        )
        self._total_bytes += len(data) - (previous[0] if previous else 0)
        self.stats.writes += 1
        if self.max_bytes and self._total_bytes > self.max_bytes:
            self.evict_to(self.max_bytes)

    def evict_to(self, max_bytes: int) -> tuple[int, int]:
        """Remove least recently used entries until the cache holds at most ``max_bytes``."""
        self.flush()
        removed = freed = 0
        self._total_bytes = int(self.db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])
        if self._total_bytes <= max_bytes:
            return 0, 0
        for key, size in self.db.execute("SELECT key, size FROM entries ORDER BY accessed, key").fetchall():
            if self._total_bytes <= max_bytes:
                break
            self._remove(key)
            removed += 1
            freed += size
        self.stats.evictions += removed
        return removed, freed

    def _remove(self, key: str) -> None:
        self._touched.pop(key, None)
        row = self.db.execute("SELECT size FROM entries WHERE key = ?", (key,)).fetchone()
        self.db.execute("DELETE FROM entries WHERE key = ?", (key,))
        if row:
            self._total_bytes -= int(row[0])
        with contextlib.suppress(FileNotFoundError):
            self.path_for(key).unlink()

    # maintenance --------------------------------------------------------------------------------
    def validate(self) -> list[Finding]:
        """Check every entry against its hash, and look for orphan and leftover temp files."""
        findings: list[Finding] = []
        known: set[str] = set()
        for key, expected, size in self.db.execute("SELECT key, sha256, size FROM entries ORDER BY key"):
            known.add(key)
            path = self.path_for(key)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                findings.append(Finding("missing_payload", path, f"manifest entry {key} has no payload file"))
                continue
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                findings.append(
                    Finding(
                        "hash_mismatch",
                        path,
                        f"sha256 {actual[:12]}… != manifest {expected[:12]}… ({size} bytes)",
                    )
                )
        for path in sorted((self.directory / "entries").rglob("*")):
            if not path.is_file():
                continue
            if path.name.endswith(TEMP_SUFFIX):
                findings.append(
                    Finding("temp_file", path, "leftover temporary file from an interrupted write")
                )
            elif path.suffix == ".json" and path.stem not in known:
                findings.append(Finding("orphan_file", path, "payload file without a manifest entry"))
        return findings

    def purge(
        self,
        *,
        older_than: float | None = None,
        max_size: int | None = None,
        everything: bool = False,
        dry_run: bool = False,
    ) -> PurgeResult:
        """Remove entries not used for ``older_than`` seconds, then LRU entries down to ``max_size``.

        ``everything`` removes every entry and every stray file. Corrupt entries, orphans and
        leftover temp files are always removed too (they can never be served).
        """
        self.flush()
        rows = self.db.execute("SELECT key, size, accessed FROM entries ORDER BY accessed, key").fetchall()
        doomed: dict[str, int] = {}
        if everything:
            doomed = {key: size for key, size, _ in rows}
        else:
            now = self.clock()
            if older_than is not None:
                doomed.update({key: size for key, size, accessed in rows if now - accessed > older_than})
            if max_size is not None:
                total = sum(size for key, size, _ in rows if key not in doomed)
                for key, size, _ in rows:
                    if total <= max_size:
                        break
                    if key not in doomed:
                        doomed[key] = size
                        total -= size
        strays = [finding.path for finding in self.validate() if finding.kind in ("orphan_file", "temp_file")]
        broken = {
            finding.path.stem: 0
            for finding in self.validate()
            if finding.kind in ("hash_mismatch", "missing_payload")
        }
        for key in broken:
            doomed.setdefault(key, next((size for k, size, _ in rows if k == key), 0))
        freed = sum(doomed.values()) + sum(path.stat().st_size for path in strays if path.exists())
        if not dry_run:
            for key in doomed:
                self._remove(key)
            for path in strays:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return PurgeResult(entries=len(doomed), bytes=freed, files=len(strays))
