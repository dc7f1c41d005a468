"""``service-ambitions export``: an evolutions file as flat tables (CSV or XLSX) for spreadsheets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from service_ambitions.cli._common import QuietOption, VerboseOption, err, exits, setup_logging
from service_ambitions.cli._paths import (
    check_distinct,
    check_readable_file,
    check_writable_dir,
    check_writable_file,
)
from service_ambitions.errors import InputError, UsageError

__all__ = ["export"]

TABLE_NAMES = ("features", "mappings", "plateaus")
Format = Literal["csv", "xlsx"]


@exits
def export(
    output_file: Annotated[
        Path,
        typer.Option(
            "--output",
            "--output-file",
            help="csv: a directory for features.csv, mappings.csv, plateaus.csv; xlsx: the workbook file.",
            show_default=False,
        ),
    ],
    input_file: Annotated[
        Path, typer.Option("--input-file", help="The evolutions file to export (schema 1.1).")
    ] = Path("evolutions.jsonl"),
    fmt: Annotated[Format, typer.Option("--format", help="csv or xlsx.")] = "csv",
    bom: Annotated[
        bool, typer.Option("--bom", help="csv: start each file with a UTF-8 byte order mark (for Excel).")
    ] = False,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Write the features, mappings and plateau descriptions as flat tables joined on feature_id.

    `features`: service, plateau, role, feature_id, name, description, score level, label and
    justification. `mappings`: service_id, plateau, feature_id, field, item id and name, then one
    column per facet. `plateaus`: the plateau descriptions of each service. CSV is UTF-8 (RFC 4180), one
    file per table in the --output directory (other files there are left alone); XLSX is one workbook,
    a sheet per table with the header row frozen and an autofilter, continued on `<table>_2` past
    Excel's 1,048,576 rows. The file is streamed; files are replaced only when the export succeeds (a
    directory the export created is removed again when it fails; SIGTERM is handled like Ctrl-C, exit 130).
    Exit 3 for a missing or invalid input, 2 for an unusable output path.

    Examples:

    \b
        service-ambitions export --input-file out/evolutions.jsonl --format csv --output out/tables
        service-ambitions export --input-file out/evolutions.jsonl --format xlsx --output out/evolutions.xlsx
    """
    setup_logging(verbose=verbose, quiet=quiet)
    check_readable_file("--input-file", input_file, error=InputError)
    if bom and fmt != "csv":
        raise UsageError("--bom applies to --format csv only (XLSX text is always Unicode)")
    if fmt == "csv":
        check_writable_dir("--output", output_file)
        check_distinct(
            {
                "--input-file": input_file,
                **{f"--output {name}.csv": output_file / f"{name}.csv" for name in TABLE_NAMES},
            }
        )
    else:
        check_writable_file("--output", output_file)
        check_distinct({"--input-file": input_file, "--output": output_file})
    from service_ambitions.report._guard import all_or_nothing  # noqa: PLC0415  (keeps --help fast)
    from service_ambitions.report.export import export_tables  # noqa: PLC0415

    directory = output_file if fmt == "csv" else output_file.absolute().parent
    with all_or_nothing(directory, "the export"):
        result = export_tables(input_file, output_file, fmt=fmt, bom=bom)
    if quiet:
        return
    counts = ", ".join(f"{count} {table}" for table, count in result.rows.items())
    err(f"export: {counts} row(s) into {', '.join(str(path) for path in result.files)}")
