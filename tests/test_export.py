"""``export``: CSV and XLSX tables whose rows, read back, equal the records' features, mappings, plateaus."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from openpyxl.utils import get_column_letter
from typer.testing import CliRunner

from service_ambitions.cli.app import app
from service_ambitions.domain.output import ServiceEvolution
from service_ambitions.report import export_tables
from service_ambitions.report.export import FEATURE_COLUMNS, MAPPING_COLUMNS, PLATEAU_COLUMNS
from service_ambitions.store.reader import iter_evolutions
from tests.conftest import PROVIDER_VARIABLES, SAMPLES, read_jsonl, write_jsonl

Cli = Callable[..., Any]
Row = tuple[Any, ...]

TYPED_FACETS: dict[str, dict[str, Any]] = {
    "applications": {"effort_estimate_weeks": 3, "notes": '=HYPERLINK("http://x")'},
    "technologies": {"shared_platform": True, "maturity_required": 4},
    "data": {"data_quality_confidence": 0.75, "personal_data": False},
}


@pytest.fixture(scope="module")
def evolutions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three sample services run offline; one renamed with a formula and accents, with facets of each type."""
    directory = tmp_path_factory.mktemp("export")
    lines = SAMPLES.read_text(encoding="utf-8").splitlines()[:3]
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("SA_") or name in PROVIDER_VARIABLES:
                patch.delenv(name)
        patch.setenv("XDG_CACHE_HOME", str(directory / "xdg-cache"))
        patch.chdir(directory)
        source = write_jsonl(directory / "services.jsonl", lines)
        output = directory / "run.jsonl"
        result = CliRunner().invoke(
            app,
            [
                "run",
                "--model",
                "offline",
                "--input-file",
                str(source),
                "--output-file",
                str(output),
                "--cache-mode",
                "off",
                "--no-progress",
            ],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.stderr
    header, *records = read_jsonl(output)
    first = records[0]
    first["service"]["name"] = '=1+1 Ünïcode ✓, "quoted"\nnew line'
    for plateau in first["plateaus"]:
        for feature in plateau["features"]:
            for field, items in feature["mappings"].items():
                for item in items:
                    item["facets"] = {**(item["facets"] or {}), **TYPED_FACETS[field]}
    edited = directory / "evolutions.jsonl"
    write_jsonl(edited, [header, *records])
    return edited


def records(path: Path) -> list[ServiceEvolution]:
    return [item for item in iter_evolutions(path) if isinstance(item, ServiceEvolution)]


def expected_features(path: Path) -> list[Row]:
    return [
        (
            record.service.service_id,
            record.service.name,
            plateau.plateau,
            plateau.plateau_name,
            feature.customer_type,
            feature.role.name,
            feature.feature_id,
            feature.name,
            feature.description,
            feature.score.level,
            feature.score.label,
            feature.score.justification,
        )
        for record in records(path)
        for plateau in record.plateaus
        for feature in plateau.features
    ]


def expected_mappings(path: Path) -> list[tuple[Row, dict[str, Any]]]:
    rows = []
    for record in records(path):
        for plateau in record.plateaus:
            for feature in plateau.features:
                for field, items in feature.mappings.items():
                    names = {group.id: group.name for group in plateau.mappings[field]}
                    for item in items:
                        base = (
                            record.service.service_id,
                            plateau.plateau,
                            feature.feature_id,
                            field,
                            item.item,
                            names[item.item],
                        )
                        facets = {
                            key: value for key, value in (item.facets or {}).items() if value is not None
                        }
                        rows.append((base, facets))
    return rows


def expected_plateaus(path: Path) -> list[Row]:
    return [
        (
            record.service.service_id,
            record.service.name,
            plateau.plateau,
            plateau.plateau_name,
            plateau.description,
        )
        for record in records(path)
        for plateau in record.plateaus
    ]


def as_text(value: Any) -> str:
    """How a value is written in CSV: true/false, numbers as Python prints them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_csv(path: Path, *, encoding: str = "utf-8") -> tuple[list[str], list[list[str]]]:
    with path.open(encoding=encoding, newline="") as handle:
        header, *rows = list(csv.reader(handle))
    return header, rows


def split_mapping(header: list[str], row: list[Any]) -> tuple[Row, dict[str, Any]]:
    base = len(MAPPING_COLUMNS)
    facets = {
        key: value for key, value in zip(header[base:], row[base:], strict=True) if value not in ("", None)
    }
    return tuple(row[:base]), facets


def test_csv_round_trip(evolutions: Path, cli: Cli, isolated: Path) -> None:
    result = cli(
        "export", "--input-file", str(evolutions), "--format", "csv", "--output", str(isolated / "t")
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert sorted(path.name for path in (isolated / "t").iterdir()) == [
        "features.csv",
        "mappings.csv",
        "plateaus.csv",
    ]

    header, rows = read_csv(isolated / "t" / "features.csv")
    assert header == list(FEATURE_COLUMNS)
    assert rows == [[as_text(value) for value in row] for row in expected_features(evolutions)]

    header, rows = read_csv(isolated / "t" / "mappings.csv")
    expected = expected_mappings(evolutions)
    assert header[: len(MAPPING_COLUMNS)] == list(MAPPING_COLUMNS)
    assert set(header[len(MAPPING_COLUMNS) :]) == {key for _, facets in expected for key in facets}
    assert [split_mapping(header, row) for row in rows] == [
        (tuple(as_text(value) for value in base), {key: as_text(value) for key, value in facets.items()})
        for base, facets in expected
    ]
    assert any(
        facets.get("shared_platform") == "true" for _, facets in (split_mapping(header, r) for r in rows)
    )

    header, rows = read_csv(isolated / "t" / "plateaus.csv")
    assert header == list(PLATEAU_COLUMNS)
    assert rows == [[as_text(value) for value in row] for row in expected_plateaus(evolutions)]
    assert not (isolated / "t" / "features.csv").read_bytes().startswith(b"\xef\xbb\xbf")


def test_csv_bom_for_excel(evolutions: Path, cli: Cli, isolated: Path) -> None:
    result = cli("export", "--input-file", str(evolutions), "--output", str(isolated / "t"), "--bom")
    assert result.exit_code == 0, result.stderr
    for name in ("features.csv", "mappings.csv", "plateaus.csv"):
        assert (isolated / "t" / name).read_bytes().startswith(b"\xef\xbb\xbfservice_id,")
    header, rows = read_csv(isolated / "t" / "features.csv", encoding="utf-8-sig")
    assert header[0] == "service_id"
    assert rows[0][1].startswith("=1+1 Ünïcode ✓")


def sheet_rows(workbook: Any, table: str) -> tuple[list[str], list[list[Any]]]:
    """A table's header and rows, over its continuation sheets (``<table>_2``, ...)."""
    names = [name for name in workbook.sheetnames if name == table or name.startswith(f"{table}_")]
    header: list[str] = []
    rows: list[list[Any]] = []
    for name in names:
        sheet = workbook[name]
        first, *rest = [list(row) for row in sheet.iter_rows(values_only=True)]
        header = header or first
        assert first == header
        rows += rest
    return header, rows


def test_xlsx_round_trip(evolutions: Path, cli: Cli, isolated: Path) -> None:
    target = isolated / "out" / "evolutions.xlsx"
    result = cli("export", "--input-file", str(evolutions), "--format", "xlsx", "--output", str(target))
    assert result.exit_code == 0, result.stderr
    workbook = openpyxl.load_workbook(target)
    assert workbook.sheetnames == ["features", "mappings", "plateaus"]
    for sheet in workbook:
        assert sheet.freeze_panes == "A2"
        last = get_column_letter(sheet.max_column)
        assert sheet.auto_filter.ref == f"A1:{last}{sheet.max_row}"
        assert all(cell.font.b for cell in sheet[1])

    header, rows = sheet_rows(workbook, "features")
    assert header == list(FEATURE_COLUMNS)
    assert [tuple(row) for row in rows] == expected_features(evolutions)

    header, rows = sheet_rows(workbook, "mappings")
    mappings = [split_mapping(header, row) for row in rows]
    assert mappings == expected_mappings(evolutions)
    typed = next(facets for _, facets in mappings if "data_quality_confidence" in facets)
    assert typed["data_quality_confidence"] == 0.75
    assert typed["personal_data"] is False

    _, rows = sheet_rows(workbook, "plateaus")
    assert [tuple(row) for row in rows] == expected_plateaus(evolutions)

    # text that looks like a formula stays text (never evaluated by the spreadsheet)
    name_cell = workbook["features"]["B2"]
    assert name_cell.data_type == "s"
    assert str(name_cell.value).startswith("=1+1")
    assert not any(cell.data_type == "f" for sheet in workbook for row in sheet.iter_rows() for cell in row)

    again = isolated / "again.xlsx"
    assert (
        cli("export", "--input-file", str(evolutions), "--format", "xlsx", "--output", str(again)).exit_code
        == 0
    )
    assert again.read_bytes() == target.read_bytes()  # no wall-clock time in the workbook


def test_xlsx_tables_continue_on_new_sheets(evolutions: Path, isolated: Path) -> None:
    target = isolated / "small-sheets.xlsx"
    result = export_tables(evolutions, target, fmt="xlsx", sheet_rows=40)
    workbook = openpyxl.load_workbook(target)
    assert result.rows["features"] > 40
    assert "features_2" in workbook.sheetnames
    assert workbook.sheetnames.index("features_2") < workbook.sheetnames.index("mappings")
    assert all(workbook[name].max_row <= 41 for name in workbook.sheetnames)
    _, rows = sheet_rows(workbook, "features")
    assert [tuple(row) for row in rows] == expected_features(evolutions)
    header, rows = sheet_rows(workbook, "mappings")
    assert [split_mapping(header, row) for row in rows] == expected_mappings(evolutions)


def test_export_errors(evolutions: Path, cli: Cli, isolated: Path) -> None:
    missing = cli("export", "--input-file", str(isolated / "nope.jsonl"), "--output", str(isolated / "t"))
    assert missing.exit_code == 3
    assert "does not exist" in missing.stderr

    tables = isolated / "t"
    assert cli("export", "--input-file", str(evolutions), "--output", str(tables)).exit_code == 0
    before = {path.name: path.read_bytes() for path in tables.iterdir()}
    broken = isolated / "broken.jsonl"
    broken.write_text(evolutions.read_text(encoding="utf-8") + "{not json}\n", encoding="utf-8")
    invalid = cli("export", "--input-file", str(broken), "--output", str(tables))
    assert invalid.exit_code == 3
    assert "broken.jsonl:5" in invalid.stderr
    assert {path.name: path.read_bytes() for path in tables.iterdir()} == before  # temp files removed too

    assert (
        cli("export", "--input-file", str(evolutions), "--format", "xlsx", "--output", str(tables)).exit_code
        == 2
    )
    a_file = isolated / "a-file"
    a_file.write_text("x", encoding="utf-8")
    assert cli("export", "--input-file", str(evolutions), "--output", str(a_file)).exit_code == 2
    bom = cli("export", "--input-file", str(evolutions), "--format", "xlsx", "--output", "x.xlsx", "--bom")
    assert bom.exit_code == 2
    assert not Path("x.xlsx").exists()
    same = cli("export", "--input-file", str(evolutions), "--format", "xlsx", "--output", str(evolutions))
    assert same.exit_code == 2
    assert "same file" in same.stderr
    assert json.loads(evolutions.read_text(encoding="utf-8").splitlines()[0])["record_type"] == "header"


def copies(source: Path, count: int, target: Path) -> Path:
    """An evolutions file with ``count`` records: those of ``source`` repeated, each under its own id."""
    header, *records = read_jsonl(source)
    copies = []
    for number in range(count):
        record = json.loads(json.dumps(records[number % len(records)]))
        record["service"]["service_id"] = f"{record['service']['service_id']}-{number}"
        copies.append(record)
    write_jsonl(target, [header, *copies])
    return target


def terminate_when(command: list[str], started: Callable[[], bool]) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a real process, send SIGTERM once ``started()`` holds, and wait for it to end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "service_ambitions", *command], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not started() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the command ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, "", stderr)


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_sigterm_leaves_nothing_behind(evolutions: Path, isolated: Path, fmt: str) -> None:
    big = copies(evolutions, 300, isolated / "big.jsonl")
    parent = isolated / "new"
    if fmt == "csv":
        target = parent / "tables"
        pattern = ".features.csv.*.tmp"
    else:
        target = parent / "x.xlsx"
        pattern = ".x.xlsx.*.tmp/tmp*"  # XlsxWriter's own temporary files, inside the staging directory

    def writing() -> bool:
        return any(target.parent.glob(pattern)) or any(target.glob(pattern))

    command = ["export", "--input-file", str(big), "--format", fmt, "--output", str(target)]
    result = terminate_when(command, writing)
    assert result.returncode == 130, result.stderr
    assert "nothing was changed" in result.stderr
    assert sorted(path.name for path in isolated.iterdir()) == ["big.jsonl"]  # the new directories too


def test_quiet_and_failures_into_a_new_dir(evolutions: Path, cli: Cli, isolated: Path) -> None:
    for fmt, target in (("csv", isolated / "q"), ("xlsx", isolated / "q.xlsx")):
        quiet = cli("export", "-q", "--input-file", str(evolutions), "--format", fmt, "--output", str(target))
        assert quiet.exit_code == 0
        assert (quiet.stdout, quiet.stderr) == ("", "")
        assert target.exists()

    broken = isolated / "broken.jsonl"
    broken.write_text(evolutions.read_text(encoding="utf-8") + "{not json}\n", encoding="utf-8")
    for fmt, target in (("csv", isolated / "new" / "tables"), ("xlsx", isolated / "new" / "deep" / "x.xlsx")):
        failed = cli("export", "--input-file", str(broken), "--format", fmt, "--output", str(target))
        assert failed.exit_code == 3
        assert "broken.jsonl:5" in failed.stderr
        assert not (isolated / "new").exists()
