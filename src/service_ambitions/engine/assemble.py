"""Assembly of one plateau's result in canonical order (DOMAIN §3 step 3, §4).

The order and grouping themselves are the domain's (``domain/grouping.py``), shared with the 1.0 → 1.1
migration; this module fills in each feature's mappings from the merged mapping answers.
"""

from __future__ import annotations

from service_ambitions.domain.grouping import by_feature_id, mapping_groups, role_features
from service_ambitions.domain.output import MappingGroup, PlateauFeature, PlateauResult, SupportingItem
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
    for feature in by_feature_id(features):
        mappings = {
            catalogue.field: list(contributions.get(catalogue.field, {}).get(feature.feature_id, []))
            for catalogue in catalogues
        }
        complete.append(feature.model_copy(update={"mappings": mappings}))
    groups: dict[str, list[MappingGroup]] = {}
    for catalogue in catalogues:
        names = {item.id: item.name for item in catalogue.items}
        groups[catalogue.field] = mapping_groups(catalogue.field, complete, names.__getitem__)
    return PlateauResult(
        plateau=plateau.level,
        plateau_name=plateau.name,
        description=description,
        features=complete,
        roles=role_features(roles, complete),
        mappings=groups,
    )
