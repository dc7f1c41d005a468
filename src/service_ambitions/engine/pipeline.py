"""The stage pipeline of one service: descriptions → features(p) → mapping(p, set) → assemble.

Per plateau, the features call and then the mapping calls run as one task; up to
``plateau_concurrency`` plateaus run at once, so the features of plateau N+1 overlap the mappings
of plateau N. The result does not depend on the overlap: every plateau is assembled on its own and
placed by level. :meth:`ServicePipeline.remap` runs the mapping stage alone over the plateaus of an
existing record (``map``).

The user prompt of every call is built by :func:`descriptions_prompt`, :func:`features_prompt` and
:func:`mapping_prompt`, and a features answer becomes features by :func:`features_from_answer`: the cache
keys (and ``reverse``, which seeds the cache with the answers a record implies) depend on them byte
for byte, so nothing else builds prompts.
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
from service_ambitions.domain.reference import Catalogue, Plateau, Role
from service_ambitions.domain.responses import FEATURE_IDS, FeatureItem, match_key
from service_ambitions.engine.assemble import assemble_plateau
from service_ambitions.engine.mapping import merge_mapping
from service_ambitions.engine.problems import Problem
from service_ambitions.engine.watchdog import Watchdog
from service_ambitions.errors import PipelineError, QuarantineKind, StageTimeout
from service_ambitions.llm.deferral import Deferred
from service_ambitions.llm.gateway import Gateway
from service_ambitions.observability.metrics import RunMetrics
from service_ambitions.settings import StageTimeouts
from service_ambitions.store.migrate import UNKNOWN_MODEL

__all__ = [
    "ServicePipeline",
    "ServiceResult",
    "descriptions_prompt",
    "feature_listing",
    "features_from_answer",
    "features_prompt",
    "mapping_prompt",
]


def descriptions_prompt(content: Content, service: ServiceInput) -> str:
    """The user prompt of a service's descriptions call."""
    prompt = render_template(content.templates["descriptions"], descriptions_values(content.plateaus))
    return user_content(service, prompt)


def features_prompt(content: Content, service: ServiceInput, plateau: Plateau, description: str) -> str:
    """The user prompt of the features call of one plateau, given the service's description there."""
    prompt = render_template(
        content.templates["features"], features_values(plateau, description, content.roles)
    )
    return user_content(service, prompt)


def mapping_prompt(
    content: Content,
    service: ServiceInput,
    plateau: Plateau,
    catalogue: Catalogue,
    listing: list[dict[str, str]],
) -> str:
    """The user prompt of one plateau's mapping call for one set (``listing``: :func:`feature_listing`)."""
    prompt = render_template(content.templates["mapping"], mapping_values(plateau, catalogue, listing))
    return user_content(service, prompt)


def feature_listing(features: list[PlateauFeature]) -> list[dict[str, str]]:
    """The plateau's features as the mapping prompt shows them."""
    return [{"id": item.feature_id, "name": item.name, "description": item.description} for item in features]


def features_from_answer(
    content: Content, plateau: Plateau, answer: Any
) -> tuple[list[PlateauFeature], list[Problem]]:
    """The features of one plateau from a validated features answer, with their ids; repeats are dropped.

    Returns:
        The features in role order, then answer order, and a problem per dropped repeat.
    """
    by_role = answer.features
    features: list[PlateauFeature] = []
    problems: list[Problem] = []
    seen: dict[str, PlateauFeature] = {}
    for index, role in enumerate(content.roles):
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
    return features, problems


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
    roles: list[Role] | None = None
    """The roles to group by: the configured ones (None), or those of the record being re-mapped."""


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
        metrics: RunMetrics | None = None,
    ) -> None:
        self.content = content
        self.gateway = gateway
        self.metrics = metrics or RunMetrics()
        self.plateau_concurrency = plateau_concurrency
        self.timeouts = stage_timeouts or StageTimeouts()
        self.watchdog = watchdog or Watchdog()

    @contextlib.asynccontextmanager
    async def _stage(self, stage: str, service_id: str) -> AsyncIterator[None]:
        """Run a stage under its time budget; expiry becomes a ``timeout`` quarantine.

        The whole stage (re-asks, and for mapping every set's call) is timed in
        ``sa_engine_stage_duration_seconds`` with ``outcome`` ``ok``, ``error``, ``timeout``, ``cancelled``
        or ``deferred`` (batch mode).
        """
        budget = float(getattr(self.timeouts, stage))
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = "error"
        with self.watchdog.track(stage, service_id, budget) as token:
            # Mark the cancellation when the deadline passes, so a stage that swallows it is reported.
            marker = loop.call_later(budget, self.watchdog.cancelled, token)
            expired = False
            try:
                async with asyncio.timeout(budget) as deadline:
                    yield
                # A stage that swallowed its cancellation still overran: it is a timeout all the same.
                expired = deadline.expired()
                outcome = "timeout" if expired else "ok"
            except TimeoutError:
                expired = True
                outcome = "timeout"
            except asyncio.CancelledError:  # not our deadline (that is a TimeoutError): a sibling or Ctrl-C
                outcome = "cancelled"
                raise
            except Deferred:  # batch mode: the answer comes in a later wave; not a failure
                outcome = "deferred"
                raise
            finally:
                marker.cancel()
                attributes = {"stage": stage, "outcome": outcome}
                self.metrics.record(self.metrics.stage_duration, loop.time() - started, attributes)
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
        # Each plateau is one task: its features call, then its mapping calls. No plateau waits for
        # another (features depend only on the descriptions), so with enough slots one service's
        # critical path is three calls: descriptions, features, mapping. A slot is taken before a
        # plateau's task is spawned and released when its mappings finish, in level order, so at
        # most ``plateau_concurrency`` plateaus are in flight.
        slots = asyncio.Semaphore(self.plateau_concurrency)
        deferred: list[int] = []

        @self.metrics.plateau_task
        async def plateau_task(plateau: Plateau) -> None:
            try:
                done = await self._features(service, plateau, descriptions[plateau.level])
                outcomes[plateau.level] = await self._map_plateau(service, done)
            except Deferred:
                # Batch mode: this plateau waits for the next wave; the others still queue theirs.
                deferred.append(plateau.level)
            finally:
                slots.release()

        try:
            async with asyncio.TaskGroup() as group:
                for plateau in self.content.plateaus:
                    await slots.acquire()
                    group.create_task(plateau_task(plateau))
        except* Exception as failures:
            raise failures.exceptions[0] from None
        if deferred:
            raise Deferred(f"plateaus {sorted(deferred)}")

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

    async def remap(self, record: ServiceEvolution, service: ServiceInput | None = None) -> ServiceResult:
        """Map the features of an existing record again, with the current catalogues (``map``).

        Descriptions, features, roles and the provenance of descriptions and features are kept
        exactly; every plateau's mapping calls, merge and assembly are those of :meth:`run`. Up to
        ``plateau_concurrency`` plateaus are mapped at once.

        Args:
            record: The record whose features to map.
            service: The service to show the model instead of the record's (``map --service-file``).

        Raises:
            PipelineError: A mapping call failed, or a plateau of the record is not a current plateau.
        """
        service = service or record.service
        features_models = {item.plateau: item.features for item in record.provenance.plateaus}
        recorded = [
            self._recorded(service.service_id, plateau, features_models.get(plateau.plateau, UNKNOWN_MODEL))
            for plateau in record.plateaus
        ]
        outcomes: dict[int, _PlateauOutcome] = {}
        slots = asyncio.Semaphore(self.plateau_concurrency)

        @self.metrics.plateau_task
        async def one(index: int, done: _FeaturesDone) -> None:
            try:
                outcomes[index] = await self._map_plateau(service, done)
            finally:
                slots.release()

        try:
            async with asyncio.TaskGroup() as group:
                for index, done in enumerate(recorded):
                    await slots.acquire()
                    group.create_task(one(index, done))
        except* Exception as failures:
            raise failures.exceptions[0] from None
        ordered = [outcomes[index] for index in range(len(recorded))]
        remapped = ServiceEvolution(
            service=service,
            plateaus=[outcome.result for outcome in ordered],
            provenance=Provenance(
                descriptions=record.provenance.descriptions,
                plateaus=[outcome.provenance for outcome in ordered],
            ),
        )
        return ServiceResult(
            record=remapped,
            problems=[problem for outcome in ordered for problem in outcome.problems],
            unknown_ids=sum(outcome.unknown_ids for outcome in ordered),
        )

    def _recorded(self, service_id: str, result: PlateauResult, model: str) -> _FeaturesDone:
        """A recorded plateau, as if its features call had just answered."""
        wanted = match_key(result.plateau_name)
        plateau = next((item for item in self.content.plateaus if item.name == result.plateau_name), None)
        plateau = plateau or next(
            (item for item in self.content.plateaus if match_key(item.name) == wanted), None
        )
        if plateau is None:
            names = ", ".join(item.name for item in self.content.plateaus)
            raise PipelineError(
                f"plateau {result.plateau} {result.plateau_name!r} of the record is not one of the current "
                f"plateaus ({names}); its features cannot be mapped against them",
                service_id=service_id,
                stage="mapping",
                kind=QuarantineKind.SCHEMA_MISMATCH,
            )
        # The record's roles, as recorded (they were validated when the record was written).
        roles = [
            Role.model_construct(role_id=role.role_id, name=role.name, description=role.description)
            for role in result.roles
        ]
        return _FeaturesDone(
            plateau=plateau.model_copy(update={"level": result.plateau, "name": result.plateau_name}),
            description=result.description,
            features=list(result.features),
            model=model,
            problems=[],
            roles=roles,
        )

    async def _descriptions(self, service: ServiceInput) -> tuple[dict[int, str], str]:
        async with self._stage("descriptions", service.service_id):
            answer = await self.gateway.call(
                stage="descriptions",
                service_id=service.service_id,
                user_prompt=descriptions_prompt(self.content, service),
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
        listing = feature_listing(features)
        feature_ids = [item.feature_id for item in features]
        # The mapping schema re-asks for features left out of an answer (until the last attempt).
        checks = {FEATURE_IDS: feature_ids}
        contributions: dict[str, dict[str, list[SupportingItem]]] = {}
        mapping_models: dict[str, str] = {}
        unknown_ids = 0

        async def map_set(index: int) -> tuple[int, Any]:
            catalogue = self.content.catalogues[index]
            try:
                answer = await self.gateway.call(
                    stage="mapping",
                    service_id=service.service_id,
                    user_prompt=mapping_prompt(self.content, service, plateau, catalogue, listing),
                    output_type=self.content.mapping_models[catalogue.field],
                    validation_context=checks,
                )
            except Deferred:
                return index, None  # batch mode: the other catalogues still queue their calls
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
            if any(answer is None for _, answer in results):
                raise Deferred(f"mapping of plateau {plateau.level}")
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
            roles=done.roles if done.roles is not None else self.content.roles,
            catalogues=self.content.catalogues,
            contributions=contributions,
        )
        provenance = PlateauProvenance(plateau=plateau.level, features=features_model, mapping=mapping_models)
        return _PlateauOutcome(result, provenance, problems, unknown_ids)

    async def _features(self, service: ServiceInput, plateau: Plateau, description: str) -> _FeaturesDone:
        async with self._stage("features", service.service_id):
            answer = await self.gateway.call(
                stage="features",
                service_id=service.service_id,
                user_prompt=features_prompt(self.content, service, plateau, description),
                output_type=self.content.features_model,
            )
        features, problems = features_from_answer(self.content, plateau, answer.output)
        return _FeaturesDone(plateau, description, features, answer.model, problems)
