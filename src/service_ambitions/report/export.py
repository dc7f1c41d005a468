"""``export_tables``: an evolutions file as flat tables people join on ``feature_id``.

Three tables: ``features`` (one row per feature), ``mappings`` (one row per catalogue item supporting a
feature, every facet in its own column) and ``plateaus`` (the plateau descriptions). CSV writes one file per
table into a directory; XLSX one workbook with a sheet per table (header row frozen, autofilter on), written
with XlsxWriter in constant-memory mode. The input is streamed; mapping and plateau rows go through a
temporary spool file because the facet columns are only known at the end. Files are replaced only when the
whole export succeeded.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

from service_ambitions.domain.output import Header, ServiceEvolution
from service_ambitions.errors import InputError, PathError
from service_ambitions.report._outdir import describe
from service_ambitions.store.reader import iter_evolutions

__all__ = [
    "FEATURE_COLUMNS",
    "MAPPING_COLUMNS",
    "PLATEAU_COLUMNS",
    "TABLES",
    "XLSX_ROWS",
    "ExportResult",
    "Format",
    "export_tables",
]

Format = Literal["csv", "xlsx"]

FEATURE_COLUMNS = (
    "service_id",
    "service_name",
    "plateau",
    "plateau_name",
    "role_id",
    "role_name",
    "feature_id",
    "name",
    "description",
    "score_level",
    "score_label",
    "justification",
)
MAPPING_COLUMNS = ("service_id", "plateau", "feature_id", "field", "item_id", "item_name")
"""Followed by one column per facet."""
PLATEAU_COLUMNS = ("service_id", "service_name", "plateau", "plateau_name", "description")
TABLES = ("features", "mappings", "plateaus")
XLSX_ROWS = 1_048_575
"""Data rows of one sheet (Excel's 1,048,576 rows less the header); more continue on ``<table>_2``, ..."""
_WIDTHS = {"description": 60, "justification": 60, "name": 40, "service_name": 28, "item_name": 32}
_EXACT = 2**53  # integers past this lose digits as spreadsheet numbers


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_tables` wrote."""

    output: Path
    format: Format
    rows: dict[str, int]
    files: list[Path]
    facet_columns: list[str]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def csv_text(value: Any) -> str:
    """A value as CSV text: empty for none, ``true``/``false``, numbers as Python writes them, else JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return _json(value)


def _temporary_beside(path: Path) -> Path:
    """A new hidden name next to ``path``, for an atomic replace."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


class _CsvSink:
    """One CSV file per table in a directory."""

    def __init__(self, directory: Path, *, bom: bool) -> None:
        self.directory = directory
        self.encoding = "utf-8-sig" if bom else "utf-8"
        self.done: list[tuple[Path, Path]] = []
        self._handle: IO[str] | None = None
        self._writer: Any = None

    def start(self, name: str, columns: Sequence[str]) -> None:
        self._finish()
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{name}.csv"
        temporary = _temporary_beside(final)
        self.done.append((temporary, final))  # before it exists: an interrupt between the two leaves nothing
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the usual permissions (umask)
        self._handle = os.fdopen(fd, "w", encoding=self.encoding, newline="")
        self._writer = csv.writer(self._handle)  # RFC 4180: CRLF, quotes where needed
        self._writer.writerow(columns)

    def row(self, values: Sequence[Any]) -> None:
        self._writer.writerow([csv_text(value) for value in values])

    def _finish(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def commit(self) -> list[Path]:
        self._finish()
        for temporary, final in self.done:
            os.replace(temporary, final)
        return [final for _, final in self.done]

    def discard(self) -> None:
        self._finish()
        for temporary, _ in self.done:
            with contextlib.suppress(OSError):
                temporary.unlink()


class _XlsxSink:
    """One workbook, a sheet per table (continued on ``<name>_2`` past ``sheet_rows``)."""

    def __init__(self, path: Path, *, sheet_rows: int) -> None:
        import xlsxwriter  # type: ignore[import-untyped]  # noqa: PLC0415  (ships no py.typed)

        self.path = path
        self.sheet_rows = sheet_rows
        self.staging: Path | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        # one staging directory beside the workbook holds it while it is written and XlsxWriter's own
        # temporary files (its tmpdir), so removing that directory removes every trace of the export
        self.staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        self.temporary = self.staging / path.name
        try:
            self.workbook: Any = xlsxwriter.Workbook(
                str(self.temporary), {"constant_memory": True, "tmpdir": str(self.staging.absolute())}
            )
        except BaseException:  # the caller has no sink to discard yet
            self._remove_staging()
            raise
        # no wall-clock time in the file: the same input gives the same bytes (like the zip entries' dates)
        self.workbook.set_properties({"created": datetime(1980, 1, 1), "title": "service-ambitions export"})
        self.bold = self.workbook.add_format({"bold": True, "bg_color": "#F2F2F2", "bottom": 1})
        self.truncated = 0
        self._name = ""
        self._columns: Sequence[str] = ()
        self._sheet: Any = None
        self._part = 0
        self._row = 0

    def start(self, name: str, columns: Sequence[str]) -> None:
        self._finish()
        self._name, self._columns, self._part = name, columns, 0
        self._new_sheet()

    def _new_sheet(self) -> None:
        self._finish()
        self._part += 1
        title = self._name if self._part == 1 else f"{self._name}_{self._part}"
        self._sheet = self.workbook.add_worksheet(title)
        for column, title in enumerate(self._columns):
            self._sheet.set_column(column, column, _WIDTHS.get(title, 14 if column < 8 else 18))
            self._sheet.write_string(0, column, title, self.bold)
        self._sheet.freeze_panes(1, 0)
        self._row = 0

    def row(self, values: Sequence[Any]) -> None:
        if self._row >= self.sheet_rows:
            self._new_sheet()
        self._row += 1
        for column, value in enumerate(values):
            self._cell(self._row, column, value)

    def _cell(self, row: int, column: int, value: Any) -> None:
        sheet = self._sheet
        if value is None:
            return
        if isinstance(value, bool):
            sheet.write_boolean(row, column, value)
        elif (isinstance(value, int) and abs(value) <= _EXACT) or (
            isinstance(value, float) and math.isfinite(value)
        ):
            sheet.write_number(row, column, value)
        else:
            # write_string, never write(): text that starts with "=" stays text, not a formula
            text = value if isinstance(value, str) else csv_text(value)
            if sheet.write_string(row, column, text) == -2:
                self.truncated += 1

    def _finish(self) -> None:
        if self._sheet is not None:
            self._sheet.autofilter(0, 0, max(self._row, 1), max(len(self._columns) - 1, 0))
            self._sheet = None

    def commit(self) -> list[Path]:
        self._finish()
        self.workbook.close()
        os.replace(self.temporary, self.path)
        self._remove_staging()
        return [self.path]

    def _remove_staging(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)

    def discard(self) -> None:
        try:
            with contextlib.suppress(Exception):  # XlsxWriter may fail again on a half-written workbook
                self.workbook.close()  # also closes its temporary files
        finally:
            self._remove_staging()


@dataclass
class _Spools:
    """Rows of the tables written after the features: mapping and plateau rows, and the facets seen."""

    rows: dict[str, int]
    facet_order: dict[str, dict[str, None]] = field(default_factory=dict)
    mappings: IO[str] = field(init=False)
    plateaus: IO[str] = field(init=False)

    def add(self, record: ServiceEvolution, sink: _CsvSink | _XlsxSink) -> None:
        """Write the record's feature rows to ``sink``, spool its mapping and plateau rows."""
        service = record.service
        for plateau in record.plateaus:
            line = [
                service.service_id,
                service.name,
                plateau.plateau,
                plateau.plateau_name,
                plateau.description,
            ]
            self.plateaus.write(_json(line) + "\n")
            self.rows["plateaus"] += 1
            names = {
                key: {group.id: group.name for group in groups} for key, groups in plateau.mappings.items()
            }
            for feature in plateau.features:
                sink.row(
                    [
                        service.service_id,
                        service.name,
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
                    ]
                )
                self.rows["features"] += 1
                for field_name, supporting in feature.mappings.items():
                    known = self.facet_order.setdefault(field_name, {})
                    item_names = names.get(field_name, {})
                    for item in supporting:
                        facets = item.facets or {}
                        known.update(dict.fromkeys(facets))
                        row = [
                            service.service_id,
                            plateau.plateau,
                            feature.feature_id,
                            field_name,
                            item.item,
                            item_names.get(item.item, ""),
                            facets,
                        ]
                        self.mappings.write(_json(row) + "\n")
                        self.rows["mappings"] += 1


def _spooled(spool: IO[str]) -> Iterator[list[Any]]:
    spool.seek(0)
    for line in spool:
        yield json.loads(line)


def _facet_columns(order: dict[str, dict[str, None]], fields: list[str]) -> list[str]:
    columns: list[str] = []
    for field_name in [*fields, *(name for name in order if name not in fields)]:
        columns += [key for key in order.get(field_name, {}) if key not in columns]
    return columns


def _column_titles(facets: list[str]) -> list[str]:
    """Facet columns are titled by facet id; one that clashes with a fixed column is ``facet_<id>``."""
    return [*MAPPING_COLUMNS, *(f"facet_{key}" if key in MAPPING_COLUMNS else key for key in facets)]


def _stream(input_file: Path) -> tuple[Header, Iterator[ServiceEvolution]]:
    items = iter_evolutions(input_file)
    header = next(items, None)
    if not isinstance(header, Header):
        raise InputError(f"{input_file}: empty file, no header line")
    return header, (item for item in items if isinstance(item, ServiceEvolution))


def export_tables(
    input_file: Path,
    output: Path,
    *,
    fmt: Format,
    bom: bool = False,
    sheet_rows: int = XLSX_ROWS,
) -> ExportResult:
    """Write the features, mappings and plateaus tables of ``input_file``.

    Args:
        input_file: An evolutions file (schema 1.1).
        output: A directory for ``csv`` (``features.csv``, ``mappings.csv``, ``plateaus.csv``; other files
            in it are left alone), a file for ``xlsx``.
        fmt: ``csv`` or ``xlsx``.
        bom: CSV only: start each file with a UTF-8 byte order mark, so Excel reads it as UTF-8.
        sheet_rows: XLSX only: data rows per sheet before a table continues on a new sheet.

    Raises:
        InputError: The input is missing or invalid (nothing is written).
        PathError: The output cannot be written.
    """
    header, records = _stream(input_file)
    spools = _Spools(rows=dict.fromkeys(TABLES, 0))
    try:
        sink: _CsvSink | _XlsxSink = (
            _CsvSink(output, bom=bom) if fmt == "csv" else _XlsxSink(output, sheet_rows=sheet_rows)
        )
    except OSError as exc:
        raise PathError(describe(exc, output)) from None
    try:
        with (
            tempfile.TemporaryFile("w+", encoding="utf-8") as spools.mappings,
            tempfile.TemporaryFile("w+", encoding="utf-8") as spools.plateaus,
        ):
            sink.start("features", FEATURE_COLUMNS)
            for record in records:
                spools.add(record, sink)
            facets = _facet_columns(spools.facet_order, list(header.mapping_sets))
            sink.start("mappings", _column_titles(facets))
            for *base, values in _spooled(spools.mappings):
                sink.row([*base, *(values.get(key) for key in facets)])
            sink.start("plateaus", PLATEAU_COLUMNS)
            for line in _spooled(spools.plateaus):
                sink.row(line)
            files = sink.commit()
    except OSError as exc:
        sink.discard()
        raise PathError(describe(exc, output)) from None
    except BaseException:
        sink.discard()
        raise
    return ExportResult(output=output, format=fmt, rows=spools.rows, files=files, facet_columns=facets)
