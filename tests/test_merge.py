"""``merge``: shard outputs into one output equal to an unsharded run's, or a clear refusal."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service_ambitions.context import RunContext, build_context
from service_ambitions.domain.shard import Shard, shard_of
from service_ambitions.engine.engine import ProcessingEngine
from service_ambitions.settings import load_settings
from service_ambitions.store.lock import lock_path_for, output_lock
from service_ambitions.store.merge import merge_shards
from service_ambitions.store.quarantine import QuarantineStore, quarantine_dir_for
from service_ambitions.store.reader import read_evolutions
from service_ambitions.store.writer import partial_path_for
from tests.conftest import SAMPLES, read_jsonl, service, write_jsonl
from tests.scripted import scripted

Cli = Callable[..., Any]
COMMAND = [sys.executable, "-m", "service_ambitions"]
MODEL = "test:scripted"
SMALL = Path("in.jsonl")
"""Five services (A B C G H): shards 1/2 and 2/2 hold 3 and 2 of them, shards of 3 hold 3, 1 and 1."""


@pytest.fixture(autouse=True)
def small_input(isolated: Path) -> Path:
    return write_jsonl(isolated / SMALL, [service(service_id) for service_id in "ABCGH"])


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def run_all(cli: Cli, output: str, *args: str, input_file: Path = SMALL) -> None:
    result = cli("run", "--model", "offline", "--input-file", str(input_file), "--output-file", output, *args)
    assert result.exit_code == 0, result.stderr


def shard_all(cli: Cli, count: int, *args: str, input_file: Path = SMALL, prefix: str = "s") -> list[Path]:
    paths = []
    for index in range(1, count + 1):
        run_all(cli, f"{prefix}{index}.jsonl", "--shard", f"{index}/{count}", *args, input_file=input_file)
        paths.append(Path(f"{prefix}{index}.jsonl"))
    return paths


def merge(cli: Cli, shards: list[Path], *args: str, input_file: Path = SMALL) -> Any:
    return cli(
        "merge", *map(str, shards), "--input-file", str(input_file), "--output-file", "merged.jsonl", *args
    )


def edit_header(path: Path, **changes: Any) -> None:
    first, *rest = lines(path)
    header = json.loads(first)
    header.update(changes)
    path.write_bytes(json.dumps(header, separators=(",", ":")).encode() + b"\n" + b"".join(rest))


class TestAMerge:
    def test_equals_an_unsharded_run(self, cli: Cli, isolated: Path) -> None:
        run_all(cli, "all.jsonl", input_file=SAMPLES)
        shards = shard_all(cli, 3, input_file=SAMPLES)
        result = merge(cli, list(reversed(shards)), input_file=SAMPLES)
        assert result.exit_code == 0, result.stderr
        assert result.stdout == ""
        assert "merged 12 record(s) from 3 of 3 shard(s) into merged.jsonl" in result.stderr
        merged, unsharded = lines(isolated / "merged.jsonl"), lines(isolated / "all.jsonl")
        assert merged[1:] == unsharded[1:]
        header = json.loads(merged[0])
        assert header.pop("shards") == [
            {
                "index": index,
                "count": 3,
                "records": len(lines(isolated / f"s{index}.jsonl")) - 1,
                "digest": hashlib.sha256((isolated / f"s{index}.jsonl").read_bytes()).hexdigest(),
            }
            for index in (1, 2, 3)
        ]
        assert header == json.loads(unsharded[0])  # one header: the unsharded run's, listing the shards
        assert read_evolutions(isolated / "merged.jsonl").header.shard is None
        assert not partial_path_for(isolated / "merged.jsonl").exists()
        assert not lock_path_for(isolated / "merged.jsonl").exists()

    def test_writes_input_order_whatever_order_the_shards_hold(self, cli: Cli, isolated: Path) -> None:
        run_all(cli, "all.jsonl")
        shards = shard_all(cli, 2)
        first, *records = lines(isolated / "s1.jsonl")
        assert len(records) > 2
        (isolated / "s1.jsonl").write_bytes(first + b"".join(reversed(records)))  # as a resume may append
        result = merge(cli, shards)
        assert result.exit_code == 0, result.stderr
        assert lines(isolated / "merged.jsonl")[1:] == lines(isolated / "all.jsonl")[1:]

    def test_one_shard_of_one(self, cli: Cli, isolated: Path) -> None:
        run_all(cli, "all.jsonl")
        result = merge(cli, shard_all(cli, 1))
        assert result.exit_code == 0, result.stderr
        assert lines(isolated / "merged.jsonl")[1:] == lines(isolated / "all.jsonl")[1:]

    def test_empty_shards_merge(self, cli: Cli, isolated: Path) -> None:
        source = write_jsonl(isolated / "in.jsonl", [service("G")])  # shards 2 and 3 of 3 are empty
        run_all(cli, "all.jsonl", input_file=source)
        result = merge(cli, shard_all(cli, 3, input_file=source), input_file=source)
        assert result.exit_code == 0, result.stderr
        assert lines(isolated / "merged.jsonl")[1:] == lines(isolated / "all.jsonl")[1:]

    def test_replaces_an_earlier_output_only_when_complete(self, cli: Cli, isolated: Path) -> None:
        shards = shard_all(cli, 2)
        (isolated / "merged.jsonl").write_bytes(b"earlier\n")
        (isolated / "s2.jsonl").write_bytes((isolated / "s2.jsonl").read_bytes()[:-1])  # torn last line
        assert merge(cli, shards).exit_code == 3
        assert (isolated / "merged.jsonl").read_bytes() == b"earlier\n"
        assert not partial_path_for(isolated / "merged.jsonl").exists()


class TestRefusals:
    def test_other_settings_are_refused_naming_the_field_and_the_files(
        self, cli: Cli, isolated: Path
    ) -> None:
        shards = shard_all(cli, 2)
        run_all(cli, "s2.jsonl", "--shard", "2/2", "--seed", "7")
        result = merge(cli, shards)
        assert result.exit_code == 3, result.stderr
        assert "cannot merge s1.jsonl and s2.jsonl" in result.stderr
        assert "settings (seed)" in result.stderr
        assert not (isolated / "merged.jsonl").exists()

    @pytest.mark.parametrize(
        ("field", "value", "named"),
        [("catalogue_hash", "0" * 64, "catalogue hash"), ("input_digest", "1" * 64, "input digest")],
    )
    def test_other_catalogues_or_input_are_refused(
        self, cli: Cli, isolated: Path, field: str, value: str, named: str
    ) -> None:
        shards = shard_all(cli, 2)
        edit_header(isolated / "s2.jsonl", **{field: value})
        result = merge(cli, shards)
        assert result.exit_code == 3, result.stderr
        assert f"({named} differ)" in result.stderr
        assert "s1.jsonl and s2.jsonl" in result.stderr

    def test_another_schema_is_refused(self, cli: Cli, isolated: Path) -> None:
        shards = shard_all(cli, 2)
        edit_header(isolated / "s2.jsonl", schema_version="1.2")
        result = merge(cli, shards)
        assert result.exit_code == 3, result.stderr
        assert "s2.jsonl:1: not a valid schema 1.1 header: schema_version" in result.stderr

    def test_other_shard_counts_are_refused(self, cli: Cli, isolated: Path) -> None:
        run_all(cli, "a.jsonl", "--shard", "1/2")
        run_all(cli, "b.jsonl", "--shard", "2/3")
        result = merge(cli, [Path("a.jsonl"), Path("b.jsonl")])
        assert result.exit_code == 3, result.stderr
        assert "the shard counts differ (a.jsonl is shard 1/2, b.jsonl is shard 2/3)" in result.stderr

    def test_a_shard_given_twice_is_refused(self, cli: Cli, isolated: Path) -> None:
        shards = shard_all(cli, 2)
        (isolated / "copy.jsonl").write_bytes((isolated / "s1.jsonl").read_bytes())
        result = merge(cli, [*shards, Path("copy.jsonl")])
        assert result.exit_code == 3, result.stderr
        assert "s1.jsonl and copy.jsonl are both shard 1/2" in result.stderr

    def test_another_input_file_is_refused(self, cli: Cli, isolated: Path) -> None:
        shards = shard_all(cli, 2)
        other = write_jsonl(isolated / "other.jsonl", [*read_jsonl(isolated / SMALL), service("NEW")])
        result = merge(cli, shards, input_file=other)
        assert result.exit_code == 3, result.stderr
        assert f"--input-file {other} is not the input the shards were made from" in result.stderr

    def test_an_unsharded_output_is_refused(self, cli: Cli, isolated: Path) -> None:
        run_all(cli, "all.jsonl")
        result = merge(cli, [Path("all.jsonl")])
        assert result.exit_code == 3, result.stderr
        assert "all.jsonl:1: not a shard output" in result.stderr

    @pytest.mark.parametrize("target", ["s1.jsonl", "services.jsonl"])
    def test_an_output_that_is_an_input_is_refused(self, cli: Cli, isolated: Path, target: str) -> None:
        source = write_jsonl(isolated / "services.jsonl", read_jsonl(isolated / SMALL))
        shards = shard_all(cli, 2, input_file=source)
        before = (isolated / target).read_bytes()
        result = cli("merge", *map(str, shards), "--input-file", "services.jsonl", "--output-file", target)
        assert result.exit_code == 2, result.stderr
        assert f"--output-file {target} is the same file as" in result.stderr
        assert (isolated / target).read_bytes() == before

    def test_a_torn_shard_is_refused_naming_file_and_line(self, cli: Cli, isolated: Path) -> None:
        shards = shard_all(cli, 2)
        count = len(lines(isolated / "s2.jsonl"))
        (isolated / "s2.jsonl").write_bytes((isolated / "s2.jsonl").read_bytes()[:-20])
        result = merge(cli, shards)
        assert result.exit_code == 3, result.stderr
        assert f"s2.jsonl:{count}: the last line is incomplete" in result.stderr
        assert "Traceback" not in result.stderr

    def test_a_record_in_the_wrong_shard_is_refused(self, cli: Cli, isolated: Path) -> None:
        shards = shard_all(cli, 2)
        moved = lines(isolated / "s1.jsonl")[1]
        service_id = json.loads(moved)["service"]["service_id"]
        (isolated / "s2.jsonl").write_bytes((isolated / "s2.jsonl").read_bytes() + moved)
        result = merge(cli, shards)
        assert result.exit_code == 3, result.stderr
        assert f"service {service_id!r} does not belong to shard 2/2" in result.stderr

    def test_a_duplicated_record_is_refused(self, cli: Cli, isolated: Path) -> None:
        shards = shard_all(cli, 2)
        records = lines(isolated / "s1.jsonl")
        (isolated / "s1.jsonl").write_bytes(b"".join(records) + records[1])
        service_id = json.loads(records[1])["service"]["service_id"]
        result = merge(cli, shards)
        assert result.exit_code == 3, result.stderr
        assert f"s1.jsonl:{len(records) + 1}: service {service_id!r} has a record already, in s1.jsonl" in (
            result.stderr
        )

    def test_a_foreign_record_is_refused(self, cli: Cli, isolated: Path) -> None:
        shards = shard_all(cli, 1)
        record = json.loads(lines(isolated / "s1.jsonl")[1])
        record["service"]["service_id"] = "NOT-IN-INPUT"
        with (isolated / "s1.jsonl").open("ab") as handle:
            handle.write(json.dumps(record).encode() + b"\n")
        result = merge(cli, shards)
        assert result.exit_code == 3, result.stderr
        assert "service 'NOT-IN-INPUT' is not in the input file" in result.stderr

    def test_a_missing_shard_file_is_an_input_error(self, cli: Cli, isolated: Path) -> None:
        result = merge(cli, [Path("nope.jsonl")])
        assert result.exit_code == 3, result.stderr
        assert "shard output nope.jsonl does not exist" in result.stderr


class TestMissing:
    def test_are_listed_and_exit_1(self, cli: Cli, isolated: Path) -> None:
        shard_all(cli, 3)
        result = merge(cli, [Path("s1.jsonl"), Path("s3.jsonl")])
        assert result.exit_code == 1, result.stderr
        absent = [
            item["service_id"]
            for item in read_jsonl(isolated / SMALL)
            if shard_of(item["service_id"], 3) == 2
        ]
        assert "warning: shard 2/3 was not given" in result.stderr
        for service_id in absent:
            assert f"missing: {service_id} (shard 2/3 was not given)" in result.stderr
        assert f"error: {len(absent)} input service(s) have no record in the shards" in result.stderr
        written = read_evolutions(isolated / "merged.jsonl")  # the others are merged all the same
        assert len(written.records) == 5 - len(absent)
        assert [shard.index for shard in written.header.shards or []] == [1, 3]

    def test_are_allowed_with_allow_missing(self, cli: Cli, isolated: Path) -> None:
        shard_all(cli, 3)
        result = merge(cli, [Path("s2.jsonl")], "--allow-missing")
        assert result.exit_code == 0, result.stderr
        assert "missing: " in result.stderr
        quiet = merge(cli, [Path("s2.jsonl")], "--allow-missing", "-q")
        assert quiet.exit_code == 0
        assert quiet.stderr == ""

    def test_a_shard_that_did_not_finish(self, cli: Cli, isolated: Path) -> None:
        shards = shard_all(cli, 2)
        run_all(cli, "s1.jsonl", "--shard", "1/2", "--max-services", "1")
        result = merge(cli, shards)
        assert result.exit_code == 1, result.stderr
        assert "(no record in shard 1/2: did it finish? run it again with --resume)" in result.stderr


def fail_f(stage: str, service_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    """Under --strict, services whose id starts with F fail (an unknown catalogue item)."""
    if stage == "mapping" and service_id.startswith("F"):
        field = next(iter(answer["features"][0]["mappings"]))
        answer["features"][0]["mappings"][field].append({"item": "NOPE-1", "facets": {}})
    return answer


def scripted_context() -> RunContext:
    engine_settings = load_settings(None, {"model": MODEL, "cache_mode": "off", "strict": True})
    return build_context(engine_settings, models={MODEL: scripted(fail_f)})


async def run_engine(context: RunContext, source: Path, output: Path, shard: Shard | None = None) -> None:
    await ProcessingEngine(context, shard=shard).run(source, output)


def entries(output: Path) -> dict[str, bytes]:
    directory = quarantine_dir_for(output)
    return {path.name: path.read_bytes() for path in directory.glob("*.json")} if directory.exists() else {}


def test_quarantines_are_merged_and_failed_services_listed(cli: Cli, isolated: Path) -> None:
    source = write_jsonl(
        isolated / "in.jsonl",
        [service("A"), service("F1"), "{oops", service("B"), service("F2"), service("C")],
    )
    context = scripted_context()
    try:
        asyncio.run(run_engine(context, source, isolated / "all.jsonl"))
        for index in (1, 2):
            asyncio.run(
                run_engine(context, source, isolated / f"s{index}.jsonl", Shard(index=index, count=2))
            )
    finally:
        context.close()
    result = merge(cli, [Path("s1.jsonl"), Path("s2.jsonl")], input_file=source)
    assert result.exit_code == 1, result.stderr
    for service_id in ("F1", "F2"):
        assert f"missing: {service_id} (quarantined in shard {shard_of(service_id, 2)}/2 (unknown_ids))" in (
            result.stderr
        )
    assert lines(isolated / "merged.jsonl")[1:] == lines(isolated / "all.jsonl")[1:]
    assert entries(isolated / "merged.jsonl") == entries(isolated / "all.jsonl")
    assert len(entries(isolated / "merged.jsonl")) > 2
    assert not partial_path_for(isolated / "merged.jsonl").exists()


@st.composite
def inputs(draw: st.DrawFn) -> tuple[list[Any], int]:
    """A services file (some services failing, some bad lines) and a shard count."""
    ids = draw(
        st.lists(
            st.text(alphabet="ABCFXYZé-0123", min_size=1, max_size=4), unique=True, min_size=0, max_size=6
        )
    )
    lines_: list[Any] = [service(service_id, name=f"Service {service_id}") for service_id in ids]
    for bad in draw(st.lists(st.sampled_from(["{oops", "dup", "schema"]), max_size=2)):
        position = draw(st.integers(min_value=0, max_value=len(lines_)))
        if bad == "dup" and ids:
            lines_.insert(position, service(draw(st.sampled_from(ids)), name="Duplicate"))
        elif bad == "schema":
            lines_.insert(position, {"service_id": f"BAD{position}", "name": "no jobs"})
        else:
            lines_.insert(position, "{oops")
    return lines_, draw(st.integers(min_value=1, max_value=7))


def test_merge_of_shards_equals_the_unsharded_run(isolated: Path) -> None:
    context = scripted_context()

    @given(inputs())
    @settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    def check(case: tuple[list[Any], int]) -> None:
        records, count = case
        with tempfile.TemporaryDirectory(dir=isolated) as name:
            tmp = Path(name)
            source = write_jsonl(tmp / "in.jsonl", records) if records else tmp / "in.jsonl"
            if not records:
                source.write_bytes(b"")
            shards = [tmp / f"s{index}.jsonl" for index in range(1, count + 1)]

            async def runs() -> None:
                await run_engine(context, source, tmp / "all.jsonl")
                for index, path in enumerate(shards, start=1):
                    await run_engine(context, source, path, Shard(index=index, count=count))

            asyncio.run(runs())
            with output_lock(tmp / "merged.jsonl", command="merge"):
                report = merge_shards(list(reversed(shards)), source, tmp / "merged.jsonl")
            assert lines(tmp / "merged.jsonl")[1:] == lines(tmp / "all.jsonl")[1:]
            merged_header = json.loads(lines(tmp / "merged.jsonl")[0])
            assert [item["index"] for item in merged_header.pop("shards")] == list(range(1, count + 1))
            assert merged_header == json.loads(lines(tmp / "all.jsonl")[0])
            assert entries(tmp / "merged.jsonl") == entries(tmp / "all.jsonl")
            failed = {
                entry.service_id
                for entry in QuarantineStore(quarantine_dir_for(tmp / "all.jsonl")).entries()
                if entry.stage != "input" and entry.service_id is not None
            }
            missing = [item.service_id for item in report.missing]
            assert len(missing) == len(set(missing))
            assert set(missing) == failed

    try:
        check()
    finally:
        context.close()


def test_shards_and_merge_as_real_processes(isolated: Path) -> None:
    """Three shards at once, as CI would run them, then the merge: the unsharded run's records."""
    source = write_jsonl(
        isolated / "services.jsonl",
        [service(f"S{index:02d}", name=f"Service {index}") for index in range(8)],
    )
    env = {**os.environ, "SA_MODEL": "offline"}
    common = ["--input-file", str(source), "-q", "--no-progress"]
    unsharded = subprocess.run(
        [*COMMAND, "run", *common, "--output-file", "all.jsonl", "--cache-mode", "off"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert unsharded.returncode == 0, unsharded.stderr
    processes = [
        subprocess.Popen(
            [*COMMAND, "run", *common, "--shard", f"{index}/3", "--output-file", f"out/shard-{index}.jsonl"],
            env={**env, "XDG_CACHE_HOME": str(isolated / f"cache-{index}")},  # no cache shared with the above
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in (1, 2, 3)
    ]
    for process in processes:
        stdout, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr
        assert stdout == ""
    merged = subprocess.run(
        [
            *COMMAND,
            "merge",
            "out/shard-3.jsonl",
            "out/shard-1.jsonl",
            "out/shard-2.jsonl",
            "--input-file",
            str(source),
            "--output-file",
            "evolutions.jsonl",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout == ""
    assert "merged 8 record(s) from 3 of 3 shard(s)" in merged.stderr
    assert lines(isolated / "evolutions.jsonl")[1:] == lines(isolated / "all.jsonl")[1:]
    assert not lock_path_for(isolated / "evolutions.jsonl").exists()


def test_merge_refuses_while_another_process_holds_the_output(isolated: Path, cli: Cli) -> None:
    shards = shard_all(cli, 1)
    with output_lock(isolated / "merged.jsonl"):
        result = subprocess.run(
            [
                *COMMAND,
                "merge",
                *map(str, shards),
                "--input-file",
                str(SMALL),
                "--output-file",
                "merged.jsonl",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    assert result.returncode == 2, result.stderr
    assert "being written by another process" in result.stderr
    assert "refusing to merge on it" in result.stderr
    assert not (isolated / "merged.jsonl").exists()
