"""The signal of batch mode, kept free of heavy imports: a call whose answer waits in a provider batch.

The gateway sets :data:`batch_call` around each model request so that the batch layer
(``llm/batching.py``) can name the request after the call's cache key; the pipeline and the engine
catch :class:`Deferred` to finish the service in a later wave instead of failing it.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["BatchCall", "Deferred", "batch_call"]


@dataclass(frozen=True)
class BatchCall:
    """The gateway call a model request belongs to."""

    key: str
    """The call's cache key."""
    attempt: int
    """1 for the first answer, 2.. for re-asks."""
    stage: str
    service_id: str


batch_call: ContextVar[BatchCall | None] = ContextVar("sa_batch_call", default=None)


class Deferred(Exception):
    """The call's answer waits in a provider batch; the service is finished in a later wave."""
