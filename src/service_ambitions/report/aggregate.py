"""Portfolio aggregates, accumulated one record at a time.

The report streams the evolutions file: each record is rendered into its own page, folded into a
:class:`Portfolio` and dropped. What the portfolio keeps is bounded by the number of services (one small
:class:`ServiceSummary` each), plateaus x roles, and the catalogue items used x plateaus x facet values;
never features.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from dataclasses import field as default
from typing import Any

from service_ambitions.domain.output import Header, ServiceEvolution, SupportingItem
from service_ambitions.report._labels import value_key

__all__ = ["FacetTally", "ItemCoverage", "LevelStats", "Portfolio", "ServiceSummary", "SetCoverage"]

DISTINCT_VALUES = 24
"""Distinct values of one facet counted one by one; more than this and the facet is free text."""


@dataclass(slots=True)
class LevelStats:
    """Feature count and CMMI level sum, for a mean level."""

    count: int = 0
    total: int = 0

    def add(self, level: int) -> None:
        """Count one feature with its CMMI level."""
        self.count += 1
        self.total += level

    @property
    def mean(self) -> float | None:
        """The mean CMMI level, ``None`` without features."""
        return self.total / self.count if self.count else None


@dataclass
class FacetTally:
    """How often each value of one facet was given, and numeric statistics for numeric values."""

    values: Counter[str] = default(default_factory=Counter)
    other: int = 0
    """Values past :data:`DISTINCT_VALUES` distinct ones."""
    given: int = 0
    missing: int = 0
    numbers: int = 0
    number_sum: float = 0.0
    number_min: float | None = None
    number_max: float | None = None

    def add(self, value: Any) -> None:
        """Count one value (``None``: the facet was not given)."""
        key = value_key(value)
        if key is None:
            self.missing += 1
            return
        self.given += 1
        if isinstance(value, int | float) and not isinstance(value, bool):
            self.numbers += 1
            self.number_sum += value
            self.number_min = value if self.number_min is None else min(self.number_min, value)
            self.number_max = value if self.number_max is None else max(self.number_max, value)
        if key in self.values or len(self.values) < DISTINCT_VALUES:
            self.values[key] += 1
        else:
            self.other += 1

    def merge(self, other: FacetTally) -> None:
        """Add another tally's counts (for totals across plateaus)."""
        for key, count in other.values.items():
            if key in self.values or len(self.values) < DISTINCT_VALUES:
                self.values[key] += count
            else:
                self.other += count
        self.other += other.other
        self.given += other.given
        self.missing += other.missing
        self.numbers += other.numbers
        self.number_sum += other.number_sum
        for bound in (other.number_min, other.number_max):
            if bound is not None:
                self.number_min = bound if self.number_min is None else min(self.number_min, bound)
                self.number_max = bound if self.number_max is None else max(self.number_max, bound)

    @property
    def number_mean(self) -> float | None:
        """The mean of the numeric values."""
        return self.number_sum / self.numbers if self.numbers else None


@dataclass
class ItemCoverage:
    """One catalogue item: features it supports per plateau, and its facet values per plateau."""

    item_id: str
    name: str
    per_plateau: Counter[int] = default(default_factory=Counter)
    facets: dict[tuple[int, str], FacetTally] = default(default_factory=dict)

    @property
    def total(self) -> int:
        """Features supported across every plateau."""
        return sum(self.per_plateau.values())

    def tally(self, facet_id: str, plateau: int | None = None) -> FacetTally:
        """The facet's values at one plateau, or summed over every plateau."""
        if plateau is not None:
            return self.facets.get((plateau, facet_id), FacetTally())
        total = FacetTally()
        for (_, key), tally in sorted(self.facets.items()):
            if key == facet_id:
                total.merge(tally)
        return total


@dataclass
class SetCoverage:
    """Coverage of one mapping set: the items used and the facets seen, in first-seen order."""

    field: str
    items: dict[str, ItemCoverage] = default(default_factory=dict)
    facet_ids: dict[str, None] = default(default_factory=dict)
    distinct: dict[str, set[str]] = default(default_factory=dict)
    contributions: int = 0

    def free_text(self, facet_id: str) -> bool:
        """More distinct values than a breakdown can show: count how often it is given instead."""
        return len(self.distinct.get(facet_id, ())) > DISTINCT_VALUES

    def ranked(self) -> list[ItemCoverage]:
        """Items by features supported (most first), then by id."""
        return sorted(self.items.values(), key=lambda item: (-item.total, item.item_id))


@dataclass(slots=True)
class ServiceSummary:
    """What the index shows of one service."""

    service_id: str
    name: str
    href: str
    anchor: str
    plateaus: dict[int, LevelStats]
    features: int
    contributions: int
    warnings: int


@dataclass
class Portfolio:
    """Every aggregate the index needs, built one record at a time."""

    header: Header
    plateaus: dict[int, str] = default(default_factory=dict)
    roles: dict[str, str] = default(default_factory=dict)
    by_plateau_role: dict[tuple[int, str], LevelStats] = default(default_factory=dict)
    by_plateau: dict[int, LevelStats] = default(default_factory=dict)
    services: list[ServiceSummary] = default(default_factory=list)
    coverage: dict[str, SetCoverage] = default(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.header.mapping_sets:
            self.coverage[name] = SetCoverage(field=name)

    @property
    def features(self) -> int:
        """Features across the portfolio."""
        return sum(stats.count for stats in self.by_plateau.values())

    def add(self, record: ServiceEvolution, *, href: str, anchor: str, warnings: int = 0) -> ServiceSummary:
        """Fold one record into the aggregates and return its summary row."""
        per_plateau: dict[int, LevelStats] = {}
        contributions = 0
        for plateau in record.plateaus:
            self.plateaus.setdefault(plateau.plateau, plateau.plateau_name)
            stats = per_plateau.setdefault(plateau.plateau, LevelStats())
            names = {
                field_name: {group.id: group.name for group in groups}
                for field_name, groups in plateau.mappings.items()
            }
            for feature in plateau.features:
                level = feature.score.level
                stats.add(level)
                self.by_plateau.setdefault(plateau.plateau, LevelStats()).add(level)
                self.roles.setdefault(feature.customer_type, feature.role.name)
                key = (plateau.plateau, feature.customer_type)
                self.by_plateau_role.setdefault(key, LevelStats()).add(level)
                for field_name, supporting in feature.mappings.items():
                    coverage = self.coverage.setdefault(field_name, SetCoverage(field=field_name))
                    seen: set[str] = set()
                    for contribution in supporting:
                        if contribution.item in seen:
                            continue  # the same item twice for one feature supports it once
                        seen.add(contribution.item)
                        contributions += 1
                        coverage.contributions += 1
                        self._count_item(coverage, names.get(field_name, {}), plateau.plateau, contribution)
        summary = ServiceSummary(
            service_id=record.service.service_id,
            name=record.service.name,
            href=href,
            anchor=anchor,
            plateaus=per_plateau,
            features=sum(stats.count for stats in per_plateau.values()),
            contributions=contributions,
            warnings=warnings,
        )
        self.services.append(summary)
        return summary

    @staticmethod
    def _count_item(
        coverage: SetCoverage, names: dict[str, str], plateau: int, contribution: SupportingItem
    ) -> None:
        item = coverage.items.get(contribution.item)
        if item is None:
            item = coverage.items[contribution.item] = ItemCoverage(
                item_id=contribution.item, name=names.get(contribution.item, contribution.item)
            )
        elif item.name == item.item_id and contribution.item in names:
            item.name = names[contribution.item]
        item.per_plateau[plateau] += 1
        for facet_id, value in (contribution.facets or {}).items():
            coverage.facet_ids.setdefault(facet_id, None)
            key = value_key(value)
            distinct = coverage.distinct.setdefault(facet_id, set())
            if key is not None and len(distinct) <= DISTINCT_VALUES:
                distinct.add(key)
            item.facets.setdefault((plateau, facet_id), FacetTally()).add(value)
