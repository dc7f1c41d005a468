"""The response cache: verified reads, LRU cap, TTL, maintenance commands, concurrent writers."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service_ambitions.store.cache import ResponseCache, cache_key
from tests.conftest import SAMPLES

Cli = Callable[..., Any]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def fill(cache: ResponseCache, count: int) -> list[str]:
    keys = [cache_key({"n": index}) for index in range(count)]
    for index, key in enumerate(keys):
        cache.put(key, {"output": {"value": index}, "model": "offline", "pad": "x" * (index % 7)})
    return keys


def test_detects_and_purges_corrupt_cache(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache")
    keys = fill(cache, 200)
    rng = random.Random(5)
    corrupted = rng.sample(keys, 100)
    for index, key in enumerate(corrupted):
        path = cache.path_for(key)
        kind = index % 4
        if kind == 0:  # bit flip
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x01
            path.write_bytes(bytes(data))
        elif kind == 1:  # truncation
            path.write_bytes(path.read_bytes()[:-5])
        elif kind == 2:  # deleted payload
            path.unlink()
        else:  # edited manifest hash
            cache.db.execute("UPDATE entries SET sha256 = ? WHERE key = ?", ("0" * 64, key))
    assert len(cache.validate()) == 100
    served_wrong = 0
    for index, key in enumerate(keys):
        payload = cache.get(key)
        if payload is not None and payload["output"]["value"] != index:
            served_wrong += 1
        assert (payload is None) == (key in corrupted)
    assert served_wrong == 0
    assert cache.stats.corrupt == 100
    assert cache.stats.hits == 100
    assert cache.validate() == []  # corrupt entries were purged on read
    again = ResponseCache(tmp_path / "cache")
    assert all(again.get(key) is not None for key in keys if key not in corrupted)


def test_lru_eviction_order(tmp_path: Path) -> None:
    clock = Clock()
    cache = ResponseCache(tmp_path / "cache", clock=clock)
    keys = []
    for index in range(10):
        clock.now += 1
        key = cache_key({"n": index})
        cache.put(key, {"output": index, "blob": "y" * 100})
        keys.append(key)
    size = cache.path_for(keys[0]).stat().st_size
    for key in (keys[0], keys[1], keys[2]):  # used recently: must survive
        clock.now += 1
        assert cache.get(key) is not None
    cache.max_bytes = size * 6 + 10
    clock.now += 1
    cache.put(cache_key({"n": "new"}), {"output": "new", "blob": "y" * 100})
    survivors = {key for key in keys if cache.get(key) is not None}
    assert survivors == {keys[0], keys[1], keys[2], keys[8], keys[9]}
    assert cache.stats.evictions == 5


def test_ttl_expiry(tmp_path: Path) -> None:
    clock = Clock()
    cache = ResponseCache(tmp_path / "cache", ttl_seconds=3600, clock=clock)
    old, new = cache_key({"n": "old"}), cache_key({"n": "new"})
    cache.put(old, {"output": 1})
    clock.now += 1800
    cache.put(new, {"output": 2})
    clock.now += 2000  # old is 3800 s old, new 2000 s
    assert cache.get(old) is None
    assert cache.get(new) == {"output": 2}
    assert cache.stats.expired == 1
    assert not cache.path_for(old).exists()


def test_cache_validate_and_purge_cli(cli: Cli, isolated: Path) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    assert cli("run", "--cache-dir", "c", "--max-services", "2").exit_code == 0
    clean = cli("cache", "validate", "--cache-dir", "c")
    assert clean.exit_code == 0
    assert clean.stdout == ""
    entries = sorted((isolated / "c" / "entries").rglob("*.json"))
    assert len(entries) == 2 * 22  # 21 answers and 1 record per service
    entries[0].write_bytes(b"{}")
    entries[1].unlink()
    (entries[2].parent / f".{entries[2].name}.abc.tmp").write_bytes(b"partial")
    (entries[3].parent / ("f" * 64 + ".json")).write_bytes(b"{}")
    dirty = cli("cache", "validate", "--cache-dir", "c")
    assert dirty.exit_code == 5
    kinds = sorted(line.split("\t")[0] for line in dirty.stdout.splitlines())
    assert kinds == ["hash_mismatch", "missing_payload", "orphan_file", "temp_file"]
    dry = cli("cache", "purge", "--cache-dir", "c", "--older-than", "30d", "--dry-run")
    assert dry.exit_code == 0
    assert dry.stdout.startswith("would remove 2 entries")
    assert cli("cache", "validate", "--cache-dir", "c").exit_code == 5
    purged = cli("cache", "purge", "--cache-dir", "c", "--older-than", "30d")
    assert purged.stdout.startswith("removed 2 entries")
    assert "2 stray file(s)" in purged.stdout
    assert cli("cache", "validate", "--cache-dir", "c").exit_code == 0
    trimmed = cli("cache", "purge", "--cache-dir", "c", "--max-size", "10KB")
    assert trimmed.exit_code == 0
    total = sum(path.stat().st_size for path in (isolated / "c" / "entries").rglob("*.json"))
    assert total <= 10_000
    everything = cli("cache", "purge", "--cache-dir", "c", "--all")
    assert everything.exit_code == 0
    assert list((isolated / "c" / "entries").rglob("*.json")) == []
    assert cli("cache", "purge", "--cache-dir", "c").exit_code == 0  # no selector: a repair, nothing to do
    assert cli("cache", "validate", "--cache-dir", "nowhere").exit_code == 2


def _damage(cache_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """Spoil four payloads four ways; return every payload and the expected finding kind by path."""
    entries = sorted((cache_dir / "entries").rglob("*.json"))
    entries[0].write_bytes(b"{}")
    entries[1].unlink()
    temp = entries[2].parent / f".{entries[2].name}.abc.tmp"
    temp.write_bytes(b"partial")
    orphan = entries[3].parent / ("f" * 64 + ".json")
    orphan.write_bytes(b"{}")
    expected = {
        str(entries[0]): "hash_mismatch",
        str(entries[1]): "missing_payload",
        str(temp): "temp_file",
        str(orphan): "orphan_file",
    }
    return entries, expected


@pytest.mark.parametrize("command", [("validate", "--repair"), ("purge",)])
def test_repair_removes_exactly_what_validate_reports(
    cli: Cli, isolated: Path, command: tuple[str, ...]
) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    assert cli("run", "--cache-dir", "c", "--max-services", "2").exit_code == 0
    entries, expected = _damage(Path("c"))
    healthy = {path: path.read_bytes() for path in entries[2:]}
    reported = cli("cache", "validate", "--cache-dir", "c")
    assert reported.exit_code == 5
    assert "cache validate --repair" in reported.stderr
    found = {line.split("\t")[1]: line.split("\t")[0] for line in reported.stdout.splitlines()}
    assert found == expected

    repaired = cli("cache", *command, "--cache-dir", "c")

    assert repaired.exit_code == 0, repaired.stderr
    removed = {line.split("\t")[2]: line.split("\t")[1] for line in repaired.stdout.splitlines()}
    assert removed == expected
    assert all(line.startswith("removed\t") for line in repaired.stdout.splitlines())
    assert "removed 4 finding(s) (2 entries, 2 file(s)" in repaired.stderr
    assert "is clean" in repaired.stderr
    assert {path: path.read_bytes() for path in entries[2:]} == healthy  # verified entries untouched
    assert cli("cache", "validate", "--cache-dir", "c").exit_code == 0
    cache = ResponseCache(isolated / "c")
    assert cache.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 2 * 22 - 2
    cache.close()


def test_repair_dry_run_and_json(cli: Cli, isolated: Path) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    assert cli("run", "--cache-dir", "c", "--max-services", "1").exit_code == 0
    _, expected = _damage(Path("c"))
    dry = cli("cache", "purge", "--cache-dir", "c", "--dry-run")
    assert dry.exit_code == 0
    assert {line.split("\t")[2] for line in dry.stdout.splitlines()} == set(expected)
    assert all(line.startswith("would remove\t") for line in dry.stdout.splitlines())
    assert cli("cache", "validate", "--cache-dir", "c").exit_code == 5  # nothing was removed
    as_json = cli("cache", "validate", "--cache-dir", "c", "--repair", "--json")
    assert as_json.exit_code == 0
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {row["path"]: row["kind"] for row in rows} == expected
    assert {row["action"] for row in rows} == {"removed"}


def test_repair_replaces_an_unusable_manifest(cli: Cli, isolated: Path) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    assert cli("run", "--cache-dir", "c", "--max-services", "1").exit_code == 0
    before = _spoil_manifest(isolated / "c", "garbage")
    repaired = cli("cache", "validate", "--repair", "--cache-dir", "c")
    assert repaired.exit_code == 0, repaired.stderr
    kinds = [line.split("\t")[1] for line in repaired.stdout.splitlines()]
    assert kinds == ["bad_manifest"] + ["orphan_file"] * 22
    assert "moved the unusable manifest to c/manifest.sqlite3.corrupt-1" in repaired.stderr
    assert (isolated / "c" / "manifest.sqlite3.corrupt-1").read_bytes() == before
    assert cli("cache", "validate", "--cache-dir", "c").exit_code == 0


def test_two_processes_share_a_cache(isolated: Path) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    env = {**os.environ, "SA_CACHE_DIR": str(isolated / "shared")}
    command = [sys.executable, "-m", "service_ambitions", "run", "-q", "--concurrency", "4"]
    first = subprocess.Popen([*command, "--output-file", "a.jsonl"], env=env)
    second = subprocess.Popen([*command, "--output-file", "b.jsonl"], env=env)
    assert first.wait(timeout=120) == 0
    assert second.wait(timeout=120) == 0
    assert (isolated / "a.jsonl").read_bytes() == (isolated / "b.jsonl").read_bytes()
    cache = ResponseCache(isolated / "shared")
    assert cache.validate() == []
    rows = cache.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    assert rows == 12 * 22
    assert sqlite3.connect(isolated / "shared" / "manifest.sqlite3").execute(
        "PRAGMA integrity_check"
    ).fetchone() == ("ok",)


# Robustness: an unusable manifest, payload paths that are directories, directories that are no cache ---


def _foreign_db(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    db.commit()
    db.close()


def _foreign_entries(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE entries (id INTEGER, body TEXT)")
    db.commit()
    db.close()


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 8)


def _text(path: Path) -> None:
    path.write_text("not a database\n", encoding="utf-8")


def _directory(path: Path) -> None:
    path.mkdir()
    (path / "inside.txt").write_text("x", encoding="utf-8")


BAD_MANIFESTS: dict[str, Callable[[Path], None]] = {
    "garbage": _garbage,
    "text": _text,
    "directory": _directory,
    "foreign_db": _foreign_db,
    "foreign_entries": _foreign_entries,
}


def _spoil_manifest(cache_dir: Path, kind: str) -> bytes | None:
    """Replace the manifest with something unusable; return its bytes (None for a directory)."""
    manifest = cache_dir / "manifest.sqlite3"
    for path in cache_dir.glob("manifest.sqlite3*"):
        path.unlink()
    BAD_MANIFESTS[kind](manifest)
    return None if manifest.is_dir() else manifest.read_bytes()


def _snapshot(directory: Path) -> dict[str, bytes | None]:
    return {
        str(path.relative_to(directory)): None if path.is_dir() else path.read_bytes()
        for path in sorted(directory.rglob("*"))
    }


@pytest.mark.parametrize("kind", sorted(BAD_MANIFESTS))
def test_unusable_manifest_is_a_finding_and_a_run_replaces_it(cli: Cli, isolated: Path, kind: str) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    assert cli("run", "--cache-dir", "c", "--max-services", "1").exit_code == 0
    before = _spoil_manifest(isolated / "c", kind)
    untouched = _snapshot(isolated / "c")

    validated = cli("cache", "validate", "--cache-dir", "c")
    assert validated.exit_code == 5
    first = validated.stdout.splitlines()[0].split("\t")
    assert first[:2] == ["bad_manifest", str(Path("c") / "manifest.sqlite3")]
    assert "`cache purge` rebuilds it" in first[2]
    assert "error: cache validate:" in validated.stderr
    dry = cli("cache", "purge", "--cache-dir", "c", "--all", "--dry-run")
    assert dry.exit_code == 0
    assert "would start a fresh one" in dry.stderr
    assert _snapshot(isolated / "c") == untouched  # neither command changed anything

    ran = cli("run", "--cache-dir", "c", "--max-services", "1", "--output-file", "again.jsonl")
    assert ran.exit_code == 0, ran.stderr
    warnings = [line for line in ran.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1
    assert "c/manifest.sqlite3" in warnings[0]
    assert "moved it to c/manifest.sqlite3.corrupt-1" in warnings[0]
    aside = isolated / "c" / "manifest.sqlite3.corrupt-1"
    assert aside.is_dir() if before is None else aside.read_bytes() == before
    assert (isolated / "again.jsonl").read_bytes() == (isolated / "evolutions.jsonl").read_bytes()
    assert cli("cache", "validate", "--cache-dir", "c").exit_code == 0  # the run rewrote what it used
    second = cli("run", "--cache-dir", "c", "--max-services", "1", "--output-file", "third.jsonl")
    assert "WARNING" not in second.stderr
    assert "records from cache: 1" in second.stderr


def test_purge_rebuilds_an_unusable_manifest(cli: Cli, isolated: Path) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    assert cli("run", "--cache-dir", "c", "--max-services", "1").exit_code == 0
    before = _spoil_manifest(isolated / "c", "garbage")
    trimmed = cli("cache", "purge", "--cache-dir", "c", "--older-than", "30d")
    assert trimmed.exit_code == 0
    assert "moved it to c/manifest.sqlite3.corrupt-1 and started a fresh one" in trimmed.stderr
    assert trimmed.stdout.startswith("removed 0 entries")
    assert "22 stray file(s)" in trimmed.stdout  # the payloads nothing vouches for any more
    assert (isolated / "c" / "manifest.sqlite3.corrupt-1").read_bytes() == before
    assert cli("cache", "validate", "--cache-dir", "c").exit_code == 0

    _spoil_manifest(isolated / "c", "directory")
    everything = cli("cache", "purge", "--cache-dir", "c", "--all")
    assert everything.exit_code == 0
    assert "is a directory" in everything.stderr
    assert "removed it and started a fresh one" in everything.stderr
    assert sorted(path.name for path in (isolated / "c").iterdir()) == ["entries", "manifest.sqlite3"]
    assert cli("cache", "validate", "--cache-dir", "c").exit_code == 0
    assert cli("run", "--cache-dir", "c", "--max-services", "1", "--output-file", "b.jsonl").exit_code == 0


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_directory_at_a_payload_path_is_a_finding_and_a_miss(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache")
    keys = fill(cache, 3)
    blocked = cache.path_for(keys[0])
    blocked.unlink()
    blocked.mkdir()
    (blocked / "x.json").write_text("{}", encoding="utf-8")
    stray = cache.path_for("f" * 64)
    stray.mkdir(parents=True)
    findings = {(finding.kind, finding.path) for finding in cache.validate()}
    assert findings == {("not_a_file", blocked), ("not_a_file", stray)}

    assert cache.get(keys[0]) is None
    assert (cache.stats.corrupt, cache.stats.misses) == (1, 1)
    assert cache.get(keys[1]) is not None
    records = Records()
    logging.getLogger("service_ambitions.cache").addHandler(records)
    try:
        cache.put(keys[0], {"output": "new"})  # cannot be stored; not a crash either
    finally:
        logging.getLogger("service_ambitions.cache").removeHandler(records)
    assert records.messages == [
        f"cache: {blocked} is a directory, not a payload file; not caching this answer"
    ]
    assert cache.get(keys[0]) is None

    result = cache.purge(older_than=10**9)
    assert (result.entries, result.files) == (0, 2)
    assert not blocked.exists()
    assert not stray.exists()
    assert cache.validate() == []
    cache.put(keys[0], {"output": "new"})
    assert cache.get(keys[0]) == {"output": "new"}


def test_cache_commands_refuse_what_is_not_a_cache(cli: Cli, isolated: Path) -> None:
    (isolated / "empty").mkdir()
    (isolated / "other").mkdir()
    (isolated / "other" / "notes.txt").write_text("mine\n", encoding="utf-8")
    (isolated / "afile").write_text("x\n", encoding="utf-8")
    expected = {
        "missing": "no cache at missing: the directory does not exist (`run` creates it)",
        "empty": "no cache at empty: the directory is empty (`run` creates it)",
        "other": "other is not a service-ambitions cache (no manifest.sqlite3)",
        "afile": "afile is not a service-ambitions cache: it is a file, not a directory",
    }
    for directory, message in expected.items():
        for command in (("validate",), ("purge", "--all")):
            result = cli("cache", *command, "--cache-dir", directory)
            assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"error: {message}\n")
    assert not (isolated / "missing").exists()
    assert list((isolated / "empty").iterdir()) == []
    assert [path.name for path in (isolated / "other").iterdir()] == ["notes.txt"]


def test_a_cache_with_its_manifest_deleted_is_reported(cli: Cli, isolated: Path) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    assert cli("run", "--cache-dir", "c", "--max-services", "1").exit_code == 0
    for path in (isolated / "c").glob("manifest.sqlite3*"):
        path.unlink()
    result = cli("cache", "validate", "--cache-dir", "c", "--json")
    assert result.exit_code == 5
    first = json.loads(result.stdout.splitlines()[0])
    assert first["kind"] == "bad_manifest"
    assert "is missing" in first["detail"]
    assert not (isolated / "c" / "manifest.sqlite3").exists()
