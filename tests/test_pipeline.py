"""The pipeline's rules, driven through the engine's public API with scripted model answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service_ambitions.context import build_context
from service_ambitions.engine.engine import ProcessingEngine, RunReport
from service_ambitions.settings import load_settings
from service_ambitions.store.quarantine import QuarantineEntry, QuarantineStore, quarantine_dir_for
from service_ambitions.store.reader import read_evolutions
from tests.conftest import service, write_jsonl
from tests.scripted import Edit, scripted

MODEL = "test:scripted"


async def run_engine(
    tmp: Path, records: list[Any], edit: Edit, calls: list[tuple[str, str]] | None = None, **overrides: Any
) -> tuple[RunReport, list[dict[str, Any]], list[QuarantineEntry]]:
    write_jsonl(tmp / "in.jsonl", records)
    output = tmp / "out.jsonl"
    settings = load_settings(
        None,
        {
            "model": MODEL,
            "cache_mode": "off",
            "input_file": tmp / "in.jsonl",
            "output_file": output,
            **overrides,
        },
    )
    context = build_context(settings, models={MODEL: scripted(edit, calls)})
    try:
        report = await ProcessingEngine(context).run(settings.input_file, settings.output_file)
    finally:
        context.close()
    read_evolutions(output)  # every output validates with the public reader
    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    entries = list(QuarantineStore(quarantine_dir_for(output)).entries())
    return report, lines[1:], entries


def same(stage: str, service_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    return answer


async def test_21_calls_per_service(isolated: Path) -> None:
    calls: list[tuple[str, str]] = []
    report, records, entries = await run_engine(isolated, [service("A"), service("B")], same, calls)
    assert report.services_ok == 2
    assert entries == []
    assert sorted(calls).count(("descriptions", "A")) == 1
    assert sum(1 for stage, sid in calls if sid == "A") == 21
    assert sum(1 for stage, sid in calls if sid == "A" and stage == "features") == 5
    assert sum(1 for stage, sid in calls if sid == "A" and stage == "mapping") == 15
    assert records[0]["provenance"]["descriptions"] == "scripted"


def add_unknown_item(stage: str, service_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    if stage == "mapping" and service_id == "A":
        field = next(iter(answer["features"][0]["mappings"]))
        answer["features"][0]["mappings"][field].append({"item": "NOPE-1", "facets": {}})
    return answer


async def test_unknown_ids_dropped_and_quarantined(isolated: Path) -> None:
    report, records, entries = await run_engine(isolated, [service("A")], add_unknown_item)
    assert report.services_ok == 1
    assert report.unknown_ids == 15  # one per mapping call: 5 plateaus x 3 sets
    text = json.dumps(records)
    assert "NOPE-1" not in text
    unknown = [entry for entry in entries if entry.kind == "unknown_ids"]
    assert len(unknown) == 15
    assert all("NOPE-1" in entry.error and entry.service_id == "A" for entry in unknown)
    assert {entry.stage for entry in unknown} == {"mapping"}


async def test_unknown_ids_fail_the_service_under_strict(isolated: Path) -> None:
    report, records, entries = await run_engine(
        isolated, [service("A"), service("B")], add_unknown_item, strict=True
    )
    assert [record["service"]["service_id"] for record in records] == ["B"]
    assert report.services_failed == 1
    assert report.failed_ids == ("A",)
    assert any(entry.error.startswith("--strict") and entry.service_id == "A" for entry in entries)


def drop_first_feature(stage: str, service_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    if stage == "mapping":
        answer["features"] = answer["features"][1:]
    return answer


async def test_features_missing_from_mapping_get_empty_lists(isolated: Path) -> None:
    report, records, entries = await run_engine(isolated, [service("A")], drop_first_feature)
    assert report.services_ok == 1
    plateau = records[0]["plateaus"][0]
    empty = [feature for feature in plateau["features"] if feature["mappings"]["applications"] == []]
    assert len(empty) == 1
    missing = [entry for entry in entries if "missing from the" in entry.error]
    assert len(missing) == 15
    assert all(entry.kind == "schema_mismatch" for entry in missing)


def bad_facets(stage: str, service_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    if stage == "mapping":
        for entry in answer["features"]:
            for items in entry["mappings"].values():
                for item in items:
                    if "integration_role" in (item.get("facets") or {}):
                        item["facets"]["integration_role"] = "mainframe"
                    elif "access_mode" in (item.get("facets") or {}):
                        item.pop("facets")
    return answer


async def test_facet_violations_quarantined(isolated: Path) -> None:
    report, records, entries = await run_engine(isolated, [service("A")], bad_facets)
    assert report.services_ok == 1
    violations = [entry for entry in entries if entry.kind == "facet_validation"]
    errors = " ".join(entry.error for entry in violations)
    assert "invalid facets" in errors
    assert "integration_role" in errors
    assert "facets object missing" in errors
    feature = records[0]["plateaus"][0]["features"][0]
    assert all(item["facets"] is None for item in feature["mappings"]["applications"])
    technologies = feature["mappings"]["technologies"]
    assert technologies
    assert all(item["facets"]["adoption_stage"] for item in technologies)


def lenient_shapes(stage: str, service_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    if stage != "mapping":
        return answer
    reshaped = []
    for index, entry in enumerate(answer["features"]):
        field, items = next(iter(entry["mappings"].items()))
        if index % 3 == 0:
            reshaped.append({"feature_id": entry["feature_id"], field: items})
        elif index % 3 == 1:
            reshaped.append({"feature_id": entry["feature_id"], field: {field: items}})
        else:
            reshaped.append({"feature_id": entry["feature_id"], "mappings": {field: {field: items}}})
    return {"features": reshaped}


async def test_lenient_mapping_shapes_equal_canonical(isolated: Path) -> None:
    (isolated / "a").mkdir()
    (isolated / "b").mkdir()
    _, canonical, _ = await run_engine(isolated / "a", [service("A")], same)
    _, lenient, entries = await run_engine(isolated / "b", [service("A")], lenient_shapes)
    assert entries == []
    assert canonical == lenient


def duplicate_mapping_entry(stage: str, service_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    if stage == "mapping" and service_id == "A":
        answer["features"].append(answer["features"][0])
    return answer


async def test_duplicate_feature_id_in_mapping_answer_is_invalid(isolated: Path) -> None:
    report, records, entries = await run_engine(
        isolated, [service("A"), service("B")], duplicate_mapping_entry
    )
    assert [record["service"]["service_id"] for record in records] == ["B"]
    assert report.services_failed == 1
    failure = next(entry for entry in entries if entry.service_id == "A")
    assert failure.kind == "schema_mismatch"
    assert failure.stage == "mapping"
    assert "duplicate feature_id" in failure.error


def duplicate_feature(stage: str, service_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    if stage == "features":
        learners = answer["features"]["learners"]
        learners.append(dict(learners[0]))
    return answer


async def test_duplicate_feature_ids_reported_not_merged(isolated: Path) -> None:
    report, records, entries = await run_engine(isolated, [service("A")], duplicate_feature)
    assert report.services_ok == 1
    duplicates = [entry for entry in entries if "duplicate feature id" in entry.error]
    assert len(duplicates) == 5
    assert duplicates[0].payload["feature_id"] in duplicates[0].error
    ids = [feature["feature_id"] for feature in records[0]["plateaus"][0]["features"]]
    assert len(ids) == len(set(ids))


def no_academics(stage: str, service_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    if stage == "features" and service_id == "A":
        # No stray key beside it: a key matching no role while a role is missing is re-asked
        # (tests/test_semantic_reasks.py).
        answer["features"].pop("academics")
    return answer


async def test_empty_role_fails_only_in_strict(isolated: Path) -> None:
    report, records, entries = await run_engine(isolated, [service("A")], no_academics)
    assert report.services_ok == 1
    assert records[0]["plateaus"][0]["roles"][0] == {
        "role_id": "academics",
        "name": "Academics",
        "description": records[0]["plateaus"][0]["roles"][0]["description"],
        "features": [],
    }
    assert any("role 'academics' has no features" in entry.error for entry in entries)
    strict, strict_records, _ = await run_engine(
        isolated, [service("A"), service("B")], no_academics, strict=True
    )
    assert strict.failed_ids == ("A",)
    assert [record["service"]["service_id"] for record in strict_records] == ["B"]


def wrong_label(stage: str, service_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    if stage == "features" and service_id == "A":
        answer["features"]["learners"][0]["score"]["label"] = "Optimizing"
        answer["features"]["learners"][0]["score"]["level"] = 1
    return answer


async def test_score_label_must_match_level(isolated: Path) -> None:
    report, records, entries = await run_engine(
        isolated, [service("A"), service("B")], wrong_label, output_retries=0
    )
    assert report.failed_ids == ("A",)
    assert len(records) == 1
    assert entries[0].kind == "schema_mismatch"
    assert "does not match level" in entries[0].error or "schema" in entries[0].error


def preamble_and_missing(stage: str, service_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    if stage == "descriptions":
        for item in answer["descriptions"]:
            item["description"] = (
                f"Prepared plateau-{item['plateau']} description for {service_id}: " + item["description"]
            )
        if service_id == "B":
            answer["descriptions"][2]["description"] = ""
    return answer


async def test_descriptions_preamble_stripped_and_missing_fails(isolated: Path) -> None:
    _, records, entries = await run_engine(isolated, [service("A"), service("B")], preamble_and_missing)
    assert [record["service"]["service_id"] for record in records] == ["A"]
    assert not records[0]["plateaus"][0]["description"].lower().startswith("prepared")
    assert records[0]["plateaus"][0]["description"].startswith("At the Foundational plateau")
    failure = next(entry for entry in entries if entry.service_id == "B")
    assert failure.stage == "descriptions"
    assert "Autonomous" in failure.error
