"""Accounting of a run's model requests: counters, the cost ledger, token and cost metrics, latencies.

Every response a model returns is priced (genai-prices, or the offline model's simulated rate) into
the run's :class:`~service_ambitions.llm.cost.CostLedger` under the model that answered, and its
tokens, cached tokens and cost go to the ``sa_*`` metrics. Requests are counted where they are sent
(``ConfiguredModel`` and the transport's retry hook call :meth:`Accounting.count_request` and
:meth:`Accounting.count_transport_retry`); a request sent while :data:`reasking` is set is a re-ask.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from service_ambitions.llm._names import is_offline
from service_ambitions.llm.cost import CostLedger
from service_ambitions.llm.pricing import Price, price_response
from service_ambitions.llm.prompt_cache import cache_write_tokens, cached_tokens

if TYPE_CHECKING:
    from pydantic_ai.messages import ModelResponse

    from service_ambitions.observability.metrics import RunMetrics
    from service_ambitions.settings import Settings

__all__ = ["Accounting", "GatewayStats", "answered_by", "reasking"]

MAX_LATENCY_SAMPLES = 200_000
"""Latency samples kept per stage: enough for percentiles, bounded whatever the run size."""

reasking: ContextVar[bool] = ContextVar("sa_reasking", default=False)
"""Set while a re-ask is being sent, so its transport retries count as re-asks too."""


@dataclass
class GatewayStats:
    """Counters of one run."""

    calls: int = 0
    model_requests: int = 0
    """Requests sent to models: first answers, re-asks, fallback attempts and transport retries."""
    output_reasks: int = 0
    """Requests that re-asked after a rejected answer (counted like ``model_requests``)."""
    input_tokens: int = 0
    output_tokens: int = 0
    failures: int = 0
    max_attempts: int = 0
    """Most requests one call needed (first answer plus output re-asks)."""
    fallbacks: int = 0
    """Responses from a model other than the stage's configured one."""
    by_stage: dict[str, int] = field(default_factory=dict)


def answered_by(response: ModelResponse, model_id: str) -> str:
    """Who answered, for provenance and the summary.

    The configured id of the model that answered (``openai-chat:qwen``, or a fallback's id), which
    ``ConfiguredModel`` stamps on its responses; a model that names no provider (the offline model, test
    doubles) by the name it reports.
    """
    configured = response.model_id or model_id
    return configured if response.provider_name else response.model_name or configured


class Accounting:
    """What one run's requests cost and took: counters, ledger, metrics and latency samples."""

    def __init__(self, settings: Settings, metrics: RunMetrics, ledger: CostLedger | None = None) -> None:
        """Start empty, recording into ``metrics`` (and ``ledger``, when the run shares one)."""
        self.settings = settings
        self.metrics = metrics
        self.stats = GatewayStats()
        self.ledger = ledger if ledger is not None else CostLedger()
        self.durations: dict[str, list[float]] = {}
        """Latency samples of answered requests, per stage (seconds)."""
        self.transport_retries = 0

    def count_request(self) -> None:
        """One request handed to a model (``ConfiguredModel``)."""
        self.stats.model_requests += 1
        if reasking.get():
            self.stats.output_reasks += 1

    def count_transport_retry(self) -> None:
        """One more HTTP request for the request being sent: a transport retry."""
        self.transport_retries += 1
        self.count_request()

    def record(
        self, stage: str, service_id: str, model_id: str, response: ModelResponse, seconds: float
    ) -> None:
        """Price a response, and record its tokens, cost and latency.

        Args:
            stage: The stage that sent the request.
            service_id: The service it was for.
            model_id: The stage's configured (primary) model.
            response: The answer, with its usage.
            seconds: How long the request took, from its slot being granted.
        """
        usage = response.usage
        answered = answered_by(response, model_id)
        if is_offline(answered) or (is_offline(model_id) and not response.provider_name):
            rate = Decimal(str(self.settings.offline.usd_per_million_tokens))
            tokens = usage.input_tokens + usage.output_tokens
            price = Price(usd=rate * tokens / 1_000_000, synthetic=True)
        else:
            price = price_response(response, model_id)
        cached = cached_tokens(usage)
        self.ledger.record(
            stage,
            answered,
            service_id,
            price,
            usage.input_tokens,
            usage.output_tokens,
            cache_read_tokens=cached,
            cache_write_tokens=cache_write_tokens(usage),
        )
        samples = self.durations.setdefault(stage, [])
        if len(samples) < MAX_LATENCY_SAMPLES:
            samples.append(seconds)
        attributes = {"stage": stage, "model_name": answered}
        self.metrics.add(self.metrics.tokens, usage.input_tokens, {**attributes, "direction": "input"})
        self.metrics.add(self.metrics.tokens, usage.output_tokens, {**attributes, "direction": "output"})
        self.metrics.add(self.metrics.cached_tokens, cached, attributes)
        if price.usd:
            self.metrics.add(self.metrics.cost, float(price.usd), attributes)
        if (response.model_id or model_id) != model_id:
            self.stats.fallbacks += 1  # a fallback model answered
        self.stats.input_tokens += usage.input_tokens
        self.stats.output_tokens += usage.output_tokens
