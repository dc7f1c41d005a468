"""Loading reference data and prompt files into one immutable :class:`Content` (DOMAIN §2)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from service_ambitions.content.catalogue import build_catalogue, catalogue_hash, facet_model
from service_ambitions.content.render import render_system_prompt
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


def _line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


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
    if not plateaus:
        raise ContentError(f"{path}: at least one plateau is required")
    names = [plateau.name for plateau in plateaus]
    if len(set(names)) != len(names):
        raise ContentError(f"{path}: plateau names must be unique")
    return [plateau.model_copy(update={"level": index}) for index, plateau in enumerate(plateaus, start=1)]


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
    if not roles:
        raise ContentError(f"{path}: at least one role is required")
    ids = [role.role_id for role in roles]
    duplicates = sorted({role_id for role_id in ids if ids.count(role_id) > 1})
    if duplicates:
        raise ContentError(f"{path}: duplicate role_id {', '.join(duplicates)}")
    return roles


def load_catalogue(path: Path, mapping_set: MappingSet) -> Catalogue:
    """Read one catalogue file in object or list form."""
    raw = read_json(path)
    try:
        catalogue = build_catalogue(mapping_set, raw)
    except ValidationError as exc:
        raise _explain(path, exc) from None
    except (TypeError, ValueError) as exc:
        raise ContentError(f"{path}: {exc}") from None
    ids = [item.id for item in catalogue.items]
    duplicates = sorted({item_id for item_id in ids if ids.count(item_id) > 1})
    if duplicates:
        raise ContentError(f"{path}: duplicate item id {', '.join(duplicates)}")
    if not catalogue.items:
        raise ContentError(f"{path}: the catalogue has no items")
    return catalogue


def _check_dir(what: str, path: Path) -> None:
    if not path.exists():
        raise ContentError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise ContentError(f"{what} {path} is a file, not a directory")


def load_content(
    *,
    data_dir: Path | None,
    prompt_dir: Path | None,
    roles_file: Path | None,
    context_id: str,
    inspiration: str,
    mapping_sets: list[MappingSet],
) -> Content:
    """Load and validate all content for a run.

    Raises:
        ContentError: A file is missing or malformed; the message names the file (and line or field).
    """
    data = data_dir or default_data_dir()
    prompts = prompt_dir or default_prompt_dir()
    _check_dir("data directory", data)
    _check_dir("prompt directory", prompts)

    plateaus = load_plateaus(data / PLATEAUS_FILE)
    roles_path = resolve_roles_path(roles_file, data)
    roles = load_roles(roles_path)
    catalogues = [load_catalogue(data / item.file, item) for item in mapping_sets]
    definitions: Definitions = _validate(
        data / DEFINITIONS_FILE, TypeAdapter(Definitions), read_json(data / DEFINITIONS_FILE)
    )
    context_path = prompts / "situational_context" / f"{context_id}.md"
    inspiration_path = prompts / "inspirations" / f"{inspiration}.md"
    situational_context = read_text(context_path)
    inspirations = read_text(inspiration_path)
    templates = {stage: read_text(prompts / name) for stage, name in STAGE_TEMPLATES.items()}

    system_prompt = render_system_prompt(
        situational_context=situational_context,
        plateaus=plateaus,
        definitions=definitions,
        inspirations=inspirations,
    )
    files = [
        data / PLATEAUS_FILE,
        roles_path,
        *(data / item.file for item in mapping_sets),
        data / DEFINITIONS_FILE,
        context_path,
        inspiration_path,
        *(prompts / name for name in STAGE_TEMPLATES.values()),
    ]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError as exc:  # changed since it was read above
            raise _read_error(path, exc) from None
        digest.update(b"\0")
    return Content(
        plateaus=plateaus,
        roles=roles,
        catalogues=catalogues,
        definitions=definitions,
        situational_context=situational_context,
        inspirations=inspirations,
        templates=templates,
        system_prompt=system_prompt,
        catalogue_hash=catalogue_hash(catalogues),
        digest=digest.hexdigest(),
        descriptions_model=descriptions_response_model([plateau.name for plateau in plateaus]),
        features_model=features_response_model([role.role_id for role in roles]),
        mapping_models={item.field: mapping_response_model(item.field) for item in catalogues},
        facet_models={item.field: facet_model(item.field, item.facets) for item in catalogues if item.facets},
        files=files,
    )
