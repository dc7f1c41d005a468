"""Provider prompt caching: static-first prompts, cache settings, cached-token pricing and reporting.

The hit rate is measured against the fake OpenAI server's prefix-cache simulation (OpenAI's rules:
128-token blocks, prompts of 1024 tokens or more, the longest prefix seen before).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import pytest
from logfire.testing import CaptureLogfire
from pydantic_ai import Agent
from pydantic_ai.direct import model_request
from pydantic_ai.messages import (
    CachePoint,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    UserPromptPart,
)
from pydantic_ai.models import ModelRequestParameters, override_allow_model_requests
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.usage import RequestUsage

from service_ambitions.cli._summary import render_summary, summary_data
from service_ambitions.content.loader import load_content
from service_ambitions.content.render import (
    SERVICE_SLOT,
    StagePrompt,
    descriptions_values,
    features_values,
    mapping_values,
    render_template,
    service_json,
    user_content,
)
from service_ambitions.context import build_context
from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.engine.engine import ProcessingEngine
from service_ambitions.llm.cost import CostLedger, price_response
from service_ambitions.llm.offline import OfflineModel
from service_ambitions.llm.prompt_cache import (
    cache_settings,
    cache_write_tokens,
    cached_tokens,
    split_static,
    user_prompt_content,
)
from service_ambitions.settings import DEFAULT_MAPPING_SETS, load_settings
from service_ambitions.testing._limits import PrefixCache
from service_ambitions.testing.openai_server import Behaviour, FakeOpenAIServer
from tests.conftest import SAMPLES, read_jsonl

KEY = "sk-test-prompt-cache-0123456789"
MODEL = "openai-chat:gpt-5-mini"
STAGES = ("descriptions", "features", "mapping")


def content() -> Any:
    return load_content(
        data_dir=None,
        prompt_dir=None,
        roles_file=None,
        context_id="university",
        inspiration="general",
        mapping_sets=list(DEFAULT_MAPPING_SETS),
    )


def samples() -> list[ServiceInput]:
    return [ServiceInput.model_validate(line) for line in read_jsonl(SAMPLES)]


def stage_of(prompt: str) -> str:
    return "mapping" if "\nCATALOGUE: " in prompt else "features" if "\nROLES: " in prompt else "descriptions"


class RecordingServer(FakeOpenAIServer):
    """The fake server, noting every prompt with the tokens its prefix cache served."""

    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__(behaviour)
        self.served: list[tuple[str, int]] = []
        self._served_lock = threading.Lock()

    def cached_tokens(self, prompt: str) -> int:
        cached = super().cached_tokens(prompt)
        with self._served_lock:
            self.served.append((prompt, cached))
        return cached

    def by_stage(self) -> dict[str, tuple[int, int]]:
        """``{stage: (prompt tokens, cached tokens)}`` as the server reported them."""
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for prompt, cached in self.served:
            totals[stage_of(prompt)][0] += len(prompt) // 4
            totals[stage_of(prompt)][1] += cached
        return {stage: (prompt, cached) for stage, (prompt, cached) in totals.items()}


async def close_clients(model: Any) -> None:
    """Close the SDK clients under a model's wrappers (an in-process run leaves them open)."""
    for each in getattr(model, "models", None) or [model]:
        inner = each
        while hasattr(inner, "wrapped"):
            inner = inner.wrapped
        client = getattr(inner, "client", None)
        if client is not None:
            await client.close()


# prompt layout --------------------------------------------------------------------------------
def test_stage_prompts_start_with_what_every_service_shares() -> None:
    loaded = content()
    first, second = samples()[:2]
    plateau, other = loaded.plateaus[0], loaded.plateaus[3]
    catalogue = loaded.catalogues[0]
    feature = {"id": "F1", "name": "Apply online", "description": "Apply without paper."}
    stages: dict[str, tuple[dict[str, str], dict[str, str]]] = {
        "descriptions": (descriptions_values(loaded.plateaus), descriptions_values(loaded.plateaus)),
        "features": (
            features_values(plateau, "first", loaded.roles),
            features_values(other, "second", loaded.roles),
        ),
        "mapping": (
            mapping_values(plateau, catalogue, [feature]),
            mapping_values(other, catalogue, [{**feature, "id": "F2"}]),
        ),
    }
    fixed_parts: dict[str, str] = {}
    for stage, (values, other_values) in stages.items():
        template = loaded.templates[stage]
        fixed, rest = split_static(user_content(first, render_template(template, values)))
        assert fixed, stage
        # byte-identical across services and plateaus: the provider's prefix cache serves all of it
        assert split_static(user_content(second, render_template(template, other_values)))[0] == fixed, stage
        assert f"{rest}\n".startswith(f"SERVICE_CONTEXT: {service_json(first)}\n"), stage
        assert first.service_id not in fixed, stage
        assert "PLATEAU: " not in fixed, stage
        fixed_parts[stage] = fixed
    assert "\nPLATEAUS: [" in fixed_parts["descriptions"]
    assert "\nROLES: [" in fixed_parts["features"]
    assert "\nCATALOGUE: [" in fixed_parts["mapping"]
    assert "\nFACETS: [" in fixed_parts["mapping"]
    assert "FEATURES: [" not in fixed_parts["mapping"]


def test_the_service_slot_is_filled_literally() -> None:
    template = "A {x}\nSERVICE_CONTEXT: {service_context}\nB {y}"
    rendered = render_template(template, {"x": SERVICE_SLOT, "y": "{service_context}!"})
    assert isinstance(rendered, StagePrompt)
    service = samples()[0]
    text = user_content(service, rendered)
    assert text.startswith("A {service_context}\nSERVICE_CONTEXT: {")
    assert text.endswith("\nB {service_context}!")
    assert text.count(service.service_id) == 1


def test_a_template_without_the_slot_gets_the_service_first() -> None:
    service = samples()[0]
    rendered = render_template("PLATEAUS: {plateaus}", {"plateaus": "[]"})
    assert not isinstance(rendered, StagePrompt)
    text = user_content(service, rendered)
    assert text.startswith("SERVICE_CONTEXT: {")
    assert text.endswith("}\n\nPLATEAUS: []")
    assert split_static(text) == ("", text)


def _offline_answer(system: str, prompt: str, output_type: type) -> Any:
    agent = Agent(output_type=output_type, system_prompt=system)
    return asyncio.run(agent.run(prompt, model=OfflineModel())).output


def test_the_offline_model_answers_the_same_whatever_the_layout() -> None:
    loaded = content()
    service = samples()[1]
    plateau = loaded.plateaus[2]
    features = [{"id": "F1", "name": "Track my application", "description": "See where an application is."}]
    for stage, values, output_type in [
        ("descriptions", descriptions_values(loaded.plateaus), loaded.descriptions_model),
        ("features", features_values(plateau, "At this plateau...", loaded.roles), loaded.features_model),
        (
            "mapping",
            mapping_values(plateau, loaded.catalogues[1], features),
            loaded.mapping_models[loaded.catalogues[1].field],
        ),
    ]:
        template = loaded.templates[stage]
        old_layout = template.replace(f"\n\nSERVICE_CONTEXT: {SERVICE_SLOT}", "\n").replace(
            f"SERVICE_CONTEXT: {SERVICE_SLOT}\n", ""
        )
        assert SERVICE_SLOT not in old_layout
        new = user_content(service, render_template(template, values))
        old = user_content(service, render_template(old_layout, values))
        assert new != old
        assert old.startswith("SERVICE_CONTEXT: ")
        assert _offline_answer(loaded.system_prompt, new, output_type) == _offline_answer(
            loaded.system_prompt, old, output_type
        ), stage


# settings and parts ---------------------------------------------------------------------------
@pytest.mark.parametrize("provider", ["openai", "openai-chat", "openai-responses"])
def test_openai_requests_carry_a_prompt_cache_key_per_stage(provider: str) -> None:
    assert cache_settings(provider, "mapping") == {"openai_prompt_cache_key": "service-ambitions:mapping"}
    assert cache_settings(provider, "features") != cache_settings(provider, "mapping")


def test_cache_settings_of_other_providers() -> None:
    assert cache_settings("anthropic", "features") == {"anthropic_cache_instructions": True}
    for provider in ("offline", "google", "mistral", "test"):
        assert cache_settings(provider, "features") == {}


def test_only_anthropic_gets_a_cache_point_after_the_fixed_part() -> None:
    text = "## Task\nROLES: []\n\nSERVICE_CONTEXT: {}\nPLATEAU: 1 Foundational"
    assert user_prompt_content(text, ["openai"]) == text
    assert user_prompt_content(text, ["offline"]) == text
    parts = user_prompt_content(text, ["openai", "anthropic"])  # a fallback chain
    assert parts == ["## Task\nROLES: []\n\n", CachePoint(), "SERVICE_CONTEXT: {}\nPLATEAU: 1 Foundational"]
    old = "SERVICE_CONTEXT: {}\n\nROLES: []"
    assert user_prompt_content(old, ["anthropic"]) == old  # nothing fixed in front of the service


def anthropic_message(usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "final_result", "input": {"value": 1}}],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": usage,
    }


async def test_anthropic_requests_mark_the_system_prompt_and_the_fixed_part() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(request.content))
        usage = {"input_tokens": 100, "cache_read_input_tokens": 5000, "cache_creation_input_tokens": 0}
        return httpx2.Response(200, json=anthropic_message({**usage, "output_tokens": 20}))

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    model = AnthropicModel(
        "claude-sonnet-4-6", provider=AnthropicProvider(api_key="sk-ant-test", http_client=client)
    )
    text = "## Task\nCATALOGUE: []\n\nSERVICE_CONTEXT: {}\nFEATURES: []"
    messages = [
        ModelRequest(
            parts=[SystemPromptPart("system"), UserPromptPart(user_prompt_content(text, ["anthropic"]))]
        )
    ]
    tool = ToolDefinition(name="final_result", parameters_json_schema={"type": "object"}, kind="output")
    parameters = ModelRequestParameters(output_mode="tool", output_tools=[tool], allow_text_output=False)
    with override_allow_model_requests(True):
        settings: Any = {**cache_settings("anthropic", "mapping"), "max_tokens": 1024}  # small: not streamed
        response = await model_request(
            model, messages, model_settings=settings, model_request_parameters=parameters
        )
    body = bodies[0]
    assert body["system"][-1]["cache_control"]["type"] == "ephemeral"
    blocks = body["messages"][0]["content"]
    assert [block["text"] for block in blocks] == [
        "## Task\nCATALOGUE: []\n\n",
        "SERVICE_CONTEXT: {}\nFEATURES: []",
    ]
    assert "cache_control" in blocks[0]
    assert "cache_control" not in blocks[1]
    assert "cache_control" not in body  # no automatic breakpoint at the end: the tail is never read back
    assert cached_tokens(response.usage) == 5000
    assert response.usage.input_tokens == 5100  # pydantic-ai counts cache reads in the input tokens


# pricing --------------------------------------------------------------------------------------
def test_cached_input_tokens_cost_less() -> None:
    def price(model: str, provider: str, cache_read_tokens: int = 0, cache_write_tokens: int = 0) -> Decimal:
        usage = RequestUsage(
            input_tokens=10_000,
            output_tokens=100,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
        )
        response = ModelResponse(
            parts=[TextPart("{}")],
            usage=usage,
            model_name=model,
            provider_name=provider,
        )
        amount = price_response(response, f"{provider}:{model}").usd
        assert amount is not None
        return amount

    full = price("gpt-5-mini", "openai")
    cached = price("gpt-5-mini", "openai", cache_read_tokens=9_000)
    assert cached < full
    # gpt-5-mini: $0.25 per million input tokens, $0.025 cached, $2 output
    assert cached == Decimal("0.000675")
    claude = price("claude-sonnet-4-6", "anthropic")
    assert price("claude-sonnet-4-6", "anthropic", cache_read_tokens=9_000) < claude
    assert price("claude-sonnet-4-6", "anthropic", cache_write_tokens=9_000) > claude  # writes cost more


def test_the_ledger_counts_cached_tokens_per_stage() -> None:
    ledger = CostLedger()
    usage = RequestUsage(input_tokens=2000, output_tokens=10, cache_read_tokens=1536, cache_write_tokens=64)
    response = ModelResponse(
        parts=[TextPart("{}")], usage=usage, model_name="gpt-5-mini", provider_name="openai"
    )
    price = price_response(response, "openai:gpt-5-mini")
    for stage in ("features", "mapping", "mapping"):
        ledger.record(
            stage, "openai:gpt-5-mini", "S1", price, 2000, 10,
            cache_read_tokens=cached_tokens(usage), cache_write_tokens=cache_write_tokens(usage),
        )  # fmt: skip
    assert ledger.by_stage["mapping"].cache_read_tokens == 3072
    assert ledger.by_stage["features"].cache_write_tokens == 64
    assert ledger.total.cache_read_tokens == 4608
    assert cached_tokens(None) == 0


# the simulation ------------------------------------------------------------------------------
def test_prefix_cache_simulation_follows_openai() -> None:
    cache = PrefixCache()
    block = 512  # 128 tokens of 4 characters
    shared = "s" * (block * 10)  # 1280 tokens
    assert cache.cached_tokens(shared + "a" * block * 2) == 0  # cold
    assert cache.cached_tokens(shared + "b" * block * 2) == 1280  # the longest prefix seen, in whole blocks
    assert cache.cached_tokens(shared + "a" * block * 2 + "tail") == 1536
    assert cache.cached_tokens(shared[: block * 3] + "c" * block * 8) == 0  # 384 common tokens: under 1024
    small = PrefixCache()
    short = "x" * (block * 7)  # 896 tokens: never cached
    assert small.cached_tokens(short) == 0
    assert small.cached_tokens(short + "y" * block * 2) == 0  # the short prompt left nothing behind


# a run over the samples --------------------------------------------------------------------------
def test_a_sample_run_reads_over_90_percent_of_its_prompt_tokens_from_the_cache(isolated: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "service_ambitions",
        "run",
        "--model",
        MODEL,
        "--input-file",
        str(SAMPLES),
    ]
    command += ["--output-file", "out.jsonl", "-q"]
    server = RecordingServer(Behaviour(prefix_cache=True))
    with server:
        env = {**os.environ, "SA_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY, "SA_CACHE_MODE": "off"}
        result = subprocess.run(
            command, env=env, cwd=isolated, capture_output=True, text=True, timeout=240, check=False
        )
    assert result.returncode == 0, result.stderr
    assert server.errors == []
    assert len(read_jsonl(isolated / "out.jsonl")) == 1 + len(samples())
    stages = server.by_stage()
    assert set(stages) == set(STAGES)
    rates = {stage: cached / prompt for stage, (prompt, cached) in stages.items()}
    overall = sum(cached for _, cached in stages.values()) / sum(prompt for prompt, _ in stages.values())
    report = f"overall {overall:.3f}, " + ", ".join(
        f"{stage} {rate:.3f}" for stage, rate in sorted(rates.items())
    )
    assert overall >= 0.90, report
    assert rates["mapping"] >= 0.90, report
    assert rates["features"] >= 0.90, report
    assert rates["descriptions"] >= 0.80, report  # 12 calls, the first one cold


async def test_cached_tokens_are_reported_per_stage(isolated: Path, capfire: CaptureLogfire) -> None:
    lines = SAMPLES.read_text(encoding="utf-8").splitlines()[:4]
    (isolated / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    server = RecordingServer(Behaviour(prefix_cache=True))
    with server:
        settings = load_settings(
            None, {"model": MODEL, "base_url": server.base_url, "openai_api_key": KEY, "cache_mode": "off"}
        )
        context = build_context(settings)
        try:
            with override_allow_model_requests(True):
                report = await ProcessingEngine(context).run(isolated / "in.jsonl", isolated / "out.jsonl")
        finally:
            context.close()
            for stage in STAGES:  # the HTTP connections, before the server goes away
                await close_clients(context.gateway.stage_model(stage))
        bodies = [request.body for request in server.chat_requests()]
    assert report.services_ok == 4
    data = summary_data(context.settings, report)
    served = server.by_stage()
    cache = data["prompt_cache"]
    for stage in STAGES:
        prompt, cached = served[stage]
        assert cache["by_stage"][stage]["prompt_tokens"] == prompt
        assert cache["by_stage"][stage]["cached_tokens"] == cached > 0
        assert cache["by_stage"][stage]["hit_rate"] == round(cached / prompt, 4)
    assert cache["cached_tokens"] == sum(cached for _, cached in served.values())
    assert "  prompt cache: " in render_summary(data)
    keys = {(stage_of(body["messages"][-1]["content"]), body.get("prompt_cache_key")) for body in bodies}
    assert keys == {(stage, f"service-ambitions:{stage}") for stage in STAGES}
    metrics = {metric["name"]: metric for metric in capfire.get_collected_metrics()}  # type: ignore[no-untyped-call]
    points = metrics["sa_llm_cached_tokens_total"]["data"]["data_points"]
    by_stage = {point["attributes"]["stage"]: point["value"] for point in points}
    assert by_stage == {stage: served[stage][1] for stage in STAGES}
    assert {point["attributes"]["model_name"] for point in points} == set(data["cost"]["by_model"])
