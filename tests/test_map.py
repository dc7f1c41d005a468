"""``map``: the features of an existing file mapped again against the current catalogues."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service_ambitions.content.loader import default_data_dir
from service_ambitions.context import build_context
from service_ambitions.engine.remap import RemapEngine
from service_ambitions.errors import QuarantineKind
from service_ambitions.settings import load_settings
from service_ambitions.store.quarantine import QuarantineStore, quarantine_dir_for
from service_ambitions.store.reader import read_evolutions
from tests.conftest import read_jsonl, service, write_jsonl
from tests.scripted import scripted

Cli = Callable[..., Any]
SERVICES = ["A", "B", "C"]


def evolutions(cli: Cli, tmp: Path, *extra: str) -> Path:
    """A run over three services with the offline model: ``evolutions.jsonl``."""
    write_jsonl(tmp / "services.jsonl", [service(sid, f"Service {sid}") for sid in SERVICES])
    result = cli("run", "--model", "offline", "-q", *extra)
    assert result.exit_code == 0, result.stderr
    return tmp / "evolutions.jsonl"


def changed_catalogue(tmp: Path) -> Path:
    """A copy of the bundled data whose applications catalogue has other items (new ids and names)."""
    data = tmp / "data2"
    shutil.copytree(default_data_dir(), data)
    path = data / "applications.json"
    catalogue = json.loads(path.read_text(encoding="utf-8"))
    catalogue["items"] = [
        {**item, "id": item["id"].replace("APP", "NEW"), "name": f"Renewed {item['name']}"}
        for item in catalogue["items"]
    ]
    path.write_text(json.dumps(catalogue), encoding="utf-8")
    return data


def without_mappings(record: dict[str, Any]) -> list[Any]:
    """What map must keep: per plateau, its number, name, description and features minus mappings."""
    return [
        (
            plateau["plateau"],
            plateau["plateau_name"],
            plateau["description"],
            [{**feature, "mappings": None} for feature in plateau["features"]],
            [
                (role["role_id"], [feature["feature_id"] for feature in role["features"]])
                for role in plateau["roles"]
            ],
        )
        for plateau in record["plateaus"]
    ]


def test_map_after_a_catalogue_change_remaps_and_keeps_features(cli: Cli, isolated: Path) -> None:
    source = evolutions(cli, isolated)
    data = changed_catalogue(isolated)

    result = cli(
        "map", "--input-file", str(source), "--model", "offline", "--data-dir", str(data),
        "--summary-json", "summary.json",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    before = read_jsonl(source)
    after = read_jsonl(isolated / "mapped.jsonl")
    read_evolutions(isolated / "mapped.jsonl")  # a valid 1.1 file
    header = after[0]
    assert header["source_digest"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert header["catalogue_hash"] != before[0]["catalogue_hash"]
    assert header["input_digest"] == before[0]["input_digest"]  # the same services
    assert header["stage_digests"]["features"] == before[0]["stage_digests"]["features"]
    assert (
        header["stage_digests"]["mapping:applications"] != before[0]["stage_digests"]["mapping:applications"]
    )
    assert header["stage_digests"]["mapping:data"] == before[0]["stage_digests"]["mapping:data"]
    for old, new in zip(before[1:], after[1:], strict=True):
        assert new["service"] == old["service"]
        assert without_mappings(new) == without_mappings(old)  # descriptions and features untouched
        assert new["provenance"]["descriptions"] == old["provenance"]["descriptions"]
        for plateau in new["plateaus"]:
            items = {
                item["item"]
                for feature in plateau["features"]
                for item in feature["mappings"]["applications"]
            }
            assert items
            assert all(item.startswith("NEW") for item in items)
            assert all(group["name"].startswith("Renewed ") for group in plateau["mappings"]["applications"])
        old_data = [plateau["mappings"]["data"] for plateau in old["plateaus"]]
        assert [plateau["mappings"]["data"] for plateau in new["plateaus"]] == old_data
    # only the mapping stage ran; the unchanged sets came from the cache, the changed one was asked
    calls = json.loads((isolated / "summary.json").read_text(encoding="utf-8"))["model_calls"]
    assert calls["by_stage"] == {"mapping": 3 * 5 * 3}
    assert calls["requests"] == 3 * 5  # one applications call per plateau and service

    # reproducible: a second map (warm cache) writes the same bytes
    again = cli(
        "map", "--input-file", str(source), "--model", "offline", "--data-dir", str(data),
        "--output-file", "again.jsonl",
    )  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert (isolated / "again.jsonl").read_bytes() == (isolated / "mapped.jsonl").read_bytes()


def test_map_with_unchanged_catalogues_reproduces_the_records(cli: Cli, isolated: Path) -> None:
    source = evolutions(cli, isolated)
    result = cli("map", "--features-file", str(source), "--model", "offline", "--summary-json", "s.json")
    assert result.exit_code == 0, result.stderr
    assert (isolated / "mapped.jsonl").read_bytes().splitlines()[1:] == source.read_bytes().splitlines()[1:]
    assert json.loads((isolated / "s.json").read_text(encoding="utf-8"))["model_calls"]["requests"] == 0


def test_map_of_one_service(cli: Cli, isolated: Path) -> None:
    source = evolutions(cli, isolated)
    result = cli("map", "--input-file", str(source), "--model", "offline", "--service-id", "B")
    assert result.exit_code == 0, result.stderr
    lines = read_jsonl(isolated / "mapped.jsonl")
    assert [line["service"]["service_id"] for line in lines[1:]] == ["B"]
    assert lines[1] == read_jsonl(source)[2]

    missing = cli(
        "map",
        "--input-file",
        str(source),
        "--model",
        "offline",
        "--service-id",
        "Z",
        "--output-file",
        "z.jsonl",
    )
    assert missing.exit_code == 3
    assert "service 'Z' is not in" in missing.stderr
    assert not (isolated / "z.jsonl").exists()


def test_map_to_stdout(cli: Cli, isolated: Path) -> None:
    source = evolutions(cli, isolated)
    result = cli("map", "--input-file", str(source), "--model", "offline", "--output-file", "-")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["record_type"] == "header"
    assert [line["service"]["service_id"] for line in lines[1:]] == SERVICES
    assert "wrote 3 record(s)" in result.stderr  # people's text on stderr only
    assert not (isolated / "mapped.jsonl").exists()
    assert not (isolated / "-").exists()
    refused = cli("map", "--input-file", str(source), "--model", "offline", "--output-file", "-", "--resume")
    assert refused.exit_code == 2
    assert refused.stdout == ""


def test_map_to_a_pipe_its_reader_closed_stops_quietly(cli: Cli, isolated: Path) -> None:
    """``map --output-file - | head -1``: the reader going away is not an error of ours."""
    source = evolutions(cli, isolated)
    command = " ".join(
        shlex.quote(part)
        for part in (
            sys.executable, "-m", "service_ambitions", "map", "--input-file", str(source),
            "--model", "offline", "--cache-mode", "off", "--output-file", "-", "--no-progress", "-q",
        )
    )  # fmt: skip
    # Each mapping call takes 0.3 s, so head has read the header and gone before the first record.
    env = {**os.environ, "SA_OFFLINE__LATENCY_MS": "300"}
    script = f"{command} 2>map.err | head -1 >first.txt; exit ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=False)
    stderr = (isolated / "map.err").read_text(encoding="utf-8")
    assert done.returncode == 0, stderr
    assert stderr == ""  # no "Broken pipe", no "Exception ignored ... BrokenPipeError" at exit
    assert json.loads((isolated / "first.txt").read_text(encoding="utf-8"))["record_type"] == "header"


def test_map_resumes_and_refuses_another_source(cli: Cli, isolated: Path) -> None:
    source = evolutions(cli, isolated)
    full = cli("map", "--input-file", str(source), "--model", "offline", "--output-file", "full.jsonl")
    assert full.exit_code == 0, full.stderr
    first = cli("map", "--input-file", str(source), "--model", "offline", "--max-services", "1")
    assert first.exit_code == 0, first.stderr
    assert len(read_jsonl(isolated / "mapped.jsonl")) == 2
    resumed = cli("map", "--input-file", str(source), "--model", "offline", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert (isolated / "mapped.jsonl").read_bytes() == (isolated / "full.jsonl").read_bytes()

    lines = source.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[1])
    record["plateaus"][0]["description"] += " Edited."
    source.write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n", encoding="utf-8")
    refused = cli("map", "--input-file", str(source), "--model", "offline", "--resume")
    assert refused.exit_code == 3
    assert "the source file changed" in refused.stderr


def test_map_with_a_service_file_replaces_the_services(cli: Cli, isolated: Path) -> None:
    source = evolutions(cli, isolated)
    updated = write_jsonl(
        isolated / "updated.jsonl", [service("B", "Service B", description="Now also online.")]
    )
    result = cli("map", "--input-file", str(source), "--model", "offline", "--service-file", str(updated))
    assert result.exit_code == 0, result.stderr
    assert "1 record(s) were mapped with their service from" in result.stderr
    lines = read_jsonl(isolated / "mapped.jsonl")
    assert lines[0]["input_digest"] == hashlib.sha256(updated.read_bytes()).hexdigest()
    by_id = {line["service"]["service_id"]: line for line in lines[1:]}
    assert by_id["B"]["service"]["description"] == "Now also online."
    assert by_id["A"]["service"]["description"] == "Service A for the university community."
    old = {line["service"]["service_id"]: line for line in read_jsonl(source)[1:]}
    assert without_mappings(by_id["B"]) == without_mappings(old["B"])
    resumed = cli(
        "map", "--input-file", str(source), "--model", "offline", "--service-file", str(updated), "--resume"
    )  # fmt: skip
    assert resumed.exit_code == 0, resumed.stderr
    assert "0 record(s) were mapped with their service from" in resumed.stderr  # all done before

    bad = write_jsonl(isolated / "bad.jsonl", ["{not json"])
    refused = cli("map", "--input-file", str(source), "--model", "offline", "--service-file", str(bad))
    assert refused.exit_code == 3
    assert "bad.jsonl:1: invalid JSON" in refused.stderr


def test_map_flags_and_refusals(cli: Cli, isolated: Path) -> None:
    source = evolutions(cli, isolated)
    both = cli("map", "--input-file", str(source), "--features-file", "other.jsonl", "--model", "offline")
    assert both.exit_code == 2
    assert (
        "--input-file and --features-file name the same input option; give one of them "
        f"(got {source} and other.jsonl)"
    ) in both.stderr
    same = cli("map", "--input-file", str(source), "--output-file", str(source), "--model", "offline")
    assert same.exit_code == 2
    assert "is the same file as --output-file" in same.stderr
    assert cli("map", "--model", "offline").exit_code == 3  # default input features.jsonl: missing
    strict = cli("map", "--input-file", str(source), "--model", "offline", "--strict-mapping")
    assert strict.exit_code == 0, strict.stderr
    assert read_jsonl(isolated / "mapped.jsonl")[0]["settings"]["strict"] is True
    help_text = cli("map", "--help").stdout
    for flag in ("--input-file", "--features-file", "--output-file", "--service-id", "--service-file"):
        assert flag in help_text


def test_map_reads_a_1_0_file_through_the_migration(cli: Cli, isolated: Path) -> None:
    fixture = Path(__file__).parent / "fixtures" / "evolutions_1_0.jsonl"
    lines = read_jsonl(fixture)
    lines[0]["meta"]["models"] = {}
    source = write_jsonl(isolated / "old.jsonl", lines)
    result = cli("map", "--input-file", str(source), "--model", "offline", "--summary-json", "s.json")
    assert result.exit_code == 0, result.stderr
    mapped = read_evolutions(isolated / "mapped.jsonl")
    assert mapped.header.migrated_from is not None
    assert mapped.header.source_digest == hashlib.sha256(source.read_bytes()).hexdigest()
    assert mapped.records[0].provenance.descriptions == "unknown"
    assert [plateau.description for plateau in mapped.records[1].plateaus] == [
        plateau["service_description"] for plateau in lines[1]["plateaus"]
    ]
    assert "schema 1.0 (migrated in memory)" in result.stderr


def test_strict_map_failure_quarantines_one_service(cli: Cli, isolated: Path) -> None:
    source = evolutions(cli, isolated)

    def unknown_item_for_b(stage: str, service_id: str, answer: dict[str, Any]) -> dict[str, Any]:
        assert stage == "mapping"  # map never asks for descriptions or features
        if service_id == "B":
            field = next(iter(answer["features"][0]["mappings"]))
            answer["features"][0]["mappings"][field].append({"item": "NOPE-1", "facets": {}})
        return answer

    output = isolated / "strict.jsonl"
    settings = load_settings(
        None, {"model": "test:scripted", "strict": True, "cache_mode": "off", "output_file": output}
    )
    calls: list[tuple[str, str]] = []
    context = build_context(settings, models={"test:scripted": scripted(unknown_item_for_b, calls)})
    try:
        report = asyncio.run(RemapEngine(context).run(source, output))
    finally:
        context.close()
    assert (report.services_ok, report.failed_ids) == (2, ("B",))
    assert len(calls) == 3 * 5 * 3
    assert [record.service.service_id for record in read_evolutions(output).records] == ["A", "C"]
    entries = list(QuarantineStore(quarantine_dir_for(output)).entries())
    failed = [entry for entry in entries if entry.service_id == "B" and "--strict" in entry.error]
    assert len(failed) == 1
    assert failed[0].kind == QuarantineKind.UNKNOWN_IDS
    assert {entry.service_id for entry in entries} == {"B"}


def test_map_needs_keys_only_for_the_models_it_calls(
    cli: Cli, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = evolutions(cli, isolated)
    # The other stages name a real provider without a key: map never calls them, so it need not ask.
    monkeypatch.setenv("SA_MODELS__DESCRIPTIONS", "anthropic:claude-sonnet-4-5")
    monkeypatch.setenv("SA_MODELS__FEATURES", "anthropic:claude-sonnet-4-5")
    result = cli("map", "--input-file", str(source), "--mapping-model", "offline")
    assert result.exit_code == 0, result.stderr
    monkeypatch.setenv("SA_MODELS__MAPPING", "anthropic:claude-sonnet-4-5")
    refused = cli("map", "--input-file", str(source), "--output-file", "m2.jsonl")
    assert refused.exit_code == 2
    assert "ANTHROPIC_API_KEY" in refused.stderr
