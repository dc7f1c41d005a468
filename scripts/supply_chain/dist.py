#!/usr/bin/env python3
"""Build the sdist and wheel reproducibly from the committed tree, check the build repeats, write dist/.

- Source: ``git archive HEAD``, i.e. committed files only, so the artefacts are exactly what the git revision
  in the provenance names (uncommitted changes are reported on stderr and left out; untracked files never
  reach the sdist).
- ``SOURCE_DATE_EPOCH``: the committer time of ``HEAD`` unless already set; hatchling uses it for every
  timestamp in the archives.
- Build backend: ``uv build`` with hatchling and its dependencies hash-pinned by ``build-constraints.txt``.
- Check: the build runs twice in separate directories and the two results must be byte-identical
  (``--no-check`` builds once).

Old ``*.whl`` and ``*.tar.gz`` in the output directory are replaced; stdout lists ``sha256  file`` lines (the
``sha256sum`` format).

    uv run python scripts/supply_chain/dist.py              # -> dist/
    uv run python scripts/supply_chain/dist.py --out-dir /tmp/d --no-check

Exit codes: 0 built, 1 the two builds differ (the files are named), 2 a step failed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from _envs import ROOT, SupplyChainError, build_command, run, source_date_epoch

ARTIFACT_PATTERNS = ("*.whl", "*.tar.gz")


def artifacts(directory: Path) -> list[Path]:
    """The sdists and wheels in ``directory``, sorted by name."""
    return sorted(path for pattern in ARTIFACT_PATTERNS for path in directory.glob(pattern))


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def export_head(destination: Path) -> str:
    """Extract the tree of ``HEAD`` into ``destination``; return the commit id."""
    revision = run(["git", "rev-parse", "HEAD"]).stdout.strip()
    archive = destination.with_suffix(".tar")
    run(["git", "archive", "--format=tar", f"--output={archive}", revision])
    with tarfile.open(archive) as tar:
        tar.extractall(destination, filter="data")
    archive.unlink()
    return revision


def build(source: Path, out_dir: Path, epoch: int) -> list[Path]:
    """``uv build`` (sdist, then the wheel from it) of ``source`` into ``out_dir``."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    run([*build_command(), "--out-dir", str(out_dir), str(source)], env=env)
    built = artifacts(out_dir)
    if [path.name.endswith(".whl") for path in built].count(True) != 1 or len(built) != 2:
        raise SupplyChainError(
            f"expected one sdist and one wheel in {out_dir}, got {[p.name for p in built]}"
        )
    return built


def differences(first: list[Path], second: list[Path]) -> list[str]:
    """Names of the artefacts that differ between two builds (or exist in only one)."""
    left = {path.name: sha256(path) for path in first}
    right = {path.name: sha256(path) for path in second}
    return sorted(name for name in left.keys() | right.keys() if left.get(name) != right.get(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Reproducible sdist and wheel from the committed tree.")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "dist")
    parser.add_argument("--no-check", action="store_true", help="build once; skip the byte-identity check")
    args = parser.parse_args(argv)
    try:
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.rstrip()
        if dirty:
            print(
                f"dist: building HEAD; these uncommitted changes are not included:\n{dirty}", file=sys.stderr
            )
        epoch = source_date_epoch()
        with tempfile.TemporaryDirectory(prefix="sa-dist-") as scratch:
            work = Path(scratch)
            revision = export_head(work / "source")
            built = build(work / "source", work / "first", epoch)
            if not args.no_check:
                differing = differences(built, build(work / "source", work / "second", epoch))
                if differing:
                    print(f"dist: two builds of {revision} differ: {', '.join(differing)}", file=sys.stderr)
                    return 1
            args.out_dir.mkdir(parents=True, exist_ok=True)
            for stale in artifacts(args.out_dir):
                stale.unlink()
            for path in built:
                shutil.copyfile(path, args.out_dir / path.name)
    except (OSError, SupplyChainError) as exc:
        print(f"dist: {exc}", file=sys.stderr)
        return 2
    for path in artifacts(args.out_dir):
        print(f"{sha256(path)}  {path.name}")
    check = "built once (not checked)" if args.no_check else "built twice, byte-identical"
    print(f"dist: {revision[:12]} at SOURCE_DATE_EPOCH={epoch}, {check} -> {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
