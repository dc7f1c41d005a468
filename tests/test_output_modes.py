"""Output modes (auto, tool, native, prompted): parity with pydantic-ai's Agent, cut-off and oversized
answers never sent back, the output cap of OpenAI-compatible servers, provenance and exact request counts
against the fake server in llama.cpp mode, and whole runs there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent, NativeOutput, PromptedOutput, ToolOutput
from pydantic_ai.exceptions import ModelHTTPError, ModelRateLimitError, OutputTokenLimitExceeded
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import override_allow_model_requests
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from service_ambitions.errors import ConfigError, ExitCode, ModelCallError, StageError
from service_ambitions.llm.gateway import Gateway
from service_ambitions.llm.output_modes import OUTPUT_MODES, echo_limit
from service_ambitions.llm.providers import LOCAL_OUTPUT_CAP, compatible_server_profile
from service_ambitions.settings import load_settings
from service_ambitions.store.cache import ResponseCache
from service_ambitions.testing._handler import RUNAWAY
from service_ambitions.testing.openai_server import Behaviour, FakeOpenAIServer
from tests.conftest import SAMPLES, read_jsonl


class Answer(BaseModel):
    """The answer."""

    value: int


class Anything(BaseModel):
    """Any JSON object is an answer (the fake server's offline model answers ``{}`` to a bare prompt)."""

    note: str = ""


Seen = list[tuple[list[ModelMessage], AgentInfo]]


def script(responses: Sequence[ModelResponse], name: str = "m", **profile: Any) -> tuple[FunctionModel, Seen]:
    """A model answering ``responses`` in turn (the last one again when they run out)."""
    seen: Seen = []

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append((messages, info))
        return responses[min(len(seen), len(responses)) - 1]

    merged: Any = {"supports_json_schema_output": True, "supports_json_object_output": True, **profile}
    return FunctionModel(answer, model_name=name, profile=merged), seen


def gateway(tmp: Path, model: FunctionModel, mode: str = "auto", **overrides: Any) -> Gateway:
    settings = load_settings(
        None,
        {"model": "test:m", "cache_mode": "off", "cache_dir": tmp / "c", "output_mode": mode, **overrides},
    )
    cache = ResponseCache(settings.cache_dir, mode="off")
    return Gateway(settings, system_prompt="SYSTEM", cache=cache, models={"test:m": model})


def spec(mode: str) -> Any:
    return {
        "auto": Answer,
        "tool": ToolOutput(Answer),
        "native": NativeOutput(Answer),
        "prompted": PromptedOutput(Answer),
    }[mode]


def call(text: str, call_id: str = "c1", name: str = "final_result") -> ToolCallPart:
    return ToolCallPart(name, text, tool_call_id=call_id)


def reply(*parts: Any, finish: Any = None) -> ModelResponse:
    return ModelResponse(parts=list(parts), finish_reason=finish, model_name="m")


async def through_gateway(
    tmp: Path,
    responses: Sequence[ModelResponse],
    mode: str,
    retries: int,
    settings: dict[str, Any] | None = None,
    **profile: Any,
) -> tuple[Any, Seen]:
    model, seen = script(responses, **profile)
    gw = gateway(tmp, model, mode, output_retries=retries, **(settings or {}))
    try:
        result = await gw.call(stage="features", service_id="S", user_prompt="hi", output_type=Answer)
    except StageError:
        return "failed", seen
    return result.output.value, seen


async def through_agent(
    responses: Sequence[ModelResponse], mode: str, retries: int, **profile: Any
) -> tuple[Any, Seen]:
    model, seen = script(responses, **profile)
    agent = Agent(model, output_type=spec(mode), retries=retries)
    try:
        result = await agent.run("hi")
    except OutputTokenLimitExceeded:
        return "cut off", seen
    except Exception:  # the agent's own "exceeded maximum retries" errors vary by path
        return "failed", seen
    return result.output.value, seen


# parity with Agent ------------------------------------------------------------------------------
PARITY: dict[str, tuple[list[ModelResponse], tuple[str, ...]]] = {
    "a valid output tool call": ([reply(call('{"value": 1}'))], ("auto", "tool")),
    "two output tool calls, the first invalid": (
        [reply(call('{"value": "x"}', "a"), call('{"value": 2}', "b"))],
        ("auto", "tool"),
    ),
    "two valid output tool calls: the first wins": (
        [reply(call('{"value": 3}', "a"), call('{"value": 4}', "b"))],
        ("auto", "tool"),
    ),
    "an unknown tool beside the output tool": (
        [reply(call('{"value": 5}', "a", "json"), call('{"value": 6}', "b"))],
        ("auto", "tool"),
    ),
    "prose and fenced JSON": (
        [reply(TextPart('Here it is:\n```json\n{"value": 8}\n```')), reply(call('{"value": 9}'))],
        OUTPUT_MODES,  # text modes read it; tool mode re-asks and takes the tool call
    ),
    "a tool call where JSON text is asked for": (
        [reply(call('{"value": 1}'))],
        ("native", "prompted"),  # both fail: the call is to an unknown tool
    ),
    "a truncated tool call": (
        [reply(call('{"val'), finish="length"), reply(call('{"value": 10}'))],
        ("auto", "tool"),  # re-asked by both
    ),
    "a truncated answer that still validates": (
        [reply(call('{"value": 12}'), finish="length")],
        ("auto", "tool"),
    ),
    "truncated text where a tool call is asked for": (
        [reply(TextPart('{"val'), finish="length")],
        ("tool",),
    ),
    "an empty answer, then a tool call": ([reply(), reply(call('{"value": 13}'))], ("auto", "tool")),
    "an empty answer, then text": (
        [reply(), reply(TextPart('{"value": 14}'))],
        ("auto", "native", "prompted"),
    ),
}


@pytest.mark.parametrize(
    ("case", "mode"), [(case, mode) for case, (_, modes) in PARITY.items() for mode in modes]
)
async def test_gateway_and_agent_agree(isolated: Path, case: str, mode: str) -> None:
    responses = PARITY[case][0]
    ours, our_requests = await through_gateway(isolated, responses, mode, retries=1)
    theirs, their_requests = await through_agent(responses, mode, retries=1)
    assert (ours, len(our_requests)) == (theirs, len(their_requests))
    assert ours != "failed" or case in {
        "a tool call where JSON text is asked for",
        "truncated text where a tool call is asked for",
    }


@pytest.mark.parametrize("mode", ["auto", "native", "prompted"])
async def test_cut_off_json_text_is_rejected_by_both_and_only_the_gateway_re_asks(
    isolated: Path, mode: str
) -> None:
    responses = [reply(TextPart('{"val'), finish="length"), reply(TextPart('{"value": 11}'))]
    theirs, their_requests = await through_agent(responses, mode, retries=1)
    assert (theirs, len(their_requests)) == ("cut off", 1)  # OutputTokenLimitExceeded, no re-ask
    ours, our_requests = await through_gateway(isolated, responses, mode, retries=1)
    assert (ours, len(our_requests)) == (11, 2)  # re-asked, without the cut-off answer (see below)
    # With no re-ask left, both fail on the first answer.
    assert (await through_gateway(isolated, responses, mode, retries=0))[0] == "failed"
    assert (await through_agent(responses, mode, retries=0))[0] == "cut off"


@pytest.mark.parametrize("mode", OUTPUT_MODES)
async def test_request_parameters_are_the_agents(isolated: Path, mode: str) -> None:
    responses = [reply(call('{"value": 1}'), TextPart('{"value": 1}'))]
    _, ours = await through_gateway(isolated, responses, mode, retries=0)
    _, theirs = await through_agent(responses, mode, retries=0)
    mine, agents = ours[0][1].model_request_parameters, theirs[0][1].model_request_parameters
    assert mine.output_mode == agents.output_mode == ("tool" if mode == "auto" else mode)
    assert mine.output_tools == agents.output_tools
    assert mine.output_object == agents.output_object
    assert mine.allow_text_output == agents.allow_text_output
    assert mine.prompted_output_instructions == agents.prompted_output_instructions


async def test_auto_follows_the_profile(isolated: Path) -> None:
    """A profile preferring prompted output (as OpenAI-compatible servers get) makes auto prompted."""
    responses = [reply(TextPart('```json\n{"value": 3}\n```'))]
    ours, seen = await through_gateway(
        isolated, responses, "auto", 0, default_structured_output_mode="prompted"
    )
    theirs, _ = await through_agent(responses, "auto", 0, default_structured_output_mode="prompted")
    assert ours == theirs == 3
    parameters = seen[0][1].model_request_parameters
    assert parameters.output_mode == "prompted"
    assert parameters.output_tools == []
    assert parameters.prompted_output_instructions


async def test_auto_on_a_prompted_profile_still_takes_the_output_tool(isolated: Path) -> None:
    responses = [reply(call('{"value": 5}'))]
    ours, _ = await through_gateway(isolated, responses, "auto", 0, default_structured_output_mode="prompted")
    theirs, _ = await through_agent(responses, "auto", 0, default_structured_output_mode="prompted")
    assert ours == theirs == 5


async def test_a_fallback_answers_in_its_own_mode_and_is_named(isolated: Path) -> None:
    def limited(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise ModelHTTPError.for_category(ModelRateLimitError, status_code=429, model_name="a")

    backup, seen = script([reply(TextPart('{"value": 6}'))], name="b")
    settings = load_settings(
        None,
        {
            "model": "test:a",
            "cache_mode": "off",
            "output_mode": "tool",
            "models_output_mode": {"test:b": "prompted"},
            "model_fallbacks": {"test:a": ["test:b"]},
        },
    )
    cache = ResponseCache(isolated / "c", mode="off")
    models = {"test:a": FunctionModel(limited, model_name="a"), "test:b": backup}
    gw = Gateway(settings, system_prompt="SYSTEM", cache=cache, models=models)
    result = await gw.call(stage="features", service_id="S", user_prompt="hi", output_type=Answer)
    assert (result.output.value, result.model) == (6, "b")
    assert seen[0][1].model_request_parameters.output_mode == "prompted"
    assert gw.stats.fallbacks == 1
    assert gw.stats.model_requests == 2  # the primary's attempt and the fallback's


async def test_a_mode_per_model(isolated: Path) -> None:
    model, seen = script([reply(TextPart('{"value": 4}'))])
    gw = gateway(isolated, model, "tool", models_output_mode={"test:m": "native"})
    result = await gw.call(stage="features", service_id="S", user_prompt="hi", output_type=Answer)
    assert result.output.value == 4
    assert seen[0][1].model_request_parameters.output_mode == "native"


async def test_a_mode_the_model_lacks_is_a_clear_systemic_failure(isolated: Path) -> None:
    model, _ = script([reply(TextPart('{"value": 4}'))], supports_json_schema_output=False)
    gw = gateway(isolated, model, "native")
    with pytest.raises(ModelCallError) as caught:
        await gw.call(stage="features", service_id="S", user_prompt="hi", output_type=Answer)
    assert caught.value.systemic == "configuration"
    assert "Native structured output is not supported" in str(caught.value)
    assert "output_mode native of test:m" in str(caught.value)


# re-asks ----------------------------------------------------------------------------------------
def parts_of(messages: list[ModelMessage]) -> list[Any]:
    return [part for message in messages for part in message.parts]


async def test_a_rejected_answer_goes_back_with_errors_but_without_a_copy_of_itself(isolated: Path) -> None:
    rejected = reply(call('{"value": "not-a-number-1234"}'))
    _, seen = await through_gateway(isolated, [rejected, reply(call('{"value": 1}'))], "tool", retries=1)
    history = seen[1][0]
    assert rejected in history  # the agent's history: the answer, then its retried tool return
    (retried,) = [part for part in parts_of(history) if isinstance(part, ToolReturnPart)]
    assert retried.outcome == "retried"
    assert retried.retry is not None
    assert retried.retry.attempt == 1
    assert "int_parsing" in json.dumps(retried.content)
    assert "not-a-number-1234" not in json.dumps(retried.content)  # include_input=False


@pytest.mark.parametrize("mode", ["auto", "tool", "prompted"])
async def test_a_cut_off_answer_is_never_sent_back(isolated: Path, mode: str) -> None:
    cut = "x" * 500
    answer: Any = TextPart if mode == "prompted" else call
    first = reply(answer('{"value": "' + cut), finish="length")
    value, seen = await through_gateway(isolated, [first, reply(answer('{"value": 1}'))], mode, 1)
    assert value == 1
    history = seen[1][0]
    assert len(history) == 1  # the first request, with the feedback added: no response in it
    assert cut not in json.dumps([str(part) for part in parts_of(history)])
    feedback = parts_of(history)[-1]  # the model sees pydantic-ai's retry feedback as a fenced user part
    assert isinstance(feedback, UserPromptPart)
    assert "<pyai:retry_feedback>" in str(feedback.content)
    assert "cut off at the output-token limit" in str(feedback.content)


async def test_an_oversized_answer_is_never_sent_back(isolated: Path) -> None:
    huge = '{"value": "' + "y" * (echo_limit(100) + 10) + '"}'
    _, seen = await through_gateway(
        isolated, [reply(TextPart(huge)), reply(TextPart('{"value": 2}'))], "prompted", 1, {"max_tokens": 100}
    )
    history = seen[1][0]
    assert all(not isinstance(message, ModelResponse) for message in history)
    feedback = parts_of(history)[-1]
    assert isinstance(feedback, UserPromptPart)
    assert "far longer than expected" in str(feedback.content)
    assert "100 tokens" in str(feedback.content)


async def test_a_cut_off_second_answer_keeps_the_earlier_exchange(isolated: Path) -> None:
    responses = [
        reply(call('{"value": "a"}')),
        reply(call('{"value": "' + "z" * 300), finish="length"),
        reply(call('{"value": 3}')),
    ]
    value, seen = await through_gateway(isolated, responses, "tool", retries=2)
    assert value == 3
    history = seen[2][0]
    assert [type(message).__name__ for message in history] == [
        "ModelRequest",
        "ModelResponse",
        "ModelRequest",
    ]
    last = history[-1]
    assert isinstance(last, ModelRequest)
    assert [type(part).__name__ for part in last.parts] == ["ToolReturnPart", "UserPromptPart"]
    assert "z" * 300 not in str(history)


async def test_the_last_answer_cut_off_fails_in_pydantic_ais_words(isolated: Path) -> None:
    model, _ = script([reply(TextPart('{"val'), finish="length")])
    gw = gateway(isolated, model, "prompted", output_retries=1, max_tokens=300)
    with pytest.raises(StageError) as caught:
        await gw.call(stage="features", service_id="S", user_prompt="hi", output_type=Answer)
    assert "Model token limit (300) exceeded" in str(caught.value)
    assert caught.value.kind == "schema_mismatch"


async def test_text_in_tool_mode_fails_with_the_fix_named(isolated: Path) -> None:
    model, _ = script([reply(TextPart('{"value": 1}'))])
    gw = gateway(isolated, model, "tool", output_retries=1)
    with pytest.raises(StageError) as caught:
        await gw.call(stage="features", service_id="S", user_prompt="hi", output_type=Answer)
    assert "not a call to the output tool 'final_result'" in str(caught.value)
    assert "output_mode prompted or auto" in str(caught.value)


# settings and cache keys -------------------------------------------------------------------------
def test_settings(isolated: Path) -> None:
    default = load_settings(None, {})
    assert default.output_mode == "auto"
    assert default.output_mode_for("openai:gpt-5-mini") == "auto"
    assert "output_mode" not in default.output_affecting()  # digests of default runs stay as they were
    tuned = load_settings(
        None, {"output_mode": "tool", "models_output_mode": {"openai-chat:qwen": "prompted"}}
    )
    assert tuned.output_mode_for("openai-chat:qwen") == "prompted"
    assert tuned.output_mode_for("offline") == "tool"
    assert tuned.output_affecting()["output_mode"] == {"offline": "tool"}
    with pytest.raises(ConfigError, match="output_mode"):
        load_settings(None, {"output_mode": "json"})


def test_cache_keys_change_only_with_a_non_default_mode(isolated: Path) -> None:
    model, _ = script([])
    base = gateway(isolated, model).key("features", Answer, "hi")
    assert (
        gateway(isolated, model, "auto", models_output_mode={"test:m": "auto"}).key("features", Answer, "hi")
        == base
    )
    prompted = gateway(isolated, model, "prompted").key("features", Answer, "hi")
    assert prompted != base
    assert gateway(isolated, model, "tool").key("features", Answer, "hi") not in {base, prompted}
    basis = gateway(isolated, model)._key_basis("features")
    assert "output_mode" not in basis


def test_compatible_servers_get_a_conservative_profile() -> None:
    auto = compatible_server_profile("auto")
    assert auto["openai_chat_supports_max_completion_tokens"] is False
    assert auto["default_structured_output_mode"] == "prompted"
    assert auto["supports_json_schema_output"] is False
    assert auto["supports_forced_tool_choice"] is False
    assert compatible_server_profile("native")["supports_json_schema_output"] is True
    assert compatible_server_profile("tool")["supports_forced_tool_choice"] is True


# against the fake server in llama.cpp mode -------------------------------------------------------
async def close_clients(gw: Gateway) -> None:
    for model in gw._built.values():
        inner: Any = model
        while hasattr(inner, "wrapped"):
            inner = inner.wrapped
        client = getattr(inner, "client", None)
        if client is not None:
            await client.close()


async def llama_call(
    tmp: Path, faults: list[str], mode: str = "auto", *, plain: bool = False, **overrides: Any
) -> tuple[Any, Gateway, Any]:
    """One call to the fake llama.cpp server; ``plain``: over pydantic-ai's own OpenAI profile."""
    with FakeOpenAIServer(Behaviour(llama=True, rate_limit_headers=False, faults=faults)) as server:
        settings = load_settings(
            None,
            {
                "model": "openai-chat:qwen",
                "base_url": server.base_url,
                "cache_mode": "off",
                "output_mode": mode,
                "transport_retries": {"attempts": 3, "max_wait": 0.01},
                **overrides,
            },
        )
        models: dict[str, Any] = {}
        if plain:
            provider = OpenAIProvider(base_url=server.base_url, api_key="x")
            models["openai-chat:qwen"] = OpenAIChatModel("qwen", provider=provider)
        cache = ResponseCache(tmp / "c", mode="off")
        gw = Gateway(settings, system_prompt="SYSTEM", cache=cache, models=models)
        try:
            with override_allow_model_requests(True):
                result: Any = await gw.call(
                    stage="features", service_id="S", user_prompt="hi", output_type=Anything
                )
        except StageError as exc:
            result = exc
        finally:
            await close_clients(gw)
    assert server.errors == []
    return result, gw, server.chat_requests()


def is_reask(body: dict[str, Any]) -> bool:
    """Whether a request body re-asks: an earlier answer, or pydantic-ai's retry feedback, in its history."""
    return any(
        message["role"] in {"assistant", "tool"} or "<pyai:" in str(message.get("content"))
        for message in body["messages"]
    )


async def test_requests_and_reasks_are_what_the_server_received(isolated: Path) -> None:
    result, gw, requests = await llama_call(isolated, ["500", "truncated", "500", "ok"])
    assert result.output == Anything()
    assert [request.fault for request in requests] == ["500", "truncated", "500", "ok"]
    assert gw.stats.model_requests == len(requests) == 4
    assert gw.stats.output_reasks == sum(is_reask(request.body) for request in requests) == 2
    assert gw.transport_retries == 2


async def test_a_runaway_answer_is_capped_and_never_sent_back(isolated: Path) -> None:
    result, gw, requests = await llama_call(isolated, ["runaway"])
    assert result.output == Anything()
    first, second = (request.body for request in requests)
    assert first["max_tokens"] == LOCAL_OUTPUT_CAP  # the field llama.cpp reads
    assert "max_completion_tokens" not in first
    assert first["response_format"] == {"type": "json_object"}  # auto is prompted JSON there
    assert "tool_choice" not in first
    assert "tools" not in first
    assert RUNAWAY not in json.dumps(second)
    assert f"cut off at the output-token limit ({LOCAL_OUTPUT_CAP} tokens)" in json.dumps(second)
    assert gw.stats.output_reasks == 1


async def test_a_runaway_past_a_cap_the_server_ignores_is_not_sent_back_either(isolated: Path) -> None:
    # The incident: pydantic-ai's OpenAI profile sends the cap as max_completion_tokens, which
    # llama.cpp does not read, so the answer runs away (~10,000 tokens) and stops on its own.
    result, _, requests = await llama_call(isolated, ["runaway"], plain=True, max_tokens=1000)
    assert result.output == Anything()
    first, second = (request.body for request in requests)
    assert first["max_completion_tokens"] == 1000
    assert "max_tokens" not in first
    assert RUNAWAY not in json.dumps(second)
    assert "far longer than expected" in json.dumps(second)


async def test_provenance_names_the_configured_model(isolated: Path) -> None:
    result, gw, _ = await llama_call(isolated, [])
    assert result.model == "openai-chat:qwen"
    assert gw.ledger.snapshot()["by_model"].keys() == {"openai-chat:qwen"}
    assert gw.stats.fallbacks == 0


@pytest.mark.parametrize("mode", ["native", "tool"])
async def test_what_llama_cannot_do_fails_clearly(isolated: Path, mode: str) -> None:
    result, gw, requests = await llama_call(isolated, [], mode=mode)
    assert isinstance(result, StageError)
    if mode == "native":
        assert isinstance(result, ModelCallError)
        assert "json_schema is not supported" in str(result)
        assert requests[0].body["response_format"]["type"] == "json_schema"
    else:
        assert requests[0].body["tool_choice"] == "required"
        assert "output_mode prompted or auto" in str(result)
        assert gw.stats.model_requests == len(requests) == 3


def run_on_llama(tmp: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], list[Any], dict[str, Any]]:
    """``service-ambitions run`` (a real process) on two sample services against the fake llama server."""
    command = [sys.executable, "-m", "service_ambitions", "run", "--model", "openai-chat:qwen"]
    command += ["--input-file", str(SAMPLES), "--output-file", str(tmp / "out.jsonl"), "--max-services", "2"]
    command += ["--summary-json", str(tmp / "summary.json"), "-q"]
    with FakeOpenAIServer(Behaviour(llama=True, rate_limit_headers=False)) as server:
        env = {
            **os.environ,
            "SA_BASE_URL": server.base_url,
            "OPENAI_API_KEY": "x",
            "SA_CACHE_MODE": "off",
            "SA_OUTPUT_MODE": mode,
        }
        result = subprocess.run(
            command, env=env, cwd=tmp, capture_output=True, text=True, timeout=240, check=False
        )
    assert server.errors == []
    assert "Traceback" not in result.stderr, result.stderr
    summary = json.loads((tmp / "summary.json").read_text(encoding="utf-8"))
    return result, server.chat_requests(), summary


@pytest.mark.parametrize("mode", ["auto", "prompted"])
def test_a_run_on_a_llama_server_completes(isolated: Path, mode: str) -> None:
    result, requests, summary = run_on_llama(isolated, mode)
    assert result.returncode == ExitCode.OK, result.stderr
    records = read_jsonl(isolated / "out.jsonl")[1:]
    assert len(records) == 2
    assert {records[0]["provenance"]["descriptions"]} == {"openai-chat:qwen"}
    assert summary["model_calls"]["requests"] == len(requests) == 42
    assert summary["model_calls"]["output_reasks"] == 0
    assert all(request.body["response_format"] == {"type": "json_object"} for request in requests)
    assert all(request.body["max_tokens"] == LOCAL_OUTPUT_CAP for request in requests)


def test_a_run_forcing_tool_output_on_a_llama_server_is_quarantined(isolated: Path) -> None:
    result, requests, summary = run_on_llama(isolated, "tool")
    assert result.returncode == ExitCode.FAILURES
    entries = [json.loads(path.read_text()) for path in (isolated / "out.jsonl.quarantine").glob("*.json")]
    assert len(entries) == 2
    assert {entry["kind"] for entry in entries} == {"schema_mismatch"}
    assert all("output_mode prompted or auto" in entry["error"] for entry in entries)
    assert summary["model_calls"]["requests"] == len(requests)
    assert summary["model_calls"]["output_reasks"] == len(requests) - 2  # each service: one call, two re-asks
