"""Content sources: content injected from Python objects, and the directory loader as a source."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from service_ambitions.content import ContentSource, DirectorySource, InMemorySource, Prompts, load_content
from service_ambitions.content.loader import STAGE_TEMPLATES, default_data_dir, default_prompt_dir
from service_ambitions.context import build_context
from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.domain.reference import Catalogue, CatalogueItem, Definitions, Facet, Plateau, Role
from service_ambitions.engine.engine import ProcessingEngine
from service_ambitions.engine.pipeline import ServicePipeline
from service_ambitions.errors import ContentError
from service_ambitions.llm.gateway import Gateway
from service_ambitions.settings import DEFAULT_MAPPING_SETS, load_settings
from service_ambitions.store.cache import ResponseCache
from tests.conftest import read_jsonl, service, write_jsonl

TEMPLATES = {
    "descriptions": "Describe the service at {plateau_count} plateaus.\nPLATEAUS: {plateaus}\n\n"
    "SERVICE_CONTEXT: {service_context}",
    "features": "Features per role.\nROLES: {roles}\n\nSERVICE_CONTEXT: {service_context}\n"
    "PLATEAU: {plateau} {plateau_name}\nPLATEAU_DESCRIPTION: {plateau_description}",
    "mapping": "Map to {label}.\nFIELD: {field}\nCATALOGUE: {catalogue}\nFACETS: {facets}\n\n"
    "SERVICE_CONTEXT: {service_context}\nPLATEAU: {plateau} {plateau_name}\nFEATURES: {features}",
}


def plateau(name: str, idea: str) -> dict[str, Any]:
    return {
        "id": name.lower(),
        "name": name,
        "description": {
            "core_idea": idea,
            "key_characteristics": [f"{name} characteristic"],
            "what_it_feels_like": f"It feels {name.lower()}.",
        },
    }


def source(**overrides: Any) -> InMemorySource:
    parts: dict[str, Any] = {
        "plateaus": [
            plateau("Starting", "Things work by hand."),
            plateau("Joined", "Systems talk to each other."),
        ],
        "roles": [
            Role(role_id="learners", name="Learners", description="People who study."),
            {"role_id": "academics", "name": "Academics", "description": "People who teach."},
        ],
        "catalogues": [
            Catalogue(
                name="applications",
                field="applications",
                facets=[Facet(id="criticality", label="Criticality", type="integer", required=True)],
                items=[
                    CatalogueItem(id="APP-2", name="Reading list manager", description="Lists for units"),
                    CatalogueItem(id="APP-1", name="Library loans system", description="Borrow books"),
                ],
            )
        ],
        "definitions": {
            "title": "Words we use",
            "bullets": [{"id": "f", "name": "Feature", "definition": "A thing"}],
        },
        "prompts": Prompts(
            situational_context="## Situational context\nA small college.",
            inspirations="## Inspirations\nLook around.",
            templates=TEMPLATES,
        ),
    }
    parts.update(overrides)
    return InMemorySource(**parts)


def settings(tmp: Path, **overrides: Any) -> Any:
    # The directories point nowhere: nothing may be read from them.
    missing = tmp / "no-such-dir"
    values = {"model": "offline", "cache_dir": tmp / "cache", "data_dir": missing, "prompt_dir": missing}
    return load_settings(None, {**values, **overrides})


def test_in_memory_content_is_built_without_files(isolated: Path) -> None:
    content = load_content(source())
    assert [(item.name, item.level) for item in content.plateaus] == [("Starting", 1), ("Joined", 2)]
    assert [role.role_id for role in content.roles] == ["learners", "academics"]
    assert [item.id for item in content.catalogues[0].items] == ["APP-1", "APP-2"]  # sorted by id
    assert content.files == []
    assert "1. **Starting**" in content.system_prompt
    assert "## Words we use" in content.system_prompt
    assert "A small college." in content.system_prompt
    assert content.templates == TEMPLATES
    assert set(content.mapping_models) == {"applications"}
    assert set(content.facet_models) == {"applications"}


async def test_pipeline_runs_on_injected_content(isolated: Path) -> None:
    content = load_content(source())
    run_settings = settings(isolated)
    cache = ResponseCache(run_settings.cache_dir)
    gateway = Gateway(run_settings, system_prompt=content.system_prompt, cache=cache)
    try:
        pipeline = ServicePipeline(content, gateway, plateau_concurrency=2)
        result = await pipeline.run(ServiceInput.model_validate(service("A")))
    finally:
        cache.close()
    record = result.record
    assert record is not None
    assert [(item.plateau, item.plateau_name) for item in record.plateaus] == [(1, "Starting"), (2, "Joined")]
    roles = {feature.customer_type for item in record.plateaus for feature in item.features}
    assert roles == {"learners", "academics"}
    mapped = {
        supporting.item
        for item in record.plateaus
        for feature in item.features
        for supporting in feature.mappings["applications"]
    }
    assert mapped
    assert mapped <= {"APP-1", "APP-2"}
    assert result.problems == []


async def test_engine_runs_on_injected_content(isolated: Path) -> None:
    context = build_context(settings(isolated), content_source=source())
    content = context.content
    write_jsonl(isolated / "in.jsonl", [service("A"), service("B")])
    try:
        report = await ProcessingEngine(context).run(isolated / "in.jsonl", isolated / "out.jsonl")
    finally:
        context.close()
    assert report.services_ok == 2
    header, *records = read_jsonl(isolated / "out.jsonl")
    assert header["settings"]["content_digest"] == content.digest
    assert [len(record["plateaus"]) for record in records] == [2, 2]


def test_digest_follows_the_content() -> None:
    first = load_content(source()).digest
    assert load_content(source()).digest == first
    changed = {**TEMPLATES, "mapping": TEMPLATES["mapping"] + "\nBe brief."}
    prompts = Prompts(
        situational_context="## Situational context\nA small college.", inspirations="x", templates=changed
    )
    assert load_content(source(prompts=prompts)).digest != first
    roles = [Role(role_id="learners", name="Learners", description="People who learn.")]
    assert load_content(source(roles=roles)).digest != first


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"plateaus": [plateau("Same", "a"), plateau("Same", "b")]},
            "in-memory plateaus: plateau names must be unique",
        ),
        ({"plateaus": []}, "in-memory plateaus: at least one plateau is required"),
        ({"roles": [{"role_id": "x", "name": "X"}]}, "in-memory roles: 0.description: Field required"),
        (
            {"catalogues": [Catalogue(name="apps", field="applications", items=[])]},
            "in-memory catalogue apps: the catalogue has no items",
        ),
        (
            {
                "prompts": Prompts(
                    situational_context="s", inspirations="i", templates={"features": "ROLES: {roles}"}
                )
            },
            "in-memory prompts: no template for descriptions, mapping",
        ),
        ({"definitions": {"bullets": []}}, "in-memory definitions: title: Field required"),
    ],
)
def test_in_memory_content_is_validated(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ContentError) as caught:
        source(**overrides)
    assert str(caught.value) == message


class Handmade:
    """A source written from scratch: any object with the protocol's methods."""

    def __init__(self, base: InMemorySource, roles: list[Role]) -> None:
        self.base = base
        self._roles = roles

    def plateaus(self) -> list[Plateau]:
        return self.base.plateaus()

    def roles(self) -> list[Role]:
        return self._roles

    def catalogues(self) -> list[Catalogue]:
        return self.base.catalogues()

    def definitions(self) -> Definitions:
        return self.base.definitions()

    def prompts(self) -> Prompts:
        return self.base.prompts()

    def digest(self) -> str:
        return "handmade"


def test_any_source_is_validated_by_load_content() -> None:
    role = Role(role_id="learners", name="Learners", description="People who study.")
    handmade = Handmade(source(), [role])
    assert isinstance(handmade, ContentSource)
    assert load_content(handmade).digest == "handmade"
    with pytest.raises(ContentError, match="Handmade roles: duplicate role_id learners"):
        load_content(Handmade(source(), [role, role]))


def directory_options() -> dict[str, Any]:
    return {
        "data_dir": None,
        "prompt_dir": None,
        "roles_file": None,
        "context_id": "university",
        "inspiration": "general",
        "mapping_sets": list(DEFAULT_MAPPING_SETS),
    }


def test_directory_source_is_the_keyword_form() -> None:
    by_keywords = load_content(**directory_options())
    by_source = load_content(DirectorySource(**directory_options()))
    same = ("plateaus", "roles", "catalogues", "definitions", "templates", "system_prompt", "catalogue_hash")
    assert [getattr(by_source, name) for name in same] == [getattr(by_keywords, name) for name in same]
    assert by_source.digest == by_keywords.digest
    # The digest is the one the loader always had (names and bytes of the files), so caches stay warm.
    data, prompts = default_data_dir(), default_prompt_dir()
    files = [
        data / "service_feature_plateaus.json",
        data / "roles.json",
        *(data / item.file for item in DEFAULT_MAPPING_SETS),
        data / "definitions.json",
        prompts / "situational_context" / "university.md",
        prompts / "inspirations" / "general.md",
        *(prompts / name for name in STAGE_TEMPLATES.values()),
    ]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    assert by_source.digest == digest.hexdigest()
    assert by_source.files == files


def test_directory_source_reports_a_missing_directory(tmp_path: Path) -> None:
    options = {**directory_options(), "prompt_dir": tmp_path / "gone"}
    with pytest.raises(ContentError, match=r"prompt directory .*gone does not exist"):
        load_content(DirectorySource(**options))


def test_a_source_and_directory_keywords_do_not_mix() -> None:
    with pytest.raises(TypeError, match="not both"):
        load_content(source(), data_dir=None)  # type: ignore[call-overload]
