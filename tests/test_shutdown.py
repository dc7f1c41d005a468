"""Graceful shutdown: a signal stops the run, finished records are kept, the run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service_ambitions.store.reader import read_evolutions
from service_ambitions.store.writer import partial_path_for
from tests.conftest import SAMPLES


def write_services(path: Path, count: int) -> list[str]:
    base = [json.loads(line) for line in SAMPLES.read_text(encoding="utf-8").splitlines()]
    ids = []
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            record = dict(base[index % len(base)], service_id=f"SIG-{index:03d}")
            ids.append(record["service_id"])
            handle.write(json.dumps(record) + "\n")
    return ids


def wait_for_records(output: Path, count: int, timeout: float = 60.0) -> None:
    """Wait until the run in progress (a fresh run writes ``<output>.partial``) holds ``count`` records."""
    deadline = time.monotonic() + timeout
    partial = partial_path_for(output)
    while time.monotonic() < deadline:
        if partial.exists() and partial.read_bytes().count(b"\n") > count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{output} did not reach {count} records in {timeout} s")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_flushes_completed(isolated: Path, signum: int) -> None:
    ids = write_services(isolated / "services.jsonl", 24)
    output = isolated / "evolutions.jsonl"
    env = {**os.environ, "SA_OFFLINE__LATENCY_MS": "20"}
    command = [sys.executable, "-m", "service_ambitions", "run", "-v", "--concurrency", "6"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    wait_for_records(output, 3)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Task was destroyed" not in stderr
    assert "Traceback" not in stderr
    data = output.read_bytes()
    assert data.endswith(b"\n")
    written = [json.loads(line)["service"]["service_id"] for line in data.splitlines()[1:]]
    done_lines = [line for line in stderr.splitlines() if line.endswith(" finished")]
    finished = [line.split("service ", 1)[1].split()[0] for line in done_lines]
    assert finished
    assert set(finished) <= set(written)  # every record that finished is in the file
    assert len(written) < len(ids)  # the run really was cut short
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    final = read_evolutions(output)
    assert sorted(record.service.service_id for record in final.records) == sorted(ids)
