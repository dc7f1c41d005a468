"""Where a run's content comes from: the :class:`ContentSource` protocol and an in-memory source.

A content source serves the parts of a run's content: plateaus, roles, catalogues, the glossary
(definitions), the prompts (situational context, inspirations and the three stage templates) and a
digest of all of it (part of the record-cache key and of the output header). ``load_content(source)``
in :mod:`service_ambitions.content.loader` validates what a source serves and builds the immutable
``Content`` a run uses (system prompt, answer schemas, catalogue hash).

Two sources are built in: ``DirectorySource`` (in the loader) reads the data and prompt directories,
which is what the CLI uses; :class:`InMemorySource` is built from Python objects, so tests and library
users can inject content without files. Any object with the protocol's methods will do; use
:func:`content_digest` for its digest unless it has a better one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import TypeAdapter, ValidationError

from service_ambitions.domain.reference import Catalogue, Definitions, Plateau, Role
from service_ambitions.errors import ContentError

__all__ = [
    "STAGES",
    "ContentSource",
    "InMemorySource",
    "Prompts",
    "check_catalogue",
    "check_plateaus",
    "check_prompts",
    "check_roles",
    "content_digest",
]

STAGES = ("descriptions", "features", "mapping")
"""The stages that have a template, in run order."""


@dataclass(frozen=True)
class Prompts:
    """The prompt texts of a run: the two system-prompt blocks and a template per stage."""

    situational_context: str
    inspirations: str
    templates: Mapping[str, str] = field(default_factory=dict)
    """By stage (:data:`STAGES`); see ``content/defaults/prompts`` for the placeholders."""


@runtime_checkable
class ContentSource(Protocol):
    """What ``load_content`` reads a run's content from.

    Each method is called once per load; a method may raise :class:`ContentError` naming what is
    wrong. Plateaus are served in level order (a plateau's level is its 1-based position).
    """

    def plateaus(self) -> list[Plateau]:
        """The maturity plateaus, in order."""
        ...

    def roles(self) -> list[Role]:
        """The customer roles features are written for."""
        ...

    def catalogues(self) -> list[Catalogue]:
        """One catalogue per mapping set, in mapping-set order."""
        ...

    def definitions(self) -> Definitions:
        """The glossary shown in the system prompt."""
        ...

    def prompts(self) -> Prompts:
        """The situational context, the inspirations and the stage templates."""
        ...

    def digest(self) -> str:
        """A stable hex digest of everything served: a change to it must change the digest."""
        ...


def check_plateaus(where: str, plateaus: Sequence[Plateau]) -> list[Plateau]:
    """Plateaus are non-empty with unique names; returns them with their levels set (1-based)."""
    if not plateaus:
        raise ContentError(f"{where}: at least one plateau is required")
    names = [plateau.name for plateau in plateaus]
    if len(set(names)) != len(names):
        raise ContentError(f"{where}: plateau names must be unique")
    return [plateau.model_copy(update={"level": index}) for index, plateau in enumerate(plateaus, start=1)]


def check_roles(where: str, roles: Sequence[Role]) -> list[Role]:
    """Roles are non-empty with unique ids."""
    if not roles:
        raise ContentError(f"{where}: at least one role is required")
    ids = [role.role_id for role in roles]
    duplicates = sorted({role_id for role_id in ids if ids.count(role_id) > 1})
    if duplicates:
        raise ContentError(f"{where}: duplicate role_id {', '.join(duplicates)}")
    return list(roles)


def check_catalogue(where: str, catalogue: Catalogue) -> Catalogue:
    """A catalogue has items with unique ids; returns it with its items sorted by id."""
    ids = [item.id for item in catalogue.items]
    duplicates = sorted({item_id for item_id in ids if ids.count(item_id) > 1})
    if duplicates:
        raise ContentError(f"{where}: duplicate item id {', '.join(duplicates)}")
    if not catalogue.items:
        raise ContentError(f"{where}: the catalogue has no items")
    return catalogue.model_copy(update={"items": sorted(catalogue.items, key=lambda item: item.id)})


def check_prompts(where: str, prompts: Prompts) -> Prompts:
    """Every stage has a template."""
    missing = [stage for stage in STAGES if not prompts.templates.get(stage)]
    if missing:
        raise ContentError(f"{where}: no template for {', '.join(missing)}")
    return prompts


def content_digest(
    *,
    plateaus: Sequence[Plateau],
    roles: Sequence[Role],
    catalogues: Sequence[Catalogue],
    definitions: Definitions,
    prompts: Prompts,
) -> str:
    """SHA-256 of content given as objects (canonical JSON of each part)."""
    payload = {
        "plateaus": [plateau.model_dump(mode="json") for plateau in plateaus],
        "roles": [role.model_dump(mode="json") for role in roles],
        "catalogues": [catalogue.model_dump(mode="json") for catalogue in catalogues],
        "definitions": definitions.model_dump(mode="json"),
        "situational_context": prompts.situational_context,
        "inspirations": prompts.inspirations,
        "templates": {stage: prompts.templates.get(stage) for stage in STAGES},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _validated(where: str, adapter: TypeAdapter[Any], raw: Any) -> Any:
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '(root)'}: {item['msg']}"
            for item in exc.errors(include_url=False)[:10]
        )
        raise ContentError(f"{where}: {details}") from None


class InMemorySource:
    """Content from Python objects: models, or plain dicts and lists of the same shape as the files.

    Everything is validated when the source is built, with errors naming the part
    (``in-memory plateaus: ...``), so a mistake surfaces where the content is written.

    Example::

        source = InMemorySource(
            plateaus=[{"id": "P1", "name": "Basic", "description": {...}}],
            roles=[Role(role_id="staff", name="Staff", description="...")],
            catalogues=[Catalogue(name="applications", field="applications", items=[...])],
            definitions={"title": "Definitions", "bullets": []},
            prompts=Prompts(situational_context="...", inspirations="...", templates={...}),
        )
        content = load_content(source)
    """

    def __init__(
        self,
        *,
        plateaus: Sequence[Plateau | Mapping[str, Any]],
        roles: Sequence[Role | Mapping[str, Any]],
        catalogues: Sequence[Catalogue | Mapping[str, Any]],
        definitions: Definitions | Mapping[str, Any],
        prompts: Prompts,
    ) -> None:
        self._plateaus = check_plateaus(
            "in-memory plateaus", _validated("in-memory plateaus", TypeAdapter(list[Plateau]), list(plateaus))
        )
        self._roles = check_roles(
            "in-memory roles", _validated("in-memory roles", TypeAdapter(list[Role]), list(roles))
        )
        loaded: list[Catalogue] = _validated(
            "in-memory catalogues", TypeAdapter(list[Catalogue]), list(catalogues)
        )
        self._catalogues = [check_catalogue(f"in-memory catalogue {item.name}", item) for item in loaded]
        self._definitions: Definitions = _validated(
            "in-memory definitions", TypeAdapter(Definitions), definitions
        )
        self._prompts = check_prompts("in-memory prompts", prompts)

    def plateaus(self) -> list[Plateau]:
        """The plateaus given, with their levels."""
        return list(self._plateaus)

    def roles(self) -> list[Role]:
        """The roles given."""
        return list(self._roles)

    def catalogues(self) -> list[Catalogue]:
        """The catalogues given, items sorted by id."""
        return list(self._catalogues)

    def definitions(self) -> Definitions:
        """The glossary given."""
        return self._definitions

    def prompts(self) -> Prompts:
        """The prompts given."""
        return self._prompts

    def digest(self) -> str:
        """:func:`content_digest` of what was given."""
        return content_digest(
            plateaus=self._plateaus,
            roles=self._roles,
            catalogues=self._catalogues,
            definitions=self._definitions,
            prompts=self._prompts,
        )
