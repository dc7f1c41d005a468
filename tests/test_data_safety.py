"""Nothing lost: same-path refusals, one process per output, old output kept, pipes, refused resumes.

Where files, locks, signals and pipes are involved the CLI runs as a real subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from service_ambitions.cli.app import app
from service_ambitions.store.lock import lock_path_for
from service_ambitions.store.reader import read_evolutions
from service_ambitions.store.writer import partial_path_for
from tests.conftest import SAMPLES, service, write_jsonl

Cli = Callable[..., Any]
COMMAND = [sys.executable, "-m", "service_ambitions"]


def slow_env(latency_ms: int = 30) -> dict[str, str]:
    return {**os.environ, "SA_OFFLINE__LATENCY_MS": str(latency_ms), "SA_MODEL": "offline"}


def write_many(path: Path, count: int) -> list[str]:
    records = [service(f"S{index:03d}", name=f"Service {index}") for index in range(count)]
    write_jsonl(path, records)
    return [record["service_id"] for record in records]


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


class TestSamePaths:
    @pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
    def test_output_equal_to_input_is_refused(self, cli: Cli, isolated: Path, link: str) -> None:
        source = write_jsonl(isolated / "services.jsonl", [service("A")])
        before = source.read_bytes()
        output = isolated / "out.jsonl"
        if link == "same":
            output = source
        elif link == "symlink":
            output.symlink_to(source)
        else:
            os.link(source, output)
        result = cli("run", "--model", "offline", "--output-file", str(output))
        assert result.exit_code == 2, result.stderr
        assert str(output) in result.stderr
        assert "services.jsonl" in result.stderr
        assert source.read_bytes() == before
        assert not partial_path_for(output).exists()
        assert not lock_path_for(output).exists()

    @pytest.mark.parametrize("target", ["services.jsonl", "evolutions.jsonl"])
    def test_summary_equal_to_input_or_output_is_refused(self, cli: Cli, isolated: Path, target: str) -> None:
        write_jsonl(isolated / "services.jsonl", [service("A")])
        assert cli("run", "--model", "offline").exit_code == 0
        before = (isolated / target).read_bytes()
        result = cli("run", "--model", "offline", "--summary-json", target)
        assert result.exit_code == 2, result.stderr
        assert "--summary-json" in result.stderr
        assert target in result.stderr
        assert (isolated / target).read_bytes() == before


class TestOneProcessPerOutput:
    def test_second_run_is_refused_while_the_first_holds_the_lock(self, isolated: Path) -> None:
        write_many(isolated / "services.jsonl", 60)
        first = subprocess.Popen([*COMMAND, "run", "-q", "--concurrency", "1"], env=slow_env(40))
        try:
            wait_for(lambda: lines_in(isolated / "evolutions.jsonl.partial") >= 2)
            second = subprocess.run(
                [*COMMAND, "run", "-q", "--resume"],
                env=slow_env(),
                capture_output=True,
                text=True,
                check=False,
            )
            assert second.returncode == 2, second.stderr
            assert "being written by another process" in second.stderr
            assert f"pid {first.pid}" in second.stderr
            assert "Traceback" not in second.stderr
            (isolated / "old.jsonl").write_text("{}\n", encoding="utf-8")
            migrate = subprocess.run(
                [*COMMAND, "migrate", "--from", "1.0", "--to", "1.1", "--input", "old.jsonl",
                 "--output", "evolutions.jsonl"],
                env=slow_env(), capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert migrate.returncode == 2, migrate.stderr
            assert "being written by another process" in migrate.stderr
        finally:
            first.wait(timeout=120)
        assert first.returncode == 0
        assert len(read_evolutions(isolated / "evolutions.jsonl").records) == 60

    def test_the_lock_of_a_killed_process_is_taken_over(self, isolated: Path) -> None:
        ids = write_many(isolated / "services.jsonl", 12)
        first = subprocess.Popen([*COMMAND, "run", "-q", "--concurrency", "1"], env=slow_env(40))
        wait_for(lambda: lines_in(isolated / "evolutions.jsonl.partial") >= 2)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert lock_path_for(isolated / "evolutions.jsonl").exists()  # left behind by the dead process
        again = subprocess.run(
            [*COMMAND, "run", "-q", "--resume"], env=slow_env(1), capture_output=True, text=True, check=False
        )
        assert again.returncode == 0, again.stderr
        final = read_evolutions(isolated / "evolutions.jsonl")
        assert [record.service.service_id for record in final.records] == ids
        assert not partial_path_for(isolated / "evolutions.jsonl").exists()


class TestOldOutputKept:
    def test_killed_fresh_run_keeps_the_old_output_and_resume_finishes(self, isolated: Path) -> None:
        ids = write_many(isolated / "services.jsonl", 10)
        done = subprocess.run([*COMMAND, "run", "-q"], env=slow_env(0), capture_output=True, check=False)
        assert done.returncode == 0
        output = isolated / "evolutions.jsonl"
        old = output.read_bytes()
        # A fresh run with other settings: the old, complete output must survive its death.
        fresh = subprocess.Popen(
            [*COMMAND, "run", "-q", "--concurrency", "1", "--seed", "7"], env=slow_env(40)
        )
        wait_for(lambda: lines_in(partial_path_for(output)) >= 3)
        assert output.read_bytes() == old
        fresh.send_signal(signal.SIGKILL)
        fresh.wait(timeout=30)
        assert output.read_bytes() == old
        resumed = subprocess.run(
            [*COMMAND, "run", "-q", "--seed", "7", "--resume"],
            env=slow_env(0),
            capture_output=True,
            check=False,
        )
        assert resumed.returncode == 0, resumed.stderr
        final = read_evolutions(output)
        assert final.header.seed == 7
        assert [record.service.service_id for record in final.records] == ids
        assert not partial_path_for(output).exists()

    def test_interrupted_fresh_run_keeps_the_old_output(self, isolated: Path) -> None:
        write_many(isolated / "services.jsonl", 10)
        assert subprocess.run([*COMMAND, "run", "-q"], env=slow_env(0), check=False).returncode == 0
        output = isolated / "evolutions.jsonl"
        old = output.read_bytes()
        fresh = subprocess.Popen(
            [*COMMAND, "run", "--concurrency", "1", "--seed", "9"],
            env=slow_env(40),
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: lines_in(partial_path_for(output)) >= 3)
        fresh.send_signal(signal.SIGINT)
        _, stderr = fresh.communicate(timeout=60)
        assert fresh.returncode == 130, stderr
        assert output.read_bytes() == old
        assert "evolutions.jsonl.partial" in stderr
        assert "Traceback" not in stderr

    def test_completed_fresh_run_replaces_the_old_output(self, cli: Cli, isolated: Path) -> None:
        write_jsonl(isolated / "services.jsonl", [service("A"), service("B")])
        assert cli("run", "--model", "offline").exit_code == 0
        write_jsonl(isolated / "services.jsonl", [service("C")])
        assert cli("run", "--model", "offline").exit_code == 0
        final = read_evolutions(isolated / "evolutions.jsonl")
        assert [record.service.service_id for record in final.records] == ["C"]
        assert not partial_path_for(isolated / "evolutions.jsonl").exists()


class TestStreamsAsInput:
    def expected(self) -> list[str]:
        return [json.loads(line)["service_id"] for line in SAMPLES.read_text(encoding="utf-8").splitlines()]

    def test_stdin_dash(self, isolated: Path) -> None:
        with SAMPLES.open("rb") as stdin:
            result = subprocess.run(
                [*COMMAND, "run", "-q", "--input-file", "-"], env=slow_env(0), stdin=stdin, check=False
            )
        assert result.returncode == 0
        records = read_evolutions(isolated / "evolutions.jsonl").records
        assert [record.service.service_id for record in records] == self.expected()

    def test_process_substitution(self, isolated: Path) -> None:
        script = f"{sys.executable} -m service_ambitions run -q --input-file <(cat {SAMPLES})"
        result = subprocess.run(
            ["bash", "-c", script], env=slow_env(0), capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        records = read_evolutions(isolated / "evolutions.jsonl").records
        assert [record.service.service_id for record in records] == self.expected()

    def test_fifo_run_and_validate_agree(self, isolated: Path) -> None:
        fifo = isolated / "services.fifo"
        for command in ("run", "validate"):
            os.mkfifo(fifo)
            feeder = threading.Thread(target=lambda: fifo.write_bytes(SAMPLES.read_bytes()))
            feeder.start()
            result = subprocess.run(
                [*COMMAND, command, "--input-file", str(fifo)],
                env=slow_env(0),
                capture_output=True,
                text=True,
                check=False,
            )
            feeder.join(timeout=30)
            fifo.unlink()
            assert result.returncode == 0, result.stderr
            assert "Traceback" not in result.stderr
            if command == "validate":
                assert f"ok ({len(self.expected())} service(s)" in result.stderr
        records = read_evolutions(isolated / "evolutions.jsonl").records
        assert [record.service.service_id for record in records] == self.expected()

    def test_validate_reads_stdin(self) -> None:
        stdin = SAMPLES.read_text(encoding="utf-8")
        result = CliRunner().invoke(
            app, ["validate", "--input-file", "-"], input=stdin, catch_exceptions=False
        )
        assert result.exit_code == 0, result.stderr
        assert f"ok ({len(self.expected())} service(s)" in result.stderr

    def test_empty_input_warns(self, cli: Cli, isolated: Path) -> None:
        (isolated / "services.jsonl").write_bytes(b"")
        result = cli("run", "--model", "offline")
        assert result.exit_code == 0, result.stderr
        assert "holds no services" in result.stderr
        assert read_evolutions(isolated / "evolutions.jsonl").records == []


def test_refused_resume_changes_nothing_on_disk(cli: Cli, isolated: Path) -> None:
    write_jsonl(isolated / "services.jsonl", [service("A"), service("B")])
    assert cli("run", "--model", "offline").exit_code == 0
    output = isolated / "evolutions.jsonl"
    with output.open("ab") as handle:
        handle.write(b'{"schema_version":"1.1","service":{"serv')  # a torn tail
    before = sorted((path.name, path.read_bytes()) for path in isolated.iterdir() if path.is_file())
    result = cli("run", "--model", "offline", "--resume", "--seed", "99")
    assert result.exit_code == 3, result.stderr
    assert "settings changed: seed" in result.stderr
    after = sorted((path.name, path.read_bytes()) for path in isolated.iterdir() if path.is_file())
    assert after == before
    # The same resume with the original settings repairs the tail and goes on.
    result = cli("run", "--model", "offline", "--resume")
    assert result.exit_code == 0, result.stderr
    assert (isolated / "evolutions.jsonl.broken").exists()
    assert len(read_evolutions(output).records) == 2


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root only): records of the samples are ~100 KB, so a run fills it mid-way."""
    directory = tmp_path / "disk"
    directory.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(directory)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip("needs mount rights for a small tmpfs")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], capture_output=True, check=False)


def test_a_disk_filling_up_mid_run_keeps_what_was_written(isolated: Path, small_disk: Path) -> None:
    (small_disk / "filler").write_bytes(b"\0" * 3_200_000)
    output = small_disk / "evolutions.jsonl"
    command = [*COMMAND, "run", "--input-file", str(SAMPLES), "--output-file", str(output)]
    full = subprocess.run(command, env=slow_env(0), capture_output=True, text=True, check=False)
    assert full.returncode == 2, full.stderr
    assert "Traceback" not in full.stderr
    assert "No space left on device" in full.stderr
    assert f"the records written before it are in {output}" in full.stderr
    written = output.read_bytes()
    assert 1 < written.count(b"\n") < 13  # the header and some records made it
    (small_disk / "filler").unlink()
    resumed = subprocess.run(
        [*command, "--resume"], env=slow_env(0), capture_output=True, text=True, check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    records = read_evolutions(output).records
    expected = [json.loads(line)["service_id"] for line in SAMPLES.read_text(encoding="utf-8").splitlines()]
    assert [record.service.service_id for record in records] == expected
