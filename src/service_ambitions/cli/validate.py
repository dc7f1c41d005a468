"""``service-ambitions validate``: check settings, content, catalogues and input without calling a model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service_ambitions.cli._common import (
    ConfigOption,
    DataDirOption,
    PromptDirOption,
    RolesFileOption,
    err,
    exits,
    settings_from_flags,
)
from service_ambitions.errors import ContentError, InputError, ServiceAmbitionsError

if TYPE_CHECKING:
    from service_ambitions.settings import Settings

__all__ = ["validate"]


def _content_findings(settings: Settings) -> list[str]:
    from service_ambitions.content import loader  # noqa: PLC0415

    findings: list[str] = []
    data = settings.data_dir or loader.default_data_dir()
    prompts = settings.prompt_dir or loader.default_prompt_dir()

    def check(action: object) -> None:
        try:
            action()  # type: ignore[operator]
        except ContentError as exc:
            findings.append(str(exc))

    check(lambda: loader.load_plateaus(data / loader.PLATEAUS_FILE))
    check(lambda: loader.load_roles(loader.resolve_roles_path(settings.roles_file, data)))
    for mapping_set in settings.mapping_sets:
        check(lambda item=mapping_set: loader.load_catalogue(data / item.file, item))
    check(lambda: loader.read_json(data / loader.DEFINITIONS_FILE))
    check(lambda: loader.read_text(prompts / "situational_context" / f"{settings.context_id}.md"))
    check(lambda: loader.read_text(prompts / "inspirations" / f"{settings.inspiration}.md"))
    for name in loader.STAGE_TEMPLATES.values():
        check(lambda name=name: loader.read_text(prompts / name))
    if not findings:
        from service_ambitions.context import build_content  # noqa: PLC0415

        check(lambda: build_content(settings))
    return findings


def _output_findings(output_file: Path, input_ids: list[str], *, allow_missing: bool) -> list[str]:
    """What a consumer relies on: a header, one record per input service, none foreign, input order."""
    from service_ambitions.domain.output import ServiceEvolution  # noqa: PLC0415
    from service_ambitions.store.reader import iter_evolutions  # noqa: PLC0415

    findings: list[str] = []
    position = {service_id: index for index, service_id in enumerate(input_ids)}
    seen: set[str] = set()
    last = -1
    header = False
    try:
        for number, item in enumerate(iter_evolutions(output_file), start=1):
            if not isinstance(item, ServiceEvolution):
                header = True
                continue
            service_id = item.service.service_id
            where = f"{output_file}:{number}"
            if service_id in seen:
                findings.append(f"{where}: service {service_id!r} appears more than once")
            elif service_id not in position:
                findings.append(f"{where}: service {service_id!r} is not in the input")
            elif position[service_id] < last:
                findings.append(f"{where}: service {service_id!r} is out of input order")
            else:
                last = position[service_id]
            seen.add(service_id)
    except ServiceAmbitionsError as exc:
        return [*findings, str(exc)]
    if not header:
        return [f"{output_file}: empty file, no header line"]
    missing = [service_id for service_id in input_ids if service_id not in seen]
    if missing and not allow_missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        findings.append(f"{output_file}: {len(missing)} input service(s) have no record: {shown}")
    return findings


@exits
def validate(
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input-file", help="Services JSONL file to check ('-' for stdin). [default: services.jsonl]"
        ),
    ] = None,
    output_file: Annotated[
        Path | None,
        typer.Option(
            "--output-file",
            help="Also check an output file: schema 1.1, a header, one record per input service, "
            "none foreign or duplicated, in input order.",
        ),
    ] = None,
    allow_missing: Annotated[
        bool,
        typer.Option("--allow-missing", help="With --output-file: input services without a record are fine."),
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    prompt_dir: PromptDirOption = None,
    roles_file: RolesFileOption = None,
) -> None:
    """Check settings, content, catalogues and the input file (and an output); never calls a model.

    Every finding is listed with its file (and line); exit 0 when clean, 3 otherwise.

    Examples:

    \b
        service-ambitions validate --input-file samples/services.jsonl
        service-ambitions validate --input-file samples/services.jsonl --output-file evolutions.jsonl
    """
    # the input reader (pydantic models): imported when the command runs, not for --help
    from service_ambitions.store.inputs import BadLine, read_services  # noqa: PLC0415
    from service_ambitions.store.spool import spooled_input  # noqa: PLC0415

    findings: list[str] = []
    try:
        settings = settings_from_flags(
            config, input_file=input_file, data_dir=data_dir, prompt_dir=prompt_dir, roles_file=roles_file
        )
    except ServiceAmbitionsError as exc:
        raise InputError(str(exc)) from None
    findings.extend(_content_findings(settings))
    input_ids: list[str] = []
    try:
        with spooled_input(settings.input_file) as input_path:
            for item in read_services(input_path):
                if isinstance(item, BadLine):
                    findings.append(f"{settings.input_file}:{item.line}: {item.reason}")
                else:
                    input_ids.append(item.service.service_id)
    except ServiceAmbitionsError as exc:
        findings.append(str(exc))
    if output_file is not None:
        findings.extend(_output_findings(output_file, input_ids, allow_missing=allow_missing))
    for finding in findings:
        err(finding)
    if findings:
        raise InputError(f"validate: {len(findings)} finding(s)")
    if not input_ids:
        err(f"warning: {settings.input_file} holds no services")
    checked = f"; {output_file} matches it" if output_file is not None else ""
    err(
        f"validate: ok ({len(input_ids)} service(s) in {settings.input_file}{checked}; "
        "content and settings valid)"
    )
