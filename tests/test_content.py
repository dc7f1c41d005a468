"""Default content, readers of user content directories, rendering and the catalogue hash."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service_ambitions.content.catalogue import catalogue_digest, catalogue_hash
from service_ambitions.content.loader import default_data_dir, default_prompt_dir, load_content
from service_ambitions.content.render import render_template
from service_ambitions.errors import ContentError
from service_ambitions.settings import DEFAULT_MAPPING_SETS
from service_ambitions.store.reader import read_evolutions
from tests.conftest import SAMPLES, read_jsonl, service, write_jsonl


def load(**overrides: Any) -> Any:
    options: dict[str, Any] = {
        "data_dir": None,
        "prompt_dir": None,
        "roles_file": None,
        "context_id": "university",
        "inspiration": "general",
        "mapping_sets": list(DEFAULT_MAPPING_SETS),
    }
    options.update(overrides)
    return load_content(**options)


def test_default_content_is_complete() -> None:
    content = load()
    assert [plateau.name for plateau in content.plateaus] == [
        "Foundational",
        "Enhanced",
        "Autonomous",
        "Outcome-Driven",
        "Transformative",
    ]
    assert [plateau.level for plateau in content.plateaus] == [1, 2, 3, 4, 5]
    assert [role.role_id for role in content.roles] == ["learners", "academics", "professional_staff"]
    for catalogue in content.catalogues:
        assert len(catalogue.items) >= 15
        assert catalogue.has_meta
        assert any(facet.required and facet.type == "enum" for facet in catalogue.facets)
        assert [item.id for item in catalogue.items] == sorted(item.id for item in catalogue.items)
    types = {facet.type for catalogue in content.catalogues for facet in catalogue.facets}
    assert types == {"string", "integer", "number", "boolean", "enum"}
    assert len(content.definitions.bullets) >= 10


def test_samples_are_valid_and_realistic() -> None:
    samples = read_jsonl(SAMPLES)
    assert len(samples) >= 10
    roles = {
        role["role_id"] for record in samples for job in record["jobs_to_be_done"] for role in job["role"]
    }
    assert roles == {"learners", "academics", "professional_staff"}


def test_system_prompt_blocks_and_order() -> None:
    content = load()
    prompt = content.system_prompt
    blocks = [
        "You are an expert service designer",
        "## Situational context",
        "## Service feature plateaus",
        f"## {content.definitions.title}",
        "## Inspirations",
    ]
    positions = [prompt.index(block) for block in blocks]
    assert positions == sorted(positions)
    assert prompt.startswith(blocks[0])
    assert "1. **Foundational**" in prompt
    assert "SVC-" not in prompt  # no per-record data in the shared prompt


def test_render_template_is_literal() -> None:
    template = 'Map {field} with {"features": [{"feature_id": "x"}]} and {unknown} {field}'
    rendered = render_template(template, {"field": "a{b}c", "b": "NO"})
    assert rendered == 'Map a{b}c with {"features": [{"feature_id": "x"}]} and {unknown} a{b}c'


def test_catalogue_hash_formula() -> None:
    content = load()
    catalogue = content.catalogue("applications")
    items = [
        {
            "id": item.id,
            "name": item.name,
            "description": item.description.replace("\n", " ").replace("\t", " "),
        }
        for item in sorted(catalogue.items, key=lambda item: item.id)
    ]
    meta = {
        "field": catalogue.meta_field,
        "label": catalogue.label,
        "facets": [facet.model_dump(mode="json", exclude_none=True) for facet in catalogue.facets],
    }
    compact = json.dumps({"items": items, "meta": meta}, separators=(",", ":"), ensure_ascii=False)
    assert catalogue_digest(catalogue) == hashlib.sha256(compact.encode()).hexdigest()
    combined = "|".join(sorted(f"{cat.field}:{catalogue_digest(cat)}" for cat in content.catalogues))
    assert catalogue_hash(content.catalogues) == hashlib.sha256(combined.encode()).hexdigest()


def make_user_dirs(root: Path) -> tuple[Path, Path, Path]:
    """A user data dir with list-form catalogues, a roles directory and a custom prompt dir."""
    data = root / "data"
    shutil.copytree(default_data_dir(), data)
    for name in ("applications.json", "technologies.json", "information.json"):
        raw = json.loads((data / name).read_text())
        items = list(reversed(raw["items"]))[:6]
        (data / name).write_text(json.dumps(items), encoding="utf-8")
    (data / "roles.json").unlink()
    roles_dir = root / "roles"
    roles_dir.mkdir()
    (roles_dir / "roles.json").write_text(
        json.dumps(
            [
                {"role_id": "researchers", "name": "Researchers", "description": "People who do research."},
                {"role_id": "learners", "name": "Learners", "description": "Students."},
            ]
        ),
        encoding="utf-8",
    )
    prompts = root / "prompts"
    shutil.copytree(default_prompt_dir(), prompts)
    (prompts / "situational_context" / "college.md").write_text(
        "## Situational context\n\nA small college.\n"
    )
    return data, roles_dir, prompts


def test_user_directories_list_form_and_roles_dir(isolated: Path) -> None:
    data, roles_dir, prompts = make_user_dirs(isolated)
    content = load(data_dir=data, roles_file=roles_dir, prompt_dir=prompts, context_id="college")
    assert [role.role_id for role in content.roles] == ["researchers", "learners"]
    applications = content.catalogue("applications")
    assert not applications.has_meta
    assert applications.facets == []
    assert [item.id for item in applications.items] == sorted(item.id for item in applications.items)
    assert "A small college." in content.system_prompt


def test_cli_run_honours_user_directories(cli: Callable[..., Any], isolated: Path) -> None:
    data, roles_dir, prompts = make_user_dirs(isolated)
    write_jsonl(isolated / "services.jsonl", [service("A")])
    result = cli(
        "run",
        "--data-dir",
        str(data),
        "--roles-file",
        str(roles_dir),
        "--prompt-dir",
        str(prompts),
        "--context-id",
        "college",
    )
    assert result.exit_code == 0, result.stderr
    record = read_evolutions(isolated / "evolutions.jsonl").records[0]
    plateau = record.plateaus[0]
    assert [role.role_id for role in plateau.roles] == ["learners", "researchers"]
    catalogue_ids = {item["id"] for item in json.loads((data / "applications.json").read_text())}
    used = {item.item for feature in plateau.features for item in feature.mappings["applications"]}
    assert used
    assert used <= catalogue_ids
    assert all(
        item.facets is None for feature in plateau.features for item in feature.mappings["applications"]
    )


@pytest.mark.parametrize(
    ("file", "text", "expected"),
    [
        (
            "roles.json",
            '[{"role_id": "a", "name": "A", "description": "x"},\n {"role_id": "a"',
            "roles.json:2",
        ),
        ("roles.json", '[{"role_id": "", "name": "A", "description": "x"}]', "0.role_id"),
        (
            "roles.json",
            json.dumps([{"role_id": "a", "name": "A", "description": "x"}] * 2),
            "duplicate role_id a",
        ),
        ("definitions.json", '{"title": "T", "bullets": [], "extra": 1}', "extra"),
        ("applications.json", '{"items": [], "colour": "red"}', "colour"),
        ("service_feature_plateaus.json", "[]", "at least one plateau"),
    ],
)
def test_content_errors_name_file_and_place(isolated: Path, file: str, text: str, expected: str) -> None:
    data = isolated / "data"
    shutil.copytree(default_data_dir(), data)
    (data / file).write_text(text, encoding="utf-8")
    with pytest.raises(ContentError) as caught:
        load(data_dir=data)
    assert file in str(caught.value)
    assert expected in str(caught.value)


def test_missing_prompt_file_is_named(isolated: Path) -> None:
    with pytest.raises(ContentError, match=r"situational_context/nowhere\.md"):
        load(context_id="nowhere")
