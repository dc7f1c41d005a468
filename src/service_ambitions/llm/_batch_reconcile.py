"""The provider side of batch mode: batch handles as text, and reconciling unrecorded submissions.

A process killed between creating a provider batch and recording it leaves an *intent* in the
output's batch state. :func:`reconcile` lists the provider's recent batches (OpenAI: by their input
files, which name every request's custom id) and adopts the one created from the intent's requests,
or forgets the intent so the next wave submits them once. Used by
:class:`~service_ambitions.llm.batching.BatchCoordinator`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from service_ambitions.errors import UsageError

if TYPE_CHECKING:
    from pydantic_ai.models import Model
    from pydantic_ai.models.batch import Batch

    from service_ambitions.llm.batching import BatchCoordinator
    from service_ambitions.store.batches import Intent

__all__ = ["RECONCILE_WINDOW_SECONDS", "handle", "handle_json", "reconcile"]

log = logging.getLogger("service_ambitions.batches")

RECONCILE_WINDOW_SECONDS = 600.0
"""How far before an unrecorded intent a provider batch may have been created and still be adopted."""


def handle_json(batch: Batch) -> str:
    """A provider batch handle as the JSON text the batch state keeps."""
    from pydantic import TypeAdapter  # noqa: PLC0415
    from pydantic_ai.models.batch import Batch as BatchType  # noqa: PLC0415

    return TypeAdapter(BatchType).dump_json(batch).decode()


def handle(text: str) -> Batch:
    """A provider batch handle back from the batch state's JSON text."""
    from pydantic import TypeAdapter  # noqa: PLC0415
    from pydantic_ai.models.batch import Batch as BatchType  # noqa: PLC0415

    return TypeAdapter(BatchType).validate_json(text)


async def reconcile(coordinator: BatchCoordinator) -> None:
    """Resolve the intents a killed process left: adopt the provider's batch holding them, or requeue them.

    Raises:
        UsageError: An intent's model has no way to list its batches; naming what to check.
    """
    state = coordinator.state
    for intent in state.intents():
        model = coordinator.model(intent.model_id)
        found = await _recent_batches(model, intent, state.known_batch_ids(intent.model_id))
        if found is None:
            raise UsageError(
                f"a batch of {len(intent.custom_ids)} request(s) to {intent.model_id} may have been "
                f"created at {datetime.fromtimestamp(intent.started, tz=UTC):%Y-%m-%d %H:%M:%S} UTC "
                "without being recorded (the process stopped), and this provider's batches cannot be "
                "matched to requests: check its console, cancel a stray batch there, then run "
                "service-ambitions batch forget --output-file ... to submit the requests again"
            )
        adopted = 0
        for batch, custom_ids in found:
            if not set(custom_ids) & set(intent.custom_ids):
                continue
            held = [custom_id for custom_id in intent.custom_ids if custom_id in set(custom_ids)]
            state.adopt_batch(
                intent,
                batch_id=batch.id,
                provider=batch.provider_name,
                status=batch.status,
                handle=handle_json(batch),
                custom_ids=held,
            )
            adopted += 1
            log.warning(
                "batch %s of %s was created by a process that stopped before recording it: adopted "
                "(%d request(s)); nothing is submitted twice",
                batch.id,
                intent.model_id,
                len(held),
            )
            break
        coordinator.stats.adopted += adopted
        if not adopted:
            state.drop_intent(intent)
            log.info(
                "no provider batch holds the %d request(s) of an unrecorded submission to %s: "
                "they are submitted with the next wave",
                len(intent.custom_ids),
                intent.model_id,
            )


async def _recent_batches(
    model: Model, intent: Intent, known: set[str]
) -> list[tuple[Batch, list[str]]] | None:
    """The provider's batches created around an intent, with the custom ids each holds (None: cannot list)."""
    from pydantic_ai.models.batch import Batch as BatchType  # noqa: PLC0415
    from pydantic_ai.models.openai import OpenAIResponsesModel  # noqa: PLC0415

    if not isinstance(model, OpenAIResponsesModel):
        return None
    client = model.client
    since = intent.started - RECONCILE_WINDOW_SECONDS
    group = await _group_of(model)
    found: list[tuple[Batch, list[str]]] = []
    async for listed in client.batches.list(limit=100):
        if listed.created_at < since:
            break
        if listed.id in known:
            continue
        content = await client.files.content(listed.input_file_id)
        custom_ids = [_custom_id(line) for line in content.text.splitlines() if line.strip()]
        listed_handle = BatchType(
            id=listed.id,
            model_name=model.model_name,
            provider_name=model.system,
            group=group,
            status="in_progress",
            created_at=datetime.fromtimestamp(listed.created_at, tz=UTC),
            request_count=len(custom_ids),
        )
        found.append((await model.batch_status(listed_handle), custom_ids))
    return found


def _custom_id(line: str) -> str:
    import json  # noqa: PLC0415

    value = json.loads(line).get("custom_id")
    return value if isinstance(value, str) else ""


async def _group_of(model: Model) -> str:
    """The batch group of a model (what its requests share), from encoding a minimal request."""
    from pydantic_ai.messages import ModelRequest, UserPromptPart  # noqa: PLC0415
    from pydantic_ai.models.batch import BatchRequest  # noqa: PLC0415

    probe = BatchRequest(custom_id="probe", messages=[ModelRequest(parts=[UserPromptPart("probe")])])
    return (await model.batch_encode(probe)).group
