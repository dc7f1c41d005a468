"""The progress bar appears only on a terminal and never with JSON logs."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service_ambitions.observability.progress import RunProgress, progress_wanted
from tests.conftest import service, write_jsonl


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_tty(cli: Callable[..., Any], isolated: Path) -> None:
    assert not progress_wanted(io.StringIO(), enabled=True, json_logs=False)
    assert not progress_wanted(Terminal(), enabled=True, json_logs=True)
    assert not progress_wanted(Terminal(), enabled=False, json_logs=False)
    terminal = Terminal()
    assert progress_wanted(terminal, enabled=True, json_logs=False)
    with RunProgress(terminal, 3) as display:
        display.update(done=2, calls=42, cost=0.5)
    shown = terminal.getvalue()
    assert "2/3" in shown
    assert "42 calls" in shown
    assert "$0.5000" in shown
    # Through the CLI, stderr is not a terminal here: no bar, only the summary.
    write_jsonl(isolated / "services.jsonl", [service("A")])
    result = cli("run", "--progress")
    assert result.exit_code == 0
    assert "━" not in result.stderr
    assert "42 calls" not in result.stderr
