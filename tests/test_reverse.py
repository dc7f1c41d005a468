"""``reverse``: a features file and the answer cache rebuilt from an evolutions file."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service_ambitions.context import build_context
from service_ambitions.engine.engine import ProcessingEngine
from service_ambitions.settings import load_settings
from service_ambitions.store.cache import ResponseCache
from service_ambitions.store.reader import read_evolutions
from tests.conftest import read_jsonl, write_jsonl
from tests.scripted import scripted
from tests.test_map import SERVICES, changed_catalogue, evolutions, without_mappings

Cli = Callable[..., Any]
FIXTURE_1_0 = Path(__file__).parent / "fixtures" / "evolutions_1_0.jsonl"


def entries(cache_dir: Path) -> int:
    cache = ResponseCache(cache_dir)
    try:
        assert cache.validate() == []
        return int(cache.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
    finally:
        cache.close()


def same(stage: str, service_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    return answer


def rerun(tmp: Path, cache_dir: Path, **overrides: Any) -> tuple[list[tuple[str, str]], Path]:
    """``run`` over the same services on ``cache_dir``; every request the model gets is recorded.

    The injected model answers for the id ``offline``, so the cache keys are those of an offline run.
    """
    output = tmp / "rerun.jsonl"
    settings = load_settings(
        None,
        {
            "model": "offline",
            "cache_dir": cache_dir,
            "input_file": tmp / "services.jsonl",
            "output_file": output,
        }
        | overrides,
    )
    calls: list[tuple[str, str]] = []
    context = build_context(settings, models={"offline": scripted(same, calls)})
    try:
        report = asyncio.run(ProcessingEngine(context).run(settings.input_file, settings.output_file))
    finally:
        context.close()
    assert report.services_ok == len(SERVICES)
    return calls, output


def test_reverse_then_run_makes_no_model_call(cli: Cli, isolated: Path) -> None:
    source = evolutions(cli, isolated)
    result = cli("reverse", "--cache-dir", "fresh")  # defaults: evolutions.jsonl -> features.jsonl
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "3 record(s) from evolutions.jsonl written to features.jsonl" in result.stderr
    assert "63 answer(s) stored (descriptions 3, features 15, mapping:applications 15" in result.stderr

    assert entries(isolated / "fresh") == 63
    calls, output = rerun(isolated, isolated / "fresh")

    assert calls == []  # zero descriptions, features and mapping requests
    assert output.read_bytes() == source.read_bytes()  # and the same file, byte for byte


def test_reverse_with_changed_catalogues_leaves_only_mapping_calls(cli: Cli, isolated: Path) -> None:
    evolutions(cli, isolated)
    data = changed_catalogue(isolated)
    result = cli("reverse", "--cache-dir", "fresh", "--data-dir", str(data))
    assert result.exit_code == 0, result.stderr
    assert "not stored: mapping:applications answers: its models, settings, prompts or content differ" in (
        result.stderr
    )

    calls, output = rerun(isolated, isolated / "fresh", data_dir=data)

    assert {stage for stage, _ in calls} == {"mapping"}
    assert len(calls) == len(SERVICES) * 5  # the changed set only, once per plateau
    records = read_evolutions(output).records
    assert all(
        item.item.startswith("NEW")
        for record in records
        for plateau in record.plateaus
        for feature in plateau.features
        for item in feature.mappings["applications"]
    )


def test_the_features_file_is_what_map_reads(cli: Cli, isolated: Path) -> None:
    source = evolutions(cli, isolated)
    assert cli("reverse").exit_code == 0
    features = read_evolutions(isolated / "features.jsonl")  # a valid 1.1 file
    assert features.header.source_digest == hashlib.sha256(source.read_bytes()).hexdigest()
    assert features.header.mapping_sets == []
    assert all(
        feature.mappings == {} and plateau.mappings == {}
        for record in features.records
        for plateau in record.plateaus
        for feature in plateau.features
    )
    old = read_jsonl(source)
    for record, line in zip(features.records, old[1:], strict=True):
        assert without_mappings(record.model_dump(mode="json")) == without_mappings(line)

    mapped = cli("map", "--model", "offline")  # defaults: features.jsonl -> mapped.jsonl
    assert mapped.exit_code == 0, mapped.stderr
    assert (isolated / "mapped.jsonl").read_bytes().splitlines()[1:] == source.read_bytes().splitlines()[1:]


def test_records_whose_settings_no_longer_match_are_reported_and_skipped(cli: Cli, isolated: Path) -> None:
    evolutions(cli, isolated)
    other = cli("reverse", "--cache-dir", "other", "--context-id", "university", "--seed", "7")
    assert other.exit_code == 0, other.stderr
    for label in ("descriptions", "features", "mapping:data"):
        assert f"not stored: {label} answers: its models, settings, prompts or content differ" in other.stderr
    assert "0 answer(s) stored" in other.stderr
    assert entries(isolated / "other") == 0
    assert len(read_jsonl(isolated / "features.jsonl")) == 1 + len(SERVICES)  # the features file is complete


def test_files_without_stage_digests_are_compared_as_a_whole(cli: Cli, isolated: Path) -> None:
    source = evolutions(cli, isolated)
    lines = read_jsonl(source)
    del lines[0]["stage_digests"]  # as written before headers had them
    write_jsonl(isolated / "older.jsonl", lines)
    same_settings = cli("reverse", "--input-file", "older.jsonl", "--cache-dir", "a")
    assert same_settings.exit_code == 0, same_settings.stderr
    assert "63 answer(s) stored" in same_settings.stderr

    lines[0]["settings"]["temperature"] = 0.5
    write_jsonl(isolated / "older.jsonl", lines)
    changed = cli("reverse", "--input-file", "older.jsonl", "--cache-dir", "b")
    assert changed.exit_code == 0, changed.stderr
    assert "not stored: features answers: settings changed: temperature" in changed.stderr
    assert "0 answer(s) stored" in changed.stderr


def test_answers_that_would_not_read_back_are_skipped(cli: Cli, isolated: Path) -> None:
    source = evolutions(cli, isolated)
    lines = read_jsonl(source)
    feature = lines[2]["plateaus"][0]["features"][0]
    feature["name"] += " (renamed by hand)"  # its id no longer follows from its name
    write_jsonl(source, lines)
    result = cli("reverse", "--cache-dir", "fresh")
    assert result.exit_code == 0, result.stderr
    assert "skipped for 1 record(s): features: plateau Foundational's features would not be read back" in (
        result.stderr
    )
    assert "(B)" in result.stderr


def test_reverse_of_a_1_0_file_writes_features_and_stores_nothing(cli: Cli, isolated: Path) -> None:
    lines = read_jsonl(FIXTURE_1_0)
    lines[0]["meta"]["models"] = {}
    write_jsonl(isolated / "old.jsonl", lines)
    result = cli("reverse", "--input-file", "old.jsonl", "--cache-dir", "c")
    assert result.exit_code == 0, result.stderr
    assert "a migrated schema 1.0 file records no settings to compare" in result.stderr
    features = read_evolutions(isolated / "features.jsonl")
    assert [record.service.service_id for record in features.records] == [
        line["service"]["service_id"] for line in lines
    ]
    assert features.header.migrated_from is not None


def test_reverse_refusals(cli: Cli, isolated: Path) -> None:
    missing = cli("reverse")
    assert missing.exit_code == 3
    assert "evolutions.jsonl does not exist" in missing.stderr
    (isolated / "evolutions.jsonl").write_text('{"hello": 1}\n', encoding="utf-8")
    foreign = cli("reverse")
    assert foreign.exit_code == 3
    assert "not an evolutions file" in foreign.stderr
    assert not (isolated / "features.jsonl").exists()
    same = cli("reverse", "--output-file", "evolutions.jsonl")
    assert same.exit_code == 2


def test_a_bad_line_is_named_and_the_rest_written(cli: Cli, isolated: Path) -> None:
    source = evolutions(cli, isolated)
    text = source.read_text(encoding="utf-8").splitlines()
    source.write_text("\n".join([*text[:2], "{broken", *text[2:]]) + "\n", encoding="utf-8")
    result = cli("reverse", "--cache-dir", "c")
    assert result.exit_code == 3
    assert "evolutions.jsonl:3: skipped: invalid JSON" in result.stderr
    assert [line["service"]["service_id"] for line in read_jsonl(isolated / "features.jsonl")[1:]] == SERVICES
    assert json.loads(text[0])["record_type"] == "header"
