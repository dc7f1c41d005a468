"""Settings: defaults < YAML config < ``SA_*`` environment and ``.env`` < command-line flags.

Settings are validated once, at start-up, by :func:`load_settings`; an unknown key or an invalid
value raises :class:`~service_ambitions.errors.ConfigError` naming the key and where it came from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from service_ambitions._units import parse_duration, parse_size
from service_ambitions.domain.reference import MappingSet
from service_ambitions.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_MAPPING_SETS",
    "ENV_PREFIX",
    "OutputMode",
    "RateLimit",
    "Settings",
    "StageModels",
    "load_settings",
    "read_dotenv",
]

ENV_PREFIX = "SA_"
DEFAULT_CONFIG_PATH = Path("config/app.yaml")
DOTENV_PATH = Path(".env")
STAGES = ("descriptions", "features", "mapping")
OutputMode = Literal["auto", "tool", "native", "prompted"]
"""How structured answers are asked for (``llm/output_modes.py``)."""

DEFAULT_MAPPING_SETS = [
    MappingSet(name="Applications", file="applications.json", field="applications"),
    MappingSet(name="Technologies", file="technologies.json", field="technologies"),
    MappingSet(name="Data", file="information.json", field="data"),
]


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "service-ambitions"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageModels(_Section):
    """Per-stage model overrides; unset stages use ``model``."""

    descriptions: str | None = None
    features: str | None = None
    mapping: str | None = None


class Reasoning(_Section):
    """Reasoning options passed to models that support them."""

    effort: Literal["minimal", "low", "medium", "high"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class RateLimit(_Section):
    """Requests and tokens per minute allowed for one model."""

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, gt=0)


class StageTimeouts(_Section):
    """Time budget in seconds for each stage of one service."""

    descriptions: float = Field(default=300.0, gt=0)
    features: float = Field(default=300.0, gt=0)
    mapping: float = Field(default=300.0, gt=0)


class TransportRetries(_Section):
    """Retries of transient HTTP failures (429, 408, 5xx, connection errors), honouring Retry-After."""

    attempts: int = Field(default=4, ge=1, le=20)
    max_wait: float = Field(default=60.0, gt=0)


class OfflineOptions(_Section):
    """Options of the built-in synthetic ``offline`` model."""

    latency_ms: float = Field(default=0.0, ge=0)
    jitter_ms: float = Field(default=0.0, ge=0)
    usd_per_million_tokens: float = Field(default=0.0, ge=0)
    """Simulated price of offline answers (for budget rehearsals and the benchmark); 0 = free."""


class Settings(BaseSettings):
    """Every setting of a run. See ``config/app.example.yaml`` for documentation of each key."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=None,  # .env is read by _PrefixedDotEnv only, which names the file and line of bad bytes
        env_file_encoding="utf-8",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    # Models
    model: str = "offline"
    models: StageModels = StageModels()
    model_fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    reasoning: Reasoning = Reasoning()
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    output_retries: int = Field(default=2, ge=0, le=10)
    output_mode: OutputMode = "auto"
    models_output_mode: dict[str, OutputMode] = Field(default_factory=dict)
    base_url: str | None = None
    openai_api_key: SecretStr | None = None
    offline: OfflineOptions = OfflineOptions()

    # Throughput and limits
    # High enough that a default run is bound by the provider's limits or latency, not by these caps.
    concurrency: int = Field(default=16, ge=1, le=1024)
    llm_concurrency: int = Field(default=256, ge=1, le=4096)
    plateau_concurrency: int = Field(default=5, ge=1, le=16)
    models_rate_limits: dict[str, RateLimit] = Field(default_factory=dict)
    rate_limits: Literal["learn", "fixed", "off"] = "learn"
    request_timeout: float = Field(default=120.0, gt=0)
    transport_retries: TransportRetries = TransportRetries()
    inject_failures: str | None = None
    allow_prompt_logging: bool = False
    stage_timeouts: StageTimeouts = StageTimeouts()
    run_budget_usd: float | None = Field(default=None, gt=0)
    budget_mode: Literal["warn", "enforce"] = "warn"

    # Content
    data_dir: Path | None = None
    prompt_dir: Path | None = None
    roles_file: Path | None = None
    context_id: str = "university"
    inspiration: str = "general"
    mapping_sets: list[MappingSet] = Field(default_factory=lambda: list(DEFAULT_MAPPING_SETS), min_length=1)

    # Files
    input_file: Path = Path("services.jsonl")
    output_file: Path = Path("evolutions.jsonl")

    # Cache
    cache_mode: Literal["off", "read", "refresh", "write"] = "read"
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    cache_max_bytes: int = Field(default=2 * 10**9, ge=0)
    cache_ttl: float = Field(default=90 * 86400.0, ge=0)

    # Behaviour
    strict: bool = False
    fail_on_quarantine: bool = False
    seed: int = 0

    @field_validator("data_dir", "prompt_dir", "roles_file", "input_file", "output_file", "cache_dir")
    @classmethod
    def _no_nul(cls, value: Path | None) -> Path | None:
        # only a YAML string can carry a NUL; every file system call would fail on it
        if value is not None and "\0" in str(value):
            raise ValueError("a path cannot contain a NUL character")
        return value

    @field_validator("cache_max_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("cache_ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("inject_failures", mode="after")
    @classmethod
    def _failure_spec(cls, value: str | None) -> str | None:
        if value is not None:
            from service_ambitions.llm.chaos import parse_failure_spec  # noqa: PLC0415

            parse_failure_spec(value)
        return value

    @field_validator("mapping_sets", mode="after")
    @classmethod
    def _unique_fields(cls, value: list[MappingSet]) -> list[MappingSet]:
        fields = [item.field for item in value]
        duplicates = sorted({field for field in fields if fields.count(field) > 1})
        if duplicates:
            raise ValueError(f"mapping set fields must be unique; repeated: {', '.join(duplicates)}")
        return value

    def rate_limit_for(self, model_id: str) -> RateLimit | None:
        """The configured limits of a model (a hard cap), or None; learned limits come from the provider."""
        return self.models_rate_limits.get(model_id)

    def output_mode_for(self, model_id: str) -> OutputMode:
        """How a model is asked for structured answers: its ``models_output_mode``, else ``output_mode``."""
        return self.models_output_mode.get(model_id, self.output_mode)

    def stage_model(self, stage: str) -> str:
        """The configured model id for a stage."""
        override: str | None = getattr(self.models, stage)
        return override or self.model

    def stage_models(self) -> dict[str, str]:
        """The configured model for every stage."""
        return {stage: self.stage_model(stage) for stage in STAGES}

    def all_model_ids(self) -> list[str]:
        """Every model the run may call: each stage's model and every fallback, sorted."""
        ids = set(self.stage_models().values())
        for fallbacks in self.model_fallbacks.values():
            ids.update(fallbacks)
        return sorted(ids)

    def fallbacks_for(self, stage: str, model: str) -> list[str]:
        """Fallback models for a stage: by stage name first, then by model id."""
        return list(self.model_fallbacks.get(stage) or self.model_fallbacks.get(model) or [])

    def output_affecting(self) -> dict[str, Any]:
        """The settings that change the content of the output; no paths, no secrets."""
        affecting: dict[str, Any] = {
            "models": self.stage_models(),
            "model_fallbacks": {key: list(value) for key, value in sorted(self.model_fallbacks.items())},
            "reasoning": self.reasoning.model_dump(),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "output_retries": self.output_retries,
            "context_id": self.context_id,
            "inspiration": self.inspiration,
            "mapping_sets": [item.model_dump() for item in self.mapping_sets],
            "strict": self.strict,
            "seed": self.seed,
        }
        if self.output_mode != "auto" or self.models_output_mode:  # only when set: old digests stay valid
            affecting["output_mode"] = {
                model_id: self.output_mode_for(model_id) for model_id in self.all_model_ids()
            }
        return affecting


class _DictSource(PydanticBaseSettingsSource):
    """A settings source over an already parsed mapping (the YAML file)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _utf8_error(path: Path, exc: UnicodeDecodeError) -> ConfigError:
    """The error naming the file and the line of the first undecodable byte.

    The line is known when ``exc.object`` is the whole file (decoded at once), not a chunk of it.
    """
    data = exc.object if isinstance(exc.object, bytes) else b""
    line = data.count(b"\n", 0, exc.start) + 1
    where = f"{path}:{line}" if data else str(path)
    return ConfigError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})")


def _read_bytes(path: Path, what: str) -> bytes:
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory, not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _dotenv_error(path: Path, exc: UnicodeDecodeError | OSError) -> ConfigError:
    """python-dotenv decodes in chunks; decoding the whole file again names the line."""
    if isinstance(exc, OSError):
        return ConfigError(f"cannot read .env file {path}: {exc.strerror or exc}")
    try:
        data = path.read_bytes()
        data.decode("utf-8")
    except UnicodeDecodeError as whole:  # decoded at once, so the line can be named
        return _utf8_error(path, whole)
    except OSError:
        pass
    return _utf8_error(path, exc)


def read_dotenv(path: Path = DOTENV_PATH) -> dict[str, str | None]:
    """The variables of a ``.env`` file (none when there is no such file).

    Raises:
        ConfigError: The file cannot be read or is not valid UTF-8 (names the file and line).
    """
    if not path.is_file():
        return {}
    from dotenv import dotenv_values  # noqa: PLC0415

    try:
        return dotenv_values(path, encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise _dotenv_error(path, exc) from None


def _parse_failure(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


class _NamedSource(EnvSettingsSource):
    """An environment source whose unparsable values name their variable.

    E.g. ``SA_MODELS_RATE_LIMITS='{bad'``: pydantic-settings would raise a bare ``SettingsError``.
    """

    origin = "environment variable"

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        try:
            return super().prepare_field_value(field_name, field, value, value_is_complex)
        except (ValueError, RecursionError) as exc:
            raise ConfigError(
                f"invalid setting {field_name!r} (from {self.origin} {self._variables(field_name)}): "
                f"{_parse_failure(exc)}"
            ) from None

    def _variables(self, field_name: str) -> str:
        name = (ENV_PREFIX + field_name).upper()
        found = sorted(key.upper() for key in self.env_vars if key.upper() == name)
        found = found or sorted(key.upper() for key in self.env_vars if key.upper().startswith(name + "__"))
        return " or ".join(found) or name


class _Env(_NamedSource):
    """``SA_*`` environment variables."""


class _PrefixedDotEnv(_NamedSource, DotEnvSettingsSource):
    """``.env`` values for settings: only ``SA_*`` names (provider keys there are for the providers)."""

    origin = ".env file"

    def _load_env_vars(self) -> Any:
        loaded = super()._load_env_vars()
        return {key: value for key, value in loaded.items() if key.upper().startswith(ENV_PREFIX)}

    def _read_env_file(self, file_path: Path) -> Mapping[str, str | None]:
        try:
            return super()._read_env_file(file_path)
        except (UnicodeDecodeError, OSError) as exc:
            raise _dotenv_error(file_path, exc) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = _read_bytes(path, "config file").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, exc) from None
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except ValueError as exc:  # a scalar the YAML constructors reject, e.g. the date 2025-02-30
        raise ConfigError(f"{path}: invalid YAML value: {exc}") from None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings keys")
    for key in parsed:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: unknown setting {key!r} (settings keys are names)")
    return parsed


def _in(data: dict[str, Any], loc: tuple[str | int, ...]) -> bool:
    node: Any = data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
        else:
            return False
    return True


def _env_name(loc: tuple[str | int, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part) for part in loc).upper()


def _source_of(
    loc: tuple[str | int, ...], cli: dict[str, Any], environ: dict[str, str], yaml_path: Path | None
) -> str:
    if _in(cli, loc):
        return "command line"
    for depth in range(len(loc), 0, -1):
        name = _env_name(loc[:depth])
        if name in {key.upper() for key in environ}:
            return f"environment variable {name}"
    if Path(".env").is_file():
        for line in Path(".env").read_text(encoding="utf-8", errors="replace").splitlines():
            name = line.strip().removeprefix("export ").split("=", 1)[0].strip().upper()
            if name == _env_name(loc[:1]) or name.startswith(_env_name(loc[:1]) + "__"):
                return ".env file"
    if yaml_path is not None:
        return f"config file {yaml_path}"
    return "defaults"


def _format_errors(
    exc: ValidationError, cli: dict[str, Any], environ: dict[str, str], yaml_path: Path | None
) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error["loc"])
        if loc and str(loc[0]).upper().startswith(ENV_PREFIX):
            # only the .env source passes prefixed names through as unknown keys
            loc = (str(loc[0])[len(ENV_PREFIX) :].lower(), *loc[1:])
            source = f".env file ({ENV_PREFIX}{str(loc[0]).upper()})"
        else:
            source = _source_of(loc, cli, environ, yaml_path)
        key = ".".join(str(part) for part in loc) or "(settings)"
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown setting {key!r} (from {source})")
        else:
            lines.append(f"invalid setting {key!r} (from {source}): {error['msg']}")
    return "; ".join(lines)


def load_settings(
    config: Path | None = None,
    cli: dict[str, Any] | None = None,
) -> Settings:
    """Build and validate the settings of a run.

    Args:
        config: YAML config file. ``None`` uses ``config/app.yaml`` when it exists.
        cli: Values from command-line flags (highest precedence); nested keys as nested dicts.

    Raises:
        ConfigError: An unknown key or invalid value; the message names the key and its source.
    """
    cli = {key: value for key, value in (cli or {}).items() if value is not None}
    environ = dict(os.environ)
    yaml_path: Path | None = config
    if yaml_path is None and DEFAULT_CONFIG_PATH.is_file():
        yaml_path = DEFAULT_CONFIG_PATH
    elif yaml_path is not None and not yaml_path.exists():
        raise ConfigError(f"config file {yaml_path} does not exist")
    yaml_data = _read_yaml(yaml_path) if yaml_path is not None else {}

    class _Bound(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                init_settings,
                _Env(settings_cls),
                _PrefixedDotEnv(settings_cls, env_file=DOTENV_PATH),
                _DictSource(settings_cls, yaml_data),
            )

    try:
        return _Bound(**cli)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, cli, environ, yaml_path)) from None
    except SettingsError as exc:  # anything the named sources above did not translate
        cause = f": {_parse_failure(exc.__cause__)}" if exc.__cause__ is not None else ""
        raise ConfigError(f"invalid settings: {exc}{cause}") from None
    except RecursionError:  # a cyclic YAML alias (&a [*a]) or a value nested too deeply
        origin = f"config file {yaml_path}" if yaml_path is not None else "the environment"
        raise ConfigError(f"invalid settings: a value is nested too deeply (from {origin})") from None
