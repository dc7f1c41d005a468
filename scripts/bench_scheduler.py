"""Scheduler efficiency: achieved model-call throughput over its theoretical bound, in real time.

The bound is ``min(C / L, RPM / 60, TPM / (60 * tokens))`` calls per second for concurrency C,
latency L, and per-model RPM/TPM limits. Each regime drives the gateway with more callers than it
can admit, from a model that answers after L seconds and reports ``tokens`` tokens of usage, and
measures calls completed per second after a warm-up.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from service_ambitions.llm.gateway import Gateway
from service_ambitions.settings import load_settings
from service_ambitions.store.cache import ResponseCache

__all__ = ["REGIMES", "Regime", "run_regime"]


class _Answer(BaseModel):
    value: int


@dataclass(frozen=True)
class Regime:
    """One scheduling regime."""

    name: str
    concurrency: int
    latency: float
    tokens: int
    rpm: int | None = None
    tpm: int | None = None
    seconds: float = 6.0
    warmup: float = 2.0

    @property
    def bound(self) -> float:
        """Calls per second the limits allow."""
        limits = [self.concurrency / self.latency]
        if self.rpm:
            limits.append(self.rpm / 60)
        if self.tpm:
            limits.append(self.tpm / (60 * self.tokens))
        return min(limits)


REGIMES = (
    Regime("concurrency", concurrency=8, latency=0.1, tokens=400),
    Regime("rpm", concurrency=64, latency=0.02, tokens=400, rpm=1800, seconds=8.0),
    Regime("tpm", concurrency=64, latency=0.02, tokens=400, tpm=360_000, seconds=8.0),
)


async def run_regime(regime: Regime) -> dict[str, Any]:
    """Saturate the gateway for ``regime.seconds`` and report achieved / bound."""

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        await asyncio.sleep(regime.latency)
        return ModelResponse(
            parts=[ToolCallPart(info.output_tools[0].name, {"value": 1})],
            usage=RequestUsage(input_tokens=regime.tokens - 20, output_tokens=20),
            model_name="bench",
        )

    limits: dict[str, Any] = {}
    if regime.rpm or regime.tpm:
        limits = {"test:bench": {"rpm": regime.rpm, "tpm": regime.tpm}}
    settings = load_settings(
        None,
        {
            "model": "test:bench",
            "cache_mode": "off",
            "llm_concurrency": regime.concurrency,
            "models_rate_limits": limits,
            "max_tokens": 20,
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        gateway = Gateway(
            settings,
            system_prompt="S",
            cache=ResponseCache(Path(tmp), mode="off"),
            models={"test:bench": FunctionModel(answer, model_name="bench")},
        )
        finished: list[float] = []
        stop = asyncio.Event()
        prompt = "x" * (4 * (regime.tokens - 20 - 1))  # estimate = prompt/4 + max_tokens ~= tokens

        async def caller(index: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                await gateway.call(
                    stage="features", service_id=f"c{index}", user_prompt=f"{prompt}{n}", output_type=_Answer
                )
                finished.append(time.perf_counter())

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(caller(index)) for index in range(regime.concurrency * 2 + 8)]
            await asyncio.sleep(regime.seconds)
            stop.set()
            for task in tasks:
                task.cancel()
    window = [moment for moment in finished if started + regime.warmup <= moment <= started + regime.seconds]
    achieved = len(window) / (regime.seconds - regime.warmup)
    return {
        "regime": regime.name,
        "bound_calls_per_s": round(regime.bound, 2),
        "achieved_calls_per_s": round(achieved, 2),
        "efficiency": round(achieved / regime.bound, 3),
    }
