"""Answer-cache keys: what a call's answer depends on, and nothing that only changes how it travels.

A key is SHA-256 over canonical JSON of the stage, the provider-qualified model and its fallbacks, the
primary model's request settings (minus ``timeout``, ``request_timeout``, ``max_retries``),
``output_retries``, the output modes when one is not ``auto``, the system prompt's digest, the output
schema's digest and the user prompt (``store.cache.cache_key`` adds the cache format version). The
parts that do not depend on the call are built once per stage.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from service_ambitions.llm.providers import parse_model_id
from service_ambitions.llm.stack import common_settings, provider_settings
from service_ambitions.store.cache import cache_key

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic_ai.settings import ModelSettings

    from service_ambitions.settings import Settings

__all__ = ["TRANSPORT_SETTINGS", "CacheKeys", "schema_digest"]

TRANSPORT_SETTINGS = frozenset({"request_timeout", "timeout", "max_retries"})
"""Model settings that change how a request travels, not what the answer says: kept out of cache keys."""


def schema_digest(output_type: type[BaseModel]) -> str:
    """Digest of an output schema (part of the cache key)."""
    schema = json.dumps(output_type.model_json_schema(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(schema.encode()).hexdigest()


class CacheKeys:
    """The cache keys of one run's calls."""

    def __init__(self, settings: Settings, system_prompt: str) -> None:
        """Keys for ``settings`` and the run's system prompt."""
        self.settings = settings
        self.system_digest = hashlib.sha256(system_prompt.encode()).hexdigest()
        self._stage_settings: dict[str, ModelSettings] = {}
        self._bases: dict[str, dict[str, Any]] = {}
        self._schemas: dict[type[BaseModel], str] = {}

    def model_settings(self, stage: str) -> ModelSettings:
        """The settings of a stage's primary model: what the cache key records (built once per stage).

        Requests carry only the settings common to every model; each model's stack adds its own
        provider's settings, so a fallback never sends the primary's (see ``llm/stack.py``).
        """
        cached = self._stage_settings.get(stage)
        if cached is None:
            primary = self.settings.stage_model(stage)
            merged: Any = {**common_settings(self.settings), **provider_settings(primary, self.settings)}
            cached = self._stage_settings[stage] = merged
        return cached

    def schema(self, output_type: type[BaseModel]) -> str:
        """The digest of an output schema (computed once per type)."""
        digest = self._schemas.get(output_type)
        if digest is None:
            digest = self._schemas[output_type] = schema_digest(output_type)
        return digest

    def basis(self, stage: str) -> dict[str, Any]:
        """The parts of a stage's cache keys that do not depend on the call (built once per stage)."""
        basis = self._bases.get(stage)
        if basis is None:
            model_id = self.settings.stage_model(stage)
            fallbacks = self.settings.fallbacks_for(stage, model_id)
            basis = self._bases[stage] = {
                "stage": stage,
                "model": parse_model_id(model_id).cache_identity,
                "fallbacks": [parse_model_id(fallback).cache_identity for fallback in fallbacks],
                "model_settings": {
                    key: value
                    for key, value in self.model_settings(stage).items()
                    if key not in TRANSPORT_SETTINGS
                },
                "output_retries": self.settings.output_retries,
                "system_prompt": self.system_digest,
            }
            modes = {model: self.settings.output_mode_for(model) for model in (model_id, *fallbacks)}
            if set(modes.values()) != {"auto"}:  # keys of the default mode stay as they were
                basis["output_mode"] = modes
        return basis

    def key(self, stage: str, output_type: type[BaseModel], user_prompt: str) -> str:
        """The cache key of a call."""
        return cache_key({**self.basis(stage), "schema": self.schema(output_type), "prompt": user_prompt})
