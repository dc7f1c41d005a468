#!/usr/bin/env python3
"""Write and verify SLSA v1 build provenance (an in-toto Statement v1) for the sdist and wheel in dist/.

``generate`` names every ``*.whl`` and ``*.tar.gz`` in the dist directory as a subject with its SHA-256, and
records how they were built: the source repository, ref and git commit, the builder, the build type (``make
dist``, see docs/supply-chain.md), the digests of ``uv.lock`` and the build constraints, and timestamps taken
from ``SOURCE_DATE_EPOCH`` (default: the last commit's time), so regenerating for the same commit gives the
same bytes. ``verify`` recomputes the digests and fails, naming the file, on any artefact that is missing,
altered, or present in dist/ but not covered by the statement.

The statement is not signed: in a release, ``actions/attest-build-provenance`` adds a signed (Sigstore)
attestation for the same files.

    uv run python scripts/provenance.py generate   # dist/*.whl, dist/*.tar.gz -> dist/provenance.intoto.json
    uv run python scripts/provenance.py verify

Exit codes: 0 written / verified, 1 verification failed, 2 usage error (no artefacts, unreadable statement).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
# Our own build type: externalParameters/internalParameters below are defined in docs/supply-chain.md.
BUILD_TYPE = "urn:service-ambitions:build-type:make-dist:v1"
LOCAL_BUILDER = "urn:service-ambitions:builder:local"
ARTIFACT_PATTERNS = ("*.whl", "*.tar.gz")
PINNED_INPUTS = ("uv.lock", "scripts/supply_chain/build-constraints.txt")


class ProvenanceError(Exception):
    """The statement cannot be written or read (exit 2)."""


def _git(*arguments: str) -> str:
    result = subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ProvenanceError(f"git {' '.join(arguments)}: {result.stderr.strip()}")
    return result.stdout.strip()


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _artifacts(dist_dir: Path) -> list[Path]:
    return sorted(path for pattern in ARTIFACT_PATTERNS for path in dist_dir.glob(pattern))


def _source_date_epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH") or _git("log", "-1", "--pretty=%ct", "HEAD"))


def _repository() -> str:
    """The source repository URL: from GitHub Actions, else the ``origin`` remote, else this checkout."""
    if os.environ.get("GITHUB_REPOSITORY"):
        return (
            f"{os.environ.get('GITHUB_SERVER_URL', 'https://github.com')}/{os.environ['GITHUB_REPOSITORY']}"
        )
    try:
        remote = _git("remote", "get-url", "origin")
    except ProvenanceError:
        return ROOT.as_uri()
    scp = re.fullmatch(r"[\w.-]+@([\w.-]+):(.+)", remote)  # git@github.com:owner/repo.git
    url = f"https://{scp[1]}/{scp[2]}" if scp else remote
    return url.removesuffix(".git")


def _ref() -> str:
    if os.environ.get("GITHUB_REF"):
        return os.environ["GITHUB_REF"]
    try:
        return _git("symbolic-ref", "-q", "HEAD")
    except ProvenanceError:  # detached HEAD
        return "HEAD"


def _builder_id() -> str:
    if os.environ.get("GITHUB_WORKFLOW_REF"):  # owner/repo/.github/workflows/release.yml@refs/tags/v1.0.0
        return (
            f"{os.environ.get('GITHUB_SERVER_URL', 'https://github.com')}/{os.environ['GITHUB_WORKFLOW_REF']}"
        )
    return LOCAL_BUILDER


def _uv_version() -> str:
    uv = os.environ.get("UV") or "uv"
    try:
        result = subprocess.run([uv, "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return "unknown"
    return result.stdout.split()[1] if result.returncode == 0 and result.stdout.split()[1:] else "unknown"


def statement(dist_dir: Path, *, repository: str, builder_id: str) -> dict[str, Any]:
    """The in-toto Statement v1 with an SLSA v1 provenance predicate for the artefacts in ``dist_dir``."""
    found = _artifacts(dist_dir)
    if not found:
        raise ProvenanceError(f"no *.whl or *.tar.gz in {dist_dir}: run `make dist` first")
    epoch = _source_date_epoch()
    timestamp = datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    revision, ref = _git("rev-parse", "HEAD"), _ref()
    metadata: dict[str, str] = {}
    if os.environ.get("GITHUB_RUN_ID") and os.environ.get("GITHUB_REPOSITORY"):
        run = f"{repository}/actions/runs/{os.environ['GITHUB_RUN_ID']}"
        metadata["invocationId"] = f"{run}/attempts/{os.environ.get('GITHUB_RUN_ATTEMPT', '1')}"
    metadata |= {"startedOn": timestamp, "finishedOn": timestamp}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": path.name, "digest": {"sha256": _sha256(path)}} for path in found],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "source": {"repository": repository, "ref": ref, "revision": revision},
                    "target": "make dist",
                },
                "internalParameters": {"SOURCE_DATE_EPOCH": str(epoch)},
                "resolvedDependencies": [
                    {"uri": f"git+{repository}@{ref}", "digest": {"gitCommit": revision}},
                    *({"name": name, "digest": {"sha256": _sha256(ROOT / name)}} for name in PINNED_INPUTS),
                ],
            },
            "runDetails": {
                "builder": {
                    "id": builder_id,
                    "version": {"python": platform.python_version(), "uv": _uv_version()},
                },
                "metadata": metadata,
            },
        },
    }


def verify(provenance: Path, dist_dir: Path) -> list[str]:
    """Problems found when checking ``dist_dir`` against the statement in ``provenance`` (empty: verified)."""
    try:
        document = json.loads(provenance.read_text(encoding="utf-8"))
        if document.get("_type") != STATEMENT_TYPE or document.get("predicateType") != PREDICATE_TYPE:
            raise ProvenanceError(f"{provenance} is not an in-toto v1 statement with SLSA v1 provenance")
        subjects = {str(item["name"]): str(item["digest"]["sha256"]) for item in document["subject"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProvenanceError(f"cannot read {provenance}: {exc}") from exc
    if not subjects:
        raise ProvenanceError(f"{provenance} names no subjects")
    problems: list[str] = []
    for name, expected in sorted(subjects.items()):
        path = dist_dir / name
        if Path(name).name != name:
            problems.append(f"{name}: subject name is not a plain file name")
        elif not path.is_file():
            problems.append(f"{name}: missing from {dist_dir}")
        elif (actual := _sha256(path)) != expected:
            problems.append(f"{name}: sha256 {actual} does not match the provenance ({expected})")
    problems += [
        f"{path.name}: in {dist_dir} but not covered by the provenance"
        for path in _artifacts(dist_dir)
        if path.name not in subjects
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SLSA v1 provenance for dist/ artefacts.")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="write the statement for dist/*.whl and dist/*.tar.gz")
    generate.add_argument("--dist-dir", type=Path, default=ROOT / "dist")
    generate.add_argument("-o", "--output", type=Path, help="default: <dist-dir>/provenance.intoto.json")
    generate.add_argument(
        "--repository", help="source repository URL (default: from GitHub Actions or origin)"
    )
    generate.add_argument("--builder-id", help=f"builder URI (default: the workflow, or {LOCAL_BUILDER})")
    check = commands.add_parser("verify", help="recompute digests and compare them with the statement")
    check.add_argument("--dist-dir", type=Path, default=ROOT / "dist")
    check.add_argument("--provenance", type=Path, help="default: <dist-dir>/provenance.intoto.json")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            output = args.output or args.dist_dir / "provenance.intoto.json"
            document = statement(
                args.dist_dir,
                repository=args.repository or _repository(),
                builder_id=args.builder_id or _builder_id(),
            )
            output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
            names = ", ".join(subject["name"] for subject in document["subject"])
            print(f"provenance: wrote {output} for {names}", file=sys.stderr)
            return 0
        provenance = args.provenance or args.dist_dir / "provenance.intoto.json"
        problems = verify(provenance, args.dist_dir)
    except ProvenanceError as exc:
        print(f"provenance: {exc}", file=sys.stderr)
        return 2
    if problems:
        print(f"provenance: verification of {args.dist_dir} against {provenance} FAILED:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"provenance: {provenance} verified: every artefact in {args.dist_dir} matches", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
