"""Hatchling build hook: record the commit being built in ``service_ambitions/_build_info.json``.

The tool reports that commit as ``git_sha`` in every output header (see ``src/service_ambitions/_build.py``).
The file is generated into a scratch directory and added with ``force_include`` (to the sdist at
``src/service_ambitions/``, so a wheel built from the sdist finds it; to the wheel in the package), so the
source tree is never written to. Its content depends only on the commit, keeping builds reproducible.
Editable installs get no file: they report the checkout's live ``HEAD`` instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

_TARGETS = {"sdist": "src/service_ambitions", "wheel": "service_ambitions"}


def _build_module(root: Path) -> ModuleType:
    """``src/service_ambitions/_build.py``, loaded by path (the package is not importable here)."""
    path = root / "src" / "service_ambitions" / "_build.py"
    spec = importlib.util.spec_from_file_location("_service_ambitions_build", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildInfoHook(BuildHookInterface):
    """Adds ``_build_info.json`` with the source tree's commit to sdists and (non-editable) wheels."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Write the build info into a scratch directory and include it in the artefact."""
        self._scratch: str | None = None
        if version == "editable" or self.target_name not in _TARGETS:
            return
        build = _build_module(Path(self.root))
        self._scratch = tempfile.mkdtemp(prefix="sa-build-info-")
        info = Path(self._scratch) / build.BUILD_INFO
        info.write_text(build.render_build_info(build.source_commit(Path(self.root))), encoding="utf-8")
        os.chmod(info, 0o644)  # whatever the umask (hatchling normalises modes as well)
        build_data["force_include"][str(info)] = f"{_TARGETS[self.target_name]}/{build.BUILD_INFO}"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        """Remove the scratch directory."""
        scratch = getattr(self, "_scratch", None)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
