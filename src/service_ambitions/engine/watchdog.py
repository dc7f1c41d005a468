"""A watchdog thread for stage budgets and a blocked event loop.

Stages register while they run. The thread (or a test calling :meth:`Watchdog.check`) warns once
when a stage passes 95 % of its budget, reports with the stack a stage that keeps running after it
was cancelled, and reports with the loop thread's stack an event loop that has not answered a
heartbeat for longer than ``loop_budget`` seconds. It only observes and reports: cancelling is
``asyncio.timeout``'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["Watchdog", "WatchdogReport"]

log = logging.getLogger("service_ambitions.watchdog")


@dataclass
class _Tracked:
    stage: str
    service_id: str
    budget: float
    started: float
    task: asyncio.Task[object] | None
    warned: bool = False
    cancelled_at: float | None = None
    reported: bool = False


@dataclass(frozen=True)
class WatchdogReport:
    """One finding of the watchdog."""

    kind: str
    """``near_budget``, ``ignores_cancel`` or ``loop_blocked``."""
    stage: str
    service_id: str
    message: str
    stack: str = ""


@dataclass
class Watchdog:
    """Observes registered stages and the event loop; see the module docstring."""

    clock: Callable[[], float] = time.monotonic
    interval: float = 0.5
    loop_budget: float = 30.0
    grace: float = 1.0
    reports: list[WatchdogReport] = field(default_factory=list)
    _tracked: dict[int, _Tracked] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _beat: float = 0.0
    _loop: asyncio.AbstractEventLoop | None = None
    _loop_thread: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    # registration ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def track(self, stage: str, service_id: str, budget: float) -> Iterator[int]:
        """Register the current task for the duration of a stage."""
        token = next(self._ids)
        try:
            task: asyncio.Task[object] | None = asyncio.current_task()
        except RuntimeError:
            task = None
        with self._lock:
            self._tracked[token] = _Tracked(stage, service_id, budget, self.clock(), task)
        try:
            yield token
        finally:
            with self._lock:
                self._tracked.pop(token, None)

    def cancelled(self, token: int) -> None:
        """Note that the stage's budget expired and it was cancelled."""
        with self._lock:
            tracked = self._tracked.get(token)
            if tracked is not None and tracked.cancelled_at is None:
                tracked.cancelled_at = self.clock()

    # checks ------------------------------------------------------------------------------------
    def check(self) -> list[WatchdogReport]:
        """Inspect every registered stage and the loop heartbeat; return (and log) new findings."""
        now = self.clock()
        found: list[WatchdogReport] = []
        with self._lock:
            tracked = list(self._tracked.values())
        for item in tracked:
            elapsed = now - item.started
            if not item.warned and elapsed > 0.95 * item.budget:
                item.warned = True
                found.append(
                    WatchdogReport(
                        "near_budget",
                        item.stage,
                        item.service_id,
                        f"stage {item.stage} of {item.service_id} has used {elapsed:.1f} s "
                        f"of its {item.budget:g} s budget",
                    )
                )
            overdue = item.cancelled_at is not None and now - item.cancelled_at > self.grace
            if overdue and not item.reported:
                item.reported = True
                found.append(
                    WatchdogReport(
                        "ignores_cancel",
                        item.stage,
                        item.service_id,
                        f"stage {item.stage} of {item.service_id} is still running "
                        f"{now - (item.cancelled_at or now):.1f} s after it was cancelled",
                        _task_stack(item.task),
                    )
                )
        if self._loop is not None and self._beat and now - self._beat > self.loop_budget:
            found.append(
                WatchdogReport(
                    "loop_blocked",
                    "",
                    "",
                    f"the event loop has not run for {now - self._beat:.1f} s "
                    f"(budget {self.loop_budget:g} s)",
                    _thread_stack(self._loop_thread),
                )
            )
            self._beat = now  # report a blocked loop once per budget, not on every tick
        for report in found:
            level = logging.WARNING if report.kind == "near_budget" else logging.ERROR
            log.log(level, "watchdog: %s%s", report.message, f"\n{report.stack}" if report.stack else "")
        self.reports.extend(found)
        return found

    # thread ------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the watchdog thread for ``loop`` (call from the loop's thread)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._beat = self.clock()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sa-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _heartbeat(self) -> None:
        self._beat = self.clock()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            loop = self._loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._heartbeat)
            try:
                self.check()
            except Exception:  # the watchdog must never take the run down
                log.exception("watchdog check failed")


def _task_stack(task: asyncio.Task[object] | None) -> str:
    """The await chain of a task, outermost first (``Task.get_stack`` shows only one frame)."""
    if task is None:
        return ""
    lines = []
    awaitable: object = task.get_coro()
    for _ in range(64):
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}\n')
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
        if awaitable is None:
            break
    return "".join(lines)


def _thread_stack(thread_id: int | None) -> str:
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    return "".join(traceback.format_stack(frame)) if frame is not None else ""
