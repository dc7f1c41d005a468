"""Every exit code of the table in errors.py, produced for real through the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service_ambitions.errors import ExitCode
from tests.conftest import SAMPLES, service, write_jsonl

Cli = Callable[..., Any]


def ok(cli: Cli, tmp: Path) -> int:
    write_jsonl(tmp / "services.jsonl", [service("A")])
    return int(cli("run").exit_code)


def failures(cli: Cli, tmp: Path) -> int:
    write_jsonl(tmp / "services.jsonl", [service("A"), "{broken"])
    assert cli("run").exit_code == 0  # lenient: quarantined, still 0
    return int(cli("run", "--fail-on-quarantine").exit_code)


def usage(cli: Cli, tmp: Path) -> int:
    (tmp / "bad.yaml").write_text("concurrency: lots\n")
    return int(cli("run", "--config", "bad.yaml").exit_code)


def input_problem(cli: Cli, tmp: Path) -> int:
    return int(cli("run", "--input-file", "missing.jsonl").exit_code)


def budget(cli: Cli, tmp: Path) -> int:
    write_jsonl(tmp / "services.jsonl", [service(f"S{i}") for i in range(4)])
    (tmp / "priced.yaml").write_text(
        "offline:\n  usd_per_million_tokens: 100\ncache_mode: 'off'\nconcurrency: 1\n"
    )
    return int(
        cli("run", "--config", "priced.yaml", "--run-budget-usd", "1", "--budget-mode", "enforce").exit_code
    )


def integrity(cli: Cli, tmp: Path) -> int:
    write_jsonl(tmp / "services.jsonl", [service("A")])
    assert cli("run", "--cache-dir", "c").exit_code == 0
    next((tmp / "c" / "entries").rglob("*.json")).write_bytes(b"{}")
    return int(cli("cache", "validate", "--cache-dir", "c").exit_code)


def interrupted(cli: Cli, tmp: Path) -> int:
    (tmp / "services.jsonl").write_bytes(SAMPLES.read_bytes())
    env = {**os.environ, "SA_OFFLINE__LATENCY_MS": "100"}
    command = [sys.executable, "-m", "service_ambitions", "run", "-q", "--concurrency", "1"]
    process = subprocess.Popen(command, env=env)
    output = tmp / "evolutions.jsonl.partial"  # where a fresh run writes until it is complete
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (output.exists() and output.read_bytes().count(b"\n") >= 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    return process.wait(timeout=60)


SCENARIOS: dict[ExitCode, Callable[[Cli, Path], int]] = {
    ExitCode.OK: ok,
    ExitCode.FAILURES: failures,
    ExitCode.USAGE: usage,
    ExitCode.INPUT: input_problem,
    ExitCode.BUDGET: budget,
    ExitCode.INTEGRITY: integrity,
    ExitCode.INTERRUPTED: interrupted,
}


@pytest.mark.parametrize("code", list(ExitCode), ids=[code.name for code in ExitCode])
def test_exit_code_table(code: ExitCode, cli: Cli, isolated: Path) -> None:
    assert set(SCENARIOS) == set(ExitCode)  # the table and this test move together
    assert SCENARIOS[code](cli, isolated) == int(code)
