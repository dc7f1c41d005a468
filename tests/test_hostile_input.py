"""Hostile input lines: each one is one quarantined bad line, named by its limit; the run goes on."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service_ambitions.errors import InputError
from service_ambitions.store.inputs import (
    MAX_INT_DIGITS,
    MAX_LINE_BYTES,
    MAX_NESTING,
    file_digest,
    read_services,
)
from tests.conftest import read_jsonl, service, write_jsonl

Cli = Callable[..., Any]
HOLE = "@@hole@@"


def with_job_extra(service_id: str, value: str) -> str:
    """A service line whose first job has an extra key ``x`` holding ``value`` (raw JSON text)."""
    record = service(service_id, jobs_to_be_done=[{"name": "Borrow a book", "x": HOLE}])
    return json.dumps(record).replace(json.dumps(HOLE), value)


def nested(levels: int) -> str:
    """``levels`` nested arrays around a number."""
    return "[" * levels + "1" + "]" * levels


# (line, what the reason says). Each line would once have stopped the whole run with a traceback (or, for
# NaN and Infinity, written invalid JSON); the record's own object is level 0, a job's extra key level 3.
HOSTILE: tuple[tuple[str, str], ...] = (
    ("[" * 10_000 + "]" * 10_000, f"nesting deeper than {MAX_NESTING} levels"),
    ('{"a": ' * 10_000 + "1" + "}" * 10_000, f"nesting deeper than {MAX_NESTING} levels"),
    (with_job_extra("DEEP", nested(300)), f"nesting deeper than {MAX_NESTING} levels"),
    (with_job_extra("BIGINT", "9" * 5000), f"integer with more than {MAX_INT_DIGITS} digits"),
    (with_job_extra("NAN", "NaN"), "NaN is not valid JSON"),
    (with_job_extra("INF", "Infinity"), "Infinity is not valid JSON"),
    (with_job_extra("NEGINF", "[-Infinity]"), "-Infinity is not valid JSON"),
    (with_job_extra("OVERFLOW", "1e999"), "number 1e999 is out of range"),
    (with_job_extra("SURROGATE", '"\\ud800 alone"'), "string with a lone surrogate \\ud800"),
    (json.dumps(service("HUGE", description="x" * MAX_LINE_BYTES)), "line longer than 4 MiB"),
)
GOOD = [f"G{index}" for index in range(len(HOSTILE) + 1)]


def interleaved(path: Path, hostile: tuple[tuple[str, str], ...] = HOSTILE) -> dict[int, str]:
    """Good services with one hostile line between each two; returns {line number: expected reason}."""
    lines: list[Any] = [service(GOOD[0])]
    expected: dict[int, str] = {}
    for index, (line, reason) in enumerate(hostile, start=1):
        lines.append(line)
        expected[len(lines)] = reason
        lines.append(service(GOOD[index]))
    write_jsonl(path, lines)
    return expected


def quarantined(output: Path) -> dict[int, dict[str, Any]]:
    directory = output.with_name(output.name + ".quarantine")
    entries = [json.loads(path.read_text(encoding="utf-8")) for path in directory.glob("*.json")]
    return {entry["line"]: entry for entry in entries}


def output_ids(output: Path) -> list[str]:
    return [record["service"]["service_id"] for record in read_jsonl(output)[1:]]


def test_each_hostile_line_is_one_quarantined_line(cli: Cli, isolated: Path) -> None:
    expected = interleaved(isolated / "in.jsonl")
    result = cli("run", "--model", "offline", "--input-file", "in.jsonl", "--output-file", "out.jsonl")
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{len(GOOD)} ok, 0 failed, {len(HOSTILE)} invalid input line(s)" in result.stderr
    assert output_ids(isolated / "out.jsonl") == GOOD
    entries = quarantined(isolated / "out.jsonl")
    assert set(entries) == set(expected)
    for line, reason in expected.items():
        entry = entries[line]
        assert entry["kind"] == "input_invalid"
        assert entry["stage"] == "input"
        assert entry["error"].startswith(f"line {line}: ")
        assert reason in entry["error"], entry["error"]
        assert f"input line {line} skipped: " in result.stderr
    huge = entries[max(expected)]
    assert huge["service_id"] == "HUGE"  # named, so `quarantine rm --service HUGE` finds it
    assert huge["payload"] == ""  # the line itself is not kept


def test_validate_reports_each_hostile_line(cli: Cli, isolated: Path) -> None:
    expected = interleaved(isolated / "in.jsonl")
    result = cli("validate", "--input-file", "in.jsonl")
    assert result.exit_code == 3
    assert "Traceback" not in result.stderr
    findings = [line for line in result.stderr.splitlines() if line.startswith("in.jsonl:")]
    assert [int(line.split(":")[1]) for line in findings] == sorted(expected)
    for finding, (number, reason) in zip(findings, sorted(expected.items()), strict=True):
        assert finding.startswith(f"in.jsonl:{number}: {reason}"), finding
    assert f"validate: {len(HOSTILE)} finding(s)" in result.stderr


def test_hostile_lines_in_a_real_process_print_no_traceback(isolated: Path) -> None:
    expected = interleaved(isolated / "in.jsonl", HOSTILE[:5])
    command = [sys.executable, "-m", "service_ambitions", "run", "--model", "offline", "-q"]
    process = subprocess.run(
        [*command, "--input-file", "in.jsonl", "--output-file", "out.jsonl"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    assert "Traceback" not in process.stderr
    assert output_ids(isolated / "out.jsonl") == GOOD[:6]
    assert set(quarantined(isolated / "out.jsonl")) == set(expected)


def test_records_at_the_limits_are_processed_end_to_end(cli: Cli, isolated: Path) -> None:
    # A job's extra key is at level 3 (record → jobs → job → value) and holds an object: its arrays reach
    # exactly MAX_NESTING, and one array more is past it.
    deepest = nested(MAX_NESTING - 3)
    biggest = "7" * MAX_INT_DIGITS
    lines = [
        with_job_extra("AT", f'{{"deep": {deepest}, "big": -{biggest}}}'),
        with_job_extra("PAST", f'{{"deep": {nested(MAX_NESTING - 2)}}}'),
    ]
    write_jsonl(isolated / "in.jsonl", lines)
    result = cli("run", "--model", "offline", "--input-file", "in.jsonl", "--output-file", "out.jsonl")
    assert result.exit_code == 0, result.stderr
    records = read_jsonl(isolated / "out.jsonl")[1:]
    assert [record["service"]["service_id"] for record in records] == ["AT"]
    extra = records[0]["service"]["jobs_to_be_done"][0]["x"]
    assert extra == {"deep": json.loads(deepest), "big": -int(biggest)}
    assert (
        quarantined(isolated / "out.jsonl")[2]["error"] == f"line 2: nesting deeper than {MAX_NESTING} levels"
    )


def test_line_length_limit_is_exact(cli: Cli, isolated: Path) -> None:
    record = service("EXACT", description="")
    padding = MAX_LINE_BYTES - len(json.dumps(record))
    exact = json.dumps(service("EXACT", description="d" * padding))
    over = json.dumps(service("ABOVE", description="d" * (padding + 1)))
    assert (len(exact), len(over)) == (MAX_LINE_BYTES, MAX_LINE_BYTES + 1)
    (isolated / "in.jsonl").write_text(f"{exact}\r\n{over}", encoding="utf-8")  # CRLF, no final newline
    result = cli("validate", "--input-file", "in.jsonl")
    assert result.exit_code == 3
    assert f"in.jsonl:2: line longer than 4 MiB ({MAX_LINE_BYTES + 1:,} bytes)" in result.stderr
    assert "in.jsonl:1:" not in result.stderr
    assert "validate: 1 finding(s)" in result.stderr


def test_brackets_inside_strings_do_not_count_as_nesting(cli: Cli, isolated: Path) -> None:
    tricky = service("BRACKETS", description='[[[{{{ "quoted \\" [[[" ' * 100)
    write_jsonl(isolated / "in.jsonl", [tricky, '{"service_id": "BROKEN", "name": "' + "[" * 500])
    result = cli("validate", "--input-file", "in.jsonl")
    assert result.exit_code == 3
    assert "in.jsonl:1:" not in result.stderr
    assert "in.jsonl:2: invalid JSON: " in result.stderr  # not "nesting": those brackets are in a string


def test_utf8_bom_on_the_first_line_is_accepted(cli: Cli, isolated: Path) -> None:
    write_jsonl(isolated / "in.jsonl", [service("A"), service("B")])
    (isolated / "in.jsonl").write_bytes(b"\xef\xbb\xbf" + (isolated / "in.jsonl").read_bytes())
    validated = cli("validate", "--input-file", "in.jsonl")
    assert validated.exit_code == 0, validated.stderr
    assert "validate: ok (2 service(s) in in.jsonl" in validated.stderr
    result = cli("run", "--model", "offline", "--input-file", "in.jsonl", "--output-file", "out.jsonl")
    assert result.exit_code == 0, result.stderr
    assert output_ids(isolated / "out.jsonl") == ["A", "B"]
    assert not (isolated / "out.jsonl.quarantine").exists()


def test_a_directory_as_input_is_named_as_one(isolated: Path) -> None:
    (isolated / "services").mkdir()
    with pytest.raises(InputError, match=r"^input file services is a directory, not a file$"):
        next(read_services(Path("services")))
    with pytest.raises(InputError, match=r"^input file services is a directory, not a file$"):
        file_digest(Path("services"))
