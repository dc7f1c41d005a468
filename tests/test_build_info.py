"""The tool's own commit (header ``git_sha``, record-cache key): build metadata, never the cwd's repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service_ambitions import _build
from service_ambitions.context import git_sha
from tests.conftest import ROOT, load_script, service, write_jsonl

Cli = Callable[..., Any]
# The files a build of the project needs (the package is cut down to what the build hook uses).
PROJECT_FILES = (
    "pyproject.toml",
    "README.md",
    "hatch_build.py",
    ".gitattributes",
    ".git_archival.txt",
    ".gitignore",
)
PACKAGE_FILES = ("__init__.py", "_build.py", "py.typed")


def git(cwd: Path, *arguments: str) -> str:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    env |= {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    identity = ["-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
    return subprocess.run(
        ["git", *identity, *arguments], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def repository(path: Path, files: dict[str, str] | None = None) -> str:
    """A git repository at ``path`` with one commit of ``files``; returns its HEAD."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {"README": "hello\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text, encoding="utf-8")
    git(path, "init", "-q")
    return commit(path)


def commit(path: Path) -> str:
    git(path, "add", "-A")
    git(path, "commit", "-q", "--allow-empty", "-m", "change")
    return git(path, "rev-parse", "HEAD")


def project_copy(path: Path) -> Path:
    """A cut-down copy of this project at ``path`` (not a repository yet)."""
    for name in PROJECT_FILES:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, path / name)
    package = path / "src" / "service_ambitions"
    package.mkdir(parents=True)
    for name in PACKAGE_FILES:
        shutil.copyfile(ROOT / "src" / "service_ambitions" / name, package / name)
    return path


def export(checkout: Path, destination: Path) -> Path:
    """``git archive HEAD`` of ``checkout`` extracted into ``destination`` (as ``make dist`` does)."""
    archive = destination.with_suffix(".tar")
    git(checkout, "archive", "--format=tar", f"--output={archive}", "HEAD")
    with tarfile.open(archive) as tar:
        tar.extractall(destination, filter="data")
    return destination


# Run time ---


def test_git_sha_ignores_the_current_directorys_repository(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = isolated / "user"
    first = repository(user)
    monkeypatch.chdir(user)
    before = git_sha()
    second = commit(user)
    assert git_sha() == before
    monkeypatch.setenv("GIT_DIR", str(user / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(user))
    assert git_sha() == before
    assert before not in (first, second)
    if (ROOT / ".git").exists():  # tests run from this project's checkout: its HEAD is the tool's commit
        assert before == git(ROOT, "rev-parse", "HEAD")


def test_committing_to_the_users_repository_keeps_the_record_cache(cli: Cli, isolated: Path) -> None:
    write_jsonl(isolated / "services.jsonl", [service("A"), service("B")])
    repository(isolated, {".gitignore": "c/\nxdg-cache/\n"})
    assert cli("run", "--cache-dir", "c", "--output-file", "one.jsonl").exit_code == 0
    commit(isolated)
    again = cli("run", "--cache-dir", "c", "--output-file", "two.jsonl")
    assert again.exit_code == 0
    assert "records from cache: 2" in again.stderr
    headers = [
        json.loads(path.read_text(encoding="utf-8").splitlines()[0])
        for path in (isolated / "one.jsonl", isolated / "two.jsonl")
    ]
    assert headers[0]["git_sha"] == headers[1]["git_sha"] == git_sha()


def test_git_sha_rules_for_a_package_directory(tmp_path: Path) -> None:
    ours = {
        "pyproject.toml": '[project]\nname = "service-ambitions"\n',
        "src/service_ambitions/__init__.py": "",
    }
    checkout = repository(tmp_path / "checkout", ours)
    assert _build.git_sha(tmp_path / "checkout" / "src" / "service_ambitions") == checkout

    other = {"pyproject.toml": '[project]\nname = "other"\n', "src/service_ambitions/__init__.py": ""}
    repository(tmp_path / "other", other)
    assert _build.git_sha(tmp_path / "other" / "src" / "service_ambitions") is None

    # Installed in a virtual environment inside a repository: the repository is not the tool's.
    site = tmp_path / "checkout" / ".venv" / "lib" / "python3" / "site-packages" / "service_ambitions"
    site.mkdir(parents=True)
    assert _build.git_sha(site) is None
    # A copy of the sources inside someone else's repository: its top level is not the project's.
    vendored = tmp_path / "other" / "vendor" / "sa"
    for name, text in ours.items():
        (vendored / name).parent.mkdir(parents=True, exist_ok=True)
        (vendored / name).write_text(text, encoding="utf-8")
    assert _build.git_sha(vendored / "src" / "service_ambitions") is None

    # Build metadata wins, wherever the package is.
    built = "0123456789abcdef0123456789abcdef01234567"
    for package in (site, tmp_path / "checkout" / "src" / "service_ambitions"):
        (package / _build.BUILD_INFO).write_text(_build.render_build_info(built), encoding="utf-8")
        assert _build.git_sha(package) == built
    (site / _build.BUILD_INFO).write_text(_build.render_build_info(None), encoding="utf-8")
    assert _build.git_sha(site) is None
    (site / _build.BUILD_INFO).write_text("{not json", encoding="utf-8")
    assert _build.git_sha(site) is None


# Build time ---


def test_source_commit_of_a_checkout_an_export_and_an_sdist(tmp_path: Path) -> None:
    checkout = project_copy(tmp_path / "checkout")
    head = repository(checkout)
    assert _build.source_commit(checkout) == head
    (checkout / "src" / "service_ambitions" / "x.py").write_text("", encoding="utf-8")
    assert _build.source_commit(checkout) == head  # uncommitted changes do not matter

    # An export has no .git, but git archive filled in .git_archival.txt; inside a foreign repository too.
    foreign_head = repository(tmp_path / "foreign")
    exported = export(checkout, tmp_path / "foreign" / "export")
    assert (exported / ".git_archival.txt").read_text(encoding="utf-8") == f"node: {head}\n"
    assert _build.source_commit(exported) == head != foreign_head

    plain = project_copy(tmp_path / "plain")  # no repository, archival file not filled in
    assert _build.source_commit(plain) is None
    sdist_info = plain / "src" / "service_ambitions" / _build.BUILD_INFO
    sdist_info.write_text(_build.render_build_info(head), encoding="utf-8")
    assert _build.source_commit(plain) == head


@pytest.fixture(scope="session")
def uv_env() -> dict[str, str]:
    """uv's real cache (conftest points XDG_CACHE_HOME at an empty directory per test) and a fixed epoch."""
    envs = load_script("supply_chain/_envs")
    cache = (
        os.environ.get("UV_CACHE_DIR")
        or subprocess.run(
            [*envs.uv_command(), "cache", "dir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    return {**os.environ, "UV_CACHE_DIR": cache, "SOURCE_DATE_EPOCH": "1700000000"}


def uv_build(source: Path, out_dir: Path, env: dict[str, str], *extra: str) -> list[Path]:
    envs = load_script("supply_chain/_envs")
    subprocess.run(
        [*envs.build_command(), *extra, "--out-dir", str(out_dir), str(source)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted([*out_dir.glob("*.whl"), *out_dir.glob("*.tar.gz")])


def built_sha(artefact: Path) -> Any:
    if artefact.name.endswith(".whl"):
        with zipfile.ZipFile(artefact) as wheel:
            return json.loads(wheel.read(f"service_ambitions/{_build.BUILD_INFO}"))["git_sha"]
    with tarfile.open(artefact) as sdist:
        (member,) = [
            name for name in sdist.getnames() if name.endswith(f"/src/service_ambitions/{_build.BUILD_INFO}")
        ]
        handle = sdist.extractfile(member)
        assert handle is not None
        return json.loads(handle.read())["git_sha"]


def test_built_distributions_record_the_commit_reproducibly(tmp_path: Path, uv_env: dict[str, str]) -> None:
    checkout = project_copy(tmp_path / "checkout")
    head = repository(checkout)
    repository(tmp_path / "foreign")
    exported = export(checkout, tmp_path / "foreign" / "export")
    # As `make dist`: sdist from the export, wheel from the sdist; twice, byte for byte.
    first = uv_build(exported, tmp_path / "first", uv_env)
    second = uv_build(exported, tmp_path / "second", uv_env)
    assert [path.name for path in first] == [path.name for path in second]
    assert [path.read_bytes() for path in first] == [path.read_bytes() for path in second]
    assert [built_sha(path) for path in first] == [head, head]
    # A wheel straight from the checkout; the tree is left as it was.
    (wheel,) = uv_build(checkout, tmp_path / "direct", uv_env, "--wheel")
    assert built_sha(wheel) == head
    assert git(checkout, "status", "--porcelain", "--ignored") == ""
    with zipfile.ZipFile(wheel) as archive:
        mode = archive.getinfo(f"service_ambitions/{_build.BUILD_INFO}").external_attr >> 16
    assert mode & 0o777 == 0o644
