"""A local OpenAI-compatible HTTP server for tests and the benchmark.

It answers ``POST /v1/chat/completions`` and ``POST /v1/responses`` (what ``openai:`` models
call) with the built-in offline model's answers (valid for every stage), the way OpenAI's API
sends them, and can misbehave the ways real providers do: latency, RPM/TPM limits with OpenAI's
headers, scripted faults per request, llama.cpp quirks.

Example:
    >>> with FakeOpenAIServer(Behaviour(faults=["500", "ok"])) as server:  # doctest: +SKIP
    ...     run_pipeline(base_url=server.base_url)

Standalone: ``python -m service_ambitions.testing.openai_server --port 8011 --rpm 60 --latency 0.2``.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any

from service_ambitions.llm.offline import OfflineModel
from service_ambitions.testing._handler import Handler, Server
from service_ambitions.testing._limits import Decision, PrefixCache, Window
from service_ambitions.testing._protocol import CHAT_PATH, RESPONSES_PATH, Query, offline_answer

__all__ = ["FAULTS", "Behaviour", "FakeOpenAIServer", "RecordedRequest", "ServerCounters", "unused_port"]

FAULTS = frozenset({"ok", "stall", "reset", "garbage", "truncated", "runaway", "quota"})
"""Scripted faults; any three-digit HTTP status (``"429"``, ``"500"``, ``"401"``...) is one too.

``truncated`` cuts the answer in half (``finish_reason: length``); ``runaway`` answers ~10,000 tokens of
repetition (invalid JSON) unless the output cap the server reads stops it first."""
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
        clock: Time source of the rate-limit window and the request log.
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

    def fault(self, number: int) -> str:
        """The scripted fault of request ``number`` (1-based)."""
        if callable(self.faults):
            return self.faults(number)
        return self.faults[number - 1] if number <= len(self.faults) else "ok"


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


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service_ambitions.testing.openai_server",
        description="A local OpenAI-compatible server (chat completions and responses) answering with the "
        "offline model; prints its base URL on stdout and serves until SIGINT/SIGTERM.",
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
