"""``service-ambitions validate``: check settings, content, catalogues and input without calling a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
from service_ambitions.content import loader
from service_ambitions.errors import ContentError, ExitCode, ServiceAmbitionsError
from service_ambitions.settings import Settings
from service_ambitions.store.inputs import BadLine, read_services
from service_ambitions.store.reader import iter_evolutions

__all__ = ["validate"]


def _content_findings(settings: Settings) -> list[str]:
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


@exits
def validate(
    input_file: Annotated[
        Path | None,
        typer.Option("--input-file", help="Services JSONL file to check. [default: services.jsonl]"),
    ] = None,
    output_file: Annotated[
        Path | None,
        typer.Option("--output-file", help="Also validate an existing output file against schema 1.1."),
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    prompt_dir: PromptDirOption = None,
    roles_file: RolesFileOption = None,
) -> None:
    """Check settings, content, catalogues and the input file; never calls a model.

    Every finding is listed with its file (and line); exit 0 when clean, 3 otherwise.

    Example:
        service-ambitions validate --input-file samples/services.jsonl
    """
    findings: list[str] = []
    try:
        settings = settings_from_flags(
            config, input_file=input_file, data_dir=data_dir, prompt_dir=prompt_dir, roles_file=roles_file
        )
    except ServiceAmbitionsError as exc:
        err(f"error: {exc}")
        raise typer.Exit(int(ExitCode.INPUT)) from None
    findings.extend(_content_findings(settings))
    services = 0
    try:
        for item in read_services(settings.input_file):
            if isinstance(item, BadLine):
                findings.append(f"{settings.input_file}:{item.line}: {item.reason}")
            else:
                services += 1
    except ServiceAmbitionsError as exc:
        findings.append(str(exc))
    if output_file is not None:
        try:
            for _ in iter_evolutions(output_file):
                pass
        except ServiceAmbitionsError as exc:
            findings.append(str(exc))
    for finding in findings:
        err(finding)
    if findings:
        err(f"validate: {len(findings)} finding(s)")
        raise typer.Exit(int(ExitCode.INPUT))
    err(f"validate: ok ({services} service(s) in {settings.input_file}; content and settings valid)")
