"""Rate limits: provider headers, admission per HTTP attempt, 429 pauses, learning and the remaining budget.

Admission is simulated on the virtual clock (minutes of traffic in milliseconds) through the gateway's own
stacks; the HTTP path runs against the local fake OpenAI server, checked with the server's request log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai.exceptions import ModelHTTPError, ModelRateLimitError, ModelUnavailableError
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
from pydantic_ai.models import Model, override_allow_model_requests
from pydantic_ai.models.fallback import FallbackModel
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.models.wrapper import WrapperModel

from service_ambitions.errors import ModelCallError
from service_ambitions.llm.gateway import Gateway
from service_ambitions.llm.limiter import RateLimiter, VirtualClock
from service_ambitions.llm.ratelimits import (
    DEFAULT_429_PAUSE,
    PROBE_WINDOW,
    HeaderLimits,
    ModelLimits,
    parse_duration,
    parse_rate_limit_headers,
)
from service_ambitions.settings import load_settings
from service_ambitions.store.cache import ResponseCache
from service_ambitions.testing.openai_server import Behaviour, FakeOpenAIServer

MINUTE = 60.0
KEY = "sk-test-rate-limits-0123456789"
MODEL = "openai-chat:gpt-5-mini"


def max_in_window(times: list[float]) -> int:
    """Most events in any sliding 60 s window ``(t - 60, t]``, judged like the limiter's ledger."""
    times = sorted(times)
    best = first = 0
    for last, end in enumerate(times):
        while times[first] + MINUTE <= end:
            first += 1
        best = max(best, last - first + 1)
    return best


# --- 1. header parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("1m30s", 90.0),
        ("0.5", 0.5),
        ("2", 2.0),
        (" 7s ", 7.0),
    ],
)
def test_openai_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "s", "1s2", "-1", "-1s", "inf", "nan", "1e400"])
def test_junk_durations_are_none(text: str) -> None:
    assert parse_duration(text) is None


def test_openai_headers() -> None:
    limits = parse_rate_limit_headers(
        {
            "X-RateLimit-Limit-Requests": "500",
            "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-remaining-tokens": "199000",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-reset-tokens": "6m0s",
            "content-type": "application/json",
        }
    )
    assert limits == HeaderLimits(
        rpm=500,
        tpm=200_000,
        remaining_requests=499,
        remaining_tokens=199_000,
        reset_requests=0.12,
        reset_tokens=360.0,
    )
    assert limits.any


def test_anthropic_headers_with_rfc3339_resets() -> None:
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2026-12-01T12:00:01.5Z",
        "anthropic-ratelimit-tokens-limit": "38000",
        "anthropic-ratelimit-tokens-remaining": "37000",
        "anthropic-ratelimit-tokens-reset": "2026-12-01T12:00:06+00:00",
        "anthropic-ratelimit-input-tokens-limit": "30000",
        "anthropic-ratelimit-input-tokens-remaining": "29500",
        "anthropic-ratelimit-input-tokens-reset": "2026-12-01T12:00:02Z",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "7500",
        "anthropic-ratelimit-output-tokens-reset": "2026-12-01T12:00:03.123456789Z",
    }
    limits = parse_rate_limit_headers(headers, now=now)
    # tokens-* is Anthropic's most restrictive token limit in effect: it is the one admission uses.
    assert (limits.rpm, limits.remaining_requests, limits.reset_requests) == (50, 49, 1.5)
    assert (limits.tpm, limits.remaining_tokens, limits.reset_tokens) == (38_000, 37_000, 6.0)
    assert (limits.input_tpm, limits.output_tpm) == (30_000, 8_000)
    # A reset already past is "now", not negative.
    past = parse_rate_limit_headers({"anthropic-ratelimit-requests-reset": "2026-12-01T11:00:00Z"}, now=now)
    assert past.reset_requests == 0.0


def test_anthropic_without_combined_tokens_uses_the_tighter_of_input_and_output() -> None:
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    headers = {
        "anthropic-ratelimit-input-tokens-limit": "30000",
        "anthropic-ratelimit-input-tokens-remaining": "29000",
        "anthropic-ratelimit-input-tokens-reset": "2026-12-01T12:00:02Z",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "100",
        "anthropic-ratelimit-output-tokens-reset": "2026-12-01T12:00:09Z",
    }
    limits = parse_rate_limit_headers(headers, now=now)
    assert (limits.tpm, limits.remaining_tokens, limits.reset_tokens) == (8_000, 100, 9.0)
    only_input = {key: value for key, value in headers.items() if "output" not in key}
    assert parse_rate_limit_headers(only_input, now=now).tpm == 30_000


def test_retry_after_in_seconds_http_date_and_milliseconds() -> None:
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    http_date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_rate_limit_headers({"Retry-After": "7"}, now=now).retry_after == 7.0
    assert parse_rate_limit_headers({"retry-after": http_date}, now=now).retry_after == 30.0
    both = {"retry-after": "2", "retry-after-ms": "1500"}
    assert parse_rate_limit_headers(both, now=now).retry_after == 1.5  # the precise one wins
    junk_ms = {"retry-after": "2", "retry-after-ms": "soon"}
    assert parse_rate_limit_headers(junk_ms, now=now).retry_after == 2.0


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-limit-requests": "lots"},
        {"x-ratelimit-limit-requests": "-5"},
        {"x-ratelimit-limit-requests": "inf"},  # int(float("inf")) raises OverflowError
        {"x-ratelimit-limit-requests": "nan"},
        {"x-ratelimit-remaining-tokens": "1e400"},
        {"x-ratelimit-reset-requests": "whenever"},
        {"retry-after": "soon"},
        {"retry-after": "-3"},
        {"retry-after-ms": "inf"},
        {"anthropic-ratelimit-requests-reset": "2026-13-45T99:00:00Z"},
        {"x-request-id": "req_123"},
    ],
)
def test_junk_header_values_are_ignored(headers: dict[str, str]) -> None:
    limits = parse_rate_limit_headers(headers)
    assert limits == HeaderLimits()
    assert not limits.any


# --- 2. admission order, on the virtual clock -----------------------------------------------------


class Echo(BaseModel):
    value: int


def answer(info: AgentInfo, name: str) -> ModelResponse:
    return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"value": 1})], model_name=name)


def slow_then_fast(clock: VirtualClock, arrivals: list[float]) -> FunctionModel:
    """A provider that takes 200 s per answer for its first 3 minutes, then 0.5 s."""

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        arrivals.append(clock.now())
        await asyncio.sleep(200.0 if clock.now() < 180.0 else 0.5)  # follows the virtual clock's loop
        return answer(info, "slow")

    return FunctionModel(respond, model_name="slow")


def virtual_gateway(tmp: Path, clock: VirtualClock, models: dict[str, Model], **overrides: Any) -> Gateway:
    settings = load_settings(None, {"cache_mode": "off", **overrides})
    return Gateway(
        settings,
        system_prompt="S",
        cache=ResponseCache(tmp / "c", mode="off"),
        models=models,
        clock=clock,
    )


def run_calls(clock: VirtualClock, gateway: Gateway, calls: int) -> None:
    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(calls):
                group.create_task(
                    gateway.call(
                        stage="features", service_id=f"S{index}", user_prompt=str(index), output_type=Echo
                    )
                )

    clock.run(main())


def old_order(clock: VirtualClock, calls: int, slots: int, latency: Callable[[float], float]) -> list[float]:
    """The order before issue 15: rate permit first, then the concurrency slot (for the comparison)."""
    limiter = RateLimiter(60, None, clock=clock)
    semaphore = asyncio.Semaphore(slots)
    sent: list[float] = []

    async def call() -> None:
        await limiter.acquire(1)
        async with semaphore:
            sent.append(clock.now())
            await asyncio.sleep(latency(clock.now()))

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(calls):
                group.create_task(call())

    clock.run(main())
    return sent


@pytest.mark.parametrize("slots", [16, 256])
def test_a_provider_slow_then_fast_never_gets_more_than_its_limit_in_a_minute(
    tmp_path: Path, slots: int
) -> None:
    """Slot first, permit last: no sliding minute at the provider goes over rpm 60.

    Why the old order failed: permits were taken *before* waiting for a concurrency slot. While the
    provider was slow, every slot was held by a request that would take 200 s, yet the limiter went on
    handing out one permit a second to callers that then queued for a slot. When the slow answers came
    back at about 180-200 s, all those callers, each holding a permit minutes old, went through the
    freed slots at once: with 16 slots, 200+ requests reached the provider within one minute at rpm 60
    (``old_order`` below re-runs that order on the same clock). Taking the permit last, immediately
    before the request leaves, ties every permit to a send at that moment, so the limiter's own
    60 s ledger is what the provider sees. With 256 slots the slow phase never exhausts the slots
    (about 180 requests in flight), so the old order held too; the new order must hold for both.
    """
    clock = VirtualClock()
    arrivals: list[float] = []
    gateway = virtual_gateway(
        tmp_path,
        clock,
        {"test:slow": slow_then_fast(clock, arrivals)},
        model="test:slow",
        llm_concurrency=slots,
        models_rate_limits={"test:slow": {"rpm": 60}},
    )
    run_calls(clock, gateway, 400)
    assert len(arrivals) == 400
    assert max_in_window(arrivals) <= 60
    # The limiter is not idle meanwhile: it sends about one a second from the start (the provider is
    # never asked to probe: a model without HTTP headers has nothing to teach).
    assert sum(1 for at in arrivals if at < 180.0) >= min(slots, 170)
    assert gateway.limits_for("test:slow").limiter.admitted == 400

    if slots == 16:  # the same scenario in the old order exceeds the limit: the check above can fail
        before = old_order(VirtualClock(), 400, slots, lambda now: 200.0 if now < 180.0 else 0.5)
        assert max_in_window(before) > 200


def test_a_fallback_is_admitted_under_its_own_limits_and_cap(tmp_path: Path) -> None:
    clock = VirtualClock()
    primary_sent: list[float] = []
    backup_sent: list[float] = []
    active = {"now": 0, "peak": 0}

    async def unavailable(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        primary_sent.append(clock.now())
        raise ModelHTTPError.for_category(ModelUnavailableError, status_code=503, model_name="primary")

    async def backup(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        backup_sent.append(clock.now())
        active["now"] += 1
        active["peak"] = max(active["peak"], active["now"])
        await asyncio.sleep(3.0)
        active["now"] -= 1
        return answer(info, "backup")

    gateway = virtual_gateway(
        tmp_path,
        clock,
        {
            "test:primary": FunctionModel(unavailable, model_name="primary"),
            "test:backup": FunctionModel(backup, model_name="backup"),
        },
        model="test:primary",
        model_fallbacks={"features": ["test:backup"]},
        models_rate_limits={"test:primary": {"rpm": 600}, "test:backup": {"rpm": 30, "concurrency": 2}},
    )
    assert isinstance(gateway.stage_model("features"), FallbackModel)
    run_calls(clock, gateway, 90)
    assert len(backup_sent) == len(primary_sent) == 90
    assert max_in_window(backup_sent) <= 30
    assert max_in_window(primary_sent) <= 600
    assert active["peak"] <= 2
    assert max(backup_sent) >= 2 * MINUTE  # 90 at 30 a minute: the backup's own limit set the pace
    assert gateway.limits_for("test:backup").limiter.admitted == 90
    assert gateway.limits_for("test:primary").limiter.admitted == 90
    assert gateway.limits_for("test:primary").throttled_429 == 0  # 503s are not rate limits
    assert gateway.stats.fallbacks == 90


def test_a_rate_limit_error_pauses_the_model_that_raised_it_not_its_fallback(tmp_path: Path) -> None:
    clock = VirtualClock()
    primary_sent: list[float] = []
    backup_sent: list[float] = []

    async def limited_once(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        primary_sent.append(clock.now())
        if len(primary_sent) == 1:
            raise ModelHTTPError.for_category(
                ModelRateLimitError, status_code=429, model_name="primary", retry_after=30.0
            )
        return answer(info, "primary")

    async def backup(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        backup_sent.append(clock.now())
        return answer(info, "backup")

    gateway = virtual_gateway(
        tmp_path,
        clock,
        {
            "test:primary": FunctionModel(limited_once, model_name="primary"),
            "test:backup": FunctionModel(backup, model_name="backup"),
        },
        model="test:primary",
        model_fallbacks={"features": ["test:backup"]},
        models_rate_limits={"test:primary": {"rpm": 6000}, "test:backup": {"rpm": 6000}},
    )

    async def main() -> None:
        for index in range(2):
            await gateway.call(stage="features", service_id=f"S{index}", user_prompt="p", output_type=Echo)

    clock.run(main())
    assert backup_sent == [0.0]  # the fallback answered the first call at once: it is not paused
    assert primary_sent == [0.0, 30.0]  # the primary waited out its own retry-after
    assert gateway.limits_for("test:primary").throttled_429 == 1
    assert gateway.limits_for("test:backup").throttled_429 == 0


# --- 3. per HTTP attempt, through the real HTTP path ----------------------------------------------


class Answer(BaseModel):
    features: dict[str, Any]


def provider_model(model: Model) -> OpenAIChatModel:
    while isinstance(model, WrapperModel):
        model = model.wrapped
    assert isinstance(model, OpenAIChatModel)
    return model


async def http_calls(
    server: FakeOpenAIServer, calls: int = 1, *, max_pause: float | None = None, **overrides: Any
) -> Gateway:
    """``calls`` concurrent features calls through a Gateway over real HTTP to ``server``.

    ``max_pause`` lifts the model's 429 pause cap above the short transport wait (it is that wait).
    """
    settings = load_settings(
        None,
        {
            "model": MODEL,
            "cache_mode": "off",
            "base_url": server.base_url,
            "openai_api_key": KEY,
            # A short transport wait: any longer wait before a retry is the limiter's pause.
            "transport_retries": {"attempts": 3, "max_wait": 0.05},
            **overrides,
        },
    )
    gateway = Gateway(settings, system_prompt="S", cache=ResponseCache(Path("cache"), mode="off"))
    model = provider_model(gateway.stage_model("features"))
    if max_pause is not None:
        gateway.limits_for(MODEL).max_pause = max_pause
    try:
        with override_allow_model_requests(True):
            async with asyncio.TaskGroup() as group:
                for index in range(calls):
                    group.create_task(
                        gateway.call(
                            stage="features",
                            service_id=f"S{index}",
                            user_prompt=f"ROLES: []\nCALL: {index}",
                            output_type=Answer,
                        )
                    )
    finally:
        await model.client.close()  # its HTTP connections, before the server goes away
    assert server.errors == []
    return gateway


@pytest.mark.parametrize(("retry_after", "pause"), [(True, 1.0), (False, DEFAULT_429_PAUSE)])
async def test_a_429_pauses_the_model_before_its_own_retry(retry_after: bool, pause: float) -> None:
    with FakeOpenAIServer(Behaviour(faults=["429"], retry_after=retry_after)) as server:
        gateway = await http_calls(server, max_pause=10.0)
    first, second = server.chat_requests()
    assert (first.fault, second.fault) == ("429", "ok")
    assert first.body == second.body  # the same call, retried by the transport
    limits = gateway.limits_for(MODEL)
    assert limits.throttled_429 == 1
    assert gateway.transport_retries == 1
    # The transport waits at most 0.05 s: the rest of the wait is the pause the 429 set, applied on
    # the retry that followed it (the server stamps both with the same monotonic clock as ours).
    assert second.time - first.time >= pause - 0.05
    assert limits.limiter.admitted == 2  # the retry took its own permit


# --- 4. learning ----------------------------------------------------------------------------------


async def test_limits_are_learned_from_the_first_answer() -> None:
    with FakeOpenAIServer(Behaviour(rpm=500, tpm=2_000_000)) as server:
        gateway = await http_calls(server)
    limits = gateway.limits_for(MODEL)
    assert (limits.rpm, limits.tpm, limits.source) == (500, 2_000_000, "provider")
    assert limits.limiter.rpm == 500


async def test_a_configured_cap_below_the_provider_wins() -> None:
    with FakeOpenAIServer(Behaviour(rpm=500)) as server:
        gateway = await http_calls(server, models_rate_limits={MODEL: {"rpm": 100}})
    limits = gateway.limits_for(MODEL)
    assert (limits.rpm, limits.learned_rpm, limits.source) == (100, 500, "configured cap + provider")
    assert limits.limiter.rpm == 100


async def test_a_server_without_headers_gets_no_limit() -> None:
    with FakeOpenAIServer(Behaviour(rpm=None)) as server:
        gateway = await http_calls(server)
    limits = gateway.limits_for(MODEL)
    assert limits.observed
    assert (limits.rpm, limits.tpm, limits.source) == (None, None, "none")
    assert limits.describe() == {"rpm": None, "tpm": None, "source": "none", "throttled_429": 0}


async def test_only_a_probe_window_goes_out_before_the_first_answer() -> None:
    with FakeOpenAIServer(Behaviour(latency=0.3, rpm=10_000)) as server:
        gateway = await http_calls(server, calls=10)
    times = sorted(request.time for request in server.chat_requests())
    assert len(times) == 10
    # The first answer comes back 0.3 s after the first request: nothing beyond the probe window can
    # have been sent before it.
    assert times[PROBE_WINDOW] - times[0] >= 0.25
    assert gateway.limits_for(MODEL).rpm == 10_000


async def test_fixed_uses_only_the_configured_limits() -> None:
    with FakeOpenAIServer(Behaviour(rpm=500)) as server:
        gateway = await http_calls(server, rate_limits="fixed", models_rate_limits={MODEL: {"rpm": 100}})
    limits = gateway.limits_for(MODEL)
    assert (limits.rpm, limits.learned_rpm, limits.source) == (100, None, "configured")


async def test_off_learns_nothing_and_limits_nothing() -> None:
    with FakeOpenAIServer(Behaviour(rpm=500)) as server:
        gateway = await http_calls(server, rate_limits="off", models_rate_limits={MODEL: {"rpm": 100}})
    limits = gateway.limits_for(MODEL)
    assert (limits.rpm, limits.tpm, limits.source) == (None, None, "none")


def admit_times(limits: ModelLimits, clock: VirtualClock, count: int, *, before: float = 0.0) -> list[float]:
    """Virtual times at which ``count`` concurrent callers are admitted (each ``observe``s nothing)."""
    admitted: list[float] = []

    async def one() -> None:
        await limits.acquire(100)
        admitted.append(clock.now())

    async def main() -> None:
        await clock.sleep(before)
        async with asyncio.TaskGroup() as group:
            for _ in range(count):
                group.create_task(one())

    clock.run(main())
    return admitted


def test_probe_window_holds_until_the_first_answer_then_lets_everyone_in() -> None:
    clock = VirtualClock()
    limits = ModelLimits("openai:m", clock=clock)
    admitted: list[float] = []

    async def one() -> None:
        await limits.acquire(100)
        admitted.append(clock.now())

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(10):
                group.create_task(one())
            await clock.sleep(5.0)
            assert len(admitted) == PROBE_WINDOW
            limits.observe(200, HeaderLimits())  # a server without headers: no limit at all

    clock.run(main())
    assert admitted == [0.0] * PROBE_WINDOW + [5.0] * (10 - PROBE_WINDOW)


@pytest.mark.parametrize("mode", ["off", "fixed"])
def test_no_probe_outside_learn_mode(mode: Any) -> None:
    clock = VirtualClock()
    limits = ModelLimits("openai:m", mode=mode, clock=clock)
    assert admit_times(limits, clock, 10) == [0.0] * 10
    limits.observe(200, HeaderLimits(rpm=5))
    assert limits.rpm is None  # neither mode learns


def test_probe_slots_of_cancelled_callers_are_given_back() -> None:
    """A caller cancelled while it waits (a stage timeout) must not keep a probe slot forever."""
    clock = VirtualClock()
    limits = ModelLimits("openai:m", rpm=60, clock=clock)  # 1 a second, a bucket of 2
    admitted: list[float] = []

    async def one() -> None:
        await limits.acquire(1)
        admitted.append(clock.now())

    async def main() -> None:
        waiting = [asyncio.create_task(one()) for _ in range(PROBE_WINDOW)]
        await clock.sleep(0.5)
        assert len(admitted) == 2  # two went, two wait for the bucket
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        async with asyncio.timeout(100):  # virtual seconds: fails instead of waiting forever
            await one()

    clock.run(main())
    assert admitted[:2] == [0.0, 0.0]
    assert admitted[2] <= 2.0


def test_requests_sent_before_limits_were_known_count_against_them() -> None:
    clock = VirtualClock()
    limits = ModelLimits("openai:m", clock=clock)
    admitted: list[float] = []

    async def one() -> None:
        await limits.acquire(1)
        admitted.append(clock.now())

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(PROBE_WINDOW):
                group.create_task(one())
        await clock.sleep(1.0)
        limits.observe(200, HeaderLimits(rpm=10))  # the probe's first answer: 10 a minute
        async with asyncio.TaskGroup() as group:
            for _ in range(20):
                group.create_task(one())

    clock.run(main())
    assert len(admitted) == PROBE_WINDOW + 20
    assert max_in_window(admitted) <= 10


# --- 5. the remaining budget ----------------------------------------------------------------------


def test_an_exhausted_budget_holds_admission_until_its_reset() -> None:
    clock = VirtualClock()
    limits = ModelLimits("openai:m", clock=clock)
    limits.observe(200, HeaderLimits(remaining_requests=0, reset_requests=5.0))
    assert admit_times(limits, clock, 1) == [5.0]


def test_a_budget_is_spent_by_what_is_sent() -> None:
    clock = VirtualClock()
    limits = ModelLimits("openai:m", clock=clock)
    limits.observe(200, HeaderLimits(remaining_requests=2, reset_requests=5.0))
    assert admit_times(limits, clock, 3) == [0.0, 0.0, 5.0]


def test_a_token_budget_holds_a_request_larger_than_what_is_left() -> None:
    clock = VirtualClock()
    limits = ModelLimits("openai:m", clock=clock)
    limits.observe(200, HeaderLimits(remaining_tokens=150, reset_tokens=8.0))
    assert admit_times(limits, clock, 2) == [0.0, 8.0]  # 100 fit, the next 100 do not


def test_answers_count_the_requests_sent_after_them() -> None:
    """A header counts what the provider had seen when it received that request, not what followed."""
    clock = VirtualClock()
    limits = ModelLimits("openai:m", clock=clock)

    async def main() -> list[float]:
        first = await limits.acquire(1)
        for _ in range(2):
            await limits.acquire(1)  # two more in flight when the first one's answer arrives
        limits.observe(200, HeaderLimits(remaining_requests=2, reset_requests=30.0), first)
        await limits.acquire(1)
        return [clock.now()]

    assert clock.run(main()) == [30.0]


def test_the_budget_holds_callers_already_waiting_for_the_limiter() -> None:
    clock = VirtualClock()
    limits = ModelLimits("openai:m", rpm=60, clock=clock)  # 1 a second, a bucket of 2
    admitted: list[float] = []

    async def one() -> None:
        await limits.acquire(1)
        admitted.append(clock.now())

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(6):
                group.create_task(one())
            await clock.sleep(0.5)
            limits.observe(200, HeaderLimits(remaining_requests=0, reset_requests=30.0))

    clock.run(main())
    assert admitted[:2] == [0.0, 0.0]
    assert min(admitted[2:]) >= 30.5


def test_a_429_without_limits_pauses_admission() -> None:
    clock = VirtualClock()
    limits = ModelLimits("openai:m", clock=clock)
    limits.observe(429, HeaderLimits(retry_after=3.0))
    assert limits.throttled_429 == 1
    assert admit_times(limits, clock, 2) == [3.0, 3.0]
    assert limits.limiter.admitted == 2


def test_a_429_without_retry_after_pauses_until_the_reset_or_the_default() -> None:
    clock = VirtualClock()
    limits = ModelLimits("openai:m", mode="fixed", rpm=6000, clock=clock)
    limits.observe(429, HeaderLimits(reset_requests=4.0, reset_tokens=2.0))
    assert admit_times(limits, clock, 1) == [4.0]
    limits.observe(429, HeaderLimits())
    assert admit_times(limits, clock, 1, before=0.0) == [4.0 + DEFAULT_429_PAUSE]


def test_a_429_with_a_very_long_retry_after_pauses_at_most_max_pause() -> None:
    """A daily quota's retry-after (86400 s) must not stop the model for a day."""
    clock = VirtualClock()
    limits = ModelLimits("openai:m", clock=clock)  # default max_pause: 60 s
    limits.observe(429, HeaderLimits(retry_after=86_400.0))
    assert admit_times(limits, clock, 1) == [60.0]
    clock = VirtualClock()
    short = ModelLimits("openai:m", clock=clock, max_pause=5.0)
    short.observe(429, HeaderLimits(retry_after=86_400.0))
    assert admit_times(short, clock, 1) == [5.0]
    short.observe(429, HeaderLimits(retry_after=2.0))  # a shorter retry-after is kept as it is
    assert admit_times(short, clock, 1, before=0.0) == [7.0]


def test_the_gateway_caps_429_pauses_at_the_transport_max_wait(tmp_path: Path) -> None:
    clock = VirtualClock()
    sent: list[float] = []

    async def daily_quota_once(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        sent.append(clock.now())
        if len(sent) == 1:
            raise ModelHTTPError.for_category(
                ModelRateLimitError, status_code=429, model_name="primary", retry_after=86_400.0
            )
        return answer(info, "primary")

    gateway = virtual_gateway(
        tmp_path,
        clock,
        {"test:primary": FunctionModel(daily_quota_once, model_name="primary")},
        model="test:primary",
        models_rate_limits={"test:primary": {"rpm": 6000}},
        transport_retries={"max_wait": 7.5},
    )

    async def main() -> None:
        for index in range(2):
            with contextlib.suppress(ModelCallError):
                await gateway.call(
                    stage="features", service_id=f"S{index}", user_prompt="p", output_type=Echo
                )

    clock.run(main())
    assert gateway.limits_for("test:primary").max_pause == 7.5
    assert gateway.limits_for("test:primary").throttled_429 == 1
    assert sent == [0.0, 7.5]  # paused for max_wait, not for a day
