"""Content-addressed response cache with a SQLite manifest (DOMAIN §5).

Layout under ``cache_dir``::

    manifest.sqlite3            key -> sha256, size, created, accessed   (WAL mode, safe across processes)
    entries/ab/abcdef....json   one payload per key

Every read is verified against the manifest's SHA-256: a mismatch (or a missing payload) is purged,
counted as ``corrupt`` and treated as a miss, never served. Payload files are written atomically
(temp file + rename) but not fsynced: a torn payload after a power cut fails verification and is
simply recomputed, so per-entry fsync would cost throughput for no safety.

A manifest that cannot be used (not a SQLite database, another program's database, a directory at its
path) never stops a run: it is moved aside to ``manifest.sqlite3.corrupt-<n>`` with one warning and a fresh
manifest is started; the payloads it described become orphans that ``cache purge`` removes. The
maintenance commands open the cache with ``bad_manifest="report"`` instead, which changes nothing on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from service_ambitions.errors import UsageError
from service_ambitions.store import _json
from service_ambitions.store._atomic import TEMP_SUFFIX, atomic_write_bytes

__all__ = [
    "CACHE_FORMAT_VERSION",
    "MANIFEST",
    "CacheStats",
    "Finding",
    "PurgeResult",
    "RepairResult",
    "ResponseCache",
    "cache_key",
]

T = TypeVar("T")
log = logging.getLogger("service_ambitions.cache")

CACHE_FORMAT_VERSION = 1
MANIFEST = "manifest.sqlite3"
CacheMode = Literal["off", "read", "refresh", "write"]
BadManifest = Literal["set_aside", "report"]
_COLUMNS = ["key", "sha256", "size", "created", "accessed"]
_SIDECARS = ("-wal", "-shm", "-journal")
# SQLite result codes that mean "this file is not a sound database", as opposed to busy, locked or
# read-only (a directory at the path is caught before SQLite sees it).
_DAMAGED = {"SQLITE_NOTADB", "SQLITE_CORRUPT"}
# Findings whose manifest entry can never be served, so purge drops it.
_BROKEN = {"hash_mismatch", "missing_payload", "not_a_file", "unreadable_payload"}
# Findings that are files (or directories) on disk without a usable entry, so purge deletes them.
_STRAY = {"orphan_file", "temp_file", "not_a_file"}
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
    # Compact, sorted, UTF-8: the bytes (and so every key) are those of json.dumps (store/_json.py).
    canonical = _json.dumps({"cache_format": CACHE_FORMAT_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(canonical).hexdigest()


@dataclass
class CacheStats:
    """Counters of one run."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    expired: int = 0
    writes: int = 0
    evictions: int = 0


def _manifest_problem(path: Path, *, thorough: bool) -> str | None:
    """Why the manifest at ``path`` cannot be used, or ``None`` (also when there is none yet).

    ``thorough`` adds SQLite's full integrity check (for ``cache validate``; a run relies on the cheap
    checks and on verifying every payload it reads).
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not a SQLite manifest"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    try:
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    except sqlite3.Error as exc:
        return _damage(exc)
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "entries" in tables:
            columns = [row[1] for row in db.execute("PRAGMA table_info(entries)")]
            if columns != _COLUMNS:
                return f"is a SQLite database with a foreign 'entries' table (columns: {', '.join(columns)})"
        elif tables - {"sqlite_sequence", "sqlite_stat1"}:
            return f"is another program's SQLite database (tables: {', '.join(sorted(tables))})"
        if thorough:
            result = [row[0] for row in db.execute("PRAGMA integrity_check(5)")]
            if result != ["ok"]:
                return f"is a damaged SQLite database ({'; '.join(result)})"
    except sqlite3.Error as exc:
        return _damage(exc)
    finally:
        db.close()
    return None


def _with_busy_retries(action: Callable[[], T], *, attempts: int = 100) -> T:
    """Run ``action``, retrying while SQLite reports the database busy.

    Switching to WAL needs an exclusive lock and SQLite does not call its busy handler for it, so two
    processes opening a new shared cache at the same moment can see SQLITE_BUSY at once.
    """
    for _ in range(attempts - 1):
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", None) not in {"SQLITE_BUSY", "SQLITE_LOCKED"}:
                raise
            time.sleep(0.05)
    return action()


def _damage(exc: sqlite3.Error) -> str:
    """Describe damage, or re-raise an error that says nothing about the file (busy, locked, ...)."""
    if getattr(exc, "sqlite_errorname", None) not in _DAMAGED:
        raise exc
    return f"is not a usable SQLite database ({exc})"


def _set_aside(path: Path) -> Path | None:
    """Rename ``path`` (and its journal files) to the first free ``<name>.corrupt-<n>``.

    Returns ``None`` when ``path`` is gone already (another process sharing the cache moved it).
    """
    for number in itertools.count(1):
        target = path.with_name(f"{path.name}.corrupt-{number}")
        if not target.exists() and not target.is_symlink():
            break
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    # A stale write-ahead log next to a fresh manifest would be replayed into it.
    for suffix in _SIDECARS:
        with contextlib.suppress(FileNotFoundError):
            os.rename(path.with_name(path.name + suffix), target.with_name(target.name + suffix))
    return target


def _delete(path: Path) -> None:
    """Remove a file or a directory tree; gone already is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@dataclass(frozen=True)
class Finding:
    """One integrity problem found by :meth:`ResponseCache.validate`."""

    kind: str
    """``bad_manifest``, ``hash_mismatch``, ``missing_payload``, ``not_a_file``, ``unreadable_payload``,
    ``orphan_file`` or ``temp_file``."""
    path: Path
    detail: str


@dataclass(frozen=True)
class PurgeResult:
    """What a purge removed (or would remove, in a dry run)."""

    entries: int
    bytes: int
    files: int = 0


@dataclass(frozen=True)
class RepairResult:
    """What a repair removed (or would remove): exactly the findings :meth:`ResponseCache.validate` made.

    Attributes:
        findings: The findings acted on, in the order ``validate`` reported them.
        purged: Entries and stray files removed for them.
        manifest_moved: Where an unusable manifest was moved aside (a fresh one replaced it).
    """

    findings: list[Finding]
    purged: PurgeResult
    manifest_moved: Path | None = None


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
        bad_manifest: BadManifest = "set_aside",
    ) -> None:
        """Open (creating when missing) the cache in ``directory``.

        Args:
            directory: The cache directory.
            mode: ``off`` opens nothing.
            max_bytes: LRU cap on the payload bytes (0: none).
            ttl_seconds: Entries older than this are misses (0: never).
            clock: Time source (tests inject one).
            bad_manifest: ``set_aside`` moves an unusable manifest aside with a warning and starts a fresh
                one (runs); ``report`` leaves it alone, records why in :attr:`manifest_problem` and works on
                an empty in-memory manifest, so :meth:`validate` reports it (maintenance commands).

        Raises:
            UsageError: The manifest cannot be opened for another reason (locked, read-only, ...).
        """
        self.directory = directory
        self.mode = mode
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.stats = CacheStats()
        self.manifest_problem: str | None = None
        """Why the manifest on disk cannot be used (``bad_manifest="report"`` only)."""
        self._db: sqlite3.Connection | None = None
        self._total_bytes = 0
        # Last-access times of hits, written in batches: one transaction per hit would make the
        # manifest, not the model, the bottleneck of a warm run.
        self._touched: dict[str, float] = {}
        self._last_flush = clock()
        if mode != "off":
            self._open(bad_manifest)

    @classmethod
    def existing(cls, directory: Path, *, clock: Callable[[], float] = time.time) -> ResponseCache:
        """Open a cache that must already exist, for inspection (an unusable manifest is reported).

        Raises:
            UsageError: ``directory`` is missing, empty, a file, or holds something other than a cache.
        """
        if not directory.exists():
            raise UsageError(f"no cache at {directory}: the directory does not exist (`run` creates it)")
        if not directory.is_dir():
            raise UsageError(f"{directory} is not a service-ambitions cache: it is a file, not a directory")
        manifest = directory / MANIFEST
        if not (manifest.exists() or manifest.is_symlink() or (directory / "entries").is_dir()):
            if next(directory.iterdir(), None) is None:
                raise UsageError(f"no cache at {directory}: the directory is empty (`run` creates it)")
            raise UsageError(f"{directory} is not a service-ambitions cache (no {MANIFEST})")
        return cls(directory, mode="read", clock=clock, bad_manifest="report")

    @property
    def manifest_path(self) -> Path:
        """The manifest file."""
        return self.directory / MANIFEST

    def _open(self, bad_manifest: BadManifest) -> None:
        path = self.manifest_path
        try:
            if bad_manifest == "report":
                problem = _manifest_problem(path, thorough=True)
                if problem is None and not path.exists():
                    problem = "is missing (the payloads cannot be verified without it)"
                if problem is None:
                    self._connect(path)
                else:
                    self.manifest_problem = problem
                    self._connect(":memory:")
                return
            (self.directory / "entries").mkdir(parents=True, exist_ok=True)
            problem = _with_busy_retries(lambda: _manifest_problem(path, thorough=False))
            if problem is None:
                try:
                    self._connect(path)
                except sqlite3.Error as exc:
                    problem = _damage(exc)
                else:
                    return
            moved = _set_aside(path)
            log.warning(
                "cache manifest %s %s; moved it to %s and started a fresh one",
                path,
                problem,
                moved or "(already moved by another process)",
            )
            self._connect(path)
        except sqlite3.Error as exc:
            raise UsageError(f"cannot open the cache manifest {path}: {exc}") from None
        except OSError as exc:
            raise UsageError(
                f"cannot use the cache directory {self.directory}: {exc.strerror or exc}"
            ) from None

    def _connect(self, target: Path | str) -> None:
        db = sqlite3.connect(target, timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            _with_busy_retries(lambda: db.execute("PRAGMA journal_mode=WAL"))
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._total_bytes = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])
        except BaseException:
            db.close()
            raise
        self._db = db

    def rebuild_manifest(self, *, keep_old: bool = True) -> Path | None:
        """Replace the unusable manifest found by a ``report`` open with a fresh, empty one.

        Args:
            keep_old: Move the old one aside (returns where to); otherwise delete it (returns ``None``).
        """
        self.close()
        path = self.manifest_path
        moved = None
        if keep_old:
            moved = _set_aside(path)
        else:
            for stale in (path, *(path.with_name(path.name + suffix) for suffix in _SIDECARS)):
                _delete(stale)
        self.manifest_problem = None
        self._open("set_aside")
        return moved

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
                payload = _json.loads(data)
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
        path = self.path_for(key)
        if path.is_dir():
            # Something else put a directory there; leave it (purge removes it) and cache nothing.
            log.warning("cache: %s is a directory, not a payload file; not caching this answer", path)
            return
        # Key order is kept: records are written back byte for byte as they were produced.
        data = _json.dumps(payload)
        atomic_write_bytes(path, data, durable=False)
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
        # A payload that cannot be unlinked (a directory, say) stays an orphan for purge to remove.
        with contextlib.suppress(OSError):
            self.path_for(key).unlink()

    # maintenance --------------------------------------------------------------------------------
    def validate(self) -> list[Finding]:
        """Check every entry against its hash, and look for orphan and leftover temp files.

        An unusable manifest (``bad_manifest="report"``) is the first finding; every payload file is
        then an orphan, since nothing vouches for it.
        """
        findings: list[Finding] = []
        if self.manifest_problem is not None:
            findings.append(
                Finding(
                    "bad_manifest",
                    self.manifest_path,
                    f"the manifest {self.manifest_problem}; `cache purge` rebuilds it",
                )
            )
        known: set[str] = set()
        for key, expected, size in self.db.execute("SELECT key, sha256, size FROM entries ORDER BY key"):
            known.add(key)
            path = self.path_for(key)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                findings.append(Finding("missing_payload", path, f"manifest entry {key} has no payload file"))
                continue
            except IsADirectoryError:
                findings.append(
                    Finding("not_a_file", path, f"manifest entry {key}: its payload is a directory")
                )
                continue
            except OSError as exc:
                findings.append(Finding("unreadable_payload", path, f"manifest entry {key}: {exc.strerror}"))
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
        # Payloads live exactly at entries/<xx>/<key>.json; nothing deeper is the cache's.
        for path in sorted((self.directory / "entries").glob("*/*")):
            if path.name.endswith(TEMP_SUFFIX):
                findings.append(
                    Finding("temp_file", path, "leftover temporary file from an interrupted write")
                )
            elif path.suffix != ".json" or path.stem in known:
                continue
            elif path.is_dir() and not path.is_symlink():
                findings.append(Finding("not_a_file", path, "a directory where a payload file belongs"))
            else:
                findings.append(Finding("orphan_file", path, "payload file without a manifest entry"))
        return findings

    def set_aside_manifests(self) -> list[Path]:
        """Manifests moved aside as unusable (``manifest.sqlite3.corrupt-<n>`` and their journals)."""
        return sorted(self.directory.glob(f"{MANIFEST}.corrupt-*"))

    def repair(self, *, dry_run: bool = False) -> RepairResult:
        """Remove exactly what :meth:`validate` reports, and nothing else.

        Broken entries (hash mismatch, missing, unreadable, a directory) leave the manifest, stray files
        (orphans, temp files, directories) are deleted, and an unusable manifest is moved aside to
        ``manifest.sqlite3.corrupt-<n>`` and replaced by a fresh one (the payloads it described are then
        the orphans ``validate`` already reported). Entries that verify are never touched.
        """
        findings = self.validate()
        moved = None
        if self.manifest_problem is not None and not dry_run:
            moved = self.rebuild_manifest(keep_old=True)
        return RepairResult(findings=findings, purged=self.purge(dry_run=dry_run), manifest_moved=moved)

    def purge(
        self,
        *,
        older_than: float | None = None,
        max_size: int | None = None,
        everything: bool = False,
        dry_run: bool = False,
    ) -> PurgeResult:
        """Remove entries not used for ``older_than`` seconds, then LRU entries down to ``max_size``.

        ``everything`` removes every entry, every stray file and the manifests once set aside as unusable.
        Corrupt entries, orphans, directories where payloads belong and leftover temp files are always
        removed too (they can never be served); with no selector, that is all a purge removes
        (:meth:`repair`).
        """
        self.flush()
        rows = self.db.execute("SELECT key, size, accessed FROM entries ORDER BY accessed, key").fetchall()
        sizes = {key: size for key, size, _ in rows}
        doomed: dict[str, int] = {}
        if everything:
            doomed = dict(sizes)
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
        findings = self.validate()
        for finding in findings:
            if finding.kind in _BROKEN and finding.path.stem in sizes:
                doomed.setdefault(finding.path.stem, sizes[finding.path.stem])
        strays = [finding.path for finding in findings if finding.kind in _STRAY]
        if everything:
            strays += self.set_aside_manifests()
        freed = sum(doomed.values()) + sum(
            path.stat().st_size for path in strays if path.is_file() and not path.is_symlink()
        )
        if not dry_run:
            for key in doomed:
                self._remove(key)
            for path in strays:
                _delete(path)
        return PurgeResult(entries=len(doomed), bytes=freed, files=len(strays))
