"""Cost: genai-prices pricing of responses, the run ledger, estimates and budget reservations."""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from genai_prices import calc_price, wait_prices_updated_sync
from genai_prices.data_snapshot import get_snapshot, set_custom_snapshot
from inline_snapshot import snapshot
from pydantic_ai.messages import ModelResponse, TextPart
from pydantic_ai.usage import RequestUsage

from service_ambitions.context import build_context
from service_ambitions.engine.engine import ProcessingEngine
from service_ambitions.errors import ConfigError
from service_ambitions.llm.cost import (
    OFFLINE_PRICE,
    CostLedger,
    Price,
    estimate_usd,
    price_response,
)
from service_ambitions.settings import load_settings
from tests.conftest import service, write_jsonl

WHEN = datetime(2025, 11, 1, 12, tzinfo=UTC)
KNOWN = (
    ("openai", "gpt-5-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("google", "gemini-2.5-flash"),
)
STAGES = ("descriptions", "features", "mapping")


@pytest.fixture(autouse=True)
def bundled_prices_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Price from the data shipped with genai-prices: no updater running, no custom snapshot, no sockets."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("pricing must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    set_custom_snapshot(None)
    assert wait_prices_updated_sync(timeout=0) is False  # no background UpdatePrices is started
    yield
    assert get_snapshot().from_auto_update is False


def response(
    provider: str | None,
    model: str | None,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    **usage: Any,
) -> ModelResponse:
    return ModelResponse(
        parts=[TextPart("{}")],
        usage=RequestUsage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_tokens,
            **usage,
        ),
        model_name=model,
        provider_name=provider,
        timestamp=WHEN,
    )


def scripted_responses(count: int) -> list[tuple[str, str, ModelResponse]]:
    """(stage, service_id, response) for ``count`` requests spread over the known models."""
    rng = random.Random(20251101)
    calls = []
    for index in range(count):
        provider, model = KNOWN[index % len(KNOWN)]
        input_tokens = rng.randrange(800, 12_000)
        cache_read = rng.choice((0, 0, input_tokens // 2, input_tokens - 64))
        output_tokens = rng.randrange(150, 3_000)
        calls.append(
            (
                STAGES[index % len(STAGES)],
                f"svc-{index % 7}",
                response(provider, model, input_tokens, output_tokens, cache_read),
            )
        )
    # Past Anthropic's 200k-token tier, and a dated model name as providers echo it back.
    calls.append(("mapping", "svc-big", response("anthropic", "claude-sonnet-4-5", 240_000, 2_000, 10_000)))
    calls.append(("features", "svc-1", response("openai", "gpt-5-mini-2025-08-07", 5_000, 800)))
    return calls


def record(ledger: CostLedger, stage: str, service_id: str, item: ModelResponse) -> Price:
    model_id = f"{item.provider_name}:{item.model_name}" if item.provider_name else str(item.model_name)
    price = price_response(item, model_id)
    ledger.record(stage, model_id, service_id, price, item.usage.input_tokens, item.usage.output_tokens)
    return price


def test_cost_matches_genai_prices() -> None:
    ledger = CostLedger()
    calls = scripted_responses(36)
    expected = Decimal(0)
    for stage, service_id, item in calls:
        price = record(ledger, stage, service_id, item)
        assert price.priced
        assert item.model_name is not None
        # Computed independently of cost.py, straight from genai-prices.
        calculation = calc_price(
            item.usage,
            model_ref=item.model_name,
            provider_id=item.provider_name,
            genai_request_timestamp=item.timestamp,
        )
        assert calculation.auto_update_timestamp is None  # bundled data, not a download
        expected += calculation.total_price

    unknown = response("nowhere", "made-up-model-9", 4_000, 900)
    unknown_price = record(ledger, "features", "svc-0", unknown)
    offline = response(None, "offline", 3_000, 700)
    offline_price = record(ledger, "descriptions", "svc-0", offline)

    assert expected > Decimal("0.01")
    relative_error = abs(ledger.total_usd - expected) / expected
    assert relative_error <= Decimal("0.02"), (ledger.total_usd, expected)

    assert unknown_price.usd is None
    assert unknown_price.reason is not None
    assert "nowhere:made-up-model-9" in unknown_price.reason
    assert ledger.unpriced_calls == 1
    assert ledger.unpriced_models == {"nowhere:made-up-model-9"}
    assert offline_price == OFFLINE_PRICE
    assert offline_price.usd == 0
    assert offline_price.synthetic

    summary = ledger.snapshot()
    assert summary["calls"] == len(calls) + 2
    assert summary["complete"] is False
    assert summary["by_model"]["nowhere:made-up-model-9"]["usd"] is None  # unpriced, not 0
    assert summary["by_model"]["offline"]["usd"] == "0.000000"
    assert Decimal(summary["total_usd"]) == ledger.total_usd.quantize(Decimal("0.000001"))
    for breakdown in ("by_model", "by_stage", "by_service"):
        parts = sum(Decimal(entry["usd"] or 0) for entry in summary[breakdown].values())
        assert abs(parts - ledger.total_usd) <= Decimal("0.000001") * len(summary[breakdown])
    assert set(summary["by_stage"]) == set(STAGES)
    assert summary["by_service"]["svc-big"]["input_tokens"] == 240_000


def test_unknown_model_is_unpriced_not_zero() -> None:
    price = price_response(response("nowhere", "made-up-model-9", 1_000, 100), "nowhere:made-up-model-9")
    assert price.usd is None
    assert not price.priced
    assert price.reason == snapshot(
        "genai-prices has no price for nowhere:made-up-model-9: Unable to find provider provider_id='nowhere'"
    )
    known_provider = price_response(response("openai", "made-up-model-9", 1_000, 100), "openai:x")
    assert known_provider.usd is None
    assert estimate_usd("nowhere:made-up-model-9", 1_000, 100) is None
    assert estimate_usd("openai:made-up-model-9", 1_000, 100) is None


def test_offline_costs_exactly_zero() -> None:
    ledger = CostLedger()
    price = price_response(response(None, "offline", 5_000, 2_000), "offline")
    ledger.record("features", "offline", "svc-1", price, 5_000, 2_000)
    assert price == Price(usd=Decimal(0), synthetic=True)
    assert ledger.total_usd == 0
    assert ledger.unpriced_calls == 0
    assert ledger.snapshot()["synthetic_calls"] == 1
    assert ledger.snapshot()["complete"] is True
    assert estimate_usd("offline", 5_000, 2_000) == 0


def test_reported_cost_takes_precedence() -> None:
    item = response("openai", "gpt-5-mini", 1_000, 100, cost=Decimal("0.4242"))
    assert price_response(item, "openai:gpt-5-mini").usd == Decimal("0.4242")


def test_response_without_model_name_is_priced_as_configured() -> None:
    named = price_response(response("openai", "gpt-5-mini", 2_000, 300), "openai:gpt-5-mini")
    unnamed = price_response(response(None, None, 2_000, 300), "openai:gpt-5-mini")
    assert named.usd is not None
    assert unnamed.usd == named.usd
    with pytest.raises(ConfigError):
        price_response(response(None, None, 2_000, 300), "gpt-5-mini")


def test_unpriceable_usage_is_unpriced() -> None:
    omitted = price_response(
        response("openai", "gpt-5-mini", 0, 0, unmeasured_requests=1), "openai:gpt-5-mini"
    )
    assert omitted.usd is None
    assert omitted.reason == "the provider reported no usage for openai:gpt-5-mini"
    impossible = price_response(response("openai", "gpt-5-mini", 10, 5, cache_read_tokens=20), "openai:x")
    assert impossible.usd is None
    assert impossible.reason is not None
    assert impossible.reason.startswith("genai-prices cannot price the usage")


@pytest.mark.parametrize(
    ("model_id", "provider", "model"),
    [
        ("openai:gpt-5-mini", "openai", "gpt-5-mini"),
        ("anthropic:claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
        ("google-gla:gemini-2.5-flash", "google", "gemini-2.5-flash"),
    ],
)
def test_estimate_matches_genai_prices(model_id: str, provider: str, model: str) -> None:
    estimate = estimate_usd(model_id, 20_000, 4_000, at=WHEN)
    priced = price_response(response(provider, model, 20_000, 4_000), model_id)
    assert estimate is not None
    assert estimate > 0
    assert estimate == priced.usd


def test_price_is_either_an_amount_or_a_reason() -> None:
    with pytest.raises(ValueError, match="either an amount or a reason"):
        Price(usd=None)
    with pytest.raises(ValueError, match="either an amount or a reason"):
        Price(usd=Decimal(1), reason="why")
    with pytest.raises(ValueError):
        Price(usd=None, reason=None, synthetic=True)


def test_reservations_count_as_in_flight_until_settled() -> None:
    ledger = CostLedger()
    ledger.record("features", "openai:gpt-5-mini", "svc-0", Price(usd=Decimal("0.30")), 10, 10)
    loose = ledger.reserve(Decimal("0.50"))
    held = ledger.reserve(Decimal("0.40"), service_id="svc-1")
    assert ledger.in_flight_usd == Decimal("0.90")
    assert ledger.committed_usd == Decimal("1.20")
    assert not ledger.would_exceed(Decimal("1.20"))
    assert ledger.would_exceed(Decimal("1.20"), Decimal("0.01"))

    # Spend for the reserved service replaces its estimate; spend elsewhere adds to it.
    ledger.record("features", "openai:gpt-5-mini", "svc-1", Price(usd=Decimal("0.15")), 10, 10)
    assert held.outstanding == Decimal("0.25")
    assert ledger.total_usd == Decimal("0.45")
    assert ledger.in_flight_usd == Decimal("0.75")
    assert ledger.committed_usd == Decimal("1.20")
    ledger.record("features", "openai:gpt-5-mini", "svc-2", Price(usd=Decimal("0.05")), 10, 10)
    assert ledger.committed_usd == Decimal("1.25")

    # Beyond its estimate the hold is used up, never negative; unpriced spend leaves it alone.
    ledger.record("mapping", "openai:gpt-5-mini", "svc-1", Price(usd=Decimal("0.35")), 10, 10)
    ledger.record("mapping", "nowhere:x", "svc-1", Price.unpriced("unknown"), 10, 10)
    assert held.outstanding == 0
    assert ledger.in_flight_usd == Decimal("0.50")
    assert ledger.committed_usd == Decimal("1.35")

    held.settle(Decimal("0.50"))
    loose.settle(None)
    assert ledger.in_flight_usd == 0
    assert ledger.committed_usd == ledger.total_usd == Decimal("0.85")
    assert ledger.snapshot()["reservations"] == snapshot(
        {
            "open": 0,
            "settled": 2,
            "settled_estimate_usd": "0.900000",
            "settled_actual_usd": "0.500000",
            "settled_actual_unknown": 1,
        }
    )
    with pytest.raises(RuntimeError, match="already settled"):
        held.settle(None)
    with pytest.raises(ValueError, match="negative"):
        ledger.reserve(Decimal("-0.01"))


def test_settling_early_releases_the_rest_of_the_estimate() -> None:
    ledger = CostLedger()
    first = ledger.reserve(Decimal("1"), service_id="svc-1")
    second = ledger.reserve(Decimal("2"), service_id="svc-1")
    ledger.record("features", "m", "svc-1", Price(usd=Decimal("0.25")), 1, 1)
    assert first.outstanding == Decimal("0.75")
    assert second.outstanding == Decimal("2")
    first.settle(Decimal("0.25"))
    assert ledger.in_flight_usd == Decimal("2")
    ledger.record("features", "m", "svc-1", Price(usd=Decimal("0.5")), 1, 1)
    assert second.outstanding == Decimal("1.5")
    second.settle(Decimal("0.5"))
    assert ledger.in_flight_usd == 0
    assert ledger.committed_usd == Decimal("0.75")


def test_snapshot_shape() -> None:
    ledger = CostLedger()
    ledger.record("descriptions", "openai:gpt-5-mini", "svc-1", Price(usd=Decimal("0.0012344")), 1_000, 200)
    ledger.record("features", "openai:gpt-5-mini", "svc-1", Price(usd=Decimal("0.0000006")), 10, 2)
    ledger.record("features", "nowhere:made-up-model-9", "svc-2", Price.unpriced("no price"), 500, 50)
    ledger.record("mapping", "offline", "svc-2", OFFLINE_PRICE, 300, 30)
    ledger.reserve(Decimal("0.25"), service_id="svc-3")
    summary = ledger.snapshot()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["prices"].startswith("genai-prices ")
    del summary["prices"]
    assert summary == snapshot(
        {
            "currency": "USD",
            "total_usd": "0.001235",
            "complete": False,
            "calls": 4,
            "unpriced_calls": 1,
            "synthetic_calls": 1,
            "unpriced_models": {"nowhere:made-up-model-9": "no price"},
            "input_tokens": 1810,
            "output_tokens": 282,
            "in_flight_usd": "0.250000",
            "reservations": {
                "open": 1,
                "settled": 0,
                "settled_estimate_usd": "0.000000",
                "settled_actual_usd": "0.000000",
                "settled_actual_unknown": 0,
            },
            "by_model": {
                "nowhere:made-up-model-9": {
                    "calls": 1,
                    "unpriced_calls": 1,
                    "input_tokens": 500,
                    "output_tokens": 50,
                    "usd": None,
                },
                "offline": {
                    "calls": 1,
                    "unpriced_calls": 0,
                    "input_tokens": 300,
                    "output_tokens": 30,
                    "usd": "0.000000",
                },
                "openai:gpt-5-mini": {
                    "calls": 2,
                    "unpriced_calls": 0,
                    "input_tokens": 1010,
                    "output_tokens": 202,
                    "usd": "0.001235",
                },
            },
            "by_stage": {
                "descriptions": {
                    "calls": 1,
                    "unpriced_calls": 0,
                    "input_tokens": 1000,
                    "output_tokens": 200,
                    "usd": "0.001234",
                },
                "features": {
                    "calls": 2,
                    "unpriced_calls": 1,
                    "input_tokens": 510,
                    "output_tokens": 52,
                    "usd": "0.000001",
                },
                "mapping": {
                    "calls": 1,
                    "unpriced_calls": 0,
                    "input_tokens": 300,
                    "output_tokens": 30,
                    "usd": "0.000000",
                },
            },
            "by_service": {
                "svc-1": {
                    "calls": 2,
                    "unpriced_calls": 0,
                    "input_tokens": 1010,
                    "output_tokens": 202,
                    "usd": "0.001235",
                },
                "svc-2": {
                    "calls": 2,
                    "unpriced_calls": 1,
                    "input_tokens": 800,
                    "output_tokens": 80,
                    "usd": "0.000000",
                },
            },
        }
    )
    assert ledger.by_model["openai:gpt-5-mini"].usd == Decimal("0.0012350")
    assert ledger.total_usd == Decimal("0.0012350")


async def test_budget_enforce_stops_admission(isolated: Path) -> None:
    write_jsonl(isolated / "in.jsonl", [service(f"S{i}") for i in range(6)])

    async def run(budget: float, *, resume: bool) -> tuple[Any, Any]:
        settings = load_settings(
            None,
            {
                "model": "offline",
                "offline": {"usd_per_million_tokens": 100},
                "run_budget_usd": budget,
                "budget_mode": "enforce",
                "concurrency": 1,
                "cache_mode": "off",  # cached answers cost nothing, so the budget would never bind
            },
        )
        context = build_context(settings)
        try:
            report = await ProcessingEngine(context).run(
                isolated / "in.jsonl", isolated / "out.jsonl", resume=resume
            )
        finally:
            context.close()
        return report, context.gateway.ledger

    probe, ledger = await run(1_000_000, resume=False)
    per_service = ledger.total_usd / 6
    assert per_service > 0
    (isolated / "out.jsonl").unlink()
    budget = float(per_service * Decimal("2.5"))
    report, ledger = await run(budget, resume=False)
    assert report.budget_exhausted
    assert report.services_ok == 2  # a third would pass the budget
    assert ledger.total_usd <= Decimal(str(budget))
    assert len((isolated / "out.jsonl").read_text().splitlines()) == 1 + 2
    resumed, _ = await run(budget * 10, resume=True)
    assert not resumed.budget_exhausted
    assert len((isolated / "out.jsonl").read_text().splitlines()) == 1 + 6
    del probe
