"""``service-ambitions migrate``: convert an output file between schema versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from service_ambitions.cli._common import DataDirOption, RolesFileOption, err, exits
from service_ambitions.cli._paths import check_readable_file, check_writable_file
from service_ambitions.errors import InputError

__all__ = ["migrate"]

CURRENT_SCHEMA = "1.1"
"""``domain.output.SCHEMA_VERSION``, the ``--to`` default, spelled out: importing the pydantic models for
``--help`` would make it slow (``tests/test_cli_import.py`` checks that the two agree)."""


@exits
def migrate(
    from_version: Annotated[
        str, typer.Option("--from", help="Schema version of the input file, e.g. 1.0.", show_default=False)
    ],
    input_file: Annotated[
        Path,
        typer.Option("--input", "--input-file", help="The file to migrate.", show_default=False),
    ],
    output_file: Annotated[
        Path,
        typer.Option(
            "--output",
            "--output-file",
            help="Where to write the migrated file (replaced atomically; may equal --input).",
            show_default=False,
        ),
    ],
    to_version: Annotated[str, typer.Option("--to", help="Schema version to write.")] = CURRENT_SCHEMA,
    roles_file: RolesFileOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Convert an evolutions file to another schema version; never calls a model.

    Migrating 1.0 to 1.1 writes a header whose `migrated_from` keeps every 1.0 `meta`, one entry per
    run id with the services it produced. Roles missing from 1.0 records are described from the roles
    file. Nothing is written unless every line converts. Exit 2 for an unsupported version pair,
    3 for a missing or invalid input.

    Example:

    \b
        service-ambitions migrate --from 1.0 --to 1.1 --input old.jsonl --output evolutions.jsonl
    """
    # content, pydantic models and migrations: imported when the command runs, not for --help
    from service_ambitions import __version__  # noqa: PLC0415
    from service_ambitions.content import loader  # noqa: PLC0415
    from service_ambitions.store.lock import output_lock  # noqa: PLC0415
    from service_ambitions.store.migrate import MigrationOptions, find_migration, migrate_file  # noqa: PLC0415

    find_migration(from_version, to_version)  # an unsupported pair fails before anything is read
    # worded like store.migrate's own errors: "input file X does not exist", "cannot write output file X"
    check_readable_file("input file", input_file, error=InputError)
    check_writable_file("output file", output_file)
    roles_path = loader.resolve_roles_path(roles_file, data_dir or loader.default_data_dir())
    roles = loader.load_roles(roles_path)
    with output_lock(output_file, command="migrate"):  # never while a run writes the same output
        report = migrate_file(
            input_file,
            output_file,
            from_version=from_version,
            to_version=to_version,
            options=MigrationOptions(tool_version=__version__, roles=roles),
        )
    for line in report.notes.summary():
        err(f"migrate: {line}")
    duplicates = (
        f"; {len(report.duplicate_service_ids)} service id(s) appear more than once (all kept)"
        if report.duplicate_service_ids
        else ""
    )
    err(
        f"migrate: {report.records} record(s) from {len(report.run_ids)} run(s) "
        f"({', '.join(report.run_ids)}) migrated {report.from_version} -> {report.to_version} "
        f"into {output_file}{duplicates}"
    )
