"""Supply-chain scripts, run as `make` runs them: SBOM, licences, reproducible dist, provenance, audit.

The SBOM and licence tests use the real runtime-only venv (cached in build/supply-chain/ by uv.lock hash, so
only the first run pays ~3 s to build it) and the locked tools. No test needs a network: pip-audit is replaced
by a stand-in replaying recorded runs (tests/fixtures/supply_chain/pip_audit/), and uv installs from its
cache (filled by `make install`; the supply-chain tools' wheels come from PyPI on a machine's first run).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
SUPPLY = SCRIPTS / "supply_chain"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "supply_chain"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
VERSION = PROJECT["version"]
WHEEL, SDIST = f"service_ambitions-{VERSION}-py3-none-any.whl", f"service_ambitions-{VERSION}.tar.gz"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _git(*arguments: str) -> str:
    return subprocess.run(
        ["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="session")
def script_env() -> dict[str, str]:
    """The scripts' environment: the real uv cache and no preset SOURCE_DATE_EPOCH.

    conftest points XDG_CACHE_HOME at a temp dir per test, which would send uv to download everything again.
    """
    uv = os.environ.get("UV") or shutil.which("uv")
    command = [uv] if uv else [sys.executable, "-m", "uv"]
    cache = (
        os.environ.get("UV_CACHE_DIR")
        or subprocess.run(
            [*command, "cache", "dir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    env = {name: value for name, value in os.environ.items() if name != "SOURCE_DATE_EPOCH"}
    return env | {"UV_CACHE_DIR": cache}


def run_script(
    script: Path, *arguments: str | Path, env: dict[str, str], check: bool = False
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, str(script), *map(str, arguments)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def commit_time() -> int:
    return int(_git("log", "-1", "--pretty=%ct", "HEAD"))


# SBOM ---


@pytest.fixture(scope="module")
def sboms(tmp_path_factory: pytest.TempPathFactory, script_env: dict[str, str]) -> tuple[Path, Path]:
    """Two SBOMs from two independent runs; the first validated against the CycloneDX 1.6 schema (~10 s).

    Validation reads the document and cannot change its bytes, so the second run skips it.
    """
    out = tmp_path_factory.mktemp("sbom")
    first, second = out / "first.cdx.json", out / "second.cdx.json"
    validated = run_script(SUPPLY / "sbom.py", "--output", first, env=script_env, check=True)
    assert "CycloneDX 1.6, validated, root + " in validated.stderr
    run_script(SUPPLY / "sbom.py", "--output", second, "--no-validate", env=script_env, check=True)
    return first, second


def test_sbom_two_runs_are_byte_identical(sboms: tuple[Path, Path]) -> None:
    first, second = sboms
    assert first.read_bytes() == second.read_bytes()


def test_sbom_is_cyclonedx_1_6_with_the_project_as_root(sboms: tuple[Path, Path]) -> None:
    bom = json.loads(sboms[0].read_text(encoding="utf-8"))
    assert (bom["bomFormat"], bom["specVersion"]) == ("CycloneDX", "1.6")
    assert "serialNumber" not in bom  # reproducible output drops the random serial
    root = bom["metadata"]["component"]
    assert (root["name"], root["version"], root["type"]) == ("service-ambitions", VERSION, "application")
    stamp = datetime.fromisoformat(bom["metadata"]["timestamp"])
    assert stamp == datetime.fromtimestamp(commit_time(), tz=UTC)
    assert not any("file:" in json.dumps(component) for component in bom["components"])  # no local paths


def test_sbom_lists_every_installed_runtime_distribution_and_nothing_else(
    sboms: tuple[Path, Path], script_env: dict[str, str]
) -> None:
    bom = json.loads(sboms[0].read_text(encoding="utf-8"))
    listed = {
        (_canonical(c["name"]), c["version"]) for c in [bom["metadata"]["component"], *bom["components"]]
    }
    runtime = run_script(SUPPLY / "venv.py", "runtime", env=script_env, check=True).stdout.strip()
    uv = os.environ.get("UV") or shutil.which("uv") or "uv"
    installed_json = subprocess.run(
        [uv, "pip", "list", "--python", runtime, "--format", "json"],
        capture_output=True,
        text=True,
        env=script_env,
        check=True,
    ).stdout
    installed = {(_canonical(item["name"]), item["version"]) for item in json.loads(installed_json)}
    assert listed == installed
    assert len(installed) > 40  # the runtime closure, not an empty venv
    names = {name for name, _ in listed}
    assert not names & {"pytest", "mypy", "ruff", "cyclonedx-bom", "pip-audit", "pip-licenses", "pip"}


# Licences ---


def test_licenses_pass_on_the_runtime_environment(script_env: dict[str, str]) -> None:
    result = run_script(SUPPLY / "licenses.py", env=script_env)
    assert result.returncode == 0, result.stderr
    assert re.search(r"all \d+ distributions allowed", result.stderr)
    assert result.stdout == ""


def test_licenses_normalise_every_spelling_of_an_allowed_licence(script_env: dict[str, str]) -> None:
    result = run_script(
        SUPPLY / "licenses.py", "--report", FIXTURES / "pip_licenses_allowed.json", env=script_env
    )
    assert result.returncode == 0, result.stderr
    summary = result.stderr
    assert "all 28 distributions allowed (1 by reviewed override)" in summary
    for expected in (
        "MIT 5",
        "Apache-2.0 5",
        "BSD-3-Clause 3",
        "MPL-2.0 2",
        "PSF-2.0 3",
        "ISC 2",
        "Unlicense 2",
    ):
        assert expected in summary


def test_licenses_fail_with_a_list_of_disallowed_ones(script_env: dict[str, str]) -> None:
    result = run_script(
        SUPPLY / "licenses.py", "--report", FIXTURES / "pip_licenses_disallowed.json", env=script_env
    )
    assert result.returncode == 1
    assert "7 of 8 distributions" in result.stderr
    lines = {line.split(":", 1)[0].strip(): line for line in result.stderr.splitlines()[1:]}
    assert set(lines) == {
        "copyleft-package==1.2.3",
        "undeclared-package==0.1",
        "half-allowed==4.0",
        "neither-side==5.0",
        "two-classifiers==6.0",
        "closed-package==7.0",
        "with-exception==8.0",
    }
    assert "not allowed: GPL-3.0-only" in lines["copyleft-package==1.2.3"]
    assert "no licence declared" in lines["undeclared-package==0.1"]
    assert "not allowed: GPL-2.0-only)" in lines["half-allowed==4.0"]
    assert "not allowed: LGPL-2.1-only, GPL-2.0-only" in lines["neither-side==5.0"]
    assert "AGPL-3.0-only" in lines["two-classifiers==6.0"]
    assert "fine-package" not in result.stderr


def test_licenses_version_pinned_override_applies_to_that_version_only(
    tmp_path: Path, script_env: dict[str, str]
) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text("MIT\nlegacy-lib==1.0 = MIT  # reviewed\n", encoding="utf-8")
    report = tmp_path / "report.json"
    rows = [{"License": "UNKNOWN", "Name": "legacy_lib", "Version": version} for version in ("1.0", "2.0")]
    report.write_text(json.dumps(rows), encoding="utf-8")
    result = run_script(SUPPLY / "licenses.py", "--allow-list", allow, "--report", report, env=script_env)
    assert result.returncode == 1
    assert "legacy_lib==2.0" in result.stderr
    assert "legacy_lib==1.0" not in result.stderr


def test_licenses_reject_a_malformed_allow_list(tmp_path: Path, script_env: dict[str, str]) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text("MIT\n= Apache-2.0\n", encoding="utf-8")
    result = run_script(
        SUPPLY / "licenses.py",
        "--allow-list",
        allow,
        "--report",
        FIXTURES / "pip_licenses_allowed.json",
        env=script_env,
    )
    assert result.returncode == 2
    assert "allow.txt:2" in result.stderr


# Reproducible dist and provenance ---


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory, script_env: dict[str, str]) -> tuple[Path, Path, str]:
    """dist.py with its own double-build check, then once more from a fresh export; and its stdout."""
    checked, again = tmp_path_factory.mktemp("dist-checked"), tmp_path_factory.mktemp("dist-again")
    first = run_script(SUPPLY / "dist.py", "--out-dir", checked, env=script_env, check=True)
    run_script(SUPPLY / "dist.py", "--out-dir", again, "--no-check", env=script_env, check=True)
    return checked, again, first.stdout


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_dist_builds_sdist_and_wheel_byte_identically(dists: tuple[Path, Path, str]) -> None:
    checked, again, stdout = dists
    files = _files(checked)
    assert sorted(files) == [WHEEL, SDIST]
    assert files == _files(again)
    listed = {name: digest for digest, name in (line.split("  ", 1) for line in stdout.splitlines())}
    assert listed == {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def test_dist_timestamps_come_from_the_last_commit(dists: tuple[Path, Path, str]) -> None:
    checked = dists[0]
    epoch = commit_time()
    with tarfile.open(checked / SDIST) as sdist:
        assert {member.mtime for member in sdist.getmembers()} == {epoch}
        names = sdist.getnames()
    assert f"service_ambitions-{VERSION}/src/service_ambitions/__init__.py" in names
    assert not [name for name in names if "/build/" in name or "/.venv/" in name]
    stamp = datetime.fromtimestamp(epoch, tz=UTC).timetuple()[:5]
    with zipfile.ZipFile(checked / WHEEL) as wheel:
        assert {info.date_time[:5] for info in wheel.infolist()} == {stamp}


def _statement(dist_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    run_script(SCRIPTS / "provenance.py", "generate", "--dist-dir", dist_dir, env=env, check=True)
    document: dict[str, Any] = json.loads((dist_dir / "provenance.intoto.json").read_text(encoding="utf-8"))
    return document


@pytest.fixture
def fake_dist(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "service_ambitions-0.1.0-py3-none-any.whl").write_bytes(b"wheel bytes")
    (dist / "service_ambitions-0.1.0.tar.gz").write_bytes(b"sdist bytes")
    (dist / "sbom.cdx.json").write_text("{}", encoding="utf-8")  # not an artefact: neither listed nor checked
    return dist


def test_provenance_is_an_in_toto_slsa_v1_statement(fake_dist: Path, script_env: dict[str, str]) -> None:
    env = {
        name: value
        for name, value in script_env.items()
        if not name.startswith("GITHUB_")  # a CI run must not change what a local build records
    }
    document = _statement(fake_dist, env)
    assert document["_type"] == "https://in-toto.io/Statement/v1"
    assert document["predicateType"] == "https://slsa.dev/provenance/v1"
    assert document["subject"] == [
        {"name": name, "digest": {"sha256": hashlib.sha256(data).hexdigest()}}
        for name, data in (
            ("service_ambitions-0.1.0-py3-none-any.whl", b"wheel bytes"),
            ("service_ambitions-0.1.0.tar.gz", b"sdist bytes"),
        )
    ]
    definition, details = document["predicate"]["buildDefinition"], document["predicate"]["runDetails"]
    assert definition["buildType"] == "urn:service-ambitions:build-type:make-dist:v1"
    head = _git("rev-parse", "HEAD")
    assert definition["externalParameters"]["source"]["revision"] == head
    assert definition["resolvedDependencies"][0]["digest"] == {"gitCommit": head}
    lock = hashlib.sha256((ROOT / "uv.lock").read_bytes()).hexdigest()
    assert {"name": "uv.lock", "digest": {"sha256": lock}} in definition["resolvedDependencies"]
    assert details["builder"]["id"] == "urn:service-ambitions:builder:local"
    stamp = datetime.fromtimestamp(commit_time(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert details["metadata"] == {"startedOn": stamp, "finishedOn": stamp}
    first = (fake_dist / "provenance.intoto.json").read_bytes()
    _statement(fake_dist, env)
    assert (fake_dist / "provenance.intoto.json").read_bytes() == first


def test_provenance_records_the_github_workflow_as_builder(
    fake_dist: Path, script_env: dict[str, str]
) -> None:
    env = script_env | {
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "example/service-ambitions",
        "GITHUB_WORKFLOW_REF": "example/service-ambitions/.github/workflows/release.yml@refs/tags/v0.1.0",
        "GITHUB_REF": "refs/tags/v0.1.0",
        "GITHUB_RUN_ID": "42",
        "GITHUB_RUN_ATTEMPT": "1",
    }
    predicate = _statement(fake_dist, env)["predicate"]
    assert predicate["runDetails"]["builder"]["id"] == (
        "https://github.com/example/service-ambitions/.github/workflows/release.yml@refs/tags/v0.1.0"
    )
    source = predicate["buildDefinition"]["externalParameters"]["source"]
    assert source["repository"] == "https://github.com/example/service-ambitions"
    assert source["ref"] == "refs/tags/v0.1.0"
    assert predicate["runDetails"]["metadata"]["invocationId"] == (
        "https://github.com/example/service-ambitions/actions/runs/42/attempts/1"
    )


def test_provenance_verify_accepts_the_real_dist_and_names_a_tampered_artefact(
    dists: tuple[Path, Path, str], tmp_path: Path, script_env: dict[str, str]
) -> None:
    dist = tmp_path / "dist"
    shutil.copytree(dists[0], dist)
    _statement(dist, script_env)
    verified = run_script(SCRIPTS / "provenance.py", "verify", "--dist-dir", dist, env=script_env)
    assert verified.returncode == 0, verified.stderr
    (dist / WHEEL).write_bytes((dist / WHEEL).read_bytes() + b"\0")
    tampered = run_script(SCRIPTS / "provenance.py", "verify", "--dist-dir", dist, env=script_env)
    assert tampered.returncode == 1
    assert f"{WHEEL}: sha256" in tampered.stderr
    assert SDIST not in tampered.stderr


def test_provenance_verify_names_missing_and_unlisted_artefacts(
    fake_dist: Path, script_env: dict[str, str]
) -> None:
    _statement(fake_dist, script_env)
    (fake_dist / "service_ambitions-0.1.0.tar.gz").unlink()
    (fake_dist / "service_ambitions-0.2.0-py3-none-any.whl").write_bytes(b"smuggled")
    result = run_script(SCRIPTS / "provenance.py", "verify", "--dist-dir", fake_dist, env=script_env)
    assert result.returncode == 1
    assert "service_ambitions-0.1.0.tar.gz: missing" in result.stderr
    assert "service_ambitions-0.2.0-py3-none-any.whl: in" in result.stderr
    assert "not covered by the provenance" in result.stderr


def test_provenance_needs_artefacts_and_a_statement(tmp_path: Path, script_env: dict[str, str]) -> None:
    empty = run_script(SCRIPTS / "provenance.py", "generate", "--dist-dir", tmp_path, env=script_env)
    assert empty.returncode == 2
    assert "make dist" in empty.stderr
    (tmp_path / "provenance.intoto.json").write_text('{"_type": "something else"}', encoding="utf-8")
    wrong = run_script(SCRIPTS / "provenance.py", "verify", "--dist-dir", tmp_path, env=script_env)
    assert wrong.returncode == 2
    assert "not an in-toto v1 statement" in wrong.stderr


# Audit ---


def run_audit(case: str, env: dict[str, str], seen: Path | None = None) -> subprocess.CompletedProcess[str]:
    fake = f"{sys.executable} {FIXTURES / 'fake_pip_audit.py'}"
    env = env | {"FAKE_PIP_AUDIT_CASE": str(FIXTURES / "pip_audit" / case)}
    if seen:
        env["FAKE_PIP_AUDIT_SEEN"] = str(seen)
    return run_script(SUPPLY / "audit.py", "--pip-audit", fake, env=env)


@pytest.mark.parametrize(
    ("case", "exit_code", "message"),
    [
        ("clean", 0, "clean: 4 requirements audited, no known vulnerabilities"),
        ("vulnerable", 1, "requests==2.31.0: GHSA-9wx4-h78v-vm56 (fixed in 2.32.0)"),
        ("invalid_input", 2, "invalid requirements input"),
        # Recorded here: PyPI reachable only through a mirror without the JSON API; pip-audit exits 0.
        ("pypi_404_all_skipped", 3, "unavailable (no network): the service audited none of 59 requirements"),
        ("osv_dns_failure", 3, "unavailable (no network): service not reachable"),
        ("proxy_refused", 3, "unavailable (no network): service not reachable"),
        ("incomplete", 4, "mistralai: Dependency not found on PyPI"),
    ],
)
def test_audit_classifies_recorded_pip_audit_runs(
    case: str, exit_code: int, message: str, script_env: dict[str, str]
) -> None:
    result = run_audit(case, script_env)
    assert result.returncode == exit_code, result.stderr
    assert message in result.stderr
    assert result.stdout == ""


def test_audit_reports_vulnerabilities_even_when_some_packages_were_skipped(
    script_env: dict[str, str],
) -> None:
    result = run_audit("vulnerable", script_env)
    assert result.returncode == 1
    assert "vulnerable: 1 known vulnerability in 1 package" in result.stderr
    assert "not audited: mistralai" in result.stderr


def test_audit_checks_the_hashed_runtime_requirements_without_pip(
    tmp_path: Path, script_env: dict[str, str]
) -> None:
    run_audit("clean", script_env, seen=tmp_path)
    argv = json.loads((tmp_path / "argv.json").read_text(encoding="utf-8"))
    assert {"--disable-pip", "--require-hashes", "--format", "json"} <= set(argv)
    requirements = (tmp_path / "requirements.txt").read_text(encoding="utf-8")
    pins = re.findall(r"^([A-Za-z0-9._-]+)==", requirements, flags=re.MULTILINE)
    assert "pydantic" in pins
    assert not {"pytest", "mypy", "ruff", "pip-audit", "service-ambitions"} & set(pins)
    assert requirements.count("--hash=sha256:") >= len(pins)


# Release workflow ---


def test_release_workflow_builds_attests_and_verifies_on_tags() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8"))
    triggers = workflow[True]  # YAML 1.1 reads the bare key `on` as a boolean
    assert triggers["push"]["tags"]
    assert workflow["permissions"]["id-token"] == "write"
    assert workflow["permissions"]["attestations"] == "write"
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    runs = "\n".join(str(step.get("run", "")) for step in steps)
    for command in ("make dist", "make provenance", "make sbom", "make licenses"):
        assert command in runs
    uses = [str(step.get("uses", "")) for step in steps]
    assert any(action.startswith("actions/attest-build-provenance@") for action in uses)
