"""Catalogue reading, the catalogue hash and facet validation models (DOMAIN §2.2, §3)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)

from service_ambitions.domain.reference import Catalogue, CatalogueFile, CatalogueItem, Facet, MappingSet

__all__ = ["build_catalogue", "catalogue_digest", "catalogue_hash", "clean_text", "facet_model", "items_json"]


def clean_text(text: str) -> str:
    """Newlines and tabs become spaces, so each catalogue entry stays on one line."""
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ").replace("\t", " ")


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def items_json(items: list[CatalogueItem]) -> list[dict[str, str]]:
    """The ``[{id, name, description}]`` view of items, sorted by id, with cleaned text."""
    return [
        {"id": item.id, "name": clean_text(item.name), "description": clean_text(item.description)}
        for item in sorted(items, key=lambda item: item.id)
    ]


def build_catalogue(mapping_set: MappingSet, raw: Any) -> Catalogue:
    """Build a catalogue from parsed JSON in object form (tried first) or list form.

    Raises:
        ValidationError: Neither form fits; the error of the form the data resembles is raised.
        ValueError: Two facets share an id.
    """
    if isinstance(raw, dict):
        parsed = CatalogueFile.model_validate(raw)
        facet_ids = [facet.id for facet in parsed.facets or []]
        repeated = sorted({facet_id for facet_id in facet_ids if facet_ids.count(facet_id) > 1})
        if repeated:
            raise ValueError(f"duplicate facet id {', '.join(repeated)}")
        items = sorted(parsed.items, key=lambda item: item.id)
        return Catalogue(
            name=mapping_set.name,
            field=mapping_set.field,
            label=parsed.label,
            facets=list(parsed.facets or []),
            items=items,
            has_meta=True,
            meta_field=parsed.field,
        )
    items = [CatalogueItem.model_validate(entry) for entry in _as_list(raw)]
    return Catalogue(
        name=mapping_set.name, field=mapping_set.field, items=sorted(items, key=lambda item: item.id)
    )


def _as_list(raw: Any) -> list[Any]:
    if not isinstance(raw, list):
        raise TypeError("a catalogue must be a list of items or an object with an 'items' list")
    return raw


def catalogue_digest(catalogue: Catalogue) -> str:
    """SHA-256 of one catalogue: items and, for the object form, its meta (field, label, facets)."""
    meta: dict[str, Any] = {}
    if catalogue.has_meta:
        meta = {
            "field": catalogue.meta_field,
            "label": catalogue.label,
            "facets": [facet.model_dump(mode="json", exclude_none=True) for facet in catalogue.facets],
        }
    payload = {"items": items_json(catalogue.items), "meta": meta}
    return hashlib.sha256(_compact(payload).encode("utf-8")).hexdigest()


def catalogue_hash(catalogues: list[Catalogue]) -> str:
    """The combined hash written to the output header."""
    parts = sorted(f"{catalogue.field}:{catalogue_digest(catalogue)}" for catalogue in catalogues)
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()


_TYPES: dict[str, Any] = {
    "boolean": StrictBool,
    "integer": StrictInt,
    "number": float,
    "string": StrictStr,
}


def facet_model(field: str, facets: list[Facet]) -> type[BaseModel]:
    """Build the model that validates the facet values of one contribution.

    Required facets are mandatory; optional ones may be absent or null. Unknown keys are rejected.
    """
    fields: dict[str, Any] = {}
    for index, facet in enumerate(facets):
        if facet.type == "enum":
            options = tuple(option.id for option in facet.options or [])
            annotation: Any = Literal[options]
        else:
            annotation = _TYPES[facet.type]
        # Facet ids are data: as aliases of neutral field names, ids such as "copy", "_x" or
        # "model_dump" validate like any other instead of clashing with BaseModel's own attributes.
        if facet.required:
            fields[f"facet_{index}"] = (annotation, Field(alias=facet.id))
        else:
            fields[f"facet_{index}"] = (annotation | None, Field(None, alias=facet.id))
    return create_model(
        f"{field.title().replace('_', '')}Facets",
        __config__=ConfigDict(
            extra="forbid",
            strict=False,
            validate_by_alias=True,
            validate_by_name=False,
            serialize_by_alias=True,
        ),
        **fields,
    )


def facet_error(error: ValidationError) -> str:
    """A one-line summary of a facet validation error."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'facets'}: {item['msg']}"
        for item in error.errors(include_url=False)
    )
