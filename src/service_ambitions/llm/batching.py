"""Provider batch APIs for ``run --mode batch``: requests wait in waves instead of being sent live.

pydantic-ai gives every batch-capable model the primitives (``Model.batch_encode``,
``batch_create``, ``batch_status``, ``batch_results``, ``batch_decode``; OpenAI through the Responses
API, Anthropic, Google). This module puts them under the same gateway as live calls:

* :class:`WaveModel` sits where the HTTP request would be, at the bottom of a model's stack (below the
  output mode, provider settings and fallbacks). Asked for an answer, it looks the request up in the
  output's :class:`~service_ambitions.store.batches.BatchState` by its custom id (derived from the
  call's cache key, its attempt and the model): a collected result is decoded by the provider's own
  ``batch_decode`` and returned as if it had just arrived, so validation, re-asks, fallbacks, the cache,
  quarantine and assembly are exactly those of a live run; anything else is queued for the next wave
  and the call raises :class:`Deferred`.
* :class:`BatchCoordinator` submits the queued requests (chunked to each provider's limits, an intent
  recorded durably first), checks and collects batches, resubmits expired or transiently failed
  requests (bounded), adopts batches a killed process created but never recorded, and cancels.

Results are decoded once per pass but their cost is counted once per request, ever: a result already
counted is handed out with zero usage.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic_ai.models.wrapper import WrapperModel

from service_ambitions.errors import ConfigError, UsageError
from service_ambitions.llm._batch_reconcile import RECONCILE_WINDOW_SECONDS, reconcile
from service_ambitions.llm._batch_reconcile import handle as _handle
from service_ambitions.llm._batch_reconcile import handle_json as _handle_json
from service_ambitions.llm.deferral import BatchCall, Deferred, batch_call
from service_ambitions.store.batches import BatchRow, BatchState, ItemRow, Submitted

if TYPE_CHECKING:
    from pydantic_ai.messages import ModelMessage, ModelResponse
    from pydantic_ai.models import Model, ModelRequestParameters
    from pydantic_ai.models.batch import Batch, EncodedBatchRequest
    from pydantic_ai.settings import ModelSettings

__all__ = [
    "RECONCILE_WINDOW_SECONDS",
    "BatchCall",
    "BatchCoordinator",
    "Deferred",
    "WaveModel",
    "batch_call",
    "supports_batches",
]

log = logging.getLogger("service_ambitions.batches")

MAX_RESUBMISSIONS = 2
"""Times a request the provider expired, or failed transiently (429, 408, 409, 5xx), is submitted again."""
_TRANSIENT = frozenset({408, 409, 429})
_ENDED = frozenset({"succeeded", "errored", "expired", "canceled"})


def supports_batches(model: Model) -> bool:
    """Whether pydantic-ai gives the model a batch API."""
    return model.batch_max_requests is not None


def custom_id_for(call: BatchCall, model_id: str) -> str:
    """A request's id in its batch: the cache key, the attempt and the model (≤ 64 characters)."""
    model = hashlib.sha256(model_id.encode()).hexdigest()[:8]
    return f"sa-{call.key[:40]}-{call.attempt}-{model}"


@dataclass
class _Queued:
    encoded: EncodedBatchRequest
    call: BatchCall
    resubmission: bool


@dataclass
class WaveStats:
    """What the coordinator did in this process."""

    waves: int = 0
    batches_submitted: int = 0
    requests_submitted: int = 0
    resubmitted: int = 0
    batches_collected: int = 0
    results_collected: int = 0
    adopted: int = 0
    cancelled: int = 0
    estimated_usd: Decimal = field(default_factory=Decimal)


class BatchCoordinator:
    """The waves of one run: the queue, the submissions and the collection of results."""

    def __init__(self, state: BatchState, *, max_resubmissions: int = MAX_RESUBMISSIONS) -> None:
        """Create the coordinator over an output's batch state."""
        self.state = state
        self.max_resubmissions = max_resubmissions
        self.models: dict[str, Model] = {}
        self.queue: dict[str, dict[str, _Queued]] = {}
        self.stats = WaveStats()
        waves = [row.wave for row in state.batches()]
        self.wave = max(waves, default=0) + 1

    def register(self, model_id: str, model: Model) -> None:
        """The provider model a configured id submits to and collects from."""
        self.models[model_id] = model

    def model(self, model_id: str) -> Model:
        """The provider model of a configured id.

        Raises:
            UsageError: The id is not one of this run's models (the configuration changed since).
        """
        model = self.models.get(model_id)
        if model is None:
            raise UsageError(
                f"batches in {self.state.path} were submitted to {model_id}, which is not one of the "
                "configured models; run with the settings that submitted them, or cancel them"
            )
        return model

    @property
    def queued(self) -> int:
        """Requests waiting for the next wave."""
        return sum(len(items) for items in self.queue.values())

    # the model side -----------------------------------------------------------------------
    def enqueue(
        self, model_id: str, encoded: EncodedBatchRequest, call: BatchCall, *, resubmission: bool
    ) -> None:
        """Queue a request for the next wave (a request asked twice in one pass is queued once)."""
        self.queue.setdefault(model_id, {}).setdefault(
            encoded.custom_id, _Queued(encoded, call, resubmission)
        )

    def may_resubmit(self, row: ItemRow) -> bool:
        """Whether a failed or expired request has resubmissions left."""
        return row.resubmissions < self.max_resubmissions

    # waves --------------------------------------------------------------------------------
    def estimate_queue(self, estimate: Any) -> Decimal | None:
        """The expected cost of the queued requests (``estimate(model_id, stage, body)``, None: unpriced)."""
        total = Decimal(0)
        for model_id, items in self.queue.items():
            for queued in items.values():
                usd = estimate(model_id, queued.call.stage, queued.encoded.body)
                if usd is None:
                    return None
                total += usd
        return total

    async def submit(self) -> list[str]:
        """Submit every queued request as batches, each chunked to its provider's limits.

        An intent naming the requests is committed before each batch is created, and the batch is
        recorded as soon as the provider returns it, so a process killed in between is reconciled by
        the next run (:meth:`reconcile`) instead of submitting the requests twice.

        Returns:
            The ids of the batches created.

        Raises:
            ModelAPIError: The provider refused a batch (the intent is kept when it may exist).
        """
        from pydantic_ai.exceptions import ModelHTTPError  # noqa: PLC0415

        created: list[str] = []
        for model_id, items in sorted(self.queue.items()):
            model = self.model(model_id)
            for chunk in _chunks(model, list(items.values())):
                intent = self.state.record_intent(model_id, self.wave, (q.encoded.custom_id for q in chunk))
                try:
                    batch = await model.batch_create([queued.encoded for queued in chunk])
                except ModelHTTPError as exc:
                    if exc.status_code < 500:  # refused: no batch exists
                        self.state.drop_intent(intent)
                    raise
                self.state.record_batch(
                    intent,
                    batch_id=batch.id,
                    provider=batch.provider_name,
                    status=batch.status,
                    handle=_handle_json(batch),
                    items=[Submitted(q.encoded.custom_id, q.call.stage, q.call.service_id) for q in chunk],
                    resubmitted=[q.encoded.custom_id for q in chunk if q.resubmission],
                )
                created.append(batch.id)
                self.stats.batches_submitted += 1
                self.stats.requests_submitted += len(chunk)
                self.stats.resubmitted += sum(q.resubmission for q in chunk)
                log.info(
                    "batch %s submitted to %s: %d request(s) (wave %d)",
                    batch.id,
                    model_id,
                    len(chunk),
                    self.wave,
                )
        self.queue.clear()
        if created:
            self.stats.waves += 1
            self.wave += 1
        return created

    async def poll(self, *, collect: bool = True) -> int:
        """Check every batch not collected yet; collect those that ended. Returns how many still run.

        Args:
            collect: Download the results of the batches that ended (False only updates statuses).
        """
        running = 0
        for row in self.state.batches(pending_only=True):
            model = self.model(row.model_id)
            handle = _handle(row.handle)
            batch = await _checked(model, handle, row)
            if batch is None:
                # The offline model's batches live in the process that made them: that one ended
                # before collecting, so its requests count as expired (and are submitted again).
                self.state.record_results(row.model_id, row.batch_id, (), handle=row.handle)
                continue
            if batch.status != "ended" or not collect:
                self.state.update_batch(
                    row.model_id, row.batch_id, status=batch.status, handle=_handle_json(batch)
                )
                running += batch.status != "ended"
                continue
            results = await model.batch_results(batch)
            collected = self.state.record_results(
                row.model_id,
                row.batch_id,
                ((result.custom_id, result.status, result.body) for result in results),
                handle=_handle_json(batch),
            )
            self.stats.batches_collected += 1
            self.stats.results_collected += collected
            log.info("batch %s of %s ended: %d result(s) collected", row.batch_id, row.model_id, collected)
        return running

    async def reconcile(self) -> None:
        """Resolve intents a killed process left: adopt the provider's batch holding them, or requeue them.

        The provider's recent batches are listed (OpenAI: by their input files, which name every
        request's custom id); a batch created from the intent's requests is recorded as if the earlier
        process had done it. Requests no batch holds are forgotten, so the next wave submits them once.

        Raises:
            UsageError: An intent's model has no way to list its batches; naming what to check.
        """
        await reconcile(self)  # llm/_batch_reconcile.py

    async def cancel(self) -> list[BatchRow]:
        """Cancel every batch not collected yet; their unanswered requests are forgotten."""
        cancelled = []
        for row in self.state.batches(pending_only=True):
            model = self.model(row.model_id)
            batch = await model.batch_cancel(_handle(row.handle))
            self.state.forget_batch(row.model_id, row.batch_id)
            self.state.update_batch(
                row.model_id, row.batch_id, status="cancelled", handle=_handle_json(batch)
            )
            cancelled.append(row)
            self.stats.cancelled += 1
        return cancelled


_IN_MEMORY = "in-memory:"


async def _checked(model: Model, batch: Batch, row: BatchRow) -> Batch | None:
    """The batch's current state; None for an in-memory batch this process's model does not hold."""
    from pydantic_ai.exceptions import UserError  # noqa: PLC0415

    try:
        return await model.batch_status(batch)
    except UserError as exc:
        if batch.group.startswith(_IN_MEMORY):
            return None
        raise UsageError(
            f"batch {row.batch_id} of {row.model_id} cannot be checked with the current settings: {exc}"
        ) from None


def _chunks(model: Model, items: list[_Queued]) -> Iterable[list[_Queued]]:
    """Split queued requests into batches within the provider's request and byte limits."""
    max_requests = model.batch_max_requests or len(items) or 1
    max_bytes = model.batch_max_bytes
    chunk: list[_Queued] = []
    size = 0
    for queued in items:
        request_size = model.batch_request_size(queued.encoded)
        too_big = max_bytes is not None and chunk and size + request_size > max_bytes
        if len(chunk) >= max_requests or too_big:
            yield chunk
            chunk, size = [], 0
        chunk.append(queued)
        size += request_size
    if chunk:
        yield chunk


class WaveModel(WrapperModel):
    """Answers from the output's collected batch results, or queues the request for the next wave."""

    def __init__(self, wrapped: Model, model_id: str, coordinator: BatchCoordinator) -> None:
        """Wrap a batch-capable provider model.

        Raises:
            ConfigError: The model has no batch API.
        """
        if not supports_batches(wrapped):
            raise ConfigError(
                f"model {model_id!r} has no batch API in pydantic-ai (batch mode needs openai / "
                "openai-responses, anthropic or google models): run it with --mode live, or --mode auto "
                "to send only its requests live"
            )
        super().__init__(wrapped)
        self.configured_id = model_id
        self.coordinator = coordinator
        coordinator.register(model_id, wrapped)

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """The collected answer of this request, or :class:`Deferred` after queueing it."""
        from pydantic_ai.exceptions import ModelAPIError, ModelHTTPError  # noqa: PLC0415
        from pydantic_ai.models.batch import BatchRequest, BatchResult  # noqa: PLC0415
        from pydantic_ai.usage import RequestUsage  # noqa: PLC0415

        call = batch_call.get()
        if call is None:
            raise RuntimeError("batch mode needs the gateway's call context")  # a bug, not a user error
        coordinator = self.coordinator
        custom_id = custom_id_for(call, self.configured_id)
        request = BatchRequest(
            custom_id=custom_id,
            messages=messages,
            model_settings=model_settings,
            model_request_parameters=model_request_parameters,
        )
        row = coordinator.state.item(custom_id)
        if row is not None and row.status == "submitted":
            raise Deferred(custom_id)
        if row is not None and row.status in _ENDED:
            try:
                response = self.wrapped.batch_decode(
                    BatchResult(custom_id=custom_id, status=row.status, body=row.body),  # type: ignore[arg-type]
                    request,
                )
            except ModelHTTPError as exc:
                transient = exc.status_code in _TRANSIENT or exc.status_code >= 500
                if not (transient and coordinator.may_resubmit(row)):
                    raise
            except ModelAPIError:
                if not (row.status in ("expired", "canceled") and coordinator.may_resubmit(row)):
                    raise
            else:
                if not coordinator.state.mark_accounted(custom_id):
                    response.usage = RequestUsage()  # counted when it was first handed out
                return response
            encoded = await self.wrapped.batch_encode(request)
            coordinator.enqueue(self.configured_id, encoded, call, resubmission=True)
            raise Deferred(custom_id)
        encoded = await self.wrapped.batch_encode(request)
        coordinator.enqueue(self.configured_id, encoded, call, resubmission=False)
        raise Deferred(custom_id)
