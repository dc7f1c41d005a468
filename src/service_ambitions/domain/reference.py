"""Reference data read from the data directory (DOMAIN §2.2)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

__all__ = [
    "Catalogue",
    "CatalogueFile",
    "CatalogueItem",
    "DefinitionBullet",
    "Definitions",
    "Facet",
    "FacetOption",
    "MappingSet",
    "Plateau",
    "PlateauDescription",
    "Role",
]

NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlateauDescription(_Strict):
    """What a maturity plateau means."""

    core_idea: NonEmpty
    key_characteristics: list[NonEmpty] = Field(min_length=1)
    what_it_feels_like: NonEmpty


class Plateau(_Strict):
    """A maturity plateau; its level is its 1-based position in the file."""

    id: NonEmpty
    name: NonEmpty
    description: PlateauDescription
    level: int = Field(default=0, exclude=True)


class Role(_Strict):
    """A customer role features are written for."""

    role_id: NonEmpty
    name: NonEmpty
    description: NonEmpty


class CatalogueItem(_Strict):
    """An application, technology or data asset a feature can map to."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: NonEmpty
    name: NonEmpty
    description: str


class FacetOption(_Strict):
    """One allowed value of an ``enum`` facet."""

    id: NonEmpty
    label: NonEmpty


class Facet(_Strict):
    """A typed attribute of a feature-to-item contribution."""

    id: NonEmpty
    label: NonEmpty
    type: Literal["string", "integer", "number", "boolean", "enum"]
    required: bool = False
    description: str | None = None
    options: list[FacetOption] | None = None

    @model_validator(mode="after")
    def _enum_has_options(self) -> Facet:
        if self.type == "enum" and not self.options:
            raise ValueError(f"facet {self.id!r} is an enum but has no options")
        return self


class CatalogueFile(_Strict):
    """The object form of a catalogue file."""

    field: NonEmpty | None = None
    label: NonEmpty | None = None
    facets: list[Facet] | None = None
    items: list[CatalogueItem]


class MappingSet(_Strict):
    """Configuration of one mapping set: which file feeds which output field."""

    name: NonEmpty
    file: NonEmpty
    field: NonEmpty


class Catalogue(_Strict):
    """A loaded catalogue: items sorted by id, with its facet schema when it has one."""

    name: str
    field: str
    label: str | None = None
    facets: list[Facet] = Field(default_factory=list)
    items: list[CatalogueItem]
    has_meta: bool = False
    meta_field: str | None = None

    def ids(self) -> frozenset[str]:
        """The set of item ids."""
        return frozenset(item.id for item in self.items)


class DefinitionBullet(_Strict):
    """One glossary entry."""

    id: NonEmpty
    name: NonEmpty
    definition: NonEmpty
    aliases: list[str] | None = None
    short_definition: str | None = None
    decision_rules: list[str] | None = None
    use_when: list[str] | None = None
    avoid_confusion_with: list[str] | None = None
    examples: list[str] | None = None
    non_examples: list[str] | None = None
    related_terms: list[str] | None = None
    tags: list[str] | None = None
    owner: str | None = None
    last_updated: str | None = None


class Definitions(_Strict):
    """The glossary shown to the model."""

    title: NonEmpty
    version: str | None = None
    last_updated: str | None = None
    bullets: list[DefinitionBullet]
