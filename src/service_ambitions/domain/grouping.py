"""Canonical order and grouping of one plateau's features (DOMAIN §4).

Features by id, roles by id (each with its features), mapping groups by catalogue item id (each with
references to the features it supports, by feature id). The engine's assembly (``engine/assemble.py``)
and the 1.0 → 1.1 migration (``store/migrate.py``) both build a plateau's ``roles`` and ``mappings``
here, so a migrated file and a fresh run order them the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from service_ambitions.domain.output import FeatureRef, MappingGroup, PlateauFeature, RoleFeatures
from service_ambitions.domain.reference import Role

__all__ = ["by_feature_id", "mapping_group", "mapping_groups", "role_features"]


class _Identified(Protocol):
    @property
    def feature_id(self) -> str: ...


_Feature = TypeVar("_Feature", bound=_Identified)


def by_feature_id(features: Iterable[_Feature]) -> list[_Feature]:
    """``features`` (or feature references) in canonical order: by ``feature_id``, stable."""
    return sorted(features, key=lambda feature: feature.feature_id)


def role_features(roles: Iterable[Role], features: Sequence[PlateauFeature]) -> list[RoleFeatures]:
    """One entry per role, by role id, with the features (in the order given) whose ``customer_type`` it is.

    A role without features is listed with an empty list.
    """
    return [
        RoleFeatures(
            role_id=role.role_id,
            name=role.name,
            description=role.description,
            features=[feature for feature in features if feature.customer_type == role.role_id],
        )
        for role in sorted(roles, key=lambda role: role.role_id)
    ]


def mapping_group(item_id: str, name: str, refs: Iterable[FeatureRef]) -> MappingGroup:
    """One catalogue item's group, its feature references by feature id."""
    return MappingGroup(id=item_id, name=name, mappings=by_feature_id(refs))


def mapping_groups(
    field: str, features: Iterable[PlateauFeature], name_of: Callable[[str], str]
) -> list[MappingGroup]:
    """The groups of one mapping set: every item some feature's ``mappings[field]`` names, by item id.

    Args:
        field: The mapping set's field.
        features: The plateau's features, with their mappings.
        name_of: The display name of an item id (the catalogue's name, or what a 1.0 record said).
    """
    refs: dict[str, list[FeatureRef]] = {}
    for feature in features:
        for supporting in feature.mappings.get(field, []):
            refs.setdefault(supporting.item, []).append(
                FeatureRef(feature_id=feature.feature_id, description=feature.description)
            )
    return [mapping_group(item_id, name_of(item_id), refs[item_id]) for item_id in sorted(refs)]
