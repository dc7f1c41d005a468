"""``reverse``: a features file and answer-cache entries rebuilt from an existing evolutions file.

Every record goes to the features file (its descriptions and features as they are, mappings left out:
the file ``map`` reads by default). For the stages whose settings still match the file's, the answers
the record implies are stored in the answer cache under the keys a ``run`` with the current settings
computes (``engine/answers.py``), so that run is served from the cache: with unchanged input, settings
and content, no call at all; with changed catalogues, only the mapping calls.

Whether a stage's settings match is read from the header's ``stage_digests``. Files written before
those existed are compared as a whole instead: same output-affecting settings and content digest, same
tool build (and for mapping, the same catalogues). Stages that do not match, and records whose answers
cannot be rebuilt exactly, are reported and skipped, never guessed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from service_ambitions.content.catalogue import catalogue_hash
from service_ambitions.context import RunContext
from service_ambitions.domain.output import Header, PlateauProvenance, Provenance, ServiceEvolution
from service_ambitions.engine.answers import ImpliedAnswer, implied_answers, stage_digests
from service_ambitions.engine.source import EvolutionSource, open_source
from service_ambitions.store.inputs import BadLine
from service_ambitions.store.migrate import MigrationNotes
from service_ambitions.store.writer import OutputWriter, discard_partial, partial_path_for, publish_partial

__all__ = ["ReverseReport", "features_only", "matching_stages", "reverse_file"]

_MAPPING_PREFIX = "mapping:"


@dataclass
class ReverseReport:
    """What ``reverse`` did.

    Attributes:
        records: Records read (and written to the features file).
        bad_lines: Lines of the source that could not be read (not written, named in the report).
        seeded: Cache entries written, by stage label (``descriptions``, ``features``, ``mapping:<field>``).
        present: Entries that were in the cache already (left as they were).
        not_matching: Stage labels whose settings differ from the file's, with why (nothing seeded).
        unreproducible: Per ``"<label>: <reason>"``, the services whose answers could not be rebuilt.
        cache_off: ``cache_mode`` is ``off``: only the features file was written.
        notes: The in-memory migration's notes, for a 1.0 source.
    """

    records: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)
    seeded: Counter[str] = field(default_factory=Counter)
    present: int = 0
    not_matching: dict[str, str] = field(default_factory=dict)
    unreproducible: dict[str, list[str]] = field(default_factory=dict)
    cache_off: bool = False
    notes: MigrationNotes | None = None


def _differences(old: dict[str, object], new: dict[str, object]) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


def matching_stages(header: Header, context: RunContext) -> tuple[set[str], dict[str, str]]:
    """The stage labels whose cache keys a run now computes as the file's run did, and why not the others."""
    current = stage_digests(context.content, context.gateway)
    matching: set[str] = set()
    reasons: dict[str, str] = {}
    if header.stage_digests is not None:
        for label, digest in current.items():
            recorded = header.stage_digests.get(label)
            if recorded is None:
                reasons[label] = "the file holds no answers of this stage"
            elif recorded != digest:
                reasons[label] = "its models, settings, prompts or content differ from the file's"
            else:
                matching.add(label)
        return matching, reasons
    if header.migrated_from is not None:
        return matching, dict.fromkeys(current, "a migrated schema 1.0 file records no settings to compare")
    # Written before headers had stage digests: compare everything that goes into the keys at once.
    settings = context.settings
    why: list[str] = []
    changed = _differences(
        header.settings, {**settings.output_affecting(), "content_digest": context.content.digest}
    )
    if changed:
        why.append("settings changed: " + ", ".join(changed))
    if (header.tool_version, header.git_sha) != (context.tool_version, context.git_sha):
        why.append(f"made by another build of the tool ({header.tool_version})")
    fields = [catalogue.field for catalogue in context.content.catalogues]
    catalogues_changed = (
        header.mapping_sets != fields or header.catalogue_hash != context.content.catalogue_hash
    )
    for label in current:
        reasons_here = [
            *why,
            *(["catalogues changed"] if catalogues_changed and label.startswith(_MAPPING_PREFIX) else []),
        ]
        if reasons_here:
            reasons[label] = "; ".join(reasons_here)
        else:
            matching.add(label)
    return matching, reasons


def features_only(record: ServiceEvolution) -> ServiceEvolution:
    """The record without mappings: what a features file holds."""
    return ServiceEvolution(
        service=record.service,
        plateaus=[
            plateau.model_copy(
                update={
                    "features": [feature.model_copy(update={"mappings": {}}) for feature in plateau.features],
                    "roles": [
                        role.model_copy(
                            update={
                                "features": [
                                    item.model_copy(update={"mappings": {}}) for item in role.features
                                ]
                            }
                        )
                        for role in plateau.roles
                    ],
                    "mappings": {},
                }
            )
            for plateau in record.plateaus
        ],
        provenance=Provenance(
            descriptions=record.provenance.descriptions,
            plateaus=[
                PlateauProvenance(plateau=item.plateau, features=item.features, mapping={})
                for item in record.provenance.plateaus
            ],
        ),
    )


def features_header(source: EvolutionSource) -> Header:
    """The header of the features file: the source's, without its mapping sets, naming the source.

    Tool version, settings and digests stay those of the run that made the descriptions and features.
    """
    header = source.header
    kept = {
        label: digest
        for label, digest in (header.stage_digests or {}).items()
        if not label.startswith(_MAPPING_PREFIX)
    }
    return header.model_copy(
        update={
            "mapping_sets": [],
            "catalogue_hash": catalogue_hash([]),
            "source_digest": source.digest,
            "stage_digests": kept if header.stage_digests is not None else None,
        }
    )


class _Seeder:
    def __init__(self, context: RunContext, report: ReverseReport) -> None:
        self.cache = context.cache
        self.report = report

    def seed(self, answer: ImpliedAnswer) -> None:
        # A verified entry is kept (it is the answer a run got, or one seeded before); a corrupt one is
        # purged by the read and replaced. The cache mode is honoured (write: only when absent).
        if self.cache.get(answer.key) is not None:
            self.report.present += 1
            return
        before = self.cache.stats.writes
        self.cache.put(answer.key, answer.payload)
        if self.cache.stats.writes > before:
            self.report.seeded[answer.label] += 1
        else:
            self.report.present += 1


def reverse_file(context: RunContext, source_path: Path, output_path: Path) -> ReverseReport:
    """Write the features file of ``source_path`` to ``output_path`` and seed the answer cache.

    The features file is written to ``<output>.partial`` and renamed over the output when every line
    was read; a failure leaves an earlier output as it was.

    Raises:
        InputError: The source is missing, unreadable, not an evolutions file (or a 1.0 file with an
            invalid line).
        PathError: The features file cannot be written.
    """
    source = open_source(
        source_path,
        roles=context.content.roles,
        tool_version=context.tool_version,
        redact=context.redactor.redact_obj,
    )
    report = ReverseReport(notes=source.notes, cache_off=context.settings.cache_mode == "off")
    matching, report.not_matching = matching_stages(source.header, context)
    seeder = _Seeder(context, report)
    discard_partial(output_path)
    writer = OutputWriter(partial_path_for(output_path))
    writer.start(features_header(source))
    try:
        for item in source.records():
            if isinstance(item, BadLine):
                report.bad_lines.append(item)
                continue
            report.records += 1
            record = item.record
            if matching and not report.cache_off:
                answers = implied_answers(context.content, context.gateway, record, matching)
                for answer in answers.answers:
                    seeder.seed(answer)
                for label, reason in answers.unreproducible.items():
                    report.unreproducible.setdefault(f"{label}: {reason}", []).append(
                        record.service.service_id
                    )
            writer.write(features_only(record))
    except BaseException:
        writer.close()
        discard_partial(output_path)
        raise
    writer.close()
    publish_partial(output_path)
    return report
