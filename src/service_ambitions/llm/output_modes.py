"""Output modes: how a structured answer is asked for and read back, through pydantic-ai's output types.

``output_mode`` (per model: ``models_output_mode``) is one of:

* ``auto``: whatever the model's pydantic-ai profile picks (``default_structured_output_mode``): the
  output tool for OpenAI, Anthropic, Google, Mistral, Groq..., prompted JSON with ``json_object`` for
  OpenAI-compatible servers (their profile is set in ``llm/providers.py``).
* ``tool``, ``native``, ``prompted``: pydantic-ai's ``ToolOutput``, ``NativeOutput``, ``PromptedOutput``.

Every request carries the parameters an ``Agent`` builds for a plain output type (output mode ``auto``,
the output tool and the output object, from pydantic-ai's ``OutputSchema``); each model resolves them
itself, so fallbacks of another provider get their own mode. :class:`ConfiguredModel`, at the bottom of
each model's stack, pins a configured mode, names the configured model on its responses and counts the
requests sent. Answers are read with the processors of the mode's ``OutputSchema``, as the agent reads
them (its default ``end_strategy``): the first valid output tool call wins, text is parsed as JSON (code
fences stripped) where the mode takes text, and a rejected answer is answered with pydantic-ai's retry
parts. A cut-off (``finish_reason == "length"``) or oversized answer is never sent back: the next request
says it was dropped and asks for a shorter one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic_ai.models.wrapper import WrapperModel

from service_ambitions.settings import OutputMode

if TYPE_CHECKING:
    from pydantic_ai._output import OutputSchema
    from pydantic_ai.messages import ModelMessage, ModelRequestPart, ModelResponse
    from pydantic_ai.models import Model, ModelRequestParameters
    from pydantic_ai.settings import ModelSettings
    from pydantic_core import ErrorDetails

__all__ = [
    "OUTPUT_MODES",
    "AnswerRejected",
    "ConfiguredModel",
    "OutputMode",
    "answer_payload",
    "echo_limit",
    "read_answer",
    "reask",
    "request_parameters",
]

OUTPUT_MODES: tuple[OutputMode, ...] = get_args(OutputMode)
ECHO_LIMIT_CHARS = 64_000
"""Longest rejected answer sent back to the model when no output-token cap is known (~16k tokens)."""


@cache
def _schema(output_type: type[BaseModel], mode: OutputMode) -> OutputSchema[Any]:
    """pydantic-ai's output schema of ``output_type`` in ``mode`` (built once per type and mode)."""
    from pydantic_ai import NativeOutput, PromptedOutput, ToolOutput  # noqa: PLC0415
    from pydantic_ai._output import OutputSchema  # noqa: PLC0415

    spec: Any = {
        "auto": output_type,
        "tool": ToolOutput(output_type),
        "native": NativeOutput(output_type),
        "prompted": PromptedOutput(output_type),
    }[mode]
    return OutputSchema.build(spec)


@cache
def request_parameters(output_type: type[BaseModel]) -> ModelRequestParameters:
    """The request parameters of an ``Agent(output_type=output_type)`` (as ``_agent_graph`` builds them).

    Output mode ``auto`` with the output tool and the output object: each model (or
    :class:`ConfiguredModel`) resolves the mode, and ``prepare_request`` drops what that mode does not use.
    """
    from pydantic_ai.models import ModelRequestParameters  # noqa: PLC0415

    schema = _schema(output_type, "auto")
    toolset = schema.toolset
    # The definitions as the agent's tool manager lists them (stamped with the output toolset's id);
    # the toolset has no public accessor for them outside a run.
    tools = (
        [dataclasses.replace(tool, toolset_id=toolset.id) for tool in toolset._tool_defs] if toolset else []
    )
    return ModelRequestParameters(
        output_mode=schema.mode,
        output_tools=tools,
        output_object=schema.object_def,
        allow_text_output=schema.allows_text,
    )


class AnswerRejected(Exception):
    """A response that holds no valid answer.

    Attributes:
        parts: pydantic-ai's retry parts answering it (one per tool call, or one ``RetryFeedbackPart``).
        error: The validation error, when the answer was there but did not validate.
    """

    def __init__(
        self, reason: str, parts: list[ModelRequestPart], error: ValidationError | None = None
    ) -> None:
        super().__init__(reason)
        self.parts = parts
        self.error = error


def _details(error: ValidationError) -> list[ErrorDetails]:
    """Validation errors for the model: no URLs, no validator context, no copy of the rejected input."""
    return error.errors(include_url=False, include_context=False, include_input=False)


def _validate(processor: Any, data: Any, context: Mapping[str, Any] | None) -> Any:
    value = processor.validate(data, validation_context=context)
    key = processor.outer_typed_dict_key
    return value[key] if key else value


def read_answer(
    response: ModelResponse, output_type: type[BaseModel], mode: OutputMode, context: Mapping[str, Any] | None
) -> Any:
    """The validated answer in a response, read as pydantic-ai's agent reads it in ``mode``.

    Raises:
        AnswerRejected: No valid answer; carries the retry parts the agent would answer with.
    """
    from pydantic_ai._output import build_retried_tool_return  # noqa: PLC0415
    from pydantic_ai.exceptions import ModelRetry  # noqa: PLC0415
    from pydantic_ai.messages import (  # noqa: PLC0415
        _NO_OUTPUT_RETURN_TEXT,
        _NO_OUTPUT_USE_OUTPUT_TOOL,
        RetryFeedbackPart,
        RetryInfo,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
        _dump_error_details,
        _no_output_feedback_text,
    )

    schema = _schema(output_type, mode)
    processors = schema.toolset.processors if schema.toolset else {}
    text = "".join(part.content for part in response.parts if isinstance(part, TextPart))
    calls = [part for part in response.parts if isinstance(part, ToolCallPart)]
    if calls:  # tool calls come first, and the first valid output tool call wins
        parts: list[ModelRequestPart] = []
        error: ValidationError | None = None
        for call in calls:
            processor = processors.get(call.tool_name)
            if processor is None:
                available = ", ".join(repr(name) for name in processors) or None
                message = f"Unknown tool name: {call.tool_name!r}. " + (
                    f"Available tools: {available}" if available else "No tools available."
                )
                parts.append(
                    build_retried_tool_return(
                        ModelRetry(message),
                        tool_name=call.tool_name,
                        tool_call_id=call.tool_call_id,
                        cause="unknown_tool",
                    )
                )
                continue
            try:
                return _validate(processor, call.args if call.args is not None else {}, context)
            except ValidationError as exc:
                error = error or exc
                parts.append(
                    ToolReturnPart(  # as ``build_retried_tool_return`` builds it, minus the input
                        tool_name=call.tool_name,
                        content=_dump_error_details(_details(exc)),
                        tool_call_id=call.tool_call_id,
                        outcome="retried",
                        retry=RetryInfo(cause="validation_error"),
                    )
                )
        if error is not None:
            raise AnswerRejected("the output tool call did not match the schema", parts, error) from error
        names = ", ".join(repr(call.tool_name) for call in calls)
        if processors:
            reason = f"the model called {names}, not the output tool {next(iter(processors))!r}"
        else:
            reason = f"the model called {names} although output_mode {mode} asks for JSON text"
        raise AnswerRejected(reason, parts)
    if schema.text_processor is not None and text:
        try:
            return _validate(schema.text_processor, text, context)
        except ValidationError as exc:
            feedback = RetryFeedbackPart(content=_details(exc), retry=RetryInfo(cause="validation_error"))
            raise AnswerRejected("the JSON answer did not match the schema", [feedback], exc) from exc
    alternatives = [_NO_OUTPUT_RETURN_TEXT] if schema.text_processor is not None else []
    if schema.toolset is not None:
        alternatives.append(_NO_OUTPUT_USE_OUTPUT_TOOL)
    feedback = RetryFeedbackPart(
        content=_no_output_feedback_text(alternatives), retry=RetryInfo(cause="no_output")
    )
    if text and schema.text_processor is None:
        reason = (
            f"the model answered with text, not a call to the output tool {next(iter(processors))!r} "
            "(output_mode tool); a server that ignores tool_choice 'required' (llama.cpp) needs "
            "output_mode prompted or auto"
        )
    else:
        reason = "the response holds no answer"
    raise AnswerRejected(reason, [feedback])


def answer_payload(response: ModelResponse) -> Any:
    """What the model answered: the first tool call's arguments, else its text (``None`` when empty)."""
    from pydantic_ai.messages import TextPart, ToolCallPart  # noqa: PLC0415

    call = next((part for part in response.parts if isinstance(part, ToolCallPart)), None)
    if call is not None:
        return call.args
    text = "".join(part.content for part in response.parts if isinstance(part, TextPart))
    return text or None


def _answer_chars(response: ModelResponse) -> int:
    """The size of everything the model answered (every text part and tool call)."""
    from pydantic_ai.messages import TextPart, ToolCallPart  # noqa: PLC0415

    size = 0
    for part in response.parts:
        if isinstance(part, TextPart):
            size += len(part.content)
        elif isinstance(part, ToolCallPart):
            size += len(part.args if isinstance(part.args, str) else json.dumps(part.args, default=str))
    return size


def echo_limit(cap: int | None) -> int:
    """Characters above which a rejected answer is not sent back: twice what ``cap`` tokens can hold."""
    return 8 * cap if cap else ECHO_LIMIT_CHARS


def reask(
    messages: list[ModelMessage],
    response: ModelResponse,
    rejected: AnswerRejected,
    *,
    attempt: int,
    max_retries: int,
    cap: int | None,
) -> tuple[list[ModelMessage], str | None]:
    """The history of the re-ask, and why the answer was left out of it (``None``: it was not).

    A rejected answer goes back with pydantic-ai's retry parts, as the agent sends it. One that was cut
    off at the output-token limit, or is longer than :func:`echo_limit`, is left out: the last request
    gets feedback saying so instead, so a runaway answer never fills the context of the next request.
    """
    from pydantic_ai.messages import ModelRequest, RetryFeedbackPart, RetryInfo  # noqa: PLC0415

    limit = f"the output-token limit ({cap} tokens)" if cap else "the output-token limit"
    size = _answer_chars(response)
    if response.finish_reason == "length":
        dropped = f"cut off at {limit}"
    elif size > echo_limit(cap):
        dropped = f"{size} characters long, far longer than expected"
    else:
        parts = [_stamped(part, attempt, max_retries) for part in rejected.parts]
        return [*messages, response, ModelRequest(parts=parts)], None
    feedback = RetryFeedbackPart(
        content=(
            f"Your previous answer was {dropped}, so it was discarded and is not shown here. Answer again "
            f"with the complete JSON answer, well within {limit}: keep every text short and never repeat "
            "yourself."
        ),
        retry=RetryInfo(cause="model_retry", attempt=attempt, max_retries=max_retries),
    )
    last = messages[-1]
    assert isinstance(last, ModelRequest)  # a history always ends with a request
    return [*messages[:-1], dataclasses.replace(last, parts=[*last.parts, feedback])], dropped


def _stamped(part: Any, attempt: int, max_retries: int) -> Any:
    """The part with the output-retry count the agent stamps on retry feedback."""
    retry = getattr(part, "retry", None)
    if retry is None:
        return part
    return dataclasses.replace(
        part, retry=dataclasses.replace(retry, attempt=attempt, max_retries=max_retries)
    )


class ConfiguredModel(WrapperModel):
    """The bottom of a configured model's stack: its output mode, its id on its answers, a request count.

    Args:
        wrapped: The provider's model (or a test double).
        model_id: The configured id (``openai-chat:qwen``), stamped as ``ModelResponse.model_id``.
        mode: The configured output mode; ``auto`` leaves the choice to the model's profile.
        on_request: Called once for each request handed to the model (failed ones included).
    """

    def __init__(
        self, wrapped: Model, model_id: str, mode: OutputMode, on_request: Callable[[], None] | None = None
    ) -> None:
        super().__init__(wrapped)
        self.configured_id = model_id
        self.mode: OutputMode = mode
        self.on_request = on_request

    def _parameters(self, parameters: ModelRequestParameters) -> ModelRequestParameters:
        # ``with_default_output_mode`` only resolves ``auto``; an explicit mode in the request stays.
        return parameters if self.mode == "auto" else parameters.with_default_output_mode(self.mode)

    def prepare_request(
        self, model_settings: ModelSettings | None, model_request_parameters: ModelRequestParameters
    ) -> tuple[ModelSettings | None, ModelRequestParameters]:
        """Prepare with the configured output mode."""
        return self.wrapped.prepare_request(model_settings, self._parameters(model_request_parameters))

    def prepare_messages(
        self, messages: list[ModelMessage], model_request_parameters: ModelRequestParameters | None = None
    ) -> list[ModelMessage]:
        """Prepare the history with the configured output mode."""
        parameters = model_request_parameters and self._parameters(model_request_parameters)
        return self.wrapped.prepare_messages(messages, parameters)

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """Count, send in the configured output mode, and name the configured model on the answer."""
        if self.on_request is not None:
            self.on_request()
        response = await self.wrapped.request(
            messages, model_settings, self._parameters(model_request_parameters)
        )
        response.model_id = self.configured_id
        return response
