"""The quarantine store with files that are not entries, and the quarantine commands' messages."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service_ambitions.store.quarantine import QuarantineStore, quarantine_dir_for
from tests.conftest import read_jsonl, service, write_jsonl

Cli = Callable[..., Any]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings() -> Iterator[Records]:
    records = Records()
    logger = logging.getLogger("service_ambitions.quarantine")
    logger.addHandler(records)
    try:
        yield records
    finally:
        logger.removeHandler(records)


def add(store: QuarantineStore, service_id: str, error: str = "boom") -> str:
    entry = store.add(service_id=service_id, stage="features", kind="model_error", error=error, run_id="r1")
    return entry.id


BAD_FILES = {
    "broken.json": b"{not json",
    "latin1.json": '{"id": "caf\xe9"}'.encode("latin-1"),
    "list.json": b"[1, 2, 3]",
    "foreign.json": b'{"hello": "world"}',
    "notes.txt": b"my notes\n",
}


def spoil(directory: Path, valid_id: str) -> None:
    """Put every kind of file that is not an entry next to the real ones."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in BAD_FILES.items():
        (directory / name).write_bytes(data)
    (directory / "subdir.json").mkdir()
    # A real entry under another name: removing "it" would remove the wrong file.
    (directory / "000000000000.json").write_bytes((directory / f"{valid_id}.json").read_bytes())


def test_entries_skip_files_that_are_not_entries_with_one_warning(tmp_path: Path, warnings: Records) -> None:
    store = QuarantineStore(tmp_path / "q")
    first, second = add(store, "B"), add(store, "A")
    spoil(store.directory, first)
    listed = list(store.entries())
    assert [entry.id for entry in listed] == [second, first]  # ordered by service id
    assert len(warnings.messages) == 1
    message = warnings.messages[0]
    assert message.startswith(
        f"quarantine {store.directory}: skipped 7 file(s) that are not quarantine entries"
    )
    for name in [*BAD_FILES, "subdir.json", "000000000000.json"]:
        assert name in message
    assert "subdir.json (a directory)" in message
    assert "notes.txt (not a .json file)" in message
    assert "list.json (not a quarantine entry: top level: Input should be an object)" in message
    assert f"000000000000.json (holds entry {first!r}" in message
    assert store.count() == 2
    assert len(warnings.messages) == 1  # count() does not warn again
    assert store.get(first[:6]) is not None
    assert store.remove(first)
    assert not (store.directory / f"{first}.json").exists()
    assert (store.directory / "000000000000.json").exists()


def test_entries_of_a_missing_or_unreadable_directory(tmp_path: Path, warnings: Records) -> None:
    assert list(QuarantineStore(tmp_path / "none").entries()) == []
    (tmp_path / "file").write_text("x", encoding="utf-8")
    assert list(QuarantineStore(tmp_path / "file").entries()) == []
    assert warnings.messages == []


def test_ls_and_rm_skip_bad_files(cli: Cli, isolated: Path) -> None:
    (isolated / "out.jsonl").write_text("", encoding="utf-8")
    store = QuarantineStore(quarantine_dir_for(isolated / "out.jsonl"))
    first, second = add(store, "A"), add(store, "B")
    spoil(store.directory, first)
    listing = cli("quarantine", "ls", "--output-file", "out.jsonl")
    assert listing.exit_code == 0
    assert [line.split("\t")[0] for line in listing.stdout.splitlines()] == [first, second]
    warned = [line for line in listing.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warned) == 1
    assert "skipped 7 file(s)" in warned[0]
    assert "2 quarantine entries for out.jsonl" in listing.stderr
    as_json = cli("quarantine", "ls", "--output-file", "out.jsonl", "--json")
    assert [json.loads(line)["id"] for line in as_json.stdout.splitlines()] == [first, second]
    shown = cli("quarantine", "show", first, "--output-file", "out.jsonl")
    assert json.loads(shown.stdout)["service_id"] == "A"
    removed = cli("quarantine", "rm", "--all", "--output-file", "out.jsonl")
    assert (removed.exit_code, removed.stdout) == (0, "removed 2 entries\n")
    assert sorted(path.name for path in store.directory.iterdir()) == sorted(
        [*BAD_FILES, "subdir.json", "000000000000.json"]
    )


def test_rm_is_all_or_nothing(cli: Cli, isolated: Path) -> None:
    (isolated / "evolutions.jsonl").write_text("", encoding="utf-8")
    store = QuarantineStore(quarantine_dir_for(isolated / "evolutions.jsonl"))
    ids: list[str] = []
    while len({entry_id[0] for entry_id in ids}) == len(ids):  # until two ids share a first digit
        ids.append(add(store, f"S{len(ids)}"))
    prefix = ids[-1][0]
    refused = cli("quarantine", "rm", ids[0], "nope", prefix, "--service", "Z", "--service", "S1")
    assert refused.exit_code == 2
    assert refused.stdout == ""
    assert refused.stderr == (
        "error: removed nothing from the quarantine of evolutions.jsonl: no entries for service 'Z'; "
        f"no entry 'nope'; ambiguous prefix {prefix!r}\n"
    )
    assert store.count() == len(ids)
    removed = cli("quarantine", "rm", ids[0], ids[0][:8], "--service", "S1")
    assert (removed.exit_code, removed.stdout) == (0, "removed 2 entries\n")
    assert sorted(entry.id for entry in store.entries()) == sorted(ids[2:])


def test_commands_on_an_output_that_does_not_exist(cli: Cli, isolated: Path) -> None:
    for command in (("ls",), ("show", "abc"), ("rm", "abc"), ("rm", "--all")):
        result = cli("quarantine", *command, "--output-file", "missing.jsonl")
        assert result.exit_code == 3, command
        assert result.stdout == ""
        assert result.stderr.startswith("error: output file missing.jsonl does not exist")
    # An output that exists with no quarantine is simply empty.
    (isolated / "there.jsonl").write_text("", encoding="utf-8")
    empty = cli("quarantine", "ls", "--output-file", "there.jsonl")
    assert (empty.exit_code, empty.stdout) == (0, "")
    assert "0 quarantine entries" in empty.stderr


def test_resume_skips_bad_quarantine_files(cli: Cli, isolated: Path) -> None:
    write_jsonl(isolated / "services.jsonl", [service("A"), service("B")])
    assert cli("run", "--max-services", "1").exit_code == 0
    done = [record["service"]["service_id"] for record in read_jsonl(isolated / "evolutions.jsonl")[1:]]
    assert len(done) == 1
    pending = "B" if done == ["A"] else "A"
    store = QuarantineStore(quarantine_dir_for(isolated / "evolutions.jsonl"))
    spoil(store.directory, add(store, pending))
    resumed = cli("run", "--resume")
    assert "Traceback" not in resumed.stderr
    assert resumed.exit_code in (0, 1)  # 1 when a quarantined service without a record fails the run
    warned = [line for line in resumed.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warned) == 1
    assert "skipped 7 file(s) that are not quarantine entries" in warned[0]
    # The valid entry still counts: its service is not processed again until it is removed.
    assert len(read_jsonl(isolated / "evolutions.jsonl")) == 2
