"""What a service page shows, from one record: the plateau timeline, the role x plateau grid, the features."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from service_ambitions.domain.output import PlateauFeature, PlateauResult, ServiceEvolution
from service_ambitions.report._charts import level_class
from service_ambitions.report._labels import Labels
from service_ambitions.report._names import anchor
from service_ambitions.report._views import number

__all__ = ["FeatureView", "GridRow", "MappedItem", "PlateauView", "ServicePage", "service_page"]

MEAN_BAR = 160


@dataclass(frozen=True)
class MappedItem:
    """A catalogue item supporting a feature, with its facets as people read them."""

    set_label: str
    item_id: str
    name: str
    href: str
    facets: list[tuple[str, str]]


@dataclass(frozen=True)
class FeatureView:
    """One feature of the service."""

    anchor: str
    feature_id: str
    name: str
    description: str
    role_id: str
    role_name: str
    level: int
    label: str
    justification: str
    css: str
    items: list[MappedItem]


@dataclass(frozen=True)
class PlateauView:
    """One plateau of the service, with its features."""

    level: int
    name: str
    anchor: str
    description: str
    count: int
    mean: str
    css: str
    bar: float
    features: list[FeatureView]


@dataclass(frozen=True)
class GridRow:
    """One role: its features at each plateau."""

    role_id: str
    name: str
    cells: list[list[FeatureView]]


@dataclass(frozen=True)
class ServicePage:
    """Everything the service template needs."""

    record: ServiceEvolution
    plateaus: list[PlateauView]
    grid: list[GridRow]
    warnings: list[tuple[str, str, str]]


def _value(labels: Labels, field_name: str, facet_id: str, value: Any) -> str:
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return number(value)
    return labels.value_label(field_name, facet_id, value)


def _items(
    feature: PlateauFeature, plateau: PlateauResult, labels: Labels, index_href: str
) -> list[MappedItem]:
    items = []
    for field_name, supporting in feature.mappings.items():
        names = {group.id: group.name for group in plateau.mappings.get(field_name, [])}
        known = labels.sets[field_name].item_names if field_name in labels.sets else {}
        order = labels.facet_order(field_name)
        for contribution in supporting:
            facets = contribution.facets or {}
            keys = [key for key in order if key in facets] + [key for key in facets if key not in order]
            items.append(
                MappedItem(
                    set_label=labels.set_label(field_name),
                    item_id=contribution.item,
                    name=names.get(contribution.item) or known.get(contribution.item, contribution.item),
                    href=f"{index_href}#{anchor('item', field_name, contribution.item)}",
                    facets=[
                        (labels.facet(field_name, key).label, _value(labels, field_name, key, facets[key]))
                        for key in keys
                        if facets[key] is not None
                    ],
                )
            )
    return items


def service_page(
    record: ServiceEvolution, labels: Labels, *, index_href: str, warnings: list[tuple[str, str, str]]
) -> ServicePage:
    """The view of one record; ``index_href`` is the index relative to the page."""
    plateaus: list[PlateauView] = []
    roles: dict[str, str] = {}
    taken: set[str] = set()
    for plateau in sorted(record.plateaus, key=lambda item: item.plateau):
        for role in plateau.roles:
            roles.setdefault(role.role_id, role.name)
        features = []
        for feature in plateau.features:
            roles.setdefault(feature.customer_type, feature.role.name)
            fragment = anchor("f", str(plateau.plateau), feature.feature_id)
            while fragment in taken:  # a duplicate feature id: still one anchor each
                fragment += "-x"
            taken.add(fragment)
            features.append(
                FeatureView(
                    anchor=fragment,
                    feature_id=feature.feature_id,
                    name=feature.name,
                    description=feature.description,
                    role_id=feature.customer_type,
                    role_name=feature.role.name,
                    level=feature.score.level,
                    label=feature.score.label,
                    justification=feature.score.justification,
                    css=f"l{feature.score.level}",
                    items=_items(feature, plateau, labels, index_href),
                )
            )
        levels = [feature.level for feature in features]
        mean = sum(levels) / len(levels) if levels else None
        plateaus.append(
            PlateauView(
                level=plateau.plateau,
                name=plateau.plateau_name,
                anchor=anchor("p", str(plateau.plateau)),
                description=plateau.description,
                count=len(features),
                mean="\u2013" if mean is None else f"{mean:.1f}",
                css=level_class(mean),
                bar=0 if mean is None else round(MEAN_BAR * mean / 5, 2),
                features=features,
            )
        )
    grid = [
        GridRow(
            role_id=role_id,
            name=roles[role_id],
            cells=[[item for item in view.features if item.role_id == role_id] for view in plateaus],
        )
        for role_id in sorted(roles)
    ]
    return ServicePage(record=record, plateaus=plateaus, grid=grid, warnings=warnings)
