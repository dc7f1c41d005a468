"""Assembly of one plateau's result in canonical order (DOMAIN §3 step 3, §4)."""

from __future__ import annotations

from service_ambitions.domain.output import (
    FeatureRef,
    MappingGroup,
    PlateauFeature,
    PlateauResult,
    RoleFeatures,
    SupportingItem,
)
from service_ambitions.domain.reference import Catalogue, Plateau, Role

__all__ = ["assemble_plateau"]


def assemble_plateau(
    *,
    plateau: Plateau,
    description: str,
    features: list[PlateauFeature],
    roles: list[Role],
    catalogues: list[Catalogue],
    contributions: dict[str, dict[str, list[SupportingItem]]],
) -> PlateauResult:
    """Build a plateau result: features by id, roles by id, groups by item id, refs by feature id.

    Args:
        plateau: The plateau.
        description: Its description of the service.
        features: The plateau's features without mappings.
        roles: The configured roles.
        catalogues: The catalogues, in mapping-set order.
        contributions: ``field -> feature_id -> supporting items``.
    """
    complete: list[PlateauFeature] = []
    for feature in sorted(features, key=lambda item: item.feature_id):
        mappings = {
            catalogue.field: list(contributions.get(catalogue.field, {}).get(feature.feature_id, []))
            for catalogue in catalogues
        }
        complete.append(feature.model_copy(update={"mappings": mappings}))

    by_role = [
        RoleFeatures(
            role_id=role.role_id,
            name=role.name,
            description=role.description,
            features=[feature for feature in complete if feature.customer_type == role.role_id],
        )
        for role in sorted(roles, key=lambda role: role.role_id)
    ]

    groups: dict[str, list[MappingGroup]] = {}
    for catalogue in catalogues:
        names = {item.id: item.name for item in catalogue.items}
        refs: dict[str, list[FeatureRef]] = {}
        for feature in complete:
            for supporting in feature.mappings.get(catalogue.field, []):
                refs.setdefault(supporting.item, []).append(
                    FeatureRef(feature_id=feature.feature_id, description=feature.description)
                )
        groups[catalogue.field] = [
            MappingGroup(
                id=item_id,
                name=names[item_id],
                mappings=sorted(refs[item_id], key=lambda ref: ref.feature_id),
            )
            for item_id in sorted(refs)
        ]

    return PlateauResult(
        plateau=plateau.level,
        plateau_name=plateau.name,
        description=description,
        features=complete,
        roles=by_role,
        mappings=groups,
    )
