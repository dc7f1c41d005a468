"""A scripted model for tests: the offline model's answer, edited per stage by a test function."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, ToolCallPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from service_ambitions.llm.offline import OfflineModel

_SERVICE = re.compile(r"^SERVICE_CONTEXT: (.*)$", re.MULTILINE)
Edit = Callable[[str, str, dict[str, Any]], dict[str, Any]]
"""(stage, service_id, answer) -> answer"""


def _stage_and_service(messages: list[ModelMessage]) -> tuple[str, str]:
    text = ""
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    text = part.content
    service_id = str(json.loads(_SERVICE.findall(text)[-1])["service_id"])
    stage = "mapping" if "\nCATALOGUE: " in text else "features" if "\nROLES: " in text else "descriptions"
    return stage, service_id


def scripted(edit: Edit, calls: list[tuple[str, str]] | None = None) -> FunctionModel:
    """A FunctionModel answering like the offline model, with ``edit`` applied to each answer."""
    offline = OfflineModel()

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        response = await offline.function(messages, info)  # type: ignore[misc]
        stage, service_id = _stage_and_service(messages)
        if calls is not None:
            calls.append((stage, service_id))
        part = response.parts[0]
        assert isinstance(part, ToolCallPart)
        args = part.args if isinstance(part.args, dict) else json.loads(part.args or "{}")
        edited = edit(stage, service_id, json.loads(json.dumps(args)))
        return ModelResponse(parts=[ToolCallPart(part.tool_name, edited)], model_name="scripted")

    return FunctionModel(answer, model_name="scripted")
