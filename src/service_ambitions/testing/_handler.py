"""The request handler of the fake OpenAI server: routing, faults, rate-limit headers.

The Files and Batches endpoints are answered by ``_batches``; :func:`answer_body` is the answer a
model request gets (live or as a batch request).
"""

from __future__ import annotations

import json
import math
import socket
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from service_ambitions.testing._limits import Decision, format_reset
from service_ambitions.testing._protocol import (
    CHARS_PER_TOKEN,
    CHAT_PATH,
    QUOTA_ERROR,
    RESPONSES_PATH,
    Query,
    error_body,
    render,
)

if TYPE_CHECKING:
    from service_ambitions.testing.openai_server import FakeOpenAIServer

__all__ = ["RUNAWAY", "RUNAWAY_CHARS", "Handler", "Server", "answer_body"]

RUNAWAY = "and the service improves further, "
"""What a ``runaway`` answer repeats."""
RUNAWAY_CHARS = 40_000
"""Length of a ``runaway`` answer when no cap stops it (~10,000 tokens)."""


def answer_body(fake: FakeOpenAIServer, query: Query, number: int, fault: str) -> tuple[int, Any]:
    """The status and body an admitted model request gets, for the faults that answer with one.

    ``quota`` and HTTP statuses get OpenAI's error body; ``truncated`` and ``runaway`` a cut or endless
    answer; anything else (``ok``) the offline model's answer.
    """
    behaviour = fake.behaviour
    if fault == "quota" or fault.isdigit():
        status = 429 if fault == "quota" else int(fault)
        return status, error_body(status, QUOTA_ERROR if fault == "quota" else None)
    if behaviour.llama and query.format_type == "json_schema":
        message = "JSON schema conversion failed: response_format type json_schema is not supported"
        error = {"code": behaviour.llama_status, "message": message, "type": "invalid_request_error"}
        return behaviour.llama_status, {"error": error}
    tool = query.tool(behaviour.llama)
    text = fake.answer(query, tool)
    truncated = fault == "truncated"
    cap = query.cap(behaviour.llama) * CHARS_PER_TOKEN
    if fault == "runaway":  # a small model repeating itself: invalid JSON, far past any sane length
        text = text[: len(text) // 3] + RUNAWAY * (RUNAWAY_CHARS // len(RUNAWAY))
    if truncated:
        text = text[: len(text) // 2]
    elif (fault == "runaway" or behaviour.llama) and cap and len(text) > cap:
        text, truncated = text[:cap], True  # cut at the cap the server reads
    elif tool is None and behaviour.llama and query.tools:
        text = f"```json\n{text}\n```"
    cached = fake.cached_tokens(query.prompt)
    return 200, render(query, number, tool, text, truncated=truncated, cached=cached)


class Server(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` that notes handler errors on the fake instead of printing tracebacks."""

    daemon_threads = True
    # A run without client-side limits opens hundreds of connections at once; socketserver's default
    # backlog of 5 would reset some of them, which no real provider does.
    request_queue_size = 256
    fake: FakeOpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Keep the error for assertions (a client that hung up mid-answer is not one)."""
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            with self.fake.lock:
                self.fake.errors.append(repr(error))


class Handler(BaseHTTPRequestHandler):
    """One connection to the fake server; its state lives on the ``FakeOpenAIServer``."""

    protocol_version = "HTTP/1.1"  # keep-alive, like real providers
    timeout = 10  # idle keep-alive connections end on their own
    server_version = "fake-openai/1"

    @property
    def fake(self) -> FakeOpenAIServer:
        server = self.server
        assert isinstance(server, Server)
        return server.fake

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle + delayed ACK add 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is ``FakeOpenAIServer.requests``."""

    def _send(
        self,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _record(self, body: Any, fault: str = "ok") -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.fake.record(self.command, self.path, body, headers, fault)

    def do_GET(self) -> None:
        if self._batches():
            return
        self._record(None)
        if self.path.rstrip("/") == "/v1/models":
            model = {"id": "gpt-5-mini", "object": "model", "created": 0, "owned_by": "fake-openai"}
            self._send(200, {"object": "list", "data": [model]})
        else:
            self._send(404, error_body(404, (f"Unknown path {self.path}.", "invalid_request_error", None)))

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self._batches(raw):
            return
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._record(raw.decode(errors="replace"))
            self._send(
                400, error_body(400, ("We could not parse the JSON body.", "invalid_request_error", None))
            )
            return
        if self.path not in {CHAT_PATH, RESPONSES_PATH} or not isinstance(body, dict):
            self._record(body)
            self._send(404, error_body(404, (f"Unknown path {self.path}.", "invalid_request_error", None)))
            return
        self._answer(Query.parse(self.path, body), body)

    def do_DELETE(self) -> None:
        if not self._batches():
            self._record(None)
            self._send(404, error_body(404, (f"Unknown path {self.path}.", "invalid_request_error", None)))

    def _batches(self, raw: bytes = b"") -> bool:
        """Answer a Files or Batches API request; ``False`` when the path is neither."""
        content_type = self.headers.get("content-type") or ""
        reply = self.fake.batch_api.handle(self.command, self.path, content_type, raw)
        if reply is None:
            return False
        self._record(reply.logged)
        if reply.hold:
            self.fake.closing.wait(reply.hold)
        self._send(reply.status, reply.payload, content_type=reply.content_type)
        return True

    def _answer(self, query: Query, body: dict[str, Any]) -> None:
        fake, behaviour = self.fake, self.fake.behaviour
        with fake.lock:
            fake.counters.requests += 1
            number = fake.counters.requests
            fault = behaviour.fault(number)
            fake.counters.by_fault[fault] = fake.counters.by_fault.get(fault, 0) + 1
        self._record(body, fault)
        decision = fake.admit(len(query.prompt) // 4 + query.max_tokens)
        headers = self._limit_headers(decision)
        if not decision.allowed:
            if behaviour.retry_after:
                headers["retry-after"] = str(max(1, math.ceil(decision.retry_after)))
                headers["retry-after-ms"] = str(round(decision.retry_after * 1000))
            self._send(429, error_body(429), headers)
            return
        if behaviour.latency:
            fake.closing.wait(behaviour.latency)
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # linger 0: the peer gets an RST, not a FIN
            self.close_connection = True
        elif fault == "stall":
            fake.closing.wait(behaviour.stall_seconds)
            self.close_connection = True
        elif fault == "garbage":
            self._send(200, b'{"id": "chatcmpl-garbage", "choices": [{"index": 0, "mess', headers)
        elif fault == "quota" or fault.isdigit():
            self._fail(429 if fault == "quota" else int(fault), fault, headers)
        else:
            self._send(*answer_body(fake, query, number, fault), headers)

    def _fail(self, status: int, fault: str, headers: dict[str, str]) -> None:
        if status == 429:
            with self.fake.lock:
                self.fake.counters.rate_limited += 1
            if self.fake.behaviour.retry_after and fault != "quota":
                headers = {**headers, "retry-after": "1", "retry-after-ms": "1000"}
        self._send(status, error_body(status, QUOTA_ERROR if fault == "quota" else None), headers)

    def _limit_headers(self, decision: Decision) -> dict[str, str]:
        behaviour = self.fake.behaviour
        if not behaviour.rate_limit_headers:
            return {}
        headers: dict[str, str] = {}
        for kind, limit, remaining, reset in (
            ("requests", behaviour.rpm, decision.remaining_requests, decision.reset_requests),
            ("tokens", behaviour.tpm, decision.remaining_tokens, decision.reset_tokens),
        ):
            if limit is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
                headers[f"x-ratelimit-reset-{kind}"] = format_reset(reset)
        return headers
