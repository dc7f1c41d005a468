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

from service_ambitions._failure_spec import parse_failure_spec
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

    descriptions: str | None = Field(
        default=None, description="Model for the descriptions stage; null uses `model`."
    )
    features: str | None = Field(default=None, description="Model for the features stage; null uses `model`.")
    mapping: str | None = Field(default=None, description="Model for the mapping stage; null uses `model`.")


class Reasoning(_Section):
    """Reasoning options passed to models that support them."""

    effort: Literal["minimal", "low", "medium", "high"] | None = Field(
        default=None, description="Reasoning effort; sent only to `openai*` models."
    )
    summary: Literal["auto", "concise", "detailed"] | None = Field(
        default=None, description="Reasoning summary; sent only to `openai*` models."
    )


class RateLimit(_Section):
    """Requests and tokens per minute allowed for one model."""

    rpm: int | None = Field(default=None, gt=0, description="Requests per minute for this model.")
    tpm: int | None = Field(
        default=None,
        gt=0,
        description="Tokens per minute for this model (estimated before a request, settled with the usage "
        "the answer reports).",
    )
    concurrency: int | None = Field(
        default=None,
        gt=0,
        description="Requests in flight at once for this model (within `llm_concurrency`); applies in "
        "every `rate_limits` mode.",
    )


class StageTimeouts(_Section):
    """Time budget in seconds for each stage of one service."""

    descriptions: float = Field(
        default=300.0,
        gt=0,
        description="Seconds for a service's descriptions call, everything included: the cache lookup, "
        "waits for an `llm_concurrency` slot and rate permits, transport retries, output re-asks and "
        "fallbacks. On expiry the call is cancelled and the service fails (quarantined as `timeout`).",
    )
    features: float = Field(
        default=300.0,
        gt=0,
        description="Seconds for one plateau's features call, counted as for `stage_timeouts.descriptions`; "
        "the wait for a `plateau_concurrency` slot is not counted.",
    )
    mapping: float = Field(
        default=300.0,
        gt=0,
        description="Seconds for one plateau's mapping calls together (every mapping set, run concurrently), "
        "counted as for `stage_timeouts.descriptions`.",
    )


class TransportRetries(_Section):
    """Retries of transient HTTP failures (429, 408, 5xx, connection errors), honouring Retry-After."""

    attempts: int = Field(
        default=4,
        ge=1,
        le=20,
        description="HTTP attempts per model request, the first included, for 408, 409, 429, 500, 502, 503, "
        "504, 529, connection and protocol errors and timeouts (not 401/403, nor a 429 "
        "`insufficient_quota`). Applies to the providers behind the tool's own HTTP transport (`openai*`, "
        "`anthropic`, `google`, `mistral`, `openrouter`), whose SDK retries are switched off; other "
        "providers retry as their SDK does. Not output re-asks: those are `output_retries`.",
    )
    max_wait: float = Field(
        default=60.0,
        gt=0,
        description="Longest wait in seconds before a transport retry: `retry-after-ms`/`Retry-After` "
        "when the provider sends one, else exponential from 0.5 s (0.5, 1, 2, ...), capped at this. "
        "Also the longest a 429 pauses its model's admission.",
    )
    rate_limited_for: float = Field(
        default=300.0,
        ge=0,
        description="Seconds a request answered 429 (rate limited, not out of quota) keeps being retried "
        "after `attempts` is used up, each wait as the provider's `Retry-After` says: processes sharing a "
        "key (CI shards) race for the same budget at each reset, and a 429 only says to wait. 0: 429s count "
        "against `attempts` like other failures.",
    )


class OfflineOptions(_Section):
    """Options of the built-in synthetic ``offline`` model."""

    latency_ms: float = Field(
        default=0.0, ge=0, description="Simulated latency of every offline answer, in milliseconds."
    )
    jitter_ms: float = Field(
        default=0.0,
        ge=0,
        description="Extra simulated latency between 0 and this many milliseconds, derived from the prompt "
        "(deterministic).",
    )
    usd_per_million_tokens: float = Field(
        default=0.0,
        ge=0,
        description="Simulated price of offline answers (input + output tokens), for budget rehearsals and "
        "the benchmark; 0 = free.",
    )


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
    model: str = Field(
        default="offline",
        description="Model for every stage: `offline` or `provider:model` (README, Models); `models.*` "
        "overrides it per stage.",
    )
    models: StageModels = StageModels()
    model_fallbacks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Fallback models, tried in order when a request fails with a rate-limit, unavailable, "
        "server or connection error (timeouts included) after its transport retries. A key is a stage name "
        "or a model id: a stage uses the entry under its name, else the one under its model id. Each "
        "fallback is admitted under its own limits and sends its own provider's settings.",
    )
    reasoning: Reasoning = Reasoning()
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Sampling temperature; null leaves the provider's default."
    )
    max_tokens: int | None = Field(
        default=None,
        gt=0,
        description="Maximum output tokens per request; null leaves the provider's default, except for "
        "`openai*` models at `base_url`, which get 4096. On the Chat Completions API (`openai-chat:`) it is "
        "sent as `max_tokens` at `base_url` (the field llama.cpp, vLLM and Ollama read) and as "
        "`max_completion_tokens` to OpenAI; on the Responses API (`openai:`, `openai-responses:`) as "
        "`max_output_tokens`. Also the output allowance of the rate-limit token estimate (2048 when null) "
        "and of `run --estimate` (a typical size per stage when null).",
    )
    output_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Output re-asks: how many times one call sends the model's rejected answer back with "
        "the validation errors (semantic checks included: a missing plateau, unknown role keys, omitted "
        "feature ids), each a new request. A cut-off or oversized answer is not sent back; the re-ask asks "
        "for a shorter one. Not transport retries (`transport_retries`).",
    )
    output_mode: OutputMode = Field(
        default="auto",
        description="How structured answers are asked for, through pydantic-ai's output types. `auto`: the "
        "model's profile decides (the output tool for OpenAI, Anthropic, Google, Mistral, Groq, ...; "
        "prompted JSON with `response_format: json_object` for `openai*` models at `base_url`). `tool`: an "
        "output tool call (`tool_choice` required; text answers rejected). `native`: a JSON-schema "
        "response format. `prompted`: the schema in the instructions, JSON text back. Part of the answer "
        "cache key and the header settings only when not `auto` everywhere.",
    )
    models_output_mode: dict[str, OutputMode] = Field(
        default_factory=dict,
        description="`output_mode` per model (fallbacks included), keyed by the id as configured. At "
        "`base_url`, an explicit `native` or `tool` also tells pydantic-ai the server supports it.",
    )
    base_url: str | None = Field(
        default=None,
        description="Base URL of every `openai*` model of the run, for OpenAI-compatible servers; null uses "
        "`OPENAI_BASE_URL` when that is set. With a base URL no OpenAI key is required, and those models get "
        "a profile for such servers (see `output_mode`, `max_tokens`).",
    )
    openai_api_key: SecretStr | None = Field(
        default=None,
        description="OpenAI key; wins over `OPENAI_API_KEY`. A secret: never printed, never in the output "
        "or the cache key. Set it in the environment, not in a committed file.",
    )
    offline: OfflineOptions = OfflineOptions()

    # Throughput and limits
    # High enough that a default run is bound by the provider's limits or latency, not by these caps.
    concurrency: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Services in flight at once, counting finished services waiting in the reorder buffer "
        "(records are written in input order).",
    )
    llm_concurrency: int = Field(
        default=256,
        ge=1,
        le=4096,
        description="Model requests in flight at once across the whole run; each first request and each "
        "output re-ask takes a slot (its transport retries and fallbacks keep it). The slot is taken before "
        "the rate permit.",
    )
    plateau_concurrency: int = Field(
        default=5,
        ge=1,
        le=16,
        description="Plateaus of one service in flight at once; 2 or more lets the features call of "
        "plateau N+1 run while plateau N is mapped.",
    )
    models_rate_limits: dict[str, RateLimit] = Field(
        default_factory=dict,
        description="Per-model caps, keyed by the model id exactly as configured (fallbacks take their own "
        "entries): requests per minute, tokens per minute (FIFO admission, no sliding minute over the "
        "limit) and requests in flight. Never exceeded, whatever the provider says; `rate_limits: off` "
        "ignores `rpm` and `tpm` (not `concurrency`). A rate permit is taken immediately before each HTTP "
        "attempt (transport retries included), so a backlog never becomes a burst.",
    )
    rate_limits: Literal["learn", "fixed", "off"] = Field(
        default="learn",
        description="How client-side rate limits are set. `learn`: adopt the limits and the remaining "
        "budget the provider sends on every response (`x-ratelimit-limit/remaining/reset-requests/tokens`, "
        "`anthropic-ratelimit-*`, `retry-after`, `retry-after-ms`), under the caps of "
        "`models_rate_limits`; until the first answer (or connection failure) at most 4 requests per model "
        "go out (a probe window); a server that sends no such headers (a local one), and a provider outside "
        "the tool's HTTP transport (e.g. `groq`), gets no limit beyond its configured caps. Several "
        "processes on one key (CI shards) thus share the account's budget. `fixed`: only "
        "`models_rate_limits`. `off`: no client-side rate limit (429s no longer pause the model). The "
        "summary lists the limits in force per model and where they came from.",
    )
    request_timeout: float = Field(
        default=120.0,
        gt=0,
        description="Seconds any one step of an HTTP attempt may wait: connecting (at most 10 s), sending "
        "the request, each read of the answer, getting a pooled connection. Not a deadline over the whole "
        "attempt: a non-streamed answer arrives only when the model has finished, so this bounds its "
        "generation, but an answer that keeps sending bytes is not cut off (`stage_timeouts` bound the "
        "whole call). A timed-out attempt is a transport error, retried under `transport_retries`. For "
        "providers outside the tool's HTTP transport, passed to the SDK as its timeout.",
    )
    transport_retries: TransportRetries = TransportRetries()
    inject_failures: str | None = Field(
        default=None,
        description="Failure injection at the model boundary, for resilience tests: "
        "`p=0.05[,kinds=429,500,timeout,malformed][,seed=N]`. Validated at load.",
    )
    allow_prompt_logging: bool = Field(
        default=False,
        description="Log each prompt and answer at DEBUG (visible with `-vv`), redacted like every log line.",
    )
    stage_timeouts: StageTimeouts = StageTimeouts()
    run_budget_usd: float | None = Field(
        default=None,
        gt=0,
        description="Spending cap of the run in USD; null = no budget (and no reservations).",
    )
    budget_mode: Literal["warn", "enforce"] = Field(
        default="warn",
        description="What happens when spent + in flight + the next service's estimate would pass "
        "`run_budget_usd`: `warn` logs one warning and goes on; `enforce` stops admitting services, lets "
        "those in flight finish, and exits 4 (resumable).",
    )
    mode: Literal["live", "batch", "auto"] = Field(
        default="live",
        description="How requests are sent: live; batch (provider batch APIs: half price, results within "
        "24 h, in waves); auto (batch where the model has a batch API, live otherwise).",
    )
    batch_poll_interval: float = Field(
        default=30.0, gt=0, description="Seconds before the first check of a submitted batch (grows by half)."
    )
    batch_max_poll_interval: float = Field(
        default=600.0, gt=0, description="Longest wait in seconds between checks of a submitted batch."
    )
    batch_max_resubmissions: int = Field(
        default=2,
        ge=0,
        description="Times a batch request that expired or failed transiently (429, 5xx) is submitted again.",
    )

    # Content
    data_dir: Path | None = Field(
        default=None,
        description="Reference data directory: `service_feature_plateaus.json`, `roles.json`, "
        "`definitions.json` and the catalogue files; null uses the bundled data.",
    )
    prompt_dir: Path | None = Field(
        default=None,
        description="Prompt directory: `descriptions_prompt.md`, `features_prompt.md`, `mapping_prompt.md`, "
        "`situational_context/`, `inspirations/`; null uses the bundled prompts.",
    )
    roles_file: Path | None = Field(
        default=None,
        description="Roles file, or a directory holding `roles.json`; null uses `<data_dir>/roles.json`.",
    )
    context_id: str = Field(
        default="university",
        description="Situational context: `<prompt_dir>/situational_context/<context_id>.md`.",
    )
    inspiration: str = Field(
        default="general", description="Inspirations library: `<prompt_dir>/inspirations/<inspiration>.md`."
    )
    mapping_sets: list[MappingSet] = Field(
        default_factory=lambda: list(DEFAULT_MAPPING_SETS),
        min_length=1,
        description="Catalogues features are mapped to, in call order, each `{name, file, field}`: `name` is "
        "a label, `file` is read from `data_dir`, `field` is the output key (unique).",
    )

    # Files
    input_file: Path = Field(
        default=Path("services.jsonl"), description="Services file read by `run` and `validate`."
    )
    output_file: Path = Field(
        default=Path("evolutions.jsonl"),
        description="Output of `run`; its quarantine is `<output_file>.quarantine/`, torn bytes go to "
        "`<output_file>.broken`. Must not be `input_file` (also through a symlink or hard link); `run` and "
        "`preflight` check it and its quarantine directory before writing ([cli.md](cli.md#run), Paths).",
    )

    # Cache
    cache_mode: Literal["off", "read", "refresh", "write"] = Field(
        default="read",
        description="`off`: no read, no write. `read`: use cached entries, store new ones. `refresh`: never "
        "read, always store. `write`: never read, store only what is not cached yet. Applies to answers and "
        "to whole records.",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Cache directory (`manifest.sqlite3`, `entries/`); `~/.cache/service-ambitions` when "
        "`XDG_CACHE_HOME` is unset. Created by `run`, which first checks it can be written (not under "
        "`cache_mode: off`). A manifest that cannot be used is moved aside to "
        "`manifest.sqlite3.corrupt-<n>` with a warning and a fresh one started. `~` is not expanded in "
        "configured values.",
    )
    cache_max_bytes: int = Field(
        default=2 * 10**9,
        ge=0,
        description="Cap on the payload bytes, in bytes or a size such as `2GB` (the default); when a write "
        "passes it, least recently used entries are removed. `0` = no cap.",
    )
    cache_ttl: float = Field(
        default=90 * 86400.0,
        ge=0,
        description="Seconds, or a duration such as `90d` (the default): entries older than this (since "
        "written) are misses and are removed when read. `0` = never expire.",
    )

    # Behaviour
    strict: bool = Field(
        default=False,
        description="Fail a service (quarantine it, write no record) on any unknown catalogue id, facet "
        "violation, feature missing from a mapping answer, empty mapping set, duplicate feature id or role "
        "without features; the run then exits 1 if any service failed. Without it, problems are "
        "quarantined and the best valid answer is kept.",
    )
    fail_on_quarantine: bool = Field(
        default=False,
        description="Exit 1 at the end when anything was quarantined; the output is still complete.",
    )
    seed: int = Field(
        default=0,
        description="Seed sent with every request (providers that support it use it); part of the run id "
        "and the cache keys.",
    )

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
