"""``migrate``: schema 1.0 files to 1.1, through the CLI and the registry."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from service_ambitions import __version__
from service_ambitions.cli.migrate import migrate
from service_ambitions.domain.ids import feature_id
from service_ambitions.domain.output import FeatureRef, PlateauResult
from service_ambitions.domain.reference import Role
from service_ambitions.errors import InputError, UsageError
from service_ambitions.store.migrate import (
    MIGRATIONS,
    UNKNOWN_MODEL,
    MigrationOptions,
    migrate_file,
    supported_migrations,
)
from service_ambitions.store.reader import read_evolutions
from tests.conftest import read_jsonl, service, write_jsonl

FIXTURE = Path(__file__).parent / "fixtures" / "evolutions_1_0.jsonl"
RUN_A = "run-2025-08-01-a1b2"
RUN_B = "run-2025-08-14-c3d4"


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """Test root, so that ``migrate`` is a subcommand."""

    app.command("migrate")(migrate)
    return app


def invoke(*args: str) -> Any:
    return CliRunner().invoke(_app(), ["migrate", *args], catch_exceptions=False)


def run_migrate(source: Path, output: Path, *extra: str) -> Any:
    return invoke("--from", "1.0", "--to", "1.1", "--input", str(source), "--output", str(output), *extra)


def fixture_lines() -> list[dict[str, Any]]:
    return read_jsonl(FIXTURE)


def test_migrate_1_0_to_1_1(isolated: Path) -> None:
    output = isolated / "out" / "evolutions.jsonl"
    result = run_migrate(FIXTURE, output)

    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    summary = result.stderr.strip().splitlines()
    assert len(summary) == 1
    assert "3 record(s) from 2 run(s)" in summary[0]

    parsed = read_evolutions(output)  # the reader validates every line against schema 1.1
    header = parsed.header
    old = fixture_lines()

    # every 1.0 meta value is in the header, one entry per run, with the services of that run
    assert header.migrated_from is not None
    entries = {entry["run_id"]: entry for entry in header.migrated_from}
    assert list(entries) == [RUN_A, RUN_B]
    for line in old:
        entry = entries[line["meta"]["run_id"]]
        assert entry["meta"] == line["meta"]
        for key, value in line["meta"].items():
            assert entry["meta"][key] == value
        assert line["service"]["service_id"] in entry["service_ids"]
    assert entries[RUN_A]["service_ids"] == ["SVC-ADM-001", "SVC-TTB-001"]
    assert entries[RUN_B]["service_ids"] == ["SVC-ENR-001"]
    assert all("variants" not in entry for entry in header.migrated_from)

    # header fields derived from the 1.0 metas
    assert header.schema_version == "1.1"
    assert header.tool_version == __version__
    assert header.run_id == hashlib.sha256(f"{RUN_A}\n{RUN_B}".encode()).hexdigest()[:16]
    assert header.input_digest == hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
    assert header.settings == {"migrated": True}
    assert header.synthetic is False
    assert header.seed is None  # the two runs used different seeds; both are in migrated_from
    assert header.mapping_sets == ["applications", "technologies", "data"]
    assert header.models["descriptions"] == "openai:gpt-5,anthropic:claude-sonnet-4-0"
    assert header.models["search"] == "openai:gpt-4o-search-preview"

    # records in input order, each keeping the provenance of its own run
    assert [record.service.service_id for record in parsed.records] == [
        line["service"]["service_id"] for line in old
    ]
    for record, line in zip(parsed.records, old, strict=True):
        models = line["meta"]["models"]
        assert record.provenance.descriptions == models["descriptions"]
        assert [item.features for item in record.provenance.plateaus] == [models["features"]] * len(
            line["plateaus"]
        )
        assert all(set(item.mapping.values()) == {models["mapping"]} for item in record.provenance.plateaus)
        assert record.service.model_dump(mode="json") == line["service"]

    # service_description became description; features, facets, roles and groups in canonical order
    raw = output.read_text(encoding="utf-8")
    assert "service_description" not in raw
    for record, line in zip(parsed.records, old, strict=True):
        for plateau, before in zip(record.plateaus, line["plateaus"], strict=True):
            assert plateau.description == before["service_description"]
            ids = [feature.feature_id for feature in plateau.features]
            assert ids == sorted(feature["feature_id"] for feature in before["features"])
            old_features = {feature["feature_id"]: feature for feature in before["features"]}
            for feature in plateau.features:
                for field, items in old_features[feature.feature_id]["mappings"].items():
                    assert [item.model_dump() for item in feature.mappings[field]] == items
                    assert all(item.facets for item in feature.mappings[field])
                assert feature.role.role_id == feature.customer_type
            role_ids = [role.role_id for role in plateau.roles]
            assert role_ids == sorted(role_ids)
            for role in plateau.roles:
                assert [feature.customer_type for feature in role.features] == [role.role_id] * len(
                    role.features
                )
            for groups in plateau.mappings.values():
                assert [group.id for group in groups] == sorted(group.id for group in groups)
                for group in groups:
                    refs = [ref.feature_id for ref in group.mappings]
                    assert refs == sorted(refs)

    # roles absent from 1.0 are described from the bundled roles file
    learners = parsed.records[0].plateaus[0].roles[1]
    assert (learners.role_id, learners.name) == ("learners", "Learners")
    assert learners.description != learners.role_id
    # group names from the 1.0 groups when recorded, else the item id
    recorded = {group.id: group.name for group in parsed.records[0].plateaus[0].mappings["applications"]}
    assert recorded["APP001"] == "Student information system"
    rebuilt = parsed.records[1].plateaus[0].mappings["applications"]
    assert rebuilt
    assert all(group.name == group.id for group in rebuilt)

    # an unsupported pair is a usage error naming the pair and the supported ones
    unsupported = invoke("--from", "1.1", "--to", "1.0", "--input", str(FIXTURE), "--output", "x.jsonl")
    assert unsupported.exit_code == 2
    assert unsupported.stdout == ""
    assert "1.1 to 1.0" in unsupported.stderr
    assert "supported: 1.0 -> 1.1" in unsupported.stderr
    assert not (isolated / "x.jsonl").exists()


def test_rebuilt_groups_match_feature_mappings(isolated: Path) -> None:
    output = isolated / "out.jsonl"
    assert run_migrate(FIXTURE, output).exit_code == 0
    record = read_evolutions(output).records[1]  # its 1.0 plateaus have no grouped mappings
    for plateau in record.plateaus:
        expected: dict[str, dict[str, list[str]]] = {}
        for feature in plateau.features:
            for field, items in feature.mappings.items():
                for item in items:
                    expected.setdefault(field, {}).setdefault(item.item, []).append(feature.feature_id)
        for field, groups in plateau.mappings.items():
            assert {group.id: [ref.feature_id for ref in group.mappings] for group in groups} == {
                item: sorted(ids) for item, ids in expected.get(field, {}).items()
            }


def test_single_run_keeps_its_run_id_and_single_model_string(isolated: Path) -> None:
    lines = fixture_lines()[:1]
    lines[0]["meta"]["models"] = "offline"
    source = write_jsonl(isolated / "old.jsonl", lines)
    output = isolated / "new.jsonl"

    result = run_migrate(source, output)

    assert result.exit_code == 0, result.stderr
    parsed = read_evolutions(output)
    assert parsed.header.run_id == RUN_A
    assert parsed.header.seed == 42
    assert parsed.header.synthetic is True
    assert parsed.header.models == {"descriptions": "offline", "features": "offline", "mapping": "offline"}
    assert parsed.records[0].provenance.descriptions == "offline"


def test_aliases_and_default_target_version(isolated: Path) -> None:
    output = isolated / "aliased.jsonl"
    result = invoke("--from", "1.0", "--input-file", str(FIXTURE), "--output-file", str(output))
    assert result.exit_code == 0, result.stderr
    assert len(read_evolutions(output).records) == 3


def test_migration_is_reproducible(isolated: Path) -> None:
    first, second = isolated / "a.jsonl", isolated / "b.jsonl"
    assert run_migrate(FIXTURE, first).exit_code == 0
    assert run_migrate(FIXTURE, second).exit_code == 0
    assert first.read_bytes() == second.read_bytes()
    assert all(line.startswith(b"{") for line in first.read_bytes().splitlines())


def test_in_place_migration(isolated: Path) -> None:
    path = isolated / "evolutions.jsonl"
    path.write_bytes(FIXTURE.read_bytes())
    assert run_migrate(path, path).exit_code == 0
    assert len(read_evolutions(path).records) == 3
    assert [item.name for item in isolated.iterdir()] == ["evolutions.jsonl"]  # no temp file left


def test_missing_input_exits_3(isolated: Path) -> None:
    result = run_migrate(isolated / "missing.jsonl", isolated / "out.jsonl")
    assert result.exit_code == 3
    assert result.stdout == ""
    assert "missing.jsonl does not exist" in result.stderr
    assert not (isolated / "out.jsonl").exists()


def test_bad_line_names_file_line_and_field_and_keeps_old_output(isolated: Path) -> None:
    lines: list[Any] = fixture_lines()
    del lines[2]["plateaus"][1]["service_description"]
    source = write_jsonl(isolated / "old.jsonl", lines)
    output = isolated / "new.jsonl"
    output.write_text("previous\n", encoding="utf-8")

    result = run_migrate(source, output)

    assert result.exit_code == 3
    assert f"{source}:3: plateaus.1.service_description: Field required" in result.stderr
    assert output.read_text(encoding="utf-8") == "previous\n"
    assert sorted(item.name for item in isolated.iterdir()) == ["new.jsonl", "old.jsonl"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", ":2: invalid JSON"),
        ("[1, 2]", ":2: expected a JSON object"),
        ('{"record_type": "header", "schema_version": "1.1"}', ":2: this line is schema 1.1 already"),
    ],
)
def test_unreadable_lines_are_input_errors(isolated: Path, line: str, message: str) -> None:
    source = write_jsonl(isolated / "old.jsonl", [fixture_lines()[0], line])
    result = run_migrate(source, isolated / "new.jsonl")
    assert result.exit_code == 3
    assert message in result.stderr
    assert not (isolated / "new.jsonl").exists()


def test_meta_type_error_names_the_field(isolated: Path) -> None:
    lines = fixture_lines()
    lines[1]["meta"]["seed"] = "42"
    source = write_jsonl(isolated / "old.jsonl", lines)
    result = run_migrate(source, isolated / "new.jsonl")
    assert result.exit_code == 3
    assert ":2: meta.seed:" in result.stderr


def test_empty_meta_models_are_accepted(isolated: Path) -> None:
    lines = fixture_lines()
    for line in lines:
        line["meta"]["models"] = {}
    source = write_jsonl(isolated / "old.jsonl", lines)
    output = isolated / "new.jsonl"

    result = run_migrate(source, output)

    assert result.exit_code == 0, result.stderr
    parsed = read_evolutions(output)
    assert parsed.header.models == {}
    assert parsed.header.migrated_from is not None
    for entry in parsed.header.migrated_from:
        assert entry["meta"]["models"] == {}  # every meta value is kept, the empty one too
    for record, line in zip(parsed.records, lines, strict=True):
        assert record.provenance.descriptions == UNKNOWN_MODEL
        assert {item.features for item in record.provenance.plateaus} == {UNKNOWN_MODEL}
        assert all(set(item.mapping.values()) == {UNKNOWN_MODEL} for item in record.provenance.plateaus)
        assert [plateau.description for plateau in record.plateaus] == [
            plateau["service_description"] for plateau in line["plateaus"]
        ]
    report = migrate_file(source, isolated / "api.jsonl", from_version="1.0", to_version="1.1")
    assert len(report.notes.models_unrecorded) == 3 * 3  # three records, three stages each
    assert any("no model recorded in meta.models" in line for line in report.notes.summary())


def test_partial_meta_models_keep_what_is_recorded(isolated: Path) -> None:
    lines = fixture_lines()[:1]
    lines[0]["meta"]["models"] = {"descriptions": "openai:gpt-5"}
    source = write_jsonl(isolated / "old.jsonl", lines)
    output = isolated / "new.jsonl"
    assert run_migrate(source, output).exit_code == 0
    parsed = read_evolutions(output)
    assert parsed.header.models == {"descriptions": "openai:gpt-5"}
    record = parsed.records[0]
    assert record.provenance.descriptions == "openai:gpt-5"
    assert {item.features for item in record.provenance.plateaus} == {UNKNOWN_MODEL}


def test_feature_ids_that_break_todays_rule_are_kept_and_reported(isolated: Path) -> None:
    lines = fixture_lines()
    feature = lines[1]["plateaus"][1]["features"][0]
    feature["feature_id"] = "LEGACY-7"
    expected = feature_id(feature["name"], feature["customer_type"], lines[1]["plateaus"][1]["plateau_name"])
    source = write_jsonl(isolated / "old.jsonl", lines)
    output = isolated / "new.jsonl"

    report = migrate_file(source, output, from_version="1.0", to_version="1.1")

    assert report.notes.nonconforming_ids == [
        {
            "service_id": lines[1]["service"]["service_id"],
            "plateau": lines[1]["plateaus"][1]["plateau_name"],
            "feature_id": "LEGACY-7",
            "expected": expected,
        }
    ]
    assert "1 feature id(s) do not follow today's id rule and were kept as they are: LEGACY-7" in (
        report.notes.summary()
    )
    ids = [item.feature_id for item in read_evolutions(output).records[1].plateaus[1].features]
    assert "LEGACY-7" in ids
    assert run_migrate(source, isolated / "cli.jsonl").exit_code == 0


def test_optional_1_0_fields_may_be_missing(isolated: Path) -> None:
    lines = fixture_lines()
    record = lines[0]
    for key in ("schema_version", "seed", "web_search", "context_window", "diagnostics", "created"):
        del record["meta"][key]
    record["meta"]["diagnostics"] = True
    plateau = record["plateaus"][0]
    del plateau["mappings"]
    del plateau["features"][0]["mappings"]
    contribution = plateau["features"][1]["mappings"]["applications"][0]
    contribution["rationale"] = "Holds the applicant record."  # written by 1.0 runs in diagnostics mode
    del record["plateaus"][1]["features"]
    lines[2]["plateaus"] = []
    source = write_jsonl(isolated / "old.jsonl", lines)
    output = isolated / "new.jsonl"

    result = run_migrate(source, output)

    assert result.exit_code == 0, result.stderr
    parsed = read_evolutions(output)
    assert parsed.header.migrated_from is not None
    assert parsed.header.migrated_from[0]["meta"] == record["meta"]
    assert parsed.records[0].plateaus[1].features == []
    first = next(
        f
        for f in parsed.records[0].plateaus[0].features
        if f.feature_id == plateau["features"][0]["feature_id"]
    )
    assert all(items == [] for items in first.mappings.values())
    assert parsed.records[2].plateaus == []
    report = migrate_file(source, isolated / "api.jsonl", from_version="1.0", to_version="1.1")
    assert report.notes.rationales_dropped == 1


def test_empty_input_is_an_input_error(isolated: Path) -> None:
    source = isolated / "old.jsonl"
    source.write_text("\n", encoding="utf-8")
    result = run_migrate(source, isolated / "new.jsonl")
    assert result.exit_code == 3
    assert "no schema 1.0 records" in result.stderr


def test_differing_metas_of_one_run_are_all_kept(isolated: Path) -> None:
    lines = fixture_lines()
    lines[2]["meta"]["created"] = "2025-08-01T09:41:00.000Z"
    lines[2]["meta"]["notes"] = "resumed after an outage"  # unknown 1.0 keys are kept too
    source = write_jsonl(isolated / "old.jsonl", lines)
    output = isolated / "new.jsonl"

    assert run_migrate(source, output).exit_code == 0

    header = read_evolutions(output).header
    assert header.migrated_from is not None
    entry = header.migrated_from[0]
    assert entry["run_id"] == RUN_A
    assert entry["service_ids"] == ["SVC-ADM-001", "SVC-TTB-001"]
    assert entry["meta"] == lines[0]["meta"]
    assert entry["variants"] == [{"meta": lines[2]["meta"], "service_ids": ["SVC-TTB-001"]}]


def test_duplicate_services_are_kept_and_reported(isolated: Path) -> None:
    lines = fixture_lines()
    source = write_jsonl(isolated / "old.jsonl", [*lines, lines[0]])
    output = isolated / "new.jsonl"
    result = run_migrate(source, output)
    assert result.exit_code == 0
    assert "1 service id(s) appear more than once" in result.stderr
    assert len(read_evolutions(output).records) == 4


def test_registry_and_api(isolated: Path) -> None:
    assert ("1.0", "1.1") in MIGRATIONS
    assert supported_migrations() == [("1.0", "1.1")]
    with pytest.raises(UsageError, match=r"no migration from schema 1\.0 to 2\.0; supported: 1\.0 -> 1\.1"):
        migrate_file(FIXTURE, isolated / "x.jsonl", from_version="1.0", to_version="2.0")
    with pytest.raises(InputError, match="does not exist"):
        migrate_file(isolated / "none.jsonl", isolated / "x.jsonl", from_version="1.0", to_version="1.1")

    # without reference roles, a role is described by what the record says about it
    report = migrate_file(
        FIXTURE,
        isolated / "x.jsonl",
        from_version="1.0",
        to_version="1.1",
        options=MigrationOptions(tool_version="9.9.9", roles=[Role(role_id="x", name="X", description="X")]),
    )
    assert (report.records, report.run_ids) == (3, [RUN_A, RUN_B])
    parsed = read_evolutions(isolated / "x.jsonl")
    assert parsed.header.tool_version == "9.9.9"
    staff = [role for role in parsed.records[0].plateaus[0].roles if role.role_id == "professional_staff"]
    assert staff[0].name == "Professional staff"  # from the service's jobs to be done


def test_recorded_roles_and_feature_roles_are_used(isolated: Path) -> None:
    lines = fixture_lines()[:1]
    plateau = lines[0]["plateaus"][0]
    plateau["roles"] = [{"role_id": "learners", "name": "Students", "description": "Everyone who studies."}]
    plateau["features"][0]["role"] = {"role_id": "ignored", "name": "Kept", "description": "As recorded."}
    source = write_jsonl(isolated / "old.jsonl", lines)
    output = isolated / "new.jsonl"

    assert run_migrate(source, output).exit_code == 0

    migrated = read_evolutions(output).records[0].plateaus[0]
    learners = next(role for role in migrated.roles if role.role_id == "learners")
    assert (learners.name, learners.description) == ("Students", "Everyone who studies.")
    first = next(f for f in migrated.features if f.feature_id == plateau["features"][0]["feature_id"])
    assert first.role.name == "Kept"


def test_unwritable_output_is_a_usage_error(isolated: Path) -> None:
    blocker = isolated / "file"
    blocker.write_text("", encoding="utf-8")
    result = run_migrate(FIXTURE, blocker / "out.jsonl")
    assert result.exit_code == 2
    assert "cannot write output file" in result.stderr


def test_help_names_the_flags() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for flag in ("--from", "--to", "--input", "--output"):
        assert flag in result.stdout


def test_migrated_roles_and_groups_are_those_of_a_run(isolated: Path, cli: Callable[..., Any]) -> None:
    # A run's records written back as 1.0 without roles or groups (features in reverse order) migrate to
    # the run's order and grouping: the engine and the migration both build them with domain/grouping.py.
    write_jsonl(isolated / "services.jsonl", [service("A"), service("B", "Timetabling")])
    assert cli("run", "--model", "offline").exit_code == 0
    header, *records = read_jsonl(isolated / "evolutions.jsonl")
    meta = {"run_id": header["run_id"], "models": header["models"], "mapping_types": header["mapping_sets"]}
    legacy = [
        {
            "meta": meta,
            "service": record["service"],
            "plateaus": [
                {
                    "plateau": plateau["plateau"],
                    "plateau_name": plateau["plateau_name"],
                    "service_description": plateau["description"],
                    "features": plateau["features"][::-1],
                }
                for plateau in record["plateaus"]
            ],
        }
        for record in records
    ]
    write_jsonl(isolated / "legacy.jsonl", legacy)
    assert run_migrate(isolated / "legacy.jsonl", isolated / "migrated.jsonl").exit_code == 0

    ran = read_evolutions(isolated / "evolutions.jsonl").records
    migrated = read_evolutions(isolated / "migrated.jsonl").records
    for before, after in zip(ran, migrated, strict=True):
        # 1.0 without roles knows only the roles some feature of the record has
        known = {feature.customer_type for plateau in before.plateaus for feature in plateau.features}
        for old, new in zip(before.plateaus, after.plateaus, strict=True):
            assert new.features == old.features
            assert new.roles == [role for role in old.roles if role.role_id in known]
            assert any(groups for groups in new.mappings.values())
            # ... and without groups no item names: compare ids and references
            assert grouped_refs(new) == grouped_refs(old)


def grouped_refs(plateau: PlateauResult) -> dict[str, list[tuple[str, list[FeatureRef]]]]:
    return {field: [(g.id, g.mappings) for g in groups] for field, groups in plateau.mappings.items()}
