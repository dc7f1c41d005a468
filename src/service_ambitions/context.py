"""The :class:`RunContext`: everything a run needs, built once from settings and passed down.

This module only builds the context (the run's identity, from its settings and content, is
``engine/identity.py``). The types it holds come from their own packages: ``Settings`` from
``settings``, ``Content`` from ``content``, ``ResponseCache`` from ``store``, ``Gateway`` from ``llm``,
``CostLedger`` from ``llm``, ``Redactor`` and ``RunMetrics`` from ``observability``, the build commit
from ``_build``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service_ambitions import __version__
from service_ambitions._build import git_sha
from service_ambitions.content.loader import Content, DirectorySource, load_content
from service_ambitions.content.source import ContentSource
from service_ambitions.llm._names import is_offline
from service_ambitions.llm.cost import CostLedger
from service_ambitions.llm.gateway import Gateway
from service_ambitions.llm.providers import check_provider_keys
from service_ambitions.observability.metrics import RunMetrics
from service_ambitions.observability.redaction import Redactor
from service_ambitions.settings import Settings
from service_ambitions.store.cache import ResponseCache

if TYPE_CHECKING:
    from pydantic_ai.models import Model

__all__ = ["RunContext", "build_context", "git_sha"]


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
    ledger: CostLedger
    """The run's spend: the gateway records into it, the engine's budget reads it."""
    metrics: RunMetrics
    """The run's instruments, shared by the gateway, the pipeline and the engine."""

    @property
    def synthetic(self) -> bool:
        """True when any configured model is the offline model."""
        return any(is_offline(model) for model in self.settings.all_model_ids())

    def close(self) -> None:
        """Release what the context holds."""
        self.cache.close()


def build_content(settings: Settings, source: ContentSource | None = None) -> Content:
    """Load the content of ``source``, or else the directories the settings point at."""
    return load_content(
        source
        or DirectorySource(
            data_dir=settings.data_dir,
            prompt_dir=settings.prompt_dir,
            roles_file=settings.roles_file,
            context_id=settings.context_id,
            inspiration=settings.inspiration,
            mapping_sets=list(settings.mapping_sets),
        )
    )


def build_context(
    settings: Settings,
    *,
    models: Mapping[str, Model] | None = None,
    redactor: Redactor | None = None,
    keys_for: Iterable[str] | None = None,
    content_source: ContentSource | None = None,
) -> RunContext:
    """Validate keys, load content, open the cache and build the gateway.

    Args:
        settings: The run's settings.
        models: Ready-made models by id (tests inject scripted fakes here); others are resolved.
        redactor: The secret redactor (built from the environment when omitted).
        keys_for: The models the command will call, whose provider keys must be set: every model
            of the run by default; ``map`` calls only the mapping stage's, ``reverse`` none.
        content_source: Where the content comes from (library users and tests inject content without
            files); the data and prompt directories of the settings by default.

    Raises:
        UsageError: Missing provider key, bad model id, or unloadable content (before any model call).
    """
    redactor = redactor or Redactor.from_environment(os.environ)
    given = dict(models or {})
    called = settings.all_model_ids() if keys_for is None else keys_for
    check_provider_keys(settings, [model for model in called if model not in given])
    content = build_content(settings, content_source)
    cache = ResponseCache(
        settings.cache_dir,
        mode=settings.cache_mode,
        max_bytes=settings.cache_max_bytes,
        ttl_seconds=settings.cache_ttl,
    )
    ledger = CostLedger()
    metrics = RunMetrics()
    gateway = Gateway(
        settings,
        system_prompt=content.system_prompt,
        cache=cache,
        models=given,
        ledger=ledger,
        metrics=metrics,
    )
    try:
        gateway.prepare(called)
    except BaseException:
        cache.close()
        raise
    return RunContext(
        settings=settings,
        content=content,
        cache=cache,
        gateway=gateway,
        tool_version=__version__,
        git_sha=git_sha(),
        redactor=redactor,
        ledger=ledger,
        metrics=metrics,
    )
