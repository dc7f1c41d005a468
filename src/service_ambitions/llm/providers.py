"""Resolving ``provider:model`` ids to pydantic-ai models, and checking provider keys up front."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service_ambitions.errors import ConfigError, ProviderKeyMissing
from service_ambitions.llm._names import OFFLINE_MODEL_VERSION, is_offline
from service_ambitions.settings import Settings, read_dotenv

if TYPE_CHECKING:
    from pydantic_ai.models import Model

    from service_ambitions.llm.ratelimits import ModelLimits

__all__ = [
    "KEY_VARIABLES",
    "LOCAL_OUTPUT_CAP",
    "base_url_of",
    "export_dotenv_provider_keys",
    "ModelRef",
    "check_provider_keys",
    "compatible_server",
    "compatible_server_profile",
    "output_cap",
    "parse_model_id",
    "resolve_model",
]

# Environment variables each provider reads its key from (first one found wins).
KEY_VARIABLES: dict[str, tuple[str, ...]] = {
    "openai": ("SA_OPENAI_API_KEY", "OPENAI_API_KEY"),
    "openai-chat": ("SA_OPENAI_API_KEY", "OPENAI_API_KEY"),
    "openai-responses": ("SA_OPENAI_API_KEY", "OPENAI_API_KEY"),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "google": ("GOOGLE_API_KEY", "GEMINI_API_KEY"),
    "groq": ("GROQ_API_KEY",),
    "mistral": ("MISTRAL_API_KEY",),
    "openrouter": ("OPENROUTER_API_KEY",),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "cerebras": ("CEREBRAS_API_KEY",),
    "cohere": ("CO_API_KEY",),
    "together": ("TOGETHER_API_KEY",),
    "fireworks": ("FIREWORKS_API_KEY",),
    "grok": ("XAI_API_KEY",),
    "xai": ("XAI_API_KEY",),
}
# Older spellings users may have in their configs.
ALIASES = {"google-gla": "google", "gemini": "google"}
# Providers that talk to a local server and need no key.
KEYLESS = frozenset({"ollama", "vllm", "litellm"})
LOCAL_OUTPUT_CAP = 4096
"""Output tokens per answer on an OpenAI-compatible server when ``max_tokens`` is not set: about four
times the longest stage answer, so a runaway answer stops instead of running for minutes."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed model id."""

    provider: str
    name: str

    @property
    def qualified(self) -> str:
        """``provider:name``, or ``offline``."""
        return self.name if self.provider == "offline" else f"{self.provider}:{self.name}"

    @property
    def cache_identity(self) -> str:
        """What identifies the model's behaviour in cache keys (the offline model carries its version)."""
        return f"offline@{OFFLINE_MODEL_VERSION}" if self.provider == "offline" else self.qualified


def parse_model_id(model_id: str) -> ModelRef:
    """Split ``provider:model``; the provider prefix is required (except for ``offline``)."""
    if is_offline(model_id):
        return ModelRef("offline", "offline")
    provider, sep, name = model_id.partition(":")
    if not sep or not provider or not name:
        raise ConfigError(
            f"model {model_id!r} must be written provider:model (e.g. openai:gpt-5-mini) or be 'offline'"
        )
    return ModelRef(ALIASES.get(provider, provider), name)


def export_dotenv_provider_keys(path: Path = Path(".env")) -> list[str]:
    """Make provider variables written in ``.env`` visible to the provider SDKs.

    Only known provider variables are exported, and never over a value already in the
    environment. Returns the names exported (never the values).
    """
    if not path.is_file():
        return []
    wanted = {name for names in KEY_VARIABLES.values() for name in names} | {"OPENAI_BASE_URL"}
    exported = []
    for name, value in read_dotenv(path).items():
        if name in wanted and value and name not in os.environ:
            os.environ[name] = value
            exported.append(name)
    return sorted(exported)


def base_url_of(settings: Settings) -> str | None:
    """The OpenAI-compatible server of ``openai*`` models: ``base_url``, else ``OPENAI_BASE_URL``."""
    return settings.base_url or os.environ.get("OPENAI_BASE_URL") or None


def _has_key(provider: str, settings: Settings) -> tuple[bool, str]:
    if provider in KEYLESS:
        return True, ""
    if provider.startswith("openai") and base_url_of(settings):
        return True, ""  # an OpenAI-compatible local server may not need a key
    variables = KEY_VARIABLES.get(provider)
    if variables is None:
        return True, ""  # unknown provider: pydantic-ai reports what it needs
    if provider.startswith("openai") and settings.openai_api_key is not None:
        return True, ""
    return any(os.environ.get(name) for name in variables), " or ".join(variables)


def check_provider_keys(settings: Settings, model_ids: Iterable[str] | None = None) -> None:
    """Fail before any work when a configured real provider has no key.

    Raises:
        ProviderKeyMissing: Names the model and the environment variable(s) to set.
        ConfigError: A model id is malformed.
    """
    for model_id in model_ids if model_ids is not None else settings.all_model_ids():
        ref = parse_model_id(model_id)
        if ref.provider == "offline":
            continue
        present, variables = _has_key(ref.provider, settings)
        if not present:
            raise ProviderKeyMissing(f"model {model_id!r} needs an API key: set {variables}")


def compatible_server(model_id: str, settings: Settings) -> bool:
    """Whether the model is an ``openai*`` model served by an OpenAI-compatible server (``base_url``)."""
    return bool(base_url_of(settings)) and parse_model_id(model_id).provider.startswith("openai")


def output_cap(model_id: str, settings: Settings) -> int | None:
    """The output-token cap a model's requests carry: ``max_tokens``, else the local-server default."""
    if settings.max_tokens is not None:
        return settings.max_tokens
    return LOCAL_OUTPUT_CAP if compatible_server(model_id, settings) else None


def compatible_server_profile(mode: str, *, batches: bool = False) -> dict[str, Any]:
    """What pydantic-ai is told about an OpenAI-compatible server (llama.cpp, vLLM, Ollama...).

    OpenAI's own profile claims too much for them: llama.cpp's server answers a ``json_schema``
    response format with HTTP 500 and ignores ``tool_choice: "required"``, and they read the output cap
    from ``max_tokens``, not ``max_completion_tokens``. So ``auto`` becomes prompted JSON with a
    ``json_object`` response format, which they all accept; an explicit ``output_mode`` says what the
    server can do (``native``: JSON schema; ``tool``: forced tool choice). ``batches`` (``--mode batch``
    or ``auto``) says the server also offers OpenAI's Batch API (``/v1/files``, ``/v1/batches``), as
    vLLM and LiteLLM's proxy do.
    """
    from pydantic_ai.profiles.openai import OpenAIModelProfile  # noqa: PLC0415

    return dict(
        OpenAIModelProfile(
            openai_chat_supports_max_completion_tokens=False,
            supports_json_schema_output=mode == "native",
            supports_json_object_output=True,
            supports_forced_tool_choice=mode == "tool",
            default_structured_output_mode="prompted",
            openai_supports_batch_api=batches,
        )
    )


def _compatible_model(ref: ModelRef, model_id: str, provider: Any, settings: Settings) -> Model:
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel  # noqa: PLC0415

    model_class: Any = OpenAIChatModel if ref.provider == "openai-chat" else OpenAIResponsesModel
    own: Any = {"max_tokens": LOCAL_OUTPUT_CAP} if settings.max_tokens is None else None
    return model_class(  # type: ignore[no-any-return]
        ref.name,
        provider=provider,
        profile=compatible_server_profile(
            settings.output_mode_for(model_id), batches=settings.mode != "live"
        ),
        settings=own,
    )


def resolve_model(
    model_id: str,
    settings: Settings,
    *,
    on_retry: Callable[[], None] | None = None,
    limits: ModelLimits | None = None,
) -> Model:
    """Build the pydantic-ai model for an id (imports provider SDKs lazily).

    ``limits``, for providers behind our transport, admits every HTTP attempt and learns from answers.
    """
    ref = parse_model_id(model_id)
    if ref.provider == "offline":
        from service_ambitions.llm.offline import OfflineModel  # noqa: PLC0415

        return OfflineModel(latency_ms=settings.offline.latency_ms, jitter_ms=settings.offline.jitter_ms)
    from pydantic_ai.models import infer_model  # noqa: PLC0415  (heavy import, kept off --help)

    from service_ambitions.llm.transport import TRANSPORT_PROVIDERS, retrying_client  # noqa: PLC0415

    try:
        if ref.provider.startswith("openai"):
            from pydantic_ai.providers.openai import OpenAIProvider  # noqa: PLC0415

            key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
            if base_url_of(settings) and key is None and not os.environ.get("OPENAI_API_KEY"):
                key = "not-needed"  # local OpenAI-compatible servers ignore the key
            provider: Any = OpenAIProvider(
                base_url=base_url_of(settings),
                api_key=key,
                http_client=retrying_client(settings, on_retry=on_retry, limits=limits),
            )
            if base_url_of(settings):
                return _compatible_model(ref, model_id, provider, settings)
        elif ref.provider in TRANSPORT_PROVIDERS:
            from pydantic_ai.providers import infer_provider_class  # noqa: PLC0415

            provider_class: Any = infer_provider_class(ref.provider)
            provider = provider_class(http_client=retrying_client(settings, on_retry=on_retry, limits=limits))
        else:
            return infer_model(f"{ref.provider}:{ref.name}")
        return infer_model(f"{ref.provider}:{ref.name}", provider_factory=lambda _name: provider)
    except Exception as exc:  # the SDKs' own error types vary per provider
        raise ConfigError(f"cannot use model {model_id!r}: {exc}") from exc
