"""Semantic checks of the answers are re-asks: the model is told what is wrong before a stage fails.

Driven through the engine's public API with a model answering like the offline model, edited per
call and attempt; the edit sees the re-ask message the gateway sent back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryFeedbackPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from service_ambitions.context import build_context
from service_ambitions.domain.responses import DescriptionsResponse, descriptions_response_model
from service_ambitions.engine.engine import ProcessingEngine, RunReport
from service_ambitions.llm.offline import OfflineModel
from service_ambitions.settings import load_settings
from service_ambitions.store.quarantine import QuarantineEntry, QuarantineStore, quarantine_dir_for
from service_ambitions.store.reader import read_evolutions
from tests.conftest import service, write_jsonl

MODEL = "test:scripted"
PLATEAUS = "1 Foundational, 2 Enhanced, 3 Autonomous, 4 Outcome-Driven, 5 Transformative"
_LABEL = re.compile(r"^(PLATEAU|FIELD): (\S+)", re.MULTILINE)
_SERVICE = re.compile(r"^SERVICE_CONTEXT: (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Call:
    """One request the model received."""

    stage: str
    service_id: str
    plateau: int | None
    field: str | None
    feedback: list[str]
    """The re-ask messages of this call so far (empty on its first attempt)."""

    @property
    def first(self) -> bool:
        return not self.feedback


Edit = Callable[[Call, dict[str, Any]], dict[str, Any]]


def _call(messages: list[ModelMessage]) -> Call:
    text = ""
    feedback: list[str] = []
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    text = part.content
                elif isinstance(part, ToolReturnPart | RetryFeedbackPart):
                    feedback.append(json.dumps(part.content, default=str))
    labels = dict(_LABEL.findall(text))
    stage = "mapping" if "\nCATALOGUE: " in text else "features" if "\nROLES: " in text else "descriptions"
    plateau = int(labels["PLATEAU"]) if "PLATEAU" in labels else None
    service_id = str(json.loads(_SERVICE.findall(text)[-1])["service_id"])
    return Call(stage, service_id, plateau, labels.get("FIELD"), feedback)


def recording(edit: Edit, calls: list[Call]) -> FunctionModel:
    """The offline model's answers, edited per call; every request is recorded in ``calls``."""
    offline = OfflineModel()

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        response = await offline.function(messages, info)  # type: ignore[misc]
        call = _call(messages)
        calls.append(call)
        part = response.parts[0]
        assert isinstance(part, ToolCallPart)
        args = part.args if isinstance(part.args, dict) else json.loads(part.args or "{}")
        return ModelResponse(parts=[ToolCallPart(part.tool_name, edit(call, args))], model_name="scripted")

    return FunctionModel(answer, model_name="scripted")


@dataclass
class Run:
    report: RunReport
    records: list[dict[str, Any]]
    entries: list[QuarantineEntry]
    reasks: int
    calls: list[Call]

    def feedback(self, stage: str) -> list[str]:
        """The re-ask messages the model saw at a stage (each once)."""
        return [call.feedback[-1] for call in self.calls if call.stage == stage and call.feedback]


async def run(tmp: Path, edit: Edit, *services: str, **overrides: Any) -> Run:
    write_jsonl(tmp / "in.jsonl", [service(service_id) for service_id in services or ("A",)])
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
    calls: list[Call] = []
    context = build_context(settings, models={MODEL: recording(edit, calls)})
    try:
        report = await ProcessingEngine(context).run(settings.input_file, settings.output_file)
    finally:
        context.close()
    read_evolutions(output)  # every output validates with the public reader
    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    entries = list(QuarantineStore(quarantine_dir_for(output)).entries())
    return Run(report, lines[1:], entries, context.gateway.stats.output_reasks, calls)


def plateau_names(record: dict[str, Any]) -> list[str]:
    return [plateau["plateau_name"] for plateau in record["plateaus"]]


# descriptions ---------------------------------------------------------------------------------


def drop_plateau_4_once(call: Call, answer: dict[str, Any]) -> dict[str, Any]:
    if call.stage == "descriptions" and call.first:
        answer["descriptions"] = [item for item in answer["descriptions"] if item["plateau"] != 4]
    return answer


async def test_missing_plateau_is_reasked_then_written(isolated: Path) -> None:
    result = await run(isolated, drop_plateau_4_once)
    assert result.report.services_ok == 1
    assert result.entries == []
    assert result.reasks == 1
    [message] = result.feedback("descriptions")
    assert (
        f"missing descriptions for plateau 4 'Outcome-Driven'; answer one item per plateau: {PLATEAUS}"
        in (message)
    )
    assert plateau_names(result.records[0])[3] == "Outcome-Driven"


def loose_names(call: Call, answer: dict[str, Any]) -> dict[str, Any]:
    if call.stage == "descriptions":
        items = answer["descriptions"]
        items[0]["plateau_name"] = "FOUNDATIONAL"
        items[1]["plateau_name"] = " enhanced. "
        items[3]["plateau_name"] = "outcome driven"
        items[4]["plateau_name"] = "Reimagined"  # no such name: matched by its plateau number
        items[4]["description"] = "Prepared plateau-5 description for A: Joined up with partners."
        answer["descriptions"] = list(reversed(items))
    return answer


async def test_names_fixed_by_normalisation_or_number_need_no_reask(isolated: Path) -> None:
    result = await run(isolated, loose_names)
    assert result.reasks == 0
    assert result.entries == []
    record = result.records[0]
    assert plateau_names(record) == PLATEAUS.replace(", ", " ").split(" ")[1::2]
    assert record["plateaus"][4]["description"] == "Joined up with partners."


def never_plateau_4(call: Call, answer: dict[str, Any]) -> dict[str, Any]:
    if call.stage == "descriptions" and call.service_id == "A":
        answer["descriptions"][3]["plateau_name"] = "Outcome Drivn"
        answer["descriptions"][3]["plateau"] = 9
        answer["descriptions"][2]["description"] = "   "
    return answer


async def test_plateau_never_fixed_fails_the_service_with_the_reason(isolated: Path) -> None:
    result = await run(isolated, never_plateau_4, "A", "B")
    assert result.report.failed_ids == ("A",)
    assert [record["service"]["service_id"] for record in result.records] == ["B"]
    assert result.reasks == 2  # output_retries
    failure = next(entry for entry in result.entries if entry.service_id == "A")
    assert failure.stage == "descriptions"
    assert failure.kind == "schema_mismatch"
    expected = (
        "missing descriptions for plateaus 3 'Autonomous' (empty description), 4 'Outcome-Driven'; "
        f"answer one item per plateau: {PLATEAUS} (unrecognised plateau_name 'Outcome Drivn')"
    )
    assert expected in failure.error
    assert all(expected in message for message in result.feedback("descriptions"))


# features -------------------------------------------------------------------------------------


def learner_key_once(call: Call, answer: dict[str, Any]) -> dict[str, Any]:
    if call.stage == "features" and call.plateau == 1 and call.first:
        answer["features"]["Learner"] = answer["features"].pop("learners")
    return answer


async def test_unknown_role_key_is_reasked_then_written(isolated: Path) -> None:
    result = await run(isolated, learner_key_once)
    assert result.report.services_ok == 1
    assert result.entries == []
    assert result.reasks == 1
    [message] = result.feedback("features")
    assert (
        "unknown role key 'Learner': key the features by the role ids learners, academics, "
        "professional_staff (missing: learners)"
    ) in message
    roles = {feature["customer_type"] for feature in result.records[0]["plateaus"][0]["features"]}
    assert roles == {"learners", "academics", "professional_staff"}


def loose_role_keys(call: Call, answer: dict[str, Any]) -> dict[str, Any]:
    if call.stage == "features":
        features = answer["features"]
        features["Learners"] = features.pop("learners")
        features["Professional Staff"] = features.pop("professional_staff")
        features["visitors"] = [{"name": "not a role"}]  # every role present: ignored
    return answer


async def test_role_keys_fixed_by_normalisation_need_no_reask(isolated: Path) -> None:
    (isolated / "plain").mkdir()
    plain = await run(isolated / "plain", lambda call, answer: answer)
    result = await run(isolated, loose_role_keys)
    assert result.reasks == 0
    assert result.entries == []
    assert result.records == plain.records


# mapping --------------------------------------------------------------------------------------


def omit_first_feature(always: bool) -> Edit:
    def edit(call: Call, answer: dict[str, Any]) -> dict[str, Any]:
        if (
            call.stage == "mapping"
            and call.plateau == 1
            and call.field == "applications"
            and (always or call.first)
        ):
            answer["features"] = answer["features"][1:]
        return answer

    return edit


def first_feature(record: dict[str, Any]) -> dict[str, Any]:
    return min(record["plateaus"][0]["features"], key=lambda feature: feature["feature_id"])


async def test_feature_left_out_of_a_mapping_is_reasked_then_written(isolated: Path) -> None:
    result = await run(isolated, omit_first_feature(always=False))
    assert result.report.services_ok == 1
    assert result.entries == []
    assert result.reasks == 1
    feature = first_feature(result.records[0])
    [message] = result.feedback("mapping")
    total = len(result.records[0]["plateaus"][0]["features"])
    assert f"missing entries for 1 of {total} feature(s): {feature['feature_id']}; " in message
    assert "with an empty applications list when no item applies" in message


async def test_feature_never_mapped_gets_an_empty_list_after_the_reasks(isolated: Path) -> None:
    result = await run(isolated, omit_first_feature(always=True))
    assert result.report.services_ok == 1
    assert result.reasks == 2  # output_retries; the last answer is accepted as it is
    feature = first_feature(result.records[0])
    assert feature["mappings"]["applications"] == []
    [missing] = result.entries
    assert missing.kind == "schema_mismatch"
    assert missing.stage == "mapping"
    assert feature["feature_id"] in missing.error
    assert "missing from the applications answer at plateau 1" in missing.error


async def test_lenient_mapping_answer_is_served_from_the_cache_without_reasks(isolated: Path) -> None:
    cache = {"cache_mode": "read", "cache_dir": isolated / "cache"}
    (isolated / "first").mkdir()
    (isolated / "second").mkdir()
    first = await run(isolated / "first", omit_first_feature(always=True), **cache)
    second = await run(isolated / "second", omit_first_feature(always=True), **cache)
    assert first.reasks == 2
    assert second.calls == []
    assert second.reasks == 0
    assert second.records == first.records
    assert [entry.error for entry in second.entries] == [entry.error for entry in first.entries]


async def test_without_reasks_a_left_out_feature_is_lenient_at_once(isolated: Path) -> None:
    result = await run(isolated, omit_first_feature(always=True), output_retries=0)
    assert result.report.services_ok == 1
    assert result.reasks == 0
    assert first_feature(result.records[0])["mappings"]["applications"] == []


# schema -------------------------------------------------------------------------------------------


def test_descriptions_schema_and_so_cache_keys_are_unchanged() -> None:
    checked = descriptions_response_model(["Foundational", "Enhanced"])
    assert checked.model_json_schema() == DescriptionsResponse.model_json_schema()
