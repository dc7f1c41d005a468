"""Rendering of the system prompt and the stage prompts (DOMAIN §2.3).

Every request is ordered static-first so provider prompt caches (prefix caches) hit across services:
the system prompt (identical for every call of a run), then the stage's fixed instructions and data
(for mapping: the set's catalogue and facet schema), then ``SERVICE_CONTEXT:`` with the service as
compact JSON, then the per-plateau data. A stage template marks where the service goes with a
``{service_context}`` placeholder; a template without one (an older custom ``prompt_dir``) gets
``SERVICE_CONTEXT:`` in front, as before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from service_ambitions.content.catalogue import items_json
from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.domain.reference import Catalogue, Definitions, Plateau, Role

__all__ = [
    "ROLE_STATEMENT",
    "SERVICE_SLOT",
    "StagePrompt",
    "compact",
    "render_definitions",
    "render_plateaus",
    "render_system_prompt",
    "render_template",
    "service_json",
    "user_content",
]

ROLE_STATEMENT = (
    "You are an expert service designer and enterprise architect; "
    "answer only with JSON that matches the requested schema."
)
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def compact(value: Any) -> str:
    """Compact, UTF-8 preserving JSON on one line."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


SERVICE_SLOT = "{service_context}"
"""Where a stage template puts the service (as compact JSON); filled by :func:`user_content`."""


class StagePrompt(str):
    """A rendered stage template that still has its ``{service_context}`` slot(s).

    The text is the rendered template with the slot left in; ``pieces`` are the rendered parts
    between the slots. Each part is rendered on its own, so :func:`user_content` fills the slot
    without searching text that holds substituted values (a catalogue entry that happened to contain
    the slot's text stays literal). String operations on it return a plain ``str``, which loses the
    pieces: pass it to :func:`user_content` as it is.
    """

    pieces: tuple[str, ...]

    def __new__(cls, pieces: tuple[str, ...]) -> StagePrompt:
        """The rendered ``pieces`` joined by the slot."""
        prompt = super().__new__(cls, SERVICE_SLOT.join(pieces))
        prompt.pieces = pieces
        return prompt


def _substitute(template: str, values: Mapping[str, str]) -> str:
    def _replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return values[name] if name in values else match.group(0)

    return _PLACEHOLDER.sub(_replace, template)


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Substitute ``{name}`` placeholders literally.

    Only names in ``values`` are replaced, in one pass, so JSON braces in a template and braces in
    substituted values are left alone. When the template has a ``{service_context}`` slot and
    ``values`` does not fill it, the result is a :class:`StagePrompt` for :func:`user_content`.
    """
    if SERVICE_SLOT in template and "service_context" not in values:
        return StagePrompt(tuple(_substitute(piece, values) for piece in template.split(SERVICE_SLOT)))
    return _substitute(template, values)


def render_plateaus(plateaus: list[Plateau]) -> str:
    """The plateaus as Markdown, in level order."""
    lines = ["## Service feature plateaus", ""]
    for plateau in plateaus:
        info = plateau.description
        lines.append(f"{plateau.level}. **{plateau.name}**")
        lines.append(f"   - Core idea: {info.core_idea}")
        lines.append("   - Key characteristics:")
        lines.extend(f"     - {item}" for item in info.key_characteristics)
        lines.append(f"   - What it feels like: {info.what_it_feels_like}")
    return "\n".join(lines)


def render_definitions(definitions: Definitions) -> str:
    """The glossary as Markdown."""
    lines = [f"## {definitions.title}", ""]
    for bullet in definitions.bullets:
        lines.append(f"- **{bullet.name}**: {bullet.definition}")
        extras: list[tuple[str, list[str] | None]] = [
            ("Also called", bullet.aliases),
            ("Decision rules", bullet.decision_rules),
            ("Use when", bullet.use_when),
            ("Do not confuse with", bullet.avoid_confusion_with),
            ("Examples", bullet.examples),
            ("Non-examples", bullet.non_examples),
        ]
        for label, values in extras:
            if values:
                lines.append(f"  - {label}: {'; '.join(values)}")
    return "\n".join(lines)


def render_system_prompt(
    *, situational_context: str, plateaus: list[Plateau], definitions: Definitions, inspirations: str
) -> str:
    """The system prompt shared by every call of a run."""
    blocks = [
        ROLE_STATEMENT,
        situational_context.strip(),
        render_plateaus(plateaus),
        render_definitions(definitions),
        inspirations.strip(),
    ]
    return "\n\n".join(blocks)


def service_json(service: ServiceInput) -> str:
    """The service as compact JSON, as shown to the model."""
    return compact(service.model_dump(mode="json"))


def user_content(service: ServiceInput, stage_prompt: str) -> str:
    """The user message of a call: the stage prompt with the service in its slot.

    The default templates put the fixed instructions and data first and the slot
    (``SERVICE_CONTEXT: {service_context}``) before the per-plateau data, so the start of the
    message is byte-identical across services. A stage prompt without a slot gets the service in
    front, as ``SERVICE_CONTEXT: <json>`` and a blank line.
    """
    if isinstance(stage_prompt, StagePrompt):
        return service_json(service).join(stage_prompt.pieces)
    return f"SERVICE_CONTEXT: {service_json(service)}\n\n{stage_prompt}"


def descriptions_values(plateaus: list[Plateau]) -> dict[str, str]:
    """Placeholder values of the descriptions template."""
    listing = [{"plateau": plateau.level, "plateau_name": plateau.name} for plateau in plateaus]
    return {"plateaus": compact(listing), "plateau_count": str(len(plateaus))}


def features_values(plateau: Plateau, description: str, roles: list[Role]) -> dict[str, str]:
    """Placeholder values of the features template."""
    return {
        "plateau": str(plateau.level),
        "plateau_name": plateau.name,
        "plateau_description": compact(description),
        "roles": compact([role.model_dump(mode="json") for role in roles]),
    }


def mapping_values(plateau: Plateau, catalogue: Catalogue, features: list[dict[str, str]]) -> dict[str, str]:
    """Placeholder values of the mapping template; ``features`` are ``{id, name, description}``."""
    facets = [facet.model_dump(mode="json", exclude_none=True) for facet in catalogue.facets]
    return {
        "plateau": str(plateau.level),
        "plateau_name": plateau.name,
        "field": catalogue.field,
        "label": catalogue.label or catalogue.name,
        "catalogue": compact(items_json(catalogue.items)),
        "features": compact(sorted(features, key=lambda item: item["id"])),
        "facets": compact(facets) if facets else "[]",
    }
