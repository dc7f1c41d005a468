"""The engine returns one immutable RunReport; nothing outside ``llm/`` reads the gateway's counters."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from service_ambitions.context import build_context
from service_ambitions.engine.engine import ProcessingEngine
from service_ambitions.settings import load_settings
from tests.conftest import service, write_jsonl

SRC = Path(__file__).resolve().parent.parent / "src" / "service_ambitions"
# The gateway's interface to the rest of the program: calls, keys, set-up and snapshots.
GATEWAY_INTERFACE = {"call", "key", "figures", "progress", "prepare", "use_batches"}


async def test_the_report_is_immutable_and_carries_the_call_figures(isolated: Path) -> None:
    write_jsonl(isolated / "in.jsonl", [service("A"), service("B")])
    context = build_context(load_settings(None, {"model": "offline", "cache_dir": str(isolated / "c")}))
    try:
        report = await ProcessingEngine(context).run(isolated / "in.jsonl", isolated / "out.jsonl")
    finally:
        context.close()
    assert report.services_ok == 2
    assert report.calls.calls == 2 * 21
    assert report.calls.requests == 2 * 21
    assert report.calls.input_tokens > 0
    assert report.calls.cache["writes"] > 0
    assert set(report.calls.latency_seconds) == {"descriptions", "features", "mapping"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.services_ok = 3  # type: ignore[misc]


def _gateway_attributes(tree: ast.AST) -> set[str]:
    """Attributes read on anything called ``gateway`` (``gateway.x``, ``self.gateway.x``...)."""
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
        if name == "gateway":
            found.add(node.attr)
    return found


def test_nothing_outside_llm_reads_gateway_attributes() -> None:
    offenders = {}
    for path in SRC.rglob("*.py"):
        if "llm" in path.relative_to(SRC).parts:
            continue
        used = _gateway_attributes(ast.parse(path.read_text(encoding="utf-8"))) - GATEWAY_INTERFACE
        if used:
            offenders[str(path.relative_to(SRC))] = sorted(used)
    assert offenders == {}
