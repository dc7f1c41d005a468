"""The response cache: verified reads, LRU cap, TTL, maintenance commands, concurrent writers."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    assert cli("cache", "purge", "--cache-dir", "c").exit_code == 2
    assert cli("cache", "validate", "--cache-dir", "nowhere").exit_code == 2


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
