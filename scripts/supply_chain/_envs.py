"""Shared helpers for the supply-chain scripts: running uv and git, and two cached virtual environments.

Both environments live under ``build/supply-chain/`` (git-ignored, removed by ``make clean``), named by a key
over ``uv.lock``, ``pyproject.toml`` and the interpreter version, so they are rebuilt only when one changes:

- ``runtime-<key>``: the locked runtime dependencies (``uv export --no-dev``, hash-checked) plus the
  project's own wheel, installed non-editable. No dev tools, no pip: exactly what a user's install contains.
  The SBOM and the licence check describe this environment.
- ``tools-<key>``: the locked ``supply-chain`` dependency group (cyclonedx-bom, pip-licenses, pip-audit). Kept
  apart so that neither the dev ``.venv`` nor the runtime environment is touched by the tools.

An environment is built in a staging directory and renamed into place, so a directory that exists is complete;
two processes building at once both succeed and one result is kept.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = ROOT / "build" / "supply-chain"
# Hash-pinned build backend (hatchling and its dependencies) for every wheel and sdist we build.
BUILD_CONSTRAINTS = Path(__file__).resolve().parent / "build-constraints.txt"


class SupplyChainError(Exception):
    """A step failed; the message names the command and what it printed."""


def uv_command() -> list[str]:
    """The uv executable: the one running us (``uv run`` sets ``UV``), else PATH, else ``python -m uv``."""
    found = os.environ.get("UV") or shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def run(
    command: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` capturing its output; raise ``SupplyChainError`` (with its stderr) when it fails."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise SupplyChainError(f"`{shlex.join(command)}` exited {result.returncode}:\n{detail}")
    return result


def project_metadata() -> tuple[str, str]:
    """The project's (name, version) from ``pyproject.toml``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return str(project["name"]), str(project["version"])


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` when set, else the committer time of ``HEAD`` (what reproducible builds use)."""
    preset = os.environ.get("SOURCE_DATE_EPOCH")
    if preset:
        return int(preset)
    return int(run(["git", "log", "-1", "--pretty=%ct", "HEAD"]).stdout.strip())


def export_requirements(*selection: str) -> str:
    """Hashed ``uv export`` of the locked requirements that ``selection`` picks (e.g. ``--no-dev``)."""
    return run([*uv_command(), "export", "--frozen", "--no-emit-project", "--no-header", *selection]).stdout


def build_command() -> list[str]:
    """``uv build`` with the hash-pinned build backend."""
    return [
        *uv_command(),
        "build",
        "--quiet",
        "--build-constraints",
        str(BUILD_CONSTRAINTS),
        "--require-hashes",
    ]


def _key(*names: str) -> str:
    digest = hashlib.sha256(f"{sys.implementation.name}-{platform.python_version()}".encode())
    for name in names:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    return f"py{sys.version_info.major}{sys.version_info.minor}-{digest.hexdigest()[:16]}"


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _build(target: Path, requirements: str, then: Callable[[Path], list[list[str]]] | None = None) -> Path:
    """Create the venv ``target`` with ``requirements`` installed (hash-checked), unless it already exists.

    ``then(staging)`` may prepare files in the staging directory and return more ``uv pip install``
    argument lists, run after the requirements.
    """
    if _python(target).exists():
        return _python(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        venv = staging / "venv"
        uv = uv_command()
        # --relocatable: the venv is renamed into place once it is complete.
        run([*uv, "venv", "--quiet", "--relocatable", "--python", sys.executable, str(venv)])
        (staging / "requirements.txt").write_text(requirements, encoding="utf-8")
        install = [*uv, "pip", "install", "--quiet", "--python", str(_python(venv))]
        run([*install, "--require-hashes", "-r", str(staging / "requirements.txt")])
        for arguments in then(staging) if then else []:
            run([*install, *arguments])
        try:
            venv.rename(target)
        except OSError:
            if not _python(target).exists():  # only a concurrent build that got there first is fine
                raise
        kind = target.name.split("-", 1)[0]
        for stale in target.parent.glob(f"{kind}-*"):
            if stale != target:
                shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _python(target)


def runtime_python(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Python of the cached runtime-only environment (locked runtime dependencies + the project wheel)."""
    name, version = project_metadata()

    def add_project(staging: Path) -> list[list[str]]:
        wheels = staging / "wheel"
        run([*build_command(), "--wheel", "--out-dir", str(wheels)])
        # A find-links install, not `pip install .`: it records no local path (direct_url.json) for the SBOM.
        return [["--no-deps", "--no-index", "--find-links", str(wheels), f"{name}=={version}"]]

    constraints = str(BUILD_CONSTRAINTS.relative_to(ROOT))
    target = cache_dir / f"runtime-{_key('uv.lock', 'pyproject.toml', constraints)}"
    return _build(target, export_requirements("--no-dev"), then=add_project)


def tools_python(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Python of the cached environment holding the locked ``supply-chain`` group's tools."""
    target = cache_dir / f"tools-{_key('uv.lock')}"
    return _build(target, export_requirements("--only-group", "supply-chain"))
