"""A rich progress display on stderr: only for a terminal, never with JSON logs."""

from __future__ import annotations

from typing import IO, Any

__all__ = ["RunProgress", "progress_wanted"]


class RunProgress:
    """Services done, model calls, cost so far and an ETA."""

    def __init__(self, stream: IO[str], total: int | None) -> None:
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]services"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[calls]} calls  ${task.fields[cost]}"),
            TimeRemainingColumn(),
            console=Console(file=stream, force_terminal=True),
            transient=False,
        )
        self._task = self._progress.add_task("run", total=total, calls=0, cost="0.0000")

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, *, done: int, calls: int, cost: Any) -> None:
        """Show the current figures."""
        self._progress.update(self._task, completed=done, calls=calls, cost=f"{float(cost):.4f}")


def progress_wanted(stream: IO[str], *, enabled: bool, json_logs: bool) -> bool:
    """True when ``stream`` is a terminal, logs are for people and the display is not switched off."""
    isatty = getattr(stream, "isatty", None)
    return enabled and not json_logs and isatty is not None and bool(isatty())
