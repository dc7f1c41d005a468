"""The import layering of docs/architecture.md ("Dependency direction") holds, checked by ``lint-imports``.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``); ``make lint`` runs them too. These tests
run them under pytest, keep the contract's rows and the document's identical, and show that a broken
arrow (``settings`` importing ``llm`` again) fails the check.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "service_ambitions"
LINT_IMPORTS = (
    "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
)


def lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the configuration in ``cwd``'s ``pyproject.toml``, no cache written."""
    return subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def contracts() -> list[dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    found: list[dict[str, Any]] = config["tool"]["importlinter"]["contracts"]
    return found


def documented_rows() -> list[str]:
    """The rows of the code block in docs/architecture.md's "Dependency direction" section."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("\n## Dependency direction\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the Dependency direction section has no code block of rows"
    return [
        " | ".join(part.strip() for part in line.split("|")) for line in block[1].splitlines() if line.strip()
    ]


def test_every_contract_is_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Contracts: \d+ kept, 0 broken\.", result.stdout), result.stdout


def test_contract_rows_are_the_documented_rows() -> None:
    (layers,) = [contract for contract in contracts() if contract["type"] == "layers"]
    assert layers["containers"] == ["service_ambitions"]
    assert layers["exhaustive"] is True
    assert layers["layers"] == documented_rows()


def test_every_top_level_module_has_a_row() -> None:
    rows = {name for row in documented_rows() for name in row.split(" | ")}
    modules = {
        path.stem if path.is_file() else path.name
        for path in PACKAGE.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
    }
    assert modules == rows


def test_a_broken_arrow_fails_the_check(tmp_path: Path) -> None:
    # A copy of the package (Python files only) in which settings imports llm, as it once did.
    copy = tmp_path / "src" / "service_ambitions"
    shutil.copytree(
        PACKAGE,
        copy,
        ignore=lambda folder, names: [
            name for name in names if not name.endswith(".py") and not (Path(folder) / name).is_dir()
        ],
    )
    settings = copy / "settings.py"
    text = settings.read_text(encoding="utf-8")
    anchor = "from service_ambitions.errors import ConfigError\n"
    assert anchor in text
    settings.write_text(
        text.replace(anchor, anchor + "from service_ambitions.llm import chaos as _chaos  # noqa: F401\n"),
        encoding="utf-8",
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    result = lint_imports(tmp_path, env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 broken" not in result.stdout
    assert "service_ambitions.settings -> service_ambitions.llm.chaos" in result.stdout
