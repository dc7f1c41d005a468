"""The stage pipeline of one service: descriptions → features(p) → mapping(p, set) → assemble.

Per plateau, the features call and then the mapping calls run as one task; up to
``plateau_concurrency`` plateaus run at once, so the features of plateau N+1 overlap the mappings
of plateau N. The result does not depend on the overlap: every plateau is assembled on its own and
placed by level.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from service_ambitions.content.loader import Content
from service_ambitions.content.render import (
    descriptions_values,
    features_values,
    mapping_values,
    render_template,
    user_content,
)
from service_ambitions.domain.ids import feature_id
from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.domain.output import (
    PlateauFeature,
    PlateauProvenance,
    PlateauResult,
    Provenance,
    ServiceEvolution,
    SupportingItem,
)
from service_ambitions.domain.reference import Plateau
from service_ambitions.domain.responses import FEATURE_IDS, FeatureItem
from service_ambitions.engine.assemble import assemble_plateau
from service_ambitions.engine.mapping import merge_mapping
from service_ambitions.engine.problems import Problem
from service_ambitions.engine.watchdog import Watchdog
from service_ambitions.errors import QuarantineKind, StageTimeout
from service_ambitions.llm.gateway import Gateway
from service_ambitions.settings import StageTimeouts

__all__ = ["ServicePipeline", "ServiceResult"]


@dataclass
class ServiceResult:
    """A finished service: its record (or its serialised line, from the cache) and its problems."""

    record: ServiceEvolution | None
    problems: list[Problem] = field(default_factory=list)
    unknown_ids: int = 0
    line: bytes | None = None

    def line_bytes(self) -> bytes:
        """The output line of the record (compact JSON, UTF-8, no newline)."""
        if self.line is None:
            if self.record is None:
                raise ValueError("a service result needs a record or a line")
            self.line = self.record.model_dump_json().encode("utf-8")
        return self.line


@dataclass
class _FeaturesDone:
    plateau: Plateau
    description: str
    features: list[PlateauFeature]
    model: str
    problems: list[Problem]


@dataclass
class _PlateauOutcome:
    result: PlateauResult
    provenance: PlateauProvenance
    problems: list[Problem]
    unknown_ids: int


class ServicePipeline:
    """Runs the stages of one service through the gateway."""

    def __init__(
        self,
        content: Content,
        gateway: Gateway,
        *,
        plateau_concurrency: int,
        stage_timeouts: StageTimeouts | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.content = content
        self.gateway = gateway
        self.plateau_concurrency = plateau_concurrency
        self.timeouts = stage_timeouts or StageTimeouts()
        self.watchdog = watchdog or Watchdog()

    @contextlib.asynccontextmanager
    async def _stage(self, stage: str, service_id: str) -> AsyncIterator[None]:
        """Run a stage under its time budget; expiry becomes a ``timeout`` quarantine."""
        budget = float(getattr(self.timeouts, stage))
        loop = asyncio.get_running_loop()
        with self.watchdog.track(stage, service_id, budget) as token:
            # Mark the cancellation when the deadline passes, so a stage that swallows it is reported.
            marker = loop.call_later(budget, self.watchdog.cancelled, token)
            expired = False
            try:
                async with asyncio.timeout(budget) as deadline:
                    yield
                # A stage that swallowed its cancellation still overran: it is a timeout all the same.
                expired = deadline.expired()
            except TimeoutError:
                expired = True
            finally:
                marker.cancel()
            if expired:
                raise StageTimeout(
                    f"the {stage} stage exceeded its {budget:g} s budget", service_id=service_id, stage=stage
                )

    async def run(self, service: ServiceInput) -> ServiceResult:
        """Produce the record of one service.

        Raises:
            PipelineError: A stage failed; the caller quarantines the service.
        """
        descriptions, descriptions_model = await self._descriptions(service)
        outcomes: dict[int, _PlateauOutcome] = {}
        # Features of plateau N+1 are written while plateau N is being mapped: a producer runs the
        # features calls in level order and hands each plateau to mapping consumers through a
        # bounded queue. A slot is held from a plateau's features call until its mappings finish,
        # so at most ``plateau_concurrency`` plateaus are in flight.
        slots = asyncio.Semaphore(self.plateau_concurrency)
        handoff: asyncio.Queue[_FeaturesDone | None] = asyncio.Queue(maxsize=self.plateau_concurrency)

        async def produce() -> None:
            for plateau in self.content.plateaus:
                await slots.acquire()
                try:
                    done = await self._features(service, plateau, descriptions[plateau.level])
                except BaseException:
                    slots.release()
                    raise
                await handoff.put(done)
            for _ in range(self.plateau_concurrency):
                await handoff.put(None)

        async def consume() -> None:
            while (done := await handoff.get()) is not None:
                try:
                    outcomes[done.plateau.level] = await self._map_plateau(service, done)
                finally:
                    slots.release()

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(produce())
                for _ in range(self.plateau_concurrency):
                    group.create_task(consume())
        except* Exception as failures:
            raise failures.exceptions[0] from None

        ordered = [outcomes[plateau.level] for plateau in self.content.plateaus]
        problems = [problem for outcome in ordered for problem in outcome.problems]
        problems.extend(self._empty_roles(ordered))
        record = ServiceEvolution(
            service=service,
            plateaus=[outcome.result for outcome in ordered],
            provenance=Provenance(
                descriptions=descriptions_model, plateaus=[outcome.provenance for outcome in ordered]
            ),
        )
        return ServiceResult(
            record=record, problems=problems, unknown_ids=sum(outcome.unknown_ids for outcome in ordered)
        )

    def _empty_roles(self, outcomes: list[_PlateauOutcome]) -> list[Problem]:
        with_features = {feature.customer_type for outcome in outcomes for feature in outcome.result.features}
        return [
            Problem(
                QuarantineKind.SCHEMA_MISMATCH,
                "features",
                f"role {role.role_id!r} has no features at any plateau",
                {"role_id": role.role_id, "empty_role": True},
            )
            for role in self.content.roles
            if role.role_id not in with_features
        ]

    async def _descriptions(self, service: ServiceInput) -> tuple[dict[int, str], str]:
        prompt = render_template(
            self.content.templates["descriptions"], descriptions_values(self.content.plateaus)
        )
        async with self._stage("descriptions", service.service_id):
            answer = await self.gateway.call(
                stage="descriptions",
                service_id=service.service_id,
                user_prompt=user_content(service, prompt),
                output_type=self.content.descriptions_model,
            )
        # The schema's validator matched every plateau (or the gateway re-asked, then failed the stage).
        return {item.plateau: item.description for item in answer.output.descriptions}, answer.model

    async def _map_plateau(self, service: ServiceInput, done: _FeaturesDone) -> _PlateauOutcome:
        plateau, description, features, problems = (
            done.plateau,
            done.description,
            done.features,
            done.problems,
        )
        features_model = done.model
        listing = [
            {"id": item.feature_id, "name": item.name, "description": item.description} for item in features
        ]
        feature_ids = [item.feature_id for item in features]
        # The mapping schema re-asks for features left out of an answer (until the last attempt).
        checks = {FEATURE_IDS: feature_ids}
        contributions: dict[str, dict[str, list[SupportingItem]]] = {}
        mapping_models: dict[str, str] = {}
        unknown_ids = 0

        async def map_set(index: int) -> tuple[int, Any]:
            catalogue = self.content.catalogues[index]
            prompt = render_template(
                self.content.templates["mapping"], mapping_values(plateau, catalogue, listing)
            )
            answer = await self.gateway.call(
                stage="mapping",
                service_id=service.service_id,
                user_prompt=user_content(service, prompt),
                output_type=self.content.mapping_models[catalogue.field],
                validation_context=checks,
            )
            merged = merge_mapping(
                catalogue=catalogue,
                facet_model=self.content.facet_models.get(catalogue.field),
                feature_ids=feature_ids,
                response=answer.output.normalised(),
                plateau=plateau.level,
            )
            return index, (answer.model, merged)

        results: list[tuple[int, Any]] = []
        if features:
            try:
                async with self._stage("mapping", service.service_id), asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(map_set(index)) for index in range(len(self.content.catalogues))
                    ]
            except* Exception as failures:
                raise failures.exceptions[0] from None
            results = sorted(task.result() for task in tasks)
        for index, (model, merged) in results:
            field_name = self.content.catalogues[index].field
            contributions[field_name] = merged.contributions
            mapping_models[field_name] = model
            problems.extend(merged.problems)
            unknown_ids += merged.unknown_count
        result = assemble_plateau(
            plateau=plateau,
            description=description,
            features=features,
            roles=self.content.roles,
            catalogues=self.content.catalogues,
            contributions=contributions,
        )
        provenance = PlateauProvenance(plateau=plateau.level, features=features_model, mapping=mapping_models)
        return _PlateauOutcome(result, provenance, problems, unknown_ids)

    async def _features(self, service: ServiceInput, plateau: Plateau, description: str) -> _FeaturesDone:
        prompt = render_template(
            self.content.templates["features"], features_values(plateau, description, self.content.roles)
        )
        async with self._stage("features", service.service_id):
            answer = await self.gateway.call(
                stage="features",
                service_id=service.service_id,
                user_prompt=user_content(service, prompt),
                output_type=self.content.features_model,
            )
        by_role = answer.output.features  # type: ignore[attr-defined]
        features: list[PlateauFeature] = []
        problems: list[Problem] = []
        seen: dict[str, PlateauFeature] = {}
        for index, role in enumerate(self.content.roles):
            items: list[FeatureItem] = getattr(by_role, f"role_{index}")
            for item in items:
                identifier = feature_id(item.name, role.role_id, plateau.name)
                feature = PlateauFeature(
                    feature_id=identifier,
                    name=item.name,
                    description=item.description,
                    score=item.score,
                    customer_type=role.role_id,
                    role=role,
                )
                if identifier in seen:
                    first = seen[identifier]
                    problems.append(
                        Problem(
                            QuarantineKind.SCHEMA_MISMATCH,
                            "features",
                            f"duplicate feature id {identifier} at plateau {plateau.name}: "
                            f"{item.name!r} for {role.role_id} repeats "
                            f"{first.name!r} for {first.customer_type}; "
                            "the repeat was dropped",
                            {
                                "plateau": plateau.level,
                                "feature_id": identifier,
                                "kept": first.model_dump(mode="json"),
                                "dropped": feature.model_dump(mode="json"),
                            },
                        )
                    )
                    continue
                seen[identifier] = feature
                features.append(feature)
        return _FeaturesDone(plateau, description, features, answer.model, problems)
