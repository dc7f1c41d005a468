"""Crash safety: SIGKILL at random points, resume, and nothing is lost or duplicated."""

from __future__ import annotations

from pathlib import Path

from service_ambitions.store.reader import read_evolutions
from tests.conftest import load_script


def test_sigkill_resume_loses_nothing(tmp_path: Path) -> None:
    soak = load_script("crash_soak")
    # Slow enough (plateaus run in parallel) that most iterations are killed mid-run.
    result = soak.soak(tmp_path / "work", iterations=20, services=60, seed=3, max_delay=2.5, latency_ms=60)
    assert result.kills >= 10, result
    assert result.final_exit == 0, result
    assert result.lost == []
    assert result.duplicated == []
    output = tmp_path / "work" / "evolutions.jsonl"
    assert output.read_bytes().endswith(b"\n")
    assert len(read_evolutions(output).records) == 60
