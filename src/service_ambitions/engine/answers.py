"""The cache keys and answers a record implies, and the per-stage probe digests of output headers.

A record holds everything its calls' prompts were built from except the settings and content of the
run: the service, and each plateau's description and features. Rebuilding the prompts with the
pipeline's own builders (``engine/pipeline.py``) under the same settings and content therefore gives
exactly the cache keys a ``run`` computes, and the answers can be rebuilt from the record. ``reverse``
stores them, so a later run is served from the cache.

Whether settings and content are the same is read from the header's ``stage_digests`` (written by
:func:`stage_digests`): per stage, and per mapping set, a digest of the keys that stage's calls have for
a fixed probe service. Equal digests mean equal models, fallbacks, model settings, re-ask bound, system
prompt, answer schema and stage prompt: everything in a key except the record's own data.

A rebuilt answer is only offered when reading it back the way the pipeline does (schema validation,
feature ids, mapping merge) gives the record's own values again; otherwise it is reported, never
guessed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from service_ambitions.content.loader import Content
from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.domain.output import PlateauFeature, PlateauResult, ServiceEvolution
from service_ambitions.domain.reference import Plateau
from service_ambitions.domain.responses import FEATURE_IDS, FINAL_ATTEMPT
from service_ambitions.engine.mapping import merge_mapping
from service_ambitions.engine.pipeline import (
    descriptions_prompt,
    feature_listing,
    features_from_answer,
    features_prompt,
    mapping_prompt,
)
from service_ambitions.llm.gateway import Gateway

__all__ = ["PROBE", "ImpliedAnswer", "RecordAnswers", "implied_answers", "mapping_label", "stage_digests"]

PROBE = ServiceInput(service_id="probe", name="probe", description="probe", jobs_to_be_done=[])
"""The service the probe keys are computed for (with a probe description and one probe feature)."""
_PROBE_TEXT = "probe"
_PROBE_FEATURES = [{"id": "PROBE0", "name": _PROBE_TEXT, "description": _PROBE_TEXT}]


def mapping_label(field_name: str) -> str:
    """The ``stage_digests`` key of one mapping set."""
    return f"mapping:{field_name}"


def _digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode("ascii")).hexdigest()


def stage_digests(content: Content, gateway: Gateway) -> dict[str, str]:
    """Per stage (``descriptions``, ``features``, ``mapping:<field>``), the digest of its probe keys."""
    digests = {
        "descriptions": _digest(
            [gateway.key("descriptions", content.descriptions_model, descriptions_prompt(content, PROBE))]
        ),
        "features": _digest(
            [
                gateway.key("features", content.features_model, features_prompt(content, PROBE, plateau, "x"))
                for plateau in content.plateaus
            ]
        ),
    }
    for catalogue in content.catalogues:
        output_type = content.mapping_models[catalogue.field]
        digests[mapping_label(catalogue.field)] = _digest(
            [
                gateway.key(
                    "mapping",
                    output_type,
                    mapping_prompt(content, PROBE, plateau, catalogue, _PROBE_FEATURES),
                )
                for plateau in content.plateaus
            ]
        )
    return digests


@dataclass(frozen=True)
class ImpliedAnswer:
    """One cache entry a record implies.

    Attributes:
        label: The ``stage_digests`` key it depends on (``descriptions``, ``features``, ``mapping:<field>``).
        key: The cache key a run computes for the call.
        payload: The entry as :meth:`Gateway.call` stores it (``output``, ``model``, ``usage``).
    """

    label: str
    key: str
    payload: dict[str, Any]


@dataclass
class RecordAnswers:
    """The answers of one record, and the labels whose answers could not be rebuilt (with why)."""

    answers: list[ImpliedAnswer] = field(default_factory=list)
    unreproducible: dict[str, str] = field(default_factory=dict)


def _entry(output: BaseModel, model: str) -> dict[str, Any]:
    # Usage is unknown (the file does not record it); a cache hit never reads it.
    return {
        "output": output.model_dump(mode="json", by_alias=True),
        "model": model,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }


def _without_mappings(features: list[PlateauFeature]) -> list[PlateauFeature]:
    return sorted(
        (feature.model_copy(update={"mappings": {}}) for feature in features),
        key=lambda item: item.feature_id,
    )


class _Rebuilder:
    def __init__(
        self, content: Content, gateway: Gateway, record: ServiceEvolution, labels: set[str]
    ) -> None:
        self.content = content
        self.gateway = gateway
        self.record = record
        self.service = record.service
        self.labels = labels
        self.result = RecordAnswers()
        self.mapping_models = {item.plateau: dict(item.mapping) for item in record.provenance.plateaus}
        self.features_models = {item.plateau: item.features for item in record.provenance.plateaus}

    def fail(self, label: str, reason: str) -> None:
        self.result.unreproducible.setdefault(label, reason)

    def add(
        self, label: str, output_type: type[BaseModel], prompt: str, output: BaseModel, model: str
    ) -> None:
        key = self.gateway.key(label.split(":", 1)[0], output_type, prompt)
        self.result.answers.append(ImpliedAnswer(label, key, _entry(output, model)))

    def descriptions(self) -> None:
        output_type = self.content.descriptions_model
        raw = {
            "descriptions": [
                {"plateau": item.plateau, "plateau_name": item.plateau_name, "description": item.description}
                for item in self.record.plateaus
            ]
        }
        try:
            output = output_type.model_validate(raw)
        except ValidationError as exc:
            self.fail("descriptions", f"the descriptions do not validate: {exc.errors()[0]['msg']}")
            return
        derived = [item.description for item in output.descriptions]
        if derived != [item.description for item in self.record.plateaus]:
            self.fail("descriptions", "a description would not be read back as recorded")
            return
        prompt = descriptions_prompt(self.content, self.service)
        self.add("descriptions", output_type, prompt, output, self.record.provenance.descriptions)

    def features(self, plateau: Plateau, recorded: PlateauResult) -> None:
        role_ids = {role.role_id for role in self.content.roles}
        if any(feature.customer_type not in role_ids for feature in recorded.features):
            self.fail("features", f"plateau {plateau.name} has features of roles that are not configured")
            return
        model = self.features_models.get(plateau.level)
        if model is None:
            self.fail("features", f"plateau {plateau.name} has no provenance")
            return
        ordered = sorted(recorded.features, key=lambda item: item.feature_id)
        raw = {
            "features": {
                role.role_id: [
                    {"name": item.name, "description": item.description, "score": item.score.model_dump()}
                    for item in ordered
                    if item.customer_type == role.role_id
                ]
                for role in self.content.roles
            }
        }
        output_type = self.content.features_model
        try:
            output = output_type.model_validate(raw)
        except ValidationError as exc:
            self.fail(
                "features", f"plateau {plateau.name}'s features do not validate: {exc.errors()[0]['msg']}"
            )
            return
        derived, _ = features_from_answer(self.content, plateau, output)
        if _without_mappings(derived) != _without_mappings(recorded.features):
            self.fail("features", f"plateau {plateau.name}'s features would not be read back as recorded")
            return
        prompt = features_prompt(self.content, self.service, plateau, recorded.description)
        self.add("features", output_type, prompt, output, model)

    def mapping(self, plateau: Plateau, recorded: PlateauResult) -> None:
        features = recorded.features
        if not features:
            return  # a plateau without features has no mapping calls
        listing = feature_listing(features)
        feature_ids = [item.feature_id for item in features]
        for catalogue in self.content.catalogues:
            label = mapping_label(catalogue.field)
            if label not in self.labels:
                continue
            model = self.mapping_models.get(plateau.level, {}).get(catalogue.field)
            if model is None or any(catalogue.field not in item.mappings for item in features):
                self.fail(label, f"plateau {plateau.name} records no {catalogue.field} mapping")
                continue
            raw = {
                "features": [
                    {
                        "feature_id": item.feature_id,
                        "mappings": {
                            catalogue.field: [
                                supporting.model_dump(mode="json")
                                for supporting in item.mappings[catalogue.field]
                            ]
                        },
                    }
                    for item in features
                ]
            }
            output_type = self.content.mapping_models[catalogue.field]
            try:
                output = output_type.model_validate(
                    raw, context={FEATURE_IDS: feature_ids, FINAL_ATTEMPT: True}
                )
            except ValidationError as exc:
                self.fail(
                    label, f"plateau {plateau.name}'s mapping does not validate: {exc.errors()[0]['msg']}"
                )
                continue
            merged = merge_mapping(
                catalogue=catalogue,
                facet_model=self.content.facet_models.get(catalogue.field),
                feature_ids=feature_ids,
                response=output.normalised(),
                plateau=plateau.level,
            )
            if any(
                merged.contributions.get(item.feature_id) != item.mappings[catalogue.field]
                for item in features
            ):
                self.fail(
                    label,
                    f"plateau {plateau.name}'s {catalogue.field} mapping would not be read back as recorded",
                )
                continue
            prompt = mapping_prompt(self.content, self.service, plateau, catalogue, listing)
            self.add(label, output_type, prompt, output, model)


def implied_answers(
    content: Content, gateway: Gateway, record: ServiceEvolution, labels: set[str]
) -> RecordAnswers:
    """The cache entries a run with the current settings would have made for ``record``.

    Args:
        content: The current content.
        gateway: The current gateway (its cache keys).
        record: A record of an evolutions file.
        labels: The ``stage_digests`` labels whose settings match the file's; others are not rebuilt.

    Returns:
        The answers, and for each label with an answer that could not be rebuilt, the first reason.
    """
    rebuild = _Rebuilder(content, gateway, record, labels)
    current = [(plateau.level, plateau.name) for plateau in content.plateaus]
    if [(item.plateau, item.plateau_name) for item in record.plateaus] != current:
        for label in sorted(labels):
            rebuild.fail(label, "its plateaus are not the configured plateaus")
        return rebuild.result
    if "descriptions" in labels:
        rebuild.descriptions()
    for plateau, recorded in zip(content.plateaus, record.plateaus, strict=True):
        if "features" in labels:
            rebuild.features(plateau, recorded)
        rebuild.mapping(plateau, recorded)
    return rebuild.result
