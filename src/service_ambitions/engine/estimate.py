"""Pre-run cost estimates from the input size and prompt sizes; no model is called."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from service_ambitions.content.catalogue import items_json
from service_ambitions.llm._names import is_offline
from service_ambitions.llm.cost import estimate_usd

if TYPE_CHECKING:
    from service_ambitions.context import RunContext
    from service_ambitions.settings import Settings

__all__ = ["CallEstimate", "estimate_calls", "estimate_service_cost", "output_allowance"]

# Typical answer sizes in tokens (measured on the offline model's answers, rounded up for real models,
# which write longer prose): the output allowance when max_tokens is not set.
_OUTPUT_TOKENS = {"descriptions": 1200, "features": 1500, "mapping": 900}
# The per-service part of a prompt: the service itself plus the plateau's features, in characters.
_SERVICE_CHARS = 2500
_FEATURES_CHARS = 2400


@dataclass(frozen=True)
class CallEstimate:
    """Expected calls of one stage for one service, and their cost."""

    stage: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    usd: Decimal | None


def output_allowance(settings: Settings, stage: str) -> int:
    """Output tokens to expect from one call of a stage: ``max_tokens``, else the stage's typical answer."""
    return settings.max_tokens or _OUTPUT_TOKENS[stage]


def estimate_calls(context: RunContext) -> list[CallEstimate]:
    """Calls per service for each stage, with tokens from the real prompt sizes."""
    settings = context.settings
    content = context.content
    system = len(content.system_prompt)
    plateaus = len(content.plateaus)
    catalogue_chars = {item.field: len(json.dumps(items_json(item.items))) for item in content.catalogues}
    shapes = {
        "descriptions": (1, system + len(content.templates["descriptions"]) + _SERVICE_CHARS),
        "features": (plateaus, system + len(content.templates["features"]) + _SERVICE_CHARS),
        "mapping": (
            plateaus * len(content.catalogues),
            system
            + len(content.templates["mapping"])
            + _SERVICE_CHARS
            + _FEATURES_CHARS
            + sum(catalogue_chars.values()) // max(len(catalogue_chars), 1),
        ),
    }
    estimates = []
    for stage, (calls, chars) in shapes.items():
        model = settings.stage_model(stage)
        input_tokens = chars // 4
        output_tokens = output_allowance(settings, stage)
        if is_offline(model):
            rate = Decimal(str(settings.offline.usd_per_million_tokens))
            per_call: Decimal | None = rate * (input_tokens + output_tokens) / 1_000_000
        else:
            per_call = estimate_usd(
                model, input_tokens, output_tokens, processing="batch" if settings.mode != "live" else None
            )
        estimates.append(
            CallEstimate(
                stage=stage,
                model=model,
                calls=calls,
                input_tokens=input_tokens * calls,
                output_tokens=output_tokens * calls,
                usd=per_call * calls if per_call is not None else None,
            )
        )
    return estimates


def estimate_service_cost(context: RunContext, stages: Collection[str] | None = None) -> Decimal:
    """Expected cost of one service (unpriced stages count as 0), of ``stages`` only when given."""
    rows = [item for item in estimate_calls(context) if stages is None or item.stage in stages]
    return sum((item.usd or Decimal(0) for item in rows), Decimal(0))
