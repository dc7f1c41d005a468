"""What the index template draws, computed from the aggregates: heatmaps, facet breakdowns, role tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service_ambitions.report._charts import (
    QUALITATIVE,
    LegendEntry,
    Segment,
    heat_class,
    heat_legend,
    level_class,
    stack,
    truncate,
)
from service_ambitions.report._labels import FREE_TEXT, Labels, humanize
from service_ambitions.report._names import anchor
from service_ambitions.report.aggregate import FacetTally, ItemCoverage, LevelStats, Portfolio, SetCoverage

__all__ = [
    "Breakdown",
    "FacetLegend",
    "HeatCell",
    "HeatRow",
    "Heatmap",
    "LevelCell",
    "PlateauBar",
    "RoleRow",
    "heatmaps",
    "level_cell",
    "number",
    "plateau_bars",
    "role_rows",
]

Kind = Literal["values", "numbers", "text"]

LABEL_WIDTH = 330
CELL_WIDTH = 96
CELL_HEIGHT = 22
HEAD_HEIGHT = 36
TOTAL_WIDTH = 150
BREAKDOWN_WIDTH = 120
BAR_WIDTH = 520
BAR_HEIGHT = 22
BAR_LABEL = 150


def number(value: float) -> str:
    """``3`` for whole numbers, else up to two decimals."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Breakdown:
    """The values one facet took (for one item, at one plateau or overall)."""

    label: str
    kind: Kind
    summary: str
    segments: list[Segment]


@dataclass(frozen=True)
class FacetLegend:
    """A facet's colours: one entry per value, in schema order when the schema is known."""

    facet_id: str
    label: str
    description: str | None
    kind: Kind
    entries: list[LegendEntry]


@dataclass(frozen=True)
class HeatCell:
    """One item x plateau cell."""

    x: int
    count: int
    css: str
    title: str

    @property
    def ink(self) -> str:
        """Light text on the darker classes."""
        return "inv" if self.css in {"h5", "h6", "h7"} else ""


@dataclass(frozen=True)
class HeatRow:
    """One catalogue item: its cells, its total bar and its facet breakdown across plateaus."""

    item_id: str
    name: str
    label: str
    anchor: str
    y: int
    total: int
    bar: float
    cells: list[HeatCell]
    breakdowns: list[Breakdown]


@dataclass(frozen=True)
class Heatmap:
    """The coverage heatmap of one mapping set."""

    field: str
    label: str
    anchor: str
    width: int
    height: int
    total_x: int
    columns: list[tuple[int, int, str]]
    rows: list[HeatRow]
    legend: list[LegendEntry]
    facets: list[FacetLegend]
    contributions: int


class _FacetPlan:
    """How one facet of a set is shown, and the colour of each of its values."""

    def __init__(self, coverage: SetCoverage, labels: Labels, facet_id: str) -> None:
        info = labels.facet(coverage.field, facet_id)
        self.facet_id = facet_id
        self.label = info.label
        self.description = info.description
        overall = FacetTally()
        for item in coverage.items.values():
            overall.merge(item.tally(facet_id))
        self.kind: Kind
        if info.type in {"integer", "number"} or (
            info.type is None and overall.given and overall.numbers == overall.given
        ):
            self.kind = "numbers"
        elif info.type == FREE_TEXT or (info.type is None and coverage.free_text(facet_id)):
            self.kind = "text"
        else:
            self.kind = "values"
        seen = sorted(coverage.distinct.get(facet_id, set()))
        order = list(info.options) if info.options else (["true", "false"] if info.type == "boolean" else [])
        order += [key for key in seen if key not in order]
        self.order = order
        self.css = {key: f"k{index % QUALITATIVE}" for index, key in enumerate(order)}
        self._options = info.options
        self._type = info.type

    def value_label(self, key: str) -> str:
        if key in self._options:
            return self._options[key]
        if key in {"true", "false"} and self._type in {None, "boolean"}:
            return "Yes" if key == "true" else "No"
        return humanize(key)

    def legend(self) -> FacetLegend:
        entries = [LegendEntry(self.css[key], self.value_label(key)) for key in self.order]
        if self.kind != "values":
            entries = []
        return FacetLegend(self.facet_id, self.label, self.description, self.kind, entries)

    def breakdown(self, tally: FacetTally, contributions: int) -> Breakdown:
        if self.kind == "numbers":
            if tally.number_mean is None or tally.number_min is None or tally.number_max is None:
                summary = "not given"
            else:
                spread = f"{number(tally.number_min)}\u2013{number(tally.number_max)}"
                summary = f"mean {number(round(tally.number_mean, 2))} ({spread}), given {tally.numbers}"
            return Breakdown(self.label, self.kind, summary, [])
        if self.kind == "text":
            return Breakdown(self.label, self.kind, f"given in {tally.given} of {contributions}", [])
        parts = [
            (self.css.get(key, "kx"), self.value_label(key), tally.values[key])
            for key in self.order
            if tally.values.get(key)
        ]
        if tally.other:
            parts.append(("kx", "other values", tally.other))
        summary = " · ".join(f"{label} {count}" for _, label, count in parts) or "not given"
        if tally.missing and parts:
            summary += f" · not given {tally.missing}"
        return Breakdown(self.label, self.kind, summary, stack(parts, BREAKDOWN_WIDTH))


def _cell_title(
    item: ItemCoverage, plateau_name: str, count: int, breakdowns: list[Breakdown], set_label: str
) -> str:
    lines = [f"{item.item_id} {item.name} ({set_label}) at {plateau_name}: {count} feature(s)"]
    lines += [f"{breakdown.label}: {breakdown.summary}" for breakdown in breakdowns if count]
    return "\n".join(lines)


def _heatmap(coverage: SetCoverage, labels: Labels, plateaus: dict[int, str]) -> Heatmap:
    set_label = labels.set_label(coverage.field)
    facet_ids = [key for key in labels.facet_order(coverage.field) if key in coverage.facet_ids]
    facet_ids += [key for key in coverage.facet_ids if key not in facet_ids]
    plans = [_FacetPlan(coverage, labels, facet_id) for facet_id in facet_ids]
    ranked = coverage.ranked()
    maximum = max((count for item in ranked for count in item.per_plateau.values()), default=0)
    largest_total = max((item.total for item in ranked), default=0)
    levels = sorted(plateaus)
    total_x = LABEL_WIDTH + CELL_WIDTH * len(levels) + 12
    rows: list[HeatRow] = []
    for index, item in enumerate(ranked):
        cells = []
        for column, level in enumerate(levels):
            count = item.per_plateau.get(level, 0)
            at_plateau = [plan.breakdown(item.tally(plan.facet_id, level), count) for plan in plans]
            cells.append(
                HeatCell(
                    x=LABEL_WIDTH + CELL_WIDTH * column,
                    count=count,
                    css=heat_class(count, maximum),
                    title=_cell_title(item, plateaus[level], count, at_plateau, set_label),
                )
            )
        rows.append(
            HeatRow(
                item_id=item.item_id,
                name=item.name,
                label=truncate(f"{item.item_id} {item.name}", 46),
                anchor=anchor("item", coverage.field, item.item_id),
                y=HEAD_HEIGHT + CELL_HEIGHT * index,
                total=item.total,
                bar=round((TOTAL_WIDTH - 40) * item.total / largest_total, 2) if largest_total else 0,
                cells=cells,
                breakdowns=[plan.breakdown(item.tally(plan.facet_id), item.total) for plan in plans],
            )
        )
    return Heatmap(
        field=coverage.field,
        label=set_label,
        anchor=anchor("set", coverage.field),
        width=total_x + TOTAL_WIDTH,
        height=HEAD_HEIGHT + CELL_HEIGHT * len(rows) + 4,
        total_x=total_x,
        columns=[
            (LABEL_WIDTH + CELL_WIDTH * column, level, plateaus[level]) for column, level in enumerate(levels)
        ],
        rows=rows,
        legend=heat_legend(maximum),
        facets=[plan.legend() for plan in plans],
        contributions=coverage.contributions,
    )


def heatmaps(portfolio: Portfolio, labels: Labels) -> list[Heatmap]:
    """One heatmap per mapping set, in the header's order (then any other field the records use)."""
    return [_heatmap(coverage, labels, portfolio.plateaus) for coverage in portfolio.coverage.values()]


@dataclass(frozen=True)
class LevelCell:
    """A feature count with its mean CMMI level."""

    count: int
    mean: str
    css: str


def level_cell(stats: LevelStats | None) -> LevelCell:
    """The cell for ``stats`` (an empty one without features)."""
    if stats is None or stats.mean is None:
        return LevelCell(0, "\u2013", "l0")
    return LevelCell(stats.count, f"{stats.mean:.1f}", level_class(stats.mean))


@dataclass(frozen=True)
class RoleRow:
    """Features of one role (or of all roles) per plateau."""

    role_id: str
    name: str
    css: str
    cells: list[LevelCell]
    total: LevelCell


def role_rows(portfolio: Portfolio) -> list[RoleRow]:
    """Per role, then for every role together: count and mean CMMI level at each plateau."""
    levels = sorted(portfolio.plateaus)
    rows = []
    for index, role_id in enumerate(sorted(portfolio.roles)):
        total = LevelStats()
        cells = []
        for level in levels:
            stats = portfolio.by_plateau_role.get((level, role_id))
            if stats is not None:
                total.count += stats.count
                total.total += stats.total
            cells.append(level_cell(stats))
        rows.append(
            RoleRow(role_id, portfolio.roles[role_id], f"k{index % QUALITATIVE}", cells, level_cell(total))
        )
    overall = LevelStats()
    for stats in portfolio.by_plateau.values():
        overall.count += stats.count
        overall.total += stats.total
    rows.append(
        RoleRow(
            "",
            "All roles",
            "",
            [level_cell(portfolio.by_plateau.get(level)) for level in levels],
            level_cell(overall),
        )
    )
    return rows


@dataclass(frozen=True)
class PlateauBar:
    """Features at one plateau, stacked by role."""

    level: int
    name: str
    y: int
    total: int
    width: float
    segments: list[Segment]


def plateau_bars(portfolio: Portfolio) -> list[PlateauBar]:
    """One bar per plateau, its length the feature count, split by role."""
    roles = sorted(portfolio.roles)
    largest = max((stats.count for stats in portfolio.by_plateau.values()), default=0)
    bars = []
    for index, level in enumerate(sorted(portfolio.plateaus)):
        total = portfolio.by_plateau.get(level, LevelStats()).count
        width = BAR_WIDTH * total / largest if largest else 0
        parts = [
            (
                f"k{role_index % QUALITATIVE}",
                portfolio.roles[role_id],
                stats.count if (stats := portfolio.by_plateau_role.get((level, role_id))) else 0,
            )
            for role_index, role_id in enumerate(roles)
        ]
        bars.append(
            PlateauBar(
                level=level,
                name=portfolio.plateaus[level],
                y=BAR_HEIGHT * index + 4,
                total=total,
                width=round(width, 2),
                segments=stack(parts, width),
            )
        )
    return bars
