"""The LLM queue: RPM/TPM rate limiting, FIFO admission and pauses, all in virtual time."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, ToolCallPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from service_ambitions.context import build_context
from service_ambitions.domain.inputs import ServiceInput
from service_ambitions.engine.pipeline import ServicePipeline
from service_ambitions.llm.gateway import Gateway
from service_ambitions.llm.limiter import MonotonicClock, RateLimiter, VirtualClock
from service_ambitions.llm.offline import OfflineModel
from service_ambitions.settings import load_settings
from service_ambitions.store.cache import ResponseCache
from tests.conftest import service
from tests.test_pipeline import run_engine

MINUTE = 60.0


@dataclass(frozen=True)
class Job:
    """One simulated call: estimated tokens, tokens really used, and how long the call takes."""

    estimate: int
    actual: int
    latency: float


@dataclass
class Traffic:
    """What a simulation sent, in admission order, and what a provider's meter saw."""

    sent: list[tuple[float, int]] = field(default_factory=list)  # (admission time, actual tokens)
    # The meter (e.g. Anthropic's): +estimate when a call is sent, actual - estimate when it ends.
    meter: list[tuple[float, int]] = field(default_factory=list)

    def per_minute(self, tokens: bool) -> float:
        """Requests or actual tokens sent per minute, over the whole minutes after the first."""
        minutes = int(self.sent[-1][0] // MINUTE) - 1
        counted = [amount if tokens else 1 for t, amount in self.sent if MINUTE <= t < (minutes + 1) * MINUTE]
        return sum(counted) / minutes


def max_per_window(events: list[tuple[float, int]]) -> int:
    """Largest sum in any sliding 60 s window ``(t - 60, t]``.

    A window's sum changes when an event enters it and when one leaves, so both are candidate ends.
    """
    events = sorted(events)
    ends = sorted({t for t, _ in events} | {t + MINUTE for t, _ in events})
    best = total = first = last = 0
    for end in ends:
        while last < len(events) and events[last][0] <= end:
            total += events[last][1]
            last += 1
        # Same arithmetic as the limiter's ledger, so a boundary case is judged the same way.
        while first < last and events[first][0] + MINUTE <= end:
            total -= events[first][1]
            first += 1
        best = max(best, total)
    return best


def simulate(limiter: RateLimiter, clock: VirtualClock, jobs: list[Job], callers: int) -> Traffic:
    """Run ``jobs`` through ``limiter`` from ``callers`` concurrent callers, settling each with its actual."""
    traffic = Traffic()
    pending = iter(jobs)

    async def caller() -> None:
        for job in pending:
            permit = await limiter.acquire(job.estimate)
            traffic.sent.append((permit.admitted_at, job.actual))
            traffic.meter.append((permit.admitted_at, job.estimate))
            await clock.sleep(job.latency)
            traffic.meter.append((clock.now(), job.actual - job.estimate))
            permit.settle(job.actual)

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(callers):
                group.create_task(caller())

    clock.run(main())
    assert len(traffic.sent) == len(jobs)
    assert [t for t, _ in traffic.sent] == sorted(t for t, _ in traffic.sent)
    return traffic


def rpm_scenario(window: float = 2.0) -> Traffic:
    """RPM 600, 5,000 requests from 200 callers: about 8.3 simulated minutes of excess demand."""
    rng = random.Random(600)
    jobs = [Job(500, 500, rng.uniform(0.2, 5.0)) for _ in range(5_000)]
    clock = VirtualClock()
    return simulate(RateLimiter(600, None, clock=clock, window=window), clock, jobs, callers=200)


def tpm_scenario() -> Traffic:
    """TPM 600,000 from 200 callers: 900 calls of 1k..12k tokens, 1 % of 22k..30k (above the 20k bucket).

    Calls use 40..110 % of their estimate and take 1..20 s: refunds, some extra charges, and a lot of
    estimate in flight. About 7.5 simulated minutes of excess demand.
    """
    rng = random.Random(60_000)
    jobs = []
    for _ in range(900):
        estimate = rng.randint(22_000, 30_000) if rng.random() < 0.01 else rng.randint(1_000, 12_000)
        jobs.append(Job(estimate, round(estimate * rng.uniform(0.4, 1.1)), rng.uniform(1.0, 20.0)))
    clock = VirtualClock()
    return simulate(RateLimiter(None, 600_000, clock=clock), clock, jobs, callers=200)


def test_rpm_limiter_throttles() -> None:
    traffic = rpm_scenario()
    assert traffic.sent[-1][0] > 8 * MINUTE
    assert max_per_window([(t, 1) for t, _ in traffic.sent]) <= 1.02 * 600
    assert traffic.per_minute(tokens=False) >= 0.95 * 600


def test_rpm_limit_holds_with_a_long_window() -> None:
    # A 10 s bucket alone would pass 600 + 100 in some minute; the 60 s ledger must stop that.
    traffic = rpm_scenario(window=10.0)
    assert max_per_window([(t, 1) for t, _ in traffic.sent]) <= 600


def test_tpm_limiter_throttles() -> None:
    traffic = tpm_scenario()
    assert traffic.sent[-1][0] > 7 * MINUTE
    assert any(estimate > 20_000 for _, estimate in traffic.meter)
    assert max_per_window(traffic.meter) <= 1.02 * 600_000
    assert traffic.per_minute(tokens=True) >= 0.95 * 600_000


def test_fifo_fairness() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(None, 6_000, clock=clock, window=1.0)  # 100 tokens/s, bucket of 100
    arrivals: list[str] = []
    admissions: list[tuple[str, float]] = []

    async def call(name: str, tokens: int) -> None:
        arrivals.append(name)
        await limiter.acquire(tokens)
        admissions.append((name, clock.now()))

    async def main() -> None:
        await limiter.acquire(100)  # bucket full: everyone below has to queue
        async with asyncio.TaskGroup() as group:
            group.create_task(call("large", 500))
            for i in range(10):
                group.create_task(call(f"small{i}", 10))

    clock.run(main())
    assert [name for name, _ in admissions] == arrivals == ["large"] + [f"small{i}" for i in range(10)]
    # A small request would have fitted at 0.1 s; it waits for the large one, admitted once the bucket
    # is empty (1 s), and for the large one's debt to drain (500 - 90 tokens at 100/s).
    assert admissions[0][1] == pytest.approx(1.0)
    assert admissions[1][1] == pytest.approx(1.0 + 4.1)


def test_admission_order_equals_arrival_order_under_random_load() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(120, 30_000, clock=clock)
    rng = random.Random(3)
    plan = [(rng.uniform(0, 30), rng.randint(1, 2_000)) for _ in range(150)]
    arrivals: list[int] = []
    admissions: list[int] = []

    async def call(index: int, start: float, tokens: int) -> None:
        await clock.sleep(start)
        arrivals.append(index)
        await limiter.acquire(tokens)
        admissions.append(index)

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            for index, (start, tokens) in enumerate(plan):
                group.create_task(call(index, start, tokens))

    clock.run(main())
    assert admissions == arrivals
    assert len(admissions) == len(plan)


def test_pause_holds_everyone_until_it_ends() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(600, None, clock=clock)
    admitted: list[float] = []

    async def call() -> None:
        admitted.append((await limiter.acquire(1)).admitted_at)

    async def extend_later() -> None:
        await clock.sleep(20)
        limiter.pause(25)  # a later 429 extends the pause to 45 s
        limiter.pause(1)  # a shorter one never shortens it

    async def main() -> None:
        await call()
        limiter.pause(30)
        async with asyncio.TaskGroup() as group:
            group.create_task(extend_later())
            for _ in range(3):
                group.create_task(call())
        await call()

    clock.run(main())
    assert admitted[0] == 0.0
    assert admitted[1:] == pytest.approx([45.0] * 4)


def test_settle_refunds_and_charges_the_token_bucket() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(None, 6_000, clock=clock, window=1.0)  # 100 tokens/s, bucket of 100

    async def main() -> list[float]:
        permit = await limiter.acquire(1_000)
        permit.settle(100)  # refund 900: the bucket holds 100, empty after 1 s
        refunded = await limiter.acquire(100)
        refunded.settle(2_100)  # charge 2,000 more: 20 s of debt
        charged = await limiter.acquire(100)
        assert (permit.tokens, refunded.tokens, charged.tokens) == (100, 2_100, 100)
        return [permit.admitted_at, refunded.admitted_at, charged.admitted_at]

    assert clock.run(main()) == pytest.approx([0.0, 1.0, 22.0])


def test_refund_lets_the_waiting_head_in_at_once() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(None, 6_000, clock=clock, window=1.0)  # 100 tokens/s, bucket of 100
    admitted: list[float] = []

    async def waiter() -> None:
        admitted.append((await limiter.acquire(100)).admitted_at)  # 10 s behind the first call's debt

    async def main() -> None:
        permit = await limiter.acquire(1_000)
        async with asyncio.TaskGroup() as group:
            group.create_task(waiter())
            await clock.sleep(2)
            permit.settle(100)  # the debt (800 left) turns into 100 of credit

    clock.run(main())
    assert admitted == pytest.approx([2.0])


def test_refund_credit_never_takes_a_later_minute_over_the_limit() -> None:
    clock = VirtualClock()
    # 20 tokens/s; a bucket of two minutes leaves the decisions to the 60 s ledger.
    limiter = RateLimiter(None, 1_200, clock=clock, window=120.0)

    async def main() -> list[float]:
        first = await limiter.acquire(1_200)
        await clock.sleep(30)
        first.settle(0)  # -1,200 on the meter until 90 s, after the +1,200 has left at 60 s
        await clock.sleep(31)
        second = await limiter.acquire(1_200)
        # At 90 s the refund leaves the window and the minute holds the second call alone: a third
        # call then would make it 2,400. It has to wait for the second to leave, at 121 s.
        third = await limiter.acquire(1_200)
        return [first.admitted_at, second.admitted_at, third.admitted_at]

    assert clock.run(main()) == pytest.approx([0.0, 61.0, 121.0])


def test_request_larger_than_the_limit_is_admitted_and_paid_for() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(None, 1_200, clock=clock, window=1.0)  # 20 tokens/s, bucket of 20

    async def main() -> list[float]:
        small = await limiter.acquire(10)
        huge = await limiter.acquire(5_000)  # waits for an empty bucket and an empty minute
        after = await limiter.acquire(20)  # waits for the debt: 5,000 tokens at 20/s
        return [small.admitted_at, huge.admitted_at, after.admitted_at]

    assert clock.run(main()) == pytest.approx([0.0, 60.0, 310.0])


def test_cancelled_waiter_leaves_the_queue_without_charge() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(60, None, clock=clock, window=1.0)  # one request per second, no burst

    async def main() -> tuple[float, int]:
        await limiter.acquire(0)
        head = asyncio.create_task(limiter.acquire(0))
        behind = asyncio.create_task(limiter.acquire(0))
        await clock.sleep(0.5)
        assert limiter.queued == 2
        head.cancel()
        with pytest.raises(asyncio.CancelledError):
            await head
        permit = await behind
        return permit.admitted_at, limiter.queued

    admitted_at, queued = clock.run(main())
    assert admitted_at == pytest.approx(1.0)
    assert queued == 0


def test_rejects_invalid_arguments() -> None:
    clock = VirtualClock()
    with pytest.raises(ValueError, match="rpm"):
        RateLimiter(0, None, clock=clock)
    with pytest.raises(ValueError, match="window"):
        RateLimiter(10, 10, clock=clock, window=0)
    limiter = RateLimiter(10, 1_000, clock=clock)

    async def main() -> None:
        with pytest.raises(ValueError, match="tokens"):
            await limiter.acquire(-1)
        permit = await limiter.acquire(10)
        with pytest.raises(ValueError, match="actual_tokens"):
            permit.settle(-1)

    clock.run(main())


async def test_virtual_clock_refuses_a_foreign_loop() -> None:
    with pytest.raises(RuntimeError, match="own event loop"):
        await VirtualClock().sleep(1)


async def test_monotonic_clock_is_the_default() -> None:
    limiter = RateLimiter(None, None)
    before = MonotonicClock().now()
    permit = await limiter.acquire(10)
    assert before <= permit.admitted_at <= MonotonicClock().now()


# --- the gateway and the engine ----------------------------------------------------------------


class Echo(BaseModel):
    value: int


def user_text(messages: list[ModelMessage]) -> str:
    parts = [part for message in messages if isinstance(message, ModelRequest) for part in message.parts]
    texts = [part.content for part in parts if isinstance(part, UserPromptPart)]
    return "".join(text for text in texts if isinstance(text, str))


async def test_concurrency_cap(tmp_path: Path) -> None:
    active = 0
    peak: dict[str, int] = {"all": 0}
    release = asyncio.Event()

    async def held(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal active
        active += 1
        peak["all"] = max(peak["all"], active)
        await release.wait()
        active -= 1
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"value": 1})], model_name="held")

    settings = load_settings(
        None,
        {
            "model": "test:held",
            "llm_concurrency": 3,
            "cache_mode": "off",
            "models_rate_limits": {"test:held": {"concurrency": 2}},
        },
    )
    gateway = Gateway(
        settings,
        system_prompt="S",
        cache=ResponseCache(tmp_path / "c", mode="off"),
        models={"test:held": FunctionModel(held, model_name="held")},
    )
    calls = [
        asyncio.create_task(
            gateway.call(stage="features", service_id=f"S{i}", user_prompt=str(i), output_type=Echo)
        )
        for i in range(10)
    ]
    for _ in range(50):
        await asyncio.sleep(0)
    # Three calls hold a global slot (llm_concurrency 3); the model's own cap (2) lets two of them in.
    assert gateway.in_flight == 3
    assert active == 2
    assert gateway.waiting == 7
    release.set()
    await asyncio.gather(*calls)
    assert peak["all"] == 2
    assert gateway.in_flight == 0
    assert gateway.waiting == 0


async def test_pipelined_plateaus_overlap(isolated: Path) -> None:
    """With plateau_concurrency=2 the features call of plateau N+1 starts before plateau N is mapped."""
    events: list[tuple[str, str]] = []
    offline = OfflineModel()

    async def timed(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        text = user_text(messages)
        plateau = next((line.split()[1] for line in text.splitlines() if line.startswith("PLATEAU: ")), "0")
        stage = (
            "mapping" if "\nCATALOGUE: " in text else "features" if "\nROLES: " in text else "descriptions"
        )
        events.append(("start", f"{stage}{plateau}"))
        await asyncio.sleep(0.01 if stage == "mapping" else 0.002)
        events.append(("end", f"{stage}{plateau}"))
        response: ModelResponse = await offline.function(messages, info)  # type: ignore[misc]
        return response

    settings = load_settings(None, {"model": "test:timed", "cache_mode": "off"})
    context = build_context(settings, models={"test:timed": FunctionModel(timed, model_name="timed")})
    try:
        pipeline = ServicePipeline(context.content, context.gateway, plateau_concurrency=2)
        await pipeline.run(ServiceInput.model_validate(service("A")))
    finally:
        context.close()
    order = [f"{kind}:{name}" for kind, name in events]
    last_mapping_1 = max(i for i, item in enumerate(order) if item == "end:mapping1")
    assert order.index("start:features2") < last_mapping_1
    # and never more than two plateaus in flight: features 3 waits for plateau 1's mappings
    assert order.index("start:features3") > last_mapping_1


def reversed_roles(stage: str, service_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    return answer


async def test_queue_parity_with_sequential(isolated: Path) -> None:
    records = [service(f"S{i}", name=f"Service {i}") for i in range(6)]
    runs = []
    settings: list[dict[str, Any]] = [
        {"concurrency": 1, "plateau_concurrency": 1, "llm_concurrency": 1},
        {"concurrency": 6, "plateau_concurrency": 3, "llm_concurrency": 64},
        {"concurrency": 3, "plateau_concurrency": 2, "llm_concurrency": 5},
    ]
    for index, options in enumerate(settings):
        work = isolated / f"run{index}"
        work.mkdir()
        _, lines, _ = await run_engine(work, records, reversed_roles, **options)
        runs.append(lines)
    assert runs[0] == runs[1] == runs[2]
    assert [line["service"]["service_id"] for line in runs[0]] == [f"S{i}" for i in range(6)]
