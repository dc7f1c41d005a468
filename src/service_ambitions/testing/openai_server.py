"""A local OpenAI-compatible HTTP server for tests and the benchmark.

It answers ``POST /v1/chat/completions`` and ``POST /v1/responses`` (what ``openai:`` models
call) with the built-in offline model's answers (valid for every stage), the way OpenAI's API
sends them, and can misbehave the ways real providers do: latency, RPM/TPM limits with OpenAI's
headers, scripted faults per request, llama.cpp quirks.

Example:
    >>> with FakeOpenAIServer(Behaviour(faults=["500", "ok"])) as server:  # doctest: +SKIP
    ...     run_pipeline(base_url=server.base_url)

Batch API: the same server answers OpenAI's Files and Batches endpoints (``POST /v1/files``, ``GET`` and
``DELETE /v1/files/{id}``, ``GET /v1/files/{id}/content``, ``POST``/``GET /v1/batches``, ``GET
/v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``), so pydantic-ai's ``OpenAIResponsesModel.batch_*``
and the ``openai`` SDK work against it. Each line of a batch's input file is answered as a live request
to its ``url`` would be (offline-model answers with usage; no rate limits, latency or ``faults``), into
output and error files shaped as OpenAI writes them. A batch moves on when a request looks at it, by
``Behaviour.clock``: ``batch_delay`` sets how long it runs, ``batch_expire`` which batches expire,
``batch_item_failures`` which requests fail, ``batch_create_stall`` how long a create hangs;
``batch_counters`` and ``batch_records()`` say what the server saw.

Standalone: ``python -m service_ambitions.testing.openai_server --port 8011 --rpm 60 --latency 0.2``.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any

from service_ambitions.llm.offline import OfflineModel
from service_ambitions.testing._batches import BatchAPI, BatchCounters, BatchItem, BatchRecord
from service_ambitions.testing._handler import Handler, Server, answer_body
from service_ambitions.testing._limits import Decision, PrefixCache, Window
from service_ambitions.testing._protocol import CHAT_PATH, RESPONSES_PATH, Query, offline_answer

__all__ = [
    "BATCH_FAULTS",
    "FAULTS",
    "BatchCounters",
    "BatchItem",
    "BatchRecord",
    "Behaviour",
    "FakeOpenAIServer",
    "RecordedRequest",
    "ServerCounters",
    "unused_port",
]

FAULTS = frozenset({"ok", "stall", "reset", "garbage", "truncated", "runaway", "quota"})
"""Scripted faults; any three-digit HTTP status (``"429"``, ``"500"``, ``"401"``...) is one too.

``truncated`` cuts the answer in half (``finish_reason: length``); ``runaway`` answers ~10,000 tokens of
repetition (invalid JSON) unless the output cap the server reads stops it first."""
BATCH_FAULTS = frozenset({"ok", "truncated", "runaway", "quota"})
"""Faults a batch request can have (and any three-digit HTTP status); the others break a connection."""
_POLL = 0.05  # seconds between shutdown checks of the serving loop (stop() waits up to this long)


@dataclass
class Behaviour:
    """How the server behaves; every field has a well-behaved default.

    Attributes:
        latency: Seconds each answer takes (slept in the request's own thread, so requests overlap).
        rpm: Requests admitted per sliding 60 s window (``None``: unlimited).
        tpm: Tokens (prompt + completion) admitted per sliding 60 s window.
        retry_after: Send ``retry-after``/``retry-after-ms`` with rate-limit 429s.
        rate_limit_headers: Send ``x-ratelimit-*`` headers on every answer (local servers do not).
        faults: The fault for each request number (1-based): a sequence (``ok`` past its end) or a function.
        stall_seconds: How long a ``stall`` holds the request before dropping the connection unanswered.
        llama: Behave like llama.cpp's server: reject ``json_schema`` response formats, ignore
            ``tool_choice: "required"`` (answer fenced JSON text unless a tool is named), read the
            output cap from ``max_tokens`` only (not ``max_completion_tokens``) and cut answers at it.
        llama_status: The status llama mode answers an unsupported ``response_format`` with.
        prefix_cache: Simulate OpenAI prompt caching in ``usage.prompt_tokens_details.cached_tokens``.
        clock: Time source of the rate-limit window, the request log and batch progress.
        batch_api: Serve the Files and Batches endpoints (``False``: 404, like a server without them).
        batch_delay: Seconds from a batch's creation to its end; it answers its requests in proportion
            as the time passes (0: it ends on the first look after creation).
        batch_expire: Which batches expire: an int N expires the first N batches created without running
            any request; a function ``(batch number, request count) -> int | None`` gives how many of its
            requests a batch runs before it expires (``None``: it completes). Expiry comes after
            ``batch_delay``.
        batch_item_failures: The fault of each batch request: ``{custom_id: fault}`` (every time that
            request runs) or a function of the :class:`BatchItem` about to be answered. A fault is one of
            :data:`BATCH_FAULTS` or a three-digit status (``"500"``: a response line with that status and
            OpenAI's error body, in the error file).
        batch_create_stall: Seconds ``POST /v1/batches`` holds its answer after creating the batch (a
            client that gives up or dies meanwhile leaves a batch it has no id for).
    """

    latency: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    retry_after: bool = True
    rate_limit_headers: bool = True
    faults: Sequence[str] | Callable[[int], str] = ()
    stall_seconds: float = 30.0
    llama: bool = False
    llama_status: int = 400
    prefix_cache: bool = False
    clock: Callable[[], float] = time.monotonic
    batch_api: bool = True
    batch_delay: float = 0.0
    batch_expire: int | Callable[[int, int], int | None] = 0
    batch_item_failures: Mapping[str, str] | Callable[[BatchItem], str] = field(default_factory=dict)
    batch_create_stall: float = 0.0

    def fault(self, number: int) -> str:
        """The scripted fault of request ``number`` (1-based)."""
        if callable(self.faults):
            return self.faults(number)
        return self.faults[number - 1] if number <= len(self.faults) else "ok"

    def batch_expiry(self, number: int, requests: int) -> int | None:
        """How many requests batch ``number`` (1-based) runs before it expires (``None``: it completes)."""
        if callable(self.batch_expire):
            return self.batch_expire(number, requests)
        return 0 if number <= self.batch_expire else None

    def batch_fault(self, item: BatchItem) -> str:
        """The fault of one batch request (``ValueError`` for one a batch request cannot have)."""
        rule = self.batch_item_failures
        fault = str(rule(item) if callable(rule) else rule.get(item.custom_id, "ok"))
        if fault not in BATCH_FAULTS and not (fault.isdigit() and len(fault) == 3):
            raise ValueError(f"batch requests cannot have the fault {fault!r}")
        return fault


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    body: Any
    headers: dict[str, str]
    time: float
    fault: str = "ok"


@dataclass
class ServerCounters:
    """What the server has seen so far."""

    requests: int = 0
    """Model requests received (chat completions and responses)."""
    rate_limited: int = 0
    """429 answers sent (rate limits and scripted 429s)."""
    max_requests_per_window: int = 0
    """Most model requests received within any 60 s window."""
    by_fault: dict[str, int] = field(default_factory=dict)


def unused_port() -> int:
    """A 127.0.0.1 port with nothing listening on it (for "connection refused" tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class FakeOpenAIServer:
    """The server; a context manager that serves on an ephemeral 127.0.0.1 port in a background thread."""

    def __init__(self, behaviour: Behaviour | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind the socket (serving starts on ``start`` or ``__enter__``).

        Args:
            behaviour: How to behave; defaults to a fast, unlimited, well-behaved server.
            host: Address to bind.
            port: Port to bind; 0 picks a free one.
        """
        self.behaviour = behaviour or Behaviour()
        self.host = host
        self.counters = ServerCounters()
        self.requests: list[RecordedRequest] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self._window = Window(self.behaviour.rpm, self.behaviour.tpm)
        self._prefixes = PrefixCache()
        self._models = threading.local()
        self.batch_api = BatchAPI(self.behaviour, self._batch_answer)
        """The Files and Batches endpoints (used by the handler)."""
        self.errors: list[str] = []
        """Exceptions raised in handlers (a bug in the server; tests can assert there are none)."""
        self._httpd = Server((host, port), Handler)
        self._httpd.fake = self
        self._thread: threading.Thread | None = None
        self._serving = False

    @property
    def port(self) -> int:
        """The port the server listens on."""
        port: int = self._httpd.server_address[1]
        return port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what ``OPENAI_BASE_URL`` should be."""
        return f"http://{self.host}:{self.port}/v1"

    def chat_requests(self) -> list[RecordedRequest]:
        """The model requests (chat completions and responses) received so far (a copy)."""
        with self.lock:
            return [request for request in self.requests if request.path in {CHAT_PATH, RESPONSES_PATH}]

    @property
    def batch_counters(self) -> BatchCounters:
        """What the Batch API has seen so far (live counts)."""
        return self.batch_api.counters

    def batch_records(self) -> list[BatchRecord]:
        """Every batch created so far, oldest first, with the ``custom_id`` of each request (snapshots)."""
        return self.batch_api.records()

    def start(self) -> FakeOpenAIServer:
        """Start serving in a daemon thread."""
        self._serving = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(_POLL,), name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop`` is called from another one."""
        self._serving = True
        self._httpd.serve_forever(_POLL)

    def stop(self) -> None:
        """Stop serving, release stalled requests and close the socket (idempotent)."""
        self.closing.set()
        if self._serving:
            self._httpd.shutdown()
        if self._thread is not None:
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # used by the handler ----------------------------------------------------------------------
    def record(self, method: str, path: str, body: Any, headers: dict[str, str], fault: str) -> None:
        """Log one request."""
        request = RecordedRequest(method, path, body, headers, self.behaviour.clock(), fault)
        with self.lock:
            self.requests.append(request)

    def admit(self, tokens: int) -> Decision:
        """Count a chat request and check it against the rate limits."""
        with self.lock:
            decision = self._window.admit(self.behaviour.clock(), tokens)
            self.counters.max_requests_per_window = self._window.max_in_window
            if not decision.allowed:
                self.counters.rate_limited += 1
            return decision

    def cached_tokens(self, prompt: str) -> int:
        """Prompt tokens served from the simulated prefix cache."""
        if not self.behaviour.prefix_cache:
            return 0
        with self.lock:
            return self._prefixes.cached_tokens(prompt)

    def answer(self, query: Query, tool: str | None) -> str:
        """The offline model's answer (one model per handler thread: its caches are not shared)."""
        model = getattr(self._models, "model", None)
        if model is None:
            model = self._models.model = OfflineModel()
        return offline_answer(model, query, tool)

    def _batch_answer(self, url: str, body: dict[str, Any], number: int, fault: str) -> tuple[int, Any]:
        """A batch request's answer: what a live request to ``url`` gets once admitted."""
        return answer_body(self, Query.parse(url, body), number, fault)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service_ambitions.testing.openai_server",
        description="A local OpenAI-compatible server (chat completions, responses, batches) answering with "
        "the offline model; prints its base URL on stdout and serves until SIGINT/SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per answer")
    parser.add_argument("--rpm", type=int, default=None)
    parser.add_argument("--tpm", type=int, default=None)
    parser.add_argument("--no-retry-after", action="store_true", help="429s without Retry-After")
    parser.add_argument("--no-rate-limit-headers", action="store_true", help="no x-ratelimit-* headers")
    parser.add_argument(
        "--faults",
        default="",
        help=f"fault of each request in turn, comma-separated: {', '.join(sorted(FAULTS))} or an HTTP status",
    )
    parser.add_argument("--cycle-faults", action="store_true", help="repeat --faults instead of ok after it")
    parser.add_argument("--stall-seconds", type=float, default=30.0)
    parser.add_argument("--llama", action="store_true", help="behave like llama.cpp's server")
    parser.add_argument("--prefix-cache", action="store_true", help="simulate prompt caching")
    parser.add_argument("--no-batch-api", action="store_true", help="no Files and Batches endpoints (404)")
    parser.add_argument("--batch-delay", type=float, default=0.0, help="seconds a batch takes to end")
    parser.add_argument(
        "--batch-expire", type=int, default=0, help="the first N batches expire without running a request"
    )
    parser.add_argument("--batch-create-stall", type=float, default=0.0, help="seconds a batch create hangs")
    parser.add_argument("--batch-fail-every", type=int, default=0, help="every K-th batch request fails")
    parser.add_argument(
        "--batch-fail-status", default="500", help="the status (or fault) of --batch-fail-every requests"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server in the foreground until SIGINT or SIGTERM."""
    options = _arguments(argv)
    faults: list[str] = [fault.strip() for fault in options.faults.split(",") if fault.strip()]
    unknown = [fault for fault in faults if fault not in FAULTS and not (fault.isdigit() and len(fault) == 3)]
    if unknown:
        sys.stderr.write(
            f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(sorted(FAULTS))}, or a status\n"
        )
        return 2
    every, failure = options.batch_fail_every, options.batch_fail_status
    if failure not in BATCH_FAULTS and not (failure.isdigit() and len(failure) == 3):
        known = ", ".join(sorted(BATCH_FAULTS))
        sys.stderr.write(f"unknown batch fault {failure}; known: {known}, or a status\n")
        return 2
    behaviour = Behaviour(
        latency=options.latency,
        rpm=options.rpm,
        tpm=options.tpm,
        retry_after=not options.no_retry_after,
        rate_limit_headers=not options.no_rate_limit_headers,
        faults=(lambda number: faults[(number - 1) % len(faults)])
        if options.cycle_faults and faults
        else faults,
        stall_seconds=options.stall_seconds,
        llama=options.llama,
        prefix_cache=options.prefix_cache,
        batch_api=not options.no_batch_api,
        batch_delay=options.batch_delay,
        batch_create_stall=options.batch_create_stall,
        batch_expire=options.batch_expire,
        batch_item_failures=(lambda item: failure if item.number % every == 0 else "ok") if every > 0 else {},
    )
    try:
        server = FakeOpenAIServer(behaviour, host=options.host, port=options.port)
    except OSError as exc:
        sys.stderr.write(f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}\n")
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.stop).start()  # shutdown() must not run in the serving thread

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stdout.write(server.base_url + "\n")
    sys.stdout.flush()
    server.serve_forever()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
