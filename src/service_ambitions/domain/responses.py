"""Schemas of the model's answers, one per stage (DOMAIN §3).

The descriptions, features and mapping schemas depend on the configured plateaus, roles and
mapping sets, so they are built by factories; the content loader builds them once per run.

Their validators also check what the answer means, not only its shape (a plateau without a
description, role keys that match no role, features left out of a mapping), so a wrong answer is
sent back to the model with a precise message by the gateway's bounded re-asks. Their extra
validation does not change the JSON schema, so cache keys stay the same.

Per-call data reaches the validators as the pydantic validation context: :data:`FEATURE_IDS` (the
plateau's feature ids, for the mapping check) is set by the caller, :data:`FINAL_ATTEMPT` by the
gateway on the last answer it will accept (and on cached answers).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "CMMI_LABELS",
    "FEATURE_IDS",
    "FINAL_ATTEMPT",
    "Contribution",
    "DescriptionItem",
    "DescriptionsResponse",
    "FeatureItem",
    "MappingAnswer",
    "MappingFeature",
    "MappingResponse",
    "Score",
    "descriptions_response_model",
    "features_response_model",
    "mapping_response_model",
    "match_key",
    "strip_preamble",
]

FEATURE_IDS = "feature_ids"
"""Validation-context key: the feature ids a mapping answer must cover (a sequence of str)."""
FINAL_ATTEMPT = "final_attempt"
"""Validation-context key: True when the answer will not be re-asked; checks that only re-ask are skipped."""

_LISTED = 20  # ids named in one re-ask message; the rest are counted
_PREAMBLE = re.compile(r"^\s*prepared plateau-\d+ description for [^:]*:\s*", re.IGNORECASE)
_NOT_ALNUM = re.compile(r"[\W_]+")


def strip_preamble(text: str) -> str:
    """Remove a leading ``Prepared plateau-<n> description for <x>:`` some models add."""
    return _PREAMBLE.sub("", text, count=1).strip()


def match_key(name: str) -> str:
    """The form names are matched in: case-folded, letters and digits only.

    ``Outcome-Driven`` and ``outcome driven`` both become ``outcomedriven``.
    """
    return _NOT_ALNUM.sub("", name.casefold())


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown if len(names) <= _LISTED else f"{shown} and {len(names) - _LISTED} more"


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


def descriptions_response_model(plateau_names: Sequence[str]) -> type[DescriptionsResponse]:
    """Build the descriptions-stage schema for the plateaus (level = 1-based position).

    Its JSON schema is that of :class:`DescriptionsResponse`. An item is matched to a plateau by
    :func:`match_key` of its name, else by its plateau number; the preamble is stripped. The
    validated answer holds one item per plateau in level order, with the canonical names. A plateau
    without a non-empty description is a validation error naming it.
    """
    names = list(plateau_names)
    levels = {match_key(name): level for level, name in enumerate(names, start=1)}
    expected = ", ".join(f"{level} {name}" for level, name in enumerate(names, start=1))

    def one_per_plateau(cls: type[BaseModel], items: list[DescriptionItem]) -> list[DescriptionItem]:
        found: dict[int, str] = {}
        empty: set[int] = set()
        unmatched: list[DescriptionItem] = []
        for item in items:
            level = levels.get(match_key(item.plateau_name))
            if level is None:
                unmatched.append(item)
            elif level not in found:
                text = strip_preamble(item.description)
                if text:
                    found[level] = text
                else:
                    empty.add(level)
        for item in unmatched:  # a misspelt name: trust the plateau number
            if item.plateau <= len(names) and item.plateau not in found:
                text = strip_preamble(item.description)
                if text:
                    found[item.plateau] = text
                else:
                    empty.add(item.plateau)
        if len(found) < len(names):
            missing = [
                f"{level} {names[level - 1]!r}" + (" (empty description)" if level in empty else "")
                for level in range(1, len(names) + 1)
                if level not in found
            ]
            message = (
                f"missing descriptions for plateau{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                f"answer one item per plateau: {expected}"
            )
            strays = [item.plateau_name for item in unmatched if item.plateau_name]
            if strays:
                message += f" (unrecognised plateau_name {_listing([repr(name) for name in strays])})"
            raise PydanticCustomError("missing_plateaus", message)
        return [
            DescriptionItem(plateau=level, plateau_name=name, description=found[level])
            for level, name in enumerate(names, start=1)
        ]

    return create_model(
        "DescriptionsResponse",
        __base__=DescriptionsResponse,
        __doc__=DescriptionsResponse.__doc__,
        __validators__={"one_per_plateau": field_validator("descriptions")(one_per_plateau)},
    )


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

    A role key that is not a role id is matched to one by :func:`match_key` (``Learners`` →
    ``learners``). Keys that still match nothing are ignored when every role is present, and a
    validation error naming them and the role ids when a role is missing; a role the model leaves
    out without a stray key gets no features.
    """
    ids = list(role_ids)
    known = frozenset(ids)
    by_key: dict[str, str] = {}
    for role_id in ids:
        by_key.setdefault(match_key(role_id), role_id)

    # No docstring: it would become the schema's description and change the cache keys.
    class _ByRole(BaseModel):
        model_config = ConfigDict(extra="ignore", populate_by_name=False)

        @model_validator(mode="before")
        @classmethod
        def _match_roles(cls, value: Any) -> Any:
            if not isinstance(value, dict) or known <= value.keys():
                return value
            matched = {role_id: value[role_id] for role_id in ids if role_id in value}
            unknown: list[str] = []
            for key, items in value.items():
                if key in known:
                    continue
                role_id = by_key.get(match_key(key)) if isinstance(key, str) else None
                if role_id is None:
                    unknown.append(repr(key))
                else:
                    matched.setdefault(role_id, items)  # an exact key wins over a near one
            missing = [role_id for role_id in ids if role_id not in matched]
            if missing and unknown:
                raise PydanticCustomError(
                    "unknown_role_keys",
                    f"unknown role key{'s' if len(unknown) > 1 else ''} {_listing(unknown)}: "
                    f"key the features by the role ids {', '.join(ids)} "
                    f"(missing: {', '.join(missing)})",
                )
            return matched

    fields: dict[str, Any] = {
        f"role_{index}": (list[FeatureItem], Field(default_factory=list, alias=role_id))
        for index, role_id in enumerate(ids)
    }
    by_role = create_model("FeaturesByRole", __base__=_ByRole, **fields)
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

        @field_validator("features")
        @classmethod
        def _all_features(cls, entries: list[_Entry], info: ValidationInfo) -> list[_Entry]:
            # Only re-asks: after the last one, a feature left out is merged as [] and reported.
            context = info.context
            if not context or context.get(FINAL_ATTEMPT) or not context.get(FEATURE_IDS):
                return entries
            answered = {entry.feature_id for entry in entries}
            wanted: Sequence[str] = context[FEATURE_IDS]
            missing = [feature for feature in wanted if feature not in answered]
            if missing:
                raise PydanticCustomError(
                    "missing_features",
                    f"missing entries for {len(missing)} of {len(wanted)} feature(s): {_listing(missing)}; "
                    f"answer one entry per feature id in FEATURES, with an empty {field} list "
                    "when no item applies",
                )
            return entries

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
