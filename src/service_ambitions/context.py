"""The :class:`RunContext`: everything a run needs, built once from settings and passed down."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service_ambitions import __version__, _build
from service_ambitions.content.loader import Content, load_content
from service_ambitions.llm._names import is_offline
from service_ambitions.llm.gateway import Gateway
from service_ambitions.llm.providers import check_provider_keys
from service_ambitions.observability.redaction import Redactor
from service_ambitions.settings import Settings
from service_ambitions.store.cache import ResponseCache

if TYPE_CHECKING:
    from pydantic_ai.models import Model

__all__ = ["RunContext", "build_context", "git_sha", "settings_digest"]


def git_sha() -> str | None:
    """The commit the tool was built from (build metadata, or this project's own checkout), else None.

    Never the repository of the current directory or of ``GIT_DIR``: the record-cache key includes it.
    """
    return _build.git_sha()


def settings_digest(settings: Settings, content: Content) -> str:
    """Digest of everything in the settings and content that changes the output."""
    basis = json.dumps(
        {"settings": settings.output_affecting(), "content": content.digest},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(basis.encode()).hexdigest()


@dataclass
class RunContext:
    """One run's collaborators."""

    settings: Settings
    content: Content
    cache: ResponseCache
    gateway: Gateway
    tool_version: str
    git_sha: str | None
    redactor: Redactor

    @property
    def synthetic(self) -> bool:
        """True when any configured model is the offline model."""
        return any(is_offline(model) for model in self.settings.all_model_ids())

    def close(self) -> None:
        """Release what the context holds."""
        self.cache.close()


def build_content(settings: Settings) -> Content:
    """Load the content the settings point at."""
    return load_content(
        data_dir=settings.data_dir,
        prompt_dir=settings.prompt_dir,
        roles_file=settings.roles_file,
        context_id=settings.context_id,
        inspiration=settings.inspiration,
        mapping_sets=list(settings.mapping_sets),
    )


def build_context(
    settings: Settings,
    *,
    models: Mapping[str, Model] | None = None,
    redactor: Redactor | None = None,
    keys_for: Iterable[str] | None = None,
) -> RunContext:
    """Validate keys, load content, open the cache and build the gateway.

    Args:
        settings: The run's settings.
        models: Ready-made models by id (tests inject scripted fakes here); others are resolved.
        redactor: The secret redactor (built from the environment when omitted).
        keys_for: The models the command will call, whose provider keys must be set: every model
            of the run by default; ``map`` calls only the mapping stage's, ``reverse`` none.

    Raises:
        UsageError: Missing provider key, bad model id, or unloadable content (before any model call).
    """
    redactor = redactor or Redactor.from_environment(os.environ)
    given = dict(models or {})
    called = settings.all_model_ids() if keys_for is None else keys_for
    check_provider_keys(settings, [model for model in called if model not in given])
    content = build_content(settings)
    cache = ResponseCache(
        settings.cache_dir,
        mode=settings.cache_mode,
        max_bytes=settings.cache_max_bytes,
        ttl_seconds=settings.cache_ttl,
    )
    gateway = Gateway(settings, system_prompt=content.system_prompt, cache=cache, models=given)
    return RunContext(
        settings=settings,
        content=content,
        cache=cache,
        gateway=gateway,
        tool_version=__version__,
        git_sha=git_sha(),
        redactor=redactor,
    )
