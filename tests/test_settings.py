from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service_ambitions.cli.run import parse_rate_limits
from service_ambitions.errors import ConfigError
from service_ambitions.settings import RateLimit, load_settings, read_dotenv


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings.model == "offline"
    assert settings.stage_models() == {"descriptions": "offline", "features": "offline", "mapping": "offline"}
    assert settings.cache_mode == "read"
    assert [item.field for item in settings.mapping_sets] == ["applications", "technologies", "data"]
    assert settings.cache_dir.name == "service-ambitions"


def test_yaml_overrides_defaults_and_default_path_is_used(isolated: Path) -> None:
    write_yaml(
        isolated / "config" / "app.yaml",
        "model: openai:gpt-5-mini\nconcurrency: 3\nmodels:\n  features: anthropic:claude-sonnet-4-5\n",
    )
    settings = load_settings()
    assert settings.model == "openai:gpt-5-mini"
    assert settings.concurrency == 3
    assert settings.stage_model("features") == "anthropic:claude-sonnet-4-5"
    assert settings.stage_model("mapping") == "openai:gpt-5-mini"


def test_env_overrides_yaml(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_yaml(
        isolated / "my.yaml", "model: openai:gpt-5-mini\nconcurrency: 3\nmodels:\n  features: a:b\n"
    )
    monkeypatch.setenv("SA_CONCURRENCY", "5")
    monkeypatch.setenv("SA_MODELS__FEATURES", "groq:llama-3.3-70b")
    monkeypatch.setenv("SA_CACHE_TTL", "7d")
    settings = load_settings(config)
    assert settings.concurrency == 5
    assert settings.stage_model("features") == "groq:llama-3.3-70b"
    assert settings.model == "openai:gpt-5-mini"  # untouched by env
    assert settings.cache_ttl == 7 * 86400


def test_dotenv_is_read_below_environment(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / ".env").write_text("SA_SEED=11\nSA_CONTEXT_ID=college\n", encoding="utf-8")
    monkeypatch.setenv("SA_SEED", "12")
    settings = load_settings()
    assert settings.seed == 12
    assert settings.context_id == "college"


def test_cli_overrides_everything(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_yaml(isolated / "my.yaml", "concurrency: 3\nmodels:\n  mapping: a:b\n")
    monkeypatch.setenv("SA_CONCURRENCY", "5")
    monkeypatch.setenv("SA_MODELS__MAPPING", "c:d")
    settings = load_settings(config, {"concurrency": 9, "models": {"mapping": "e:f"}})
    assert settings.concurrency == 9
    assert settings.stage_model("mapping") == "e:f"


def test_unknown_yaml_key_names_key_and_file(isolated: Path) -> None:
    config = write_yaml(isolated / "bad.yaml", "modle: offline\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "modle" in str(caught.value)
    assert "bad.yaml" in str(caught.value)


def test_unknown_nested_yaml_key(isolated: Path) -> None:
    config = write_yaml(isolated / "bad.yaml", "models:\n  summaries: offline\n")
    with pytest.raises(ConfigError, match=r"models\.summaries.*bad\.yaml"):
        load_settings(config)


def test_invalid_value_names_key_and_env_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SA_CONCURRENCY", "many")
    with pytest.raises(ConfigError, match=r"concurrency.*environment variable SA_CONCURRENCY"):
        load_settings()


def test_invalid_value_names_cli_source() -> None:
    with pytest.raises(ConfigError, match=r"cache_mode.*command line"):
        load_settings(None, {"cache_mode": "sometimes"})


def test_invalid_yaml_names_line(isolated: Path) -> None:
    config = write_yaml(isolated / "broken.yaml", "model: offline\nconcurrency: [1,\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+"):
        load_settings(config)


def test_missing_config_file_is_an_error(isolated: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(isolated / "nope.yaml")


def test_secret_is_secretstr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SA_OPENAI_API_KEY", "sk-test-not-a-real-key-000000")
    settings = load_settings()
    assert settings.openai_api_key is not None
    assert "sk-test" not in repr(settings)
    assert "sk-test" not in str(settings.output_affecting())


def test_example_config_changes_nothing() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "app.example.yaml"
    loaded = load_settings(example)
    defaults = load_settings()
    assert loaded.output_affecting() == defaults.output_affecting()
    assert loaded.concurrency == defaults.concurrency


def test_cli_config_error_exits_2_before_any_work(cli: Callable[..., Any], isolated: Path) -> None:
    config = write_yaml(isolated / "bad.yaml", "concurency: 3\n")
    result = cli("run", "--config", str(config), "--input-file", "missing.jsonl")
    assert result.exit_code == 2
    assert "concurency" in result.stderr
    assert "bad.yaml" in result.stderr
    assert result.stdout == ""
    assert not (isolated / "evolutions.jsonl").exists()


def test_dotenv_provider_keys_are_for_providers(
    cli: Callable[..., Any], isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (isolated / ".env").write_text("ANTHROPIC_API_KEY=test-not-real\nSA_CONCURRENCY=4\n", encoding="utf-8")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert load_settings().concurrency == 4  # a provider key in .env is not a settings error
    result = cli("preflight", "--model", "anthropic:claude-sonnet-4-5")
    assert result.exit_code == 0, result.stderr
    assert "test-not-real" not in result.stderr


def test_unknown_sa_key_in_dotenv_is_named(isolated: Path) -> None:
    (isolated / ".env").write_text("SA_CONCURENCY=4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"concurency.*\.env"):
        load_settings()


def test_rate_limits_from_every_layer(
    cli: Callable[..., Any], isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "models_rate_limits:\n  'openai:gpt-5-mini': {rpm: 500, tpm: 200000}\n"
    config = write_yaml(isolated / "limits.yaml", text)
    from_yaml = load_settings(config)
    assert from_yaml.rate_limit_for("openai:gpt-5-mini") == RateLimit(rpm=500, tpm=200000)
    monkeypatch.setenv("SA_MODELS_RATE_LIMITS", '{"openai:gpt-5-mini": {"rpm": 300}}')
    # nested keys merge across layers: the env sets rpm, the YAML still gives tpm
    assert load_settings(config).rate_limit_for("openai:gpt-5-mini") == RateLimit(rpm=300, tpm=200000)
    flags = parse_rate_limits(["openai:gpt-5-mini=rpm:100,tpm:9000"])
    from_cli = load_settings(config, {"models_rate_limits": flags})
    assert from_cli.rate_limit_for("openai:gpt-5-mini") == RateLimit(rpm=100, tpm=9000)
    # Without an entry there is no configured cap: limits are learned from the provider's headers.
    assert load_settings().rate_limit_for("anthropic:claude-sonnet-4-5") is None
    assert load_settings().rate_limits == "learn"
    assert load_settings().rate_limit_for("offline") is None
    bad = cli("run", "--rate-limit", "openai:gpt-5-mini=rpm:fast")
    assert bad.exit_code == 2
    assert "rpm:fast" in bad.stderr


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SA_MODELS_RATE_LIMITS", "{bad", "not valid JSON (Expecting property name"),
        ("SA_STAGE_TIMEOUTS", "[1", "not valid JSON"),
        ("SA_MODELS_RATE_LIMITS__X", "{bad", "models_rate_limits.x"),
        ("SA_CONCURRENCY", "abc", "valid integer"),
        ("SA_MAPPING_SETS", "[" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert f"environment variable {variable}" in str(caught.value)
    assert expected in str(caught.value)


def test_malformed_dotenv_value_names_the_file_and_variable(isolated: Path) -> None:
    (isolated / ".env").write_text("SA_MODELS_RATE_LIMITS={bad\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\.env file SA_MODELS_RATE_LIMITS\): not valid JSON"):
        load_settings()


def test_dotenv_with_invalid_utf8_names_file_and_line(isolated: Path) -> None:
    (isolated / ".env").write_bytes(b"SA_SEED=1\nSA_CONTEXT_ID=caf\xe9\n")
    with pytest.raises(ConfigError, match=r"^\.env:2: not valid UTF-8"):
        load_settings()
    with pytest.raises(ConfigError, match=r"^\.env:2: not valid UTF-8"):
        read_dotenv()  # what llm/providers.py reads provider keys with
    (isolated / ".env").write_text("SA_SEED=1\nGROQ_API_KEY=gsk-test\n", encoding="utf-8")
    assert read_dotenv() == {"SA_SEED": "1", "GROQ_API_KEY": "gsk-test"}
    assert load_settings().seed == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"model: offline\nseed: caf\xe9\n", r"bad\.yaml:2: not valid UTF-8 \(invalid continuation byte"),
        (b"model: [offline\n", r"bad\.yaml:2: invalid YAML"),
        (b"model: " + b"[" * 100_000 + b"\n", r"bad\.yaml: invalid YAML: nested too deeply"),
        (b"seed: 2025-02-30\n", r"bad\.yaml: invalid YAML value: day is out of range"),
        (b"1: 2\n", r"bad\.yaml: unknown setting 1"),
        (b'output_file: "out\\0.jsonl"\n', r"'output_file' \(from config file bad\.yaml\).*NUL"),
    ],
)
def test_malformed_yaml_names_the_file(isolated: Path, text: bytes, expected: str) -> None:
    (isolated / "bad.yaml").write_bytes(text)
    with pytest.raises(ConfigError, match=expected):
        load_settings(Path("bad.yaml"))


def test_config_path_that_is_a_directory_says_so(isolated: Path) -> None:
    (isolated / "conf").mkdir()
    with pytest.raises(ConfigError, match=r"config file conf is a directory, not a file"):
        load_settings(Path("conf"))
