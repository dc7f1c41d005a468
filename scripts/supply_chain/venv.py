#!/usr/bin/env python3
"""Print the Python of a cached supply-chain environment, building it first if needed.

``runtime``: the locked runtime dependencies and the project wheel, nothing else (what a user's install
holds); ``tools``: the locked ``supply-chain`` group (cyclonedx-bom, pip-licenses, pip-audit). See
``_envs.py``.

    uv run python scripts/supply_chain/venv.py runtime
    uv pip list --python "$(uv run python scripts/supply_chain/venv.py runtime)"

Exit codes: 0 printed, 2 building it failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _envs import DEFAULT_CACHE_DIR, SupplyChainError, runtime_python, tools_python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the Python of a cached supply-chain environment.")
    parser.add_argument("kind", choices=("runtime", "tools"))
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the venvs are cached"
    )
    args = parser.parse_args(argv)
    try:
        python = runtime_python(args.cache_dir) if args.kind == "runtime" else tools_python(args.cache_dir)
    except SupplyChainError as exc:
        print(f"venv: {exc}", file=sys.stderr)
        return 2
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
