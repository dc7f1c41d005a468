"""Schemas of the model's answers, one per stage (DOMAIN §3).

The features and mapping schemas depend on the configured roles and mapping sets, so they are
built by factories; the content loader builds them once per run.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model, model_validator

__all__ = [
    "CMMI_LABELS",
    "Contribution",
    "DescriptionItem",
    "DescriptionsResponse",
    "FeatureItem",
    "MappingAnswer",
    "MappingFeature",
    "MappingResponse",
    "Score",
    "features_response_model",
    "mapping_response_model",
]

CMMI_LABELS: dict[int, str] = {
    1: "Initial",
    2: "Managed",
    3: "Defined",
    4: "Quantitatively Managed",
    5: "Optimizing",
}

NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class DescriptionItem(BaseModel):
    """The description of the service at one plateau."""

    plateau: int = Field(ge=1)
    plateau_name: NonEmpty
    description: str


class DescriptionsResponse(BaseModel):
    """Answer of the descriptions stage: one description per plateau."""

    descriptions: list[DescriptionItem]


class Score(BaseModel):
    """A CMMI maturity score; the label must match the level exactly."""

    model_config = ConfigDict(extra="forbid")

    level: Annotated[int, Field(ge=1, le=5)]
    label: Literal["Initial", "Managed", "Defined", "Quantitatively Managed", "Optimizing"]
    justification: NonEmpty

    @model_validator(mode="after")
    def _label_matches_level(self) -> Score:
        expected = CMMI_LABELS[self.level]
        if self.label != expected:
            raise ValueError(f"score label {self.label!r} does not match level {self.level} ({expected!r})")
        return self


class FeatureItem(BaseModel):
    """One feature proposed for a role at a plateau."""

    model_config = ConfigDict(extra="forbid")

    name: NonEmpty
    description: NonEmpty
    score: Score


def features_response_model(role_ids: list[str]) -> type[BaseModel]:
    """Build the features-stage schema: ``{"features": {"<role_id>": [FeatureItem, ...]}}``.

    Unknown role keys are ignored; a role the model leaves out gets no features.
    """
    fields: dict[str, Any] = {
        f"role_{index}": (list[FeatureItem], Field(default_factory=list, alias=role_id))
        for index, role_id in enumerate(role_ids)
    }
    by_role = create_model(
        "FeaturesByRole",
        __config__=ConfigDict(extra="ignore", populate_by_name=False),
        **fields,
    )
    return create_model("FeaturesResponse", features=(by_role, ...))


class Contribution(BaseModel):
    """A catalogue item supporting a feature, with facet values to be validated later."""

    model_config = ConfigDict(extra="forbid")

    item: NonEmpty
    facets: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"item": value}
        if isinstance(value, dict) and "item" not in value and "id" in value:
            return {"item": value["id"], "facets": value.get("facets")}
        return value


class MappingFeature(BaseModel):
    """Contributions for one feature: ``{"feature_id", "mappings": {"<field>": [...]}}``."""

    feature_id: NonEmpty
    mappings: dict[str, list[Contribution]]


class MappingResponse(BaseModel):
    """Answer of a mapping call (normalised to one field)."""

    features: list[MappingFeature]


class MappingAnswer(BaseModel):
    """Base of the generated per-field mapping schemas."""

    def normalised(self) -> MappingResponse:
        """Return the answer in the one canonical shape."""
        raise NotImplementedError


class _FieldContributions(BaseModel):
    """The ``{"<field>": [...]}`` object of one feature entry (the alias is set per field)."""

    model_config = ConfigDict(extra="ignore")

    contributions: list[Contribution] = Field(default_factory=list)


def _unwrap(value: Any, field: str) -> Any:
    """Accept ``{"<field>": [...]}`` nested once more than expected."""
    while isinstance(value, dict) and field in value:
        value = value[field]
    return value


def mapping_response_model(field: str) -> type[MappingAnswer]:
    """Build the mapping-stage schema for one output field, accepting the lenient shapes of DOMAIN §3.

    Accepted per feature entry: ``{"feature_id", "mappings": {field: [...]}}``, a list given as a
    sibling of ``feature_id`` (``{"feature_id", field: [...]}``), and a doubly nested
    ``{field: {field: [...]}}`` in either place. Duplicate ``feature_id`` values are invalid.
    """

    mappings_model = create_model(
        f"{field.title().replace('_', '')}Mappings",
        __base__=_FieldContributions,
        contributions=(list[Contribution], Field(default_factory=list, alias=field)),
    )

    class _Entry(BaseModel):
        feature_id: NonEmpty
        mappings: mappings_model

        @model_validator(mode="before")
        @classmethod
        def _normalise(cls, value: Any) -> Any:
            if not isinstance(value, dict):
                return value
            data = dict(value)
            nested = data.get("mappings")
            if field in data:
                sibling = _unwrap(data.pop(field), field)
                nested = {field: sibling}
            elif isinstance(nested, list):
                nested = {field: nested}
            elif isinstance(nested, dict):
                nested = {field: _unwrap(nested.get(field, []), field)}
            data["mappings"] = nested if nested is not None else {field: []}
            return data

    entry_model = create_model(f"{field.title().replace('_', '')}MappingFeature", __base__=_Entry)

    class _Response(MappingAnswer):
        features: list[entry_model]

        @model_validator(mode="after")
        def _unique_ids(self) -> _Response:
            seen: set[str] = set()
            for entry in self.features:
                if entry.feature_id in seen:
                    raise ValueError(f"duplicate feature_id {entry.feature_id!r} in mapping response")
                seen.add(entry.feature_id)
            return self

        def normalised(self) -> MappingResponse:
            """Return the answer in the one canonical shape."""
            return MappingResponse(
                features=[
                    MappingFeature(
                        feature_id=entry.feature_id,
                        mappings={field: list(entry.mappings.contributions)},
                    )
                    for entry in self.features
                ]
            )

    return create_model(f"{field.title().replace('_', '')}MappingResponse", __base__=_Response)
