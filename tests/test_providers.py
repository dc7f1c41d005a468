"""Model ids resolve through pydantic-ai providers; missing keys are caught before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.models import Model

from service_ambitions.errors import ConfigError, ProviderKeyMissing
from service_ambitions.llm.offline import OfflineModel
from service_ambitions.llm.providers import check_provider_keys, parse_model_id, resolve_model
from service_ambitions.settings import load_settings
from tests.conftest import service, write_jsonl

PROVIDERS = [
    ("openai:gpt-5-mini", "OPENAI_API_KEY", "gpt-5-mini"),
    ("anthropic:claude-sonnet-4-5", "ANTHROPIC_API_KEY", "claude-sonnet-4-5"),
    ("google:gemini-2.5-flash", "GOOGLE_API_KEY", "gemini-2.5-flash"),
    ("google-gla:gemini-2.5-flash", "GOOGLE_API_KEY", "gemini-2.5-flash"),
    ("groq:llama-3.3-70b-versatile", "GROQ_API_KEY", "llama-3.3-70b-versatile"),
    ("mistral:mistral-large-latest", "MISTRAL_API_KEY", "mistral-large-latest"),
    ("openrouter:openai/gpt-5-mini", "OPENROUTER_API_KEY", "openai/gpt-5-mini"),
]


@pytest.mark.parametrize(("model_id", "variable", "name"), PROVIDERS)
def test_provider_ids_resolve_with_their_key(
    monkeypatch: pytest.MonkeyPatch, model_id: str, variable: str, name: str
) -> None:
    settings = load_settings(None, {"model": model_id})
    with pytest.raises(ProviderKeyMissing, match=variable):
        check_provider_keys(settings)
    monkeypatch.setenv(variable, "test-key-not-real")
    check_provider_keys(settings)
    model = resolve_model(model_id, settings)
    assert isinstance(model, Model)
    assert model.model_name == name


def test_sa_openai_api_key_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SA_OPENAI_API_KEY", "sk-sa-not-real")
    settings = load_settings(None, {"model": "openai:gpt-5-mini"})
    check_provider_keys(settings)
    assert isinstance(resolve_model("openai:gpt-5-mini", settings), Model)


def test_openai_compatible_server_needs_no_key() -> None:
    settings = load_settings(None, {"model": "openai:llama3.2", "base_url": "http://127.0.0.1:11434/v1"})
    check_provider_keys(settings)
    model = resolve_model("openai:llama3.2", settings)
    assert isinstance(model, Model)
    assert "127.0.0.1:11434" in model.base_url  # type: ignore[operator]


def test_fallback_models_are_checked_too() -> None:
    settings = load_settings(
        None, {"model": "offline", "model_fallbacks": {"mapping": ["groq:llama-3.3-70b"]}}
    )
    with pytest.raises(ProviderKeyMissing, match="GROQ_API_KEY"):
        check_provider_keys(settings)


def test_model_id_needs_a_provider() -> None:
    with pytest.raises(ConfigError, match="provider:model"):
        parse_model_id("gpt-5-mini")
    assert parse_model_id("offline").qualified == "offline"
    assert isinstance(resolve_model("offline", load_settings()), OfflineModel)


def test_per_stage_models_from_flags(cli: object) -> None:
    settings = load_settings(None, {"models": {"features": "anthropic:claude-sonnet-4-5"}})
    assert settings.stage_models() == {
        "descriptions": "offline",
        "features": "anthropic:claude-sonnet-4-5",
        "mapping": "offline",
    }


def test_a_provider_whose_sdk_is_missing_fails_before_any_work(
    cli: Any, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cohere's SDK is not installed: the model cannot be built, which is one usage error (exit 2)
    # before the output exists, not a failure of every service.
    monkeypatch.setenv("CO_API_KEY", "co-test-key")
    write_jsonl(isolated / "services.jsonl", [service("A")])
    result = cli("run", "--model", "cohere:command-r", "--descriptions-model", "cohere:command-r")
    assert result.exit_code == 2, result.stderr
    assert "cannot use model 'cohere:command-r'" in result.stderr
    assert not (isolated / "evolutions.jsonl").exists()
    assert not (isolated / "evolutions.jsonl.partial").exists()
