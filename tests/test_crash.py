"""Crash safety: SIGKILL at random points, resume, and nothing is lost or duplicated."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from service_ambitions.store.reader import read_evolutions

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "crash_soak.py"


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crash_soak", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["crash_soak"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_sigkill_resume_loses_nothing(tmp_path: Path) -> None:
    soak = load_soak()
    result = soak.soak(tmp_path / "work", iterations=20, services=24, seed=3, max_delay=2.5)
    assert result.kills >= 10, result
    assert result.final_exit == 0, result
    assert result.lost == []
    assert result.duplicated == []
    output = tmp_path / "work" / "evolutions.jsonl"
    assert output.read_bytes().endswith(b"\n")
    assert len(read_evolutions(output).records) == 24
