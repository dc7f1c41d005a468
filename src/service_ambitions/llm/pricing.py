"""Prices of model calls, from genai-prices only: a response after the fact, a request before it.

Prices come only from `genai-prices <https://github.com/pydantic/genai-prices>`_ through pydantic-ai's
own path (``ModelResponse.cost()``); there is no price table here. The data is the snapshot bundled
with the installed genai-prices release: nothing here starts its background ``UpdatePrices`` download,
so a run's figures are reproducible and pricing never touches the network.

Cached input tokens (``RequestUsage.cache_read_tokens``, part of ``input_tokens``) are priced at the
model's cache-read rate and cache writes at its cache-write rate, by genai-prices, from the usage the
provider reported.

A model genai-prices does not know is *unpriced* (``usd is None``), never priced at 0. The ``offline``
model costs exactly 0 and is marked synthetic. The ledger that adds prices up is ``llm/cost.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING

from service_ambitions.llm._names import is_offline
from service_ambitions.llm.providers import parse_model_id

if TYPE_CHECKING:
    from datetime import datetime

    from pydantic_ai.messages import ModelResponse

__all__ = ["OFFLINE_PRICE", "Price", "estimate_usd", "price_response"]

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Price:
    """The cost of one model response in USD.

    Attributes:
        usd: The cost, or ``None`` when it is unknown (never 0 for an unknown model).
        reason: Why the response is unpriced; set exactly when ``usd`` is ``None``.
        synthetic: The response came from the ``offline`` model (``usd`` is 0 unless a simulated
            rate is configured with ``offline.usd_per_million_tokens``).
    """

    usd: Decimal | None
    reason: str | None = None
    synthetic: bool = False

    def __post_init__(self) -> None:
        if (self.usd is None) != (self.reason is not None):
            raise ValueError("a price has either an amount or a reason it is unpriced, not both")
        if self.synthetic and self.usd is None:
            raise ValueError("a synthetic price is always known")

    @property
    def priced(self) -> bool:
        """True when the amount is known."""
        return self.usd is not None

    @classmethod
    def unpriced(cls, reason: str) -> Price:
        """A price that could not be determined."""
        return cls(usd=None, reason=reason)


OFFLINE_PRICE = Price(usd=_ZERO, synthetic=True)
"""What every ``offline`` response costs."""


def price_response(response: ModelResponse, model_id: str) -> Price:
    """Price one model response with genai-prices.

    The response says which model answered (a fallback model may have), so it is priced under its own
    model and provider names; ``model_id`` (the configured ``provider:model``) is used only when the
    response names no model. A cost the provider reported on the response takes precedence.

    Args:
        response: The response, with its usage.
        model_id: The configured model id the request was sent to.

    Returns:
        The price; unpriced (with the reason) when genai-prices knows no price for the model or
        cannot price the usage.
    """
    if is_offline(response.model_name or model_id):
        return OFFLINE_PRICE
    if response.usage.cost is not None:
        return Price(usd=response.usage.cost)
    if not response.model_name:
        ref = parse_model_id(model_id)
        response = replace(
            response, model_name=ref.name, provider_name=response.provider_name or ref.provider
        )
    label = (
        f"{response.provider_name}:{response.model_name}" if response.provider_name else response.model_name
    )
    if response.usage.unmeasured_requests:
        return Price.unpriced(f"the provider reported no usage for {label}")
    try:
        calculation = response.cost()
    except LookupError as exc:
        return Price.unpriced(f"genai-prices has no price for {label}: {exc}")
    except ValueError as exc:
        return Price.unpriced(f"genai-prices cannot price the usage reported for {label}: {exc}")
    return Price(usd=calculation.total_price)


def estimate_usd(
    model_id: str,
    input_tokens: int,
    output_tokens: int,
    *,
    at: datetime | None = None,
    processing: str | None = None,
) -> Decimal | None:
    """Estimate a request's cost before it is made (no prompt caching assumed).

    Args:
        model_id: A configured ``provider:model`` id, or ``offline``.
        input_tokens: Expected input tokens.
        output_tokens: Expected output tokens.
        at: When the request is made, for time-dependent prices; now when omitted.
        processing: ``"batch"`` for provider batch prices (genai-prices' batch variants, typically half).

    Returns:
        The estimate in USD (0 for ``offline``), or ``None`` when genai-prices has no price for the model.

    Raises:
        ConfigError: ``model_id`` is not written ``provider:model``.
    """
    if is_offline(model_id):
        return _ZERO
    ref = parse_model_id(model_id)
    from genai_prices import Usage, calc_price  # noqa: PLC0415  (loads the price data; kept off --help)

    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    try:
        calculation = calc_price(
            usage,
            ref.name,
            provider_id=ref.provider,
            genai_request_timestamp=at,
            price_context={"processing": processing} if processing else None,
        )
    except (LookupError, ValueError):
        return None
    return calculation.total_price
