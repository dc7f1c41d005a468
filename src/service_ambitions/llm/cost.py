"""What a run's model calls cost, priced with genai-prices, and the budget's view of it.

Each response is priced by ``llm/pricing.py`` (genai-prices only; its names are importable from here
too). The ledger counts calls, tokens and spend by model, stage and service, cached input tokens too
(``SpendTotals.cache_read_tokens``), for the run summary's prompt-cache hit rates.

A model genai-prices does not know is *unpriced* (``usd is None``), never priced at 0: its calls are
counted and named, and totals are a lower bound while any exist. The ``offline`` model costs exactly 0
and is marked synthetic.

The budget check is ``spent + in flight``: :meth:`CostLedger.reserve` holds an estimate while a
service runs, spend recorded for that service draws the hold down, and ``settle`` releases it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from types import MappingProxyType
from typing import Any

from service_ambitions.llm.pricing import OFFLINE_PRICE, Price, estimate_usd, price_response

__all__ = [
    "OFFLINE_PRICE",
    "CostLedger",
    "Price",
    "Reservation",
    "SpendTotals",
    "estimate_usd",
    "price_response",
]

log = logging.getLogger("service_ambitions.cost")
_ZERO = Decimal(0)
_MICRO = Decimal("0.000001")


def _usd(amount: Decimal) -> str:
    return str(amount.quantize(_MICRO, rounding=ROUND_HALF_EVEN))


@dataclass
class SpendTotals:
    """Calls, tokens and spend under one key (a model, a stage or a service)."""

    calls: int = 0
    unpriced_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: Decimal = _ZERO
    """Spend of the priced calls: a lower bound while ``unpriced_calls`` is non-zero."""
    cache_read_tokens: int = 0
    """Input tokens served from the provider's prompt cache (included in ``input_tokens``)."""
    cache_write_tokens: int = 0
    """Input tokens written to the provider's prompt cache (included in ``input_tokens``)."""

    def add(
        self,
        price: Price,
        input_tokens: int,
        output_tokens: int,
        *,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> None:
        """Count one call."""
        self.calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cache_read_tokens += cache_read_tokens
        self.cache_write_tokens += cache_write_tokens
        if price.usd is None:
            self.unpriced_calls += 1
        else:
            self.usd += price.usd

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``usd`` is ``None`` when no call under this key could be priced."""
        priced = self.calls > self.unpriced_calls or self.calls == 0
        return {
            "calls": self.calls,
            "unpriced_calls": self.unpriced_calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "usd": _usd(self.usd) if priced else None,
        }


@dataclass(eq=False)
class Reservation:
    """An estimate held against the budget while a service is in flight."""

    amount: Decimal
    service_id: str | None
    _ledger: CostLedger = field(repr=False)
    charged: Decimal = _ZERO
    """Spend recorded for ``service_id`` since the reservation was made."""
    settled: bool = False

    @property
    def outstanding(self) -> Decimal:
        """What still counts as in flight: the estimate less the spend already recorded, never below 0."""
        return _ZERO if self.settled else max(self.amount - self.charged, _ZERO)

    def settle(self, actual: Decimal | None) -> None:
        """Release the hold once the service has finished (or failed, or been cancelled).

        Args:
            actual: What the service really cost, for the estimate-accuracy figures; ``None`` when
                unknown. Spend itself is counted by :meth:`CostLedger.record`, never here.

        Raises:
            RuntimeError: The reservation was already settled.
        """
        if self.settled:
            raise RuntimeError("this reservation is already settled")
        self.settled = True
        self._ledger._release(self, actual)


class CostLedger:
    """Spend of one run, by model, stage and service, plus the estimates held for work in flight."""

    def __init__(self) -> None:
        """Start an empty ledger."""
        self.total = SpendTotals()
        self.synthetic_calls = 0
        self._by_model: dict[str, SpendTotals] = {}
        self._by_stage: dict[str, SpendTotals] = {}
        self._by_service: dict[str, SpendTotals] = {}
        self._unpriced_models: dict[str, str] = {}
        self._open: dict[str, list[Reservation]] = {}
        self._open_count = 0
        self._in_flight = _ZERO
        self._settled = 0
        self._settled_estimated = _ZERO
        self._settled_actual = _ZERO
        self._settled_unknown = 0

    # spend ------------------------------------------------------------------------------------
    def record(
        self,
        stage: str,
        model: str,
        service_id: str,
        price: Price,
        input_tokens: int,
        output_tokens: int,
        *,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> None:
        """Count one model response.

        Args:
            stage: The pipeline stage that made the request.
            model: The model that answered (``provider:model``).
            service_id: The service the request was for.
            price: Its price (see :func:`price_response`).
            input_tokens: Input tokens of the request (cached ones included).
            output_tokens: Output tokens of the request.
            cache_read_tokens: Input tokens served from the provider's prompt cache.
            cache_write_tokens: Input tokens written to the provider's prompt cache.
        """
        cached = {"cache_read_tokens": cache_read_tokens, "cache_write_tokens": cache_write_tokens}
        for totals, key in ((self._by_model, model), (self._by_stage, stage), (self._by_service, service_id)):
            bucket = totals.get(key)
            if bucket is None:
                bucket = totals[key] = SpendTotals()
            bucket.add(price, input_tokens, output_tokens, **cached)
        self.total.add(price, input_tokens, output_tokens, **cached)
        if price.synthetic:
            self.synthetic_calls += 1
        if price.usd is None:
            if model not in self._unpriced_models:
                self._unpriced_models[model] = price.reason or ""
                log.warning(
                    "no price for %s (%s); its calls are left out of the spend total", model, price.reason
                )
        elif price.usd and service_id in self._open:
            # Spend for a reserved service replaces that much of its estimate in the in-flight figure.
            held = self._open[service_id][0]
            before = held.outstanding
            held.charged += price.usd
            self._in_flight -= before - held.outstanding

    @property
    def total_usd(self) -> Decimal:
        """Spend of all priced calls so far (a lower bound while ``unpriced_calls`` is non-zero)."""
        return self.total.usd

    @property
    def unpriced_calls(self) -> int:
        """Calls whose cost is unknown."""
        return self.total.unpriced_calls

    @property
    def unpriced_models(self) -> frozenset[str]:
        """Models that answered but could not be priced."""
        return frozenset(self._unpriced_models)

    @property
    def by_model(self) -> Mapping[str, SpendTotals]:
        """Totals per model that answered."""
        return MappingProxyType(self._by_model)

    @property
    def by_stage(self) -> Mapping[str, SpendTotals]:
        """Totals per stage."""
        return MappingProxyType(self._by_stage)

    @property
    def by_service(self) -> Mapping[str, SpendTotals]:
        """Totals per service."""
        return MappingProxyType(self._by_service)

    # budget -----------------------------------------------------------------------------------
    def reserve(self, amount: Decimal, *, service_id: str | None = None) -> Reservation:
        """Hold an estimate against the budget until it is settled.

        Args:
            amount: The estimated cost in USD.
            service_id: The service the estimate is for. Spend later recorded for this service draws
                the hold down, so it is not counted twice; without it the whole estimate stays in
                flight until settled.

        Raises:
            ValueError: ``amount`` is negative.
        """
        if amount < 0:
            raise ValueError(f"cannot reserve a negative amount ({amount})")
        reservation = Reservation(amount=amount, service_id=service_id, _ledger=self)
        if service_id is not None:
            self._open.setdefault(service_id, []).append(reservation)
        self._open_count += 1
        self._in_flight += amount
        return reservation

    def _release(self, reservation: Reservation, actual: Decimal | None) -> None:
        self._in_flight -= max(reservation.amount - reservation.charged, _ZERO)
        self._open_count -= 1
        if reservation.service_id is not None:
            held = self._open[reservation.service_id]
            held.remove(reservation)
            if not held:
                del self._open[reservation.service_id]
        self._settled += 1
        self._settled_estimated += reservation.amount
        if actual is None:
            self._settled_unknown += 1
        else:
            self._settled_actual += actual

    @property
    def in_flight_usd(self) -> Decimal:
        """Estimates still held for work in flight."""
        return self._in_flight

    @property
    def committed_usd(self) -> Decimal:
        """Spent plus in flight: what the budget is checked against."""
        return self.total_usd + self._in_flight

    def would_exceed(self, budget_usd: Decimal, estimate: Decimal = _ZERO) -> bool:
        """Whether admitting work estimated at ``estimate`` would take the committed spend past the budget."""
        return self.committed_usd + estimate > budget_usd

    # report -----------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The ledger as JSON-ready data for the run summary (amounts are USD strings, 6 decimals)."""
        from genai_prices import __version__ as genai_prices_version  # noqa: PLC0415

        total = self.total.as_dict()
        return {
            "currency": "USD",
            "total_usd": total["usd"],
            "complete": self.unpriced_calls == 0,
            "calls": self.total.calls,
            "unpriced_calls": self.unpriced_calls,
            "synthetic_calls": self.synthetic_calls,
            "unpriced_models": dict(sorted(self._unpriced_models.items())),
            "input_tokens": self.total.input_tokens,
            "output_tokens": self.total.output_tokens,
            "in_flight_usd": _usd(self._in_flight),
            "reservations": {
                "open": self._open_count,
                "settled": self._settled,
                "settled_estimate_usd": _usd(self._settled_estimated),
                "settled_actual_usd": _usd(self._settled_actual),
                "settled_actual_unknown": self._settled_unknown,
            },
            "by_model": {key: value.as_dict() for key, value in sorted(self._by_model.items())},
            "by_stage": {key: value.as_dict() for key, value in sorted(self._by_stage.items())},
            "by_service": {key: value.as_dict() for key, value in sorted(self._by_service.items())},
            "prices": f"genai-prices {genai_prices_version}",
        }
