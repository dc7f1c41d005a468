"""OpenAI's Batch API for the fake server: the Files and Batches endpoints and a batch's lifecycle.

A batch moves on lazily, whenever a request looks at it (retrieve, list, cancel), by the server's clock:
``validating`` when created, ``in_progress`` until ``Behaviour.batch_delay`` has passed (answering its
share of the requests so far), then ``completed`` (or ``expired``, ``failed`` when its input file did
not validate, ``cancelled`` on the look after a cancel). Each request line is answered by the callback
the server passes in, the answer a live request to its ``url`` gets; output and error files are written
as OpenAI writes them. Thread-safe: a lock for the registry, one per batch for its progress.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from service_ambitions.testing._batch_format import (
    Reply,
    Request,
    api_error,
    create_problem,
    form_fields,
    input_items,
    new_id,
    parse_json,
    usage_of,
    validate_input,
)

if TYPE_CHECKING:
    from service_ambitions.testing.openai_server import Behaviour

__all__ = ["Answer", "BatchAPI", "BatchCounters", "BatchItem", "BatchRecord"]

Answer = Callable[[str, dict[str, Any], int, str], tuple[int, Any]]
"""Answers one request: ``(url, body, number, fault) -> (status, body)``, as a live request would be."""

_ROUTE = re.compile(r"^/v1/(files|batches)(?:/([^/]+))?(?:/(content|cancel))?/?$")
_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
_UNRUN = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}
_MOMENTS = tuple(
    f"{status}_at"
    for status in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
)
_DAY = 24 * 3600
_FILE_TTL = 30 * _DAY  # batch files expire after 30 days unless told otherwise


@dataclass(frozen=True)
class BatchItem:
    """One request of a batch about to be answered (what ``Behaviour.batch_item_failures`` decides on)."""

    number: int
    """1-based count of batch requests the server has answered, this one included."""
    custom_id: str
    batch_id: str
    line: int
    """1-based line of the batch's input file."""
    attempt: int
    """How many times this server has answered a request with this ``custom_id``, this one included."""


@dataclass
class BatchCounters:
    """What the Batch API has seen so far."""

    files_uploaded: int = 0
    """``POST /v1/files`` accepted."""
    files_deleted: int = 0
    batches_created: int = 0
    """``POST /v1/batches`` accepted (including batches whose input file then fails validation)."""
    batches_completed: int = 0
    batches_failed: int = 0
    """Batches whose input file failed validation."""
    batches_expired: int = 0
    batches_cancelled: int = 0
    cancels: int = 0
    """``POST /v1/batches/{id}/cancel`` answered 200."""
    items_answered: int = 0
    """Batch requests run (answered with any status; also ``BatchItem.number`` of the last one)."""
    items_failed: int = 0
    """Batch requests answered with a non-2xx status (``Behaviour.batch_item_failures``)."""
    items_expired: int = 0
    """Requests a batch expired without running (``batch_expired`` in its error file)."""
    items_cancelled: int = 0
    """Requests a batch was cancelled before running (``batch_cancelled`` in its error file)."""


@dataclass(frozen=True)
class BatchRecord:
    """A batch as the server holds it (a snapshot)."""

    id: str
    number: int
    """1-based creation order (what an int ``Behaviour.batch_expire`` counts)."""
    endpoint: str
    input_file_id: str
    custom_ids: tuple[str, ...]
    """The ``custom_id`` of every input line that had one, in file order (duplicates included)."""
    bodies: tuple[Any, ...]
    """The request bodies, parallel to ``custom_ids``."""
    status: str
    metadata: dict[str, str] | None
    answered: tuple[str, ...]
    """The ``custom_id`` of each request the batch ran, in order."""
    output_file_id: str | None
    error_file_id: str | None


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def view(self) -> dict[str, Any]:
        expires = self.created_at + _FILE_TTL if self.purpose.startswith("batch") else None
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": expires,
        }


@dataclass
class _Batch:
    id: str
    number: int
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created: float
    """Server clock at creation."""
    lines: list[Request]
    """Its requests once validated (none if it failed)."""
    errors: list[dict[str, Any]]
    record_ids: tuple[str, ...]
    record_bodies: tuple[Any, ...]
    run_limit: int | None
    """Requests it runs before it expires (``None``: it completes)."""
    status: str = "validating"
    times: dict[str, float] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    """The output line of each request run so far, in input order."""
    output_file_id: str | None = None
    error_file_id: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _ok(result: dict[str, Any]) -> bool:
    response = result.get("response")
    return response is not None and 200 <= response["status_code"] < 300


class BatchAPI:
    """The Files and Batches endpoints of one fake server, and everything they hold."""

    def __init__(self, behaviour: Behaviour, answer: Answer) -> None:
        """Start empty.

        Args:
            behaviour: The server's behaviour (its ``batch_*`` knobs and clock).
            answer: Answers one request line as a live request to its ``url``.
        """
        self._behaviour = behaviour
        self._answer = answer
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}
        self._attempts: dict[str, int] = {}
        self._epoch = time.time() - behaviour.clock()  # Unix time of server clock 0
        self.counters = BatchCounters()

    def records(self) -> list[BatchRecord]:
        """Every batch created so far, oldest first (snapshots)."""
        with self._lock:
            batches = sorted(self._batches.values(), key=lambda batch: batch.number)
        records = []
        for batch in batches:
            with batch.lock:
                answered = tuple(result["custom_id"] for result in batch.results)
                records.append(
                    BatchRecord(
                        batch.id,
                        batch.number,
                        batch.endpoint,
                        batch.input_file_id,
                        batch.record_ids,
                        batch.record_bodies,
                        batch.status,
                        batch.metadata,
                        answered,
                        batch.output_file_id,
                        batch.error_file_id,
                    )
                )
        return records

    def handle(self, method: str, target: str, content_type: str, raw: bytes) -> Reply | None:
        """Answer a request to the Files or Batches API; ``None`` when ``target`` is neither."""
        path = urlsplit(target).path
        match = _ROUTE.match(path)
        if match is None:
            return None
        if not self._behaviour.batch_api:
            return api_error(404, f"Unknown path {path}.")
        kind, name, action = match.groups()
        if kind == "files":
            reply = self._files_route(method, name, action, content_type, raw)
        else:
            body = parse_json(raw) if method == "POST" and name is None else None
            reply = self._batches_route(method, name, action, target, body)
            reply = reply and replace(reply, logged=body)
        return reply or api_error(404, f"Unknown path {method} {path}.")

    # files -------------------------------------------------------------------------------------
    def _files_route(
        self, method: str, name: str | None, action: str | None, content_type: str, raw: bytes
    ) -> Reply | None:
        if name is None:
            return self._upload(content_type, raw) if method == "POST" and action is None else None
        if (method, action) not in {("GET", None), ("GET", "content"), ("DELETE", None)}:
            return None
        with self._lock:
            file = self._files.get(name)
        if file is None:
            return api_error(404, f"No such File object: {name}", "id")
        if action == "content":
            return Reply(200, file.data, "application/octet-stream")
        if method == "DELETE":
            with self._lock:
                self._files.pop(name, None)
                self.counters.files_deleted += 1
            return Reply(200, {"id": name, "object": "file", "deleted": True})
        return Reply(200, file.view())

    def _upload(self, content_type: str, raw: bytes) -> Reply:
        fields = form_fields(content_type, raw)
        logged = {
            name: value.decode(errors="replace")
            if filename is None
            else {"filename": filename, "bytes": len(value)}
            for name, (filename, value) in fields.items()
        }
        return replace(self._store(fields), logged=logged)

    def _store(self, fields: dict[str, tuple[str | None, bytes]]) -> Reply:
        if "file" not in fields:
            return api_error(400, "Missing required parameter: 'file'.", "file", "missing_required_parameter")
        purpose = fields.get("purpose", (None, b""))[1].decode(errors="replace")
        if purpose not in _PURPOSES:
            return api_error(400, f"Invalid value for 'purpose': {purpose!r}.", "purpose", "invalid_value")
        filename, data = fields["file"]
        file = _File(new_id("file-"), filename or "upload", purpose, data, self._unix(None))
        with self._lock:
            self._files[file.id] = file
            self.counters.files_uploaded += 1
        return Reply(200, file.view())

    # batches -----------------------------------------------------------------------------------
    def _batches_route(
        self, method: str, name: str | None, action: str | None, target: str, body: Any
    ) -> Reply | None:
        if name is None:
            if action is not None:
                return None
            return self._create(body) if method == "POST" else self._list(target) if method == "GET" else None
        if (method, action) not in {("GET", None), ("POST", "cancel")}:
            return None
        with self._lock:
            batch = self._batches.get(name)
        if batch is None:
            return api_error(404, f"No batch found with id '{name}'.", "batch_id")
        if action == "cancel":
            return self._cancel(batch)
        with batch.lock:
            self._advance(batch)
            return Reply(200, self._view(batch))

    def _create(self, body: Any) -> Reply:
        if not isinstance(body, dict):
            return api_error(400, "We could not parse the JSON body.")
        problem = create_problem(body)
        if problem is not None:
            return problem
        with self._lock:
            file = self._files.get(body["input_file_id"])
        if file is None:
            return api_error(404, f"No such File object: {body['input_file_id']}", "input_file_id")
        if file.purpose != "batch":
            message = f"The input file must be uploaded with purpose 'batch', not {file.purpose!r}."
            return api_error(400, message, "input_file_id", "invalid_value")
        with self._lock:
            self.counters.batches_created += 1
            number = self.counters.batches_created
        lines, errors = validate_input(file.data, body["endpoint"])
        records = [item for item in input_items(file.data) if isinstance(item.get("custom_id"), str)]
        run_limit = None if errors else self._behaviour.batch_expiry(number, len(lines))
        batch = _Batch(
            id=new_id("batch_"),
            number=number,
            endpoint=body["endpoint"],
            input_file_id=file.id,
            completion_window=body["completion_window"],
            metadata=body.get("metadata"),
            created=self._behaviour.clock(),
            lines=[] if errors else lines,
            errors=errors,
            record_ids=tuple(item["custom_id"] for item in records),
            record_bodies=tuple(item.get("body") for item in records),
            run_limit=None if run_limit is None else max(0, min(run_limit, len(lines))),
        )
        with self._lock:
            self._batches[batch.id] = batch
        with batch.lock:
            return Reply(200, self._view(batch), hold=self._behaviour.batch_create_stall)

    def _list(self, target: str) -> Reply:
        query = parse_qs(urlsplit(target).query)
        limit_text = query.get("limit", ["20"])[0]
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
            return api_error(400, "Invalid 'limit': must be between 1 and 100.", "limit", "invalid_value")
        limit, after = int(limit_text), query.get("after", [None])[0]
        with self._lock:
            ordered = sorted(self._batches.values(), key=lambda batch: batch.number, reverse=True)
        start = 0
        if after is not None:
            ids = [batch.id for batch in ordered]
            if after not in ids:
                return api_error(400, f"Invalid 'after': no batch {after!r}.", "after", "invalid_value")
            start = ids.index(after) + 1
        page = ordered[start : start + limit]
        data = []
        for batch in page:
            with batch.lock:
                self._advance(batch)
                data.append(self._view(batch))
        return Reply(
            200,
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": start + limit < len(ordered),
            },
        )

    def _cancel(self, batch: _Batch) -> Reply:
        with batch.lock:
            self._advance(batch)
            if batch.status in _ENDED:
                return api_error(409, f"Cannot cancel a batch with status '{batch.status}'.")
            if batch.status != "cancelling":
                batch.status = "cancelling"
                batch.times["cancelling_at"] = self._behaviour.clock()
            with self._lock:
                self.counters.cancels += 1
            return Reply(200, self._view(batch))

    # lifecycle (callers hold the batch's lock) -------------------------------------------------
    def _advance(self, batch: _Batch) -> None:
        """Move ``batch`` on to where the server's clock says it is now."""
        if batch.status in _ENDED:
            return
        now = self._behaviour.clock()
        if batch.errors:
            self._end(batch, "failed", now)
            return
        if batch.status == "cancelling":
            self._end(batch, "cancelled", now)
            return
        delay, total = self._behaviour.batch_delay, len(batch.lines)
        done = delay <= 0 or now - batch.created >= delay
        due = total if done else math.floor(total * (now - batch.created) / delay)
        self._run(batch, due if batch.run_limit is None else min(due, batch.run_limit))
        batch.times.setdefault("in_progress_at", now)
        if done:
            self._end(batch, "completed" if batch.run_limit is None else "expired", now)
        else:
            batch.status = "in_progress"

    def _run(self, batch: _Batch, due: int) -> None:
        """Answer the batch's requests up to the ``due``-th."""
        for index in range(len(batch.results), due):
            custom_id, body = batch.lines[index]
            with self._lock:
                self.counters.items_answered += 1
                number = self.counters.items_answered
                attempt = self._attempts[custom_id] = self._attempts.get(custom_id, 0) + 1
            item = BatchItem(number, custom_id, batch.id, index + 1, attempt)
            status, answer = self._answer(batch.endpoint, body, number, self._behaviour.batch_fault(item))
            if isinstance(answer, dict) and isinstance(answer.get("id"), str):
                answer = {**answer, "id": answer["id"].replace("fake", "fakebatch", 1)}  # unlike live ids
            response = {"status_code": status, "request_id": uuid.uuid4().hex, "body": answer}
            batch.results.append(
                {"id": new_id("batch_req_"), "custom_id": custom_id, "response": response, "error": None}
            )
            if not 200 <= status < 300:
                with self._lock:
                    self.counters.items_failed += 1

    def _end(self, batch: _Batch, status: str, now: float) -> None:
        batch.status = status
        batch.times[f"{status}_at"] = now
        if status == "failed":
            with self._lock:
                self.counters.batches_failed += 1
            return
        batch.times.setdefault("in_progress_at", now)
        if status == "completed":
            batch.times.setdefault("finalizing_at", now)
        unrun: list[dict[str, Any]] = []
        if status in _UNRUN:
            code, message = _UNRUN[status]
            unrun = [
                {"id": new_id("batch_req_"), "custom_id": custom_id, "response": None}
                | {"error": {"code": code, "message": message}}
                for custom_id, _ in batch.lines[len(batch.results) :]
            ]
        output = [result for result in batch.results if _ok(result)]
        errors = [result for result in batch.results if not _ok(result)] + unrun
        batch.output_file_id = self._write(batch, "output", output)
        batch.error_file_id = self._write(batch, "error", errors)
        with self._lock:
            if status == "completed":
                self.counters.batches_completed += 1
            elif status == "expired":
                self.counters.batches_expired += 1
                self.counters.items_expired += len(unrun)
            else:
                self.counters.batches_cancelled += 1
                self.counters.items_cancelled += len(unrun)

    def _write(self, batch: _Batch, kind: str, lines: list[dict[str, Any]]) -> str | None:
        """Store a result file of ``batch`` (none when it would be empty, as OpenAI does)."""
        if not lines:
            return None
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        file = _File(new_id("file-"), f"{batch.id}_{kind}.jsonl", "batch_output", data, self._unix(None))
        with self._lock:
            self._files[file.id] = file
        return file.id

    def _unix(self, clock: float | None) -> int:
        """Unix seconds of a server-clock time (now for ``None``)."""
        return int(self._epoch + (self._behaviour.clock() if clock is None else clock))

    def _view(self, batch: _Batch) -> dict[str, Any]:
        """The batch object, as ``GET /v1/batches/{id}`` returns it."""
        answered = [result["response"] for result in batch.results]
        completed = sum(1 for response in answered if 200 <= response["status_code"] < 300)
        used = [usage_of(response["body"]) for response in answered if 200 <= response["status_code"] < 300]
        tokens_in, tokens_out = sum(each[0] for each in used), sum(each[1] for each in used)
        created = self._unix(batch.created)
        view: dict[str, Any] = {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "model": str(batch.lines[0][1]["model"]) if batch.lines else None,
            "errors": {"object": "list", "data": batch.errors} if batch.status == "failed" else None,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.completion_window,
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": created,
            "expires_at": created + _DAY,
        }
        for moment in _MOMENTS:
            at = batch.times.get(moment)
            view[moment] = None if at is None else self._unix(at)
        view["request_counts"] = {
            "total": 0 if batch.status in {"validating", "failed"} else len(batch.lines),
            "completed": completed,
            "failed": len(answered) - completed,
        }
        view["metadata"] = batch.metadata
        view["usage"] = {
            "input_tokens": tokens_in,
            "input_tokens_details": {"cached_tokens": sum(each[2] for each in used)},
            "output_tokens": tokens_out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens_in + tokens_out,
        }
        return view
