"""Output records of ``evolutions.jsonl`` (schema 1.1, DOMAIN §4); their canonical order is ``grouping``'s."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.domain.reference import Role
from service_ambitions.domain.responses import Score
from service_ambitions.domain.shard import MergedShard, Shard

__all__ = [
    "SCHEMA_VERSION",
    "FeatureRef",
    "Header",
    "MappingGroup",
    "PlateauFeature",
    "PlateauProvenance",
    "PlateauResult",
    "Provenance",
    "RoleFeatures",
    "ServiceEvolution",
    "SupportingItem",
]

SCHEMA_VERSION: Literal["1.1"] = "1.1"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SupportingItem(_Record):
    """A catalogue item supporting one feature, with its validated facet values."""

    item: str
    facets: dict[str, Any] | None = None


class PlateauFeature(_Record):
    """A feature of one role at one plateau."""

    feature_id: str
    name: str
    description: str
    score: Score
    customer_type: str
    role: Role
    mappings: dict[str, list[SupportingItem]] = Field(default_factory=dict)


class RoleFeatures(_Record):
    """The features of one role at one plateau."""

    role_id: str
    name: str
    description: str
    features: list[PlateauFeature]


class FeatureRef(_Record):
    """A reference from a catalogue item to a feature it supports."""

    feature_id: str
    description: str


class MappingGroup(_Record):
    """A catalogue item and the features of the plateau it supports."""

    id: str
    name: str
    mappings: list[FeatureRef]


class PlateauResult(_Record):
    """The service at one plateau."""

    plateau: int
    plateau_name: str
    description: str
    features: list[PlateauFeature]
    roles: list[RoleFeatures]
    mappings: dict[str, list[MappingGroup]]


class PlateauProvenance(_Record):
    """Which model answered the calls of one plateau."""

    plateau: int
    features: str
    mapping: dict[str, str]


class Provenance(_Record):
    """Which model actually answered each call (fallbacks can differ from configuration)."""

    descriptions: str
    plateaus: list[PlateauProvenance]


class ServiceEvolution(_Record):
    """One output record: a service across all plateaus."""

    schema_version: Literal["1.1"] = SCHEMA_VERSION
    service: ServiceInput
    plateaus: list[PlateauResult]
    provenance: Provenance


class Header(_Record):
    """Line 1 of an output file: how the file was produced. Never holds secrets or wall-clock time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    record_type: Literal["header"] = "header"
    schema_version: Literal["1.1"] = SCHEMA_VERSION
    tool_version: str
    git_sha: str | None = None
    run_id: str
    seed: int | None = None
    models: dict[str, str]
    synthetic: bool = Field(description="True when the synthetic offline model is configured for any stage.")
    mapping_sets: list[str]
    catalogue_hash: str
    input_digest: str
    settings: dict[str, Any]
    migrated_from: list[dict[str, Any]] | None = None
    source_digest: str | None = Field(
        default=None,
        description="SHA-256 of the evolutions or features file the records were read from (map, reverse).",
    )
    stage_digests: dict[str, str] | None = Field(
        default=None,
        description="Per stage (mapping: per set, 'mapping:<field>'), a digest of the cache keys the stage's "
        "calls had for a fixed probe record: equal digests mean equal models, settings, prompts and content.",
    )
    shard: Shard | None = Field(
        default=None,
        description="The shard of the input this file holds (`run --shard K/N`); absent otherwise.",
    )
    shards: list[MergedShard] | None = Field(
        default=None, description="The shard files a `merge` made this file from; absent otherwise."
    )

    @model_serializer(mode="wrap")
    def _omit_unsharded(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Written only when set: the header of an unsharded run stays byte for byte what it was.
        data: dict[str, Any] = handler(self)
        for key in _SHARD_KEYS:
            if data.get(key) is None:
                data.pop(key, None)
        return data


_SHARD_KEYS = ("shard", "shards")
