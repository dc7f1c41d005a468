"""``run --mode batch``: the CLI as a real process against the fake server's OpenAI Batch API.

Everything goes through pydantic-ai's real ``OpenAIResponsesModel`` batch methods and real HTTP on
127.0.0.1: files upload, batch create, retrieve, list and cancel, output and error files. The output of
a batch run is compared byte for byte with a live run against the same server (which answers the same
way live and in batches).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from service_ambitions.testing.openai_server import BatchItem, Behaviour, FakeOpenAIServer
from tests.conftest import SAMPLES

KEY = "sk-test-batch-mode-0123456789abcdef"
MODEL = "openai-responses:gpt-4o-mini"
FAST = {
    "SA_BATCH_POLL_INTERVAL": "0.05",
    "SA_BATCH_MAX_POLL_INTERVAL": "0.2",
    "SA_TRANSPORT_RETRIES__ATTEMPTS": "2",
    "SA_TRANSPORT_RETRIES__MAX_WAIT": "0.05",
}
SERVICES = 1
CALLS_PER_SERVICE = 1 + 5 + 5 * 3  # descriptions, features per plateau, mapping per plateau and set


def start(
    tmp: Path, server: FakeOpenAIServer, *args: str, output: str = "out.jsonl", **env: str
) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "service_ambitions",
        "run",
        "--input-file",
        str(SAMPLES),
        "--output-file",
        str(tmp / output),
        "--model",
        MODEL,
        "--max-services",
        str(SERVICES),
        "--cache-dir",
        str(tmp / f"cache-{output}"),
        *args,
    ]
    environment = {**os.environ, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.base_url, **FAST, **env}
    return subprocess.Popen(
        command, env=environment, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run(
    tmp: Path, server: FakeOpenAIServer, *args: str, output: str = "out.jsonl", **env: str
) -> subprocess.CompletedProcess[str]:
    process = start(tmp, server, *args, output=output, **env)
    stdout, stderr = process.communicate(timeout=180)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert "Traceback" not in stderr, stderr
    assert "internal error" not in stderr, stderr
    assert KEY not in stderr + stdout
    return result


def batch_cli(tmp: Path, server: FakeOpenAIServer, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "service_ambitions",
        "batch",
        *args,
        "--output-file",
        str(tmp / "out.jsonl"),
    ]
    environment = {
        **os.environ,
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": server.base_url,
        **FAST,
        "SA_MODEL": MODEL,
    }
    result = subprocess.run(
        command, env=environment, cwd=tmp, capture_output=True, text=True, timeout=120, check=False
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def record_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()[1:]


def submitted_ids(server: FakeOpenAIServer) -> list[str]:
    return [custom_id for batch in server.batch_records() for custom_id in batch.custom_ids]


def assert_nothing_submitted_twice(server: FakeOpenAIServer, resubmitted: int = 0) -> None:
    counts = Counter(submitted_ids(server))
    twice = {custom_id: count for custom_id, count in counts.items() if count > 1}
    assert sum(count - 1 for count in twice.values()) == resubmitted, twice


@pytest.fixture
def live_records(tmp_path: Path) -> list[bytes]:
    """The records of a live run of the same services against the same kind of server."""
    with FakeOpenAIServer() as server:
        result = run(tmp_path, server, output="live.jsonl")
    assert result.returncode == 0, result.stderr
    return record_lines(tmp_path / "live.jsonl")


def test_a_batch_run_writes_the_records_of_a_live_run_in_three_waves(
    tmp_path: Path, live_records: list[bytes]
) -> None:
    with FakeOpenAIServer(Behaviour(batch_delay=0.1)) as server:
        result = run(tmp_path, server, "--mode", "batch", "--summary-json", str(tmp_path / "summary.json"))
        assert result.returncode == 0, result.stderr
        # No live model request: every answer came from a batch.
        assert not [
            request for request in server.requests if request.path.endswith(("/responses", "/completions"))
        ]
        batches = server.batch_records()
    assert record_lines(tmp_path / "out.jsonl") == live_records
    # Descriptions, then the features of every plateau, then every mapping: one batch each.
    assert [len(batch.custom_ids) for batch in batches] == [SERVICES, SERVICES * 5, SERVICES * 15]
    assert_nothing_submitted_twice(server)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["batches"]["waves_submitted"] == 3
    assert summary["batches"]["requests_submitted"] == SERVICES * CALLS_PER_SERVICE
    assert summary["batches"]["finished"] is True


def test_batch_prices_are_half_the_live_prices(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        live = run(tmp_path, server, "--summary-json", str(tmp_path / "live.json"), output="live.jsonl")
        batch = run(tmp_path, server, "--mode", "batch", "--summary-json", str(tmp_path / "batch.json"))
    assert live.returncode == batch.returncode == 0, live.stderr + batch.stderr
    live_cost = json.loads((tmp_path / "live.json").read_text())["cost"]
    batch_cost = json.loads((tmp_path / "batch.json").read_text())["cost"]
    assert live_cost["input_tokens"] == batch_cost["input_tokens"] > 0  # counted once, not once per pass
    assert float(batch_cost["total_usd"]) == pytest.approx(float(live_cost["total_usd"]) / 2, rel=0.01)


def test_estimate_in_batch_mode_is_priced_at_batch_rates(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        live = run(tmp_path, server, "--estimate")
        batch = run(tmp_path, server, "--estimate", "--mode", "batch")
    totals = [
        float(line.split("$")[1])
        for line in (live.stdout, batch.stdout)
        for line in line.splitlines()
        if "total:" in line
    ]
    assert totals[1] == pytest.approx(totals[0] / 2, rel=0.01)


def test_no_wait_submits_and_a_resume_collects_without_submitting_again(
    tmp_path: Path, live_records: list[bytes]
) -> None:
    with FakeOpenAIServer(Behaviour(batch_delay=0.3)) as server:
        first = run(tmp_path, server, "--mode", "batch", "--no-wait")
        assert first.returncode == 0, first.stderr
        assert "--resume" in first.stderr
        assert "1 batch(es) running" in first.stderr
        assert not (tmp_path / "out.jsonl").exists()  # nothing published yet
        assert (tmp_path / "out.jsonl.batches.sqlite3").exists()
        status = batch_cli(tmp_path, server, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert [json.loads(line)["requests"] for line in status.stdout.splitlines()] == [SERVICES]
        # A run without --resume refuses to start afresh over batches that are still running.
        refused = run(tmp_path, server, "--mode", "batch")
        assert refused.returncode == 2
        assert "--resume" in refused.stderr
        for _ in range(10):  # one wave per invocation while waves are pending
            later = run(tmp_path, server, "--mode", "batch", "--resume", "--no-wait")
            assert later.returncode == 0, later.stderr
            if (tmp_path / "out.jsonl").exists():
                break
            time.sleep(0.35)
        assert_nothing_submitted_twice(server)
        assert len(server.batch_records()) == 3
    assert record_lines(tmp_path / "out.jsonl") == live_records


def test_an_answer_cut_off_is_re_asked_in_the_next_wave(tmp_path: Path, live_records: list[bytes]) -> None:
    seen: list[str] = []

    def cut_first_features_answer(item: BatchItem) -> str:
        if item.batch_id not in seen:
            seen.append(item.batch_id)
        return "truncated" if seen.index(item.batch_id) == 1 and item.line == 1 else "ok"

    with FakeOpenAIServer(Behaviour(batch_item_failures=cut_first_features_answer)) as server:
        result = run(tmp_path, server, "--mode", "batch")
        batches = server.batch_records()
    assert result.returncode == 0, result.stderr
    # The re-ask went into the wave of the mappings (with the mappings of the other plateaus), and the
    # re-asked plateau's mappings into one more wave.
    assert [len(batch.custom_ids) for batch in batches] == [SERVICES, SERVICES * 5, SERVICES * 15 - 3 + 1, 3]
    assert record_lines(tmp_path / "out.jsonl") == live_records


def test_an_expired_batch_is_submitted_again(tmp_path: Path, live_records: list[bytes]) -> None:
    with FakeOpenAIServer(Behaviour(batch_expire=1)) as server:
        result = run(tmp_path, server, "--mode", "batch")
        batches = server.batch_records()
    assert result.returncode == 0, result.stderr
    assert [batch.status for batch in batches][:2] == ["expired", "completed"]
    assert batches[0].custom_ids == batches[1].custom_ids
    assert_nothing_submitted_twice(server, resubmitted=SERVICES)
    assert record_lines(tmp_path / "out.jsonl") == live_records


def test_failed_requests_are_resubmitted_within_bounds_then_quarantined(tmp_path: Path) -> None:
    first_descriptions: list[str] = []

    def fail(item: BatchItem) -> str:
        if not first_descriptions:
            first_descriptions.append(item.custom_id)
        # Every time: resubmitted twice, then the service fails as a live call would.
        return "500" if item.custom_id == first_descriptions[0] else "ok"

    with FakeOpenAIServer(Behaviour(batch_item_failures=fail)) as server:
        result = run(tmp_path, server, "--mode", "batch")
        attempts = Counter(submitted_ids(server))[first_descriptions[0]]
    assert result.returncode == 1, result.stderr  # a service has no record
    assert attempts == 3  # submitted, then resubmitted twice (batch_max_resubmissions)
    assert record_lines(tmp_path / "out.jsonl") == []
    entries = list((tmp_path / "out.jsonl.quarantine").glob("*.json"))
    kinds = [json.loads(path.read_text())["kind"] for path in entries]
    assert kinds == ["model_error"]


def test_a_request_the_provider_refuses_is_not_resubmitted(tmp_path: Path) -> None:
    refused: list[str] = []

    def refuse_first(item: BatchItem) -> str:
        if not refused:
            refused.append(item.custom_id)
        return "400" if item.custom_id == refused[0] else "ok"

    with FakeOpenAIServer(Behaviour(batch_item_failures=refuse_first)) as server:
        result = run(tmp_path, server, "--mode", "batch")
        attempts = Counter(submitted_ids(server))[refused[0]]
    assert result.returncode == 1, result.stderr
    assert attempts == 1
    assert record_lines(tmp_path / "out.jsonl") == []


def test_models_without_a_batch_api_are_refused_or_run_live_in_auto(tmp_path: Path) -> None:
    chat = "openai-chat:gpt-4o-mini"  # pydantic-ai batches OpenAI through the Responses API only
    with FakeOpenAIServer() as server:
        refused = run(tmp_path, server, "--mode", "batch", "--model", chat)
        auto = run(tmp_path, server, "--mode", "auto", "--model", chat, output="auto.jsonl")
        assert server.batch_records() == []
    assert refused.returncode == 2
    assert "no batch API" in refused.stderr
    assert "--mode auto" in refused.stderr
    assert not (tmp_path / "out.jsonl").exists()
    assert auto.returncode == 0, auto.stderr
    assert len(record_lines(tmp_path / "auto.jsonl")) == SERVICES


def test_no_wait_needs_batch_mode(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        result = run(tmp_path, server, "--no-wait")
    assert result.returncode == 2
    assert "--no-wait needs --mode batch" in result.stderr


def test_the_budget_stops_before_a_wave_that_would_pass_it(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        result = run(
            tmp_path, server, "--mode", "batch", "--run-budget-usd", "0.0001", "--budget-mode", "enforce"
        )
        batches = server.batch_records()
    assert result.returncode == 4, result.stderr
    assert "budget" in result.stderr
    assert batches == []  # the first wave alone would pass the budget: nothing submitted


def test_cancel_cancels_running_batches_and_a_later_run_submits_them_again(
    tmp_path: Path, live_records: list[bytes]
) -> None:
    with FakeOpenAIServer(Behaviour(batch_delay=30)) as server:
        first = run(tmp_path, server, "--mode", "batch", "--no-wait")
        assert first.returncode == 0, first.stderr
        cancelled = batch_cli(tmp_path, server, "cancel")
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.startswith("cancelled\t")
        assert server.batch_counters.cancels == 1
        server.behaviour.batch_delay = 0.0
        later = run(tmp_path, server, "--mode", "batch", "--resume")
        assert later.returncode == 0, later.stderr
    assert record_lines(tmp_path / "out.jsonl") == live_records


def test_sigkill_between_submission_and_recording_submits_nothing_twice(
    tmp_path: Path, live_records: list[bytes]
) -> None:
    # The server creates the batch, then stalls before answering: the client is killed while the
    # batch exists at the provider but not in its record.
    with FakeOpenAIServer(Behaviour(batch_create_stall=30)) as server:
        process = start(tmp_path, server, "--mode", "batch")
        deadline = time.monotonic() + 60
        while not server.batch_records() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.batch_records(), "the batch was never created"
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        state = sqlite3.connect(tmp_path / "out.jsonl.batches.sqlite3")
        assert state.execute("SELECT COUNT(*) FROM intents").fetchone() == (1,)
        assert state.execute("SELECT COUNT(*) FROM batches").fetchone() == (0,)
        state.close()
        server.behaviour.batch_create_stall = 0.0
        again = run(tmp_path, server, "--mode", "batch", "--resume")
        assert again.returncode == 0, again.stderr
        assert "adopted" in again.stderr
        assert_nothing_submitted_twice(server)
    assert record_lines(tmp_path / "out.jsonl") == live_records


def test_the_offline_model_runs_in_batches_within_one_process(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        live = run(tmp_path, server, "--model", "offline", output="live.jsonl")
        batch = run(tmp_path, server, "--model", "offline", "--mode", "batch", output="batch.jsonl")
        no_wait = run(
            tmp_path, server, "--model", "offline", "--mode", "batch", "--no-wait", output="x.jsonl"
        )
    assert live.returncode == batch.returncode == 0, live.stderr + batch.stderr
    assert record_lines(tmp_path / "batch.jsonl") == record_lines(tmp_path / "live.jsonl")
    assert no_wait.returncode == 2
    assert "only inside the process" in no_wait.stderr
