"""The commit the tool was built from (the output header's ``git_sha``, part of the record-cache key).

- Built (sdist, wheel): ``hatch_build.py`` writes ``service_ambitions/_build_info.json`` holding the commit of
  the source tree it built, and that is the answer (``null`` when the tree's commit was unknown).
- Run from this project's own checkout (an editable install, the tests): there is no such file, and the
  checkout's ``HEAD`` is the tool's commit.
- Anything else: ``None``. Never the current directory's repository, never ``GIT_DIR``, never a repository
  the package merely happens to be installed inside (a ``.venv`` in the user's project).

Standard library only: the build hook loads this file by path, before the package can be imported.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

__all__ = [
    "BUILD_INFO",
    "PROJECT_NAME",
    "checkout_head",
    "git_sha",
    "render_build_info",
    "source_commit",
]

BUILD_INFO = "_build_info.json"
"""The build metadata file, in the package directory of a built distribution."""
PROJECT_NAME = "service-ambitions"
ARCHIVAL = ".git_archival.txt"
"""``git archive`` fills in its ``$Format:%H$`` (``export-subst`` in ``.gitattributes``), so a tree exported
without ``.git`` (``make dist``, GitHub tarballs) still knows its commit."""
_SHA = re.compile(r"[0-9a-f]{40}")
_PACKAGE_DIR = Path(__file__).resolve().parent


def _sha(value: object) -> str | None:
    return value if isinstance(value, str) and _SHA.fullmatch(value) else None


def _is_project_root(root: Path) -> bool:
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return isinstance(project, dict) and project.get("name") == PROJECT_NAME


def checkout_head(root: Path) -> str | None:
    """``HEAD`` of the git checkout whose top level is ``root``, when ``root`` is this project's tree.

    A ``root`` nested inside some other repository, or a repository of another project, gives ``None``.
    """
    if not _is_project_root(root):
        return None
    # GIT_DIR, GIT_WORK_TREE and friends would point git at the caller's repository instead.
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    try:
        completed = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            env=env,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = completed.stdout.splitlines()
    if completed.returncode != 0 or len(lines) != 2:
        return None
    toplevel, head = lines
    try:
        same = Path(toplevel).resolve() == root.resolve()
    except OSError:
        return None
    return _sha(head) if same else None


def _read_build_info(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return _sha(data.get("git_sha")) if isinstance(data, dict) else None


def render_build_info(sha: str | None) -> str:
    """The content of ``_build_info.json``: deterministic, so builds stay byte-identical."""
    return json.dumps({"git_sha": sha}, indent=2, sort_keys=True) + "\n"


def source_commit(root: Path) -> str | None:
    """At build time: the commit of the source tree at ``root``.

    From the checkout itself; else from an unpacked sdist's ``_build_info.json``; else from a ``git
    archive`` export's ``.git_archival.txt``; else ``None``.
    """
    head = checkout_head(root)
    if head is not None:
        return head
    built = root / "src" / "service_ambitions" / BUILD_INFO
    if built.is_file():
        return _read_build_info(built)
    try:
        archival = (root / ARCHIVAL).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    found = re.search(r"^node: *(\S+)$", archival, flags=re.MULTILINE)
    return _sha(found.group(1)) if found else None


def git_sha(package_dir: Path = _PACKAGE_DIR) -> str | None:
    """At run time: the commit the tool (whose package directory is ``package_dir``) was built from."""
    info = package_dir / BUILD_INFO
    if info.exists():
        return _read_build_info(info)
    if package_dir.parent.name == "src":
        return checkout_head(package_dir.parent.parent)
    return None
