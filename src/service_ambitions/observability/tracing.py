"""Request ids for log lines: set around each model request, added to every record logged inside it."""

from __future__ import annotations

import logging
from contextvars import ContextVar

__all__ = ["RequestIdFilter", "current_request"]

current_request: ContextVar[tuple[str, str] | None] = ContextVar("sa_current_request", default=None)
"""(request id, service id) of the model request the current task is making, if any."""


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (and ``service_id``) to records logged while a model request is under way."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate the record; never drops it."""
        current = current_request.get()
        if current is not None:
            if not hasattr(record, "request_id"):
                record.request_id = current[0]
            if not hasattr(record, "service_id"):
                record.service_id = current[1]
        return True
