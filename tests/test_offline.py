"""The offline model: deterministic, schema-valid and derived from the prompt."""

from __future__ import annotations

import asyncio

from pydantic_ai import Agent

from service_ambitions.content.loader import load_content
from service_ambitions.content.render import features_values, mapping_values, render_template, user_content
from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.llm.offline import OfflineModel
from service_ambitions.settings import DEFAULT_MAPPING_SETS
from tests.conftest import service


def content() -> object:
    return load_content(
        data_dir=None,
        prompt_dir=None,
        roles_file=None,
        context_id="university",
        inspiration="general",
        mapping_sets=list(DEFAULT_MAPPING_SETS),
    )


async def ask(model: OfflineModel, output_type: type, system: str, prompt: str) -> object:
    agent = Agent(output_type=output_type, system_prompt=system)
    return (await agent.run(prompt, model=model)).output


def test_features_follow_jobs_and_roles() -> None:
    loaded = content()
    svc = ServiceInput.model_validate(service("LIB"))
    plateau = loaded.plateaus[1]  # type: ignore[attr-defined]
    prompt = render_template(
        loaded.templates["features"],  # type: ignore[attr-defined]
        features_values(plateau, "desc", loaded.roles),  # type: ignore[attr-defined]
    )
    output = asyncio.run(
        ask(OfflineModel(), loaded.features_model, loaded.system_prompt, user_content(svc, prompt))  # type: ignore[attr-defined]
    )
    learners = output.features.role_0  # type: ignore[attr-defined]
    academics = output.features.role_1  # type: ignore[attr-defined]
    assert [item.name for item in learners] == ["Guided: borrow a book without queueing"]
    assert [item.name for item in academics] == ["Guided: recommend reading for their unit"]
    assert learners[0].score.level == 2
    assert learners[0].score.label == "Managed"


def test_mapping_is_lexical_and_deterministic() -> None:
    loaded = content()
    svc = ServiceInput.model_validate(service("LIB"))
    plateau = loaded.plateaus[0]  # type: ignore[attr-defined]
    catalogue = loaded.catalogue("applications")  # type: ignore[attr-defined]
    features = [{"id": "F1", "name": "Borrow library books online", "description": "Loans of library books."}]
    prompt = render_template(loaded.templates["mapping"], mapping_values(plateau, catalogue, features))  # type: ignore[attr-defined]
    model_type = loaded.mapping_models["applications"]  # type: ignore[attr-defined]
    first = asyncio.run(ask(OfflineModel(), model_type, loaded.system_prompt, user_content(svc, prompt)))  # type: ignore[attr-defined]
    second = asyncio.run(ask(OfflineModel(), model_type, loaded.system_prompt, user_content(svc, prompt)))  # type: ignore[attr-defined]
    assert first == second
    items = first.normalised().features[0].mappings["applications"]  # type: ignore[attr-defined]
    names = {item.id: item.name for item in catalogue.items}
    assert any("library" in names[item.item].lower() for item in items)
    assert all(item.facets and {"integration_role", "change_type"} <= set(item.facets) for item in items)
