"""Loading reference data and prompt files into one immutable :class:`Content` (DOMAIN §2).

:func:`load_content` builds the content from a :class:`~service_ambitions.content.source.ContentSource`:
:class:`DirectorySource` (the data and prompt directories, what the CLI uses) or
:class:`~service_ambitions.content.source.InMemorySource` (Python objects, no files). The keyword form
``load_content(data_dir=..., prompt_dir=..., ...)`` is short for ``load_content(DirectorySource(...))``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, overload

from pydantic import BaseModel, TypeAdapter, ValidationError

from service_ambitions.content.catalogue import build_catalogue, catalogue_hash, facet_model
from service_ambitions.content.render import render_system_prompt
from service_ambitions.content.source import (
    STAGES,
    ContentSource,
    Prompts,
    check_catalogue,
    check_plateaus,
    check_prompts,
    check_roles,
)
from service_ambitions.domain.reference import Catalogue, Definitions, MappingSet, Plateau, Role
from service_ambitions.domain.responses import (
    DescriptionsResponse,
    MappingAnswer,
    descriptions_response_model,
    features_response_model,
    mapping_response_model,
)
from service_ambitions.errors import ContentError

__all__ = [
    "STAGE_TEMPLATES",
    "Content",
    "DirectorySource",
    "default_data_dir",
    "default_prompt_dir",
    "load_content",
]

PLATEAUS_FILE = "service_feature_plateaus.json"
ROLES_FILE = "roles.json"
DEFINITIONS_FILE = "definitions.json"
STAGE_TEMPLATES = {
    "descriptions": "descriptions_prompt.md",
    "features": "features_prompt.md",
    "mapping": "mapping_prompt.md",
}


def default_data_dir() -> Path:
    """The data directory shipped inside the package."""
    return Path(str(resources.files("service_ambitions.content") / "defaults" / "data"))


def default_prompt_dir() -> Path:
    """The prompt directory shipped inside the package."""
    return Path(str(resources.files("service_ambitions.content") / "defaults" / "prompts"))


@dataclass(frozen=True)
class Content:
    """Everything a run reads from the data and prompt directories, validated."""

    plateaus: list[Plateau]
    roles: list[Role]
    catalogues: list[Catalogue]
    definitions: Definitions
    situational_context: str
    inspirations: str
    templates: dict[str, str]
    system_prompt: str
    catalogue_hash: str
    digest: str
    descriptions_model: type[DescriptionsResponse]
    features_model: type[BaseModel]
    mapping_models: dict[str, type[MappingAnswer]]
    facet_models: dict[str, type[BaseModel]]
    files: list[Path] = field(default_factory=list)

    def catalogue(self, field_name: str) -> Catalogue:
        """The catalogue feeding an output field."""
        for catalogue in self.catalogues:
            if catalogue.field == field_name:
                return catalogue
        raise KeyError(field_name)


def _read_error(path: Path, exc: OSError) -> ContentError:
    """Say what is wrong with the path itself: missing, a directory, or under a file."""
    if isinstance(exc, FileNotFoundError):
        return ContentError(f"{path}: file not found")
    if isinstance(exc, IsADirectoryError):
        return ContentError(f"{path} is a directory, not a file")
    if isinstance(exc, NotADirectoryError):
        parent = path.parent
        while parent != parent.parent and not parent.exists():
            parent = parent.parent
        return ContentError(f"{path}: {parent} is a file, not a directory")
    return ContentError(f"{path}: cannot read ({exc.strerror or exc})")


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _read_error(path, exc) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ContentError(f"{path}:{line}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def read_json(path: Path) -> Any:
    """Read a UTF-8 JSON file; errors name the file and the line."""
    text = _decode(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContentError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise ContentError(f"{path}: invalid JSON: nested too deeply") from None


def read_text(path: Path) -> str:
    """Read a UTF-8 text file; errors name the file."""
    return _decode(path).strip()


def _explain(path: Path, error: ValidationError) -> ContentError:
    details = "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or '(root)'}: {item['msg']}"
        for item in error.errors(include_url=False)[:10]
    )
    return ContentError(f"{path}: {details}")


def _validate(path: Path, adapter: TypeAdapter[Any], raw: Any) -> Any:
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        raise _explain(path, exc) from None


def load_plateaus(path: Path) -> list[Plateau]:
    """Read the plateaus file; the level of each plateau is its 1-based position."""
    plateaus: list[Plateau] = _validate(path, TypeAdapter(list[Plateau]), read_json(path))
    return check_plateaus(str(path), plateaus)


def resolve_roles_path(roles_file: Path | None, data_dir: Path) -> Path:
    """``--roles-file`` may name a file or a directory holding ``roles.json``."""
    if roles_file is None:
        return data_dir / ROLES_FILE
    if roles_file.is_dir():
        return roles_file / ROLES_FILE
    return roles_file


def load_roles(path: Path) -> list[Role]:
    """Read the roles file; ids must be unique."""
    roles: list[Role] = _validate(path, TypeAdapter(list[Role]), read_json(path))
    return check_roles(str(path), roles)


def load_catalogue(path: Path, mapping_set: MappingSet) -> Catalogue:
    """Read one catalogue file in object or list form."""
    raw = read_json(path)
    try:
        catalogue = build_catalogue(mapping_set, raw)
    except ValidationError as exc:
        raise _explain(path, exc) from None
    except (TypeError, ValueError) as exc:
        raise ContentError(f"{path}: {exc}") from None
    return check_catalogue(str(path), catalogue)


def _check_dir(what: str, path: Path) -> None:
    if not path.exists():
        raise ContentError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise ContentError(f"{what} {path} is a file, not a directory")


class DirectorySource:
    """Content read from a data directory and a prompt directory (the bundled ones by default).

    Errors name the file, and the line or field. Both directories are checked before any file is read.
    """

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        prompt_dir: Path | None = None,
        roles_file: Path | None = None,
        context_id: str,
        inspiration: str,
        mapping_sets: list[MappingSet],
    ) -> None:
        self.data_dir = data_dir or default_data_dir()
        self.prompt_dir = prompt_dir or default_prompt_dir()
        self.roles_path = resolve_roles_path(roles_file, self.data_dir)
        self.context_path = self.prompt_dir / "situational_context" / f"{context_id}.md"
        self.inspiration_path = self.prompt_dir / "inspirations" / f"{inspiration}.md"
        self.mapping_sets = list(mapping_sets)

    def _data(self) -> Path:
        _check_dir("data directory", self.data_dir)
        _check_dir("prompt directory", self.prompt_dir)
        return self.data_dir

    def plateaus(self) -> list[Plateau]:
        """``service_feature_plateaus.json``."""
        return load_plateaus(self._data() / PLATEAUS_FILE)

    def roles(self) -> list[Role]:
        """``roles.json``, or the ``--roles-file``."""
        self._data()
        return load_roles(self.roles_path)

    def catalogues(self) -> list[Catalogue]:
        """The file of each mapping set."""
        data = self._data()
        return [load_catalogue(data / item.file, item) for item in self.mapping_sets]

    def definitions(self) -> Definitions:
        """``definitions.json``."""
        path = self._data() / DEFINITIONS_FILE
        definitions: Definitions = _validate(path, TypeAdapter(Definitions), read_json(path))
        return definitions

    def prompts(self) -> Prompts:
        """The situational context and inspiration chosen, and the stage templates."""
        self._data()
        return Prompts(
            situational_context=read_text(self.context_path),
            inspirations=read_text(self.inspiration_path),
            templates={stage: read_text(self.prompt_dir / name) for stage, name in STAGE_TEMPLATES.items()},
        )

    def files(self) -> list[Path]:
        """The files the content is read from, in digest order."""
        return [
            self.data_dir / PLATEAUS_FILE,
            self.roles_path,
            *(self.data_dir / item.file for item in self.mapping_sets),
            self.data_dir / DEFINITIONS_FILE,
            self.context_path,
            self.inspiration_path,
            *(self.prompt_dir / name for name in STAGE_TEMPLATES.values()),
        ]

    def digest(self) -> str:
        """SHA-256 over the names and bytes of :meth:`files`."""
        digest = hashlib.sha256()
        for path in self.files():
            digest.update(path.name.encode())
            digest.update(b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError as exc:  # changed since it was read
                raise _read_error(path, exc) from None
            digest.update(b"\0")
        return digest.hexdigest()


@overload
def load_content(source: ContentSource, /) -> Content: ...


@overload
def load_content(
    *,
    data_dir: Path | None,
    prompt_dir: Path | None,
    roles_file: Path | None,
    context_id: str,
    inspiration: str,
    mapping_sets: list[MappingSet],
) -> Content: ...


def load_content(source: ContentSource | None = None, /, **directories: Any) -> Content:
    """Load and validate all content for a run, from a source or (keywords) from directories.

    ``load_content(data_dir=..., prompt_dir=..., roles_file=..., context_id=..., inspiration=...,
    mapping_sets=...)`` reads the directories, as ``load_content(DirectorySource(...))`` does.

    Raises:
        ContentError: Content is missing or malformed; the message names the file (and line or field),
            or the part of the source.
    """
    if source is None:
        source = DirectorySource(**directories)
    elif directories:
        raise TypeError("load_content takes a source or directory keywords, not both")
    where = type(source).__name__
    plateaus = check_plateaus(f"{where} plateaus", source.plateaus())
    roles = check_roles(f"{where} roles", source.roles())
    catalogues = [check_catalogue(f"{where} catalogue {item.name}", item) for item in source.catalogues()]
    fields = [item.field for item in catalogues]
    repeated = sorted({name for name in fields if fields.count(name) > 1})
    if repeated:
        raise ContentError(f"{where} catalogues: more than one catalogue for field {', '.join(repeated)}")
    definitions = source.definitions()
    prompts = check_prompts(f"{where} prompts", source.prompts())
    system_prompt = render_system_prompt(
        situational_context=prompts.situational_context,
        plateaus=plateaus,
        definitions=definitions,
        inspirations=prompts.inspirations,
    )
    return Content(
        plateaus=plateaus,
        roles=roles,
        catalogues=catalogues,
        definitions=definitions,
        situational_context=prompts.situational_context,
        inspirations=prompts.inspirations,
        templates={stage: prompts.templates[stage] for stage in STAGES},
        system_prompt=system_prompt,
        catalogue_hash=catalogue_hash(catalogues),
        digest=source.digest(),
        descriptions_model=descriptions_response_model([plateau.name for plateau in plateaus]),
        features_model=features_response_model([role.role_id for role in roles]),
        mapping_models={item.field: mapping_response_model(item.field) for item in catalogues},
        facet_models={item.field: facet_model(item.field, item.facets) for item in catalogues if item.facets},
        files=source.files() if isinstance(source, DirectorySource) else [],
    )
