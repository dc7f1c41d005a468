"""``run --shard K/N``: which services a shard owns, its header, resume and quarantine per shard."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from service_ambitions.domain.output import Header
from service_ambitions.domain.shard import Shard, shard_of
from service_ambitions.store.quarantine import QuarantineStore, quarantine_dir_for
from service_ambitions.store.reader import read_evolutions
from tests.conftest import ROOT, SAMPLES, read_jsonl, service, write_jsonl

Cli = Callable[..., Any]

UNSHARDED_HEADER_KEYS = [
    "record_type",
    "schema_version",
    "tool_version",
    "git_sha",
    "run_id",
    "seed",
    "models",
    "synthetic",
    "mapping_sets",
    "catalogue_hash",
    "input_digest",
    "settings",
    "migrated_from",
    "source_digest",
    "stage_digests",
]


def sample_ids() -> list[str]:
    return [item["service_id"] for item in read_jsonl(SAMPLES)]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def run_shard(cli: Cli, shard: str, output: str, *args: str, input_file: Path = SAMPLES) -> Any:
    return cli(
        "run",
        "--model",
        "offline",
        "--input-file",
        str(input_file),
        "--output-file",
        output,
        "--shard",
        shard,
        *args,
    )


class TestTheHash:
    @pytest.mark.parametrize(
        ("service_id", "count", "expected"), [("S1", 4, 2), ("SVC-LIB-001", 4, 4), ("é", 4, 4), ("G", 3, 1)]
    )
    def test_check_values(self, service_id: str, count: int, expected: int) -> None:
        assert shard_of(service_id, count) == expected

    @given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
    @settings(max_examples=200, deadline=None)
    def test_is_the_documented_formula(self, service_id: str, count: int) -> None:
        digest = hashlib.sha256(service_id.encode("utf-8", "surrogatepass")).digest()
        assert shard_of(service_id, count) == int.from_bytes(digest[:8], "big") % count + 1
        owners = [k for k in range(1, count + 1) if Shard(index=k, count=count).owns(service_id)]
        assert owners == [shard_of(service_id, count)]  # exactly one shard owns every service

    def test_does_not_depend_on_the_process_hash_seed(self) -> None:
        code = (
            "from service_ambitions.domain.shard import shard_of; "
            "print([shard_of(f'S{i}', 7) for i in range(50)])"
        )
        outputs = {
            subprocess.run(
                [sys.executable, "-c", code],
                env={**os.environ, "PYTHONHASHSEED": seed},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for seed in ("1", "2")
        }
        assert outputs == {str([shard_of(f"S{i}", 7) for i in range(50)]) + "\n"}


class TestTheFlag:
    @pytest.mark.parametrize(("text", "index", "count"), [("1/1", 1, 1), ("2/4", 2, 4), (" 7 / 7 ", 7, 7)])
    def test_parses(self, text: str, index: int, count: int) -> None:
        assert Shard.parse(text) == Shard(index=index, count=count)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("0/4", "between 1 and N"),
            ("5/4", "between 1 and N"),
            ("1/0", "between 1 and N"),
            ("x", "is not K/N"),
            ("2", "is not K/N"),
            ("-1/4", "is not K/N"),
            ("1.5/4", "is not K/N"),
        ],
    )
    def test_bad_values_are_usage_errors(self, cli: Cli, isolated: Path, text: str, message: str) -> None:
        result = run_shard(cli, text, "out.jsonl")
        assert result.exit_code == 2, result.stderr
        assert "--shard" in result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert not (isolated / "out.jsonl").exists()


class TestARun:
    def test_writes_only_its_services_in_input_order_and_records_the_shard(
        self, cli: Cli, isolated: Path
    ) -> None:
        assert (
            cli(
                "run", "--model", "offline", "--input-file", str(SAMPLES), "--output-file", "all.jsonl"
            ).exit_code
            == 0
        )
        result = run_shard(cli, "2/3", "s2.jsonl")
        assert result.exit_code == 0, result.stderr
        shard = read_evolutions(isolated / "s2.jsonl")
        owned = [service_id for service_id in sample_ids() if shard_of(service_id, 3) == 2]
        assert owned  # the samples do fill shard 2 of 3
        assert [record.service.service_id for record in shard.records] == owned
        assert shard.header.shard == Shard(index=2, count=3)
        assert json.loads(lines(isolated / "s2.jsonl")[0])["shard"] == {"index": 2, "count": 3}
        # byte for byte the lines an unsharded run writes for these services
        unsharded = [
            line
            for line in lines(isolated / "all.jsonl")[1:]
            if json.loads(line)["service"]["service_id"] in owned
        ]
        assert lines(isolated / "s2.jsonl")[1:] == unsharded
        # the same run id: the shard is not part of what the run is made of
        assert shard.header.run_id == read_evolutions(isolated / "all.jsonl").header.run_id

    def test_an_unsharded_header_is_unchanged(self, cli: Cli, isolated: Path) -> None:
        assert (
            cli(
                "run", "--model", "offline", "--input-file", str(SAMPLES), "--output-file", "all.jsonl"
            ).exit_code
            == 0
        )
        first = lines(isolated / "all.jsonl")[0]
        assert list(json.loads(first)) == UNSHARDED_HEADER_KEYS
        assert Header.model_validate_json(first).model_dump_json().encode() == first

    def test_editing_the_input_moves_no_other_service(self, cli: Cli, isolated: Path) -> None:
        records = [service(f"S{index}", name=f"Service {index}") for index in range(12)]
        before = write_jsonl(isolated / "before.jsonl", records)
        assert run_shard(cli, "2/3", "before-s2.jsonl", input_file=before).exit_code == 0
        # a new first line, a line removed, two lines swapped
        edited = [
            service("NEW", name="New"),
            *records[:3],
            *records[4:9],
            records[10],
            records[9],
            records[11],
        ]
        after = write_jsonl(isolated / "after.jsonl", edited)
        assert run_shard(cli, "2/3", "after-s2.jsonl", input_file=after).exit_code == 0

        def by_id(path: Path) -> dict[str, bytes]:
            return {json.loads(line)["service"]["service_id"]: line for line in lines(path)[1:]}

        old, new = by_id(isolated / "before-s2.jsonl"), by_id(isolated / "after-s2.jsonl")
        assert {key: value for key, value in new.items() if key != "NEW"} == {
            key: value for key, value in old.items() if key != "S3"
        }
        assert ("NEW" in new) == (shard_of("NEW", 3) == 2)

    def test_an_empty_shard_writes_a_valid_header_only_file(self, cli: Cli, isolated: Path) -> None:
        source = write_jsonl(isolated / "one.jsonl", [service("G")])  # G is in shard 1 of 2
        assert shard_of("G", 2) == 1
        result = run_shard(cli, "2/2", "s2.jsonl", input_file=source)
        assert result.exit_code == 0, result.stderr
        assert "shard 2/2 of input" in result.stderr
        written = read_evolutions(isolated / "s2.jsonl")
        assert written.records == []
        assert written.header.shard == Shard(index=2, count=2)
        assert len(lines(isolated / "s2.jsonl")) == 1

    def test_shards_share_the_cache_with_an_unsharded_run(self, cli: Cli, isolated: Path) -> None:
        assert (
            cli(
                "run", "--model", "offline", "--input-file", str(SAMPLES), "--output-file", "all.jsonl"
            ).exit_code
            == 0
        )
        result = run_shard(cli, "1/2", "s1.jsonl")
        assert result.exit_code == 0, result.stderr
        owned = sum(shard_of(service_id, 2) == 1 for service_id in sample_ids())
        assert f"records from cache: {owned};" in result.stderr

    def test_dry_run_plans_the_shard(self, cli: Cli, isolated: Path) -> None:
        result = run_shard(cli, "2/3", "s2.jsonl", "--dry-run")
        assert result.exit_code == 0, result.stderr
        owned = sum(shard_of(service_id, 3) == 2 for service_id in sample_ids())
        assert f"dry run: {owned} service(s) to process in shard 2/3" in result.stderr
        assert not (isolated / "s2.jsonl").exists()


class TestResume:
    def test_continues_the_same_shard(self, cli: Cli, isolated: Path) -> None:
        assert run_shard(cli, "1/2", "s1.jsonl", "--max-services", "2").exit_code == 0
        assert len(read_evolutions(isolated / "s1.jsonl").records) == 2
        result = run_shard(cli, "1/2", "s1.jsonl", "--resume")
        assert result.exit_code == 0, result.stderr
        owned = [service_id for service_id in sample_ids() if shard_of(service_id, 2) == 1]
        assert [
            record.service.service_id for record in read_evolutions(isolated / "s1.jsonl").records
        ] == owned

    @pytest.mark.parametrize(
        ("other", "message"),
        [
            (["--shard", "2/2"], "the shard changed (shard 1/2 -> shard 2/2)"),
            (["--shard", "1/3"], "the shard changed (shard 1/2 -> shard 1/3)"),
            ([], "the shard changed (shard 1/2 -> unsharded)"),
        ],
    )
    def test_refuses_another_shard(self, cli: Cli, isolated: Path, other: list[str], message: str) -> None:
        assert run_shard(cli, "1/2", "s1.jsonl", "--max-services", "1").exit_code == 0
        before = (isolated / "s1.jsonl").read_bytes()
        result = cli(
            "run",
            "--model",
            "offline",
            "--input-file",
            str(SAMPLES),
            "--output-file",
            "s1.jsonl",
            "--resume",
            *other,
        )
        assert result.exit_code == 3, result.stderr
        assert message in result.stderr
        assert (isolated / "s1.jsonl").read_bytes() == before

    def test_an_unsharded_output_refuses_a_shard(self, cli: Cli, isolated: Path) -> None:
        assert (
            cli(
                "run",
                "--model",
                "offline",
                "--input-file",
                str(SAMPLES),
                "--output-file",
                "all.jsonl",
                "--max-services",
                "1",
            ).exit_code
            == 0
        )
        result = run_shard(cli, "1/2", "all.jsonl", "--resume")
        assert result.exit_code == 3, result.stderr
        assert "the shard changed (unsharded -> shard 1/2)" in result.stderr


def test_each_bad_line_is_quarantined_by_exactly_one_shard(cli: Cli, isolated: Path) -> None:
    source = write_jsonl(
        isolated / "in.jsonl",
        [
            service("A"),
            "{not json",
            {"service_id": "H", "name": "No jobs"},
            service("B"),
            service("A", name="Again"),
        ],
    )
    assert (
        cli("run", "--model", "offline", "--input-file", str(source), "--output-file", "all.jsonl").exit_code
        == 0
    )
    unsharded = {
        entry.id: entry for entry in QuarantineStore(quarantine_dir_for(isolated / "all.jsonl")).entries()
    }
    assert {entry.line for entry in unsharded.values()} == {2, 3, 5}
    merged: dict[str, int] = {}
    for index in (1, 2, 3):
        assert run_shard(cli, f"{index}/3", f"s{index}.jsonl", input_file=source).exit_code == 0
        for entry in QuarantineStore(quarantine_dir_for(isolated / f"s{index}.jsonl")).entries():
            assert entry.id not in merged
            merged[entry.id] = index
            owner = 1 if entry.service_id is None else shard_of(entry.service_id, 3)
            assert index == owner
    assert set(merged) == set(unsharded)  # the same entries, ids included: each exactly once


def test_the_ci_example_runs_only_by_hand_with_one_job_per_shard_and_a_merge() -> None:
    workflow = yaml.safe_load(
        (ROOT / ".github" / "workflows" / "shards-example.yml").read_text(encoding="utf-8")
    )
    assert set(workflow[True]) == {"workflow_dispatch"}  # YAML 1.1 reads the key `on` as True
    shard, merge = workflow["jobs"]["shard"], workflow["jobs"]["merge"]
    assert shard["strategy"]["matrix"]["shard"] == list(range(1, int(workflow["env"]["SHARDS"]) + 1))
    assert shard["strategy"]["fail-fast"] is False
    runs = " ".join(step.get("run", "") for step in shard["steps"])
    assert (
        "python3 -m uv run --frozen service-ambitions run --shard ${{ matrix.shard }}/${{ env.SHARDS }}"
        in runs
    )
    uploads = [step for step in shard["steps"] if step.get("uses", "").startswith("actions/upload-artifact")]
    assert [step["with"]["name"] for step in uploads] == ["shard-${{ matrix.shard }}"]
    assert uploads[0]["if"] == "${{ !cancelled() }}"  # a failed shard's output is merged all the same
    assert merge["needs"] == "shard"
    assert "service-ambitions merge shards/evolutions.shard-*.jsonl" in " ".join(
        step.get("run", "") for step in merge["steps"]
    )
