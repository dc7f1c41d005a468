"""Colour scales and the geometry of the inline SVG charts (heatmaps, stacked bars).

Colours are CSS classes defined in ``static/report.css``: ``h1``..``h7`` a sequential light-to-dark scale
(ColorBrewer YlGnBu, readable with every common colour-vision deficiency and monotonic in lightness, so it
prints in grey), ``l1``..``l5`` the same scale for CMMI levels, and ``k0``..``k7`` the Okabe-Ito
qualitative palette for facet values and roles. Every coloured mark also carries its number as text or in
its tooltip, so no reading depends on colour alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "HEAT_CLASSES",
    "QUALITATIVE",
    "LegendEntry",
    "Segment",
    "heat_class",
    "heat_legend",
    "level_class",
    "stack",
    "truncate",
]

HEAT_CLASSES = 7
QUALITATIVE = 8
"""Colours of the qualitative palette; further values reuse them (their labels tell them apart)."""


@dataclass(frozen=True)
class LegendEntry:
    """One swatch of a legend."""

    css: str
    text: str


@dataclass(frozen=True)
class Segment:
    """One part of a stacked bar, in SVG user units."""

    x: float
    width: float
    css: str
    label: str
    count: int


def heat_class(count: int, maximum: int) -> str:
    """``h0`` for zero, else ``h1``..``h7`` by the share of the largest count."""
    if count <= 0 or maximum <= 0:
        return "h0"
    return f"h{max(1, min(HEAT_CLASSES, math.ceil(HEAT_CLASSES * count / maximum)))}"


def heat_legend(maximum: int) -> list[LegendEntry]:
    """The count range each heat class stands for, for a scale whose largest count is ``maximum``."""
    entries = [LegendEntry("h0", "0")]
    for index in range(1, HEAT_CLASSES + 1):
        low = math.floor((index - 1) * maximum / HEAT_CLASSES) + 1
        high = math.floor(index * maximum / HEAT_CLASSES)
        if low <= high:
            entries.append(LegendEntry(f"h{index}", str(low) if low == high else f"{low}\u2013{high}"))
    return entries


def level_class(mean: float | None) -> str:
    """``l1``..``l5``: the CMMI level a mean rounds to (half up); ``l0`` without features."""
    if mean is None:
        return "l0"
    return f"l{max(1, min(5, math.floor(mean + 0.5)))}"


def stack(parts: Sequence[tuple[str, str, int]], width: float) -> list[Segment]:
    """Lay ``(css, label, count)`` parts side by side over ``width``, proportionally to their counts."""
    total = sum(count for _, _, count in parts)
    segments: list[Segment] = []
    x = 0.0
    for css, label, count in parts:
        if count <= 0 or total <= 0:
            continue
        share = width * count / total
        segments.append(Segment(x=round(x, 2), width=round(share, 2), css=css, label=label, count=count))
        x += share
    return segments


def truncate(text: str, limit: int) -> str:
    """Shorten ``text`` to ``limit`` characters with an ellipsis (SVG text does not wrap or clip)."""
    return text if len(text) <= limit else text[: max(1, limit - 1)].rstrip() + "…"
