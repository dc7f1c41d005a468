"""Schema migrations of ``evolutions.jsonl`` files (DOMAIN §4).

Each migration is a function registered under its ``(from, to)`` version pair in :data:`MIGRATIONS`;
:func:`migrate_file` looks the pair up and runs it. A migration reads the whole input before it writes:
the output is streamed to a temp file next to the destination and renamed into place only when every
line converted, so a failed migration never leaves a partial file.

Schema 1.0 files have no header; every line carries the ``meta`` of the run that wrote it, plateaus say
``service_description`` and features have no ``role``. Migrating to 1.1 moves every distinct ``meta`` into
``Header.migrated_from`` (one entry per run id, listing its services) and rebuilds roles and mapping
groups when the 1.0 record lacks them, ordered and grouped by ``domain/grouping.py`` as a run's are.

Every record the 1.0 format allows is accepted: a ``meta`` without ``schema_version``, with empty or
partial ``models`` (a stage without a recorded model gets the provenance ``unknown``), features whose
ids do not follow today's id rule (kept as they are and reported), contributions with a diagnostics
``rationale`` (schema 1.1 has no place for it: counted and reported), missing optional lists.
:func:`read_v10` gives the converted header and records without writing a file (``map`` and
``reverse`` read 1.0 files through it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from service_ambitions import __version__
from service_ambitions.domain.grouping import by_feature_id, mapping_group, mapping_groups, role_features
from service_ambitions.domain.ids import feature_id
from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.domain.output import (
    FeatureRef,
    Header,
    MappingGroup,
    PlateauFeature,
    PlateauProvenance,
    PlateauResult,
    Provenance,
    ServiceEvolution,
    SupportingItem,
)
from service_ambitions.domain.reference import Role
from service_ambitions.domain.responses import Score
from service_ambitions.errors import InputError, UsageError
from service_ambitions.store._atomic import atomic_writer

__all__ = [
    "MIGRATIONS",
    "UNKNOWN_MODEL",
    "Migration",
    "MigrationNotes",
    "MigrationOptions",
    "MigrationReport",
    "V10Source",
    "find_migration",
    "migrate_file",
    "read_v10",
    "register",
    "supported_migrations",
]

log = logging.getLogger("service_ambitions.migrate")

_STAGES = ("descriptions", "features", "mapping")
UNKNOWN_MODEL = "unknown"
"""Provenance of a stage whose 1.0 ``meta.models`` records no model (the records are kept all the same)."""
_OFFLINE = "offline"
"""The synthetic model's id (``llm/_names.py``); repeated here so ``store`` does not depend on ``llm``."""

NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


@dataclass(frozen=True)
class MigrationOptions:
    """What a migration may need beyond the files.

    Attributes:
        tool_version: Written to the header as the version that produced the file.
        roles: Reference roles, used for features whose 1.0 record does not describe their role.
    """

    tool_version: str = __version__
    roles: Sequence[Role] = ()


@dataclass
class MigrationNotes:
    """What a migration kept as it was, or could not carry over, for the report.

    Attributes:
        nonconforming_ids: Features whose id is not the one today's id rule gives their name, role and
            plateau (kept unchanged, so joins on them keep working): ``service_id``, ``plateau``,
            ``feature_id`` and the ``expected`` id.
        models_unrecorded: ``(service_id, stage)`` pairs whose ``meta.models`` names no model (provenance
            ``unknown``).
        rationales_dropped: Diagnostics ``rationale`` texts of contributions, which schema 1.1 cannot hold.
    """

    nonconforming_ids: list[dict[str, Any]] = field(default_factory=list)
    models_unrecorded: list[tuple[str, str]] = field(default_factory=list)
    rationales_dropped: int = 0

    def summary(self) -> list[str]:
        """One line per kind of note, for people (empty when there is nothing to say)."""
        lines: list[str] = []
        if self.nonconforming_ids:
            shown = ", ".join(item["feature_id"] for item in self.nonconforming_ids[:10])
            more = len(self.nonconforming_ids) - 10
            lines.append(
                f"{len(self.nonconforming_ids)} feature id(s) do not follow today's id rule and were kept "
                f"as they are: {shown}" + (f" and {more} more" if more > 0 else "")
            )
        if self.models_unrecorded:
            services = len({service for service, _ in self.models_unrecorded})
            stages = ", ".join(sorted({stage for _, stage in self.models_unrecorded}))
            lines.append(
                f"{services} record(s) have no model recorded in meta.models for {stages}; "
                f"their provenance says {UNKNOWN_MODEL!r}"
            )
        if self.rationales_dropped:
            lines.append(
                f"{self.rationales_dropped} diagnostics rationale(s) of contributions were left out "
                "(schema 1.1 has no field for them)"
            )
        return lines


@dataclass(frozen=True)
class MigrationReport:
    """The outcome of one migration.

    Attributes:
        from_version: Schema version read.
        to_version: Schema version written.
        records: Records written (excluding the header).
        run_ids: The source runs, in order of first appearance.
        duplicate_service_ids: Services present more than once (all copies are kept).
        notes: What was kept as it was or left out (see :class:`MigrationNotes`).
    """

    from_version: str
    to_version: str
    records: int
    run_ids: list[str]
    duplicate_service_ids: list[str] = field(default_factory=list)
    notes: MigrationNotes = field(default_factory=MigrationNotes)


Migration = Callable[[Path, Path, MigrationOptions], MigrationReport]
"""``(source, destination, options) -> report``; raises :class:`InputError` for a bad source."""

MIGRATIONS: dict[tuple[str, str], Migration] = {}
"""Every supported migration, keyed by ``(from_version, to_version)``."""


def register(from_version: str, to_version: str) -> Callable[[Migration], Migration]:
    """Register a migration function under its version pair."""

    def decorate(function: Migration) -> Migration:
        MIGRATIONS[(from_version, to_version)] = function
        return function

    return decorate


def supported_migrations() -> list[tuple[str, str]]:
    """The registered ``(from, to)`` pairs, sorted."""
    return sorted(MIGRATIONS)


def find_migration(from_version: str, to_version: str) -> Migration:
    """The migration registered for the pair.

    Raises:
        UsageError: None is registered; the message lists the supported pairs.
    """
    migration = MIGRATIONS.get((from_version, to_version))
    if migration is None:
        pairs = ", ".join(f"{old} -> {new}" for old, new in supported_migrations()) or "none"
        raise UsageError(f"no migration from schema {from_version} to {to_version}; supported: {pairs}")
    return migration


def migrate_file(
    source: Path,
    destination: Path,
    *,
    from_version: str,
    to_version: str,
    options: MigrationOptions | None = None,
) -> MigrationReport:
    """Migrate ``source`` (schema ``from_version``) to ``destination`` (schema ``to_version``).

    Raises:
        UsageError: No migration is registered for the pair, or the destination cannot be written.
        InputError: The source is missing, unreadable or has an invalid line (names file, line and field).
    """
    migration = find_migration(from_version, to_version)
    return migration(source, destination, options or MigrationOptions())


# --- reading -------------------------------------------------------------------------------------


def _lines(path: Path, digest: _Digest) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, parsed JSON)`` for each non-blank line, feeding every byte to ``digest``."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise InputError(f"input file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"input file {path} is a directory") from None
    except OSError as exc:
        raise InputError(f"cannot read input file {path}: {exc.strerror or exc}") from None
    with handle:
        try:
            for number, raw in enumerate(handle, start=1):
                digest.update(raw)
                if not raw.strip():
                    continue
                try:
                    data = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise InputError(f"{path}:{number}: invalid JSON: {exc}") from None
                yield number, data
        except OSError as exc:
            raise InputError(f"cannot read input file {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _atomic_output(path: Path) -> Iterator[IO[bytes]]:
    """A handle on a temp file that replaces ``path`` only when the block succeeds (``store/_atomic.py``).

    Raises:
        UsageError: The output cannot be created, written or renamed into place.
    """
    try:
        with atomic_writer(path) as handle:
            yield handle
    except OSError as exc:
        # Input errors are translated where they happen, so an OSError here is the output's.
        raise UsageError(f"cannot write output file {path}: {exc.strerror or exc}") from None


# --- schema 1.0 ----------------------------------------------------------------------------------


class _Legacy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _MetaV10(BaseModel):
    """Run metadata repeated on every 1.0 line; unknown keys are allowed (and kept in the header)."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    schema_version: Literal["1.0"] = "1.0"
    run_id: NonEmpty
    seed: int | None = None
    models: dict[str, str] | str = Field(default_factory=dict)
    web_search: bool = False
    mapping_types: list[str] | dict[str, Any] = Field(default_factory=list)
    context_window: int = 0
    diagnostics: bool = False
    catalogue_hash: str | None = None
    created: str | None = None

    def mapping_fields(self) -> list[str]:
        """The mapping fields the run used, in configured order."""
        return list(self.mapping_types)

    def stage_models(self) -> dict[str, str]:
        """The configured model of every stage (a single model string applies to all)."""
        if isinstance(self.models, str):
            return dict.fromkeys(_STAGES, self.models)
        return dict(self.models)


class _ContributionV10(_Legacy):
    item: NonEmpty
    facets: dict[str, Any] | None = None
    rationale: str | None = None
    """Written by 1.0 runs in diagnostics mode; schema 1.1 has no field for it."""


class _FeatureV10(_Legacy):
    feature_id: NonEmpty
    name: NonEmpty
    description: str
    score: Score
    customer_type: NonEmpty
    role: Role | None = None
    mappings: dict[str, list[_ContributionV10]] = Field(default_factory=dict)


class _RefV10(_Legacy):
    feature_id: NonEmpty
    description: str


class _GroupV10(_Legacy):
    id: NonEmpty
    name: NonEmpty | None = None
    mappings: list[_RefV10] = Field(default_factory=list)


class _RoleV10(_Legacy):
    role_id: NonEmpty
    name: NonEmpty
    description: NonEmpty
    features: list[Any] | None = None
    """Always the plateau's features of this role, so 1.1 rebuilds it from them (as assemble does)."""


class _PlateauV10(_Legacy):
    plateau: int
    plateau_name: NonEmpty
    service_description: str
    features: list[_FeatureV10] = Field(default_factory=list)
    roles: list[_RoleV10] | None = None
    mappings: dict[str, list[_GroupV10]] | None = None


class _RecordV10(_Legacy):
    schema_version: Literal["1.0"] | None = None
    meta: _MetaV10
    service: ServiceInput
    plateaus: list[_PlateauV10] = Field(default_factory=list)


def _records_v10(path: Path, digest: _Digest) -> Iterator[tuple[int, _RecordV10, dict[str, Any]]]:
    """Validate each 1.0 line; yields the record and its raw ``meta`` (kept verbatim for the header)."""
    for number, data in _lines(path, digest):
        if not isinstance(data, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, got {type(data).__name__}")
        if data.get("record_type") == "header" or data.get("schema_version") == "1.1":
            raise InputError(f"{path}:{number}: this line is schema 1.1 already; the file is not schema 1.0")
        try:
            record = _RecordV10.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "(record)"
            raise InputError(f"{path}:{number}: {where}: {first['msg']}") from None
        yield number, record, data["meta"]


@dataclass
class _Run:
    """The 1.0 metas of one run id, each with the services that carried it."""

    run_id: str
    variants: list[tuple[dict[str, Any], list[str]]] = field(default_factory=list)

    def add(self, meta: dict[str, Any], service_id: str) -> None:
        for known, services in self.variants:
            if known == meta:
                services.append(service_id)
                return
        self.variants.append((meta, [service_id]))

    def entry(self) -> dict[str, Any]:
        (meta, _), *others = self.variants
        entry: dict[str, Any] = {
            "run_id": self.run_id,
            "service_ids": [service for _, services in self.variants for service in services],
            "meta": meta,
        }
        if others:
            # Records of one run disagreeing on meta: keep every version, never pick one.
            entry["variants"] = [{"meta": other, "service_ids": ids} for other, ids in others]
        return entry


def _merged(values: list[str]) -> str:
    """One value when the runs agree, else every distinct value in order, comma-separated."""
    return ",".join(dict.fromkeys(values))


def _header_v11(runs: list[_Run], metas: list[_MetaV10], input_digest: str, tool_version: str) -> Header:
    run_ids = [run.run_id for run in runs]
    if len(run_ids) == 1:
        run_id = run_ids[0]
    else:
        run_id = hashlib.sha256("\n".join(sorted(run_ids)).encode()).hexdigest()[:16]
    seeds = {meta.seed for meta in metas}
    stage_models = [meta.stage_models() for meta in metas]
    keys = list(dict.fromkeys(key for models in stage_models for key in models))
    models = {key: _merged([item[key] for item in stage_models if key in item]) for key in keys}
    every_model = {model for item in stage_models for model in item.values()}
    return Header(
        tool_version=tool_version,
        run_id=run_id,
        seed=seeds.pop() if len(seeds) == 1 else None,
        models=models,
        synthetic=any(model == _OFFLINE or model.startswith(_OFFLINE + ":") for model in every_model),
        mapping_sets=list(dict.fromkeys(name for meta in metas for name in meta.mapping_fields())),
        catalogue_hash=_merged([meta.catalogue_hash for meta in metas if meta.catalogue_hash]),
        input_digest=input_digest,
        settings={"migrated": True},
        migrated_from=[run.entry() for run in runs],
    )


class _RecordConverter:
    """Turns one 1.0 record into a 1.1 :class:`ServiceEvolution` in canonical order."""

    def __init__(self, record: _RecordV10, roles: Mapping[str, Role], notes: MigrationNotes) -> None:
        self.record = record
        self.notes = notes
        plateaus = record.plateaus
        features = [feature for plateau in plateaus for feature in plateau.features]
        extra_fields = {name for feature in features for name in feature.mappings}
        extra_fields.update(name for plateau in plateaus for name in plateau.mappings or {})
        configured = record.meta.mapping_fields()
        self.fields = configured + sorted(extra_fields.difference(configured))
        self.role_ids = sorted(
            {feature.customer_type for feature in features}
            | {role.role_id for plateau in plateaus for role in plateau.roles or []}
        )
        self.roles = self._role_directory(roles)
        self.group_names: dict[tuple[str, str], str] = {}
        for plateau in plateaus:
            for name, groups in (plateau.mappings or {}).items():
                for group in groups:
                    if group.name is not None:
                        self.group_names.setdefault((name, group.id), group.name)

    def _role_directory(self, reference: Mapping[str, Role]) -> dict[str, Role]:
        """Roles by id: the record's own descriptions first, then the reference roles, then the input."""
        found: dict[str, Role] = {}
        for plateau in self.record.plateaus:
            for listed in plateau.roles or []:
                found.setdefault(
                    listed.role_id,
                    Role(role_id=listed.role_id, name=listed.name, description=listed.description),
                )
        for plateau in self.record.plateaus:
            for feature in plateau.features:
                if feature.role is not None:
                    found.setdefault(feature.role.role_id, feature.role)
        for role_id, known in reference.items():
            found.setdefault(role_id, known)
        for job in self.record.service.jobs_to_be_done:
            mentioned = (job.model_extra or {}).get("role")
            for item in mentioned if isinstance(mentioned, list) else [mentioned]:
                if isinstance(item, dict) and isinstance(item.get("role_id"), str) and item.get("name"):
                    name = str(item["name"])
                    found.setdefault(
                        item["role_id"], Role(role_id=item["role_id"], name=name, description=name)
                    )
        return found

    def _role(self, role_id: str) -> Role:
        # Last resort: the id is all the 1.0 record says about the role.
        return self.roles.get(role_id) or Role(role_id=role_id, name=role_id, description=role_id)

    def _stage_model(self, stage: str) -> str:
        models = self.record.meta.stage_models()
        for key in (stage, "default", "model"):
            if models.get(key):
                return models[key]
        # 1.0 allowed an empty (or partial) meta.models: the records are sound, only the model is unknown.
        self.notes.models_unrecorded.append((self.record.service.service_id, stage))
        return UNKNOWN_MODEL

    def _feature(self, feature: _FeatureV10, plateau_name: str) -> PlateauFeature:
        expected = feature_id(feature.name, feature.customer_type, plateau_name)
        if feature.feature_id != expected:
            # Kept: users join on the ids they have; renumbering them would break those joins.
            self.notes.nonconforming_ids.append(
                {
                    "service_id": self.record.service.service_id,
                    "plateau": plateau_name,
                    "feature_id": feature.feature_id,
                    "expected": expected,
                }
            )
        self.notes.rationales_dropped += sum(
            1 for items in feature.mappings.values() for item in items if item.rationale is not None
        )
        return PlateauFeature(
            feature_id=feature.feature_id,
            name=feature.name,
            description=feature.description,
            score=feature.score,
            customer_type=feature.customer_type,
            role=feature.role or self._role(feature.customer_type),
            mappings={
                name: [
                    SupportingItem(item=item.item, facets=item.facets)
                    for item in feature.mappings.get(name, [])
                ]
                for name in self.fields
            },
        )

    def _group_name(self, name: str, item_id: str) -> str:
        return self.group_names.get((name, item_id), item_id)

    def _plateau(self, plateau: _PlateauV10) -> PlateauResult:
        features = [self._feature(item, plateau.plateau_name) for item in by_feature_id(plateau.features)]
        groups: dict[str, list[MappingGroup]] = {}
        for name in self.fields:
            recorded = (plateau.mappings or {}).get(name)
            if recorded is None:
                groups[name] = mapping_groups(name, features, functools.partial(self._group_name, name))
                continue
            # What the 1.0 record grouped is kept (names and all), only put in canonical order.
            groups[name] = [
                mapping_group(
                    group.id,
                    group.name or self._group_name(name, group.id),
                    (
                        FeatureRef(feature_id=ref.feature_id, description=ref.description)
                        for ref in group.mappings
                    ),
                )
                for group in sorted(recorded, key=lambda group: group.id)
            ]
        return PlateauResult(
            plateau=plateau.plateau,
            plateau_name=plateau.plateau_name,
            description=plateau.service_description,
            features=features,
            roles=role_features(map(self._role, self.role_ids), features),
            mappings=groups,
        )

    def convert(self) -> ServiceEvolution:
        """The 1.1 record; provenance comes from the run's configured models."""
        features_model = self._stage_model("features")
        mapping = dict.fromkeys(self.fields, self._stage_model("mapping"))
        return ServiceEvolution(
            service=self.record.service,
            plateaus=[self._plateau(plateau) for plateau in self.record.plateaus],
            provenance=Provenance(
                descriptions=self._stage_model("descriptions"),
                plateaus=[
                    PlateauProvenance(plateau=plateau.plateau, features=features_model, mapping=mapping)
                    for plateau in self.record.plateaus
                ],
            ),
        )


@dataclass
class V10Source:
    """A schema 1.0 file read as 1.1: its header, then its records (converted as they are read).

    Attributes:
        header: The 1.1 header (every ``meta`` in ``migrated_from``).
        run_ids: The source runs, in order of first appearance.
        duplicate_service_ids: Services present more than once.
        notes: Filled while :meth:`records` runs.
    """

    path: Path
    header: Header
    run_ids: list[str]
    duplicate_service_ids: list[str]
    roles: dict[str, Role]
    notes: MigrationNotes = field(default_factory=MigrationNotes)

    def records(self) -> Iterator[tuple[int, ServiceEvolution]]:
        """``(line number, 1.1 record)`` in file order.

        Raises:
            InputError: A line is invalid, or the file changed since the header was built.
        """
        again = hashlib.sha256()
        for number, record, _ in _records_v10(self.path, again):
            yield number, _RecordConverter(record, self.roles, self.notes).convert()
        if again.hexdigest() != self.header.input_digest:
            raise InputError(f"{self.path}: the file changed while it was being migrated")


def read_v10(source: Path, options: MigrationOptions) -> V10Source:
    """Read a schema 1.0 file as 1.1, in memory: one pass for the header here, one in ``records()``.

    Raises:
        InputError: The file is missing, unreadable, empty or has an invalid line (names file, line, field).
    """
    scan = hashlib.sha256()
    runs: dict[str, _Run] = {}
    metas: list[_MetaV10] = []  # distinct
    seen: dict[str, int] = {}
    for _, record, raw_meta in _records_v10(source, scan):
        run = runs.setdefault(record.meta.run_id, _Run(record.meta.run_id))
        run.add(raw_meta, record.service.service_id)
        if record.meta not in metas:
            metas.append(record.meta)
        seen[record.service.service_id] = seen.get(record.service.service_id, 0) + 1
    if not metas:
        raise InputError(f"{source}: no schema 1.0 records to migrate")
    return V10Source(
        path=source,
        header=_header_v11(list(runs.values()), metas, scan.hexdigest(), options.tool_version),
        run_ids=list(runs),
        duplicate_service_ids=[service_id for service_id, count in seen.items() if count > 1],
        roles={role.role_id: role for role in options.roles},
    )


@register("1.0", "1.1")
def migrate_1_0_to_1_1(source: Path, destination: Path, options: MigrationOptions) -> MigrationReport:
    """Schema 1.0 (``meta`` on every line, ``service_description``) to 1.1 (header line, ``description``).

    Two passes over the source: the first gathers every run's ``meta`` for the header, the second
    converts and writes the records in input order.
    """
    read = read_v10(source, options)
    written = 0
    with _atomic_output(destination) as handle:
        handle.write(read.header.model_dump_json().encode("utf-8") + b"\n")
        for _, evolution in read.records():
            handle.write(evolution.model_dump_json().encode("utf-8") + b"\n")
            written += 1
    return MigrationReport(
        from_version="1.0",
        to_version="1.1",
        records=written,
        run_ids=read.run_ids,
        duplicate_service_ids=read.duplicate_service_ids,
        notes=read.notes,
    )
