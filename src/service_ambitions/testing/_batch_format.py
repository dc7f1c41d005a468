"""OpenAI's Batch API wire format for the fake server: uploads, input files, create checks, errors.

Pure functions over bytes and JSON; the lifecycle is in ``_batches``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from service_ambitions.testing._protocol import CHAT_PATH, RESPONSES_PATH

__all__ = [
    "BATCH_ENDPOINTS",
    "Reply",
    "api_error",
    "create_problem",
    "form_fields",
    "Request",
    "input_items",
    "new_id",
    "parse_json",
    "usage_of",
    "validate_input",
]

BATCH_ENDPOINTS = frozenset({CHAT_PATH, RESPONSES_PATH})
"""The endpoints a batch can run (the ones the fake answers)."""


@dataclass(frozen=True)
class Reply:
    """An answer for the handler to send."""

    status: int
    payload: Any
    """JSON-able, or ``bytes`` sent as they are."""
    content_type: str = "application/json"
    logged: Any = None
    """The request body for the request log (a summary for uploads)."""
    hold: float = 0.0
    """Seconds to hold the answer first (released when the server stops)."""


def api_error(status: int, message: str, param: str | None = None, code: str | None = None) -> Reply:
    """OpenAI's error answer."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return Reply(status, {"error": error})


def new_id(prefix: str) -> str:
    """A fresh id in OpenAI's style (``file-…``, ``batch_…``, ``batch_req_…``)."""
    return prefix + uuid.uuid4().hex[:24]


def form_fields(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a ``multipart/form-data`` body: ``name -> (filename, content)``."""
    header = EmailMessage()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        return {}
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in raw.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        disposition = EmailMessage()
        for line in head.decode(errors="replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition["content-disposition"] = value.strip()
        field = disposition.get_param("name", header="content-disposition")
        if isinstance(field, str):
            fields[field] = (disposition.get_filename(), content.removesuffix(b"\r\n"))
    return fields


Request = tuple[str, dict[str, Any]]
"""``(custom_id, body)`` of one request of an input file."""
_DUPLICATE = (
    "The custom_id for this request is a duplicate of another request. "
    "The custom_id parameter must be unique for each individual request in a batch."
)


Problem = tuple[str, str, str | None]
"""``(code, message, param)`` of a line that fails validation."""


def _problem(item: Any, endpoint: str, seen: set[str], model: str | None) -> Problem | None:
    """What is wrong with one input line, as ``(code, message, param)``."""
    if not isinstance(item, dict):
        return "invalid_json_line", "This line is not parseable as valid JSON.", None
    custom_id, body = item.get("custom_id"), item.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        return "missing_required_parameter", "Missing required parameter: 'custom_id'.", "custom_id"
    if custom_id in seen:
        return "duplicate_custom_id", _DUPLICATE, "custom_id"
    if item.get("method") != "POST":
        return "invalid_value", "Invalid value for 'method': only POST is supported.", "method"
    if item.get("url") != endpoint:
        return "invalid_url", f"The url does not match the batch's endpoint {endpoint}.", "url"
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return "missing_required_parameter", "Missing required parameter: 'body.model'.", "body.model"
    if model is not None and body["model"] != model:
        message = f"Every request of a batch must use the same model; this one uses {body['model']}."
        return "mismatched_model", message, "body.model"
    return None


def validate_input(data: bytes, endpoint: str) -> tuple[list[Request], list[dict[str, Any]]]:
    """The requests of an input file, and its validation errors (as OpenAI lists them in ``errors.data``).

    Lines are numbered from 1 over every line of the file, blank ones included (and skipped).
    """
    requests: list[Request] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    for line, text in enumerate(data.decode(errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        item = parse_json(text.encode())
        problem = _problem(item, endpoint, seen, model)
        if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
            seen.add(item["custom_id"])
        if problem is not None:
            code, message, param = problem
            errors.append({"code": code, "message": message, "param": param, "line": line})
        else:
            model = model or str(item["body"]["model"])
            requests.append((item["custom_id"], item["body"]))
    if not requests and not errors:
        errors.append(
            {"code": "empty_file", "message": "The input file is empty.", "param": None, "line": None}
        )
    return requests, errors


def create_problem(body: dict[str, Any]) -> Reply | None:
    """Why OpenAI refuses at once to create this batch (before it looks at the file), if it does."""
    for required in ("input_file_id", "endpoint", "completion_window"):
        if not body.get(required):
            message = f"Missing required parameter: '{required}'."
            return api_error(400, message, required, "missing_required_parameter")
    if body["endpoint"] not in BATCH_ENDPOINTS:
        supported = ", ".join(sorted(BATCH_ENDPOINTS))
        message = f"Invalid value for 'endpoint': {body['endpoint']!r}; this server supports {supported}."
        return api_error(400, message, "endpoint", "invalid_value")
    if body["completion_window"] != "24h":
        message = "Invalid value for 'completion_window': only '24h' is supported."
        return api_error(400, message, "completion_window", "invalid_value")
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and len(metadata) <= 16
        and all(isinstance(key, str) and len(key) <= 64 for key in metadata)
        and all(isinstance(value, str) and len(value) <= 512 for value in metadata.values())
    ):
        message = "Invalid 'metadata': at most 16 string keys (64 characters) and values (512 characters)."
        return api_error(400, message, "metadata", "invalid_value")
    return None


def parse_json(raw: bytes) -> Any:
    """The JSON value of a body (``{}`` when empty), or ``None`` if it is not JSON."""
    try:
        return json.loads(raw or b"{}")
    except json.JSONDecodeError:
        return None


def usage_of(body: Any) -> tuple[int, int, int]:
    """``(input, output, cached)`` tokens of an answer in either API."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0, 0
    details = usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}
    return (
        int(usage.get("input_tokens") or usage.get("prompt_tokens") or 0),
        int(usage.get("output_tokens") or usage.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or 0),
    )


def input_items(data: bytes) -> list[dict[str, Any]]:
    """The lines of an input file that are JSON objects (for the record, valid or not)."""
    items = []
    for text in data.decode(errors="replace").splitlines():
        try:
            item = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict):
            items.append(item)
    return items
