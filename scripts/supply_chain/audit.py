#!/usr/bin/env python3
"""Audit the locked runtime requirements with pip-audit, telling "vulnerable" apart from "could not audit".

The requirements are ``uv export --frozen --no-dev`` with hashes (the project itself left out), audited as
pinned: ``pip-audit -r ... --disable-pip --require-hashes`` resolves nothing and installs nothing, so the only
network use is the vulnerability service (PyPI's JSON API by default, or OSV).

pip-audit's own exit status cannot be trusted for this: it exits 1 both for "vulnerabilities found" and for
a crash on an unreachable service, and it exits 0 with "No known vulnerabilities found" when the service
answered 404 for every package (as a mirror or proxy without the JSON API does), each skipped as "not found on
PyPI". So the result is classified from its JSON report and stderr:

===  ===========  ===========================================================================================
exit status       meaning
===  ===========  ===========================================================================================
0    clean        every requirement audited, no known vulnerability
1    vulnerable   at least one known vulnerability (listed), whatever else happened
2    error        pip-audit failed for another reason (its stderr is shown)
3    unavailable  the vulnerability service could not be reached, or audited nothing (no network)
4    incomplete   some requirements were audited and none is vulnerable, but others were skipped (listed)
===  ===========  ===========================================================================================

    uv run python scripts/supply_chain/audit.py
    uv run python scripts/supply_chain/audit.py --service osv
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from _envs import DEFAULT_CACHE_DIR, SupplyChainError, export_requirements, tools_python

# Phrases in a failed run's stderr meaning the service was not reachable (requests/urllib3/pip-audit wording).
NETWORK_MARKERS = (
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyError",
    "SSLError",
    "NameResolutionError",
    "Max retries exceeded",
    "Failed to resolve",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "timed out",
    "your network may be blocking this service",
    "Could not connect to",
)


class Outcome(IntEnum):
    """Exit status of this script, one per outcome."""

    CLEAN = 0
    VULNERABLE = 1
    ERROR = 2
    UNAVAILABLE = 3
    INCOMPLETE = 4


@dataclass
class Classification:
    """The outcome and the lines that explain it."""

    outcome: Outcome
    summary: str
    details: list[str] = field(default_factory=list)


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def classify(returncode: int, stderr: str, report: str | None) -> Classification:
    """Classify one pip-audit run from its exit status, stderr and JSON report (``None``: none written)."""
    try:
        dependencies = json.loads(report)["dependencies"] if report else None
    except (ValueError, KeyError, TypeError):
        dependencies = None
    if not isinstance(dependencies, list):
        if any(marker in stderr for marker in NETWORK_MARKERS):
            last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
            return Classification(
                Outcome.UNAVAILABLE, "unavailable (no network): service not reachable", [last]
            )
        tail = stderr.strip().splitlines()[-5:]
        return Classification(Outcome.ERROR, f"error: pip-audit exited {returncode} without a report", tail)
    vulnerable = [dep for dep in dependencies if dep.get("vulns")]
    skipped = [dep for dep in dependencies if "skip_reason" in dep]
    audited = len(dependencies) - len(skipped)
    if vulnerable:
        details = [
            f"{dep['name']}=={dep.get('version', '?')}: {vuln['id']}"
            + (
                f" (fixed in {', '.join(vuln['fix_versions'])})"
                if vuln.get("fix_versions")
                else " (no fix yet)"
            )
            for dep in vulnerable
            for vuln in dep["vulns"]
        ]
        details += [f"not audited: {dep['name']}: {dep['skip_reason']}" for dep in skipped]
        count = sum(len(dep["vulns"]) for dep in vulnerable)
        return Classification(
            Outcome.VULNERABLE,
            f"vulnerable: {_plural(count, 'known vulnerability', 'known vulnerabilities')}"
            f" in {_plural(len(vulnerable), 'package', 'packages')}",
            details,
        )
    if audited == 0:
        reasons = sorted({str(dep["skip_reason"]) for dep in skipped})
        return Classification(
            Outcome.UNAVAILABLE,
            f"unavailable (no network): the service audited none of {len(skipped)} requirements",
            reasons[:1] + ([f"... and {len(reasons) - 1} similar"] if len(reasons) > 1 else []),
        )
    if skipped:
        return Classification(
            Outcome.INCOMPLETE,
            f"incomplete: {audited} audited, no known vulnerabilities, but {len(skipped)} not audited",
            [f"{dep['name']}: {dep['skip_reason']}" for dep in skipped],
        )
    if returncode != 0:
        return Classification(
            Outcome.ERROR, f"error: pip-audit exited {returncode}", stderr.strip().splitlines()[-5:]
        )
    return Classification(Outcome.CLEAN, f"clean: {audited} requirements audited, no known vulnerabilities")


def audit(pip_audit: list[str], service: str, timeout: int) -> Classification:
    """Export the runtime requirements, run pip-audit on them and classify the result."""
    with tempfile.TemporaryDirectory(prefix="sa-audit-") as scratch:
        requirements, report = Path(scratch) / "requirements.txt", Path(scratch) / "report.json"
        requirements.write_text(export_requirements("--no-dev"), encoding="utf-8")
        command = [*pip_audit, "--requirement", str(requirements), "--disable-pip", "--require-hashes"]
        command += [
            "--vulnerability-service",
            service,
            "--timeout",
            str(timeout),
            "--progress-spinner",
            "off",
        ]
        command += ["--format", "json", "--output", str(report)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        written = report.read_text(encoding="utf-8") if report.exists() else None
    return classify(result.returncode, result.stderr, written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pip-audit the locked runtime requirements.")
    parser.add_argument("--service", choices=("pypi", "osv"), default="pypi", help="vulnerability service")
    parser.add_argument("--timeout", type=int, default=15, help="socket timeout in seconds")
    parser.add_argument("--pip-audit", help="pip-audit command to run (default: the locked one)")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the venvs are cached"
    )
    args = parser.parse_args(argv)
    try:
        command = (
            shlex.split(args.pip_audit)
            if args.pip_audit
            else [str(tools_python(args.cache_dir)), "-m", "pip_audit"]
        )
        result = audit(command, args.service, args.timeout)
    except (OSError, SupplyChainError) as exc:
        print(f"audit: error: {exc}", file=sys.stderr)
        return Outcome.ERROR
    print(f"audit: {result.summary}", file=sys.stderr)
    for line in result.details:
        print(f"  {line}", file=sys.stderr)
    return result.outcome


if __name__ == "__main__":
    sys.exit(main())
