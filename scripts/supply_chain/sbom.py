#!/usr/bin/env python3
"""Write a validated CycloneDX 1.6 JSON SBOM of the runtime-only environment.

The environment is the cached runtime venv (locked runtime dependencies + the project wheel, see
``_envs.py``); the SBOM is made by the locked cyclonedx-bom (``cyclonedx-py environment``), with the project
from ``pyproject.toml`` as the root component and every other installed distribution as a component. Output
is reproducible: no serial number, and the timestamp is ``SOURCE_DATE_EPOCH`` (default: the last commit's
time), so two runs on one lock give byte-identical files. cyclonedx-py validates the document against the 1.6
schema before writing it (about 10 s: its IRI format checks are slow; ``--no-validate`` skips that).

    uv run python scripts/supply_chain/sbom.py                  # -> dist/sbom.cdx.json
    uv run python scripts/supply_chain/sbom.py -o other.cdx.json

Exit codes: 0 written, 2 a step failed (its output is shown).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from _envs import (
    DEFAULT_CACHE_DIR,
    ROOT,
    SupplyChainError,
    run,
    runtime_python,
    source_date_epoch,
    tools_python,
)

SPEC_VERSION = "1.6"


def write_sbom(output: Path, cache_dir: Path, *, validate: bool = True) -> int:
    """Write the SBOM to ``output`` (atomically) and return its component count."""
    runtime, tools = runtime_python(cache_dir), tools_python(cache_dir)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(source_date_epoch())}
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".sbom-") as scratch:
        draft = Path(scratch) / output.name
        command = [str(tools), "-m", "cyclonedx_py", "environment", str(runtime)]
        command += ["--pyproject", str(ROOT / "pyproject.toml"), "--mc-type", "application"]
        command += ["--spec-version", SPEC_VERSION, "--output-format", "JSON", "--output-reproducible"]
        command += ["--validate" if validate else "--no-validate", "--output-file", str(draft)]
        run(command, env=env)
        components = len(json.loads(draft.read_text(encoding="utf-8")).get("components", []))
        draft.replace(output)
    return components


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CycloneDX 1.6 SBOM of the runtime-only environment.")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "dist" / "sbom.cdx.json")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the venvs are cached"
    )
    parser.add_argument(
        "--no-validate", action="store_true", help="skip the schema validation (~10 s), e.g. when iterating"
    )
    args = parser.parse_args(argv)
    try:
        count = write_sbom(args.output, args.cache_dir, validate=not args.no_validate)
    except SupplyChainError as exc:
        print(f"sbom: {exc}", file=sys.stderr)
        return 2
    checked = "not validated" if args.no_validate else "validated"
    print(
        f"sbom: wrote {args.output} (CycloneDX {SPEC_VERSION}, {checked}, root + {count} components)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
