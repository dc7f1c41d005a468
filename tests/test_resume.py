"""--resume: continue an output, refuse when its origin changed, repair a torn tail."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service_ambitions.store.reader import read_evolutions
from tests.conftest import SAMPLES, read_jsonl, service, write_jsonl

Cli = Callable[..., Any]


def ids(path: Path) -> list[str]:
    return [record["service"]["service_id"] for record in read_jsonl(path)[1:]]


def test_resume_skips_done(cli: Cli, isolated: Path) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    full = cli("run", "--output-file", "full.jsonl")
    assert full.exit_code == 0
    first = cli("run", "--output-file", "part.jsonl", "--max-services", "5")
    assert first.exit_code == 0
    assert len(ids(isolated / "part.jsonl")) == 5
    resumed = cli("run", "--output-file", "part.jsonl", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert "resumed after 5" in resumed.stderr
    # The resumed file is byte-identical to an uninterrupted run.
    assert (isolated / "part.jsonl").read_bytes() == (isolated / "full.jsonl").read_bytes()
    again = cli("run", "--output-file", "part.jsonl", "--resume")
    assert again.exit_code == 0
    assert "wrote 0 record(s)" in again.stderr
    assert (isolated / "part.jsonl").read_bytes() == (isolated / "full.jsonl").read_bytes()


def test_resume_without_output_starts_fresh(cli: Cli, isolated: Path) -> None:
    write_jsonl(isolated / "services.jsonl", [service("A")])
    result = cli("run", "--resume")
    assert result.exit_code == 0
    assert ids(isolated / "evolutions.jsonl") == ["A"]


def test_resume_refuses_changed_input(cli: Cli, isolated: Path) -> None:
    write_jsonl(isolated / "services.jsonl", [service("A"), service("B")])
    assert cli("run", "--max-services", "1").exit_code == 0
    write_jsonl(isolated / "services.jsonl", [service("A"), service("B"), service("C")])
    before = (isolated / "evolutions.jsonl").read_bytes()
    refused = cli("run", "--resume")
    assert refused.exit_code == 3
    assert "input file changed" in refused.stderr
    assert (isolated / "evolutions.jsonl").read_bytes() == before


def test_resume_refuses_changed_settings(cli: Cli, isolated: Path) -> None:
    write_jsonl(isolated / "services.jsonl", [service("A"), service("B")])
    assert cli("run", "--max-services", "1").exit_code == 0
    refused = cli("run", "--resume", "--seed", "5", "--strict")
    assert refused.exit_code == 3
    assert "settings changed: seed, strict" in refused.stderr
    # Settings that do not change the output may change between runs.
    allowed = cli("run", "--resume", "--concurrency", "2", "--cache-mode", "off")
    assert allowed.exit_code == 0, allowed.stderr
    assert ids(isolated / "evolutions.jsonl") == ["A", "B"]


def test_torn_tail_repaired(cli: Cli, isolated: Path) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    assert cli("run", "--max-services", "3").exit_code == 0
    output = isolated / "evolutions.jsonl"
    data = output.read_bytes()
    torn = data[: len(data) - 500]  # cut the third record mid-line
    output.write_bytes(torn)
    result = cli("run", "--resume")
    assert result.exit_code == 0, result.stderr
    assert "torn last line" in result.stderr
    broken = isolated / "evolutions.jsonl.broken"
    assert broken.read_bytes() == torn[torn.rfind(b"\n") + 1 :] + b"\n"
    parsed = read_evolutions(output)
    expected = [record["service_id"] for record in read_jsonl(SAMPLES)]
    assert sorted(record.service.service_id for record in parsed.records) == sorted(expected)


def test_quarantined_services_rerun_after_rm(cli: Cli, isolated: Path) -> None:
    write_jsonl(isolated / "services.jsonl", [service("A"), {"service_id": "B"}])
    assert cli("run").exit_code == 0
    entries = list((isolated / "evolutions.jsonl.quarantine").glob("*.json"))
    assert len(entries) == 1
    again = cli("run", "--resume", "--fail-on-quarantine")
    assert again.exit_code == 1  # the bad line is still bad and still quarantined
