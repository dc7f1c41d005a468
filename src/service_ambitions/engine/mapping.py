"""Merging one mapping answer into the plateau's features (DOMAIN §3 "Mapping merge", "Facets")."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from service_ambitions.content.catalogue import facet_error
from service_ambitions.domain.output import SupportingItem
from service_ambitions.domain.reference import Catalogue
from service_ambitions.domain.responses import MappingResponse
from service_ambitions.engine.problems import Problem
from service_ambitions.errors import QuarantineKind

__all__ = ["MergeResult", "merge_mapping"]


@dataclass
class MergeResult:
    """Per-feature contributions of one mapping set, and what was wrong with the answer."""

    contributions: dict[str, list[SupportingItem]]
    problems: list[Problem] = field(default_factory=list)
    unknown_count: int = 0


def merge_mapping(
    *,
    catalogue: Catalogue,
    facet_model: type[BaseModel] | None,
    feature_ids: list[str],
    response: MappingResponse,
    plateau: int,
) -> MergeResult:
    """Merge a mapping answer.

    Features missing from the answer get ``[]`` (reported; the mapping schema re-asks for them first,
    so this is the answer of the last attempt); contributions naming items outside the
    catalogue are dropped (reported as ``unknown_ids``); answer entries for unknown feature ids are
    ignored; facet values are validated against the set's facet schema (violations reported as
    ``facet_validation``, the item is kept without facets).
    """
    field_name = catalogue.field
    known_items = catalogue.ids()
    wanted = set(feature_ids)
    contributions: dict[str, list[SupportingItem]] = {feature: [] for feature in feature_ids}
    answered: set[str] = set()
    unknown: list[dict[str, str]] = []
    facet_problems: list[dict[str, str]] = []
    ignored: list[str] = []

    for entry in response.features:
        if entry.feature_id not in wanted:
            ignored.append(entry.feature_id)
            continue
        answered.add(entry.feature_id)
        seen_items: set[str] = set()
        for contribution in entry.mappings.get(field_name, []):
            if contribution.item not in known_items:
                unknown.append({"feature_id": entry.feature_id, "item": contribution.item})
                continue
            if contribution.item in seen_items:
                continue
            seen_items.add(contribution.item)
            facets = contribution.facets
            if facet_model is not None:
                if facets is None:
                    facet_problems.append(
                        {
                            "feature_id": entry.feature_id,
                            "item": contribution.item,
                            "error": "facets object missing",
                        }
                    )
                else:
                    try:
                        facets = facet_model.model_validate(facets).model_dump(mode="json", exclude_none=True)
                    except ValidationError as exc:
                        facet_problems.append(
                            {
                                "feature_id": entry.feature_id,
                                "item": contribution.item,
                                "error": f"invalid facets: {facet_error(exc)}",
                                "facets": repr(facets),
                            }
                        )
                        facets = None
            contributions[entry.feature_id].append(SupportingItem(item=contribution.item, facets=facets))

    base = {"plateau": plateau, "field": field_name}
    problems: list[Problem] = []
    missing = [feature for feature in feature_ids if feature not in answered]
    if missing:
        problems.append(
            Problem(
                QuarantineKind.SCHEMA_MISMATCH,
                "mapping",
                f"{len(missing)} feature(s) missing from the {field_name} answer at plateau {plateau}: "
                + ", ".join(missing),
                {**base, "missing_feature_ids": missing},
            )
        )
    if unknown:
        problems.append(
            Problem(
                QuarantineKind.UNKNOWN_IDS,
                "mapping",
                f"{len(unknown)} unknown {field_name} id(s) dropped at plateau {plateau}: "
                + ", ".join(sorted({item["item"] for item in unknown})),
                {**base, "unknown": unknown},
            )
        )
    if facet_problems:
        problems.append(
            Problem(
                QuarantineKind.FACET_VALIDATION,
                "mapping",
                f"{len(facet_problems)} {field_name} contribution(s) with invalid facets "
                f"at plateau {plateau}: "
                + "; ".join(
                    f"{item['item']} for {item['feature_id']}: {item['error']}" for item in facet_problems[:5]
                ),
                {**base, "violations": facet_problems},
            )
        )
    if feature_ids and not any(contributions.values()):
        problems.append(
            Problem(
                QuarantineKind.SCHEMA_MISMATCH,
                "mapping",
                f"the {field_name} set is empty at plateau {plateau}: no feature maps to any item",
                {**base, "empty_set": True},
            )
        )
    result = MergeResult(contributions=contributions, problems=problems, unknown_count=len(unknown))
    if ignored:
        result.problems.append(
            Problem(
                QuarantineKind.SCHEMA_MISMATCH,
                "mapping",
                f"ignored answers for unknown feature id(s): {', '.join(sorted(set(ignored)))}",
                {**base, "ignored_feature_ids": sorted(set(ignored))},
                warning_only=True,
            )
        )
    return result
