"""The error contract: a bug costs one service, exit codes come from the tree, validate checks outputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models.function import AgentInfo, FunctionModel

from service_ambitions.context import build_context
from service_ambitions.engine.engine import ProcessingEngine
from service_ambitions.errors import QuarantineKind
from service_ambitions.llm.offline import OfflineModel
from service_ambitions.settings import load_settings
from service_ambitions.store.quarantine import QuarantineStore, quarantine_dir_for
from service_ambitions.store.reader import read_evolutions
from tests.conftest import service, write_jsonl

Cli = Callable[..., Any]
MODEL = "test:buggy"


def buggy(broken_service: str) -> FunctionModel:
    """The offline model, except that one service's calls hit a bug (not a model error)."""
    offline = OfflineModel()

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if f'"service_id":"{broken_service}"' in str(messages):
            raise ZeroDivisionError("a bug in answer handling")
        return await offline.function(messages, info)  # type: ignore[misc,no-any-return]

    return FunctionModel(answer, model_name="buggy")


async def run_engine(tmp: Path, *, debug: bool = False) -> Any:
    write_jsonl(tmp / "in.jsonl", [service("A"), service("B"), service("C")])
    settings = load_settings(
        None,
        {
            "model": MODEL,
            "cache_mode": "off",
            "input_file": tmp / "in.jsonl",
            "output_file": tmp / "out.jsonl",
        },
    )
    context = build_context(settings, models={MODEL: buggy("B")})
    try:
        return await ProcessingEngine(context, debug=debug).run(settings.input_file, settings.output_file)
    finally:
        context.close()


async def test_an_unexpected_exception_quarantines_one_service(isolated: Path) -> None:
    report = await run_engine(isolated)
    assert report.services_ok == 2
    assert report.failed_ids == ("B",)
    records = read_evolutions(isolated / "out.jsonl").records
    assert [record.service.service_id for record in records] == ["A", "C"]
    (entry,) = QuarantineStore(quarantine_dir_for(isolated / "out.jsonl")).entries()
    assert entry.service_id == "B"
    assert entry.kind == QuarantineKind.INTERNAL
    assert "ZeroDivisionError: a bug in answer handling" in entry.error
    assert any("ZeroDivisionError" in line for line in entry.payload["traceback"])


async def test_debug_lets_the_bug_raise(isolated: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        await run_engine(isolated, debug=True)


def test_a_service_without_record_exits_1_even_when_lenient(cli: Cli, isolated: Path) -> None:
    write_jsonl(isolated / "services.jsonl", [service("A"), service("B")])
    result = cli("run", "--model", "offline", "--inject-failures", "p=1,kinds=500")
    assert result.exit_code == 1, result.stderr
    assert "2 service(s) have no record" in result.stderr
    assert "quarantine ls" in result.stderr
    assert read_evolutions(isolated / "evolutions.jsonl").records == []


def test_quarantine_only_problems_keep_exit_0(cli: Cli, isolated: Path) -> None:
    write_jsonl(isolated / "services.jsonl", [service("A"), "{not json"])
    result = cli("run", "--model", "offline")
    assert result.exit_code == 0, result.stderr
    assert cli("run", "--model", "offline", "--fail-on-quarantine").exit_code == 1


class TestValidateOutput:
    def run_and_edit(self, cli: Cli, isolated: Path, edit: Callable[[list[str]], list[str]]) -> Path:
        write_jsonl(isolated / "services.jsonl", [service("A"), service("B"), service("C")])
        assert cli("run", "--model", "offline").exit_code == 0
        output = isolated / "evolutions.jsonl"
        lines = output.read_text(encoding="utf-8").splitlines()
        output.write_text("".join(line + "\n" for line in edit(lines)), encoding="utf-8")
        return output

    def validate(self, cli: Cli, *extra: str) -> Any:
        return cli("validate", "--output-file", "evolutions.jsonl", *extra)

    def test_clean(self, cli: Cli, isolated: Path) -> None:
        self.run_and_edit(cli, isolated, lambda lines: lines)
        result = self.validate(cli)
        assert result.exit_code == 0, result.stderr
        assert "evolutions.jsonl matches it" in result.stderr

    def test_missing_unless_allowed(self, cli: Cli, isolated: Path) -> None:
        self.run_and_edit(cli, isolated, lambda lines: lines[:-1])
        result = self.validate(cli)
        assert result.exit_code == 3
        assert "1 input service(s) have no record: C" in result.stderr
        assert self.validate(cli, "--allow-missing").exit_code == 0

    def test_duplicate_foreign_and_order(self, cli: Cli, isolated: Path) -> None:
        def edit(lines: list[str]) -> list[str]:
            foreign = json.loads(lines[1])
            foreign["service"]["service_id"] = "Z"
            return [lines[0], lines[2], lines[1], lines[1], json.dumps(foreign), lines[3]]

        self.run_and_edit(cli, isolated, edit)
        result = self.validate(cli)
        assert result.exit_code == 3
        assert "evolutions.jsonl:3: service 'A' is out of input order" in result.stderr
        assert "evolutions.jsonl:4: service 'A' appears more than once" in result.stderr
        assert "evolutions.jsonl:5: service 'Z' is not in the input" in result.stderr

    def test_empty_file(self, cli: Cli, isolated: Path) -> None:
        self.run_and_edit(cli, isolated, lambda lines: [])
        result = self.validate(cli)
        assert result.exit_code == 3
        assert "empty file, no header line" in result.stderr


def test_a_schema_1_0_file_is_named_as_such(cli: Cli, isolated: Path) -> None:
    old = {"service": service("A"), "plateaus": [], "meta": {"schema_version": "1.0", "run_id": "r"}}
    (isolated / "old.jsonl").write_text(json.dumps(old) + "\n", encoding="utf-8")
    for command in (["export", "--format", "csv", "--output", "tables"], ["report", "--output-dir", "site"]):
        result = cli(*command, "--input-file", "old.jsonl")
        assert result.exit_code == 3, result.stderr
        assert "schema 1.0 file" in result.stderr
        assert "service-ambitions migrate --from 1.0 --to 1.1" in result.stderr
