"""``service-ambitions report``: a static HTML site of an evolutions file, for people."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from service_ambitions.cli._common import DataDirOption, QuietOption, VerboseOption, err, exits, setup_logging
from service_ambitions.cli._paths import check_distinct, check_readable_file, check_writable_dir
from service_ambitions.errors import InputError

__all__ = ["report"]


@exits
def report(
    input_file: Annotated[
        Path, typer.Option("--input-file", help="The evolutions file to report on (schema 1.1).")
    ] = Path("evolutions.jsonl"),
    output_dir: Annotated[
        Path,
        typer.Option(
            "--output-dir",
            help="Directory for index.html, services/ and assets/; a previous report in it is replaced.",
        ),
    ] = Path("report"),
    summary_json: Annotated[
        Path | None,
        typer.Option(
            "--summary-json", help="The run's --summary-json, for cost and counts.", show_default=False
        ),
    ] = None,
    data_dir: DataDirOption = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Write into a non-empty directory that holds no report (its other files are kept).",
        ),
    ] = False,
    verbose: VerboseOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Write a static HTML report that works from the file system, with no network.

    `index.html` shows the run, the portfolio (features and mean CMMI level per plateau and role, one row
    per service), a catalogue coverage heatmap per mapping set with the facet breakdown, and the
    quarantine beside the input when there is one; `services/<id>.html` shows one service plateau by
    plateau and role by role, with the catalogue items each feature needs. The file is streamed. Facet
    and option labels come from the catalogues in --data-dir (default: the bundled ones) when their hash
    matches the run's. A non-empty --output-dir that holds no report is refused unless --force; nothing
    changes on disk unless the whole file reads (a directory the report created is removed again when it
    fails; SIGTERM is handled like Ctrl-C, exit 130). Exit 3 for a missing or invalid input, 2 for an
    unusable output directory.

    Examples:

    \b
        service-ambitions report --input-file out/evolutions.jsonl --output-dir out/report
        service-ambitions report --input-file out/evolutions.jsonl --summary-json out/summary.json
    """
    setup_logging(verbose=verbose, quiet=quiet)
    check_readable_file("--input-file", input_file, error=InputError)
    if summary_json is not None:
        check_readable_file("--summary-json", summary_json, error=InputError)
    check_distinct({"--input-file": input_file, "--output-dir": output_dir, "--summary-json": summary_json})
    check_writable_dir("--output-dir", output_dir)
    from service_ambitions.report._guard import all_or_nothing  # noqa: PLC0415  (keeps --help fast)
    from service_ambitions.report.site import build_site  # noqa: PLC0415

    with all_or_nothing(output_dir, "the report"):
        result = build_site(input_file, output_dir, summary_json=summary_json, data_dir=data_dir, force=force)
    if quiet:
        return
    quarantined = f", {result.quarantine_entries} quarantine entries" if result.quarantine_entries else ""
    err(f"report: {result.services} service page(s){quarantined}; open {result.index}")
