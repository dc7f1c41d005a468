"""Shared fixtures: an isolated working directory and environment, and CLI helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic_ai import models
from typer.testing import CliRunner

from service_ambitions.cli.app import app

models.ALLOW_MODEL_REQUESTS = False

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "services.jsonl"
PROVIDER_VARIABLES = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "GROQ_API_KEY",
    "MISTRAL_API_KEY",
    "OPENROUTER_API_KEY",
)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every test in its own directory, with no SA_* or provider variables and a private cache."""
    for name in list(os.environ):
        if name.startswith("SA_") or name in PROVIDER_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cli() -> Callable[..., Any]:
    """Invoke the CLI in-process; returns the Click result (exit_code, stdout, stderr separately)."""
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def service(service_id: str, name: str = "Library loans", **extra: Any) -> dict[str, Any]:
    """A valid service record for tests."""
    record: dict[str, Any] = {
        "service_id": service_id,
        "name": name,
        "description": f"{name} for the university community.",
        "jobs_to_be_done": [
            {"name": "Borrow a book without queueing", "role": [{"role_id": "learners", "name": "Learners"}]},
            {
                "name": "Recommend reading for my unit",
                "role": [{"role_id": "academics", "name": "Academics"}],
            },
            {
                "name": "Keep the catalogue accurate",
                "role": [{"role_id": "professional_staff", "name": "Staff"}],
            },
        ],
    }
    record.update(extra)
    return record


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """Write records (dicts, or raw strings written as they are) one per line."""
    lines = [item if isinstance(item, str) else json.dumps(item) for item in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All lines of a JSONL file, parsed."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
