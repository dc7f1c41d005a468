"""End-to-end runs through the CLI with the offline model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service_ambitions.store.reader import read_evolutions
from tests.conftest import SAMPLES, read_jsonl, service, write_jsonl

Cli = Callable[..., Any]


def run(cli: Cli, *args: str) -> Any:
    return cli("run", "--output-file", "out/evolutions.jsonl", *args)


def test_samples_run_end_to_end(cli: Cli, isolated: Path) -> None:
    result = run(cli, "--input-file", str(SAMPLES), "--model", "offline")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    output = isolated / "out" / "evolutions.jsonl"
    parsed = read_evolutions(output)
    samples = read_jsonl(SAMPLES)
    assert [record.service.service_id for record in parsed.records] == [
        item["service_id"] for item in samples
    ]
    assert parsed.header.synthetic is True
    assert parsed.header.models == {"descriptions": "offline", "features": "offline", "mapping": "offline"}
    assert parsed.header.mapping_sets == ["applications", "technologies", "data"]
    # 21 model calls per service with the default content
    assert f"model calls: {21 * len(samples)} " in result.stderr
    record = parsed.records[0]
    assert [plateau.plateau_name for plateau in record.plateaus] == [
        "Foundational",
        "Enhanced",
        "Autonomous",
        "Outcome-Driven",
        "Transformative",
    ]
    for plateau in record.plateaus:
        ids = [feature.feature_id for feature in plateau.features]
        assert ids == sorted(ids)
        assert [role.role_id for role in plateau.roles] == ["academics", "learners", "professional_staff"]
        assert set(plateau.mappings) == {"applications", "technologies", "data"}
        for feature in plateau.features:
            assert feature.score.level == plateau.plateau
            assert set(feature.mappings) == {"applications", "technologies", "data"}
            for item in feature.mappings["applications"]:
                assert item.item.startswith("APP")
                assert item.facets is not None
                assert {"integration_role", "change_type"} <= set(item.facets)
        for group in plateau.mappings["data"]:
            refs = [ref.feature_id for ref in group.mappings]
            assert refs == sorted(refs)
    assert record.provenance.descriptions == "offline"


def test_existing_features_and_job_extras_are_kept(cli: Cli, isolated: Path) -> None:
    record = service(
        "S1",
        features=[{"feature_id": "EX1", "name": "Online renewals", "description": "Renew loans online."}],
        jobs_to_be_done=[
            "Renew a loan from my phone",
            {"name": "  Find a quiet seat ", "job_to_be_done_id": "J2"},
        ],
    )
    write_jsonl(isolated / "in.jsonl", [record])
    assert run(cli, "--input-file", "in.jsonl").exit_code == 0
    out = read_jsonl(isolated / "out" / "evolutions.jsonl")[1]
    assert out["service"]["features"] == record["features"]
    assert out["service"]["jobs_to_be_done"] == [
        {"name": "Renew a loan from my phone"},
        {"name": "Find a quiet seat", "job_to_be_done_id": "J2"},
    ]


def test_reruns_are_byte_identical(cli: Cli, isolated: Path) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    assert cli("run", "--output-file", "a.jsonl", "--cache-mode", "off").exit_code == 0
    assert cli("run", "--output-file", "b.jsonl").exit_code == 0
    warm = cli("run", "--output-file", "c.jsonl")
    assert warm.exit_code == 0
    assert (isolated / "a.jsonl").read_bytes() == (isolated / "b.jsonl").read_bytes()
    assert (isolated / "a.jsonl").read_bytes() == (isolated / "c.jsonl").read_bytes()
    assert "records from cache: 12; model calls: 0 (0 cache hit(s), 0 request(s)" in warm.stderr


def test_bad_lines_are_quarantined_and_the_run_goes_on(cli: Cli, isolated: Path) -> None:
    write_jsonl(
        isolated / "in.jsonl",
        [
            service("A"),
            "{not json",
            "",
            {"service_id": "B", "name": "No jobs"},
            service("A", name="Duplicate"),
            {**service("C"), "colour": "blue"},
            service("D"),
        ],
    )
    result = run(cli, "--input-file", "in.jsonl")
    assert result.exit_code == 0, result.stderr
    assert "2 ok, 0 failed, 4 invalid input line(s)" in result.stderr
    records = read_jsonl(isolated / "out" / "evolutions.jsonl")[1:]
    assert [record["service"]["service_id"] for record in records] == ["A", "D"]
    listing = sorted((isolated / "out" / "evolutions.jsonl.quarantine").glob("*.json"))
    entries = [json.loads(path.read_text()) for path in listing]
    by_line = {entry["line"]: entry for entry in entries}
    assert set(by_line) == {2, 4, 5, 6}
    assert all(entry["kind"] == "input_invalid" for entry in entries)
    assert "invalid JSON" in by_line[2]["error"]
    assert "jobs_to_be_done" in by_line[4]["error"]
    assert "duplicate service_id 'A'" in by_line[5]["error"]
    assert "colour" in by_line[6]["error"]
    failing = run(cli, "--input-file", "in.jsonl", "--fail-on-quarantine")
    assert failing.exit_code == 1


def test_missing_input_file_exits_3_with_path(cli: Cli) -> None:
    result = run(cli, "--input-file", "nowhere/services.jsonl")
    assert result.exit_code == 3
    assert "nowhere/services.jsonl" in result.stderr
    assert result.stdout == ""


def test_max_services_and_dry_run(cli: Cli, isolated: Path) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    dry = run(cli, "--dry-run")
    assert dry.exit_code == 0
    assert "12 service(s)" in dry.stderr
    assert "21 model calls per service" in dry.stderr
    assert not (isolated / "out" / "evolutions.jsonl").exists()
    limited = run(cli, "--max-services", "2")
    assert limited.exit_code == 0
    assert len(read_jsonl(isolated / "out" / "evolutions.jsonl")) == 3


def test_real_provider_without_key_exits_2_naming_variable(cli: Cli, isolated: Path) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    result = run(cli, "--mapping-model", "anthropic:claude-sonnet-4-5")
    assert result.exit_code == 2
    assert "ANTHROPIC_API_KEY" in result.stderr
    assert not (isolated / "out" / "evolutions.jsonl").exists()


def test_bad_model_id_exits_2(cli: Cli, isolated: Path) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    result = run(cli, "--model", "gpt-5-mini")
    assert result.exit_code == 2
    assert "provider:model" in result.stderr


def test_version(cli: Cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("service-ambitions ")


@pytest.mark.parametrize("command", ["run", "validate", "preflight"])
def test_help_mentions_examples(cli: Cli, command: str) -> None:
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert "--config" in result.stdout


def test_validate_clean_and_findings(cli: Cli, isolated: Path) -> None:
    write_jsonl(isolated / "good.jsonl", [service("A")])
    clean = cli("validate", "--input-file", "good.jsonl")
    assert clean.exit_code == 0, clean.stderr
    write_jsonl(isolated / "bad.jsonl", [service("A"), "[1, 2]", service("A")])
    data = isolated / "data"
    shutil.copytree(
        Path(__file__).resolve().parent.parent / "src/service_ambitions/content/defaults/data", data
    )
    (data / "technologies.json").write_text('{"items": [\n  {"id": 1}\n', encoding="utf-8")
    dirty = cli("validate", "--input-file", "bad.jsonl", "--data-dir", str(data))
    assert dirty.exit_code == 3
    assert "bad.jsonl:2:" in dirty.stderr
    assert "bad.jsonl:3: duplicate service_id" in dirty.stderr
    assert "technologies.json:3: invalid JSON" in dirty.stderr
    assert "3 finding(s)" in dirty.stderr


def test_validate_output_file(cli: Cli, isolated: Path) -> None:
    write_jsonl(isolated / "services.jsonl", [service("A")])
    assert run(cli).exit_code == 0
    assert cli("validate", "--output-file", "out/evolutions.jsonl").exit_code == 0
    broken = isolated / "out" / "evolutions.jsonl"
    broken.write_bytes(broken.read_bytes()[:-40])
    result = cli("validate", "--output-file", "out/evolutions.jsonl")
    assert result.exit_code == 3
    assert "evolutions.jsonl:2" in result.stderr


def test_preflight(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    ready = cli("preflight")
    assert ready.exit_code == 0, ready.stderr
    assert "content: 5 plateaus, 3 roles" in ready.stderr
    missing = cli("preflight", "--model", "openai:gpt-5-mini")
    assert missing.exit_code == 2
    assert "OPENAI_API_KEY" in missing.stderr
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-000")
    assert cli("preflight", "--model", "openai:gpt-5-mini").exit_code == 0


def test_trace_ids_on_model_call_logs(cli: Cli, isolated: Path) -> None:
    write_jsonl(isolated / "services.jsonl", [service("A")])
    result = cli("run", "-vv", "--trace-ids", "--cache-mode", "off")
    assert result.exit_code == 0
    calls = [line for line in result.stderr.splitlines() if line.startswith("DEBUG model call")]
    assert len(calls) == 21
    assert all("[request_id=A:" in line for line in calls)
    plain = cli("run", "-vv", "--cache-mode", "off")
    assert "[request_id=" not in plain.stderr


def test_estimate_and_summary_json(cli: Cli, isolated: Path) -> None:
    shutil.copy(SAMPLES, isolated / "services.jsonl")
    estimate = cli("run", "--estimate", "--model", "openai:gpt-5-mini")
    assert estimate.exit_code == 2  # a real provider still needs its key, even to estimate
    estimate = cli("run", "--estimate")
    assert estimate.exit_code == 0
    assert "estimate for 12 service(s)" in estimate.stdout
    assert "mapping" in estimate.stdout
    assert "total: $0.0000" in estimate.stdout
    assert not (isolated / "evolutions.jsonl").exists()
    result = cli("run", "--summary-json", "summary.json", "--max-services", "2")
    assert result.exit_code == 0
    summary = json.loads((isolated / "summary.json").read_text())
    assert summary["services"]["ok"] == 2
    assert summary["model_calls"]["calls"] == 42
    assert set(summary["latency_seconds"]) == {"descriptions", "features", "mapping"}
    assert summary["cost"]["total_usd"] is not None
    assert summary["cache"]["writes"] > 0
    assert summary["budget"]["exhausted"] is False


def test_invalid_redaction_pattern_exits_2(cli: Cli, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(isolated / "services.jsonl", [service("A")])
    monkeypatch.setenv("SA_REDACTION_PATTERNS", "secret-[a-z")
    result = cli("run")
    assert result.exit_code == 2
    assert "secret-[a-z" in result.stderr
    assert not (isolated / "evolutions.jsonl").exists()


def test_summary_shows_the_rate_limits_in_force(cli: Cli, isolated: Path) -> None:
    write_jsonl(isolated / "services.jsonl", [service("A")])
    result = cli("run", "--model", "offline", "--rate-limit", "offline=rpm:6000", "--summary-json", "s.json")
    assert result.exit_code == 0, result.stderr
    assert "rate limits: offline 6000 rpm (configured)" in result.stderr
    summary = json.loads((isolated / "s.json").read_text(encoding="utf-8"))
    assert summary["rate_limits"]["offline"] == {
        "rpm": 6000,
        "tpm": None,
        "source": "configured",
        "throttled_429": 0,
    }


@pytest.mark.parametrize(
    "command",
    [["run"], ["validate"], ["map"], ["reverse"], ["report"], ["export"], ["migrate"], ["cache", "validate"]],
)
def test_help_examples_keep_their_lines(cli: Cli, command: list[str]) -> None:
    text = cli(*command, "--help").stdout
    examples = text.split("Example", 1)[1].split("Options:", 1)[0]
    lines = [line for line in examples.splitlines()[1:] if line.strip()]
    assert lines
    assert all(line.startswith("      service-ambitions ") for line in lines), examples
