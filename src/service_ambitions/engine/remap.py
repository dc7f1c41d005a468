"""``map``: the mapping stage alone, over the records of an existing evolutions (or features) file.

:class:`RemapEngine` is the :class:`~service_ambitions.engine.engine.ProcessingEngine` with another
batch: one job per record of the source file, whose work is
:meth:`~service_ambitions.engine.pipeline.ServicePipeline.remap` (descriptions and features kept, every
plateau mapped again with the current catalogues, facets and mapping sets). Streaming, bounded
admission, budget, record cache, reorder buffer, writer, lock, resume and quarantine are the engine's.

The header is the engine's, with the current catalogue hash and mapping settings, the source file's
digest (``source_digest``), the descriptions and features models and digests of the source, and as
``input_digest`` the services the records describe: the source's own ``input_digest``, or the digest of
``--service-file`` when its services replace the records' ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import IO, Any

from service_ambitions.content.render import service_json
from service_ambitions.context import RunContext
from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.domain.output import Header
from service_ambitions.engine.answers import stage_digests
from service_ambitions.engine.batch import Batch, Job
from service_ambitions.engine.engine import ProcessingEngine, RunTally, run_id_for
from service_ambitions.engine.estimate import estimate_service_cost
from service_ambitions.engine.identity import settings_digest
from service_ambitions.engine.pipeline import ServiceResult
from service_ambitions.engine.source import EvolutionSource, SourceRecord, open_source
from service_ambitions.errors import InputError
from service_ambitions.llm._names import is_offline
from service_ambitions.store.inputs import BadLine, file_digest, read_services
from service_ambitions.store.quarantine import QuarantineStore

__all__ = ["RemapEngine", "load_services"]

_MAPPING = "mapping"


def load_services(
    path: Path, redact: Callable[[Any], Any] | None = None
) -> tuple[dict[str, ServiceInput], str]:
    """The services of a services file by id, and the file's digest (``map --service-file``).

    Raises:
        InputError: The file is missing or unreadable, or a line is invalid (names file and line):
            a record that cannot replace its service must not be mapped with the old one silently.
    """
    services: dict[str, ServiceInput] = {}
    for item in read_services(path, redact=redact):
        if isinstance(item, BadLine):
            raise InputError(f"{path}:{item.line}: {item.reason}")
        services[item.service.service_id] = item.service
    return services, file_digest(path)


class RemapEngine(ProcessingEngine):
    """Re-maps the features of an evolutions file: ``run(input_path=<evolutions>, output_path, ...)``."""

    def __init__(
        self,
        context: RunContext,
        *,
        debug: bool = False,
        stream: IO[bytes] | None = None,
        service_id: str | None = None,
        services: Mapping[str, ServiceInput] | None = None,
        services_digest: str | None = None,
    ) -> None:
        """Create the engine.

        Args:
            context: The run's collaborators.
            debug: Let unexpected errors inside a job raise.
            stream: Where the records go for the output path ``-``.
            service_id: Map this service only.
            services: Services that replace the records' own, by id (others keep theirs).
            services_digest: Digest of the file ``services`` came from (the header's ``input_digest``).
        """
        super().__init__(context, debug=debug, stream=stream)
        self.service_id = service_id
        self.services = dict(services or {})
        self.services_digest = services_digest
        self.source: EvolutionSource | None = None
        """The file read by the last run (its 1.0 migration notes are there)."""
        self.replaced = 0
        """Records mapped in this run with their service from ``services`` instead of their own (not
        those a resume skipped, nor those that failed)."""

    def _batch(self, input_path: Path) -> Batch:
        source = open_source(
            input_path,
            roles=self.context.content.roles,
            tool_version=self.context.tool_version,
            redact=self.context.redactor.redact_obj,
        )
        self.source = source
        return Batch(header=self.remap_header(source), items=self._jobs(source))

    def remap_header(self, source: EvolutionSource) -> Header:
        """The header of the re-mapped file."""
        settings = self.settings
        content = self.context.content
        recorded = source.header
        input_digest = self.services_digest or recorded.input_digest
        run_id = run_id_for(
            f"{source.digest}|{input_digest}", settings_digest(settings, content), settings.seed
        )
        mapping_model = settings.stage_model(_MAPPING)
        mapping_models = [mapping_model, *settings.fallbacks_for(_MAPPING, mapping_model)]
        kept = {
            label: digest
            for label, digest in (recorded.stage_digests or {}).items()
            if not label.startswith(f"{_MAPPING}:")
        }
        current = {
            label: digest
            for label, digest in stage_digests(content, self.context.gateway).items()
            if label.startswith(f"{_MAPPING}:")
        }
        return Header(
            tool_version=self.context.tool_version,
            git_sha=self.context.git_sha,
            run_id=run_id,
            seed=settings.seed,
            models={**recorded.models, _MAPPING: mapping_model},
            synthetic=recorded.synthetic or any(is_offline(model) for model in mapping_models),
            mapping_sets=[catalogue.field for catalogue in content.catalogues],
            catalogue_hash=content.catalogue_hash,
            input_digest=input_digest,
            settings={**settings.output_affecting(), "content_digest": content.digest},
            migrated_from=recorded.migrated_from,
            source_digest=source.digest,
            stage_digests={**kept, **current},
        )

    def _jobs(self, source: EvolutionSource) -> Iterator[Job | BadLine]:
        for item in source.records():
            if isinstance(item, BadLine):
                if self.service_id is None or item.service_id == self.service_id:
                    yield item
                continue
            if self.service_id is not None and item.record.service.service_id != self.service_id:
                continue
            yield self._job(item)

    async def _service(self, job: Job, quarantine: QuarantineStore, report: RunTally) -> ServiceResult | None:
        result = await super()._service(job, quarantine, report)
        # Counted here, where a record of this run was made (a resume's skipped ones never get here).
        if result is not None and job.service_id in self.services:
            self.replaced += 1
        return result

    def _job(self, item: SourceRecord) -> Job:
        record = item.record
        service = self.services.get(record.service.service_id, record.service)
        recorded = hashlib.sha256(record.model_dump_json().encode("utf-8")).hexdigest()
        job = Job(
            line=item.line,
            service_id=service.service_id,
            key_parts={"kind": "remap", "record": recorded, "service": service_json(service)},
            work=partial(self.pipeline.remap, record, service),
        )
        return job

    def _job_estimate(self) -> Decimal:
        return estimate_service_cost(self.context, stages={_MAPPING})
