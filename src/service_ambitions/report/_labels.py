"""Names people read for mapping sets, facets and facet values.

The records hold ids only (``change_type: new_build``). When the catalogues the run used can be found, their
schema gives the labels ("Change type: New build"), the facet types and the option order. They are taken
from the data directory (``--data-dir``, default: the bundled one) only when its catalogue hash equals the
header's, so a report never puts another catalogue's words on a run's data; otherwise labels come from ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from dataclasses import field as default
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service_ambitions.content import loader
from service_ambitions.content.catalogue import catalogue_hash
from service_ambitions.domain.output import Header
from service_ambitions.domain.reference import Catalogue, MappingSet
from service_ambitions.errors import ContentError

__all__ = ["FacetInfo", "Labels", "SetInfo", "humanize", "load_labels", "value_key"]

log = logging.getLogger("service_ambitions.report")

FREE_TEXT = "string"
"""Facet type shown as "given in N" instead of a breakdown of values."""


def humanize(identifier: str) -> str:
    """``new_build`` → ``New build``; ``APP001`` stays as it is."""
    if not identifier or any(char.isupper() for char in identifier):
        return identifier
    text = identifier.replace("_", " ").replace("-", " ").strip()
    return text[:1].upper() + text[1:] if text else identifier


def value_key(value: Any) -> str | None:
    """The key a facet value is counted under: option ids as they are, booleans ``true``/``false``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class FacetInfo:
    """One facet of a mapping set, from the catalogue schema when known."""

    id: str
    label: str
    type: str | None = None
    """``enum``, ``boolean``, ``integer``, ``number``, ``string``; ``None`` when there is no schema."""
    options: dict[str, str] = default(default_factory=dict)
    description: str | None = None


@dataclass(frozen=True)
class SetInfo:
    """One mapping set: its output field, label, facets in schema order, and item names."""

    field: str
    label: str
    facets: dict[str, FacetInfo] = default(default_factory=dict)
    item_names: dict[str, str] = default(default_factory=dict)


@dataclass(frozen=True)
class Labels:
    """Labels for every mapping set of a run, and where they came from."""

    sets: dict[str, SetInfo]
    source: str

    def set_label(self, field_name: str) -> str:
        """The label of a mapping set's output field."""
        info = self.sets.get(field_name)
        return info.label if info else humanize(field_name)

    def facet(self, field_name: str, facet_id: str) -> FacetInfo:
        """A facet's description; derived from its id when the schema does not know it."""
        info = self.sets.get(field_name)
        known = info.facets.get(facet_id) if info else None
        return known or FacetInfo(id=facet_id, label=humanize(facet_id))

    def value_label(self, field_name: str, facet_id: str, value: Any) -> str:
        """How a facet value reads: the option's label, Yes/No, or the value itself."""
        if isinstance(value, bool):
            return "Yes" if value else "No"
        key = value_key(value)
        if key is None:
            return "not given"
        options = self.facet(field_name, facet_id).options
        if key in options:
            return options[key]
        return humanize(key) if isinstance(value, str) else key

    def facet_order(self, field_name: str) -> list[str]:
        """Facet ids in schema order (empty without a schema)."""
        info = self.sets.get(field_name)
        return list(info.facets) if info else []


def _mapping_sets(header: Header) -> list[MappingSet]:
    raw = header.settings.get("mapping_sets")
    if isinstance(raw, list):
        try:
            return [MappingSet.model_validate(item) for item in raw]
        except ValidationError:
            pass
    return [MappingSet(name=humanize(name), file=f"{name}.json", field=name) for name in header.mapping_sets]


def _from_catalogue(catalogue: Catalogue) -> SetInfo:
    facets = {
        facet.id: FacetInfo(
            id=facet.id,
            label=facet.label,
            type=facet.type,
            options={option.id: option.label for option in facet.options or []},
            description=facet.description,
        )
        for facet in catalogue.facets
    }
    return SetInfo(
        field=catalogue.field,
        label=catalogue.label or catalogue.name,
        facets=facets,
        item_names={item.id: item.name for item in catalogue.items},
    )


def load_labels(header: Header, data_dir: Path | None) -> Labels:
    """Labels for the run described by ``header``.

    Args:
        header: The evolutions file's header (its mapping sets and catalogue hash).
        data_dir: Where to look for the run's catalogues; ``None``: the bundled data directory.
    """
    sets = _mapping_sets(header)
    fallback = {item.field: SetInfo(field=item.field, label=item.name) for item in sets}
    directory = data_dir or loader.default_data_dir()
    try:
        catalogues = [loader.load_catalogue(directory / item.file, item) for item in sets]
    except ContentError as exc:
        level = logging.WARNING if data_dir is not None else logging.INFO
        log.log(level, "report: catalogue labels not used, %s; labels are derived from ids", exc)
        return Labels(sets=fallback, source="ids in the records (catalogues not found)")
    if catalogue_hash(catalogues) != header.catalogue_hash:
        level = logging.WARNING if data_dir is not None else logging.INFO
        log.log(
            level,
            "report: the catalogues in %s differ from the run's (catalogue hash); labels come from ids",
            directory,
        )
        return Labels(sets=fallback, source="ids in the records (the catalogues differ from the run's)")
    return Labels(
        sets={catalogue.field: _from_catalogue(catalogue) for catalogue in catalogues},
        source="the run's catalogues (catalogue hash matches)",
    )
